"""Avro written with a producer's own CloudTrail schema decodes to the same record as ours."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from consumer.cloudtrail.decode import (
    DecodeError,
    Events,
    RegistryAvroDecoder,
    SchemalessAvroDecoder,
)
from consumer.cloudtrail.record import SCHEMA_TEXT, json_to_avro
from consumer.config import ConfigError, Settings
from consumer.rules.detector import SKIPPED, Detector
from consumer.rules.loader import load_rules
from consumer.stream.app import make_decoder
from tests.support.events import create_access_key, event

MATCH = create_access_key(event_id="cross-1", caller="mallory", target="bob")
HARMLESS = event(event_id="read-1", request_parameters={"bucketName": "logs"})

OPTIONAL_STRING = ["null", "string"]
TYPED = {
    "type": "record", "name": "AuditEvent", "namespace": "com.example.security",
    "fields": [
        {"name": "eventVersion", "type": "string"},
        {"name": "eventTime", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "eventSource", "type": "string"},
        {"name": "eventName", "type": "string"},
        {"name": "awsRegion", "type": OPTIONAL_STRING, "default": None},
        {"name": "eventID", "type": "string"},
        {"name": "recipientAccountId", "type": OPTIONAL_STRING, "default": None},
        {"name": "userIdentity", "type": {
            "type": "record", "name": "Identity",
            "fields": [
                {"name": "type", "type": "string"},
                {"name": "userName", "type": OPTIONAL_STRING, "default": None},
                {"name": "accountId", "type": OPTIONAL_STRING, "default": None},
                {"name": "arn", "type": OPTIONAL_STRING, "default": None},
            ],
        }},
        {"name": "requestParameters", "type": ["null", "string"], "default": None},
        {"name": "responseElements", "type": ["null", {"type": "map", "values": "string"}],
         "default": None},
        {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
    ],
}
JSON_STRING = {
    "type": "record", "name": "RawCloudTrail", "namespace": "com.example",
    "fields": [
        {"name": "ingestedAt", "type": "long"},
        {"name": "payload", "type": "string"},
    ],
}
NOT_CLOUDTRAIL = {
    "type": "record", "name": "Order", "fields": [
        {"name": "id", "type": "long"}, {"name": "sku", "type": "string"},
        {"name": "customer", "type": "string"},
    ],
}


def typed(record: dict[str, Any]) -> dict[str, Any]:
    """`record` as the producer's typed schema holds it."""
    identity = record["userIdentity"]
    return {
        "eventVersion": record["eventVersion"],
        "eventTime": datetime.fromisoformat(record["eventTime"]).astimezone(UTC),
        "eventSource": record["eventSource"], "eventName": record["eventName"],
        "awsRegion": record["awsRegion"], "eventID": record["eventID"],
        "recipientAccountId": record["recipientAccountId"],
        "userIdentity": {key: identity.get(key) for key in ("type", "userName", "accountId",
                                                             "arn")},
        "requestParameters": json.dumps(record["requestParameters"]),
        "responseElements": {"status": "Active"},
        "tags": {"team": "secops"},
    }


def body(value: dict[str, Any], schema: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), value)
    return buffer.getvalue()


