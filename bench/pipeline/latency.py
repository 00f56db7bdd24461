"""The latency run: the exactly-once detector fed at a steady rate, each alert timed from
producing its event to reading it read_committed.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import queue
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from bench import REPO
from bench.pipeline.broker import framing
from bench.pipeline.measure import COMMIT_SECONDS, metric_totals
from bench.pipeline.processes import cpu_seconds, memory_kb, process_tree, stop
from bench.pipeline.variants import Setup, detector_variant
from bench.pipeline.workload import Mix, SourceRecords
from tests.support.kafka import create_topics

LATENCY_CREATE_KEY_EVERY = 100
LATENCY_MATCHING_SHARE = 0.5
"""0.5% of the latency run's events match: enough alerts for a p99 in a short run."""
PRODUCER_CONFIG = {"linger.ms": "5"}
"""The event producer's settings: librdkafka's default linger.ms, said out loud, since it is part
of every latency measured here."""
WARMUP_S = 5.0
READER_FETCH_WAIT_MS = 10
"""The alert reader's fetch.wait.max.ms (librdkafka's default 500 would be most of what it
measures whenever a fetch finds nothing new)."""
STAGES = (
    ("produced → acknowledged", "the event producer's linger and the broker's append"),
    ("acknowledged → judged", "the detector's fetch and its loop (a commit in progress, the "
     "batch's screen)"),
    ("judged → alert appended", "the alert waits in the transactional producer until the "
     "commit flushes it"),
    ("appended → alert visible", "the rest of the commit (offsets, EndTxn, markers) and the "
     "reader's fetch"),
)
"""Where an alert's latency goes, from four clocks on this machine: the event's produce() call,
its delivery report, the alert's @timestamp (when the detector judged it, to the millisecond)
and the broker's append time of the alert (the alerts topic uses LogAppendTime here), then the
reader's receipt."""


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
    stages_ms: dict[str, list[float]] = field(default_factory=dict)
    commits: int = 0
    commit_wait_s: float = 0.0
    """The detector's commits over the run, and the time its loop waited on them."""
    settings: list[str] = field(default_factory=list)
    """What the run set beyond the detector's defaults (--detector-env, reader, producer)."""

    def percentile(self, share: float) -> float:
        return percentile(self.latencies_ms, share)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class Seen:
    """One alert as the reader saw it."""

    received: float
    """time.time() when the reader got it."""
    judged_ms: float
    """The alert's @timestamp: when the detector judged the event (milliseconds)."""
    appended_ms: float
    """The broker's LogAppendTime of the alert (milliseconds)."""


