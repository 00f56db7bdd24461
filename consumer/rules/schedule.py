"""Elastic's schedule for an aggregating rule, simulated in event time.

Kibana runs a rule every `interval`; each run reads the events of the last `from` (the rule's
`timestamp_override` field, else `@timestamp`; an event without the override falls back to
`@timestamp`, as Kibana's secondary timestamp does) and turns at most `max_signals` of the
query's rows into alerts. Here a run happens at every multiple t of `interval` since the epoch
and reads the events with t - from < time <= t. Kibana's range filter is closed at both ends
(gte/lte on wall-clock run times that drift); the half-open window makes each event belong to
exactly `from / interval` runs, and to exactly one when `from == interval`.

`WindowedAggregation` keeps, per group key, the partial aggregate state of each time bucket
(width gcd(interval, from), so every run's window is a whole number of buckets and an event
lands in exactly one) and merges the buckets of a run's window when the run is due: once the
watermark reaches t. Buckets no open run reads are dropped, so the state holds at most
`from` (plus the buckets of one interval) of partial states per group.

Late events: an event whose time falls in the window of a run not yet evaluated counts in that
run (and every later open run that covers it), even if earlier runs covering it were already
evaluated without it. An event that only already-evaluated runs cover is counted in
`late_events` and dropped: folding it into a later run would put it into a window Elastic would
never read it in, and a dead letter would hold a valid event. Size the allowed lateness of the
watermark so that this stays zero.

Alert ids for a run's rows come from (rule, run time, group key): Kibana hashes the run's
from/to, the query, the rule and the row's index in the run; the group key instead of the index
keeps an id stable whatever order a run lists its rows in.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from consumer.cloudtrail.normalize import ECS_FIELDS
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.rules.loader import LoadedRule
from consumer.rules.model import RuleDefinition
from consumer.times import parse_iso_utc

Row = dict[str, object]
GroupKey = tuple[object, ...]
State = TypeVar("State")
S = TypeVar("S")

RUN_ALERT_NAMESPACE = uuid.UUID("3b0c7f4e-6a51-4c1e-8d2f-5e9a0b7c2d41")
"""UUIDv5 namespace of the ids of alerts for aggregated rows; changing it changes every id."""


class Aggregation(Protocol[State]):
    """What the schedule needs of an aggregating query (stats' `AggregatingQuery`)."""

    @property
    def group_by(self) -> tuple[str, ...]: ...

    def group_keys(self, row: Row) -> list[GroupKey]: ...

    def new_state(self) -> State: ...

    def add(self, state: State, row: Row) -> None: ...

    def merge(self, into: State, other: State) -> None: ...

    def dump(self, state: State) -> object: ...

    def load(self, data: object) -> State: ...

    def finish(self, groups: Iterable[tuple[GroupKey, State]], now_ms: int) -> list[Row]: ...


def canonical(value: object) -> str:
    """Compact JSON with sorted keys: the same value always spells the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def alert_id(rule_id: str, run_ms: int, group_key: GroupKey) -> str:
    """The id of the alert for one group's row in one run: a re-run or a restart gives it again."""
    return str(uuid.uuid5(RUN_ALERT_NAMESPACE, f"{rule_id}:{run_ms}:{canonical(list(group_key))}"))


def _ceil(value: int, step: int) -> int:
    return -(-value // step) * step


def millis(value: object) -> int | None:
    """An ISO-8601 time as epoch milliseconds; None for anything else."""
    moment = parse_iso_utc(value)
    return None if moment is None else int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a rule runs and which events each run reads, in epoch milliseconds."""

    interval_ms: int
    lookback_ms: int
    timestamp_field: str = "@timestamp"
    max_signals: int = 100

    def __post_init__(self) -> None:
        if self.interval_ms <= 0 or self.lookback_ms <= 0:
            raise ValueError("interval and from must be positive")
        if self.timestamp_field not in ECS_FIELDS:
            raise ValueError(f"timestamp field {self.timestamp_field} is not a known ECS field")

    @classmethod
    def for_rule(cls, rule: LoadedRule | RuleDefinition) -> Schedule:
        definition = rule.definition.rule if isinstance(rule, LoadedRule) else rule
        return cls(
            interval_ms=round(definition.interval.total_seconds() * 1000),
            lookback_ms=round(definition.lookback.total_seconds() * 1000),
            timestamp_field=definition.timestamp_override or "@timestamp",
            max_signals=definition.max_signals,
        )

    @property
    def bucket_ms(self) -> int:
        """Width of a state bucket: every run's window is a whole number of them."""
        return math.gcd(self.interval_ms, self.lookback_ms)

    def event_time(self, record: CloudTrailRecord) -> int | None:
        """The record's time as the rule's range filter reads it (None when it has none)."""
        primary = millis(ECS_FIELDS[self.timestamp_field].extract(record))
        if primary is not None or self.timestamp_field == "@timestamp":
            return primary
        return millis(ECS_FIELDS["@timestamp"].extract(record))

    def run_at_or_after(self, ts_ms: int) -> int:
        """The first run whose end is at or after `ts_ms`: the run a stateless rule alerts in."""
        return _ceil(ts_ms, self.interval_ms)

    def runs_covering(self, ts_ms: int) -> list[int]:
        """Run times t with t - lookback < ts <= t, ascending (none when `from` < `interval`
        leaves a gap between windows and ts falls in it)."""
        return list(range(self.run_at_or_after(ts_ms), ts_ms + self.lookback_ms, self.interval_ms))

    def bucket_of(self, ts_ms: int) -> int:
        """The end of the bucket (end - bucket_ms, end] that holds ts."""
        return _ceil(ts_ms, self.bucket_ms)

    def last_run_reading(self, bucket_end: int) -> int:
        """The last run whose window holds the bucket ending at `bucket_end`."""
        return (bucket_end + self.lookback_ms - 1) // self.interval_ms * self.interval_ms


@dataclass(frozen=True, slots=True)
class RunRows:
    """One evaluated run: its time and its rows (at most max_signals), each with the group key
    its alert id is derived from."""

    run_ms: int
    rows: list[Row]
    keys: list[GroupKey]


def row_key(group_by: tuple[str, ...], row: Row) -> GroupKey:
    """The group a row of a run stands for: its BY columns, or the whole row when a command
    after STATS dropped or renamed one of them."""
    if group_by and all(column in row for column in group_by):
        return tuple(row[column] for column in group_by)
    return tuple(sorted((name, canonical(value)) for name, value in row.items()))


def _key_from_json(data: object) -> GroupKey:
    if not isinstance(data, list):
        raise ValueError(f"a group key is a JSON array, got {data!r}")
    return tuple(tuple(item) if isinstance(item, list) else item for item in data)


class WindowedAggregation(Generic[S]):
    """Per-group partial aggregates in time buckets, evaluated run by run as the watermark
    passes each run's end."""

    def __init__(self, query: Aggregation[S], schedule: Schedule) -> None:
        self.query = query
        self.schedule = schedule
        self._buckets: dict[int, dict[GroupKey, S]] = {}
        self._evaluated_to: int | None = None
        """The last run time evaluated (None before the first)."""
        self._first_run: int | None = None
        """A query without BY has a row in every run, data or not: the first run it owes."""
        self._changed: set[GroupKey] = set()
        self.late_events = 0
        """Rows dropped because every run that reads their time was already evaluated."""
        self.truncated_rows = 0
        """Rows past max_signals in a run, which Kibana does not turn into alerts either."""

    @property
    def evaluated_to(self) -> int | None:
        return self._evaluated_to

    def _is_open(self, bucket_end: int) -> bool:
        last = self.schedule.last_run_reading(bucket_end)
        return last >= bucket_end and (self._evaluated_to is None or last > self._evaluated_to)

    def add(self, ts_ms: int, row: Row) -> bool:
        """Count one pre-STATS row at its event time; False when it is late (or falls in a gap
        between windows) and was not counted."""
        bucket_end = self.schedule.bucket_of(ts_ms)
        if not self._is_open(bucket_end):
            if self.schedule.runs_covering(ts_ms):
                self.late_events += 1
            return False
        bucket = self._buckets.setdefault(bucket_end, {})
        for key in self.query.group_keys(row):
            state = bucket.get(key)
            if state is None:
                state = bucket[key] = self.query.new_state()
            self.query.add(state, row)
            self._changed.add(key)
        if not self.query.group_by and self._first_run is None:
            self._first_run = self.schedule.run_at_or_after(ts_ms)
        return True

    def _pending_runs(self, last: int) -> list[int]:
        """Runs after the last evaluated one, up to `last`, whose window holds data (every run
        from the first, for a query without BY)."""
        schedule = self.schedule
        after = self._evaluated_to
        if not self.query.group_by and self._first_run is not None:
            start = self._first_run if after is None else max(self._first_run, after + 1)
            return list(range(schedule.run_at_or_after(start), last + 1, schedule.interval_ms))
        runs: set[int] = set()
        for bucket_end in self._buckets:
            first = schedule.run_at_or_after(bucket_end if after is None else
                                             max(bucket_end, after + 1))
            runs.update(range(first, min(last, schedule.last_run_reading(bucket_end)) + 1,
                              schedule.interval_ms))
        return sorted(runs)

    def _evaluate(self, run_ms: int) -> RunRows:
        window_start = run_ms - self.schedule.lookback_ms
        merged: dict[GroupKey, S] = {}
        for bucket_end in sorted(self._buckets):
            if not window_start < bucket_end <= run_ms:
                continue
            for key, state in self._buckets[bucket_end].items():
                into = merged.get(key)
                if into is None:
                    into = merged[key] = self.query.new_state()
                self.query.merge(into, state)
        rows: list[Row] = []
        keys: list[GroupKey] = []
        for row in self.query.finish(merged.items(), run_ms):
            key = row_key(self.query.group_by, row)
            if key in keys:  # Kibana keeps one alert per id (uniqBy)
                continue
            if len(rows) == self.schedule.max_signals:
                self.truncated_rows += 1
                continue
            rows.append(row)
            keys.append(key)
        return RunRows(run_ms, rows, keys)

    def due(self, watermark_ms: int) -> list[RunRows]:
        """Evaluate, in order, every run at or before the watermark not evaluated yet; runs
        without rows are left out. Then drop the buckets no open run reads."""
        last = watermark_ms // self.schedule.interval_ms * self.schedule.interval_ms
        if self._evaluated_to is not None and last <= self._evaluated_to:
            return []
        results = [self._evaluate(run) for run in self._pending_runs(last)]
        self._evaluated_to = last
        self._evict()
        return [result for result in results if result.rows]

    def flush(self) -> list[RunRows]:
        """Evaluate every run that reads any counted event: the end of a finite input."""
        if not self._buckets:
            return []
        return self.due(max(self.schedule.last_run_reading(end) for end in self._buckets))

    def _evict(self) -> None:
        for bucket_end in [end for end in self._buckets if not self._is_open(end)]:
            self._changed.update(self._buckets.pop(bucket_end))

    # --- metrics ------------------------------------------------------------------------------

    @property
    def open_groups(self) -> int:
        """Group keys with state in any live bucket."""
        return len({key for bucket in self._buckets.values() for key in bucket})

    @property
    def state_bytes(self) -> int:
        """Bytes of the state as its changelog holds it (JSON); walks every state, so call it
        at metrics time, not per event."""
        return sum(
            len(canonical(list(key))) + len(canonical(self.query.dump(state))) + 8
            for bucket in self._buckets.values()
            for key, state in bucket.items()
        )

    # --- changelog ----------------------------------------------------------------------------

    def take_changed(self) -> set[GroupKey]:
        """The group keys whose dump changed (by a row or an eviction) since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    def dump_group(self, key: GroupKey) -> object | None:
        """One group's buckets as JSON (None when it has none left: a tombstone)."""
        data = {
            str(end): self.query.dump(bucket[key])
            for end, bucket in sorted(self._buckets.items())
            if key in bucket
        }
        return data or None

    def load_group(self, key: GroupKey, data: object) -> None:
        """Put back one group's buckets from `dump_group`, replacing what it had."""
        for bucket in self._buckets.values():
            bucket.pop(key, None)
        self._put_group(key, data)
        self._buckets = {end: bucket for end, bucket in self._buckets.items() if bucket}

    def _put_group(self, key: GroupKey, data: object) -> None:
        if not isinstance(data, dict):
            raise ValueError(f"a group's state is a JSON object, got {data!r}")
        for end, state in data.items():
            self._buckets.setdefault(int(end), {})[key] = self.query.load(state)

    def dump_progress(self) -> dict[str, int | None]:
        """What is not per group: how far the runs got, and the counters."""
        return {
            "evaluated_to": self._evaluated_to,
            "first_run": self._first_run,
            "late_events": self.late_events,
            "truncated_rows": self.truncated_rows,
        }

    def load_progress(self, data: object) -> None:
        if not isinstance(data, dict):
            raise ValueError(f"progress is a JSON object, got {data!r}")
        self._evaluated_to = data.get("evaluated_to")
        self._first_run = data.get("first_run")
        self.late_events = int(data.get("late_events") or 0)
        self.truncated_rows = int(data.get("truncated_rows") or 0)

    def dump(self) -> dict[str, object]:
        """The whole state as JSON: progress and every group."""
        keys = sorted({key for bucket in self._buckets.values() for key in bucket}, key=canonical)
        return {
            "progress": self.dump_progress(),
            "groups": [[list(key), self.dump_group(key)] for key in keys],
        }

    def load(self, data: object) -> None:
        """Replace the state with a `dump`."""
        if not isinstance(data, dict):
            raise ValueError(f"a dump is a JSON object, got {data!r}")
        self._buckets = {}
        self._changed = set()
        self.load_progress(data.get("progress"))
        for key, group in data.get("groups") or []:
            self._put_group(_key_from_json(key), group)
