"""The Schema Registry path end to end against a real registry (Apicurio, Confluent API).

A producer with confluent-kafka's AvroSerializer writes CloudTrail events through the registry,
the detector reads them with DETECTOR_INPUT_FORMAT=avro-registry and writes Avro alerts through
the same registry, and a consumer with AvroDeserializer reads them back. Mid-stream the writer
schema gains a compatible version, an incompatible one is refused by the registry's
compatibility rule, and the registry is stopped while events with a schema id the detector has
never seen arrive, then started again: nothing is lost, doubled or dead-lettered.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer.cloudtrail.record import SCHEMA_TEXT, json_to_avro
from consumer.offline.replay import account_of
from scripts.registry_local import LocalRegistry
from scripts.server_local import http_json
from tests.conftest import Broker, TopicFactory
from tests.support.events import mixed_workload
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    committed_offsets,
    read_all,
    wait_all_committed,
    wait_until,
)
from tests.support.metrics import scrape
from tests.support.servers import REGISTRY_USER

pytestmark = pytest.mark.slow

PARTITIONS = 3
SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
CREDENTIALS = ":".join(REGISTRY_USER)


def registry_client(registry: LocalRegistry) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": registry.url, "basic.auth.user.info": CREDENTIALS})


def writer_schema(*extra_fields: dict[str, Any]) -> str:
    """Our CloudTrail schema with fields appended: a later version a producer might write."""
    schema = json.loads(SCHEMA_TEXT)
    schema["fields"] = [*schema["fields"], *extra_fields]
    return json.dumps(schema)


def optional_field(name: str) -> dict[str, Any]:
    return {"name": name, "type": ["null", "string"], "default": None}


def serializer(client: SchemaRegistryClient, schema: str) -> AvroSerializer:
    encoder: AvroSerializer = AvroSerializer(
        client, schema, lambda record, _ctx: json_to_avro(record)
    )
    return encoder


def produce(bootstrap: str, topic: str, encode: AvroSerializer,
            records: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """(index, record) pairs, record i to partition i % PARTITIONS."""
    context = SerializationContext(topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "10"})
    for index, record in records:
        producer.produce(topic, value=encode(record, context), key=account_of(record),
                         partition=index % PARTITIONS)
    assert producer.flush(60) == 0


@pytest.fixture
def topics(new_topic: TopicFactory) -> Topics:
    return Topics(input=new_topic("in", partitions=PARTITIONS), alerts=new_topic("alerts"),
                  dlq=new_topic("dlq"))


def test_registry_refuses_calls_without_credentials(registry_server: LocalRegistry) -> None:
    status, _ = http_json("GET", f"{registry_server.url}/subjects")
    assert status == 401
    status, _ = http_json("GET", f"{registry_server.url}/subjects", auth=("detector", "wrong"))
    assert status == 401
    status, subjects = http_json("GET", f"{registry_server.url}/subjects", auth=REGISTRY_USER)
    assert status == 200
    assert isinstance(subjects, list)


def test_avro_through_a_real_registry_survives_a_new_schema_version_and_a_registry_restart(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess],
    registry_server: LocalRegistry,
) -> None:
    bootstrap = broker.bootstrap_servers
    client = registry_client(registry_server)
    subject = f"{topics.input}-value"
    events, matches = mixed_workload(900, every=20)
    assert len(matches) == 45  # under the seed rule's max_signals: nothing is throttled
    indexed = list(enumerate(events))
    first, second, third = indexed[:300], indexed[300:600], indexed[600:]

    v1 = client.register_schema(subject, Schema(SCHEMA_TEXT, "AVRO"))
    registry_server.set_compatibility(subject, "BACKWARD", auth=REGISTRY_USER)
    produce(bootstrap, topics.input, serializer(client, SCHEMA_TEXT), first)

    group = f"g-{uuid.uuid4().hex}"
    detector = DetectorProcess(
        bootstrap, topics, run_dir / "detectors", group=group,
        extra_env={
            "DETECTOR_INPUT_FORMAT": "avro-registry",
            "DETECTOR_ALERT_FORMAT": "avro-registry",
            "DETECTOR_SCHEMA_REGISTRY_URL": registry_server.url,
            "DETECTOR_SCHEMA_REGISTRY_BASIC_AUTH": CREDENTIALS,
        },
    )
    detectors.append(detector.start())
    detector.wait_ready()
    wait_all_committed(bootstrap, group, topics.input, PARTITIONS)

    # A compatible new writer version (one more optional field) while the detector runs.
    v2_text = writer_schema(optional_field("producerNote"))
    produce(bootstrap, topics.input, serializer(client, v2_text), second)
    v2 = client.get_latest_version(subject).schema_id
    assert v2 != v1
    # An incompatible one (a new field without a default) is refused under BACKWARD.
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(
            subject, Schema(writer_schema({"name": "required_now", "type": "string"}), "AVRO")
        )
    assert refused.value.http_status_code == 409
    assert client.get_latest_version(subject).schema_id == v2
    wait_all_committed(bootstrap, group, topics.input, PARTITIONS)

    # A third version the detector has never seen arrives while the registry is down: the
    # producer's serializer has its id cached; the detector must ask the registry for it.
    v3_serializer = serializer(client, writer_schema(optional_field("producerNote"),
                                                     optional_field("shipper")))
    v3_serializer(third[0][1], SerializationContext(topics.input, MessageField.VALUE))
    registry_server.stop()
    produce(bootstrap, topics.input, v3_serializer, third)
    wait_until(lambda: scrape(detector.port).value("decode_errors_total",
                                                   reason="registry-unavailable") > 0,
               30, f"a registry-unavailable decode error (log {detector.log_path})")
    assert committed_offsets(bootstrap, group, topics.input, PARTITIONS) != [300] * PARTITIONS
    registry_server.start()
    wait_all_committed(bootstrap, group, topics.input, PARTITIONS, timeout=60)

    alerts = read_all(bootstrap, topics.alerts, wanted=len(matches), timeout=30)
    dead = read_all(bootstrap, topics.dlq, wanted=0, timeout=5)
    deserialize = AvroDeserializer(registry_client(registry_server))
    context = SerializationContext(topics.alerts, MessageField.VALUE)
    records = [deserialize(message.value(), context) for message in alerts]
    counts = Counter(record["event_id"] for record in records)
    assert sorted(counts) == sorted(matches), "alerts lost or unexpected"
    assert [event_id for event_id, n in counts.items() if n > 1] == [], "alerts duplicated"
    assert dead == []
    assert {record["rule_id"] for record in records} == {SEED_ID}
    for record in records:
        assert json.loads(record["document"])["event"]["id"] == record["event_id"]
        assert record["user_target_name"].startswith("target-")
    metrics = scrape(detector.port)
    assert metrics.value("decode_errors_total", reason="registry-unavailable") > 0
    assert metrics.by_label("decode_errors_total", "reason").keys() == {"registry-unavailable"}
    assert metrics.total("messages_consumed_total") == len(events)
    assert metrics.value("transactions_total", outcome="aborted") == 0
    print(f"\n[real registry] schema ids v1={v1} v2={v2}; {len(records)} Avro alerts; "
          f"retries={metrics.value('decode_errors_total', reason='registry-unavailable'):.0f}")
