"""Exception lists and value lists judged as Kibana's filters would judge them in Elasticsearch."""

from __future__ import annotations

import io
import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from consumer.cli import main
from consumer.cloudtrail.decode import JsonDecoder
from consumer.cloudtrail.record import json_to_avro
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.offline.scan import scan
from consumer.rules import LoadedRule, load_rules
from consumer.rules.detector import Detector
from consumer.rules.exceptions import (
    ExceptionLoadError,
    ExceptionSet,
    ExceptionWatcher,
    RuleLink,
    load_exceptions,
    rule_links,
)
from tests.support.events import create_access_key

SEED = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
OTHER = "00000000-0000-4000-8000-000000000001"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def record(caller: str = "mallory", target: str = "carol", **changes: Any) -> CloudTrailRecord:
    event = create_access_key(event_id="e1", caller=caller, target=target)
    event.update(changes)
    return json_to_avro(event)


def exception_file(*items: str, list_id: str = "tuning", rule_ids: str = "[]") -> str:
    body = "\n".join(textwrap.dedent(item) for item in items)
    return (
        textwrap.dedent(f"""\
        [metadata]
        creation_date = "2026/12/01"
        list_name = "Tuning"
        rule_ids = {rule_ids}
        rule_names = []
        updated_date = "2026/12/01"

        [[exceptions]]
        [exceptions.container]
        description = "SOC tuning"
        list_id = "{list_id}"
        name = "Tuning"
        namespace_type = "single"
        type = "detection"
        """)
        + body
    )


def item(name: str, *entries: str, extra: str = "") -> str:
    text = f'[[exceptions.items]]\nname = "{name}"\ndescription = ""\ntype = "simple"\n{extra}\n'
    for entry in entries:
        text += f"[[exceptions.items.entries]]\n{entry}\n"
    return text


def load(
    tmp_path: Path, *files: tuple[str, str], links: list[RuleLink] | None = None
) -> ExceptionSet:
    tmp_path.mkdir(exist_ok=True)
    for name, text in files:
        (tmp_path / name).write_text(text, encoding="utf-8")
    return load_exceptions(tmp_path, links or [RuleLink(SEED, ("tuning",), source="seed.toml")])


def excluded(exceptions: ExceptionSet, event: CloudTrailRecord, rule_id: str = SEED) -> str | None:
    hit = exceptions.excluding(rule_id, event, NOW)
    return None if hit is None else hit.name


MATCH_CALLER = 'field = "user.name"\noperator = "included"\ntype = "match"\nvalue = "rotation-bot"'


def test_a_match_entry_removes_only_the_exact_case_sensitive_value(tmp_path: Path) -> None:
    exceptions = load(tmp_path, ("t.toml", exception_file(item("rotation", MATCH_CALLER))))
    assert excluded(exceptions, record(caller="rotation-bot")) == "rotation"
    assert excluded(exceptions, record(caller="Rotation-Bot")) is None
    assert excluded(exceptions, record(caller="rotation-bot2")) is None


def test_an_excluded_entry_holds_when_the_field_is_missing_or_differs(tmp_path: Path) -> None:
    entry = 'field = "user.target.name"\noperator = "excluded"\ntype = "match"\nvalue = "carol"'
    exceptions = load(tmp_path, ("t.toml", exception_file(item("not carol", entry))))
    assert excluded(exceptions, record(target="carol")) is None
    assert excluded(exceptions, record(target="dave")) == "not carol"
    no_target = record()
    no_target["requestParameters"] = None
    assert excluded(exceptions, no_target) == "not carol"


def test_entries_of_an_item_are_anded_and_items_are_ored(tmp_path: Path) -> None:
    target = 'field = "user.target.name"\noperator = "included"\ntype = "match"\nvalue = "carol"'
    any_caller = (
        'field = "user.name"\noperator = "included"\ntype = "match_any"\nvalue = ["alice", "bob"]'
    )
    exceptions = load(
        tmp_path,
        (
            "t.toml",
            exception_file(item("bot for carol", MATCH_CALLER, target), item("admins", any_caller)),
        ),
    )
    assert excluded(exceptions, record(caller="rotation-bot", target="carol")) == "bot for carol"
    assert excluded(exceptions, record(caller="rotation-bot", target="dave")) is None
    assert excluded(exceptions, record(caller="bob", target="dave")) == "admins"
    assert excluded(exceptions, record(caller="mallory")) is None


