"""Wiring: settings → decoder, rules, metrics, HTTP endpoint and one service per worker."""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from confluent_kafka.schema_registry import SchemaRegistryClient
from prometheus_client import CollectorRegistry

from consumer import __version__
from consumer.alert import Alert, encode_json
from consumer.alert_avro import RegistryAlertEncoder
from consumer.config import Settings
from consumer.decode import Decoder, JsonDecoder, RegistryAvroDecoder, SchemalessAvroDecoder
from consumer.detector import Detector
from consumer.http import serve
from consumer.metrics import Metrics
from consumer.rules.loader import LoadedRule, load_rules
from consumer.service import RETRY_LATER_BACKOFF_S, Health, Service, install_signal_handlers
from consumer.sink import FatalSinkError

log = logging.getLogger("consumer")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_CONFIG = 2

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process gets when its parent dies."""

WORKER_RESTART_BACKOFF_S = 1.0
"""A crashed worker is restarted after this pause, so a persistent fault cannot spin."""


def registry_client(settings: Settings) -> SchemaRegistryClient:
    """No retries inside the client: they would hold up the whole loop (up to 7 s per lookup
    with its defaults) where the service pauses only the partition and reads it again later."""
    config: dict[str, object] = {
        "url": settings.schema_registry_url, "timeout": 10, "max.retries": 0,
    }
    if settings.schema_registry_basic_auth is not None:
        config["basic.auth.user.info"] = settings.schema_registry_basic_auth.get_secret_value()
    for key, path in (
        ("ssl.ca.location", settings.schema_registry_ca_location),
        ("ssl.certificate.location", settings.schema_registry_certificate_location),
        ("ssl.key.location", settings.schema_registry_key_location),
    ):
        if path is not None:
            config[key] = str(path)
    return SchemaRegistryClient(config)


def make_decoder(settings: Settings) -> Decoder:
    if settings.input_format == "avro-registry":
        # Asking before the partitions it paused are read again would only block the loop.
        return RegistryAvroDecoder(
            registry_client(settings), outage_memory_s=RETRY_LATER_BACKOFF_S
        )
    if settings.input_format == "avro":
        if settings.writer_schema is None:
            return SchemalessAvroDecoder()
        return SchemalessAvroDecoder(json.loads(Path(settings.writer_schema).read_text()))
    return JsonDecoder()


def alert_encoder(settings: Settings) -> Callable[[Alert], bytes]:
    if settings.alert_format == "avro-registry":
        return RegistryAlertEncoder(registry_client(settings), f"{settings.alerts_topic}-value")
    return encode_json


def load_enabled_rules(settings: Settings) -> list[LoadedRule]:
    overrides = dict.fromkeys(settings.enable_rules, True)
    overrides |= dict.fromkeys(settings.disable_rules, False)
    return load_rules(settings.rules_dir, overrides)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_worker(settings: Settings, worker: int) -> int:
    """One group member with its own metrics endpoint on metrics_port + worker."""
    configure_logging(settings.log_level)
    rules = load_enabled_rules(settings)
    registry = CollectorRegistry(auto_describe=True)
    metrics = Metrics(registry)
    enabled = [rule for rule in rules if rule.enabled]
    metrics.build.info(
        {
            "version": __version__,
            "worker": str(worker),
            "rules": ",".join(rule.rule_id for rule in enabled),
        }
    )
    for rule in enabled:
        metrics.rule.labels(rule.rule_id).info({"rule_name": rule.name, "severity": rule.severity})
    health = Health()
    detector = Detector(make_decoder(settings), rules, use_prefilter=settings.prefilter)
    service = Service(
        settings, detector, metrics, health, worker=worker, encode_alert=alert_encoder(settings)
    )
    install_signal_handlers(service)
    port = settings.metrics_port + worker if settings.metrics_port else 0
    server = serve(settings.metrics_host, port, registry, health.alive, health.serving)
    log.info(
        "worker %d: rules %s; metrics on http://%s:%d/metrics; settings %s",
        worker, [rule.name for rule in enabled], settings.metrics_host, server.server_port,
        json.dumps(settings.redacted()),
    )
    try:
        service.run()
    except FatalSinkError as error:
        log.error("fatal: %s", error)
        return EXIT_FATAL
    finally:
        server.shutdown()
    return EXIT_OK


def _worker_main(settings: Settings, worker: int) -> None:
    _exit_with_parent()
    sys.exit(run_worker(settings, worker))


def _exit_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when its supervisor dies, even by SIGKILL, so no
    orphaned worker keeps consuming for a group whose supervisor is gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warning("cannot tie worker lifetime to the supervisor on this platform")


def run(settings: Settings) -> int:
    """Run the detector: in this process, or as a supervisor of `workers` processes."""
    if settings.workers == 1:
        return run_worker(settings, 0)
    configure_logging(settings.log_level)
    load_enabled_rules(settings)  # a broken rule stops start-up here, not in N restart loops
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start(worker: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker_main, args=(settings, worker), name=f"worker-{worker}"
        )
        process.start()
        return process

    workers = {index: start(index) for index in range(settings.workers)}

    def forward(signum: int, frame: FrameType | None) -> None:
        """First signal: each worker shuts down cleanly. Second: they are killed."""
        nonlocal stopping
        for process in workers.values():
            if process.is_alive():
                if stopping:
                    process.kill()
                else:
                    process.terminate()
        stopping = True

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    worst = EXIT_OK
    while workers:
        for index, process in list(workers.items()):
            process.join(0.5)
            if process.exitcode is None:
                continue
            if stopping or process.exitcode == EXIT_CONFIG:
                del workers[index]
                worst = max(worst, process.exitcode)
                if not stopping:
                    log.error("worker %d: configuration error; stopping", index)
                    forward(signal.SIGTERM, None)
            else:
                log.error("worker %d exited with %s; restarting it", index, process.exitcode)
                time.sleep(WORKER_RESTART_BACKOFF_S)
                workers[index] = start(index)
    return worst
