"""An aggregating rule in the detector: each event's rows for its schedule, the prefilter that
must not skip them, and exceptions that filter its source events."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.cloudtrail.decode import JsonDecoder
from consumer.cloudtrail.record import json_to_avro
from consumer.offline.replay import json_encoder
from consumer.rules.detector import SKIPPED, Detector, Verdict
from consumer.rules.exceptions import CompiledItem, ExceptionSet, RuleExceptions
from consumer.rules.loader import LoadedRule
from tests.support.events import create_access_key, event
from tests.support.stateful_rules import COUNT_ID, counting_rule, rules_in

READ = event(event_id="read-1", caller="alice", request_parameters={"bucketName": "logs"})
CROSS_USER = create_access_key(event_id="cross", caller="mallory", target="bob")


@pytest.fixture
def rules(tmp_path: Path) -> list[LoadedRule]:
    return rules_in(tmp_path, {"count.toml": counting_rule(
        lookback=None, threshold=None, name="Reads per user")})


def test_a_record_gives_an_aggregating_rule_rows_not_a_match(rules: list[LoadedRule]) -> None:
    detector = Detector(JsonDecoder(), rules)

    verdict = detector.judge(json_to_avro(READ))

    assert [rule.rule_id for rule in detector.aggregating] == [COUNT_ID]
    assert verdict.matched == ()
    assert [(rule.rule_id, rows) for rule, rows in verdict.rows] == [
        (COUNT_ID, ({"user.name": "alice"},))]
    assert detector.judge(json_to_avro(CROSS_USER)).rows == ()


def test_the_prefilter_keeps_what_an_aggregating_rule_reads(rules: list[LoadedRule]) -> None:
    only_counting = [rule for rule in rules if rule.rule_id == COUNT_ID]
    detector = Detector(JsonDecoder(), only_counting)
    encode = json_encoder()

    read = detector.inspect(encode(READ))

    assert isinstance(read, Verdict)
    assert read.rows
    assert detector.inspect(encode(CROSS_USER)) is SKIPPED


def test_exceptions_remove_an_events_rows_as_kibana_filters_source_events(
    rules: list[LoadedRule],
) -> None:
    item = CompiledItem("list", "alice", "not alice", "test", None,
                        lambda record: record["userIdentity"]["userName"] == "alice")
    exceptions = ExceptionSet({COUNT_ID: RuleExceptions((item,))}, "digest")
    detector = Detector(JsonDecoder(), rules, exceptions=exceptions)

    verdict = detector.judge(json_to_avro(READ))

    assert verdict.rows == ()
    assert [(rule.rule_id, excepted.item_id) for rule, excepted in verdict.excepted] == [
        (COUNT_ID, "alice")]
    bob = event(event_id="read-2", caller="bob", request_parameters={"bucketName": "logs"})
    assert detector.judge(json_to_avro(bob)).rows
