"""A dead-letter topic whose max.message.bytes is below what the producer allows, against the
real broker: the too-large dead letter goes without its value, the stream moves on."""

from __future__ import annotations

import random
import re
import uuid
from pathlib import Path

from confluent_kafka import Message
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.offline.replay import account_of, avro_encoder
from tests.conftest import Broker
from tests.support.events import mixed_workload
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    alert_event_ids,
    produce_raw,
    read_all,
    wait_all_committed,
)

DLQ_LIMIT = 20_000
"""The dead-letter topic's max.message.bytes: far below the producer's 1 MB."""


def header(message: Message, name: str) -> bytes | None:
    value = dict(message.headers() or []).get(name)
    assert value is None or isinstance(value, bytes), (name, value)
    return value


def test_a_dead_letter_over_the_dlq_topics_limit_goes_without_its_value_and_the_batch_commits(
    broker: Broker, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(f"limit-in-{suffix}", f"limit-alerts-{suffix}", f"limit-dlq-{suffix}")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    futures = admin.create_topics([
        NewTopic(topics.input, 1, 1), NewTopic(topics.alerts, 1, 1),
        NewTopic(topics.dlq, 1, 1, config={"max.message.bytes": str(DLQ_LIMIT)}),
    ])
    for future in futures.values():
        future.result(timeout=30)
    events, matches = mixed_workload(400, every=20)
    encode = avro_encoder()
    # A matching record with 60 kB of garbage after it: the screen hands it on, decoding fails.
    poison_head = encode({**events[0], "eventID": "11111111-0000-4000-8000-000000000000"})
    poison = poison_head + random.Random(14).randbytes(60_000)
    values = [(account_of(event), encode(event)) for event in events]
    values.insert(len(values) // 2, (b"poison", poison))  # one batch: alerts before and after
    produce_raw(broker.bootstrap_servers, topics.input, values)
    group = f"g-{uuid.uuid4().hex}"
    detector = DetectorProcess(broker.bootstrap_servers, topics, run_dir / "detectors",
                               group=group)
    detectors.append(detector)
    detector.start()

    wait_all_committed(broker.bootstrap_servers, group, topics.input, 1, timeout=90)
    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(matches))
    dead = read_all(broker.bootstrap_servers, topics.dlq, wanted=1)

    assert sorted(alert_event_ids(alerts)) == sorted(matches)
    assert [m.key() for m in dead] == [b"poison"]
    assert dead[0].value() is None
    assert header(dead[0], "dlq.value.omitted") == f"{len(poison)} bytes".encode()
    assert header(dead[0], "dlq.source.offset") == str(len(values) // 2).encode()
    assert header(dead[0], "dlq.reason") is not None
    metrics = detector.metrics_text()
    assert re.search(rf'messages_too_large_total{{topic="{topics.dlq}"}} 1\.0', metrics), metrics
    assert detector.log().count("refused as too large") == 1
    assert 'transactions_total{outcome="aborted"}' not in metrics
