"""Where an exactly-once alert's milliseconds go in Kafka itself, without the detector around it.

Run: .venv/bin/python -m bench.commit_latency_bench [--transactions N] [--interval-ms MS]
         [--producer NAME=VALUE] [--reader-fetch-wait-ms MS]

What the detector's commit does, one small transaction at a time: begin, produce one alert, send
the consumed offsets, commit; a read_committed reader in its own process notes when each alert
becomes visible. The alerts topic uses LogAppendTime, so the broker's append time splits the
produce from the rest. Per transaction it prints the median and p99 of: produce() → alert appended
(the producer's linger, and adding the partition to the transaction), send_offsets_to_transaction,
commit_transaction, and commit returned → alert visible (the broker's transaction markers and the
reader's fetch). The producer has the detector's settings; `--producer` overrides one
(repeatable), to compare settings on the same broker. Uses $KAFKA_BOOTSTRAP_SERVERS, else a
local KRaft broker.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import queue
import time
import uuid
from collections.abc import Sequence
from multiprocessing.synchronize import Event as EventType

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.pipeline.broker import broker
from bench.pipeline.latency import percentile
from consumer.config import Settings
from consumer.kafka_properties import TRANSACTIONAL_DEFAULTS
from tests.support.kafka import create_topics

PHASES = ("produce → appended", "send offsets", "commit", "committed → visible",
          "produce → visible")


def read_alerts(
    bootstrap: str, topic: str, *, fetch_wait_ms: int, stopping: EventType, ready: EventType,
    results: multiprocessing.Queue[dict[int, tuple[float, float]]],
) -> None:
    """The reader process: each alert's (time read, LogAppendTime), by its key."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest", "isolation.level": "read_committed",
        "enable.auto.commit": "false", "fetch.wait.max.ms": str(fetch_wait_ms),
    })
    consumer.subscribe([topic], on_assign=lambda _consumer, _partitions: ready.set())
    seen: dict[int, tuple[float, float]] = {}
    try:
        while not stopping.is_set():
            # poll, not consume(100, timeout): that would wait for 100 messages or the timeout
            # and measure its own wait.
            message = consumer.poll(0.05)
            if message is not None and message.error() is None:
                seen[int(message.key() or b"0")] = (time.time() * 1000,
                                                    float(message.timestamp()[1]))
    finally:
        consumer.close()
        results.put(seen)


def group_member(bootstrap: str, topic: str, group: str) -> Consumer:
    """A consumer that owns `topic`'s partition, for the group metadata offsets commit with."""
    assigned: list[bool] = []
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": "false"})
    consumer.subscribe([topic], on_assign=lambda _consumer, _partitions: assigned.append(True))
    deadline = time.monotonic() + 60
    while not assigned:
        if time.monotonic() > deadline:
            raise SystemExit("the group member got no assignment")
        consumer.poll(0.1)
    return consumer


def detector_producer_config(bootstrap: str, transactional_id: str) -> dict[str, str]:
    """The detector's transactional producer settings, as the service builds them."""
    settings = Settings.model_validate({"bootstrap_servers": bootstrap, "input_topics": ["in"],
                                        "input_format": "avro", "delivery": "exactly-once"})
    return {**TRANSACTIONAL_DEFAULTS.values(), **settings.producer_config(0),
            "transactional.id": transactional_id}


def run(bootstrap: str, args: argparse.Namespace) -> dict[str, list[float]]:
    run_id = uuid.uuid4().hex[:8]
    source, alerts = f"commit-bench-in-{run_id}", f"commit-bench-alerts-{run_id}"
    create_topics(bootstrap, {source: 1})
    create_topics(bootstrap, {alerts: 1}, {"message.timestamp.type": "LogAppendTime"})
    context = multiprocessing.get_context("spawn")
    stopping, ready = context.Event(), context.Event()
    results: multiprocessing.Queue[dict[int, tuple[float, float]]] = context.Queue()
    reader = context.Process(
        target=read_alerts, args=(bootstrap, alerts),
        kwargs={"fetch_wait_ms": args.reader_fetch_wait_ms, "stopping": stopping,
                "ready": ready, "results": results}, daemon=True)
    reader.start()
    member = group_member(bootstrap, source, f"commit-bench-{run_id}")
    producer = Producer({**detector_producer_config(bootstrap, f"tx-{run_id}"), **args.producer})
    producer.init_transactions(30)
    if not ready.wait(60):
        raise SystemExit("the reader got no assignment")
    metadata = member.consumer_group_metadata()
    timings: list[tuple[float, float, float, float]] = []
    try:
        for index in range(args.transactions):
            due = time.monotonic() + args.interval_ms / 1000
            producer.begin_transaction()
            produced = time.time() * 1000
            producer.produce(alerts, b"alert", str(index).encode())
            producer.send_offsets_to_transaction([TopicPartition(source, 0, index + 1)],
                                                 metadata, 30)
            offsets_sent = time.time() * 1000
            producer.commit_transaction(30)
            timings.append((produced, offsets_sent, time.time() * 1000, 0.0))
            time.sleep(max(0.0, due - time.monotonic()))
        time.sleep(1)  # the last alerts' markers and fetch; nothing waits on a condition here
    finally:
        stopping.set()
        seen: dict[int, tuple[float, float]] = {}
        with contextlib.suppress(queue.Empty):
            seen = results.get(timeout=30)
        reader.join(10)
        member.close()
    phases: dict[str, list[float]] = {name: [] for name in PHASES}
    # The first tenth warms up connections and the broker's code paths.
    for index, (produced, offsets_sent, committed, _) in enumerate(timings):
        if index < args.transactions // 10 or index not in seen:
            continue
        visible, appended = seen[index]
        for name, value in zip(PHASES, (appended - produced, offsets_sent - produced,
                                        committed - offsets_sent, visible - committed,
                                        visible - produced), strict=True):
            phases[name].append(value)
    return phases


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=500)
    parser.add_argument("--interval-ms", type=float, default=20,
                        help="one transaction started every this many ms (the latency run "
                        "commits 50-100 times a second)")
    parser.add_argument("--producer", action="append", default=[], metavar="NAME=VALUE",
                        help="a transactional producer property over the detector's (repeatable)")
    parser.add_argument("--reader-fetch-wait-ms", type=int, default=10)
    args = parser.parse_args(argv)
    args.producer = dict(setting.partition("=")[::2] for setting in args.producer)
    with broker() as (bootstrap, _pid):
        phases = run(bootstrap, args)
    print(f"producer: the detector's settings, {args.producer or 'unchanged'}; reader "
          f"fetch.wait.max.ms={args.reader_fetch_wait_ms}; {len(phases[PHASES[0]])} "
          "transactions measured")
    print("| phase (ms) | p50 | p99 |\n|---|---:|---:|")
    for name, values in phases.items():
        if values:
            print(f"| {name} | {percentile(values, 0.5):.1f} | {percentile(values, 0.99):.1f} |")


if __name__ == "__main__":
    main()
