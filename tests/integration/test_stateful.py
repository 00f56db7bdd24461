"""Aggregating rules on the real broker: exactly-once state across kill -9, several workers on
input not keyed by the group, a rebalance in the middle of a window, a broker restart.

Every scenario feeds the same kind of stream: GetObject calls of a few users, event times spread
over two hours in the past (so once the input is idle the watermark passes every run), keyed at
random so that one user's events land on every input partition. The expected alerts are
`scan`'s over the same events; a read_committed reader of the alerts topic must see each of
them exactly once, with the same count.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.offline.replay import avro_encoder
from consumer.rules.loader import load_rules
from scripts.kafka_local import LocalKafka
from tests.conftest import Broker
from tests.support.kafka import DetectorProcess, Topics, local_broker, read_all, wait_until
from tests.support.stateful_rules import (
    COUNT_ID,
    SEED_ID,
    START,
    counting_rule,
    key_created_at,
    read_at,
    scan_alerts,
    suppressed_seed_rule,
    write_rules,
)

USERS = [f"user-{n}" for n in range(12)]

QUIET_INPUT = {"DETECTOR_IDLE_TIMEOUT": "1h"}
"""For tests that pause their input: a pause must not count as idle, or the wall clock would
close every run and the rest of the (old) events would be late. Their runs close on event
time (`Scenario.close_windows`)."""


def reads(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` GetObject calls over two hours, in event-time order up to a minute."""
    rng = random.Random(seed)
    records = []
    for number in range(count):
        moment = START + timedelta(seconds=number * 7200 / count + rng.uniform(0, 60))
        records.append(read_at(f"read-{seed}-{number}", rng.choice(USERS), moment))
    return records


def rules_dir(tmp_path: Path) -> Path:
    return write_rules(tmp_path / "rules", {"count.toml": counting_rule()})


def expected_alerts(tmp_path: Path, records: list[dict[str, Any]]) -> dict[str, int]:
    """scan's alerts of the counting rule: alert id -> event count."""
    alerts, _ = scan_alerts(tmp_path, records, load_rules(rules_dir(tmp_path)),
                            include_event_original=False)
    found = {}
    for alert in alerts:
        if alert["kibana"]["alert"]["rule"]["rule_id"] == COUNT_ID:
            found[alert["kibana"]["alert"]["uuid"]] = alert["Esql"]["event_count"]
    assert len(found) > 10, "the stream must give the rule something to count"
    return found


def create_topics(bootstrap: str, topics: Topics, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topics.input, partitions, 1),
                                   NewTopic(topics.alerts, 1, 1), NewTopic(topics.dlq, 1, 1)])
    for future in futures.values():
        future.result(timeout=30)


def produce_unkeyed(bootstrap: str, topic: str, records: list[dict[str, Any]],
                    partitions: int, seed: int) -> None:
    """Each record to a random partition: one user's events spread over all of them."""
    rng = random.Random(seed)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "5"})
    encode = avro_encoder()
    for record in records:
        producer.produce(topic, value=encode(record), partition=rng.randrange(partitions))
    assert producer.flush(60) == 0


def counted_alerts(bootstrap: str, topic: str, wanted: int, timeout: float = 30
                   ) -> list[tuple[str, int]]:
    messages = read_all(bootstrap, topic, wanted=wanted, timeout=timeout)
    found = []
    for message in messages:
        alert = json.loads(message.value() or b"{}")
        if alert["kibana"]["alert"]["rule"]["rule_id"] == COUNT_ID:
            found.append((alert["kibana"]["alert"]["uuid"], alert["Esql"]["event_count"]))
    return found


def assert_exactly_once(found: list[tuple[str, int]], expected: dict[str, int]) -> None:
    times = Counter(alert_id for alert_id, _ in found)
    doubled = sorted(alert_id for alert_id, n in times.items() if n > 1)
    lost = sorted(set(expected) - set(times))
    unexpected = sorted(set(times) - set(expected))
    wrong = sorted(alert_id for alert_id, count in found if expected.get(alert_id) != count)
    assert (doubled, lost, unexpected, wrong) == ([], [], [], [])


