"""`scan` as the oracle of the stateful stream: aggregating rules over Elastic's schedule and
suppressed rules, with the watermark at the end of the input (or where a stream's stands)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from consumer.cli import main
from consumer.offline.scan import ScanCounts, scan
from consumer.rules.loader import LoadedRule, load_rules
from tests.conftest import shared_path
from tests.support.events import create_access_key, event

SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
COUNT_ID = "5c1f3e0a-8d2b-4f6e-9a7c-1b3d5e7f9a0b"
START = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
"""A run time of every schedule used here."""

COUNTING_RULE = f"""
[metadata]
creation_date = "2026/11/29"
updated_date = "2026/11/29"

[rule]
rule_id = "{COUNT_ID}"
name = "Many reads by one user"
description = "Three or more GetObject calls by one user in a run's window."
author = ["Test"]
type = "esql"
language = "esql"
interval = "5m"
from = "now-{{lookback}}"
query = '''
FROM logs-aws.cloudtrail-*
| WHERE event.action == "GetObject"
| STATS Esql.event_count = COUNT(*), Esql.source_ip_values = VALUES(source.ip) BY user.name
| WHERE Esql.event_count >= 3
'''
risk_score = 21
severity = "low"
"""


def at(minutes: float) -> str:
    return (START + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read(number: int, minutes: float, caller: str = "alice") -> dict[str, Any]:
    return event(event_id=f"read-{number}", caller=caller, event_time=at(minutes),
                 request_parameters={"bucketName": "logs"})


def rules_with(tmp_path: Path, text: str) -> list[LoadedRule]:
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    (folder / "rule.toml").write_text(text)
    return load_rules(folder)


def counting_rules(tmp_path: Path, lookback: str = "5m", extra: str = "") -> list[LoadedRule]:
    return rules_with(tmp_path, COUNTING_RULE.replace("{lookback}", lookback) + extra)


def run_scan(tmp_path: Path, records: list[dict[str, Any]], rules: list[LoadedRule],
             watermark: datetime | None = None) -> tuple[list[dict[str, Any]], ScanCounts]:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    output = io.StringIO()
    counts = scan([path], rules, output, progress=None, watermark_ms=None if watermark is None
                  else int(watermark.timestamp() * 1000))
    return [json.loads(line) for line in output.getvalue().splitlines()], counts


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
    seed_text = (Path(__file__).parents[2] / "consumer" / "rules" / "builtin" /
                 "aws_iam_user_created_access_keys_for_another_user.toml").read_text()
    suppressed = seed_text.replace("[detector]\n", "[detector.alert_suppression]\n"
                                   'group_by = ["user.name"]\n'
                                   'duration = { value = 30, unit = "m" }\n\n[detector]\n', 1)
    rules = rules_with(tmp_path, suppressed)
    records = []
    for number, minute in enumerate((0, 10, 20, 40)):
        record = create_access_key(event_id=f"key-{number}", caller="mallory", target=f"t{number}")
        record["eventTime"] = at(minute)
        records.append(record)

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
    created = create_access_key(event_id="create-1", caller="alice", target=None)
    created["eventTime"] = at(1)
    created["responseElements"] = {"accessKey": {
        "userName": "alice", "accessKeyId": "AKIANEWKEY0000000001", "status": "Active"}}
    used = event(event_id="use-1", caller="alice", event_time=at(3), event_name="ListBuckets")
    used["userIdentity"]["accessKeyId"] = "AKIANEWKEY0000000001"

    alerts, _ = run_scan(tmp_path, [created, used], rules)

    found = of_rule(alerts, rules[-1].rule_id)
    assert len(found) == 1, "seven runs read both events; suppression folds six of them"
    assert found[0]["kibana"]["alert"]["suppression"]["docs_count"] == 6
    assert found[0]["Esql"]["event_action_created_access_key_use_values"] == "ListBuckets"
