"""`scan` as the oracle of the stateful stream: aggregating rules over Elastic's schedule and
suppressed rules, with the watermark at the end of the input (or where a stream's stands)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from consumer.cli import main
from consumer.offline.scan import ScanCounts
from consumer.rules.loader import LoadedRule
from tests.conftest import shared_path
from tests.support.events import event
from tests.support.stateful_rules import (
    COUNT_AND_IPS,
    COUNT_ID,
    SEED_ID,
    START,
    counting_rule,
    iso,
    key_created_at,
    read_at,
    rules_in,
    scan_alerts,
    suppressed_seed_rule,
)


def at(minutes: float) -> str:
    return iso(START + timedelta(minutes=minutes))


def read(number: int, minutes: float, caller: str = "alice") -> dict[str, Any]:
    return read_at(f"read-{number}", caller, START + timedelta(minutes=minutes))


def rules_with(tmp_path: Path, text: str) -> list[LoadedRule]:
    return rules_in(tmp_path / "rules", {"rule.toml": text})


def counting_rules(tmp_path: Path, lookback: str = "5m") -> list[LoadedRule]:
    return rules_with(tmp_path, counting_rule(lookback=lookback, aggregates=COUNT_AND_IPS))


def run_scan(tmp_path: Path, records: list[dict[str, Any]], rules: list[LoadedRule],
             watermark: datetime | None = None) -> tuple[list[dict[str, Any]], ScanCounts]:
    return scan_alerts(tmp_path, records, rules, progress=None,
                       watermark_ms=None if watermark is None
                       else int(watermark.timestamp() * 1000))


def of_rule(alerts: list[dict[str, Any]], rule_id: str) -> list[dict[str, Any]]:
    return [alert for alert in alerts if alert["kibana"]["alert"]["rule"]["rule_id"] == rule_id]


def test_an_aggregating_rule_alerts_once_per_run_whose_window_holds_enough(tmp_path: Path) -> None:
    records = [read(1, 1), read(2, 2), read(3, 5), read(4, 6, "bob"), read(5, 7, "bob"),
               read(6, 8)]

    alerts, counts = run_scan(tmp_path, records, counting_rules(tmp_path))

    rows = of_rule(alerts, COUNT_ID)
    assert [(row["user"]["name"], row["Esql"]["event_count"], row["detector"]["run"]["end"])
            for row in rows] == [("alice", 3, "2026-11-29T10:05:00.000Z")]
    assert rows[0]["Esql"]["source_ip_values"] == "198.51.100.7"
    assert "event" not in rows[0] or rows[0]["event"] == {"kind": "alert"}
    assert counts.alerts == 1


def test_an_event_on_the_run_time_is_in_that_run_and_the_next_does_not_see_it(
    tmp_path: Path,
) -> None:
    records = [read(1, 3), read(2, 4), read(3, 5), read(4, 6), read(5, 7)]

    alerts, _ = run_scan(tmp_path, records, counting_rules(tmp_path))

    assert [row["detector"]["run"]["end"] for row in of_rule(alerts, COUNT_ID)] == [
        "2026-11-29T10:05:00.000Z"
    ]


def test_with_from_longer_than_interval_overlapping_runs_each_alert(tmp_path: Path) -> None:
    records = [read(1, 4), read(2, 6), read(3, 7), read(4, 8)]

    alerts, _ = run_scan(tmp_path, records, counting_rules(tmp_path, lookback="10m"))

    rows = of_rule(alerts, COUNT_ID)
    assert [(row["detector"]["run"]["end"], row["Esql"]["event_count"]) for row in rows] == [
        ("2026-11-29T10:10:00.000Z", 4), ("2026-11-29T10:15:00.000Z", 3)
    ]
    assert len({row["kibana"]["alert"]["uuid"] for row in rows}) == 2


def test_a_watermark_stops_the_runs_where_a_stream_would_stand(tmp_path: Path) -> None:
    records = [read(1, 1), read(2, 2), read(3, 3), read(4, 6), read(5, 7), read(6, 8)]
    rules = counting_rules(tmp_path)

    early, _ = run_scan(tmp_path, records, rules, watermark=START + timedelta(minutes=9))
    everything, _ = run_scan(tmp_path, records, rules)

    assert len(of_rule(early, COUNT_ID)) == 1
    assert len(of_rule(everything, COUNT_ID)) == 2


def test_the_same_events_give_the_same_alert_ids_in_any_order(tmp_path: Path) -> None:
    records = [read(number, number / 2) for number in range(12)]
    rules = counting_rules(tmp_path)

    forward, _ = run_scan(tmp_path, records, rules)
    backward, _ = run_scan(tmp_path, records[::-1], rules)

    assert [alert["kibana"]["alert"]["uuid"] for alert in forward] == [
        alert["kibana"]["alert"]["uuid"] for alert in backward]


def test_suppression_on_the_seed_rule_sends_one_alert_with_the_count(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, suppressed_seed_rule("user.name", minutes=30))
    records = [key_created_at(f"key-{number}", "mallory", f"t{number}",
                              START + timedelta(minutes=minute))
               for number, minute in enumerate((0, 10, 20, 40))]

    alerts, counts = run_scan(tmp_path, records, rules)

    seed = of_rule(alerts, SEED_ID)
    assert [(alert["event"]["id"], alert["kibana"]["alert"]["suppression"]["docs_count"])
            for alert in seed] == [("key-0", 2), ("key-3", 0)]
    assert seed[0]["kibana"]["alert"]["suppression"]["end"] == "2026-11-29T10:20:00.000Z"
    assert counts.suppressed == 2
    assert "suppressed" in counts.summary()


def test_scan_on_the_command_line_prints_an_aggregating_rules_alerts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counting_rules(tmp_path)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(read(n, n)) + "\n" for n in range(1, 4)))

    assert main(["scan", str(path), "--rules-dir", str(tmp_path / "rules"),
                 "--format", "jsonl"]) == 0

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [alert["Esql"]["event_count"] for alert in of_rule(lines, COUNT_ID)] == [3]


def test_elastics_companion_rule_alerts_on_a_self_created_key_then_used(tmp_path: Path) -> None:
    source = shared_path("elastic-rules", "aws",
                         "persistence_iam_user_self_created_access_key_subsequently_used.toml")
    rules = rules_with(tmp_path, source.read_text())
    created = key_created_at("create-1", "alice", None, START + timedelta(minutes=1))
    created["responseElements"] = {"accessKey": {
        "userName": "alice", "accessKeyId": "AKIANEWKEY0000000001", "status": "Active"}}
    used = event(event_id="use-1", caller="alice", event_time=at(3), event_name="ListBuckets")
    used["userIdentity"]["accessKeyId"] = "AKIANEWKEY0000000001"

    alerts, _ = run_scan(tmp_path, [created, used], rules)

    found = of_rule(alerts, rules[-1].rule_id)
    assert len(found) == 1, "seven runs read both events; suppression folds six of them"
    assert found[0]["kibana"]["alert"]["suppression"]["docs_count"] == 6
    assert found[0]["Esql"]["event_action_created_access_key_use_values"] == "ListBuckets"
