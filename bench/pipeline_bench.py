"""End-to-end throughput and latency of the detector beside the raw consume ceiling, in one run.

Run: .venv/bin/python -m bench.pipeline_bench [--quick] [--events N] [--partitions P]
         [--format avro|avro-registry] [--latency-rate R] [--latency-seconds S]
         [--quix-python PATH] [--variants abcdefghij] [--workers N] [--no-latency] [--rounds N]

On one broker ($KAFKA_BOOTSTRAP_SERVERS, else a local KRaft broker from scripts/kafka_local.py)
it loads one input topic with a realistic CloudTrail mix (bench/pipeline/workload.py: the alerts
it must produce are known up front), then lets each variant read the whole topic with a fresh
consumer group, one at a time, each in its own process:

    a  raw ceiling: confluent-kafka consume() batches, touching message.value() only
    b  naive: poll() one message, decode, normalize every ECS field, rule, produce
    c  Quix Streams, exactly-once (optional: skipped when the interpreter lacks quixstreams)
    d  the detector, 1 worker, exactly-once
    e  the detector, 1 worker, at-least-once
    f  the detector, --workers = CPU count, exactly-once
    g  the raw ceiling again, in --workers processes (each assigned its share of partitions):
       what more consumers can get out of this broker on this machine at all
    h  the detector, 1 worker, exactly-once, with every rule of ../shared/elastic-rules/aws it
       runs (the rules directory pointed at a copy of that folder: Elastic's seed file replaces
       the built-in, the ES|QL and KQL `query` rules load, the other rule types are skipped)
    i  naive as b, evaluating every one of h's rules that needs no state on every message
    j  the detector, 1 worker, exactly-once, with the ES|QL rule files of
       ../shared/elastic-rules/aws only (the other built-ins switched off): Elastic's ES|QL
       rules, aggregating (STATS) ones included; the one it refuses is named with its reason

h, i and j are skipped when ../shared is absent. Their rules are copied with a max_signals that
never throttles, as is the seed rule's copy the others run; their known alerts are one per
(rule, event) that the detector's own decode and `Detector.judge` give each source record
offline, for the rules that need no state. Aggregating and suppressed rules' alerts depend on
event time, schedule and watermark: they are counted, not checked, and the stateful stage's open
groups, state bytes and late events are read from /metrics at the end of the run.

Each variant is timed from its first consumed message (so process start-up is left out; for
the detector, from when every worker has consumed one, seen on /metrics every 20 ms) until its
group's committed offsets reach the end of every partition (for `a` and `g`, until they read
them all). CPU is the utime+stime delta of the variant's process tree over that span, from
/proc/<pid>/stat, and likewise for the local broker; peak RSS is the sum of VmHWM over the
tree. Every variant's alerts are read back read_committed and must be exactly the known ones,
or the run fails (exit status 1).

The fast variants (a, d, e, f, g, h) run --rounds times, interleaved (a d e f g a d e f g ...),
since this machine's raw ceiling alone moves by a third from one run to the next: the table gives
each variant's median round and its range, and every ratio is the median of ratios taken within a
round (b, c and i, which take minutes, run once and are compared with the first round).

Then a latency run (bench/pipeline/latency.py): the exactly-once detector on a fresh topic fed at
--latency-rate events/s, --latency-warmup seconds untimed then --latency-seconds timed, 0.5% of
them matching; each alert's latency is the time from producing its event to reading the alert
read_committed, split into stages (delivery report, the alert's @timestamp, the broker's append
time of the alert). RSS is sampled every second.

The table is printed and written to bench/results/pipeline-<timestamp>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import REPO
from bench.pipeline.broker import Loaded, broker, framing, load, schema_registry
from bench.pipeline.latency import READER_FETCH_WAIT_MS, WARMUP_S, measure_latency
from bench.pipeline.measure import Measurement, measure
from bench.pipeline.report import (
    environment,
    latency_lines,
    state_lines,
    summarise,
    table,
    targets,
)
from bench.pipeline.variants import (
    DEFAULT_QUIX_PYTHON,
    Setup,
    Variant,
    detector_variant,
    find_quix_python,
    quix_variant,
    reference_variant,
)
from bench.pipeline.workload import (
    OTHER_BUILTINS,
    Mix,
    is_stateful,
    load_sources,
    rule_oracle,
    seed_query,
    write_aws_rules,
    write_bench_rules,
)
from consumer.alerts.suppression import Suppressor
from consumer.rules import LoadedRule, load_rules
from consumer.rules.loader import load_rule_set
from tests.support.kafka import create_topics, end_offsets

RESULTS = REPO / "bench" / "results"

REPEATED = "adefghj"
"""The variants that take seconds, run once per round; b, c and i take minutes and run once."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--format", choices=["avro", "avro-registry"], default="avro",
                        help="schemaless Avro, or Avro in the Schema Registry wire format "
                        "(served by a stand-in registry)")
    parser.add_argument("--latency-rate", type=float, default=10_000)
    parser.add_argument("--latency-seconds", type=float, default=30)
    parser.add_argument("--latency-warmup", type=float, default=WARMUP_S,
                        help="seconds at the latency rate before timing starts (default "
                        f"{WARMUP_S:.0f})")
    parser.add_argument("--quick", action="store_true",
                        help="100k events and a 10 s latency run, for a fast sanity check")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                        help="workers of variant f (default: the CPU count)")
    parser.add_argument("--quix-python", help="an interpreter with quixstreams installed "
                        f"(default: this one, else {DEFAULT_QUIX_PYTHON})")
    parser.add_argument("--variants", default="abcdefghij",
                        help="which variants to run, e.g. 'ad' (default: all)")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--reader-fetch-wait-ms", type=int, default=READER_FETCH_WAIT_MS,
                        help="the latency run's alert reader's fetch.wait.max.ms "
                        f"(default {READER_FETCH_WAIT_MS})")
    parser.add_argument("--detector-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for every detector variant, e.g. "
                        "DETECTOR_TRANSACTION_MAX_MS=100 (repeatable): to try a change in the "
                        "same run's conditions")
    parser.add_argument("--rounds", type=int, default=3,
                        help=f"runs of the fast variants ({REPEATED}), interleaved; the table "
                        "gives each one's median and ratios taken within a round (default 3)")
    args = parser.parse_args(argv)
    args.detector_env = dict(setting.partition("=")[::2] for setting in args.detector_env)
    if args.quick:
        args.rounds = 1
        args.events = min(args.events, 100_000)
        args.latency_seconds = min(args.latency_seconds, 10)
    return args



