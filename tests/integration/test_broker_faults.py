"""The detector against a broker that goes away (restarted mid-stream, down at start-up), a
missing topic and a twice-started replica, and the exit codes of stopping it meanwhile.

The detector rides out every outage in the one process it started as. These tests stop and
start their broker, so the module runs its own, not the session's.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.offline.replay import account_of, avro_encoder
from scripts.kafka_local import LocalKafka, free_port
from tests.support.events import mixed_workload
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    alert_event_ids,
    local_broker,
    produce,
    read_all,
    wait_until,
)

OUTAGE_S = 12.0
"""How long the broker stays down: longer than librdkafka's 10 s maximum reconnect backoff."""

RESTART_STALL_S = 8.0
"""The longest the first commit after a broker restart may take, from the broker answering
again: before the sink's fix it waited for the whole 20 s wedged-commit watchdog
(confluentinc/librdkafka#5456)."""


@pytest.fixture(scope="module")
def own_broker(run_dir: Path) -> Iterator[LocalKafka]:
    with local_broker(run_dir / "kafka-faults") as local:
        yield local


def create_topics(bootstrap: str, *names: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    for future in futures.values():
        future.result(timeout=30)


def fresh_topics(label: str) -> Topics:
    suffix = uuid.uuid4().hex[:8]
    return Topics(f"{label}-in-{suffix}", f"{label}-alerts-{suffix}", f"{label}-dlq-{suffix}")


def start_detector(
    bootstrap: str, topics: Topics, run_dir: Path, started: list[DetectorProcess]
) -> DetectorProcess:
    detector = DetectorProcess(bootstrap, topics, run_dir / "detectors",
                               group=f"g-{uuid.uuid4().hex}")
    started.append(detector)
    return detector.start()


def report(scenario: str, sent: int, expected: list[str], alert_ids: list[str], dead: int) -> None:
    counts = Counter(alert_ids)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    lost = len(set(expected) - set(counts))
    print(f"\n[{scenario}] sent={sent} expected_alerts={len(expected)} alerted={len(alert_ids)} "
          f"dlq={dead} duplicated={duplicated} lost={lost}")


def assert_exactly_once(alert_ids: list[str], expected: list[str]) -> None:
    counts = Counter(alert_ids)
    duplicated = sorted(event_id for event_id, n in counts.items() if n > 1)
    lost = sorted(set(expected) - set(counts))
    unexpected = sorted(set(counts) - set(expected))
    assert (duplicated, lost, unexpected) == ([], [], [])


def pace_production(
    bootstrap: str, topic: str, events: list[dict[str, Any]], chunk: int, pause_s: float
) -> None:
    """Produce `events` in chunks with a pause after each: a stream, not one burst. The
    producer is idempotent and buffers while the broker is down, so each event lands once."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": "true",
                         "linger.ms": "10"})
    encode = avro_encoder()
    pause = threading.Event()
    for start in range(0, len(events), chunk):
        for record in events[start:start + chunk]:
            producer.produce(topic, value=encode(record), key=account_of(record))
        producer.poll(0)
        pause.wait(pause_s)
    assert producer.flush(120) == 0


OUTAGE_LOG_LINES = 40
"""At most this many log lines while the broker is down: each distinct client error once, then
a count every 10 s (before the aggregation: ~30 lines a second, each error twice)."""


def committed_transactions(detector: DetectorProcess) -> float:
    """The detector's count of committed transactions, from its /metrics."""
    prefix = 'cloudtrail_detector_transactions_total{outcome="committed"} '
    return next((float(line.removeprefix(prefix)) for line in detector.metrics_text().splitlines()
                 if line.startswith(prefix)), 0.0)


def cluster_id(broker: LocalKafka) -> str:
    meta = (broker.workdir / "data" / "meta.properties").read_text()
    return next(line.split("=", 1)[1] for line in meta.splitlines()
                if line.startswith("cluster.id="))


@dataclass
class Restart:
    stall_s: float
    """From the broker answering again to the detector's first commit."""
    outage_lines: int
    """Lines the detector logged while the broker was down."""
    replaced: list[str]
    """The log lines of producers replaced after a wedged commit."""


def restart_mid_stream(
    scenario: str, own_broker: LocalKafka, run_dir: Path, detectors: list[DetectorProcess]
) -> Restart:
    """Stop the broker under a stream for longer than the clients' backoff, start it again,
    and check the detector rode it out in one process and alerted exactly once."""
    topics = fresh_topics("restart")
    create_topics(own_broker.bootstrap_servers, topics.input, topics.alerts, topics.dlq)
    events, matches = mixed_workload(20_000, every=200)
    detector = start_detector(own_broker.bootstrap_servers, topics, run_dir, detectors)
    detector.wait_ready()
    assert detector.process is not None
    feeder = threading.Thread(
        target=pace_production,
        args=(own_broker.bootstrap_servers, topics.input, events, 500, 0.5),
        daemon=True,
    )
    feeder.start()
    wait_until(lambda: "cloudtrail_detector_alerts_total{" in detector.metrics_text(), 30,
               "the first alerts before the outage")
    address, identity = own_broker.bootstrap_servers, cluster_id(own_broker)

    own_broker.stop()
    stopped_at = time.monotonic()
    lines_before = len(detector.log().splitlines())
    wait_until(lambda: detector.http_status("/readyz") == 503, OUTAGE_S,
               "/readyz to report the broker outage")
    threading.Event().wait(OUTAGE_S)  # down long enough to exhaust the client's backoff
    assert detector.process.poll() is None, detector.log()[-3000:]
    committed_before = committed_transactions(detector)
    outage_lines = len(detector.log().splitlines()) - lines_before
    own_broker.start()
    back_at = time.monotonic()
    back_wall = datetime.now().time().isoformat("milliseconds")
    outage_s = back_at - stopped_at
    wait_until(lambda: committed_transactions(detector) > committed_before, 60,
               f"the first commit after the restart (log {detector.log_path})")
    stall_s = time.monotonic() - back_at

    assert (own_broker.bootstrap_servers, cluster_id(own_broker)) == (address, identity)
    wait_until(lambda: detector.http_status("/readyz") == 200, 90,
               f"/readyz after the broker came back (log {detector.log_path})")
    feeder.join(120)
    assert not feeder.is_alive()
    alerts = read_all(own_broker.bootstrap_servers, topics.alerts, wanted=len(matches),
                      timeout=120)
    dead = read_all(own_broker.bootstrap_servers, topics.dlq, wanted=0, timeout=5)

    alert_ids = alert_event_ids(alerts)
    report(scenario, len(events), matches, alert_ids, len(dead))
    replaced = [line for line in detector.log().splitlines() if "replacing the producer" in line]
    print(f"[{scenario}] down {outage_s:.1f}s, {outage_lines} log lines meanwhile; first "
          f"commit {stall_s:.1f}s after the broker answered again (at {back_wall}); "
          f"{replaced or 'no wedge'}")
    assert_exactly_once(alert_ids, matches)
    assert dead == []
    assert detector.process.poll() is None
    return Restart(stall_s, outage_lines, replaced)


def test_detector_recovers_from_a_broker_restart_mid_stream_without_restarting_itself(
    own_broker: LocalKafka, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    restart = restart_mid_stream("broker restart", own_broker, run_dir, detectors)

    assert restart.stall_s < RESTART_STALL_S
    assert restart.outage_lines <= OUTAGE_LOG_LINES


def test_a_detector_started_before_its_broker_logs_the_address_and_starts_when_it_comes_up(
    own_broker: LocalKafka, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    topics = fresh_topics("late-broker")
    create_topics(own_broker.bootstrap_servers, topics.input, topics.alerts, topics.dlq)
    events, matches = mixed_workload(2_000, every=40)
    produce(own_broker.bootstrap_servers, topics.input, events)
    own_broker.stop()
    detector = start_detector(own_broker.bootstrap_servers, topics, run_dir, detectors)

    wait_until(lambda: f"cannot reach Kafka at {own_broker.bootstrap_servers}" in detector.log(),
               30, "the detector to log the unreachable bootstrap server")
    assert detector.http_status("/readyz") == 503
    assert detector.http_status("/healthz") == 200
    own_broker.start()

    detector.wait_ready(60)
    alerts = read_all(own_broker.bootstrap_servers, topics.alerts, wanted=len(matches))
    alert_ids = alert_event_ids(alerts)
    report("broker down at start-up", len(events), matches, alert_ids, 0)
    assert_exactly_once(alert_ids, matches)


def test_sigterm_while_the_broker_is_unreachable_exits_0_promptly(
    run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    detector = start_detector(address, fresh_topics("unreachable"), run_dir, detectors)
    wait_until(lambda: f"cannot reach Kafka at {address}" in detector.log(), 30,
               "the detector to log the unreachable bootstrap server")

    exit_code = detector.terminate(timeout=20)

    assert exit_code == 0, detector.log()[-3000:]


def test_a_missing_topic_is_logged_and_waited_for_then_processed_once_it_exists(
    own_broker: LocalKafka, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    topics = fresh_topics("missing")
    create_topics(own_broker.bootstrap_servers, topics.alerts, topics.dlq)
    detector = start_detector(own_broker.bootstrap_servers, topics, run_dir, detectors)

    wait_until(lambda: f"topic(s) {topics.input} do not exist" in detector.log(), 30,
               "the detector to log the missing topic")
    assert detector.http_status("/readyz") == 503
    create_topics(own_broker.bootstrap_servers, topics.input)
    events, matches = mixed_workload(2_000, every=40)
    produce(own_broker.bootstrap_servers, topics.input, events)

    detector.wait_ready(60)
    alerts = read_all(own_broker.bootstrap_servers, topics.alerts, wanted=len(matches))
    alert_ids = alert_event_ids(alerts)
    report("missing input topic", len(events), matches, alert_ids, 0)
    assert_exactly_once(alert_ids, matches)


def test_a_second_signal_during_shutdown_exits_130_at_once(
    own_broker: LocalKafka, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    topics = fresh_topics("signals")
    create_topics(own_broker.bootstrap_servers, topics.input, topics.alerts, topics.dlq)
    detector = start_detector(own_broker.bootstrap_servers, topics, run_dir, detectors)
    detector.wait_ready()
    assert detector.process is not None

    detector.process.send_signal(signal.SIGINT)
    detector.process.send_signal(signal.SIGTERM)

    assert detector.process.wait(10) == 130
    assert "second SIG" in detector.log()


def test_a_replica_started_twice_under_one_member_name_fences_the_older_which_exits_1(
    own_broker: LocalKafka, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    """member_name makes the transactional.id: a second replica with the same name takes it
    over, and the first one's next transaction fails fatally instead of writing duplicates."""
    topics = fresh_topics("fenced")
    create_topics(own_broker.bootstrap_servers, topics.input, topics.alerts, topics.dlq)
    group = f"g-{uuid.uuid4().hex}"
    older, newer = (
        DetectorProcess(own_broker.bootstrap_servers, topics, run_dir / "detectors",
                        group=group, member="same-name")
        for _ in range(2)
    )
    detectors += [older, newer]
    older.start().wait_ready()
    newer.start().wait_ready()
    events, matches = mixed_workload(3_000, every=60)

    produce(own_broker.bootstrap_servers, topics.input, events)

    assert older.process is not None
    assert older.process.wait(60) == 1
    assert "fatal: transactional producer failed" in older.log()
    assert "fenced" in older.log()
    assert "Traceback" not in older.log()
    alerts = read_all(own_broker.bootstrap_servers, topics.alerts, wanted=len(matches))
    alert_ids = alert_event_ids(alerts)
    report("same member name twice", len(events), matches, alert_ids, 0)
    assert_exactly_once(alert_ids, matches)