def wire(schema_id: int, data: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + data


def test_a_typed_foreign_schema_is_normalized_to_our_record() -> None:
    decoder = SchemalessAvroDecoder(writer_schema=TYPED)

    record = decoder.decode(body(typed(MATCH), TYPED))

    assert isinstance(record, dict)
    assert record["eventName"] == "CreateAccessKey"
    assert record["eventTime"] == MATCH["eventTime"]
    assert json.loads(record["requestParameters"]) == MATCH["requestParameters"]
    assert json.loads(record["responseElements"]) == {"status": "Active"}
    assert record["userIdentity"]["userName"] == "mallory"
    assert json.loads(record["extraFields"]) == {"tags": {"team": "secops"}}


def test_the_seed_rule_alerts_on_a_foreign_typed_schema_and_the_screen_still_works() -> None:
    detector = Detector(SchemalessAvroDecoder(writer_schema=TYPED), load_rules())
    payloads = [body(typed(HARMLESS), TYPED), body(typed(MATCH), TYPED)]

    assert list(detector.screen(payloads, [len(p) for p in payloads])) == [1]
    verdict = detector.inspect(payloads[1])
    assert verdict is not SKIPPED
    assert not isinstance(verdict, type(None))
    assert [rule.name for rule in getattr(verdict, "matched", ())] == [
        "AWS IAM User Created Access Keys For Another User"
    ]


def test_a_schema_holding_the_record_as_one_json_string_decodes_and_bypasses_the_screen() -> None:
    decoder = SchemalessAvroDecoder(writer_schema=JSON_STRING)
    escaped = json.dumps(MATCH).replace("CreateAccessKey", "\\u0043reateAccessKey")
    payload = body({"ingestedAt": 1, "payload": escaped}, JSON_STRING)

    assert decoder.decode(payload) == json_to_avro(MATCH)
    assert decoder.check_framing(payload) is False
    detector = Detector(decoder, load_rules())
    assert detector.inspect(payload) is not SKIPPED


def test_a_json_string_schema_may_hold_an_envelope_too() -> None:
    envelope = {"detail-type": "AWS API Call via CloudTrail", "detail": MATCH, "id": "e-1"}
    decoded = SchemalessAvroDecoder(writer_schema=JSON_STRING).decode(
        body({"ingestedAt": 1, "payload": json.dumps(envelope)}, JSON_STRING)
    )

    assert isinstance(decoded, Events)
    assert decoded.items == (json_to_avro(MATCH),)


def test_a_schema_that_does_not_carry_cloudtrail_is_refused_saying_so() -> None:
    with pytest.raises(ValueError, match="does not carry CloudTrail"):
        SchemalessAvroDecoder(writer_schema=NOT_CLOUDTRAIL)


def test_a_foreign_schema_registered_mid_stream_decodes_next_to_ours() -> None:
    registry: SchemaRegistryClient = SchemaRegistryClient.new_client({"url": "mock://"})
    decoder = RegistryAvroDecoder(registry)
    ours = registry.register_schema("cloudtrail-value", Schema(SCHEMA_TEXT, "AVRO"))
    first = decoder.decode(wire(ours, body(json_to_avro(MATCH), json.loads(SCHEMA_TEXT))))

    theirs = registry.register_schema("audit-value", Schema(json.dumps(TYPED), "AVRO"))
    raw = registry.register_schema("raw-value", Schema(json.dumps(JSON_STRING), "AVRO"))
    second = decoder.decode(wire(theirs, body(typed(MATCH), TYPED)))
    third = decoder.decode(wire(raw, body({"ingestedAt": 1, "payload": json.dumps(MATCH)},
                                          JSON_STRING)))

    assert first == third == json_to_avro(MATCH)
    assert isinstance(second, dict)
    assert second["eventID"] == "cross-1"
    assert second["userIdentity"]["userName"] == "mallory"
    frames = [wire(theirs, body(typed(MATCH), TYPED))]
    assert decoder.well_framed(frames, [len(frames[0])]) is True
    raw_frames = [wire(raw, body({"ingestedAt": 1, "payload": "{}"}, JSON_STRING))]
    assert decoder.well_framed(raw_frames, [len(raw_frames[0])]) is False


def test_a_registered_schema_without_cloudtrail_is_incompatible_with_a_clear_reason() -> None:
    registry: SchemaRegistryClient = SchemaRegistryClient.new_client({"url": "mock://"})
    orders = registry.register_schema("orders-value", Schema(json.dumps(NOT_CLOUDTRAIL), "AVRO"))

    with pytest.raises(DecodeError) as caught:
        RegistryAvroDecoder(registry).decode(
            wire(orders, body({"id": 1, "sku": "a", "customer": "b"}, NOT_CLOUDTRAIL))
        )

    assert caught.value.reason == "incompatible-schema"
    assert "does not carry CloudTrail" in str(caught.value)


def test_a_writer_schema_file_without_cloudtrail_is_a_configuration_error_naming_it(
    tmp_path: Path,
) -> None:
    schema_file = tmp_path / "orders.avsc"
    schema_file.write_text(json.dumps(NOT_CLOUDTRAIL))
    settings = Settings(input_format="avro", writer_schema=schema_file)

    with pytest.raises(ConfigError, match=r"DETECTOR_WRITER_SCHEMA .*does not carry CloudTrail"):
        make_decoder(settings)


def test_a_writer_schema_file_of_a_foreign_schema_reads_its_messages(tmp_path: Path) -> None:
    schema_file = tmp_path / "audit.avsc"
    schema_file.write_text(json.dumps(TYPED))

    decoder = make_decoder(Settings(input_format="avro", writer_schema=schema_file))

    decoded = decoder.decode(body(typed(MATCH), TYPED))
    assert isinstance(decoded, dict)
    assert decoded["eventID"] == "cross-1"
