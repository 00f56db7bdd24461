"""Reading CloudTrail files in every delivered shape, and the offline scan over them."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest

from consumer.cloudtrail.envelopes import SHAPES, Shape, wrap
from consumer.cloudtrail.files import FileRecord, _read_stream, expand, read_records
from consumer.offline.scan import scan
from consumer.rules.loader import LoadedRule, load_rules
from tests.conftest import shared_path
from tests.support.events import create_access_key, event

SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
HARDENED_ID = "32403725-2adc-4bc1-a434-02793697b9bd"


def cross_user(number: int) -> dict[str, Any]:
    return create_access_key(event_id=f"cross-{number}", caller="mallory", target=f"t{number}")


def harmless(number: int) -> dict[str, Any]:
    return event(event_id=f"read-{number}", request_parameters={"bucketName": "logs"})


def root_without_alias_creates_key_for_bob() -> dict[str, Any]:
    """Elastic's rule cannot see this caller (no user.name); the hardened rule alerts."""
    record = create_access_key(event_id="root-1", caller="root", target="bob")
    record["userIdentity"] = {
        "type": "Root",
        "principalId": "111122223333",
        "arn": "arn:aws:iam::111122223333:root",
        "accountId": "111122223333",
        "accessKeyId": "ASIAEXAMPLEROOTKEY00",
    }
    return record


def json_lines(*records: object) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def records_of(path: Path) -> list[Any]:
    return [item.record for item in read_records(path)]


def test_s3_delivery_object_gzipped_gives_each_record_with_its_index(tmp_path: Path) -> None:
    path = tmp_path / "111122223333_CloudTrail_us-east-1_20261129T1000Z_abc.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"Records": [cross_user(1), harmless(2)]}).encode()))

    items = list(read_records(path))

    assert [item.record for item in items] == [cross_user(1), harmless(2)]
    assert [item.origin for item in items] == [f"{path}#0", f"{path}#1"]
    assert all(item.error is None for item in items)


def test_json_array_and_single_object_files(tmp_path: Path) -> None:
    array = tmp_path / "array.json"
    array.write_text(json.dumps([cross_user(1), harmless(2), cross_user(3)]))
    single = tmp_path / "single.json"
    single.write_text(json.dumps(harmless(4), indent=2))

    assert records_of(array) == [cross_user(1), harmless(2), cross_user(3)]
    assert list(read_records(single)) == [FileRecord(harmless(4), str(single))]


