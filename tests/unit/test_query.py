"""`cloudtrail-detector query`: an ES|QL query over CloudTrail files, as a table or JSON Lines."""

import io
import json
from pathlib import Path

import pytest

from consumer.cli import main
from consumer.offline.query import run_query

RECORDS = [
    {
        "eventVersion": "1.08",
        "eventTime": "2024-05-01T10:00:05Z",
        "eventSource": "iam.amazonaws.com",
        "eventName": name,
        "eventID": f"id-{number}",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.7",
        "userIdentity": {"type": "IAMUser", "userName": user},
    }
    for number, (name, user) in enumerate(
        [("CreateAccessKey", "alice"), ("ListUsers", "bob"), ("CreateUser", "alice")]
    )
]


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    path = tmp_path / "trail.json"
    path.write_text(json.dumps({"Records": RECORDS}), encoding="utf-8")
    return path


QUERY = (
    "FROM logs-aws.cloudtrail-* METADATA _id"
    ' | WHERE event.action LIKE "Create*"'
    ' | EVAL hour = DATE_TRUNC(1 hour, @timestamp), who = CONCAT(user.name, "@", cloud.region)'
    " | KEEP _id, event.action, who, hour | SORT event.action DESC"
)


def test_json_lines_hold_the_kept_columns_in_sort_order(trail: Path) -> None:
    out = io.StringIO()
    assert run_query(QUERY, [trail], out, as_table=False) == 2
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows == [
        {"_id": "id-2", "event.action": "CreateUser", "who": "alice@us-east-1",
         "hour": "2024-05-01T10:00:00.000Z"},
        {"_id": "id-0", "event.action": "CreateAccessKey", "who": "alice@us-east-1",
         "hour": "2024-05-01T10:00:00.000Z"},
    ]  # fmt: skip


def test_a_table_aligns_rows_under_the_column_names(trail: Path) -> None:
    out = io.StringIO()
    run_query(QUERY + " | LIMIT 1", [trail], out, as_table=True)
    lines = out.getvalue().splitlines()
    assert lines[0].split(" | ") == ["_id ", "event.action", "who            ", "hour"]
    assert lines[2].startswith("id-2 | CreateUser   | alice@us-east-1 | 2024-05-01T10:00")
    assert lines[-1] == "(1 rows)"


def test_a_hunt_with_stats_counts_over_every_record(trail: Path) -> None:
    out = io.StringIO()
    hunt = "FROM logs-* | STATS calls = COUNT(*), actions = VALUES(event.action) BY user.name"
    assert run_query(hunt + " | SORT user.name", [trail], out, as_table=False) == 2
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        {"calls": 2, "actions": ["CreateAccessKey", "CreateUser"], "user.name": "alice"},
        {"calls": 1, "actions": "ListUsers", "user.name": "bob"},
    ]


def test_the_cli_prints_rows_and_reports_a_bad_query(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", "FROM logs-* | STATS c = COUNT(*) BY nope", str(trail)]) == 2
    assert "field 'nope' is not derived" in capsys.readouterr().err
    assert main(["query", "FROM logs-* | KEEP user.name | LIMIT 1", str(trail)]) == 0
    assert json.loads(capsys.readouterr().out) == {"user.name": "alice"}