def test_exists_and_its_negation(tmp_path: Path) -> None:
    present = 'field = "aws.cloudtrail.error_code"\noperator = "included"\ntype = "exists"'
    absent = 'field = "aws.cloudtrail.error_code"\noperator = "excluded"\ntype = "exists"'
    with_error = record(errorCode="AccessDenied")
    exceptions = load(tmp_path / "plain", ("t.toml", exception_file(item("failed", present))))
    assert excluded(exceptions, with_error) == "failed"
    assert excluded(exceptions, record()) is None
    negated = load(tmp_path / "negated", ("t.toml", exception_file(item("succeeded", absent))))
    assert excluded(negated, with_error) is None
    assert excluded(negated, record()) == "succeeded"


@pytest.mark.parametrize(
    ("pattern", "arn_user", "removed"),
    [
        ("arn:aws:iam::*:user/svc-*", "svc-rotation", True),
        ("arn:aws:iam::*:user/svc-*", "SVC-rotation", False),
        ("arn:aws:iam::111122223333:user/svc-?", "svc-a", True),
        ("arn:aws:iam::111122223333:user/svc-?", "svc-ab", False),
        (r"arn:aws:iam::111122223333:user/literal\\*", "literal*", True),
        (r"arn:aws:iam::111122223333:user/literal\\*", "literalX", False),
    ],
)
def test_wildcard_entries_match_the_whole_value_with_escapes(
    tmp_path: Path, pattern: str, arn_user: str, removed: bool
) -> None:
    entry = (
        'field = "aws.cloudtrail.user_identity.arn"\noperator = "included"\ntype = "wildcard"\n'
        f'value = "{pattern}"'
    )
    exceptions = load(tmp_path, ("t.toml", exception_file(item("svc", entry))))
    assert (excluded(exceptions, record(caller=arn_user)) == "svc") is removed


def test_an_ip_match_value_may_be_a_cidr_network(tmp_path: Path) -> None:
    entry = 'field = "source.ip"\noperator = "included"\ntype = "match"\nvalue = "198.51.100.0/24"'
    exceptions = load(tmp_path, ("t.toml", exception_file(item("office", entry))))
    assert excluded(exceptions, record(sourceIPAddress="198.51.100.200")) == "office"
    assert excluded(exceptions, record(sourceIPAddress="198.51.101.1")) is None


def list_entry(
    list_id: str, list_type: str, field: str = "source.ip", operator: str = "included"
) -> str:
    return (
        f'field = "{field}"\noperator = "{operator}"\ntype = "list"\n'
        f'[exceptions.items.entries.list]\nid = "{list_id}"\ntype = "{list_type}"'
    )


def test_value_lists_of_keywords_ips_and_ranges(tmp_path: Path) -> None:
    exceptions = load(
        tmp_path,
        ("callers.txt", "rotation-bot\nprovisioner\n\n"),
        ("scanners.txt", "203.0.113.9\n2001:db8::1\n"),
        ("offices.txt", "10.0.0.0/8\n192.0.2.10-192.0.2.20\n"),
        (
            "t.toml",
            exception_file(
                item("callers", list_entry("callers.txt", "keyword", field="user.name")),
                item("scanners", list_entry("scanners.txt", "ip")),
                item("offices", list_entry("offices.txt", "ip_range")),
            ),
        ),
    )
    assert excluded(exceptions, record(caller="provisioner")) == "callers"
    assert excluded(exceptions, record(sourceIPAddress="2001:db8::1")) == "scanners"
    assert excluded(exceptions, record(sourceIPAddress="10.200.0.1")) == "offices"
    assert excluded(exceptions, record(sourceIPAddress="192.0.2.20")) == "offices"
    assert excluded(exceptions, record(sourceIPAddress="192.0.2.21")) is None
    assert excluded(exceptions, record(sourceIPAddress="203.0.113.10")) is None


def test_an_excluded_list_entry_holds_for_values_outside_the_list(tmp_path: Path) -> None:
    exceptions = load(
        tmp_path,
        ("offices.txt", "10.0.0.0/8\n"),
        (
            "t.toml",
            exception_file(
                item("off-site", list_entry("offices.txt", "ip_range", operator="excluded"))
            ),
        ),
    )
    assert excluded(exceptions, record(sourceIPAddress="10.1.1.1")) is None
    assert excluded(exceptions, record(sourceIPAddress="172.16.0.1")) == "off-site"


def test_a_value_list_of_65536_entries_judges_members_and_strangers(tmp_path: Path) -> None:
    addresses = "\n".join(f"10.{index >> 8}.{index & 255}.1" for index in range(65_536))
    exceptions = load(
        tmp_path,
        ("big.txt", addresses),
        ("t.toml", exception_file(item("big", list_entry("big.txt", "ip")))),
    )
    assert excluded(exceptions, record(sourceIPAddress="10.255.255.1")) == "big"
    assert excluded(exceptions, record(sourceIPAddress="10.255.255.2")) is None


