"""Offline mode: the same rules over CloudTrail files, without Kafka.

For back-testing a rule on an incident's logs, or checking a rule change before it ships. Alerts
are the same documents the service produces (JSON Lines); unlike the stream there is no
max_signals throttling of row-at-a-time rules, since a file scan has no schedule to spread
alerts over.

Aggregating rules (STATS) run over Elastic's schedule in event time (`consumer.rules.schedule`)
and suppressed rules through `consumer.alerts.suppression`, exactly as the stream's stateful
stage runs them, with the watermark at the end of the input: every run that reads any event is
evaluated and every suppression window closes (or, with `watermark_ms`, only what a stream
whose watermark stands there would have emitted). So a scan of the events a stream read is the
oracle for the stream's alerts: compare the last document per `kibana.alert.uuid`, since the
stream may send a suppressed alert's first document before its final count.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from consumer.alerts.document import Alert, alert_for, encode_json, run_alert_for
from consumer.alerts.suppression import Suppressor
from consumer.cloudtrail.decode import JsonDecoder
from consumer.cloudtrail.files import FileRecord, expand, read_records
from consumer.cloudtrail.record import NotCloudTrailError, json_to_avro
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.offline.scan_output import AlertTable, ProgressBar, summary
from consumer.rules.detector import Detector, RuleEvaluationError, Verdict
from consumer.rules.esql.aggregate import AggState
from consumer.rules.exceptions import NO_EXCEPTIONS, ExceptionSet
from consumer.rules.loader import LoadedRule
from consumer.rules.schedule import Row, Schedule, WindowedAggregation, millis


@dataclass
class ScanCounts:
    records: int = 0
    alerts: int = 0
    rejected: int = 0
    excepted: int = 0
    skipped: int = 0
    """Documents that hold no CloudTrail (digests, `labels.json`, other EventBridge events)."""
    files: int = 0
    bytes: int = 0
    rules: int = 0
    seconds: float = 0.0
    late_events: int = 0
    """Rows of aggregating rules that only already-evaluated runs read (see schedule.py)."""
    suppressed: int = 0
    """Alerts absorbed into a suppressed alert's count."""

    def summary(self) -> str:
        text = summary(files=self.files, total_bytes=self.bytes, records=self.records,
                       alerts=self.alerts, rules=self.rules, skipped=self.rejected + self.skipped,
                       seconds=self.seconds)
        if self.suppressed:
            text += f"; {self.suppressed:,} alerts suppressed into others' counts"
        if self.late_events:
            text += f"; {self.late_events:,} late events not counted"
        return text


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
        """The alerts due once the watermark is at `watermark_ms` (None: the end of input)."""
        out: list[Alert] = []
        for rule_id, (rule, windows) in self.windows.items():
            suppressor = self.suppressors.get(rule_id)
            timestamp = self.schedules[rule_id].timestamp_field
            for run in windows.flush() if watermark_ms is None else windows.due(watermark_ms):
                for row, key in zip(run.rows, run.keys, strict=True):
                    alert = run_alert_for(rule, run.run_ms, row, key, detected_at=detected_at)
                    if suppressor is None:
                        out.append(alert)
                        continue
                    # Kibana takes a row's suppression time from its timestamp column, if it
                    # kept one, else from the alert's creation: the run.
                    ts = millis(row.get(timestamp))
                    passed = suppressor.offer(alert, run.run_ms if ts is None else ts, run.run_ms)
                    if passed is not None:
                        out.append(passed)
        for suppressor in self.suppressors.values():
            out += suppressor.flush() if watermark_ms is None else suppressor.due(watermark_ms)
        return out

    @property
    def late_events(self) -> int:
        return sum(windows.late_events for _, windows in self.windows.values())

    @property
    def suppressed(self) -> int:
        return sum(suppressor.suppressed for suppressor in self.suppressors.values())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def scan(
    paths: Sequence[Path],
    rules: Sequence[LoadedRule],
    output: TextIO,
    *,
    progress: TextIO | None = None,
    include_event_original: bool = True,
    table: bool = False,
    exceptions: ExceptionSet = NO_EXCEPTIONS,
    on_verdict: Callable[[FileRecord, Verdict], None] | None = None,
    watermark_ms: int | None = None,
) -> ScanCounts:
    """Write one alert per match, as a JSON line or a table row; report unreadable records on
    stderr. With `progress` (a terminal), draw a progress bar there.

    Records are judged by the service's own `Detector`, so a rule that fails is reported and
    the scan goes on, as the stream dead-letters that message and goes on. `on_verdict` sees
    every decoded record's verdict, exceptions included (`exceptions test` explains them).
    Aggregating and suppressed rules' alerts follow at the end (see the module docstring);
    `watermark_ms` stops them where a stream's watermark would stand.
    """
    started = time.monotonic()
    detector = Detector(JsonDecoder(), rules, use_prefilter=False, exceptions=exceptions)
    counts = ScanCounts(rules=len(detector.rules))
    files = expand(paths)
    sizes = [_size(path) for path in files]
    counts.files, counts.bytes = len(files), sum(sizes)
    bar = ProgressBar(progress, counts.bytes) if progress is not None else None
    rows = AlertTable(output) if table else None
    stateful = StatefulRules(detector.rules + detector.aggregating)

    def write(alert: Alert) -> None:
        if rows is not None:
            if bar is not None:
                bar.clear()
            rows.write(alert.document)
        else:
            output.write(encode_json(alert).decode() + "\n")
        counts.alerts += 1

    done_bytes = 0
    for path, size in zip(files, sizes, strict=True):
        skipped: Counter[str] = Counter()
        for item in read_records(path):
            if item.skipped is not None:
                skipped[item.skipped] += 1
                continue
            counts.records += 1
            if bar is not None:
                bar.update(done_bytes, counts.records, counts.alerts)
            try:
                if item.error is not None:
                    raise NotCloudTrailError(item.error)
                record = json_to_avro(item.record)
            except NotCloudTrailError as error:
                counts.rejected += 1
                if bar is not None:
                    bar.clear()
                print(f"skipped {item.origin}: {error}", file=sys.stderr)
                continue
            try:
                verdict = detector.judge(record)
            except RuleEvaluationError as failed:
                counts.rejected += 1
                if bar is not None:
                    bar.clear()
                print(f"skipped {item.origin}: {failed}", file=sys.stderr)
                continue
            counts.excepted += len(verdict.excepted)
            if on_verdict is not None:
                on_verdict(item, verdict)
            for rule in verdict.matched:
                original = json.dumps(item.record, separators=(",", ":"))
                alert = alert_for(
                    rule, record, detected_at=datetime.now(UTC),
                    original=original if include_event_original else None,
                )
                passed = stateful.match(rule, record, alert)
                if passed is not None:
                    write(passed)
            for rule, rule_rows in verdict.rows:
                stateful.count(rule, record, rule_rows)
        done_bytes += size
        if skipped:
            counts.skipped += skipped.total()
            reasons = "; ".join(f"{count} x {why}" for why, count in skipped.items())
            if bar is not None:
                bar.clear()
            print(f"skipped {path}: no CloudTrail in {reasons}", file=sys.stderr)
    for alert in stateful.advance(watermark_ms, datetime.now(UTC)):
        write(alert)
    counts.late_events, counts.suppressed = stateful.late_events, stateful.suppressed
    if bar is not None:
        bar.update(done_bytes, counts.records, counts.alerts, force=True)
        bar.clear()
    counts.seconds = time.monotonic() - started
    return counts
