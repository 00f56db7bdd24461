"""Offline mode: the same rules over CloudTrail files, without Kafka.

For back-testing a rule on an incident's logs, or checking a rule change before it ships. Alerts
are the same documents the service produces (JSON Lines); unlike the stream there is no
max_signals throttling, since a file scan has no schedule to spread alerts over.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from consumer.alert import alert_for, encode_json
from consumer.files import expand, read_records
from consumer.record import NotCloudTrailError, json_to_avro
from consumer.rules.loader import LoadedRule

PROGRESS_EVERY_S = 1.0


@dataclass
class ScanCounts:
    records: int = 0
    alerts: int = 0
    rejected: int = 0
    skipped: int = 0
    """Documents that hold no CloudTrail (digests, `labels.json`, other EventBridge events)."""


def scan(
    paths: Sequence[Path],
    rules: Sequence[LoadedRule],
    output: TextIO,
    progress: TextIO | None = sys.stderr,
    include_event_original: bool = True,
) -> ScanCounts:
    """Write one alert per match as a JSON line; report unreadable records on stderr."""
    enabled = [rule for rule in rules if rule.enabled]
    counts = ScanCounts()
    files = expand(paths)
    last_report = time.monotonic()
    for number, path in enumerate(files, start=1):
        skipped: Counter[str] = Counter()
        for item in read_records(path):
            if item.skipped is not None:
                skipped[item.skipped] += 1
                continue
            counts.records += 1
            try:
                if item.error is not None:
                    raise NotCloudTrailError(item.error)
                record = json_to_avro(item.record)
            except NotCloudTrailError as error:
                counts.rejected += 1
                print(f"skipped {item.origin}: {error}", file=sys.stderr)
                continue
            for rule in enabled:
                if rule.query.matches(record):
                    original = json.dumps(item.record, separators=(",", ":"))
                    alert = alert_for(
                        rule, record, detected_at=datetime.now(UTC),
                        original=original if include_event_original else None,
                    )
                    output.write(encode_json(alert).decode() + "\n")
                    counts.alerts += 1
        if skipped:
            counts.skipped += skipped.total()
            reasons = "; ".join(f"{count} x {why}" for why, count in skipped.items())
            print(f"skipped {path}: no CloudTrail in {reasons}", file=sys.stderr)
        if progress is not None and time.monotonic() - last_report >= PROGRESS_EVERY_S:
            last_report = time.monotonic()
            print(
                f"{number}/{len(files)} files, {counts.records} records, {counts.alerts} alerts",
                file=progress,
            )
    return counts