class Scenario:
    """Topics, a group and the detectors of one test."""

    def __init__(self, bootstrap: str, tmp_path: Path, started: list[DetectorProcess],
                 partitions: int = 3) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.tmp_path = tmp_path
        self.started = started
        self.partitions = partitions
        self.topics = Topics(f"agg-in-{suffix}", f"agg-alerts-{suffix}", f"agg-dlq-{suffix}")
        self.group = f"agg-{suffix}"
        create_topics(bootstrap, self.topics, partitions)

    def detector(self, member: str = "member-a", **env: str) -> DetectorProcess:
        process = DetectorProcess(
            self.bootstrap, self.topics, self.tmp_path / "detectors", group=self.group,
            member=member, extra_env={
                "DETECTOR_RULES_DIR": str(rules_dir(self.tmp_path)),
                "DETECTOR_IDLE_TIMEOUT": "2s",
                "DETECTOR_ALLOWED_LATENESS": "2m",
                "DETECTOR_TRANSACTION_MAX_MS": "100",
                **env,
            })
        self.started.append(process)
        return process.start()

    def produce(self, records: list[dict[str, Any]], seed: int) -> None:
        produce_unkeyed(self.bootstrap, self.topics.input, records, self.partitions, seed)

    def closing(self) -> list[dict[str, Any]]:
        """One read per input partition hours after the rest (each by its own user: no
        alert): the watermark passes every run without waiting for the input to go idle."""
        return [read_at(f"closing-{p}", f"closer-{p}", START + timedelta(hours=6))
                for p in range(self.partitions)]

    def close_windows(self) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap})
        encode = avro_encoder()
        for partition, record in enumerate(self.closing()):
            producer.produce(self.topics.input, value=encode(record), partition=partition)
        assert producer.flush(60) == 0

    def wait_for(self, expected: dict[str, int], timeout: float = 90) -> list[tuple[str, int]]:
        """The alerts once every expected one arrived (then drained, to catch doubles)."""
        found: list[tuple[str, int]] = []

        def arrived() -> bool:
            found[:] = counted_alerts(self.bootstrap, self.topics.alerts, 0, timeout=3)
            return {alert_id for alert_id, _ in found} >= set(expected)

        wait_until(arrived, timeout, f"{len(expected)} alerts on {self.topics.alerts}")
        return counted_alerts(self.bootstrap, self.topics.alerts, len(found))


def test_one_detector_alerts_once_per_run_and_group_as_scan_does(
    broker: Broker, tmp_path: Path, detectors: list[DetectorProcess]
) -> None:
    records = reads(600, seed=1)
    expected = expected_alerts(tmp_path, records)
    scenario = Scenario(broker.bootstrap_servers, tmp_path, detectors)
    detector = scenario.detector()
    detector.wait_ready()
    scenario.produce(records, seed=1)

    assert_exactly_once(scenario.wait_for(expected), expected)
    # Every run closed: no group left open, and the watermark stands near the wall clock.
    wanted = (f'cloudtrail_detector_stateful_open_groups{{rule_id="{COUNT_ID}"}} 0.0',
              'cloudtrail_detector_watermark_lag_seconds{partition="0"}')
    wait_until(lambda: all(line in detector.metrics_text() for line in wanted), 30,
               "the stateful metrics")


def test_kill_9_ten_times_loses_no_alert_and_doubles_none(
    broker: Broker, tmp_path: Path, detectors: list[DetectorProcess]
) -> None:
    records = reads(3000, seed=2)
    scenario = Scenario(broker.bootstrap_servers, tmp_path, detectors)
    expected = expected_alerts(tmp_path, records + scenario.closing())
    rng = random.Random(2)
    chunk = len(records) // 10
    for kill in range(10):
        # Static membership: the restarted member takes its partitions back at once instead
        # of waiting out the killed one's session.
        detector = scenario.detector(**QUIET_INPUT, DETECTOR_STATIC_MEMBERSHIP="true")
        detector.wait_ready()
        scenario.produce(records[kill * chunk:(kill + 1) * chunk], seed=kill)
        # Die somewhere inside the work: while rows, markers and runs are in flight (the
        # pause is where the fault strikes, not a wait for anything).
        threading.Event().wait(rng.uniform(0.1, 2.0))
        detector.kill()
    survivor = scenario.detector(**QUIET_INPUT, DETECTOR_STATIC_MEMBERSHIP="true")
    survivor.wait_ready()
    scenario.close_windows()

    assert_exactly_once(scenario.wait_for(expected, timeout=180), expected)
    assert "repartition partition" in survivor.log()  # its groups were restored


