"""Replaying CloudTrail files: keys, encoders, fresh eventIDs per pass, retiming."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
    MockSchemaRegistryClient,
)

from consumer.cloudtrail.decode import RegistryAvroDecoder, SchemalessAvroDecoder
from consumer.cloudtrail.record import json_to_avro
from consumer.offline.replay import (
    ReplayError,
    ReplayOptions,
    account_of,
    avro_encoder,
    json_encoder,
    registry_encoder,
    replay,
)
from scripts.kafka_local import free_port
from tests.support.events import ACCOUNTS, create_access_key, event


class RecordingProducer:
    """Stands in for confluent_kafka.Producer: keeps what was produced, in order, and reports
    each delivery on flush (failing those whose index is in `fail_at`)."""

    def __init__(self, full_times: int = 0, fail_at: frozenset[int] = frozenset()) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.poll_timeouts: list[float] = []
        self.flushed = False
        self._full_times = full_times
        self._fail_at = fail_at
        self._reports: list[Callable[[KafkaError | None, Any], None]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None,
                on_delivery: Callable[[KafkaError | None, Any], None]) -> None:
        if self._full_times:
            self._full_times -= 1
            raise BufferError("Local: Queue full")
        self.sent.append((topic, value, key))
        self._reports.append(on_delivery)

    def poll(self, timeout: float) -> int:
        self.poll_timeouts.append(timeout)
        return 0

    def flush(self, timeout: float) -> int:
        self.flushed = True
        for index, report in enumerate(self._reports):
            failed = KafkaError(KafkaError._MSG_TIMED_OUT) if index in self._fail_at else None
            report(failed, None)
        self._reports.clear()
        return 0


def replay_json(
    paths: list[Path], producer: RecordingProducer, options: ReplayOptions,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """`replay` as JSON to topic "input", into the recording stand-in; how many were sent."""
    result = replay(paths, cast("Producer", producer), "input", json_encoder(), options,
                    should_stop=should_stop)
    assert result.complete
    return result.sent


def sample_records() -> list[dict[str, Any]]:
    return [
        create_access_key(event_id="11111111-0000-4000-8000-000000000001", caller="mallory",
                          target="bob", account=ACCOUNTS[0]),
        event(event_id="11111111-0000-4000-8000-000000000002", account=ACCOUNTS[1]),
        event(event_id="11111111-0000-4000-8000-000000000003", account=ACCOUNTS[2]),
    ]


@pytest.fixture
def export(tmp_path: Path) -> Path:
    path = tmp_path / "export.json"
    path.write_text(json.dumps({"Records": sample_records()}))
    return path


def decoded_json(sent: list[tuple[str, bytes, bytes | None]]) -> list[dict[str, Any]]:
    return [json.loads(value) for _, value, _ in sent]


def test_account_of_prefers_the_recipient_account_then_the_callers() -> None:
    record = event(event_id="e", account="111122223333")
    record["userIdentity"]["accountId"] = "999999999999"
    caller_only = event(event_id="e", account="444455556666")
    del caller_only["recipientAccountId"]

    assert account_of(record) == b"111122223333"
    assert account_of(caller_only) == b"444455556666"
    assert account_of({"eventName": "X"}) is None
    assert account_of({"recipientAccountId": 123, "userIdentity": "not an object"}) is None


def test_replay_sends_every_record_keyed_by_account_in_file_order(export: Path) -> None:
    producer = RecordingProducer()

    sent = replay_json([export], producer, ReplayOptions())

    assert sent == 3
    assert [(topic, key) for topic, _, key in producer.sent] == [
        ("input", account.encode()) for account in ACCOUNTS
    ]
    assert decoded_json(producer.sent) == sample_records()
    assert producer.flushed


def test_replay_skips_entries_that_are_not_json_objects(tmp_path: Path) -> None:
    path = tmp_path / "odd.json"
    path.write_text(json.dumps([sample_records()[0], 42, "text", None]))
    producer = RecordingProducer()

    assert replay_json([path], producer, ReplayOptions()) == 1


def test_replay_waits_for_room_when_the_producer_queue_is_full(export: Path) -> None:
    producer = RecordingProducer(full_times=2)

    sent = replay_json([export], producer, ReplayOptions())

    assert sent == 3
    assert decoded_json(producer.sent) == sample_records()
    assert [timeout for timeout in producer.poll_timeouts if timeout > 0] == [0.1, 0.1]


def test_each_loop_pass_gets_fresh_deterministic_event_ids(export: Path) -> None:
    def three_passes() -> list[str]:
        producer = RecordingProducer()
        replay_json([export], producer, ReplayOptions(loop=True),
                    should_stop=lambda: len(producer.sent) >= 9)
        return [record["eventID"] for record in decoded_json(producer.sent)]

    ids = three_passes()

    originals = [record["eventID"] for record in sample_records()]
    assert len(ids) == 9
    assert ids[:3] == originals
    assert len(set(ids)) == 9
    assert all(uuid.UUID(event_id).version == 5 for event_id in ids[3:])
    assert three_passes() == ids


def test_loop_passes_change_only_the_event_id(export: Path) -> None:
    producer = RecordingProducer()
    replay_json([export], producer, ReplayOptions(loop=True),
                should_stop=lambda: len(producer.sent) >= 6)
    first, second = decoded_json(producer.sent)[:3], decoded_json(producer.sent)[3:]

    for original, again in zip(first, second, strict=True):
        assert {k: v for k, v in again.items() if k != "eventID"} == {
            k: v for k, v in original.items() if k != "eventID"
        }


def test_retime_sets_event_time_to_the_moment_of_sending(export: Path) -> None:
    producer = RecordingProducer()
    before = datetime.now(UTC).replace(microsecond=0)

    replay_json([export], producer, ReplayOptions(retime=True))

    after = datetime.now(UTC)
    for record in decoded_json(producer.sent):
        assert record["eventTime"].endswith("Z")
        sent_at = datetime.strptime(record["eventTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert before <= sent_at <= after


def test_without_retime_event_time_is_kept(export: Path) -> None:
    producer = RecordingProducer()

    replay_json([export], producer, ReplayOptions())

    assert {record["eventTime"] for record in decoded_json(producer.sent)} == {
        "2026-11-29T10:00:00Z"
    }


def test_avro_encoder_output_is_read_back_by_the_schemaless_decoder() -> None:
    decoder = SchemalessAvroDecoder()

    for record in sample_records():
        assert decoder.decode(avro_encoder()(record)) == json_to_avro(record)


def test_registry_encoder_writes_the_confluent_wire_format_the_registry_decoder_reads() -> None:
    client = MockSchemaRegistryClient({"url": "mock://replay-test"})
    encode = registry_encoder(client, "cloudtrail-events-value")
    schema_id = client.get_latest_version("cloudtrail-events-value").schema_id
    decoder = RegistryAvroDecoder(client)

    for record in sample_records():
        payload = encode(record)
        assert payload[0] == 0
        assert int.from_bytes(payload[1:5], "big") == schema_id
        assert payload[5:] == avro_encoder()(record)
        assert decoder.decode(payload) == json_to_avro(record)


def test_registry_encoder_reuses_the_schema_id_registered_for_the_subject() -> None:
    client = MockSchemaRegistryClient({"url": "mock://replay-test-reuse"})
    record = sample_records()[0]

    first = registry_encoder(client, "topic-value")(record)
    second = registry_encoder(client, "topic-value")(record)

    assert first == second


def test_replay_reports_failed_deliveries_and_is_not_complete(export: Path) -> None:
    producer = RecordingProducer(fail_at=frozenset({1}))

    result = replay([export], cast("Producer", producer), "input", json_encoder(),
                    ReplayOptions())

    assert (result.sent, result.delivered, result.complete) == (3, 2, False)
    assert result.summary("input") == (
        "2 of 3 records delivered to input; failed: 1 x Local: Message timed out"
    )


def test_an_unreachable_registry_is_a_replay_error_naming_the_subject_not_a_traceback() -> None:
    client = SchemaRegistryClient(
        {"url": f"http://127.0.0.1:{free_port()}", "timeout": 5, "max.retries": 0}
    )

    with pytest.raises(ReplayError, match="cannot register the schema under input-value"):
        registry_encoder(client, "input-value")
