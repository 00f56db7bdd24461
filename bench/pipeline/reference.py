"""The pipeline benchmark's reference consumers, each its own process (bench.pipeline_bench runs
`python -m bench.pipeline.reference raw|raw-split|naive --bootstrap B --topic T --group G ...`).

    raw        the ceiling: confluent-kafka `consume()` batches, touching each value, nothing
               else
    raw-split  the same in N processes, each assigned every N-th partition
    naive      the obvious detector: `poll()` one message, decode it with fastavro, normalize
               every ECS field, evaluate the rule, produce an alert per match with a plain
               producer; the offsets of polled messages are auto-committed every 100 ms
               (librdkafka's default way, at a shorter interval). Committing each message
               instead is not usable here: synchronously it manages 180 messages/s;
               asynchronously the requests queue up without bound (770 MB after 20 s) until
               heartbeats time out behind them. With --all-rules it evaluates every enabled
               rule that loading --rules-dir gives (the benchmark's copy of
               ../shared/elastic-rules/aws) and that needs no state (no STATS, no
               alert_suppression), each one on every message.

Each prints JSON lines on stdout for the benchmark to time: `{"first": t}` when the first
message arrived (t from time.time()), and for `raw` and `raw-split` `{"done": t}` once they read
everything. All run until SIGTERM; `naive` then flushes its alerts.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from types import FrameType

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from fastavro import schemaless_reader

from bench.pipeline.workload import BENCH_RULE_ID, SEED_RULE_ID, is_stateful
from consumer.alerts.document import alert_for, encode_json
from consumer.cloudtrail.normalize import normalize
from consumer.cloudtrail.record import READER_SCHEMA, avro_to_json
from consumer.rules import LoadedRule, load_rules
from consumer.stream.source import FETCH_DEFAULTS

CONFLUENT_HEADER_BYTES = 5


def report(**fields: float) -> None:
    print(json.dumps(fields), flush=True)


def new_consumer(bootstrap: str, topic: str, group: str, auto_commit: bool = False) -> Consumer:
    """The detector's prefetch settings (consumer/stream/source.py), so that the ceiling is not held
    back by librdkafka's 1 s fetch backoff: with the defaults, the raw read of a million events
    took 0.8 s or 2.2 s from one run to the next."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": str(auto_commit).lower(),
            "auto.commit.interval.ms": "100",
            **FETCH_DEFAULTS,
        }
    )
    consumer.subscribe([topic])
    return consumer


def stop_event() -> threading.Event:
    """Set by SIGTERM: the benchmark reads a variant's CPU and memory before it stops it."""
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    return stopping


def raw(bootstrap: str, topic: str, group: str, messages: int) -> None:
    stopping = stop_event()
    consumer = new_consumer(bootstrap, topic, group)
    read = 0
    while read < messages:
        batch = consumer.consume(1000, 1.0)
        if batch and not read:
            report(first=time.time())
        for message in batch:
            message.value()
        read += len(batch)
    report(done=time.time())
    stopping.wait()
    consumer.close()


def raw_split(bootstrap: str, topic: str, partitions: int, processes: int) -> None:
    """The raw ceiling of `processes` consumers, each assigned every processes-th partition.

    assign() rather than a group: a member that joined first would read partitions that a
    rebalance then hands on, to be read again from the start (nothing is committed).
    """
    stopping = stop_event()
    context = multiprocessing.get_context("fork")
    times: multiprocessing.Queue[tuple[str, float]] = context.Queue()
    release = context.Event()
    members = [
        context.Process(
            target=_raw_member,
            args=(bootstrap, topic, list(range(index, partitions, processes)), times, release),
        )
        for index in range(processes)
    ]
    for member in members:
        member.start()
    firsts: list[float] = []
    done: list[float] = []
    while len(done) < processes:
        kind, moment = times.get()
        if kind == "done":
            done.append(moment)
        elif not firsts:
            report(first=moment)
            firsts.append(moment)
    report(done=max(done))
    stopping.wait()
    release.set()
    for member in members:
        member.join(30)


def _raw_member(
    bootstrap: str, topic: str, partitions: list[int],
    times: multiprocessing.Queue[tuple[str, float]], release: EventType,
) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                         "enable.auto.commit": "false", **FETCH_DEFAULTS})
    wanted = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                 for p in partitions)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    read = 0
    while read < wanted:
        batch = consumer.consume(1000, 1.0)
        if batch and not read:
            times.put(("first", time.time()))
        for message in batch:
            message.value()
        read += len(batch)
    times.put(("done", time.time()))
    release.wait()
    consumer.close()


def bench_rule(rules_dir: Path) -> LoadedRule:
    for rule in load_rules(rules_dir, {SEED_RULE_ID: False}):
        if rule.rule_id == BENCH_RULE_ID:
            return rule
    raise SystemExit(f"{rules_dir} does not hold rule {BENCH_RULE_ID}")


def naive(
    bootstrap: str, topic: str, group: str, *, alerts_topic: str, rules_dir: Path, framed: bool,
    all_rules: bool,
) -> None:
    rules = (
        [rule for rule in load_rules(rules_dir) if rule.enabled and not is_stateful(rule)]
        if all_rules
        else [bench_rule(rules_dir)]
    )
    stopping = stop_event()
    consumer = new_consumer(bootstrap, topic, group, auto_commit=True)
    producer = Producer({"bootstrap.servers": bootstrap})
    first = True
    while not stopping.is_set():
        message = consumer.poll(0.5)
        if message is None or message.error() is not None:
            continue
        if first:
            report(first=time.time())
            first = False
        payload = message.value() or b""
        body = io.BytesIO(payload)
        if framed:
            body.seek(CONFLUENT_HEADER_BYTES)
        record = schemaless_reader(body, READER_SCHEMA, None)
        assert isinstance(record, dict)
        normalize(record)
        for rule in rules:
            if rule.query.matches(record):
                alert = alert_for(
                    rule, record, detected_at=datetime.now(UTC),
                    original=json.dumps(avro_to_json(record), separators=(",", ":")),
                )
                producer.produce(alerts_topic, encode_json(alert), alert.key,
                                 headers=alert.headers)
        producer.poll(0)
    producer.flush(30)
    consumer.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=["raw", "raw-split", "naive"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--messages", type=int, default=0, help="raw: stop after this many")
    parser.add_argument("--partitions", type=int, help="raw-split: partitions of the topic")
    parser.add_argument("--processes", type=int, help="raw-split: consumer processes")
    parser.add_argument("--alerts-topic")
    parser.add_argument("--rules-dir", type=Path)
    parser.add_argument("--framed", action="store_true",
                        help="payloads carry the 5-byte Schema Registry header")
    parser.add_argument("--all-rules", action="store_true",
                        help="naive: every enabled rule of --rules-dir, not the seed rule's copy")
    args = parser.parse_args(argv)
    if args.variant == "raw":
        raw(args.bootstrap, args.topic, args.group, args.messages)
    elif args.variant == "raw-split":
        raw_split(args.bootstrap, args.topic, args.partitions, args.processes)
    else:
        naive(args.bootstrap, args.topic, args.group, alerts_topic=args.alerts_topic,
              rules_dir=args.rules_dir, framed=args.framed, all_rules=args.all_rules)
    sys.exit(0)


if __name__ == "__main__":
    main()