def test_two_workers_on_input_not_keyed_by_user_count_every_group_once(
    broker: Broker, tmp_path: Path, detectors: list[DetectorProcess]
) -> None:
    records = reads(1500, seed=3)
    expected = expected_alerts(tmp_path, records)
    scenario = Scenario(broker.bootstrap_servers, tmp_path, detectors, partitions=4)
    detector = scenario.detector(DETECTOR_WORKERS="2")
    scenario.produce(records, seed=3)

    assert_exactly_once(scenario.wait_for(expected, timeout=120), expected)
    assert detector.process is not None
    assert detector.process.poll() is None


def test_a_rebalance_in_the_middle_of_a_window_keeps_every_count(
    broker: Broker, tmp_path: Path, detectors: list[DetectorProcess]
) -> None:
    records = reads(1500, seed=4)
    scenario = Scenario(broker.bootstrap_servers, tmp_path, detectors, partitions=4)
    expected = expected_alerts(tmp_path, records + scenario.closing())
    first = scenario.detector("member-a", **QUIET_INPUT)
    first.wait_ready()
    half = len(records) // 2
    scenario.produce(records[:half], seed=4)
    wait_until(lambda: "cloudtrail_detector_alerts_total{" in first.metrics_text(), 60,
               "the first member's first alerts")
    # A second member joins while runs are open: partitions (input and repartition) move.
    second = scenario.detector("member-b", **QUIET_INPUT)
    second.wait_ready()
    scenario.produce(records[half:], seed=5)
    scenario.close_windows()

    assert_exactly_once(scenario.wait_for(expected, timeout=120), expected)
    assert "revoked" in first.log()


def test_a_broker_restart_mid_stream_keeps_every_count(
    own_broker: LocalKafka, tmp_path: Path, detectors: list[DetectorProcess]
) -> None:
    records = reads(1500, seed=6)
    scenario = Scenario(own_broker.bootstrap_servers, tmp_path, detectors)
    expected = expected_alerts(tmp_path, records + scenario.closing())
    detector = scenario.detector(**QUIET_INPUT)
    detector.wait_ready()
    scenario.produce(records[:750], seed=6)
    wait_until(lambda: "cloudtrail_detector_alerts_total{" in detector.metrics_text(), 60,
               "the first alerts before the restart")
    own_broker.stop()
    threading.Event().wait(3.0)  # down for a while: the point of the test
    own_broker.start()
    scenario.produce(records[750:], seed=7)
    scenario.close_windows()

    assert_exactly_once(scenario.wait_for(expected, timeout=180), expected)
    assert detector.process is not None
    assert detector.process.poll() is None


@pytest.fixture(scope="module")
def own_broker(run_dir: Path) -> Iterator[LocalKafka]:
    """This module's own broker, which one test restarts."""
    with local_broker(run_dir / "kafka-stateful") as local:
        yield local


def test_suppression_on_the_seed_rule_sends_the_first_alert_then_the_count(
    broker: Broker, tmp_path: Path, detectors: list[DetectorProcess]
) -> None:
    # Ours replaces the built-in rule of the same id, adding suppression by the caller.
    write_rules(rules_dir(tmp_path), {"seed.toml": suppressed_seed_rule("user.name", 30)})
    keys = [key_created_at(f"key-{number}", "mallory", f"t{number}",
                           START + timedelta(minutes=minute))
            for number, minute in enumerate((0, 5, 10, 50))]
    scenario = Scenario(broker.bootstrap_servers, tmp_path, detectors)
    scenario.detector().wait_ready()
    scenario.produce(keys, seed=8)

    def seed_alerts() -> list[tuple[str, int | None]]:
        found = []
        for message in read_all(broker.bootstrap_servers, scenario.topics.alerts, wanted=0,
                                timeout=3):
            alert = json.loads(message.value() or b"{}")
            if alert["kibana"]["alert"]["rule"]["rule_id"] == SEED_ID:
                found.append((alert["event"]["id"],
                              alert["kibana"]["alert"]["suppression"]["docs_count"]))
        return found

    # The first window (key-0 absorbing key-1 and key-2) and the next one (key-3, alone). A
    # window's first alert goes out when the watermark passes it, and again with the final
    # count when the window closes; found in one evaluation, the two are one message.
    def last_counts() -> dict[str, int | None]:
        return dict(seed_alerts())

    wait_until(lambda: last_counts() == {"key-0": 2, "key-3": 0}, 90, "the suppressed alerts")
    found = seed_alerts()
    assert Counter(event_id for event_id, _ in found)["key-0"] <= 2
    assert [count for event_id, count in found if event_id == "key-3"] == [0]
