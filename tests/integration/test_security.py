"""The detector against authenticated, encrypted Kafka: SASL_SSL with SCRAM-SHA-512 and mutual
TLS, on a broker of this module's own with a CA made for the run. Secrets come from the
environment or a file and never show in the detector's log or its /metrics.

Topics are created, events produced and alerts read through the broker's plaintext listener;
the detector talks only to the secured one.
"""

from __future__ import annotations

import json
import secrets
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from scripts.kafka_local import LocalKafka, free_port
from tests.support.certs import Pki, make_pki
from tests.support.events import mixed_workload
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    alert_event_ids,
    produce,
    read_all,
    wait_until,
)

SCRAM_USER = "detector"


@dataclass(frozen=True)
class SecureKafka:
    local: LocalKafka
    pki: Pki
    scram_password: str

    @property
    def plaintext(self) -> str:
        return self.local.bootstrap_servers

    def sasl_ssl_settings(self) -> dict[str, str]:
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": SCRAM_USER,
            "ssl.ca.location": str(self.pki.ca_certificate),
        }

    def mutual_tls_settings(self) -> dict[str, str]:
        return {
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.pki.ca_certificate),
            "ssl.certificate.location": str(self.pki.client_certificate),
            "ssl.key.location": str(self.pki.client_key),
            "ssl.key.password": self.pki.client_key_password,
        }


@pytest.fixture(scope="module")
def secure(run_dir: Path) -> Iterator[SecureKafka]:
    pki = make_pki(run_dir / "pki")
    password = secrets.token_hex(16)
    local = LocalKafka(
        workdir=run_dir / "kafka-secure",
        listeners={"SASL_SSL": "SASL_SSL", "MTLS": "SSL"},
        scram_users={SCRAM_USER: password},
        extra_config={
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(pki.broker_keystore),
            "ssl.key.password": pki.broker_key_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(pki.ca_certificate),
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.mtls.ssl.client.auth": "required",
        },
    )
    local.start()
    try:
        yield SecureKafka(local, pki, password)
    finally:
        local.stop()


def new_topics(secure: SecureKafka, label: str) -> Topics:
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(f"{label}-in-{suffix}", f"{label}-alerts-{suffix}", f"{label}-dlq-{suffix}")
    admin = AdminClient({"bootstrap.servers": secure.plaintext})
    futures = admin.create_topics(
        [NewTopic(name, 1, 1) for name in (topics.input, topics.alerts, topics.dlq)]
    )
    for future in futures.values():
        future.result(timeout=30)
    return topics


def start_detector(
    bootstrap: str, topics: Topics, run_dir: Path, started: list[DetectorProcess],
    env: dict[str, str],
) -> DetectorProcess:
    detector = DetectorProcess(bootstrap, topics, run_dir / "detectors",
                               group=f"g-{uuid.uuid4().hex}", extra_env=env)
    started.append(detector)
    return detector.start()


def assert_alerts_exactly_once(secure: SecureKafka, topics: Topics, scenario: str) -> None:
    events, matches = mixed_workload(1_000, every=25)
    produce(secure.plaintext, topics.input, events)
    alerts = alert_event_ids(read_all(secure.plaintext, topics.alerts, wanted=len(matches)))
    counts = Counter(alerts)
    print(f"\n[{scenario}] sent={len(events)} alerted={len(alerts)} "
          f"duplicated={sum(n - 1 for n in counts.values())} "
          f"lost={len(set(matches) - set(counts))}")
    assert sorted(alerts) == sorted(matches)


@pytest.mark.parametrize("password_source", ["environment", "file"])
def test_the_detector_alerts_through_sasl_ssl_scram_sha_512_and_never_shows_the_password(
    secure: SecureKafka, run_dir: Path, detectors: list[DetectorProcess], password_source: str
) -> None:
    topics = new_topics(secure, f"scram-{password_source}")
    env = {"DETECTOR_KAFKA": json.dumps(secure.sasl_ssl_settings())}
    if password_source == "file":
        secret_file = run_dir / f"sasl-password-{uuid.uuid4().hex[:6]}"
        secret_file.write_text(secure.scram_password + "\n")
        env["DETECTOR_KAFKA_SASL_PASSWORD_FILE"] = str(secret_file)
    else:
        env["DETECTOR_KAFKA_SASL_PASSWORD"] = secure.scram_password
    detector = start_detector(secure.local.listener_address("SASL_SSL"), topics, run_dir,
                              detectors, env)
    detector.wait_ready()

    assert_alerts_exactly_once(secure, topics, f"SASL_SSL SCRAM-SHA-512, password from "
                                               f"{password_source}")

    log, metrics = detector.log(), detector.metrics_text()
    assert secure.scram_password not in log
    assert secure.scram_password not in metrics
    setting = "kafka_sasl_password_file" if password_source == "file" else "kafka_sasl_password"
    assert f'"{setting}": "***"' in log


def test_the_detector_alerts_through_mutual_tls_and_never_shows_the_key_password(
    secure: SecureKafka, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    topics = new_topics(secure, "mtls")
    env = {"DETECTOR_KAFKA": json.dumps(secure.mutual_tls_settings())}
    detector = start_detector(secure.local.listener_address("MTLS"), topics, run_dir,
                              detectors, env)
    detector.wait_ready()

    assert_alerts_exactly_once(secure, topics, "SSL with a client certificate")

    log, metrics = detector.log(), detector.metrics_text()
    assert secure.pki.client_key_password not in log
    assert secure.pki.client_key_password not in metrics
    assert '"ssl.key.password": "***"' in log


def test_the_mutual_tls_listener_refuses_a_client_without_a_certificate(
    secure: SecureKafka,
) -> None:
    settings = secure.mutual_tls_settings()
    for key in ("ssl.certificate.location", "ssl.key.location", "ssl.key.password"):
        del settings[key]
    admin = AdminClient({"bootstrap.servers": secure.local.listener_address("MTLS"),
                         **settings, "log_level": "0"})

    with pytest.raises(KafkaException, match="transport failure"):
        admin.list_topics(timeout=5)


def test_a_wrong_sasl_password_is_logged_naming_the_setting_and_retried_not_crashed(
    secure: SecureKafka, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    env = {
        "DETECTOR_KAFKA": json.dumps(secure.sasl_ssl_settings()),
        "DETECTOR_KAFKA_SASL_PASSWORD": wrong,
    }
    detector = start_detector(secure.local.listener_address("SASL_SSL"),
                              new_topics(secure, "wrong-password"), run_dir, detectors, env)

    wait_until(lambda: "DETECTOR_KAFKA_SASL_PASSWORD" in detector.log(), 40,
               "a log line naming the password setting")
    assert detector.http_status("/readyz") == 503
    assert detector.process is not None
    assert detector.process.poll() is None
    assert wrong not in detector.log()
    assert detector.terminate(timeout=20) == 0


def test_the_http_endpoint_listens_only_on_the_configured_address(
    run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    """127.0.0.2 is loopback too on Linux: a socket bound to 127.0.0.1 does not answer it."""
    unreachable = f"127.0.0.1:{free_port()}"
    detector = start_detector(unreachable, Topics("in", "alerts", "dlq"), run_dir, detectors,
                              {"DETECTOR_METRICS_HOST": "127.0.0.1"})
    wait_until(lambda: detector.http_status("/healthz") == 200, 30, "the HTTP endpoint")

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", detector.port), timeout=2).close()
    with socket.create_connection(("127.0.0.1", detector.port), timeout=2):
        pass
