"""Elastic's alert suppression in event time: windows, counts, missing fields, order and
restarts; and the rule files that ask for it."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from consumer.alerts.document import Alert
from consumer.alerts.suppression import Suppressor, field_value, instance_id, terms_from_json
from consumer.rules.loader import LoadedRule, RuleLoadError, parse_rule
from consumer.rules.model import AlertSuppression, SuppressionDuration
from tests.conftest import shared_path
from tests.support.stateful_rules import ACCESS_KEY_RULE as RULE

MINUTE = 60_000
T = 1_764_590_400_000
"""2025-12-01T12:00:00Z."""


def alert(number: int, user: str | None = "alice", account: str | None = "111122223333",
          **extra: Any) -> Alert:
    document: dict[str, Any] = {"kibana": {"alert": {"uuid": f"a{number}"}},
                                "event": {"original": f"raw {number}"}, **extra}
    if user is not None:
        document["user"] = {"name": user}
    if account is not None:
        document["cloud"] = {"account": {"id": account}}
    return Alert(f"a{number}", b"key", [("rule.id", b"r")], document)


def suppressor(duration_m: int | None = 35, strategy: str = "suppress",
               group_by: tuple[str, ...] = ("user.name", "cloud.account.id")) -> Suppressor:
    settings = AlertSuppression(
        group_by=list(group_by),
        duration=None if duration_m is None else SuppressionDuration(value=duration_m, unit="m"),
        missing_fields_strategy=strategy,  # type: ignore[arg-type]
    )
    return Suppressor("rule-1", settings, 5 * MINUTE)


def suppression(sent: Alert) -> dict[str, Any]:
    fields: dict[str, Any] = sent.document["kibana"]["alert"]["suppression"]
    return fields


def summary(sent: list[Alert]) -> list[tuple[str, int]]:
    return [(item.alert_id, suppression(item)["docs_count"]) for item in sent]


def test_the_first_alert_goes_out_once_the_watermark_passes_it_and_later_ones_are_counted() -> None:
    supp = suppressor()
    assert supp.offer(alert(1), T) is None

    first = supp.due(T)
    assert [item.alert_id for item in first] == ["a1"]
    assert suppression(first[0]) == {
        "terms": [{"field": "user.name", "value": "alice"},
                  {"field": "cloud.account.id", "value": "111122223333"}],
        "start": "2025-12-01T12:00:00.000Z", "end": "2025-12-01T12:00:00.000Z",
        "docs_count": 0,
    }
    assert first[0].document["event"]["original"] == "raw 1"

    supp.offer(alert(2), T + 10 * MINUTE)
    supp.offer(alert(3), T + 20 * MINUTE)
    assert supp.due(T + 30 * MINUTE) == []
    update = supp.due(T + 35 * MINUTE)

    assert summary(update) == [("a1", 2)], "the first alert again, with the count"
    assert suppression(update[0])["end"] == "2025-12-01T12:20:00.000Z"
    assert update[0].document["kibana"]["alert"]["instance"]["id"] == (
        first[0].document["kibana"]["alert"]["instance"]["id"]
    )
    assert update[0].document["event"]["original"] == "raw 1", "it replaces the first whole"
    assert supp.suppressed == 2


def test_a_match_exactly_duration_after_the_first_is_inside_and_one_later_opens_a_window() -> (
    None
):
    supp = suppressor(duration_m=10)
    supp.offer(alert(1), T)
    supp.due(T)
    supp.offer(alert(2), T + 10 * MINUTE)
    supp.offer(alert(3), T + 10 * MINUTE + 1)

    sent = supp.due(T + 10 * MINUTE + 1)

    assert summary(sent) == [("a1", 1), ("a3", 0)]
    assert supp.due(T + 30 * MINUTE) == []


def test_alerts_of_one_evaluation_go_out_once_already_counted() -> None:
    supp = suppressor(duration_m=5)
    for number in range(4):
        supp.offer(alert(number), T + number * MINUTE)

    assert summary(supp.due(T + 5 * MINUTE)) == [("a0", 3)]


def test_without_duration_alerts_are_suppressed_within_one_rule_run_only() -> None:
    supp = suppressor(duration_m=None)
    supp.offer(alert(1), T + MINUTE)
    assert summary(supp.due(T + MINUTE)) == [("a1", 0)]
    supp.offer(alert(2), T + 2 * MINUTE)
    supp.offer(alert(3), T + 5 * MINUTE)
    supp.offer(alert(4), T + 6 * MINUTE)

    assert summary(supp.due(T + 10 * MINUTE)) == [("a1", 2), ("a4", 0)]


def test_rows_of_one_run_are_suppressed_by_the_run_they_came_from() -> None:
    supp = suppressor(duration_m=None)
    supp.offer(alert(1), T + 5 * MINUTE, run_ms=T + 5 * MINUTE)
    supp.offer(alert(2), T + 5 * MINUTE, run_ms=T + 5 * MINUTE)
    supp.offer(alert(3), T + 10 * MINUTE, run_ms=T + 10 * MINUTE)

    assert summary(supp.due(T + 10 * MINUTE)) == [("a1", 1), ("a3", 0)]


def test_other_group_by_values_are_other_instances() -> None:
    supp = suppressor()
    supp.offer(alert(1, user="alice"), T)
    supp.offer(alert(2, user="bob"), T)
    supp.offer(alert(3, account="444455556666"), T)

    sent = supp.due(T)

    assert sorted(item.alert_id for item in sent) == ["a1", "a2", "a3"]
    assert len({item.document["kibana"]["alert"]["instance"]["id"] for item in sent}) == 3


def test_missing_fields_are_one_group_when_suppressed() -> None:
    supp = suppressor(duration_m=5)
    supp.offer(alert(1, user=None), T)
    supp.offer(alert(2, user=None), T + MINUTE)

    sent = supp.due(T + 5 * MINUTE)

    assert summary(sent) == [("a1", 1)]
    assert suppression(sent[0])["terms"][0] == {"field": "user.name", "value": None}


def test_missing_fields_are_not_suppressed_with_do_not_suppress() -> None:
    supp = suppressor(duration_m=5, strategy="doNotSuppress")

    passed = [supp.offer(alert(number, user=None), T) for number in range(2)]
    supp.offer(alert(5), T)
    supp.offer(alert(6), T)

    assert [item.alert_id if item else None for item in passed] == ["a0", "a1"]
    assert "suppression" not in passed[0].document["kibana"]["alert"]  # type: ignore[union-attr]
    assert summary(supp.due(T + 5 * MINUTE)) == [("a5", 1)]


def test_multi_valued_terms_are_compared_sorted_and_an_empty_list_is_missing() -> None:
    supp = suppressor(duration_m=5, strategy="doNotSuppress", group_by=("source.ip",))
    supp.offer(alert(1, source={"ip": ["10.0.0.2", "10.0.0.1"]}), T)
    supp.offer(alert(2, source={"ip": ["10.0.0.1", "10.0.0.2"]}), T)

    assert supp.offer(alert(3, source={"ip": []}), T) is not None
    sent = supp.due(T + 5 * MINUTE)
    assert summary(sent) == [("a1", 1)]
    assert suppression(sent[0])["terms"] == [{"field": "source.ip",
                                              "value": ["10.0.0.1", "10.0.0.2"]}]


def test_fields_are_found_whichever_way_their_dotted_names_are_nested() -> None:
    document = {"Esql": {"count": 3}, "a.b": {"c": 1}, "x": {"y.z": 2}, "flat.name": 4}

    assert [field_value(document, name) for name in
            ("Esql.count", "a.b.c", "x.y.z", "flat.name", "Esql.absent")] == [3, 1, 2, 4, None]


def test_instance_ids_depend_on_rule_and_values_only() -> None:
    assert instance_id("r", ("alice", None)) == instance_id("r", ("alice", None))
    assert len({instance_id("r", ("alice",)), instance_id("s", ("alice",)),
                instance_id("r", ("bob",))}) == 3


# --- order, lateness, restart -----------------------------------------------------------------


def random_matches(seed: int, count: int = 120) -> list[tuple[int, Alert]]:
    chance = random.Random(seed)
    return [
        (T + chance.randrange(0, 120 * MINUTE, 10_000),
         alert(number, user=chance.choice(["alice", "bob", None])))
        for number in range(count)
    ]


def final_documents(sent: list[Alert]) -> dict[str, Any]:
    """What an index written by alert id holds in the end."""
    return {item.alert_id: item.document for item in sent}


def drive(supp: Suppressor, matches: list[tuple[int, Alert]], lag: int = 15 * MINUTE
          ) -> list[Alert]:
    sent: list[Alert] = []
    high = 0
    for ts, item in matches:
        passed = supp.offer(item, ts)
        if passed is not None:
            sent.append(passed)
        high = max(high, ts)
        sent += supp.due(high - lag)
    return sent


@pytest.mark.parametrize("seed", range(6))
def test_the_outcome_depends_on_event_times_not_on_arrival_order(seed: int) -> None:
    matches = random_matches(seed)
    in_order = sorted(matches, key=lambda match: match[0])
    jitter = random.Random(seed)
    shuffled = sorted(matches, key=lambda match: match[0] + jitter.randrange(0, 10 * MINUTE))
    ordered, reordered = suppressor(), suppressor()

    expected = final_documents(drive(ordered, in_order) + ordered.flush())
    got = final_documents(drive(reordered, shuffled) + reordered.flush())

    assert got == expected
    assert reordered.late_matches == 0
    assert reordered.suppressed == ordered.suppressed > 0


@pytest.mark.parametrize("seed", range(6))
def test_a_restart_from_the_dump_continues_as_an_uninterrupted_run(seed: int) -> None:
    matches = sorted(random_matches(seed), key=lambda match: match[0])
    whole = suppressor()
    expected = drive(whole, matches) + whole.flush()
    cut = random.Random(seed).randrange(1, len(matches))
    first = suppressor()
    before = drive(first, matches[:cut])
    restarted = suppressor()
    restarted.load(json.loads(json.dumps(first.dump())))

    after = drive(restarted, matches[cut:])

    assert [item.alert_id for item in before + after + restarted.flush()] == [
        item.alert_id for item in expected]
    assert final_documents(before + after) == final_documents(drive(suppressor(), matches))
    assert restarted.suppressed == whole.suppressed


def test_per_instance_changelog_records_restore_the_same_state() -> None:
    matches = sorted(random_matches(3), key=lambda match: match[0])
    first = suppressor()
    drive(first, matches[:60])
    records = {json.dumps(terms): first.dump_group(terms) for terms in first.take_changed()}
    restarted = suppressor()
    restarted.load_progress(json.loads(json.dumps(first.dump_progress())))
    for key, data in records.items():
        if data is not None:
            restarted.load_group(terms_from_json(json.loads(key)), json.loads(json.dumps(data)))

    assert restarted.dump() == json.loads(json.dumps(first.dump()))
    assert restarted.open_groups == first.open_groups
    assert first.state_bytes > 0


def test_a_late_match_is_counted_and_folded_into_its_open_window() -> None:
    supp = suppressor(duration_m=30)
    supp.offer(alert(1), T + 10 * MINUTE)
    supp.due(T + 20 * MINUTE)
    supp.offer(alert(2), T + 5 * MINUTE)

    assert supp.due(T + 25 * MINUTE) == []
    assert supp.late_matches == 1
    update = supp.due(T + 40 * MINUTE)
    assert summary(update) == [("a1", 1)]
    assert suppression(update[0])["start"] == "2025-12-01T12:05:00.000Z"


# --- rule files -------------------------------------------------------------------------------



def test_a_rule_without_suppression_has_no_suppressor() -> None:
    rule = parse_rule(RULE, "test")
    assert isinstance(rule, LoadedRule)
    assert rule.definition.rule.alert_suppression is None
    assert Suppressor.for_rule(rule) is None


def test_the_detector_table_adds_suppression_to_a_rule_that_has_none() -> None:
    rule = parse_rule(RULE + '\n[detector.alert_suppression]\ngroup_by = ["user.name"]\n'
                      'duration = { value = 2, unit = "h" }\n', "test")
    assert isinstance(rule, LoadedRule)
    supp = Suppressor.for_rule(rule)

    assert supp is not None
    assert (supp.group_by, supp.duration_ms, supp.suppress_missing) == (
        ("user.name",), 2 * 60 * MINUTE, True)


def test_the_detector_table_replaces_the_rules_own_suppression() -> None:
    text = RULE.replace('severity = "low"', 'severity = "low"\n[rule.alert_suppression]\n'
                        'group_by = ["user.name"]\n')
    rule = parse_rule(text + '\n[detector.alert_suppression]\ngroup_by = ["source.ip"]\n'
                      'missing_fields_strategy = "doNotSuppress"\n', "test")
    supp = Suppressor.for_rule(rule.definition.rule)

    assert supp is not None
    assert supp.group_by == ("source.ip",)
    assert supp.duration_ms is None
    assert not supp.suppress_missing


@pytest.mark.parametrize("table", ["rule", "detector"])
def test_suppression_needs_one_to_five_group_by_fields(table: str) -> None:
    body = f"\n[{table}.alert_suppression]\ngroup_by = []\n"
    text = RULE.replace('severity = "low"', 'severity = "low"' + body) if table == "rule" \
        else RULE + body
    with pytest.raises(RuleLoadError, match="group_by"):
        parse_rule(text, "test")
    six = '["a", "b", "c", "d", "e", "f"]'
    with pytest.raises(RuleLoadError, match="group_by"):
        parse_rule(text.replace("group_by = []", f"group_by = {six}"), "test")


def test_elastics_companion_rule_suppresses_by_arn_and_account_for_35_minutes() -> None:
    path: Path = shared_path("elastic-rules", "aws",
                             "persistence_iam_user_self_created_access_key_subsequently_used.toml")
    rule = parse_rule(path.read_text(), str(path))
    suppression_settings = rule.definition.rule.alert_suppression

    assert suppression_settings is not None
    assert suppression_settings.group_by == ["aws.cloudtrail.user_identity.arn",
                                             "cloud.account.id"]
    assert suppression_settings.duration is not None
    assert suppression_settings.duration.total_ms() == 35 * MINUTE
