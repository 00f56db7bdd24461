"""Alerts in the Avro wire format carry the typed routing fields and the full ECS document."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient

from consumer.alerts.avro import ALERT_SCHEMA_TEXT
from consumer.alerts.document import build_alert, build_throttle_summary, encode_json
from consumer.cloudtrail.record import json_to_avro
from consumer.rules.loader import LoadedRule, load_rules
from consumer.stream.registry import registered_alert_encoder
from tests.support.events import create_access_key

SEED_RULE_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"


def seed_rule() -> LoadedRule:
    return next(rule for rule in load_rules() if rule.rule_id == SEED_RULE_ID)


def decode_wire(client: SchemaRegistryClient, payload: bytes) -> dict[str, object]:
    assert payload[0] == 0
    schema_id = int.from_bytes(payload[1:5], "big")
    writer = fastavro.parse_schema(json.loads(client.get_schema(schema_id).schema_str or ""))
    record = fastavro.schemaless_reader(io.BytesIO(payload[5:]), writer, None)
    assert isinstance(record, dict)
    return record


def test_a_match_encodes_as_wire_format_avro_with_routing_fields_and_the_whole_document() -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://"})
    rule = seed_rule()
    record = json_to_avro(create_access_key(event_id="e-1", caller="alice", target="bob"))
    alert = build_alert(
        rule=rule.definition.rule, ruleset=rule.source, record=record,
        fields_read=rule.query.fields_read, detected_at=datetime(2026, 11, 29, tzinfo=UTC),
        original="{}",
    )

    decoded = decode_wire(client, registered_alert_encoder(client, "alerts-value")(alert))

    assert decoded["alert_uuid"] == alert.alert_id
    assert decoded["rule_id"] == SEED_RULE_ID
    assert decoded["severity"] == "medium"
    assert (decoded["risk_score"], decoded["rule_version"]) == (47, 2)
    assert (decoded["user_name"], decoded["user_target_name"]) == ("alice", "bob")
    assert decoded["event_id"] == "e-1"
    assert decoded["tactic_ids"] == ["TA0003", "TA0004"]
    assert decoded["technique_ids"] == ["T1098", "T1098.001"]
    assert decoded["event_original"] == "{}"
    assert decoded["document"] == encode_json(alert).decode()
    assert client.get_latest_version("alerts-value").schema.schema_str == ALERT_SCHEMA_TEXT


def test_a_throttle_summary_encodes_without_source_event_fields() -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://"})
    rule = seed_rule()
    start = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    summary = build_throttle_summary(
        rule=rule.definition.rule, ruleset=rule.source, suppressed=7, window_start=start,
        window_end=datetime(2026, 11, 29, 10, 5, tzinfo=UTC), worker="w-0",
    )

    decoded = decode_wire(client, registered_alert_encoder(client, "alerts-value")(summary))

    assert decoded["event_id"] is None
    assert "7 further matches" in str(decoded["reason"])
    assert json.loads(str(decoded["document"]))["detector"]["throttle"]["suppressed"] == 7


def test_the_avro_document_carries_the_response_elements_without_event_original() -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://"})
    rule = seed_rule()
    source = create_access_key(event_id="e-2", caller="alice", target="bob")
    source["responseElements"] = {"accessKey": {"accessKeyId": "AKIAEXAMPLENEWKEY123"}}
    alert = build_alert(
        rule=rule.definition.rule, ruleset=rule.source, record=json_to_avro(source),
        fields_read=rule.query.fields_read, detected_at=datetime(2026, 11, 29, tzinfo=UTC),
        original=None,
    )

    decoded = decode_wire(client, registered_alert_encoder(client, "alerts-value")(alert))

    assert decoded["event_original"] is None
    document = json.loads(str(decoded["document"]))
    assert document["aws"]["cloudtrail"]["response_elements"] == (
        "{accessKey={accessKeyId=AKIAEXAMPLENEWKEY123}}"
    )
