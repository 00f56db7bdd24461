"""The run's report: medians over rounds, ratios within a round, targets."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass

import confluent_kafka
import fastavro

from bench import REPO
from bench.pipeline.latency import STAGES, Latency, percentile
from bench.pipeline.measure import Measurement
from bench.pipeline.variants import Setup
from scripts.kafka_local import KAFKA_VERSION


@dataclass
class Summary:
    """A variant over its rounds: its median round, and ratios taken round by round, each
    against a variant measured minutes apart rather than runs apart."""

    median: Measurement
    rates: list[float]
    rows: list[Measurement]

    @classmethod
    def of(cls, rows: list[Measurement]) -> Summary:
        ordered = sorted(rows, key=lambda row: row.rate)
        return cls(ordered[(len(ordered) - 1) // 2], [row.rate for row in ordered], rows)

    def ratio_to(self, base: Summary | None) -> float | None:
        """Median over rounds of this variant's rate / `base`'s rate in the same round (a
        variant measured once is compared with `base`'s first round)."""
        if base is None:
            return None
        base_rates = {row.round: row.rate for row in base.rows if row.rate}
        ratios = []
        for row in self.rows:
            base_rate = base_rates.get(row.round) or base_rates.get(0)
            if row.rate and base_rate:
                ratios.append(row.rate / base_rate)
        ratios.sort()
        return ratios[(len(ratios) - 1) // 2] if ratios else None


def summarise(rows: list[Measurement]) -> dict[str, Summary]:
    keys = dict.fromkeys(row.key for row in rows)
    return {key: Summary.of([row for row in rows if row.key == key]) for key in keys}



def environment(setup: Setup, external: bool, quix_version: str) -> list[str]:
    memory = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    total = memory.splitlines()[1].split()[1] if memory else "?"
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
    return [
        f"- machine: {os.cpu_count()} CPUs (nproc), {total} memory, {platform.platform()}",
        f"- Python {platform.python_version()}, confluent-kafka {confluent_kafka.__version__}, "
        f"librdkafka {confluent_kafka.libversion()[0]}, fastavro {fastavro.__version__}, "
        f"Kafka {'(external broker)' if external else KAFKA_VERSION + ' (local KRaft broker)'}, "
        f"Quix Streams: {quix_version}",
        f"- commit {commit or '?'}; input: {setup.events:,} events, {setup.partitions} "
        f"partitions, {setup.input_format}",
    ]


def table(summaries: dict[str, Summary]) -> list[str]:
    raw = summaries.get("a")
    lines = [
        "| variant | events/s (median) | range over rounds | x raw (a) | CPU s per 1M events | "
        "broker CPU s per 1M | peak RSS MB | commits (loop wait s) | alerts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for summary in summaries.values():
        row = summary.median
        if row.seconds == 0:
            why = f"skipped: {row.skipped}" if row.skipped else f"**FAILED: {row.problem}**"
            lines.append(f"| ({row.key}) {row.label} | — | — | — | — | — | — | — | {why} |")
            continue
        spread = (f"{min(summary.rates):,.0f} to {max(summary.rates):,.0f}"
                  if len(summary.rates) > 1 else "one round")
        ratio = summary.ratio_to(raw)
        commits = "—" if row.commits is None else f"{row.commits} ({row.commit_wait_s:.2f})"
        alerts = "—" if row.alerts is None else f"{row.alerts} of {row.expected_alerts}"
        problems = [other.problem for other in summary.rows if other.problem]
        if problems:
            alerts += f" **FAILED: {problems[0]}**"
        broker = "—" if row.broker_cpu_s is None else f"{row.broker_cpu_s / row.events * 1e6:.2f}"
        lines.append(
            f"| ({row.key}) {row.label} | {row.rate:,.0f} | {spread} | "
            f"{'—' if ratio is None else f'{ratio:.2f}'} | {row.cpu_s / row.events * 1e6:.2f} | "
            f"{broker} | {row.peak_rss_mb:.0f} | {commits} | {alerts} |"
        )
    return lines


def targets(summaries: dict[str, Summary], latency: Latency | None) -> list[str]:
    def ratio(key: str, base: str) -> float | None:
        summary = summaries.get(key)
        return summary.ratio_to(summaries.get(base)) if summary else None

    lines = []

    def check(name: str, value: float | None, goal: float, unit: str, lower: bool = False) -> None:
        if value is None:
            lines.append(f"- {name}: not measured")
            return
        met = value <= goal if lower else value >= goal
        sign = "<" if lower else "≥"
        lines.append(f"- {name}: {value:.2f}{unit} (target {sign} {goal}{unit}) "
                     f"{'met' if met else '**missed**'}")

    check("(d) / (a)", ratio("d", "a"), 0.6, "x")
    check("(d) / (b)", ratio("d", "b"), 5, "x")
    check("(d) / (c)", ratio("d", "c"), 8, "x")
    check("(f) / (d), workers scaling", ratio("f", "d"), 1.7, "x")
    check("(h) / (i), every AWS rule against naive", ratio("h", "i"), 5, "x")
    every_rule = ratio("h", "a")
    if every_rule:
        lines.append(f"- every AWS rule, (h) / (a): {every_rule:.2f}x the raw ceiling")
    esql_rules = ratio("j", "a")
    if esql_rules:
        lines.append(f"- Elastic's AWS ES|QL rules, (j) / (a): {esql_rules:.2f}x the raw ceiling; "
                     f"(j) / (d): {ratio('j', 'd') or 0:.2f}x the seed rule alone")
    raw_scaling = ratio("g", "a")
    if raw_scaling:
        lines.append(f"- for comparison, the raw ceiling's own scaling (g) / (a): "
                     f"{raw_scaling:.2f}x")
    if latency is not None and latency.latencies_ms:
        check("latency p99", latency.percentile(0.99), 50, " ms", lower=True)
        check("RSS max during the latency run", max(latency.rss_mb), 200, " MB", lower=True)
    return lines


def state_lines(summaries: dict[str, Summary]) -> list[str]:
    """The stateful stage at the end of each run of a variant with aggregating or suppressed
    rules, from its /metrics: what the per-event oracle leaves unchecked."""
    lines = []
    for summary in summaries.values():
        for row in summary.rows:
            if not row.seconds or row.open_groups is None or not (
                    row.open_groups or row.stateful_alerts or row.late_events):
                continue
            lines.append(
                f"- ({row.key}) round {row.round + 1}: {row.open_groups:,} open groups, "
                f"{row.state_bytes or 0:,} state bytes ({(row.state_bytes or 0) / 1e6:.2f} MB), "
                f"{row.late_events or 0:,} late events, {row.stateful_alerts:,} alerts of "
                "aggregating and suppressed rules (counted, not checked)"
            )
    return lines


def latency_lines(latency: Latency) -> list[str]:
    if not latency.latencies_ms:
        return [f"- no alert arrived ({latency.expected} expected)"]
    samples = latency.rss_mb
    shown = ", ".join(f"{value:.0f}" for value in samples[:: max(1, len(samples) // 12)])
    return [
        f"- {latency.sent:,} events at {latency.rate:,.0f}/s for {latency.seconds:.0f} s, "
        f"{latency.expected} of them matching; {latency.alerts} alerts read",
        f"- produce → alert visible read_committed: p50 {latency.percentile(0.5):.1f} ms, "
        f"p99 {latency.percentile(0.99):.1f} ms, max {max(latency.latencies_ms):.1f} ms",
        f"- detector RSS (MB, sampled each second): min {min(samples):.0f}, max "
        f"{max(samples):.0f}, first {samples[0]:.0f}, last {samples[-1]:.0f}; series {shown}",
        f"- detector CPU over the run: {latency.cpu_s:.1f} s "
        f"({latency.cpu_s / latency.seconds * 100:.0f}% of one core)",
        f"- commits: {latency.commits:,} ({latency.commits / latency.seconds:.0f}/s), the loop "
        f"waited {latency.commit_wait_s * 1000 / max(latency.commits, 1):.1f} ms on each on "
        "average",
        f"- settings: {'; '.join(latency.settings)}",
        "",
        "| stage (ms) | p50 | p99 | max | what it holds |",
        "|---|---:|---:|---:|---|",
        *(f"| {name} | {percentile(values, 0.5):.1f} | {percentile(values, 0.99):.1f} | "
          f"{max(values):.1f} | {meaning} |"
          for (name, meaning), values in ((stage, latency.stages_ms.get(stage[0], []))
                                          for stage in STAGES) if values),
    ]

