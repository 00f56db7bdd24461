"""The latency run: the exactly-once detector fed at a steady rate, each alert timed from
producing its event to reading it read_committed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from bench import REPO
from bench.pipeline.broker import framing
from bench.pipeline.processes import cpu_seconds, memory_kb, process_tree, stop
from bench.pipeline.variants import Setup, detector_variant
from bench.pipeline.workload import Mix, SourceRecords
from tests.support.kafka import create_topics

LATENCY_CREATE_KEY_EVERY = 100
LATENCY_MATCHING_SHARE = 0.5
"""0.5% of the latency run's events match: enough alerts for a p99 in a short run."""


@dataclass
class Latency:
    rate: float
    seconds: float
    sent: int
    alerts: int
    expected: int
    latencies_ms: list[float]
    rss_mb: list[float]
    cpu_s: float

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure_latency(
    setup: Setup, sources: SourceRecords, rate: float, seconds: float, log_dir: Path
) -> Latency:
    input_topic = f"bench-latency-{setup.run_id}"
    alerts_topic, dlq_topic = f"{input_topic}.alerts", f"{input_topic}.dlq"
    create_topics(setup.bootstrap, {input_topic: setup.partitions, alerts_topic: 1, dlq_topic: 1})
    variant = detector_variant(setup, "latency", "latency", delivery="exactly-once", workers=1,
                               topics=(input_topic, alerts_topic, dlq_topic),
                               group=f"bench-latency-{setup.run_id}")
    log_path = log_dir / "latency-detector.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(variant.argv, env=variant.env, cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT)
    sent_at: dict[str, float] = {}
    received: dict[str, float] = {}
    stop_reading = threading.Event()
    reader_ready = threading.Event()
    reader = threading.Thread(
        target=_read_alerts_as_they_come,
        args=(setup.bootstrap, alerts_topic, received, stop_reading, reader_ready), daemon=True,
    )
    reader.start()
    rss_samples: list[float] = []
    try:
        _wait_ready(variant.metrics_ports[0], process, log_path)
        if not reader_ready.wait(60):
            raise SystemExit("the latency run's alert reader got no partition assignment")
        tree = process_tree(process.pid)
        cpu_start = cpu_seconds(tree)
        mix = Mix(sources, seed=11, create_key_every=LATENCY_CREATE_KEY_EVERY,
                  matching_share=LATENCY_MATCHING_SHARE)
        producer = Producer({"bootstrap.servers": setup.bootstrap})
        header = framing(setup.input_format)
        total = int(rate * seconds)
        started = time.monotonic()
        next_sample = started
        for index in range(total):
            due = started + index / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            if now >= next_sample:
                rss_samples.append(memory_kb([process.pid], "VmRSS") / 1024)
                next_sample += 1.0
            event = next(mix)
            if event.matches:
                sent_at[event.event_id] = time.time()
            producer.produce(input_topic, header + event.payload, event.key,
                             partition=index % setup.partitions)
            producer.poll(0)
        producer.flush(30)
        give_up = time.monotonic() + 30
        while len(received) < len(sent_at) and time.monotonic() < give_up:
            time.sleep(0.1)
        rss_samples.append(memory_kb([process.pid], "VmRSS") / 1024)
        cpu = cpu_seconds(process_tree(process.pid)) - cpu_start
    finally:
        stop_reading.set()
        stop(process)
        reader.join(10)
    latencies = [
        (received[event_id] - sent) * 1000 for event_id, sent in sent_at.items()
        if event_id in received
    ]
    return Latency(rate, seconds, int(rate * seconds), len(received), len(sent_at), latencies,
                   rss_samples, cpu)


def _wait_ready(port: int, process: subprocess.Popen[Any], log_path: Path) -> None:
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise SystemExit(f"the detector exited with {process.returncode}; see {log_path}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply,
        ):
            if reply.status == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"the detector never became ready; see {log_path}")


def _read_alerts_as_they_come(
    bootstrap: str, topic: str, received: dict[str, float], stopping: threading.Event,
    ready: threading.Event,
) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-latency-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": "false",
            "fetch.wait.max.ms": "10",
        }
    )
    consumer.subscribe([topic], on_assign=lambda _consumer, _partitions: ready.set())
    try:
        while not stopping.is_set():
            for message in consumer.consume(100, 0.05):
                if message.error() is None:
                    seen = time.time()
                    event_id = json.loads(message.value() or b"{}")["event"]["id"]
                    received.setdefault(event_id, seen)
    finally:
        consumer.close()

