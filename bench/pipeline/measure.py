"""Running one variant over the whole input topic and measuring it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import confluent_kafka

from bench import REPO
from bench.pipeline.broker import CommitWatcher
from bench.pipeline.processes import cpu_seconds, memory_kb, process_tree, stop
from bench.pipeline.variants import Setup, Variant
from tests.support.kafka import read_all

Probed = TypeVar("Probed")
POLL_S = 0.02
"""How often the start (first consumed message) and the end (committed offsets) are checked."""


@dataclass
class Measurement:
    key: str
    label: str
    seconds: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    events: int = 0
    """Events read between the start and the end of the measurement."""
    broker_cpu_s: float | None = None
    alerts: int | None = None
    expected_alerts: int = 0
    commits: int | None = None
    commit_wait_s: float = 0.0
    """The detector's commits over its whole run, and the time its loop spent waiting on them."""
    problem: str | None = None
    """Why the variant failed: the run exits non-zero."""
    skipped: str | None = None
    round: int = 0
    stateful_alerts: int = 0
    """Alerts of aggregating and suppressed rules: counted, not checked against the oracle."""
    open_groups: int | None = None
    state_bytes: int | None = None
    late_events: int | None = None
    """The stateful stage's gauges and counter on /metrics at the end, summed over rules and
    workers (None for a variant without /metrics)."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0



COMMIT_SECONDS = "cloudtrail_detector_commit_duration_seconds"
OPEN_GROUPS = "cloudtrail_detector_stateful_open_groups"
STATE_BYTES = "cloudtrail_detector_stateful_state_bytes"
LATE_EVENTS = "cloudtrail_detector_late_events_total"


def metric_totals(ports: list[int], family: str) -> list[float]:
    """Each detector worker's `family` from its /metrics, summed over label sets (0 if down)."""
    totals = []
    for port in ports:
        total = 0.0
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as reply:
                text = reply.read().decode()
            for line in text.splitlines():
                if line.startswith((family + "{", family + " ")):
                    total += float(line.rsplit(" ", 1)[1])
        totals.append(total)
    return totals


def _consumed(ports: list[int]) -> list[int]:
    """Messages each detector worker has consumed so far."""
    consumed = metric_totals(ports, "cloudtrail_detector_messages_consumed_total")
    return [int(total) for total in consumed]


def alert_keys(
    messages: Sequence[confluent_kafka.Message], by_rule: bool,
    unchecked_rules: frozenset[str] = frozenset(),
) -> tuple[list[str], int]:
    """Each alert's event id, or `<rule_id> <event id>` when `by_rule`; and how many alerts
    of `unchecked_rules` there were besides (an aggregating rule's alert has no event id)."""
    keys = []
    unchecked = 0
    for message in messages:
        document = json.loads(message.value() or b"{}")
        rule_id = document["kibana"]["alert"]["rule"]["rule_id"]
        if rule_id in unchecked_rules:
            unchecked += 1
            continue
        event_id = document["event"]["id"]
        keys.append(f"{rule_id} {event_id}" if by_rule else event_id)
    return keys, unchecked


class StdoutReports:
    """The JSON lines a reference variant prints: {"first": t}, {"done": t, ...}."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[dict[str, float]] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with contextlib.suppress(json.JSONDecodeError):
                self.lines.append(json.loads(line))

    def get(self, name: str) -> float | None:
        for line in self.lines:
            if name in line:
                return line[name]
        return None


def measure(
    variant: Variant, setup: Setup, *, ends: list[int], group: str, alerts_topic: str | None,
    expected: set[str], log_dir: Path, deadline_s: float,
    unchecked_rules: frozenset[str] = frozenset(),
) -> Measurement:
    result = Measurement(variant.key, variant.label)
    log_path = log_dir / f"{group}.log"
    bootstrap = setup.bootstrap
    watcher = CommitWatcher(bootstrap, group, setup.topic, setup.partitions)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            variant.argv, env=variant.env, cwd=REPO, stdout=subprocess.PIPE, stderr=log,
            text=True,
        )
    assert process.stdout is not None
    reports = StdoutReports(process.stdout)
    give_up = time.monotonic() + deadline_s
    try:
        started = _wait(lambda: _started(variant, reports, watcher, ends), process, give_up,
                        log_path)
        if started is None or started[0] == 0:
            result.problem = (
                f"never consumed a message (log {log_path})" if started is None else
                "one worker read the whole topic before the others joined the group"
            )
            return result
        start, consumed_before = started
        tree = process_tree(process.pid)
        cpu_start = cpu_seconds(tree)
        broker_cpu_start = cpu_seconds([setup.broker_pid]) if setup.broker_pid else None
        if variant.reads_only:
            end = _wait(lambda: reports.get("done"), process, give_up, log_path)
        else:
            end = _wait(lambda: time.time() if watcher.reached(ends) else None, process,
                        give_up, log_path)
        if end is None:
            result.problem = f"did not finish within {deadline_s:.0f}s (log {log_path})"
            return result
        tree = process_tree(process.pid)
        result.cpu_s = cpu_seconds(tree) - cpu_start
        if setup.broker_pid and broker_cpu_start is not None:
            result.broker_cpu_s = cpu_seconds([setup.broker_pid]) - broker_cpu_start
        result.peak_rss_mb = memory_kb(tree, "VmHWM") / 1024
        if variant.metrics_ports:
            ports = variant.metrics_ports
            result.commits = int(sum(metric_totals(ports, f"{COMMIT_SECONDS}_count")))
            result.commit_wait_s = sum(metric_totals(ports, f"{COMMIT_SECONDS}_sum"))
            result.open_groups = int(sum(metric_totals(ports, OPEN_GROUPS)))
            result.state_bytes = int(sum(metric_totals(ports, STATE_BYTES)))
            result.late_events = int(sum(metric_totals(ports, LATE_EVENTS)))
        result.seconds = end - start
        result.events = setup.events - consumed_before
    finally:
        stop(process)
        watcher.close()
    if alerts_topic is not None:
        ids, result.stateful_alerts = alert_keys(
            read_all(bootstrap, alerts_topic, wanted=len(expected)), variant.by_rule,
            unchecked_rules)
        result.alerts = len(ids)
        result.expected_alerts = len(expected)
        if len(ids) != len(expected) or set(ids) != expected:
            result.problem = (
                f"{len(ids)} alerts ({len(set(ids))} distinct) where {len(expected)} were known: "
                f"{len(expected - set(ids))} missing, {len(set(ids) - expected)} unexpected"
            )
    return result


def _started(
    variant: Variant, reports: StdoutReports, watcher: CommitWatcher, ends: list[int]
) -> tuple[float, int] | None:
    """When the measurement starts, and how many events were read before it; (0, 0) when the
    group was done before every worker had started.

    A reference variant reports its first message itself. The detector's start is when every
    worker has consumed something (its /metrics, polled): with several workers, one that got
    its partitions first reads alone until the group has rebalanced, which is start-up.
    """
    if not variant.metrics_ports:
        first = reports.get("first")
        return None if first is None else (first, 0)
    now = time.time()
    counts = _consumed(variant.metrics_ports)
    if all(counts):
        return now, sum(counts)
    return (0, 0) if any(counts) and watcher.reached(ends) else None


def _wait(
    probe: Callable[[], Probed | None], process: subprocess.Popen[Any], give_up: float,
    log_path: Path,
) -> Probed | None:
    while time.monotonic() < give_up:
        value = probe()
        if value is not None:
            return value
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}; see {log_path}")
        time.sleep(POLL_S)
    return None

