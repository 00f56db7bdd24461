"""The at-least-once sink's commit through the group, without a broker: offsets go to the
group only when every message of the batch was acknowledged."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from consumer.stream.metrics import Metrics
from consumer.stream.sink import AtLeastOnceSink


class Group:
    def __init__(self, refuse: bool = False) -> None:
        self.committed: list[TopicPartition] = []
        self.refuse = refuse

    @property
    def metadata(self) -> object:
        return "group-metadata"

    def commit(self, offsets: list[TopicPartition]) -> None:
        if self.refuse:
            raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
        self.committed += offsets


def sink() -> AtLeastOnceSink:
    return AtLeastOnceSink({"bootstrap.servers": "127.0.0.1:9"}, Metrics(CollectorRegistry()), 1.0)


def test_an_acknowledged_batch_commits_its_offsets_to_the_group() -> None:
    group, batch = Group(), sink()
    batch.begin()

    assert batch.commit([TopicPartition("in", 0, 12)], group)
    assert [(tp.topic, tp.partition, tp.offset) for tp in group.committed] == [("in", 0, 12)]
    assert not batch.in_batch


def test_a_batch_with_a_failed_delivery_is_read_again_and_commits_nothing() -> None:
    group, batch = Group(), sink()
    batch.begin()
    batch._failed_deliveries = 1

    assert not batch.commit([TopicPartition("in", 0, 12)], group)
    assert group.committed == []


def test_a_refused_offset_commit_means_the_batch_is_read_again() -> None:
    batch = sink()
    batch.begin()

    assert not batch.commit([TopicPartition("in", 0, 12)], Group(refuse=True))
