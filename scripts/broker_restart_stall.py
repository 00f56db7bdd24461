"""How long the first commit after a broker restart takes, with the sink's producer settings
and wedged-commit signal, against librdkafka's defaults and the 20 s watchdog alone.

A consume-transform-produce loop (the detector's TransactionalSink, its commit watched from
another thread as the service does) runs on a stream; the broker stops for `--outage`
seconds and starts again; the stall is the time from the broker answering again to the first
commit that lands. Each variant gets a fresh broker:

    .venv/bin/python -m scripts.broker_restart_stall            # all variants
    .venv/bin/python -m scripts.broker_restart_stall --variant after --outage 12
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client import CollectorRegistry

from consumer.stream.metrics import Metrics
from consumer.stream.sink import TransactionalSink
from scripts.kafka_local import LocalKafka

WATCHDOG_S = 20.0
"""The service's WEDGED_COMMIT_S."""


@dataclass(frozen=True)
class Variant:
    name: str
    producer: dict[str, str]
    """Overrides of the sink's producer settings."""
    signal: bool
    """Whether the watchdog asks `commit_wedged()`, or waits WATCHDOG_S alone."""


VARIANTS = {
    "before": Variant("before: librdkafka's defaults, 20 s watchdog",
                      {"metadata.recovery.strategy": "rebootstrap",
                       "reconnect.backoff.max.ms": "10000"}, signal=False),
    "signal": Variant("librdkafka's defaults, commit_wedged signal",
                      {"metadata.recovery.strategy": "rebootstrap",
                       "reconnect.backoff.max.ms": "10000"}, signal=True),
    "after": Variant("after: the sink's settings and signal", {}, signal=True),
}


class Loop:
    """Consume, produce a copy, commit in a transaction; a wedged commit replaces the sink."""

    def __init__(self, bootstrap: str, variant: Variant, source: str, target: str) -> None:
        self.bootstrap, self.variant, self.target = bootstrap, variant, target
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex}",
            "enable.auto.commit": "false", "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        })
        self.consumer.subscribe([source])
        self.transactional_id = f"stall-{uuid.uuid4().hex}"
        self.sink = self._sink()
        self.commits: list[float] = []
        self.replaced: list[float] = []
        self.stop = threading.Event()

    def _sink(self) -> TransactionalSink:
        sink = TransactionalSink(
            {"bootstrap.servers": self.bootstrap, "transactional.id": self.transactional_id,
             **self.variant.producer},
            Metrics(CollectorRegistry()),
        )
        sink.init(deadline=float("inf"))
        return sink

    def run(self) -> None:
        while not self.stop.is_set():
            messages = [m for m in self.consumer.consume(500, 0.1) if m.error() is None]
            if not messages:
                continue
            self.sink.begin()
            for message in messages:
                self.sink.produce(self.target, message.key(), message.value(), [])
            ends = {(str(m.topic()), int(m.partition() or 0)): int(m.offset() or 0) + 1
                    for m in messages}
            offsets = [TopicPartition(topic, partition, end)
                       for (topic, partition), end in ends.items()]
            if self._commit(offsets):
                self.commits.append(time.monotonic())
            else:
                self._rewind()

    def _commit(self, offsets: list[TopicPartition]) -> bool:
        sink, outcome = self.sink, []
        helper = threading.Thread(
            target=lambda: outcome.append(sink.commit(offsets, self.consumer)), daemon=True)
        started = time.monotonic()
        helper.start()
        helper.join(0.1)
        while helper.is_alive() and time.monotonic() - started < WATCHDOG_S:
            if self.variant.signal and sink.commit_wedged():
                break
            helper.join(0.1)
        if helper.is_alive():
            self.replaced.append(time.monotonic())
            self.sink = self._sink()
            return False
        return bool(outcome and outcome[0])

    def _rewind(self) -> None:
        assignment = self.consumer.assignment()
        for tp in self.consumer.committed(assignment, timeout=30):
            tp.offset = max(tp.offset, 0)
            self.consumer.seek(tp)


def feed(bootstrap: str, topic: str, stop: threading.Event) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "5"})
    while not stop.is_set():
        for index in range(100):
            producer.produce(topic, value=b"x" * 200, key=str(index).encode())
        producer.poll(0)
        stop.wait(0.1)
    producer.flush(30)


def measure(variant: Variant, outage_s: float, workdir: Path) -> str:
    broker = LocalKafka(workdir=workdir / uuid.uuid4().hex[:8])
    broker.start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        for future in admin.create_topics([NewTopic("in", 3, 1), NewTopic("out", 3, 1)]).values():
            future.result(timeout=30)
        stop = threading.Event()
        threading.Thread(target=feed, args=(broker.bootstrap_servers, "in", stop),
                         daemon=True).start()
        loop = Loop(broker.bootstrap_servers, variant, "in", "out")
        threading.Thread(target=loop.run, daemon=True).start()
        deadline = time.monotonic() + 60
        while len(loop.commits) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        broker.stop()
        stopped = time.monotonic()
        time.sleep(outage_s)
        broker.start()
        back = time.monotonic()
        deadline = back + 90
        while not [t for t in loop.commits if t > back] and time.monotonic() < deadline:
            time.sleep(0.1)
        after = [t for t in loop.commits if t > back]
        stall = f"{after[0] - back:.1f} s" if after else "none within 90 s"
        replaced = ", ".join(f"{t - back:+.1f} s" for t in loop.replaced) or "none"
        loop.stop.set()
        stop.set()
        return (f"{variant.name}: down {back - stopped:.1f} s; first commit {stall} after the "
                f"broker answered again; producer replaced at {replaced} (from the answer)")
    finally:
        broker.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append")
    parser.add_argument("--outage", type=float, default=12.0, help="seconds the broker is down")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="restart-stall-") as workdir:
        for name in args.variant or list(VARIANTS):
            print(measure(VARIANTS[name], args.outage, Path(workdir)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