def measure_latency(
    setup: Setup, sources: SourceRecords, rate: float, seconds: float, log_dir: Path,
    *, warmup_s: float = WARMUP_S, reader_fetch_wait_ms: int = READER_FETCH_WAIT_MS,
) -> Latency:
    """`rate` events/s for `warmup_s` untimed, then for `seconds` timed: the steady state, not
    the start-up of a new topic, producer and broker code paths (seconds of 0.5-1 s latencies
    on this machine)."""
    input_topic = f"bench-latency-{setup.run_id}"
    alerts_topic, dlq_topic = f"{input_topic}.alerts", f"{input_topic}.dlq"
    create_topics(setup.bootstrap, {input_topic: setup.partitions, dlq_topic: 1})
    create_topics(setup.bootstrap, {alerts_topic: 1}, {"message.timestamp.type": "LogAppendTime"})
    variant = detector_variant(setup, "latency", "latency", delivery="exactly-once", workers=1,
                               topics=(input_topic, alerts_topic, dlq_topic),
                               group=f"bench-latency-{setup.run_id}")
    log_path = log_dir / "latency-detector.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(variant.argv, env=variant.env, cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT)
    sent_at: dict[str, float] = {}
    acked_at: dict[str, float] = {}
    # The reader is a process of its own: in this one it would wait for the GIL behind the
    # producing loop, and that wait would be measured as latency.
    context = multiprocessing.get_context("spawn")
    stop_reading, reader_ready = context.Event(), context.Event()
    results: multiprocessing.Queue[dict[str, Seen]] = context.Queue()
    count = context.Value("i", 0)
    reader = context.Process(
        target=read_alerts_as_they_come, args=(setup.bootstrap, alerts_topic),
        kwargs={"fetch_wait_ms": reader_fetch_wait_ms, "stopping": stop_reading,
                "ready": reader_ready, "count": count, "results": results},
        daemon=True,
    )
    reader.start()
    rss_samples: list[float] = []
    received: dict[str, Seen] = {}
    try:
        _wait_ready(variant.metrics_ports[0], process, log_path)
        if not reader_ready.wait(60):
            raise SystemExit("the latency run's alert reader got no partition assignment")
        mix = Mix(sources, seed=11, create_key_every=LATENCY_CREATE_KEY_EVERY,
                  matching_share=LATENCY_MATCHING_SHARE)
        producer = Producer({"bootstrap.servers": setup.bootstrap, **PRODUCER_CONFIG})
        header = framing(setup.input_format)
        # One event per partition first, untimed: the producer's metadata and connection, and
        # the detector's first fetch, are start-up.
        for partition in range(setup.partitions):
            event = next(mix)
            while event.matches:
                event = next(mix)
            producer.produce(input_topic, header + event.payload, event.key, partition=partition)
        producer.flush(30)
        warm = int(rate * warmup_s)
        total = warm + int(rate * seconds)
        warm_matches = 0
        cpu_start, commits_start = 0.0, (0.0, 0.0)
        started = time.monotonic()
        next_sample = started + warmup_s
        for index in range(total):
            due = started + index / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            if index == warm:
                cpu_start = cpu_seconds(process_tree(process.pid))
                commits_start = _commit_totals(variant.metrics_ports)
            if index >= warm and now >= next_sample:
                rss_samples.append(memory_kb([process.pid], "VmRSS") / 1024)
                next_sample += 1.0
            event = next(mix)
            if event.matches and index < warm:
                warm_matches += 1
            if event.matches and index >= warm:
                sent_at[event.event_id] = time.time()
                producer.produce(input_topic, header + event.payload, event.key,
                                 partition=index % setup.partitions,
                                 on_delivery=_acknowledged(acked_at, event.event_id))
            else:
                producer.produce(input_topic, header + event.payload, event.key,
                                 partition=index % setup.partitions)
            producer.poll(0)
        producer.flush(30)
        give_up = time.monotonic() + 30
        while count.value < len(sent_at) + warm_matches and time.monotonic() < give_up:
            time.sleep(0.1)
        rss_samples.append(memory_kb([process.pid], "VmRSS") / 1024)
        cpu = cpu_seconds(process_tree(process.pid)) - cpu_start
        commits_end = _commit_totals(variant.metrics_ports)
    finally:
        stop_reading.set()
        with contextlib.suppress(queue.Empty):
            received = results.get(timeout=30)
        stop(process)
        reader.join(10)
    received = {event_id: seen for event_id, seen in received.items() if event_id in sent_at}
    latencies = [
        (received[event_id].received - sent) * 1000 for event_id, sent in sent_at.items()
        if event_id in received
    ]
    stages: dict[str, list[float]] = {name: [] for name, _ in STAGES}
    samples = []
    for event_id, seen in received.items():
        sent, acked = sent_at.get(event_id), acked_at.get(event_id)
        if sent is None or acked is None:
            continue
        times = [sent * 1000, acked * 1000, seen.judged_ms, seen.appended_ms,
                 seen.received * 1000]
        samples.append(times)
        for (name, _), begin, end in zip(STAGES, times, times[1:], strict=False):
            stages[name].append(end - begin)
    # Each alert's five clocks (ms since the epoch, in STAGES order), to look at outliers.
    (log_dir / "latency-samples.json").write_text(json.dumps(sorted(samples)))
    settings = [f"timed after {warmup_s:.0f} s at the same rate",
                f"event producer {_properties(PRODUCER_CONFIG)}",
                f"alert reader fetch.wait.max.ms={reader_fetch_wait_ms}, read_committed",
                *(f"detector {name}={value}" for name, value in setup.detector_env.items())]
    return Latency(rate, seconds, int(rate * seconds), len(received), len(sent_at), latencies,
                   rss_samples, cpu, stages, int(commits_end[0] - commits_start[0]),
                   commits_end[1] - commits_start[1], settings)


def _properties(config: dict[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in config.items())


def _acknowledged(acked_at: dict[str, float], event_id: str) -> Callable[[Any, Any], None]:
    def on_delivery(error: Any, message: Any) -> None:
        if error is None:
            acked_at[event_id] = time.time()

    return on_delivery


def _commit_totals(ports: list[int]) -> tuple[float, float]:
    """The detector's commits so far and the seconds its loop waited on them."""
    return (sum(metric_totals(ports, f"{COMMIT_SECONDS}_count")),
            sum(metric_totals(ports, f"{COMMIT_SECONDS}_sum")))


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


def read_alerts_as_they_come(
    bootstrap: str, topic: str, *, fetch_wait_ms: int, stopping: EventType, ready: EventType,
    count: Synchronized[int], results: multiprocessing.Queue[dict[str, Seen]],
) -> None:
    """The reader process: every alert of `topic` read read_committed, by event id, counted
    in `count` as they come and sent to `results` once `stopping` is set."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-latency-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": "false",
            "fetch.wait.max.ms": str(fetch_wait_ms),
        }
    )
    consumer.subscribe([topic], on_assign=lambda _consumer, _partitions: ready.set())
    seen: dict[str, Seen] = {}
    try:
        while not stopping.is_set():
            # poll, not consume(100, timeout), which waits for 100 alerts or the timeout: on
            # main that wait (25 ms on average) was measured as the detector's latency.
            message = consumer.poll(0.05)
            if message is not None and message.error() is None:
                received = time.time()
                document = json.loads(message.value() or b"{}")
                judged = datetime.fromisoformat(document["@timestamp"]).timestamp() * 1000
                seen.setdefault(document["event"]["id"],
                                Seen(received, judged, float(message.timestamp()[1])))
                count.value = len(seen)
    finally:
        consumer.close()
        results.put(seen)
