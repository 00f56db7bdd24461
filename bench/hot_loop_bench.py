"""The detector's hot loop in-process, without Kafka: CPU per message, and where it goes.

Run: .venv/bin/python -m bench.hot_loop_bench [--messages N] [--repeats N] [--profile]
     [--input-format avro|json] [--header NAME=VALUE]

Feeds the service's `BatchProcessor.process` (screen → decode → rules → alerts, with the
per-partition offset and metric bookkeeping) batches of real `confluent_kafka.Message` objects
carrying the pipeline benchmark's mix (bench/pipeline/workload.py), its alerts going to the
in-memory sink of `consumer.stream.testing` (opened once per pass, then abandoned).
Prints the best mean microseconds per message over `--repeats` passes next to what merely
touching each message's value costs. `--input-format json` sends the same records as JSON
text; `--header` puts a header on every message; `--profile` prints a pyinstrument tree of one pass
(`pip install pyinstrument`; not a project dependency).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from confluent_kafka import Message
from fastavro import schemaless_reader
from prometheus_client import CollectorRegistry

from bench.pipeline.workload import (
    SEED_RULE_ID,
    Mix,
    bench_rule_query,
    load_sources,
    write_bench_rules,
)
from consumer.alerts.document import encode_json
from consumer.cloudtrail.record import READER_SCHEMA, avro_to_json
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.config import Settings
from consumer.rules.detector import Detector
from consumer.stream.app import load_enabled_rules, make_decoder
from consumer.stream.batch import THROTTLE_STORE, BatchProcessor
from consumer.stream.metrics import Metrics
from consumer.stream.state import StateStore
from consumer.stream.testing import InMemoryBroker, InMemorySink

TOPIC = "cloudtrail-events"
PARTITIONS = 4
BATCH = 1000
KafkaHeaders = list[tuple[str, str | bytes | None]]


def build_processor(rules_dir: Path, input_format: str) -> tuple[BatchProcessor, InMemorySink]:
    """The service's batch processor as the service builds it, with an in-memory sink for its
    output and in-memory state for the throttle's counts."""
    settings = Settings.model_validate(
        {
            "input_topics": [TOPIC],
            "input_format": input_format,
            "rules_dir": rules_dir,
            "disable_rules": [SEED_RULE_ID],
        }
    )
    broker = InMemoryBroker(partitions=PARTITIONS, inputs=(TOPIC,))
    sink = broker.sink()
    throttle_counts = StateStore(THROTTLE_STORE, settings.group_id, broker)
    for partition in range(PARTITIONS):
        throttle_counts.assign((TOPIC, partition), None)
    detector = Detector(make_decoder(settings), load_enabled_rules(settings))
    processor = BatchProcessor(settings, detector, Metrics(CollectorRegistry()), sink,
                               throttle_counts, encode_alert=encode_json)
    return processor, sink


def as_json(payload: bytes) -> bytes:
    record = cast(CloudTrailRecord, schemaless_reader(io.BytesIO(payload), READER_SCHEMA, None))
    return json.dumps(avro_to_json(record), separators=(",", ":")).encode()


def batches(
    rules_dir: Path, count: int, input_format: str, headers: KafkaHeaders | None
) -> tuple[list[list[Message]], int]:
    """`count` messages in consume()-sized batches, spread over partitions like a fetch does,
    and how many of them must alert."""
    mix = Mix(load_sources(bench_rule_query(rules_dir)), seed=7)
    messages = []
    matches = 0
    for index in range(count):
        event = next(mix)
        matches += event.matches
        value = as_json(event.payload) if input_format == "json" else event.payload
        messages.append(
            Message(topic=TOPIC, partition=(index // 250) % PARTITIONS, offset=index,
                    key=event.key, value=value, headers=headers)
        )
    return [messages[start : start + BATCH] for start in range(0, count, BATCH)], matches


def best_us_per_message(run: Callable[[], None], messages: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best / messages * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="pyinstrument tree of one pass")
    parser.add_argument("--input-format", choices=["avro", "json"], default="avro")
    parser.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                        help="a header on every message (repeatable)")
    args = parser.parse_args(argv)

    headers = [(name, value.encode()) for name, _, value in
               (header.partition("=") for header in args.header)] or None
    rules_dir = write_bench_rules(Path(tempfile.mkdtemp(prefix="hot-loop-rules-")))
    processor, sink = build_processor(rules_dir, args.input_format)
    work, matches = batches(rules_dir, args.messages, args.input_format, headers)
    alerts: list[int] = []

    def handle_all() -> None:
        sink.begin()
        for batch in work:
            processor.process(batch, time.monotonic())
        alerts.append(len(sink.pending))
        sink.abort()
        processor.throttle_counts.rolled_back()

    def touch_values() -> None:
        for batch in work:
            for message in batch:
                message.value()

    handle_all()
    if alerts[-1] != matches:
        raise SystemExit(f"{alerts[-1]} alerts from {matches} matching messages")
    if args.profile:
        profiler = importlib.import_module("pyinstrument").Profiler(interval=0.0002)
        with profiler:
            handle_all()
        print(profiler.output_text(show_all=False))
    touch = best_us_per_message(touch_values, args.messages, args.repeats)
    handle = best_us_per_message(handle_all, args.messages, args.repeats)
    print("| step | µs per message |\n|---|---:|")
    print(f"| touch value() only | {touch:.3f} |\n| BatchProcessor.process | {handle:.3f} |")


if __name__ == "__main__":
    main()