def test_expired_items_stop_applying_at_their_expire_time(tmp_path: Path) -> None:
    expiry = (NOW + timedelta(minutes=1)).isoformat()
    exceptions = load(
        tmp_path,
        (
            "t.toml",
            exception_file(item("temporary", MATCH_CALLER, extra=f'expire_time = "{expiry}"')),
        ),
    )
    bot = record(caller="rotation-bot")
    assert exceptions.excluding(SEED, bot, NOW) is not None
    assert exceptions.excluding(SEED, bot, NOW + timedelta(minutes=1)) is None


def test_lists_attach_by_reference_by_metadata_rule_ids_and_inline(tmp_path: Path) -> None:
    inline = {
        "name": "inline allow",
        "entries": [
            {"field": "user.name", "type": "match", "operator": "included", "value": "breakglass"}
        ],
    }
    links = [
        RuleLink(SEED, ("tuning",), source="seed.toml"),
        RuleLink(OTHER, (), (inline,), source="other.toml"),
    ]
    exceptions = load(
        tmp_path,
        ("t.toml", exception_file(item("rotation", MATCH_CALLER))),
        (
            "by-id.toml",
            exception_file(
                item("provisioner", MATCH_CALLER.replace("rotation-bot", "provisioner")),
                list_id="by-id",
                rule_ids=f'["{OTHER}"]',
            ),
        ),
        links=links,
    )
    assert excluded(exceptions, record(caller="rotation-bot")) == "rotation"
    assert excluded(exceptions, record(caller="provisioner")) is None
    assert excluded(exceptions, record(caller="provisioner"), OTHER) == "provisioner"
    assert excluded(exceptions, record(caller="breakglass"), OTHER) == "inline allow"
    assert excluded(exceptions, record(caller="rotation-bot"), OTHER) is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            'field = "Esql.caller"\noperator = "included"\ntype = "match"\nvalue = "x"',
            "field 'Esql.caller' is not derived",
        ),
        (
            'field = "aws.cloudtrail.resources"\ntype = "nested"\n'
            '[[exceptions.items.entries.entries]]\nfield = "arn"\ntype = "exists"\n'
            'operator = "included"',
            "no field derived from CloudTrail is mapped as nested",
        ),
        (
            'field = "source.ip"\noperator = "included"\ntype = "wildcard"\nvalue = "10.*"',
            "a wildcard entry needs a keyword field",
        ),
        (
            'field = "source.ip"\noperator = "included"\ntype = "match"\nvalue = "not-an-ip"',
            "does not appear to be an IPv4 or IPv6 network",
        ),
        (list_entry("missing.txt", "ip"), "value list 'missing.txt' is not a file"),
    ],
)
def test_entries_we_cannot_judge_as_elastic_does_are_refused_naming_file_and_item(
    tmp_path: Path, entry: str, message: str
) -> None:
    with pytest.raises(ExceptionLoadError) as refused:
        load(tmp_path, ("t.toml", exception_file(item("bad one", entry))))
    assert f"{tmp_path / 't.toml'}: item 'bad one'" in str(refused.value)
    assert message in str(refused.value)


def test_a_bad_value_list_line_is_named(tmp_path: Path) -> None:
    with pytest.raises(ExceptionLoadError) as refused:
        load(
            tmp_path,
            ("ips.txt", "203.0.113.9\n203.0.113.x\n"),
            ("t.toml", exception_file(item("ips", list_entry("ips.txt", "ip")))),
        )
    assert "ips.txt: line 2: not an ip value" in str(refused.value)


def test_a_schema_error_names_the_file_and_the_key(tmp_path: Path) -> None:
    entry = 'field = "user.name"\noperator = "included"\ntype = "match"'
    with pytest.raises(ExceptionLoadError) as refused:
        load(tmp_path, ("t.toml", exception_file(item("no value", entry))))
    assert f"{tmp_path / 't.toml'}: exceptions.0.items.0.entries.0" in str(refused.value)
    assert "a match entry needs a string value" in str(refused.value)


def test_a_rule_naming_an_unknown_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExceptionLoadError) as refused:
        load(tmp_path, links=[RuleLink(SEED, ("nowhere",), source="seed.toml")])
    assert "seed.toml: rule.exceptions_list: no exception list has list_id nowhere" in str(
        refused.value
    )


# --- through the detector, the scan, the CLI and the watcher ---------------------------------


def seed_rules() -> list[LoadedRule]:
    return load_rules()


