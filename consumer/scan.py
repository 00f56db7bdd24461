"""Offline mode: the same rules over CloudTrail files, without Kafka.

For back-testing a rule on an incident's logs, or checking a rule change before it ships. Alerts
are the same documents the service produces (JSON Lines); unlike the stream there is no
max_signals throttling, since a file scan has no schedule to spread alerts over.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from consumer.alert import alert_for, encode_json
from consumer.decode import JsonDecoder
from consumer.detector import Detector, RuleEvaluationError, Verdict
from consumer.files import FileRecord, expand, read_records
from consumer.record import NotCloudTrailError, json_to_avro
from consumer.rules.exceptions import NO_EXCEPTIONS, ExceptionSet
from consumer.rules.loader import LoadedRule

PROGRESS_EVERY_S = 1.0


@dataclass
class ScanCounts:
    records: int = 0
    alerts: int = 0
    rejected: int = 0
    excepted: int = 0


def scan(
    paths: Sequence[Path],
    rules: Sequence[LoadedRule],
    output: TextIO,
    *,
    progress: TextIO | None = sys.stderr,
    include_event_original: bool = True,
    exceptions: ExceptionSet = NO_EXCEPTIONS,
    on_verdict: Callable[[FileRecord, Verdict], None] | None = None,
) -> ScanCounts:
    """Write one alert per match as a JSON line; report unreadable records on stderr.

    Records are judged by the service's own `Detector`, so a rule that fails is reported and
    the scan goes on, as the stream dead-letters that message and goes on. `on_verdict` sees
    every decoded record's verdict, exceptions included (`exceptions test` explains them).
    """
    detector = Detector(JsonDecoder(), rules, use_prefilter=False, exceptions=exceptions)
    counts = ScanCounts()
    files = expand(paths)
    last_report = time.monotonic()
    for number, path in enumerate(files, start=1):
        for item in read_records(path):
            counts.records += 1
            try:
                if item.error is not None:
                    raise NotCloudTrailError(item.error)
                record = json_to_avro(item.record)
            except NotCloudTrailError as error:
                counts.rejected += 1
                print(f"skipped {item.origin}: {error}", file=sys.stderr)
                continue
            try:
                verdict = detector.judge(record)
            except RuleEvaluationError as failed:
                counts.rejected += 1
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
                output.write(encode_json(alert).decode() + "\n")
                counts.alerts += 1
        if progress is not None and time.monotonic() - last_report >= PROGRESS_EVERY_S:
            last_report = time.monotonic()
            print(
                f"{number}/{len(files)} files, {counts.records} records, {counts.alerts} alerts",
                file=progress,
            )
    return counts
