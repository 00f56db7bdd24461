"""The alert for a row of an aggregating rule's run: the row's columns, the rule's fields, and
an id from rule, run and group."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from consumer.alerts.avro import WireAlertEncoder, to_avro_record
from consumer.alerts.document import build_run_alert, encode_json
from consumer.alerts.suppression import Suppressor
from consumer.rules.loader import LoadedRule, load_rules
from consumer.rules.model import AlertSuppression, SuppressionDuration
from consumer.rules.schedule import alert_id

SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
RUN_MS = 1_764_590_400_000
DETECTED_AT = datetime(2025, 12, 1, 12, 0, 7, tzinfo=UTC)


@pytest.fixture(scope="module")
def rule() -> LoadedRule:
    return next(rule for rule in load_rules() if rule.rule_id == SEED_ID)


def row_alert(rule: LoadedRule, row: dict[str, object], key: tuple[object, ...],
              run_ms: int = RUN_MS) -> dict[str, object]:
    alert = build_run_alert(rule=rule.definition.rule, ruleset=rule.source, run_ms=run_ms,
                            row=row, group_key=key, detected_at=DETECTED_AT)
    assert alert.alert_id == alert.document["kibana"]["alert"]["uuid"]  # type: ignore[index]
    return alert.document


def test_the_row_columns_are_the_document_and_nulls_are_left_out(rule: LoadedRule) -> None:
    document = row_alert(rule, {"Esql.event_count": 3, "cloud.account.id": "123456789012",
                                "Esql.source_ip_values": ["10.0.0.1", "10.0.0.2"],
                                "Esql.absent": None}, ("123456789012",))

    assert document["Esql"] == {"event_count": 3, "source_ip_values": ["10.0.0.1", "10.0.0.2"]}
    assert document["cloud"] == {"account": {"id": "123456789012"}}
    assert document["event"] == {"kind": "alert"}
    assert document["detector"] == {"run": {"start": "2025-12-01T11:54:00.000Z",
                                            "end": "2025-12-01T12:00:00.000Z"}}
    kibana = document["kibana"]["alert"]  # type: ignore[index]
    assert kibana["rule"]["rule_id"] == SEED_ID
    assert kibana["severity"] == rule.severity
    assert "original_time" not in kibana
    assert document["threat"]["tactic"]["id"]  # type: ignore[index]
    assert document["@timestamp"] == "2025-12-01T12:00:07.000Z"
    assert encode_json(build_run_alert(rule=rule.definition.rule, ruleset=rule.source,
                                       run_ms=RUN_MS, row={"n": float("nan")}, group_key=(),
                                       detected_at=DETECTED_AT))


def test_the_id_is_the_runs_and_groups_whatever_the_aggregates_say(rule: LoadedRule) -> None:
    first = row_alert(rule, {"user.name": "alice", "n": 3}, ("alice",))
    again = row_alert(rule, {"user.name": "alice", "n": 4}, ("alice",))
    later = row_alert(rule, {"user.name": "alice", "n": 3}, ("alice",), RUN_MS + 300_000)

    ids = [doc["kibana"]["alert"]["uuid"] for doc in (first, again, later)]  # type: ignore[index]
    assert ids[0] == ids[1] == alert_id(SEED_ID, RUN_MS, ("alice",))
    assert ids[2] != ids[0]


def test_a_run_alert_and_a_suppression_update_encode_as_avro(rule: LoadedRule) -> None:
    alert = build_run_alert(rule=rule.definition.rule, ruleset=rule.source, run_ms=RUN_MS,
                            row={"Esql.event_count": 3, "user.name": "alice"},
                            group_key=("alice",), detected_at=DETECTED_AT)
    settings = AlertSuppression(group_by=["user.name"],
                                duration=SuppressionDuration(value=5, unit="m"))
    suppressor = Suppressor(SEED_ID, settings, 300_000)
    suppressor.offer(alert, RUN_MS, RUN_MS)
    suppressor.offer(alert, RUN_MS + 60_000, RUN_MS + 300_000)

    (counted,) = suppressor.due(RUN_MS + 300_000)

    record = to_avro_record(counted)
    assert record["alert_uuid"] == alert.alert_id
    assert json.loads(record["document"])["kibana"]["alert"]["suppression"]["docs_count"] == 1
    assert WireAlertEncoder(1)(counted).startswith(b"\x00\x00\x00\x00\x01")