def test_the_detector_removes_an_excepted_match_and_says_by_which_item(tmp_path: Path) -> None:
    unattached = load(tmp_path / "unattached", ("t.toml", exception_file(
        item("rotation", MATCH_CALLER)
    )), links=rule_links(seed_rules()))
    assert unattached.by_rule == {}  # the builtin seed rule names no list, nor the file the rule
    exceptions = load(tmp_path / "by-id", ("t.toml", exception_file(
        item("rotation", MATCH_CALLER), rule_ids=f'["{SEED}"]'
    )), links=rule_links(seed_rules()))
    detector = Detector(JsonDecoder(), seed_rules(), exceptions=exceptions)

    removed = detector.judge(record(caller="rotation-bot"))
    kept = detector.judge(record(caller="mallory"))

    assert removed.matched == ()
    assert [(rule.rule_id, found.name) for rule, found in removed.excepted] == [(SEED, "rotation")]
    assert [rule.rule_id for rule in kept.matched] == [SEED]
    assert kept.excepted == ()


def write_events(path: Path, *callers: str) -> Path:
    lines = [
        json.dumps(create_access_key(event_id=f"e-{index}", caller=caller, target="carol"))
        for index, caller in enumerate(callers)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def exceptions_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "exceptions"
    folder.mkdir()
    (folder / "t.toml").write_text(
        exception_file(item("rotation", MATCH_CALLER), rule_ids=f'["{SEED}"]'), encoding="utf-8"
    )
    return folder


def test_scan_applies_the_exceptions_directory(tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.jsonl", "rotation-bot", "mallory", "rotation-bot")
    rules = seed_rules()
    exceptions = load_exceptions(exceptions_dir(tmp_path), rule_links(rules))
    output = io.StringIO()

    counts = scan([events], rules, output, progress=None, exceptions=exceptions)

    alerted = [json.loads(line)["event"]["id"] for line in output.getvalue().splitlines()]
    assert alerted == ["e-1"]
    assert (counts.alerts, counts.excepted) == (1, 2)


def test_exceptions_test_names_the_item_that_removes_each_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_events(tmp_path / "events.jsonl", "rotation-bot", "mallory")
    folder = exceptions_dir(tmp_path)

    code = main(["exceptions", "test", "--exceptions-dir", str(folder), str(events)])

    out = capsys.readouterr()
    assert code == 0
    lines = out.out.splitlines()
    assert lines[0].startswith("excluded  ")
    assert "e-0" in lines[0]
    assert f"by 'rotation' [tuning/tuning#0] ({folder / 't.toml'})" in lines[0]
    assert lines[1].startswith("alert     ")
    assert "e-1" in lines[1]
    assert "2 records, 1 alerts, 1 matches removed by 1 exception items" in out.err


def test_a_bad_exceptions_directory_stops_scan_with_exit_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_events(tmp_path / "events.jsonl", "mallory")
    folder = exceptions_dir(tmp_path)
    (folder / "broken.toml").write_text("[metadata\n", encoding="utf-8")

    code = main(["scan", "--exceptions-dir", str(folder), str(events)])

    assert code == 2
    assert f"{folder / 'broken.toml'}: cannot read" in capsys.readouterr().err


def test_the_watcher_reloads_changes_keeps_the_old_set_on_a_bad_one_and_obeys_sighup(
    tmp_path: Path,
) -> None:
    folder = exceptions_dir(tmp_path)
    watcher = ExceptionWatcher(folder, seed_rules(), every_seconds=3600)
    first = watcher.current
    assert first.item_count == 1
    assert watcher.poll() is None  # not due, nothing requested

    (folder / "more.toml").write_text(exception_file(
        item("provisioner", MATCH_CALLER.replace("rotation-bot", "provisioner")),
        list_id="more", rule_ids=f'["{SEED}"]',
    ), encoding="utf-8")
    watcher.request_reload()
    second = watcher.poll()
    assert second is not None
    assert second.item_count == 2
    assert second.digest != first.digest

    (folder / "more.toml").write_text("[metadata]\nlist_name = 3\n", encoding="utf-8")
    watcher.request_reload()
    with pytest.raises(ExceptionLoadError, match=r"more\.toml"):
        watcher.poll()
    assert watcher.current is second

    watcher.request_reload()
    with pytest.raises(ExceptionLoadError):
        watcher.poll()  # still bad: a requested reload tries again


def test_the_watcher_notices_a_changed_file_on_its_own(tmp_path: Path) -> None:
    folder = exceptions_dir(tmp_path)
    watcher = ExceptionWatcher(folder, seed_rules(), every_seconds=0)
    (folder / "t.toml").write_text(exception_file(
        item("rotation", MATCH_CALLER), item("admins", MATCH_CALLER.replace("rotation-bot", "x")),
        rule_ids=f'["{SEED}"]',
    ), encoding="utf-8")
    changed = watcher.poll()
    assert changed is not None
    assert changed.item_count == 2
    assert watcher.poll() is None
