"""The rules and events the stateful tests (and bench/stateful_bench.py) share: a counting rule
(ES|QL `STATS COUNT(*) BY user.name` on Elastic's schedule), the built-in seed rule with alert
suppression, GetObject and CreateAccessKey calls at chosen event times, and `scan` over them as
the oracle."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consumer.offline.scan import ScanCounts, scan
from consumer.rules.loader import LoadedRule, load_rules
from tests.support.events import create_access_key, event

REPO = Path(__file__).resolve().parents[2]
COUNT_ID = "5c1f3e0a-8d2b-4f6e-9a7c-1b3d5e7f9a0b"
SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
"""The built-in rule aws_iam_user_created_access_keys_for_another_user."""
START = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
"""A run time of every schedule used here (a multiple of 5 and 10 minutes since the epoch)."""
COUNT_AND_IPS = "Esql.event_count = COUNT(*), Esql.source_ip_values = VALUES(source.ip)"
"""`counting_rule` aggregates that also collect the callers' addresses."""

ACCESS_KEY_RULE = """
[metadata]
creation_date = "2025/01/01"
updated_date = "2025/01/01"

[rule]
rule_id = "0b4d4c52-3c1e-4d4b-9a55-2f0f3e6c9b11"
name = "Access keys"
description = "Access keys."
author = ["Elastic"]
type = "esql"
language = "esql"
query = 'FROM logs-aws.cloudtrail-* | WHERE event.action == "CreateAccessKey"'
risk_score = 21
severity = "low"
"""
"""A row-at-a-time ES|QL rule file with no schedule and no suppression: tests add them."""


def counting_rule(*, lookback: str | None = "10m", threshold: int | None = 3,
                  aggregates: str = "Esql.event_count = COUNT(*)", rule_id: str = COUNT_ID,
                  name: str = "Many reads by one user", extra: str = "") -> str:
    """A rule file counting GetObject calls by user: every 5 minutes over `lookback` (None:
    Elastic's default schedule), alerting on `threshold` calls or more (None: every group);
    `extra` is appended (e.g. a `[detector.alert_suppression]` table)."""
    schedule = "" if lookback is None else f'interval = "5m"\nfrom = "now-{lookback}"\n'
    where = "" if threshold is None else f"| WHERE Esql.event_count >= {threshold}\n"
    return f"""
[metadata]
creation_date = "2026/11/29"
updated_date = "2026/11/29"

[rule]
rule_id = "{rule_id}"
name = "{name}"
description = "GetObject calls by one user in a run's window."
author = ["Test"]
type = "esql"
language = "esql"
{schedule}query = '''
FROM logs-aws.cloudtrail-*
| WHERE event.action == "GetObject"
| STATS {aggregates} BY user.name
{where}'''
risk_score = 21
severity = "low"
{extra}"""


def suppressed_seed_rule(group_by: str, minutes: int | None = None) -> str:
    """The built-in seed rule's file with alert suppression by `group_by`: for `minutes`, or
    per run without it. Written to a rules folder, it replaces the built-in rule (same id)."""
    seed = (REPO / "consumer" / "rules" / "builtin" /
            "aws_iam_user_created_access_keys_for_another_user.toml").read_text()
    duration = "" if minutes is None else f'duration = {{ value = {minutes}, unit = "m" }}\n'
    return seed.replace("[detector]\n", "[detector.alert_suppression]\n"
                        f'group_by = ["{group_by}"]\n{duration}\n[detector]\n', 1)


def write_rules(folder: Path, files: Mapping[str, str]) -> Path:
    """`folder` (made if missing) holding the rule files `files` (file name -> text)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def rules_in(folder: Path, files: Mapping[str, str]) -> list[LoadedRule]:
    """The rules loaded from `write_rules(folder, files)` (the built-in ones included)."""
    return load_rules(write_rules(folder, files))


def iso(moment: datetime) -> str:
    """A CloudTrail eventTime."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_at(event_id: str, caller: str, moment: datetime, **fields: Any) -> dict[str, Any]:
    """A GetObject call by `caller` at `moment`: what the counting rule counts."""
    return event(event_id=event_id, caller=caller, event_time=iso(moment),
                 request_parameters={"bucketName": "logs"}, **fields)


def key_created_at(event_id: str, caller: str, target: str | None, moment: datetime,
                   **fields: Any) -> dict[str, Any]:
    """`caller` creating an access key for `target` at `moment`: a match of the seed rule."""
    record = create_access_key(event_id=event_id, caller=caller, target=target, **fields)
    record["eventTime"] = iso(moment)
    return record


def scan_alerts(folder: Path, records: list[dict[str, Any]], rules: list[LoadedRule],
                **options: Any) -> tuple[list[dict[str, Any]], ScanCounts]:
    """`scan`'s alert documents (and counts) over `records`, written to folder/events.jsonl;
    `options` go to `scan`."""
    path = folder / "events.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    output = io.StringIO()
    counts = scan([path], rules, output, **options)
    return [json.loads(line) for line in output.getvalue().splitlines()], counts
