"""The service with the stateful stage, on the in-memory broker: rows go through the
repartition topic, runs close on the markers, state survives a crash through its changelog."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from consumer.config import Settings
from consumer.rules.detector import Detector
from consumer.stream.app import load_enabled_rules, make_decoder
from consumer.stream.metrics import Metrics
from consumer.stream.service import Health, Service
from consumer.stream.testing import InMemoryBroker
from tests.support.stateful_rules import (
    COUNT_AND_IPS,
    COUNT_ID,
    START,
    counting_rule,
    read_at,
    write_rules,
)

REPARTITION = "g.repartition"
RULES = {"count.toml": counting_rule(threshold=2, aggregates=COUNT_AND_IPS)}


def read(number: int, minutes: float, caller: str = "alice") -> bytes:
    return json.dumps(read_at(f"read-{number}", caller,
                              START + timedelta(minutes=minutes))).encode()


def service(broker: InMemoryBroker, rules: Path) -> Service:
    settings = Settings.model_validate({
        "input_topics": ["in"], "input_format": "json", "batch_size": 4, "group_id": "g",
        "rules_dir": rules, "repartition_partitions": 2, "allowed_lateness": "1m",
    })
    detector = Detector(make_decoder(settings), load_enabled_rules(settings))
    running = Service(settings, detector, Metrics(CollectorRegistry()), Health(), clients=broker)
    running.open(broker)
    broker.sources[-1].assign()
    return running


def counts(broker: InMemoryBroker) -> list[tuple[str, int]]:
    documents = [json.loads(r.value or b"") for r in broker.records("cloudtrail-alerts")]
    return sorted((d["user"]["name"], d["Esql"]["event_count"]) for d in documents
                  if d["kibana"]["alert"]["rule"]["rule_id"] == COUNT_ID)


def test_rows_from_both_input_partitions_meet_in_their_group_and_alert_once(
    tmp_path: Path,
) -> None:
    write_rules(tmp_path, RULES)
    broker = InMemoryBroker(partitions=2, inputs=("in", REPARTITION))
    running = service(broker, tmp_path)
    for number, minute in enumerate((1, 2, 3)):
        broker.produce("in", read(number, minute), partition=number % 2)
    for partition in (0, 1):  # hours later on both partitions: the watermark passes the runs
        broker.produce("in", read(10 + partition, 360, f"closer-{partition}"),
                       partition=partition)

    for _ in range(20):
        running.step()

    assert counts(broker) == [("alice", 3), ("alice", 3)]  # the runs at 10:05 and 10:10
    assert broker.records("g.aggregations-changelog")


def test_a_crash_mid_window_restores_the_groups_from_the_changelog(tmp_path: Path) -> None:
    write_rules(tmp_path, RULES)
    broker = InMemoryBroker(partitions=2, inputs=("in", REPARTITION))
    first = service(broker, tmp_path)
    broker.produce("in", read(0, 1), partition=0)
    broker.produce("in", read(1, 2), partition=1)
    for _ in range(6):
        first.step()
    assert counts(broker) == []
    # The first member dies (its open batch, if any, is lost); a new one takes over.
    second = service(broker, tmp_path)
    broker.produce("in", read(2, 3), partition=0)
    for partition in (0, 1):
        broker.produce("in", read(10 + partition, 360, f"closer-{partition}"),
                       partition=partition)
    for _ in range(20):
        second.step()

    assert counts(broker) == [("alice", 3), ("alice", 3)]
