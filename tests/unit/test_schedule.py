"""Elastic's run schedule in event time: which runs read an event, what each run outputs, late
events, eviction and a restart from the changelog dump."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import pytest

from consumer.cloudtrail.normalize import INGESTED_MS
from consumer.cloudtrail.record import json_to_avro
from consumer.rules.esql.aggregate import compile_aggregating_query
from consumer.rules.loader import RuleLoadError, parse_rule
from consumer.rules.schedule import (
    GroupKey,
    Row,
    RunRows,
    Schedule,
    WindowedAggregation,
    alert_id,
    row_key,
)
from tests.support.events import event
from tests.support.stateful_rules import ACCESS_KEY_RULE as RULE

MINUTE = 60_000
T = 1_764_590_400_000
"""2025-12-01T12:00:00Z, a multiple of every interval used here."""


class CountBy:
    """A stand-in for `STATS n = COUNT(*), first = MIN(ts) BY <column> | WHERE n >= at_least`."""

    def __init__(self, column: str | None = "user", at_least: int = 1) -> None:
        self.group_by: tuple[str, ...] = (column,) if column else ()
        self.at_least = at_least

    def group_keys(self, row: Row) -> list[GroupKey]:
        if not self.group_by:
            return [()]
        value = row.get(self.group_by[0])
        return [(item,) for item in value] if isinstance(value, list) else [(value,)]

    def new_state(self) -> dict[str, int]:
        return {"n": 0}

    def add(self, state: dict[str, int], row: Row) -> None:
        state["n"] += 1

    def merge(self, into: dict[str, int], other: dict[str, int]) -> None:
        into["n"] += other["n"]

    def dump(self, state: dict[str, int]) -> object:
        return dict(state)

    def load(self, data: object) -> dict[str, int]:
        assert isinstance(data, dict)
        return {"n": int(data["n"])}

    def finish(self, groups: Iterable[tuple[GroupKey, dict[str, int]]], now_ms: int) -> list[Row]:
        rows: list[Row] = []
        for key, state in sorted(groups, key=lambda item: json.dumps(item[0])):
            row: Row = dict(zip(self.group_by, key, strict=True))
            row["n"] = state["n"]
            if state["n"] >= self.at_least:
                rows.append(row)
        if not self.group_by and not rows and self.at_least == 0:
            rows.append({"n": 0})
        return rows


def windows(interval: int = 5, lookback: int = 6, **query: Any) -> WindowedAggregation[Any]:
    schedule = Schedule(interval * MINUTE, lookback * MINUTE)
    return WindowedAggregation(CountBy(**query), schedule)


def table(runs: list[RunRows]) -> list[tuple[int, list[Row]]]:
    return [((run.run_ms - T) // MINUTE, run.rows) for run in runs]


# --- the schedule -----------------------------------------------------------------------------


def test_an_event_on_a_run_time_belongs_to_that_run_and_not_the_next() -> None:
    schedule = Schedule(5 * MINUTE, 5 * MINUTE)

    assert schedule.runs_covering(T) == [T]
    assert schedule.runs_covering(T + 1) == [T + 5 * MINUTE]
    assert schedule.runs_covering(T - 5 * MINUTE) == [T - 5 * MINUTE]


def test_with_from_longer_than_interval_an_event_is_read_by_every_run_whose_window_holds_it() -> (
    None
):
    schedule = Schedule(5 * MINUTE, 6 * MINUTE)

    assert schedule.runs_covering(T - 30_000) == [T, T + 5 * MINUTE]
    assert schedule.runs_covering(T - 2 * MINUTE) == [T]
    assert schedule.runs_covering(T + MINUTE) == [T + 5 * MINUTE]
    assert schedule.runs_covering(T + 270_000) == [T + 5 * MINUTE, T + 10 * MINUTE]
    assert schedule.bucket_ms == MINUTE


def test_with_from_shorter_than_interval_some_events_are_in_no_window() -> None:
    schedule = Schedule(60 * MINUTE, 30 * MINUTE)

    assert schedule.runs_covering(T - 45 * MINUTE) == []
    assert schedule.runs_covering(T - 10 * MINUTE) == [T]




def test_the_schedule_of_a_rule_file_defaults_to_elastics_5m_every_6m_by_timestamp() -> None:
    rule = parse_rule(RULE, "test")
    tuned = parse_rule(
        RULE.replace('severity = "low"', 'severity = "low"\ninterval = "1h"\nfrom = "now-61m"\n'
                     'timestamp_override = "event.ingested"\nmax_signals = 7'),
        "test",
    )

    assert Schedule.for_rule(rule.definition.rule) == Schedule(5 * MINUTE, 6 * MINUTE)
    assert Schedule.for_rule(tuned.definition.rule) == Schedule(
        60 * MINUTE, 61 * MINUTE, "event.ingested", 7
    )


def test_event_time_reads_the_override_and_falls_back_to_the_timestamp() -> None:
    schedule = Schedule(5 * MINUTE, 6 * MINUTE, "event.ingested")
    record: dict[str, Any] = {"eventTime": "2025-12-01T11:58:00Z"}

    assert schedule.event_time(record) == T - 2 * MINUTE
    record[INGESTED_MS] = T + 1_500
    assert schedule.event_time(record) == T + 1_000, "event.ingested has whole seconds"
    assert Schedule(MINUTE, MINUTE).event_time(record) == T - 2 * MINUTE
    assert Schedule(MINUTE, MINUTE).event_time({}) is None


def test_alert_ids_are_the_same_for_the_same_rule_run_and_group_and_differ_otherwise() -> None:
    first = alert_id("r", T, ("alice", "123"))

    assert alert_id("r", T, ("alice", "123")) == first
    assert len({first, alert_id("r", T + MINUTE, ("alice", "123")),
                alert_id("s", T, ("alice", "123")), alert_id("r", T, ("bob", "123")),
                alert_id("r", T, ("alice", None))}) == 5


def test_a_row_stands_for_its_by_columns_or_for_itself_when_they_are_gone() -> None:
    assert row_key(("user",), {"user": "alice", "n": 3}) == ("alice",)
    assert row_key(("user",), {"who": "alice", "n": 3}) == (("n", "3"), ("who", '"alice"'))


# --- runs -------------------------------------------------------------------------------------


def test_events_with_equal_timestamps_all_count() -> None:
    agg = windows(5, 5)
    for _ in range(3):
        agg.add(T - MINUTE, {"user": "alice"})

    assert table(agg.due(T)) == [(0, [{"user": "alice", "n": 3}])]


def test_a_run_is_evaluated_once_the_watermark_reaches_its_time_and_only_once() -> None:
    agg = windows(5, 5)
    agg.add(T, {"user": "alice"})

    assert agg.due(T - 1) == []
    assert table(agg.due(T)) == [(0, [{"user": "alice", "n": 1}])]
    assert agg.due(T + 4 * MINUTE) == []


def test_an_event_exactly_at_the_start_of_a_window_is_outside_it() -> None:
    agg = windows(5, 5)
    agg.add(T - 5 * MINUTE, {"user": "alice"})
    agg.add(T - 5 * MINUTE + 1, {"user": "alice"})

    assert table(agg.due(T)) == [(-5, [{"user": "alice", "n": 1}]),
                                 (0, [{"user": "alice", "n": 1}])]


def test_overlapping_windows_read_the_same_event_and_give_each_run_its_own_alert_id() -> None:
    agg = windows(5, 6)
    agg.add(T - 30_000, {"user": "alice"})
    agg.add(T + 270_000, {"user": "alice"})

    runs = agg.due(T + 10 * MINUTE)

    assert table(runs) == [(0, [{"user": "alice", "n": 1}]), (5, [{"user": "alice", "n": 2}]),
                           (10, [{"user": "alice", "n": 1}])]
    assert [run.keys for run in runs] == [[("alice",)]] * 3
    assert len({alert_id("r", run.run_ms, run.keys[0]) for run in runs}) == 3


def test_a_run_whose_groups_fail_the_condition_after_stats_has_no_rows() -> None:
    agg = windows(5, 5, at_least=2)
    agg.add(T - MINUTE, {"user": "alice"})
    agg.add(T - MINUTE, {"user": "bob"})
    agg.add(T - 2 * MINUTE, {"user": "bob"})
    agg.add(T + MINUTE, {"user": "alice"})

    assert table(agg.due(T + 5 * MINUTE)) == [(0, [{"user": "bob", "n": 2}])]


def test_runs_without_data_are_skipped_but_a_query_without_by_has_a_row_every_run() -> None:
    by_user = windows(5, 5)
    by_user.add(T, {"user": "alice"})
    by_user.add(T + 30 * MINUTE, {"user": "alice"})
    totals = windows(5, 5, column=None, at_least=0)
    totals.add(T, {"user": "alice"})

    assert [run for run, _ in table(by_user.due(T + 60 * MINUTE))] == [0, 30]
    assert table(totals.due(T + 10 * MINUTE)) == [(0, [{"n": 1}]), (5, [{"n": 0}]),
                                                  (10, [{"n": 0}])]


def test_a_multi_valued_by_column_counts_the_row_in_each_of_its_groups() -> None:
    agg = windows(5, 5)
    agg.add(T, {"user": ["alice", "bob"]})

    assert table(agg.due(T)) == [(0, [{"user": "alice", "n": 1}, {"user": "bob", "n": 1}])]


def test_at_most_max_signals_rows_of_a_run_are_kept_and_the_rest_counted() -> None:
    agg = WindowedAggregation(CountBy(), Schedule(5 * MINUTE, 5 * MINUTE, max_signals=2))
    for user in "abcde":
        agg.add(T, {"user": user})

    assert table(agg.due(T)) == [(0, [{"user": "a", "n": 1}, {"user": "b", "n": 1}])]
    assert agg.truncated_rows == 3


# --- late events and eviction -----------------------------------------------------------------


def test_a_late_event_counts_in_the_open_runs_that_read_it_and_only_those() -> None:
    agg = windows(5, 10)
    agg.add(T - MINUTE, {"user": "alice"})
    assert table(agg.due(T)) == [(0, [{"user": "alice", "n": 1}])]

    assert agg.add(T - 2 * MINUTE, {"user": "alice"}), "run T+5m still reads it"
    assert table(agg.due(T + 5 * MINUTE)) == [(5, [{"user": "alice", "n": 2}])]
    assert agg.late_events == 0


def test_an_event_only_evaluated_runs_read_is_dropped_and_counted() -> None:
    agg = windows(5, 5)
    agg.add(T, {"user": "alice"})
    agg.due(T)

    assert not agg.add(T - MINUTE, {"user": "bob"})
    assert agg.late_events == 1
    assert agg.due(T + 10 * MINUTE) == []


def test_buckets_no_open_run_reads_are_dropped_so_state_stays_bounded() -> None:
    agg = windows(5, 6)
    sizes = []
    for minute in range(0, 600, 1):
        agg.add(T + minute * MINUTE, {"user": f"user{minute}"})
        agg.due(T + minute * MINUTE)
        sizes.append(agg.open_groups)

    assert max(sizes) <= 10, "6 minutes of buckets plus the next interval's"
    agg.due(T + 700 * MINUTE)
    assert agg.open_groups == 0
    assert agg.state_bytes == 0
    assert agg.dump()["groups"] == []


def test_an_evicted_group_is_reported_changed_and_dumps_as_a_tombstone() -> None:
    agg = windows(5, 5)
    agg.add(T, {"user": "alice"})
    assert agg.take_changed() == {("alice",)}
    assert agg.dump_group(("alice",)) == {str(T): {"n": 1}}
    assert agg.state_bytes > 0

    agg.due(T)

    assert agg.take_changed() == {("alice",)}
    assert agg.dump_group(("alice",)) is None


# --- restart ----------------------------------------------------------------------------------


def random_events(seed: int, count: int = 300) -> list[tuple[int, Row]]:
    chance = random.Random(seed)
    events: list[tuple[int, Row]] = []
    for _ in range(count):
        ts = T + chance.randrange(0, 90 * MINUTE, 7_000)
        jitter = chance.randrange(0, 3 * MINUTE)
        events.append((ts - jitter, {"user": chance.choice(["alice", "bob", "carol", None])}))
    return sorted(events, key=lambda event: event[0] + chance.randrange(0, 2 * MINUTE))


def run_all(
    agg: WindowedAggregation[Any], events: list[tuple[int, Row]], *, high: int = 0,
    flush: bool = True,
) -> list[RunRows]:
    """Feed events in order with the watermark a minute behind the highest time seen, then
    (at the end of input) evaluate every run left."""
    out: list[RunRows] = []
    for ts, row in events:
        agg.add(ts, row)
        high = max(high, ts)
        out += agg.due(high - MINUTE)
    return out + agg.flush() if flush else out


@pytest.mark.parametrize("seed", range(8))
def test_a_restart_from_the_dump_continues_exactly_as_an_uninterrupted_run(seed: int) -> None:
    events = random_events(seed)
    whole = run_all(windows(5, 6), events)
    cut = random.Random(seed).randrange(1, len(events))
    first = windows(5, 6)
    before = run_all(first, events[:cut], flush=False)
    dumped = json.loads(json.dumps(first.dump()))
    restarted = windows(5, 6)
    restarted.load(dumped)

    after = run_all(restarted, events[cut:], high=max(ts for ts, _ in events[:cut]))

    assert before + after == whole
    assert any(run.rows for run in whole)


@pytest.mark.parametrize("seed", range(4))
def test_a_restart_from_per_group_records_equals_one_from_the_whole_dump(seed: int) -> None:
    events = random_events(seed)
    cut = len(events) // 2
    first = windows(5, 6)
    before = run_all(first, events[:cut], flush=False)
    changelog: dict[str, object] = {}
    for key in first.take_changed():
        changelog[json.dumps(list(key))] = first.dump_group(key)
    progress = json.loads(json.dumps(first.dump_progress()))
    restarted = windows(5, 6)
    restarted.load_progress(progress)
    for key_text, data in changelog.items():
        if data is not None:
            restarted.load_group(tuple(json.loads(key_text)), data)

    high = max(ts for ts, _ in events[:cut])
    assert before + run_all(restarted, events[cut:], high=high) == run_all(windows(5, 6), events)


def test_a_restart_keeps_the_runs_already_evaluated_evaluated() -> None:
    agg = windows(5, 5)
    agg.add(T, {"user": "alice"})
    agg.due(T)
    restarted = windows(5, 5)
    restarted.load(json.loads(json.dumps(agg.dump())))

    assert not restarted.add(T - MINUTE, {"user": "alice"})
    assert restarted.late_events == 1
    assert timedelta(milliseconds=restarted.schedule.interval_ms) == timedelta(minutes=5)


# --- with the real ES|QL engine ---------------------------------------------------------------


def test_the_real_aggregating_query_runs_on_the_schedule_and_survives_a_restart() -> None:
    query = compile_aggregating_query(
        'FROM logs-aws.cloudtrail-* | WHERE event.action == "GetObject" '
        "| STATS Esql.n = COUNT(*), Esql.ips = VALUES(source.ip) BY user.name "
        "| WHERE Esql.n >= 2"
    )
    schedule = Schedule(5 * MINUTE, 6 * MINUTE)
    events = []
    for number, (caller, second) in enumerate([("alice", 10), ("bob", 20), ("alice", 250),
                                               ("alice", 290), ("bob", 400), ("bob", 420)]):
        moment = f"2025-12-01T12:{second // 60:02d}:{second % 60:02d}Z"
        record = json_to_avro(event(event_id=f"e{number}", caller=caller, event_time=moment,
                                    request_parameters={"bucketName": "b"}))
        ts = schedule.event_time(record)
        assert ts is not None
        events += [(ts, row) for row in query.rows(record)]

    whole = run_all(WindowedAggregation(query, schedule), events)
    first = WindowedAggregation(query, schedule)
    before = run_all(first, events[:3], flush=False)
    restarted = WindowedAggregation(query, schedule)
    restarted.load(json.loads(json.dumps(first.dump())))
    after = run_all(restarted, events[3:], high=max(ts for ts, _ in events[:3]))

    assert before + after == whole
    assert [(run.run_ms - T, run.keys) for run in whole] == [
        (5 * MINUTE, [("alice",)]), (10 * MINUTE, [("alice",), ("bob",)])
    ], "the 6-minute window of 12:10 still holds alice's reads at 12:04:10 and 12:04:50"
    assert whole[0].rows[0]["Esql.n"] == 3


def test_rows_of_one_run_that_stand_for_the_same_group_give_one_alert() -> None:
    class Duplicating(CountBy):
        def finish(self, groups: Iterable[tuple[GroupKey, dict[str, int]]], now_ms: int
                   ) -> list[Row]:
            rows = super().finish(groups, now_ms)
            return rows + rows

    agg = WindowedAggregation(Duplicating(), Schedule(5 * MINUTE, 5 * MINUTE))
    agg.add(T, {"user": "alice"})

    assert table(agg.due(T)) == [(0, [{"user": "alice", "n": 1}])]
    assert agg.truncated_rows == 0


def test_a_timestamp_override_naming_no_field_of_the_events_is_a_load_error() -> None:
    with pytest.raises(RuleLoadError, match=r"rule\.timestamp_override: event\.ingestd"):
        parse_rule(RULE.replace('severity = "low"', 'severity = "low"\n'
                                'timestamp_override = "event.ingestd"'), "test")