def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = uuid.uuid4().hex[:8]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    rules_dir = write_bench_rules(work / "rules")
    aws_rules_dir = write_aws_rules(work / "aws-rules")
    esql_rules_dir = write_aws_rules(work / "esql-rules", esql_only=True)
    sources = load_sources(seed_query())
    oracle = None
    rule_sets = RuleSets()
    if aws_rules_dir is not None and any(key in args.variants for key in "hij"):
        aws_rules = [rule for rule in load_rules(aws_rules_dir) if rule.enabled]
        oracle = rule_oracle(aws_rules)
        rule_sets = RuleSets.of(aws_rules, esql_rules_dir)
        if "j" in args.variants:
            for line in rule_sets.esql_lines:
                print(f"(j) {line}", file=sys.stderr)
    quix_python, quix_version = find_quix_python(args.quix_python)
    args.quix_why = quix_version
    if quix_python is None and "c" in args.variants:
        print(f"variant c skipped: {quix_version}", file=sys.stderr)
    command = "python -m bench.pipeline_bench " + " ".join(sys.argv[1:] if argv is None else argv)
    with contextlib.ExitStack() as stack:
        bootstrap, broker_pid = stack.enter_context(broker())
        external = broker_pid is None
        registry_url = (
            stack.enter_context(schema_registry()) if args.format == "avro-registry" else None
        )
        setup = Setup(bootstrap, f"bench-input-{run_id}", args.partitions, args.events,
                      rules_dir, aws_rules_dir, esql_rules_dir, args.format, registry_url,
                      quix_python, args.workers, run_id, broker_pid, args.detector_env)
        load_average = os.getloadavg()
        create_topics(bootstrap, {setup.topic: args.partitions})
        print(f"loading {args.events:,} events ({sources.origin}) into {setup.topic} ...",
              file=sys.stderr)
        loaded = load(bootstrap, setup.topic, args.partitions,
                      mix=Mix(sources, seed=20251129, oracle=oracle), events=args.events,
                      framing=framing(args.format))
        ends = end_offsets(bootstrap, setup.topic, args.partitions)
        print(f"loaded in {loaded.seconds:.1f} s, {loaded.payload_bytes / args.events:.0f} "
              f"bytes per event; {len(loaded.expected_ids)} alerts expected "
              f"({len(loaded.expected_rule_alerts)} with every AWS rule)", file=sys.stderr)
        rows = run_variants(setup, args, ends, loaded, work, rule_sets=rule_sets)
        latency = None
        if not args.no_latency:
            print(f"latency: {args.latency_rate:,.0f} events/s for {args.latency_seconds:.0f} s "
                  "...", file=sys.stderr)
            latency = measure_latency(setup, sources, args.latency_rate, args.latency_seconds,
                                      work, warmup_s=args.latency_warmup,
                                      reader_fetch_wait_ms=args.reader_fetch_wait_ms)
        load_after = os.getloadavg()

    summaries = summarise(rows)
    report_lines = [
        f"# Pipeline benchmark {stamp}",
        "",
        f"`{command}`",
        "",
        *environment(setup, external, quix_version),
        f"- data: {sources.origin}; {loaded.payload_bytes / args.events:.0f} bytes per event; "
        f"{len(loaded.expected_ids)} alerts known up front"
        + (f", {len(loaded.expected_rule_alerts)} with every AWS rule the detector runs "
           f"that needs no state ({len(oracle.rules)} rules; {len(rule_sets.stateful)} "
           "aggregating or suppressed ones counted, not checked)"
           if oracle else ""),
        f"- load average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_average)}; "
        f"after: {' '.join(f'{x:.2f}' for x in load_after)}",
        "",
        *table(summaries),
        "",
    ]
    if "j" in summaries:
        report_lines += ["## Elastic's AWS ES|QL rules (j)", "", *rule_sets.esql_lines, ""]
    state = state_lines(summaries)
    if state:
        report_lines += ["## State of aggregating and suppressed rules at the end", "", *state,
                         ""]
    scaling = summaries["f"].ratio_to(summaries.get("d")) if "f" in summaries else None
    if scaling:
        report_lines += [f"Workers: 1 → {args.workers}: {scaling:.2f}x the throughput (median "
                         "of the rounds' ratios).", ""]
    if latency is not None:
        report_lines += ["## Latency (exactly-once, 1 worker)", "", *latency_lines(latency), ""]
    report_lines += ["## Targets", "", *targets(summaries, latency), ""]
    text = "\n".join(report_lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"pipeline-{stamp}.md"
    path.write_text(text + "\n", encoding="utf-8")
    print(f"written to {path.relative_to(REPO)}; logs in {work}", file=sys.stderr)
    failures = [row for row in rows if row.problem]
    if latency is not None and latency.alerts != latency.expected:
        print(f"FAILED: latency run read {latency.alerts} alerts of {latency.expected}",
              file=sys.stderr)
        return 1
    for row in failures:
        print(f"FAILED: ({row.key}) {row.label}: {row.problem}", file=sys.stderr)
    return 1 if failures else 0


@dataclass(frozen=True)
class RuleSets:
    """What the AWS-rule variants run: the rules the per-event oracle leaves unchecked, and j's."""

    stateful: frozenset[str] = frozenset()
    """Aggregating and suppressed rules of h's set: their alerts are counted, not checked."""
    esql_stateless: frozenset[str] = frozenset()
    """j's rules that the oracle checks: its known alerts are the oracle's of these."""
    esql_lines: tuple[str, ...] = ()

    @classmethod
    def of(cls, aws_rules: list[LoadedRule], esql_rules_dir: Path | None) -> RuleSets:
        stateful = frozenset(rule.rule_id for rule in aws_rules if is_stateful(rule))
        if esql_rules_dir is None:
            return cls(stateful)
        esql = load_rule_set(esql_rules_dir, dict.fromkeys(OTHER_BUILTINS, False))
        running = [rule for rule in esql.rules if rule.enabled]
        files = len(list(esql_rules_dir.glob("*.toml")))
        lines = [
            f"{files} ES|QL rule files; {len(running)} run, "
            f"{sum(rule.aggregation is not None for rule in running)} of them aggregating "
            f"(STATS), {sum(Suppressor.for_rule(rule) is not None for rule in running)} with "
            f"alert_suppression; {len(esql.skipped)} refused"
        ]
        lines += [f"refused: {Path(rule.source).name}: {rule.reason}" for rule in esql.skipped]
        return cls(stateful | {rule.rule_id for rule in running if is_stateful(rule)},
                   frozenset(rule.rule_id for rule in running if not is_stateful(rule)),
                   tuple(lines))


def run_variants(
    setup: Setup, args: argparse.Namespace, ends: list[int], loaded: Loaded, work: Path, *,
    rule_sets: RuleSets,
) -> list[Measurement]:
    rows = []
    schedule = [
        (round_index, key)
        for round_index in range(args.rounds)
        for key in args.variants
        if round_index == 0 or key in REPEATED
    ]
    for index, (round_index, key) in enumerate(schedule):
        group = f"bench-{key}{index}-{setup.run_id}"
        alerts_topic = f"{setup.topic}.alerts-{key}{index}"
        dlq_topic = f"{setup.topic}.dlq-{key}{index}"
        topics = (setup.topic, alerts_topic, dlq_topic)
        variant: Variant | None
        if key in "hij" and setup.aws_rules_dir is None:
            rows.append(Measurement(key, "every AWS rule", skipped="../shared/elastic-rules/aws "
                                    "is absent"))
            continue
        if key in "abg":
            label = {
                "a": "raw ceiling: consume() batches",
                "b": "naive: poll, decode all",
                "g": f"raw ceiling, {setup.workers} processes",
            }[key]
            variant = reference_variant(setup, key, label, group, alerts_topic)
        elif key == "c":
            variant = quix_variant(setup, group, alerts_topic)
        elif key == "d":
            variant = detector_variant(setup, key, "detector, 1 worker, exactly-once",
                                       delivery="exactly-once", workers=1, topics=topics,
                                       group=group)
        elif key == "e":
            variant = detector_variant(setup, key, "detector, 1 worker, at-least-once",
                                       delivery="at-least-once", workers=1, topics=topics,
                                       group=group)
        elif key == "f":
            variant = detector_variant(
                setup, key, f"detector, {setup.workers} workers, exactly-once",
                delivery="exactly-once", workers=setup.workers, topics=topics, group=group)
        elif key == "h":
            variant = detector_variant(setup, key, "detector, every AWS rule, 1 worker, "
                                       "exactly-once", delivery="exactly-once", workers=1,
                                       topics=topics, group=group, aws_rules=True)
        elif key == "i":
            variant = reference_variant(setup, key, "naive, every AWS rule", group, alerts_topic)
        elif key == "j":
            variant = detector_variant(setup, key, "detector, Elastic's AWS ES|QL rules, 1 "
                                       "worker, exactly-once", delivery="exactly-once",
                                       workers=1, topics=topics, group=group, esql_rules=True)
        else:
            raise SystemExit(f"unknown variant {key!r}")
        if variant is None:
            rows.append(Measurement(key, "Quix Streams, exactly-once", skipped=args.quix_why))
            continue
        if key not in "ag":
            create_topics(setup.bootstrap, {alerts_topic: 1, dlq_topic: 1})
        print(f"({key}) {variant.label}, round {round_index + 1} ...", file=sys.stderr)
        expected = loaded.expected_ids
        if key == "j":
            expected = {alert for alert in loaded.expected_rule_alerts
                        if alert.split(" ", 1)[0] in rule_sets.esql_stateless}
        elif variant.by_rule:
            expected = loaded.expected_rule_alerts
        row = measure(variant, setup, ends=ends, group=group,
                      alerts_topic=None if key in "ag" else alerts_topic, expected=expected,
                      log_dir=work, deadline_s=120 + setup.events / (200 if key == "i" else 2000),
                      unchecked_rules=rule_sets.stateful if variant.by_rule else frozenset())
        row.round = round_index
        if row.seconds:
            print(f"    {row.rate:,.0f} events/s, {row.cpu_s:.1f} CPU s, "
                  f"{row.peak_rss_mb:.0f} MB, alerts {row.alerts}", file=sys.stderr)
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
