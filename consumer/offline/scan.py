"""Offline mode: the same rules over CloudTrail files, without Kafka.

For back-testing a rule on an incident's logs, or checking a rule change before it ships. Alerts
are the same documents the service produces (JSON Lines); unlike the stream there is no
max_signals throttling of row-at-a-time rules, since a file scan has no schedule to spread
alerts over.

Aggregating rules (STATS) run over Elastic's schedule in event time (`consumer.rules.schedule`)
and suppressed rules through `consumer.alerts.suppression`, by the same `StatefulRules` the
stream's stateful stage can run, with the watermark at the end of the input: every run that
reads any event is evaluated and every suppression window closes (or, with `watermark_ms`, only
what a stream whose watermark stands there would have emitted). So a scan of the events a stream
read is the oracle for the stream's alerts: compare the last document per `kibana.alert.uuid`,
since the stream may send a suppressed alert's first document before its final count.
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

from consumer.alerts.document import Alert, alert_for, encode_json
from consumer.alerts.stateful_rules import StatefulRules
from consumer.cloudtrail.decode import JsonDecoder
from consumer.cloudtrail.files import FileRecord, expand, read_records
from consumer.cloudtrail.record import NotCloudTrailError, json_to_avro
from consumer.offline.scan_output import AlertTable, ProgressBar, summary
from consumer.rules.detector import Detector, RuleEvaluationError, Verdict
from consumer.rules.exceptions import NO_EXCEPTIONS, ExceptionSet
from consumer.rules.loader import LoadedRule


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
                verdict = detector.judge(record)
            except (NotCloudTrailError, RuleEvaluationError) as error:
                counts.rejected += 1
                if bar is not None:
                    bar.clear()
                print(f"skipped {item.origin}: {error}", file=sys.stderr)
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
