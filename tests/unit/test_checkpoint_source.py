"""The source's bookkeeping without a broker: lag from librdkafka's statistics and our own
commits, reachability, and the member's fence flag that decides a timed-out transaction."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from confluent_kafka import KafkaError, TopicPartition
from prometheus_client import CollectorRegistry

from consumer.stream.metrics import Metrics
from consumer.stream.source import Source


def make_source(isolation: str = "read_committed") -> Source:
    return Source(
        config={"bootstrap.servers": "127.0.0.1:9", "group.id": "g",
                "isolation.level": isolation, "socket.connection.setup.timeout.ms": "1000"},
        subscription=["in"], start_from="earliest", lookback=timedelta(minutes=6),
        metrics=Metrics(CollectorRegistry()),
        on_assign=lambda partitions: None, on_revoke=lambda partitions: None,
        on_lost=lambda partitions: None,
    )


@pytest.fixture
def source() -> Iterator[Source]:
    made = make_source()
    made.assignment = {("in", 0), ("in", 1)}
    yield made
    made.close()


def stats(partitions: dict[int, dict[str, int]], *, broker_up: bool = True) -> str:
    return json.dumps({
        "brokers": {"b1": {"state": "UP" if broker_up else "DOWN", "nodeid": 1}},
        "topics": {"in": {"partitions": {str(p): s for p, s in partitions.items()}}},
    })


def test_lag_is_the_last_stable_offset_minus_our_commit(source: Source) -> None:
    source.record_committed([TopicPartition("in", 0, 40), TopicPartition("in", 1, 5)])

    source._on_stats(stats({0: {"ls_offset": 100, "hi_offset": 120, "app_offset": 90},
                            1: {"ls_offset": 5, "hi_offset": 5, "app_offset": 5}}))

    assert source.lag() == 60
    assert source.broker_reachable


def test_before_the_first_commit_lag_counts_from_the_read_position(source: Source) -> None:
    source._on_stats(stats({0: {"ls_offset": 100, "app_offset": -1, "next_offset": 30}}))

    assert source.lag() == 70


def test_a_read_uncommitted_source_measures_to_the_high_watermark() -> None:
    made = make_source("read_uncommitted")
    made.assignment = {("in", 0)}
    try:
        made.record_committed([TopicPartition("in", 0, 10)])
        made._on_stats(stats({0: {"ls_offset": 50, "hi_offset": 80}}))
        assert made.lag() == 70
    finally:
        made.close()


def test_partitions_not_assigned_are_ignored_and_no_broker_up_means_unreachable(
    source: Source,
) -> None:
    source.record_committed([TopicPartition("in", 7, 3)])
    source._on_stats(stats({7: {"ls_offset": 100}}, broker_up=False))

    assert source.lag() is None
    assert ("in", 7) not in source.committed
    assert not source.broker_reachable


def test_a_fatal_consumer_error_marks_the_membership_gone(source: Source) -> None:
    source._on_error(KafkaError(KafkaError._TRANSPORT, "down"))
    transient = source.member_fenced
    source._on_error(KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True))

    assert (transient, source.member_fenced) == (False, True)
