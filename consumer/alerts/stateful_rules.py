"""The rules that need state, over one event-time watermark: aggregating rules on Elastic's
schedule (`consumer.rules.schedule`) and `alert_suppression` for every rule that has it
(`consumer.alerts.suppression`).

`scan` runs one over a whole input (the oracle); a stream runs one per share of the state it
owns and feeds it the same calls: `match` for a row-at-a-time rule's alert, `count` for an
event's pre-STATS rows, `advance` when the watermark moves, `dump`/`load` (or the per-group
dumps of `windows` and `suppressors`) for its changelog.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from consumer.alerts.document import Alert, run_alert_for
from consumer.alerts.suppression import Suppressor
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.rules.esql.aggregate import AggState
from consumer.rules.loader import LoadedRule
from consumer.rules.schedule import Row, RunRows, Schedule, WindowedAggregation, millis


def run_alerts(rule: LoadedRule, run: RunRows, detected_at: datetime,
               suppressor: Suppressor | None, timestamp_field: str) -> list[Alert]:
    """The alerts of one evaluated run: each row's, through the rule's suppressor if it has
    one (then they come out of the suppressor's `due`, not here). The stream's stage calls it
    too, so the stream and `scan` make a run's alerts the same way."""
    out: list[Alert] = []
    for row, key in zip(run.rows, run.keys, strict=True):
        alert = run_alert_for(rule, run.run_ms, row, key, detected_at=detected_at)
        if suppressor is None:
            out.append(alert)
            continue
        # Kibana takes a row's suppression time from its timestamp column, if it kept one,
        # else from the alert's creation: the run.
        ts = millis(row.get(timestamp_field))
        passed = suppressor.offer(alert, run.run_ms if ts is None else ts, run.run_ms)
        if passed is not None:
            out.append(passed)
    return out


class StatefulRules:
    """The rules that need state, over one watermark: aggregating rules on their schedule, and
    suppression for every rule that has it (row-at-a-time ones included)."""

    def __init__(self, rules: Sequence[LoadedRule]) -> None:
        self.schedules = {rule.rule_id: Schedule.for_rule(rule) for rule in rules}
        self.windows: dict[str, tuple[LoadedRule, WindowedAggregation[AggState]]] = {
            rule.rule_id: (rule, WindowedAggregation(rule.aggregation,
                                                     self.schedules[rule.rule_id]))
            for rule in rules if rule.aggregation is not None
        }
        self.suppressors = {
            rule.rule_id: suppressor for rule in rules
            if (suppressor := Suppressor.for_rule(rule)) is not None
        }

    def match(self, rule: LoadedRule, record: CloudTrailRecord, alert: Alert) -> Alert | None:
        """A row-at-a-time rule's alert: itself, or None while its suppression holds it."""
        suppressor = self.suppressors.get(rule.rule_id)
        ts = self.schedules[rule.rule_id].event_time(record)
        if suppressor is None or ts is None:
            return alert
        return suppressor.offer(alert, ts)

    def count(self, rule: LoadedRule, record: CloudTrailRecord, rows: Sequence[Row]) -> None:
        """An event's rows for an aggregating rule, at the event's time by the rule."""
        ts = self.schedules[rule.rule_id].event_time(record)
        if ts is None:
            return
        _, windows = self.windows[rule.rule_id]
        for row in rows:
            windows.add(ts, row)

    def advance(self, watermark_ms: int | None, detected_at: datetime) -> list[Alert]:
        """The alerts due once the watermark is at `watermark_ms` (None: the end of input):
        every run now due, then every suppression window that closed."""
        out: list[Alert] = []
        for rule, windows in self.windows.values():
            for run in windows.flush() if watermark_ms is None else windows.due(watermark_ms):
                out += run_alerts(rule, run, detected_at, self.suppressors.get(rule.rule_id),
                                  self.schedules[rule.rule_id].timestamp_field)
        for suppressor in self.suppressors.values():
            out += suppressor.flush() if watermark_ms is None else suppressor.due(watermark_ms)
        return out

    def dump(self) -> dict[str, object]:
        """Every rule's state as JSON, for a checkpoint."""
        return {
            "windows": {rule_id: windows.dump() for rule_id, (_, windows) in self.windows.items()},
            "suppressors": {rule_id: suppressor.dump()
                            for rule_id, suppressor in self.suppressors.items()},
        }

    def load(self, data: Mapping[str, Any]) -> None:
        """Restore a `dump` taken with the same rules."""
        for rule_id, state in data["windows"].items():
            self.windows[rule_id][1].load(state)
        for rule_id, state in data["suppressors"].items():
            self.suppressors[rule_id].load(state)

    @property
    def late_events(self) -> int:
        return sum(windows.late_events for _, windows in self.windows.values())

    @property
    def late_matches(self) -> int:
        return sum(suppressor.late_matches for suppressor in self.suppressors.values())

    @property
    def suppressed(self) -> int:
        return sum(suppressor.suppressed for suppressor in self.suppressors.values())
