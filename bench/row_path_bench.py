"""Where an event's time goes with Elastic's aggregating ES|QL rules, without a broker.

    .venv/bin/python -m bench.row_path_bench --events 20000 --rounds 5 [--profile]

On the pipeline bench's workload (bench/pipeline/workload.py) and Elastic's ES|QL rules of
../shared/elastic-rules/aws, it times (CPU time, best of `--rounds`, the machine being shared):
- detect: `Detector.inspect` of each event with every ES|QL rule, and with the row-at-a-time
  ones only (the difference is the aggregating rules' pre-STATS part, and the decoding their
  unconstrained prefilters force on every message);
- the stateful row path of the rows that gives: route (encode to the repartition topic),
  consume back (decode, fold into the groups' windows), and flush (changed groups to the
  store) every 500 events, as `StatefulStage` does in the service, on the in-memory store.
With `--profile`, cProfile's top functions of each part.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.pipeline.workload import Mix, load_sources, seed_query, write_aws_rules
from consumer.cloudtrail.decode import SchemalessAvroDecoder
from consumer.rules import load_rules
from consumer.rules.detector import Detector, Verdict
from consumer.stream.repartition import Encoded
from consumer.stream.state import PartitionStore
from consumer.stream.stateful import StatefulStage, stateful_rules

PARTITIONS = 4
BATCH_EVENTS = 500
SOURCE = ("in", 0)


def best_cpu_s(work: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


def profiled(label: str, work: Callable[[], object]) -> None:
    profile = cProfile.Profile()
    profile.runcall(work)
    print(f"--- {label}: top functions by own time")
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    rules_dir = write_aws_rules(Path(tempfile.mkdtemp()), esql_only=True)
    if rules_dir is None:
        raise SystemExit("../shared/elastic-rules/aws is absent")
    rules = load_rules(rules_dir)
    detector = Detector(SchemalessAvroDecoder(), rules)
    stateless = Detector(SchemalessAvroDecoder(), [r for r in rules if r.aggregation is None])
    mix = Mix(load_sources(seed_query()), seed=7)
    payloads = [next(mix).payload for _ in range(args.events)]

    def detect_all() -> list[object]:
        return [detector.inspect(payload) for payload in payloads]

    def detect_stateless() -> list[object]:
        return [stateless.inspect(payload) for payload in payloads]

    verdicts = [v for v in detect_all() if isinstance(v, Verdict)]
    batches = [verdicts[start:start + BATCH_EVENTS]
               for start in range(0, len(verdicts), BATCH_EVENTS)]
    rows = sum(len(found) for verdict in verdicts for _, found in verdict.rows)

    def row_path() -> None:
        stage = StatefulStage(stateful_rules(detector.aggregating, detector.rules), topic="rp",
                              partitions=PARTITIONS, inputs=frozenset({SOURCE}),
                              allowed_lateness_ms=0, idle_timeout_ms=3_600_000,
                              emit=lambda rule_id, output: None)
        stores = [PartitionStore(("rp", number)) for number in range(PARTITIONS)]
        for number, store in enumerate(stores):
            stage.assign(number, store)
        queued: list[Encoded] = []

        def produce(topic: str, record: Encoded) -> None:
            queued.append(record)

        for batch in batches:
            for verdict in batch:
                for rule, found in verdict.rows:
                    stage.route(SOURCE, rule.rule_id, verdict.record, found, wall_ms=0,
                                produce=produce)
            stage.markers(0, lambda source: False, produce)
            for record in queued:
                stage.consume(record.partition, record.key, record.value, record.headers)
            queued.clear()
            stage.flush()
            for store in stores:
                store.committed()

    all_s = best_cpu_s(detect_all, args.rounds)
    stateless_s = best_cpu_s(detect_stateless, args.rounds)
    rows_s = best_cpu_s(row_path, args.rounds)
    events = args.events
    print(f"{events} events, {rows} aggregating rows ({rows / events:.1%} of events)")
    print(f"detect, every ES|QL rule:     {events / all_s:9.0f} events/s "
          f"({all_s / events * 1e6:6.1f} us/event)")
    print(f"detect, row-at-a-time only:   {events / stateless_s:9.0f} events/s "
          f"({stateless_s / events * 1e6:6.1f} us/event)")
    print(f"stateful row path:            {rows / rows_s:9.0f} rows/s   "
          f"({rows_s / rows * 1e6:6.1f} us/row, {rows_s / events * 1e6:6.1f} us/event)")
    if args.profile:
        profiled("detect, every ES|QL rule", detect_all)
        profiled("stateful row path", row_path)


if __name__ == "__main__":
    main()