def test_json_lines_with_a_bad_line_report_it_and_keep_the_others(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_text(
        json.dumps(cross_user(1)) + "\n\n" + '{"eventName": "Cut' + "\n" + json.dumps(harmless(2))
        + "\n"
    )

    items = list(read_records(path))

    assert [item.record for item in items] == [cross_user(1), None, harmless(2)]
    assert [item.origin for item in items] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert items[1].error is not None
    assert items[1].error.startswith("invalid JSON")


def test_a_json_lines_line_that_is_not_utf8_is_one_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(
        json.dumps(cross_user(1)).encode() + b'\n{"eventName": "\xff\xfe"}\n'
        + json.dumps(harmless(2)).encode() + b"\n"
    )

    items = list(read_records(path))

    assert [item.record for item in items] == [cross_user(1), None, harmless(2)]
    assert items[1].origin == f"{path}:2"
    assert items[1].error is not None


def test_json_lines_split_only_at_line_ends_not_at_unicode_separators(tmp_path: Path) -> None:
    odd = cross_user(1)
    odd["userAgent"] = "agent\u2028with\x85separators\x1cinside"
    path = tmp_path / "export.jsonl"
    path.write_text(
        json.dumps(odd, ensure_ascii=False) + "\r\n" + json.dumps(harmless(2)) + "\r\n",
        encoding="utf-8",
    )

    items = list(read_records(path))

    assert [item.record for item in items] == [odd, harmless(2)]
    assert [item.origin for item in items] == [f"{path}:1", f"{path}:2"]


def test_gzipped_json_lines_and_lines_holding_s3_objects(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(
        gzip.compress(json_lines({"Records": [cross_user(1), harmless(2)]}, cross_user(3)).encode())
    )

    items = list(read_records(path))

    assert [item.record for item in items] == [cross_user(1), harmless(2), cross_user(3)]
    assert [item.origin for item in items] == [f"{path}:1#0", f"{path}:1#1", f"{path}:2"]


def test_a_corrupt_gzip_file_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "cut.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"Records": [cross_user(1)]}).encode())[:30])

    items = list(read_records(path))

    assert len(items) == 1
    assert items[0].record is None
    assert items[0].error is not None
    assert items[0].error.startswith("corrupt gzip")


def test_expand_lists_every_file_below_directories_in_order_but_hidden_ones(
    tmp_path: Path,
) -> None:
    for name in ("b/2.json.gz", "b/1.jsonl", "a.json", "b/c/3.json", ".git/x.json", "b/.seen"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    explicit = tmp_path / ".hidden-but-named.json"
    explicit.write_text("{}")

    files = expand([tmp_path, explicit])

    assert files == [
        tmp_path / "a.json",
        tmp_path / "b/1.jsonl",
        tmp_path / "b/2.json.gz",
        tmp_path / "b/c/3.json",
        explicit,
    ]


def run_scan(
    paths: list[Path], rules: list[LoadedRule] | None = None, *, original: bool = True
) -> tuple[list[dict[str, Any]], int, int, int]:
    """The alerts written (one JSON document per line) and the records/alerts/rejected counts."""
    output = io.StringIO()
    counts = scan(paths, rules or load_rules(), output, progress=None,
                  include_event_original=original)
    text = output.getvalue()
    assert text == "" or text.endswith("\n")
    alerts = [json.loads(line) for line in text.splitlines()]
    return alerts, counts.records, counts.alerts, counts.rejected


def test_scan_writes_one_json_line_per_match_naming_the_source_event(tmp_path: Path) -> None:
    self_key = create_access_key(event_id="self-1", caller="bob", target="bob")
    denied = create_access_key(event_id="denied-1", caller="eve", target="carol",
                               error_code="AccessDenied")
    (tmp_path / "day1.json.gz").write_bytes(
        gzip.compress(json.dumps({"Records": [cross_user(1), harmless(2), self_key]}).encode())
    )
    (tmp_path / "day2.jsonl").write_text(json_lines(denied, cross_user(3), harmless(4)))

    alerts, records, alert_count, rejected = run_scan([tmp_path])

    assert [alert["event"]["id"] for alert in alerts] == ["cross-1", "cross-3"]
    assert (records, alert_count, rejected) == (6, 2, 0)
    assert {alert["kibana"]["alert"]["rule"]["rule_id"] for alert in alerts} == {SEED_ID}
    assert json.loads(alerts[0]["event"]["original"]) == cross_user(1)
    assert alerts[1]["user"]["target"]["name"] == "t3"


def test_scan_reports_unreadable_and_non_cloudtrail_records_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(json_lines(cross_user(1), [1, 2], {"eventName": "NoSource"})
                    + "not json\n" + json_lines(cross_user(2)))

    alerts, records, alert_count, rejected = run_scan([path])

    assert [alert["event"]["id"] for alert in alerts] == ["cross-1", "cross-2"]
    assert (records, alert_count, rejected) == (6, 2, 4)
    skipped = capsys.readouterr().err.splitlines()
    assert [line.removeprefix("skipped ").split(": ")[0] for line in skipped] == [
        f"{path}:2#0", f"{path}:2#1", f"{path}:3", f"{path}:4"
    ]


def test_scan_without_event_original_leaves_it_out(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(cross_user(1)))

    alerts, *_ = run_scan([path], original=False)

    assert len(alerts) == 1
    assert "original" not in alerts[0]["event"]


def test_the_hardened_rule_alerts_only_when_enabled(tmp_path: Path) -> None:
    path = tmp_path / "root.json"
    path.write_text(json.dumps({"Records": [root_without_alias_creates_key_for_bob(),
                                            cross_user(1)]}))

    by_default, *_ = run_scan([path])
    hardened_on, *_ = run_scan([path], load_rules(enabled_overrides={HARDENED_ID: True}))

    assert [(a["event"]["id"], a["rule"]["id"]) for a in by_default] == [("cross-1", SEED_ID)]
    assert sorted((a["event"]["id"], a["rule"]["id"]) for a in hardened_on) == [
        ("cross-1", HARDENED_ID),
        ("cross-1", SEED_ID),
        ("root-1", HARDENED_ID),
    ]


@pytest.mark.parametrize(
    ("rule_id", "verdict_field"),
    [(SEED_ID, "elastic_verdict"), (HARDENED_ID, "hardened_verdict")],
    ids=["elastic", "hardened"],
)
def test_scan_of_real_createaccesskey_events_alerts_on_exactly_the_labelled_lines(
    rule_id: str, verdict_field: str
) -> None:
    folder = shared_path("datasets", "createaccesskey-real-events")
    labels = json.loads((folder / "labels.json").read_text())
    rules = [rule for rule in load_rules(enabled_overrides={rule_id: True})
             if rule.rule_id == rule_id]

    alerts, records, _, rejected = run_scan([folder / "events.jsonl.gz"], rules)

    assert (records, rejected) == (len(labels), 0)
    expected = sorted(label["eventID"] for label in labels if label[verdict_field] == "alert")
    assert sorted(alert["event"]["id"] for alert in alerts) == expected


@pytest.mark.parametrize("name", ["trail.log", "trail.ndjson", "trail", "trail.txt.gz"])
def test_files_are_read_by_content_whatever_their_name(tmp_path: Path, name: str) -> None:
    data = json_lines(cross_user(1), harmless(2)).encode()
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)

    alerts, records, *_ = run_scan([tmp_path])

    assert records == 2
    assert [alert["event"]["id"] for alert in alerts] == ["cross-1"]


def test_a_file_that_is_not_json_is_skipped_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("hello\n" * 1000)

    _, records, _, rejected = run_scan([tmp_path])

    assert (records, rejected) == (0, 0)
    assert capsys.readouterr().err.splitlines() == [
        f"skipped {tmp_path / 'notes.txt'}: no CloudTrail in 1 x not JSON"
    ]


def test_non_cloudtrail_json_and_digest_files_are_skipped_with_one_summary_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = [{"eventID": f"e-{n}", "elastic_verdict": "alert"} for n in range(24)]
    (tmp_path / "labels.json").write_text(json.dumps(labels, indent=2))
    (tmp_path / "digest.json.gz").write_bytes(gzip.compress(json.dumps(
        {"digestStartTime": "2026-11-29T09:00:00Z", "logFiles": []}).encode()))
    (tmp_path / "trail.json").write_text(json.dumps({"Records": [cross_user(1)]}))

    alerts, records, _, rejected = run_scan([tmp_path])

    assert (records, rejected, len(alerts)) == (1, 0, 1)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith(f"skipped {tmp_path / 'digest.json.gz'}: no CloudTrail in 1 x")
    assert "digest" in err[0]
    assert err[1].startswith(f"skipped {tmp_path / 'labels.json'}: no CloudTrail in 24 x")


def test_lookup_events_output_pretty_printed_as_the_aws_cli_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "lookup.json"
    path.write_text(json.dumps({"Events": [
        {"EventId": "cross-1", "EventName": "CreateAccessKey",
         "CloudTrailEvent": json.dumps(cross_user(1))},
        {"EventId": "read-2", "CloudTrailEvent": json.dumps(harmless(2))},
    ], "NextToken": "x"}, indent=4))

    assert list(read_records(path)) == [
        FileRecord(cross_user(1), f"{path}#0"), FileRecord(harmless(2), f"{path}#1")
    ]


def test_concatenated_json_as_firehose_writes_it_with_and_without_newlines(tmp_path: Path) -> None:
    back_to_back = tmp_path / "firehose-1"
    back_to_back.write_bytes(gzip.compress(
        (json.dumps(cross_user(1)) + json.dumps(harmless(2)) + json.dumps(cross_user(3))).encode()
    ))
    pretty = tmp_path / "firehose-2"
    pretty.write_text(json.dumps(cross_user(4), indent=2) + json.dumps(harmless(5), indent=2))

    assert records_of(back_to_back) == [cross_user(1), harmless(2), cross_user(3)]
    assert records_of(pretty) == [cross_user(4), harmless(5)]


def test_firehose_cloudwatch_and_eventbridge_documents_in_one_file(tmp_path: Path) -> None:
    cloudwatch = json.loads(gzip.decompress(wrap([cross_user(1), harmless(2)], "cloudwatch")))
    eventbridge = json.loads(wrap([cross_user(3)], "eventbridge"))
    path = tmp_path / "delivery"
    path.write_text(json.dumps(cloudwatch) + json.dumps(eventbridge) + "\n")

    items = list(read_records(path))

    assert [item.record for item in items] == [cross_user(1), harmless(2), cross_user(3)]
    assert [item.origin for item in items] == [f"{path}:1@0#0", f"{path}:1@0#1", f"{path}:1@1"]


def test_a_large_json_lines_file_is_streamed_not_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text(json_lines(*(harmless(n) for n in range(2000))))
    size = path.stat().st_size

    with path.open("rb") as handle:
        records = _read_stream(handle, str(path))
        next(records)
        assert handle.tell() < size / 4  # only the first buffer has been read


@pytest.mark.parametrize("shape", SHAPES)
def test_scan_alerts_on_a_match_in_each_shape_cloudtrail_arrives_in(
    tmp_path: Path, shape: Shape
) -> None:
    multi = shape in ("records", "cloudwatch", "lookup-events")
    records = [harmless(1), cross_user(1)] if multi else [cross_user(1)]
    (tmp_path / "delivery").write_bytes(wrap(records, shape))

    alerts, count, _, rejected = run_scan([tmp_path])

    assert (count, rejected) == (len(records), 0)
    assert [alert["event"]["id"] for alert in alerts] == ["cross-1"]
    assert json.loads(alerts[0]["event"]["original"]) == cross_user(1)
