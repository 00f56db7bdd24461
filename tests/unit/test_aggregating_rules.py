"""Aggregating rules on hand-written event sequences: the rows of every run, as worked out by
hand from each rule's query and Elastic's schedule (tests/support/aggregating_events.py).

The companion rule of ours alerts on a key created for another user and used within the hour,
and not otherwise; its look-back covers every such pair, where Elastic's own companion for
self-created keys, looking back 35 minutes, cannot see a use 36 to 60 minutes after creation.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from consumer.alerts.suppression import field_value
from consumer.cloudtrail.record import json_to_avro
from consumer.offline.scan import ScanCounts, scan
from consumer.rules.loader import LoadedRule, load_rules
from consumer.rules.schedule import RunRows, Schedule, WindowedAggregation
from tests.support.aggregating_events import (
    ACCOUNT_A,
    COMPANION,
    IDLE_PARTITION,
    MALLORY_KEY,
    NEW_KEY_1,
    NEW_KEY_2,
    SELF_CREATED,
    T0,
    EventSequence,
    ExpectedRow,
    aggregation_of,
    call,
    companion,
    create_access_key,
    geoip,
    iam_user,
    iso_ms,
    load,
    normalized_rows,
    sequences,
)

SEQUENCES = sequences()
COMPANION_ID = "5b0f0c87-35b5-4c1e-9a55-6f0e3a7a8d21"
SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
HOUR_MS = 3_600_000


def evaluate(rule: LoadedRule, events: list[dict[str, object]],
             lateness_ms: int | None = None) -> tuple[list[RunRows], WindowedAggregation[object]]:
    """Every run's rows for the events in this arrival order. Without `lateness_ms` the
    watermark is the end of input (the offline scan); with it, the watermark follows the
    latest event time seen minus the lateness, as on a stream, and runs are evaluated as it
    passes them."""
    schedule = Schedule.for_rule(rule)
    aggregation: WindowedAggregation[object] = WindowedAggregation(
        aggregation_of(rule), schedule
    )
    runs: list[RunRows] = []
    latest: int | None = None
    for event in events:
        record = json_to_avro(event)
        moment = schedule.event_time(record)
        assert moment is not None
        for row in aggregation_of(rule).rows(record):
            aggregation.add(moment, row)
        if lateness_ms is not None:
            latest = moment if latest is None else max(latest, moment)
            runs += aggregation.due(latest - lateness_ms)
    runs += aggregation.flush()
    return runs, aggregation


def by_run(runs: list[RunRows]) -> dict[int, list[str]]:
    return {run.run_ms: normalized_rows(run.rows) for run in runs}


def expected_by_run(rows: list[ExpectedRow]) -> dict[int, list[str]]:
    grouped: dict[int, list[dict[str, object]]] = {}
    for row in rows:
        grouped.setdefault(row.run_ms, []).append(row.columns)
    return {run: normalized_rows(columns) for run, columns in grouped.items()}


def checked_columns(runs: list[RunRows], sequence: EventSequence) -> dict[int, list[str]]:
    """Our rows cut to the columns the sequence checks (all of them for complete rows)."""
    wanted = {column for row in sequence.rows for column in row.columns}
    complete = all(row.complete for row in sequence.rows)
    return {
        run.run_ms: normalized_rows(
            row if complete else {name: row.get(name) for name in wanted} for row in run.rows
        )
        for run in runs
    }


@pytest.fixture(autouse=True)
def enrichment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """The GeoIP databases, for a sequence that needs them."""
    callspec = getattr(request.node, "callspec", None)
    sequence = callspec.params.get("sequence") if callspec is not None else None
    if isinstance(sequence, EventSequence) and sequence.geoip:
        with geoip(tmp_path):
            yield
    else:
        yield


@pytest.mark.parametrize("sequence", SEQUENCES, ids=[sequence.name for sequence in SEQUENCES])
def test_every_run_gives_the_rows_worked_out_by_hand(sequence: EventSequence) -> None:
    rule = load(sequence.rule)
    runs, aggregation = evaluate(rule, sequence.events)
    assert checked_columns(runs, sequence) == expected_by_run(sequence.rows)
    assert aggregation.late_events == 0
    assert aggregation.open_groups == 0, "flush leaves no state behind"


@pytest.mark.parametrize("sequence", SEQUENCES, ids=[sequence.name for sequence in SEQUENCES])
def test_rows_do_not_depend_on_the_order_events_arrive_in(sequence: EventSequence) -> None:
    rule = load(sequence.rule)
    shuffled = list(sequence.events)
    random.Random(16).shuffle(shuffled)
    assert by_run(evaluate(rule, shuffled)[0]) == by_run(evaluate(rule, sequence.events)[0])


@pytest.mark.parametrize("sequence", SEQUENCES, ids=[sequence.name for sequence in SEQUENCES])
def test_rows_columns_are_the_querys_columns(sequence: EventSequence) -> None:
    rule = load(sequence.rule)
    runs, _ = evaluate(rule, sequence.events)
    columns = list(aggregation_of(rule).columns)
    assert runs
    for run in runs:
        for row in run.rows:
            assert list(row) == columns


def test_companion_ships_switched_off_with_a_look_back_longer_than_its_window() -> None:
    rule = load(COMPANION)
    definition = rule.definition.rule
    assert rule.rule_id == COMPANION_ID
    assert rule.enabled is False
    assert definition.interval == timedelta(minutes=5)
    assert definition.lookback == timedelta(minutes=66)
    assert definition.alert_suppression is not None
    assert definition.alert_suppression.group_by == [
        "cloud.account.id", "Esql_priv.aws_cloudtrail_new_access_key_id"]
    assert definition.alert_suppression.duration is not None
    assert aggregation_of(rule).group_by == (
        "cloud.account.id", "Esql_priv.aws_cloudtrail_new_access_key_id")


def _some_run_sees_both(schedule: Schedule, created_ms: int, used_ms: int) -> bool:
    return bool(set(schedule.runs_covering(created_ms)) & set(schedule.runs_covering(used_ms)))


def test_companion_schedule_sees_every_creation_and_use_up_to_an_hour_apart() -> None:
    """Creations at every second of one interval (the schedule repeats), uses 0 s to 3600.999 s
    later (DATE_DIFF counts whole seconds): some run reads both."""
    schedule = Schedule.for_rule(load(COMPANION))
    base = 1_795_946_400_000
    gaps = [0, 1, 1_000, 1_799_000, 2_400_000, 3_599_000, 3_600_000, 3_600_999]
    for second in range(0, schedule.interval_ms, 1000):
        for offset in (0, 1, 999):
            created = base + second + offset
            for gap in gaps:
                assert _some_run_sees_both(schedule, created, created + gap), (second, gap)


def test_elastic_companion_schedule_misses_uses_its_condition_allows() -> None:
    """Elastic's self-created-key rule accepts uses up to 3600 s after creation, but a run
    reads only 35 minutes: a use 40 minutes later is never read together with the creation."""
    schedule = Schedule.for_rule(load(SELF_CREATED))
    created = 1_795_946_400_000
    assert _some_run_sees_both(schedule, created, created + 30 * 60_000)
    assert not _some_run_sees_both(schedule, created, created + 40 * 60_000)
    assert not _some_run_sees_both(schedule, created, created + HOUR_MS)


def test_companion_alerts_on_keys_used_within_the_hour_and_not_otherwise() -> None:
    """bob's key (used 3599 s after) and carol's (3600 s) alert; dave's (3601 s), erin's (never
    used), frank's self-created key and eve's failed creation do not."""
    runs, _ = evaluate(load(COMPANION), companion().events)
    alerted = {(row["cloud.account.id"], row["Esql_priv.aws_cloudtrail_new_access_key_id"])
               for run in runs for row in run.rows}
    assert alerted == {(ACCOUNT_A, NEW_KEY_1), (ACCOUNT_A, NEW_KEY_2)}


def test_companion_late_use_needs_the_allowed_lateness_to_be_seen() -> None:
    """carol's key is used at 11:04:00 but that event arrives after dave's at 11:20:01. With no
    allowed lateness the runs that could pair it with its creation were already evaluated, so
    it is counted only in later runs, which no longer read the creation: carol's row is lost.
    Allowing 17 minutes keeps run 11:05 open until the use arrives."""
    sequence = companion()
    rule = load(COMPANION)
    on_time = by_run(evaluate(rule, sequence.events, lateness_ms=17 * 60_000)[0])
    assert on_time == expected_by_run(sequence.rows)
    runs, _ = evaluate(rule, sequence.events, lateness_ms=0)
    assert by_run(runs) == expected_by_run([row for row in sequence.rows if row.columns[
        "Esql_priv.aws_cloudtrail_new_access_key_id"] != NEW_KEY_2])


def scan_alerts(tmp_path: Path, rule: LoadedRule, events: list[dict[str, object]]
                ) -> tuple[list[dict[str, Any]], ScanCounts]:
    """The alerts `scan` writes for the events (the rule switched on), as the last document
    per alert id: a suppressed alert is written first, then again with its final count."""
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(event) + "\n" for event in events))
    output = io.StringIO()
    counts = scan([path], [replace(rule, enabled=True)], output, progress=None)
    last: dict[str, dict[str, Any]] = {}
    for line in output.getvalue().splitlines():
        document = json.loads(line)
        last[document["kibana"]["alert"]["uuid"]] = document
    return list(last.values()), counts


def _terms(rule: LoadedRule, columns: dict[str, object]) -> tuple[object, ...]:
    suppression = rule.definition.rule.alert_suppression
    assert suppression is not None
    return tuple(json.dumps(_sorted(columns.get(name))) for name in suppression.group_by)


def _sorted(value: object) -> object:
    return sorted(value, key=json.dumps) if isinstance(value, list) else value


@pytest.mark.parametrize("sequence", SEQUENCES, ids=[sequence.name for sequence in SEQUENCES])
def test_scan_writes_the_alerts_suppression_leaves(tmp_path: Path,
                                                   sequence: EventSequence) -> None:
    """One alert per row that suppression lets out, carrying the row's columns, the run it
    came from and, for a suppressed rule, how many later rows of its group it absorbed."""
    rule = load(sequence.rule)
    alerts, counts = scan_alerts(tmp_path, rule, sequence.events)
    suppression = rule.definition.rule.alert_suppression
    expected = []
    for index in sequence.alerts:
        row = sequence.rows[index]
        absorbed = 0 if suppression is None else sum(
            _terms(rule, other.columns) == _terms(rule, row.columns)
            for position, other in enumerate(sequence.rows) if position not in sequence.alerts)
        expected.append((iso_ms(row.run_seconds), absorbed, normalized_rows([
            {name: value for name, value in row.columns.items() if value is not None}])))
    found = []
    for alert in alerts:
        count = field_value(alert, "kibana.alert.suppression.docs_count")
        columns = {name: field_value(alert, name) for name in aggregation_of(rule).columns}
        found.append((alert["detector"]["run"]["end"], count or 0, normalized_rows([
            {name: value for name, value in columns.items() if value is not None}])))
    assert sorted(found) == sorted(expected)
    assert counts.late_events == 0
    assert counts.suppressed == sum(absorbed for _, absorbed, _ in expected)


def test_companion_is_off_by_default_so_the_default_rules_alert_only_on_the_creations(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(event) + "\n" for event in companion().events))
    output = io.StringIO()
    scan([path], load_rules(), output, progress=None)
    alerts = [json.loads(line) for line in output.getvalue().splitlines()]
    assert sorted(alert["user"]["target"]["name"] for alert in alerts) == [
        "bob", "carol", "dave", "erin"]
    assert {alert["kibana"]["alert"]["rule"]["rule_id"] for alert in alerts} == {SEED_ID}


@pytest.mark.parametrize("case", range(24))
def test_companion_alerts_once_for_any_use_up_to_an_hour_after_creation_and_never_later(
    tmp_path: Path, case: int,
) -> None:
    """A creation anywhere in a day (any second, so anywhere relative to the schedule) and a
    use 0 to 3600 s later gives exactly one alert, whose run reads both; 3601 s or more, none."""
    chance = random.Random(case)
    created = chance.randrange(86_400)
    gap = chance.choice([0, 1, 3600, 3601, 7200]) if case < 10 else chance.randrange(7200)
    mallory = iam_user("mallory", ACCOUNT_A, MALLORY_KEY)
    events = [
        create_access_key(seconds=created, caller=mallory, target="bob", new_key=NEW_KEY_1),
        call("GetCallerIdentity", seconds=created + gap,
             identity=iam_user("bob", ACCOUNT_A, NEW_KEY_1), source="sts.amazonaws.com"),
    ]
    alerts, _ = scan_alerts(tmp_path, load(COMPANION), events)
    if gap > 3600:
        assert alerts == []
        return
    assert len(alerts) == 1
    (alert,) = alerts
    assert alert["Esql_priv"]["aws_cloudtrail_new_access_key_id"] == NEW_KEY_1
    assert alert["Esql"]["timestamp_creation_min"] == iso_ms(created)
    assert alert["Esql"]["timestamp_use_min"] == iso_ms(created + gap)
    run_end = datetime.fromisoformat(alert["detector"]["run"]["end"])
    use = T0 + timedelta(seconds=created + gap)
    assert use <= run_end < use + timedelta(minutes=5), "the first run that reads the use"


@pytest.mark.parametrize("sequence", SEQUENCES, ids=[sequence.name for sequence in SEQUENCES])
def test_late_events_are_late_on_their_partition_and_one_partition_stays_idle(
    sequence: EventSequence,
) -> None:
    """What the stream tests rely on: each `late` event arrives after an event of its own
    partition more than one interval younger, and IDLE_PARTITION receives nothing."""
    schedule = Schedule.for_rule(load(sequence.rule))
    newest: dict[int, int] = {}
    found = set()
    for event, partition in zip(sequence.events, sequence.partitions(), strict=True):
        moment = schedule.event_time(json_to_avro(event))
        assert moment is not None
        if newest.get(partition, moment) - moment > schedule.interval_ms:
            found.add(event["eventID"])
        newest[partition] = max(newest.get(partition, moment), moment)
    assert sequence.late <= found
    assert IDLE_PARTITION not in sequence.partitions()
