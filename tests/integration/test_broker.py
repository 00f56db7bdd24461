"""The foundation: the real broker delivers what Kafka promises, through confluent-kafka."""

from __future__ import annotations

import time
import uuid
from collections import Counter

from confluent_kafka import Consumer, KafkaError, Producer

from tests.conftest import Broker, TopicFactory


def consume_until(consumer: Consumer, wanted: int, timeout: float) -> list[bytes]:
    """Poll until `wanted` messages arrived or the deadline passed; fail on consumer errors."""
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(values) < wanted and time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=0.5):
            assert message.error() is None, message.error()
            values.append(message.value() or b"")
    return values


def consume_to_end(consumer: Consumer, timeout: float) -> list[bytes]:
    """Read a one-partition topic up to its end as this consumer's isolation level sees it."""
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=0.5):
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                return values
            assert error is None, error
            values.append(message.value() or b"")
    raise AssertionError(f"no end of partition within {timeout}s; read {len(values)}")


def test_thousand_messages_on_three_partitions_arrive_exactly_once_through_a_group(
    broker: Broker, new_topic: TopicFactory
) -> None:
    topic = new_topic("input", partitions=3)
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "enable.idempotence": True})
    sent = [f"message-{i}".encode() for i in range(1000)]
    for i, value in enumerate(sent):
        producer.produce(topic, value=value, key=str(i % 7).encode())
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    try:
        received = consume_until(consumer, len(sent), timeout=60)
        # Nothing more is waiting once all 1,000 are in: a duplicate would show up here.
        received += consume_until(consumer, 1, timeout=1)
    finally:
        consumer.close()

    counts = Counter(received)
    assert set(counts) == set(sent)
    assert max(counts.values()) == 1
    assert len(received) == 1000


def test_read_committed_consumer_never_sees_aborted_transactional_messages(
    broker: Broker, new_topic: TopicFactory
) -> None:
    topic = new_topic("txn")
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "transactional.id": f"tx-{uuid.uuid4().hex}",
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=f"aborted-{i}".encode())
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=f"committed-{i}".encode())
    producer.commit_transaction(30)

    def read(isolation: str) -> list[bytes]:
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap_servers,
                "group.id": f"g-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "isolation.level": isolation,
                "enable.partition.eof": True,
            }
        )
        consumer.subscribe([topic])
        try:
            return consume_to_end(consumer, timeout=30)
        finally:
            consumer.close()

    committed_view = read("read_committed")
    assert committed_view == [f"committed-{i}".encode() for i in range(10)]
    # The aborted records really are in the log: a read_uncommitted reader sees them.
    assert len(read("read_uncommitted")) == 20
