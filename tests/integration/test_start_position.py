"""Where a group without committed offsets starts: the rules' lookback by default, or as asked.

Matching events carry explicit Kafka timestamps of a few ages, so each start position must pick
an exact subset of them, and the alerts show which were processed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer

from consumer.offline.replay import account_of, avro_encoder
from tests.conftest import Broker, TopicFactory
from tests.support.events import create_access_key, event
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    alert_event_ids,
    committed_offsets,
    end_offsets,
    produce,
    read_all,
    wait_all_committed,
    wait_until,
)
from tests.support.metrics import scrape

AGES = {
    "age-2h": timedelta(hours=2),
    "age-30m": timedelta(minutes=30),
    "age-10m": timedelta(minutes=10),
    "age-0": None,
}
"""Event id -> how long before the test its message is timestamped (None: produced now)."""


def produce_aged(bootstrap: str, topic: str, now: datetime) -> None:
    """One matching event per age, oldest first, each with its Kafka timestamp set to its age."""
    producer = Producer({"bootstrap.servers": bootstrap})
    encode = avro_encoder()
    for event_id, age in AGES.items():
        record = create_access_key(event_id=event_id, caller="mallory", target="bob")
        if age is None:
            producer.produce(topic, value=encode(record), key=account_of(record))
        else:
            timestamp_ms = int((now - age).timestamp() * 1000)
            producer.produce(topic, value=encode(record), key=account_of(record),
                             timestamp=timestamp_ms)
    assert producer.flush(30) == 0


@pytest.fixture
def topics(new_topic: TopicFactory) -> Topics:
    return Topics(input=new_topic("in"), alerts=new_topic("alerts"), dlq=new_topic("dlq"))


StartDetector = Callable[[str | None, str], DetectorProcess]


@pytest.fixture
def start_detector(
    broker: Broker, topics: Topics, run_dir: Path
) -> Iterator[StartDetector]:
    """Starts a detector in a group with DETECTOR_START_FROM set (None: left unset)."""
    started: list[DetectorProcess] = []

    def start(start_from: str | None, group: str) -> DetectorProcess:
        detector = DetectorProcess(broker.bootstrap_servers, topics, run_dir / "detectors",
                                   group=group)
        if start_from is None:
            del detector.env["DETECTOR_START_FROM"]
        else:
            detector.env["DETECTOR_START_FROM"] = start_from
        started.append(detector)
        return detector.start()

    yield start
    for detector in started:
        detector.stop()


def twenty_minutes_ago_iso(now: datetime) -> str:
    return (now - timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("start_from", "processed"),
    [
        (None, ["age-0"]),
        ("earliest", ["age-2h", "age-30m", "age-10m", "age-0"]),
        ("now-1h", ["age-30m", "age-10m", "age-0"]),
        ("iso-20-minutes-ago", ["age-10m", "age-0"]),
    ],
    ids=["default-lookback-6m", "earliest", "now-1h", "iso-time"],
)
def test_a_new_group_processes_only_messages_from_its_start_position(
    broker: Broker, topics: Topics, start_detector: StartDetector,
    start_from: str | None, processed: list[str],
) -> None:
    now = datetime.now(UTC)
    produce_aged(broker.bootstrap_servers, topics.input, now)
    if start_from == "iso-20-minutes-ago":
        start_from = twenty_minutes_ago_iso(now)
    group = f"g-{uuid.uuid4().hex}"
    detector = start_detector(start_from, group)

    wait_all_committed(broker.bootstrap_servers, group, topics.input, 1)
    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(processed))

    assert alert_event_ids(alerts) == processed
    assert scrape(detector.port).total("messages_consumed_total") == len(processed)


def test_latest_skips_everything_already_in_the_topic(
    broker: Broker, topics: Topics, start_detector: StartDetector
) -> None:
    bootstrap = broker.bootstrap_servers
    produce_aged(bootstrap, topics.input, datetime.now(UTC))
    backlog = end_offsets(bootstrap, topics.input, 1)[0]
    group = f"g-{uuid.uuid4().hex}"
    start_detector("latest", group).wait_ready()

    def consuming_new_messages() -> bool:
        """Harmless probes until the group commits past the backlog: from then on the start
        position is fixed, and a new message cannot be mistaken for part of the backlog."""
        produce(bootstrap, topics.input, [event(event_id=f"probe-{uuid.uuid4().hex}")])
        return committed_offsets(bootstrap, group, topics.input, 1)[0] > backlog

    wait_until(consuming_new_messages, 60, "the detector to consume new messages")
    produce(bootstrap, topics.input,
            [create_access_key(event_id="after-start", caller="mallory", target="bob")])
    wait_all_committed(bootstrap, group, topics.input, 1)
    alerts = read_all(bootstrap, topics.alerts, wanted=1)

    assert alert_event_ids(alerts) == ["after-start"]
