"""End-to-end throughput and latency of the detector beside the raw consume ceiling, in one run.

Run: .venv/bin/python bench/pipeline_bench.py [--quick] [--events N] [--partitions P]
         [--format avro|avro-registry] [--latency-rate R] [--latency-seconds S]
         [--quix-python PATH] [--variants abcdefghi] [--workers N] [--no-latency] [--rounds N]

On one broker ($KAFKA_BOOTSTRAP_SERVERS, else a local KRaft broker from scripts/kafka_local.py)
it loads one input topic with a realistic CloudTrail mix (bench/pipeline_workload.py: the alerts
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
    i  naive as b, evaluating every one of h's rules on every message

h and i are skipped when ../shared is absent. Their rules are copied with a max_signals that
never throttles, as is the seed rule's copy the others run; their known alerts are one per
(rule, event) that the detector's own decode and `Detector.judge` give each source record offline.

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

Then a latency run: the exactly-once detector on a fresh topic fed at --latency-rate events/s for
--latency-seconds, 0.5% of them matching; each alert's latency is the time from producing its
event to reading the alert read_committed. RSS is sampled every second.

The table is printed and written to bench/results/pipeline-<timestamp>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, TypeVar

import confluent_kafka
import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from pipeline_workload import (
    REPO,
    SEED_RULE_ID,
    Mix,
    SourceRecords,
    load_sources,
    rule_oracle,
    seed_query,
    write_aws_rules,
    write_bench_rules,
)

from consumer.cloudtrail.record import SCHEMA_TEXT
from consumer.rules import load_rules
from scripts.kafka_local import KAFKA_VERSION, LocalKafka
from tests.support.kafka import read_all

BENCH = REPO / "bench"
RESULTS = BENCH / "results"

DEFAULT_QUIX_PYTHON = (
    Path.home() / ".cache" / "cloudtrail-detector" / "quix-venv" / "bin" / "python"
)
SCHEMA_ID = 1
LATENCY_CREATE_KEY_EVERY = 100
LATENCY_MATCHING_SHARE = 0.5
"""0.5% of the latency run's events match: enough alerts for a p99 in a short run."""
POLL_S = 0.02
"""How often the start (first consumed message) and the end (committed offsets) are checked."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
Probed = TypeVar("Probed")


# --- processes --------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    children = _children()
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending += children.get(current, [])
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU of these processes (all their threads), from /proc/<pid>/stat."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def memory_kb(pids: Sequence[int], key: str) -> int:
    """Sum of a /proc/<pid>/status field (VmRSS, VmHWM) over these processes, in kB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return total


def free_port_pair() -> int:
    """A port p with p+1 free too: the detector's workers serve metrics on consecutive ports."""
    while True:
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


def stop(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- Kafka helpers ----------------------------------------------------------------------------


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, partitions, 1) for name, partitions in topics.items()],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=60)


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


class CommitWatcher:
    """Reads a group's committed offsets, to see when it has processed the whole topic."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]

    def reached(self, ends: list[int]) -> bool:
        committed = self._consumer.committed(self._partitions, timeout=10)
        return [tp.offset for tp in committed] == ends

    def close(self) -> None:
        self._consumer.close()


@contextlib.contextmanager
def schema_registry() -> Iterator[str]:
    """A stand-in Schema Registry serving our schema as id 1: what the detector asks of one."""
    body = json.dumps({"id": SCHEMA_ID, "schema": SCHEMA_TEXT, "schemaType": "AVRO"}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path.split("?")[0] == f"/schemas/ids/{SCHEMA_ID}"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.end_headers()
            self.wfile.write(body if found else b'{"error_code":40403,"message":"not found"}')

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


# --- the workload -----------------------------------------------------------------------------


@dataclass
class Loaded:
    events: int
    expected_ids: set[str]
    """The seed rule's alerts, by event id."""
    expected_rule_alerts: set[str]
    """The alerts of the Mix's rule set, as alert_keys(by_rule=True) names them."""
    seconds: float
    payload_bytes: int


def load(
    bootstrap: str, topic: str, partitions: int, *, mix: Mix, events: int, framing: bytes
) -> Loaded:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": "20",
            "batch.size": "1000000",
            "queue.buffering.max.messages": "500000",
        }
    )
    expected: set[str] = set()
    expected_rule_alerts: set[str] = set()
    size = 0
    started = time.monotonic()
    for index in range(events):
        event = next(mix)
        if event.matches:
            expected.add(event.event_id)
        expected_rule_alerts.update(f"{rule_id} {event.event_id}" for rule_id in event.rules)
        payload = framing + event.payload
        size += len(payload)
        while True:
            try:
                producer.produce(topic, payload, event.key, partition=index % partitions)
                break
            except BufferError:
                producer.poll(0.05)
        if index % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise SystemExit("the input topic could not be loaded")
    return Loaded(events, expected, expected_rule_alerts, time.monotonic() - started, size)


# --- running one variant ----------------------------------------------------------------------


@dataclass
class Variant:
    key: str
    label: str
    argv: list[str]
    env: dict[str, str]
    metrics_ports: list[int] = field(default_factory=list)
    """The detector's /metrics ports; empty for variants that report on stdout."""
    reads_only: bool = False
    """True for the raw ceiling: it reports when it has read everything and commits nothing."""
    by_rule: bool = False
    """True when it runs several rules: its alerts are told apart by (rule, event)."""


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

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


REPEATED = "adefgh"
"""The variants that take seconds, run once per round; b, c and i take minutes and run once."""


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


COMMIT_SECONDS = "cloudtrail_detector_commit_duration_seconds"


def _metric_totals(ports: list[int], family: str) -> list[float]:
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
    consumed = _metric_totals(ports, "cloudtrail_detector_messages_consumed_total")
    return [int(total) for total in consumed]


def alert_keys(messages: Sequence[confluent_kafka.Message], by_rule: bool) -> list[str]:
    """Each alert's event id, or `<rule_id> <event id>` when `by_rule`."""
    keys = []
    for message in messages:
        document = json.loads(message.value() or b"{}")
        event_id = document["event"]["id"]
        keys.append(f"{document['kibana']['alert']['rule']['rule_id']} {event_id}" if by_rule
                    else event_id)
    return keys


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
            result.commits = int(sum(_metric_totals(ports, f"{COMMIT_SECONDS}_count")))
            result.commit_wait_s = sum(_metric_totals(ports, f"{COMMIT_SECONDS}_sum"))
        result.seconds = end - start
        result.events = setup.events - consumed_before
    finally:
        stop(process)
        watcher.close()
    if alerts_topic is not None:
        ids = alert_keys(read_all(bootstrap, alerts_topic, wanted=len(expected)),
                         variant.by_rule)
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


# --- the variants -----------------------------------------------------------------------------


@dataclass
class Setup:
    bootstrap: str
    topic: str
    partitions: int
    events: int
    rules_dir: Path
    aws_rules_dir: Path | None
    """The copy of ../shared/elastic-rules/aws that h and i run; None when it is absent."""
    input_format: str
    registry_url: str | None
    quix_python: Path | None
    workers: int
    run_id: str
    broker_pid: int | None
    """The local broker's process, whose CPU is reported too; None for an external one."""


def detector_variant(
    setup: Setup, key: str, label: str, *, delivery: str, workers: int,
    topics: tuple[str, str, str], group: str, aws_rules: bool = False,
) -> Variant:
    """`aws_rules`: the copy of ../shared/elastic-rules/aws as the rules directory, with its
    seed file in the built-in's place; else the seed rule's copy, the built-in switched off."""
    input_topic, alerts_topic, dlq_topic = topics
    port = free_port_pair()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")},
        "DETECTOR_BOOTSTRAP_SERVERS": setup.bootstrap,
        "DETECTOR_INPUT_TOPICS": input_topic,
        "DETECTOR_ALERTS_TOPIC": alerts_topic,
        "DETECTOR_DLQ_TOPIC": dlq_topic,
        "DETECTOR_GROUP_ID": group,
        "DETECTOR_MEMBER_NAME": f"bench-{key}-{setup.run_id}",
        "DETECTOR_INPUT_FORMAT": setup.input_format,
        "DETECTOR_START_FROM": "earliest",
        "DETECTOR_DELIVERY": delivery,
        "DETECTOR_WORKERS": str(workers),
        "DETECTOR_RULES_DIR": str(setup.aws_rules_dir if aws_rules else setup.rules_dir),
        "DETECTOR_DISABLE_RULES": "" if aws_rules else SEED_RULE_ID,
        "DETECTOR_METRICS_HOST": "127.0.0.1",
        "DETECTOR_METRICS_PORT": str(port),
        "DETECTOR_LOG_LEVEL": "WARNING",
    }
    if setup.registry_url:
        env["DETECTOR_SCHEMA_REGISTRY_URL"] = setup.registry_url
    return Variant(key, label, [sys.executable, "-m", "consumer", "run"], env,
                   metrics_ports=[port + worker for worker in range(workers)], by_rule=aws_rules)


def reference_variant(setup: Setup, key: str, label: str, group: str, alerts_topic: str) -> Variant:
    kind = {"a": "raw", "b": "naive", "g": "raw-split", "i": "naive"}[key]
    rules_dir = setup.aws_rules_dir if key == "i" else setup.rules_dir
    argv = [sys.executable, str(BENCH / "pipeline_variants.py"), kind,
            "--bootstrap", setup.bootstrap, "--topic", setup.topic, "--group", group,
            "--messages", str(setup.events), "--alerts-topic", alerts_topic,
            "--rules-dir", str(rules_dir), "--partitions", str(setup.partitions),
            "--processes", str(setup.workers)]
    if setup.input_format == "avro-registry":
        argv.append("--framed")
    if key == "i":
        argv.append("--all-rules")
    return Variant(key, label, argv, dict(os.environ), reads_only=kind != "naive",
                   by_rule=key == "i")


def quix_variant(setup: Setup, group: str, alerts_topic: str) -> Variant | None:
    if setup.quix_python is None:
        return None
    argv = [str(setup.quix_python), str(BENCH / "quix_variant.py"),
            "--bootstrap", setup.bootstrap, "--topic", setup.topic, "--group", group,
            "--alerts-topic", alerts_topic, "--rules-dir", str(setup.rules_dir)]
    if setup.input_format == "avro-registry":
        argv.append("--framed")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    return Variant("c", "Quix Streams, exactly-once", argv, env)


def find_quix_python(requested: str | None) -> tuple[Path | None, str]:
    """An interpreter that imports quixstreams, and its version (or why there is none)."""
    candidates = [Path(requested)] if requested else [Path(sys.executable), DEFAULT_QUIX_PYTHON]
    for candidate in candidates:
        if not candidate.exists():
            continue
        probe = subprocess.run(
            [str(candidate), "-c", "import quixstreams; print(quixstreams.__version__)"],
            capture_output=True, text=True, check=False,
        )
        if probe.returncode == 0:
            return candidate, probe.stdout.strip()
    return None, "quixstreams is not importable by " + ", ".join(map(str, candidates))


# --- latency ----------------------------------------------------------------------------------


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
        framing = _framing(setup.input_format)
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
            producer.produce(input_topic, framing + event.payload, event.key,
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


def _framing(input_format: str) -> bytes:
    return b"\x00" + SCHEMA_ID.to_bytes(4, "big") if input_format == "avro-registry" else b""


# --- the report -------------------------------------------------------------------------------


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
    raw_scaling = ratio("g", "a")
    if raw_scaling:
        lines.append(f"- for comparison, the raw ceiling's own scaling (g) / (a): "
                     f"{raw_scaling:.2f}x")
    if latency is not None and latency.latencies_ms:
        check("latency p99", latency.percentile(0.99), 100, " ms", lower=True)
        check("RSS max during the latency run", max(latency.rss_mb), 200, " MB", lower=True)
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
    ]


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--format", choices=["avro", "avro-registry"], default="avro",
                        help="schemaless Avro, or Avro in the Schema Registry wire format "
                        "(served by a stand-in registry)")
    parser.add_argument("--latency-rate", type=float, default=5000)
    parser.add_argument("--latency-seconds", type=float, default=30)
    parser.add_argument("--quick", action="store_true",
                        help="100k events and a 10 s latency run, for a fast sanity check")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                        help="workers of variant f (default: the CPU count)")
    parser.add_argument("--quix-python", help="an interpreter with quixstreams installed "
                        f"(default: this one, else {DEFAULT_QUIX_PYTHON})")
    parser.add_argument("--variants", default="abcdefghi",
                        help="which variants to run, e.g. 'ad' (default: all)")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--rounds", type=int, default=3,
                        help=f"runs of the fast variants ({REPEATED}), interleaved; the table "
                        "gives each one's median and ratios taken within a round (default 3)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
        args.events = min(args.events, 100_000)
        args.latency_seconds = min(args.latency_seconds, 10)
    return args


@contextlib.contextmanager
def broker() -> Iterator[tuple[str, int | None]]:
    """The bootstrap address, and the broker's pid when it is local."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external, None
        return
    # Kafka's default rebalance delay (the test broker sets 0): the detector's workers, started
    # together, then join the group's first generation together instead of one reading alone.
    local = LocalKafka(
        workdir=Path(tempfile.mkdtemp(prefix="pipeline-bench-kafka-")),
        extra_config={"group.initial.rebalance.delay.ms": "3000"},
    )
    local.start()
    assert local.process is not None
    try:
        yield local.bootstrap_servers, local.process.pid
    finally:
        local.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = uuid.uuid4().hex[:8]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    rules_dir = write_bench_rules(work / "rules")
    aws_rules_dir = write_aws_rules(work / "aws-rules")
    sources = load_sources(seed_query())
    oracle = None
    if aws_rules_dir is not None and any(key in args.variants for key in "hi"):
        oracle = rule_oracle([rule for rule in load_rules(aws_rules_dir) if rule.enabled])
    quix_python, quix_version = find_quix_python(args.quix_python)
    args.quix_why = quix_version
    if quix_python is None and "c" in args.variants:
        print(f"variant c skipped: {quix_version}", file=sys.stderr)
    command = "bench/pipeline_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with contextlib.ExitStack() as stack:
        bootstrap, broker_pid = stack.enter_context(broker())
        external = broker_pid is None
        registry_url = (
            stack.enter_context(schema_registry()) if args.format == "avro-registry" else None
        )
        setup = Setup(bootstrap, f"bench-input-{run_id}", args.partitions, args.events,
                      rules_dir, aws_rules_dir, args.format, registry_url, quix_python,
                      args.workers, run_id, broker_pid)
        load_average = os.getloadavg()
        create_topics(bootstrap, {setup.topic: args.partitions})
        print(f"loading {args.events:,} events ({sources.origin}) into {setup.topic} ...",
              file=sys.stderr)
        loaded = load(bootstrap, setup.topic, args.partitions,
                      mix=Mix(sources, seed=20251129, oracle=oracle), events=args.events,
                      framing=_framing(args.format))
        ends = end_offsets(bootstrap, setup.topic, args.partitions)
        print(f"loaded in {loaded.seconds:.1f} s, {loaded.payload_bytes / args.events:.0f} "
              f"bytes per event; {len(loaded.expected_ids)} alerts expected "
              f"({len(loaded.expected_rule_alerts)} with every AWS rule)", file=sys.stderr)
        rows = run_variants(setup, args, ends, loaded, work)
        latency = None
        if not args.no_latency:
            print(f"latency: {args.latency_rate:,.0f} events/s for {args.latency_seconds:.0f} s "
                  "...", file=sys.stderr)
            latency = measure_latency(setup, sources, args.latency_rate, args.latency_seconds,
                                      work)
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
           f"({len(oracle.rules)} rules)"
           if oracle else ""),
        f"- load average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_average)}; "
        f"after: {' '.join(f'{x:.2f}' for x in load_after)}",
        "",
        *table(summaries),
        "",
    ]
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


def run_variants(
    setup: Setup, args: argparse.Namespace, ends: list[int], loaded: Loaded, work: Path
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
        if key in "hi" and setup.aws_rules_dir is None:
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
        else:
            raise SystemExit(f"unknown variant {key!r}")
        if variant is None:
            rows.append(Measurement(key, "Quix Streams, exactly-once", skipped=args.quix_why))
            continue
        if key not in "ag":
            create_topics(setup.bootstrap, {alerts_topic: 1, dlq_topic: 1})
        print(f"({key}) {variant.label}, round {round_index + 1} ...", file=sys.stderr)
        row = measure(variant, setup, ends=ends, group=group,
                      alerts_topic=None if key in "ag" else alerts_topic,
                      expected=loaded.expected_rule_alerts if variant.by_rule
                      else loaded.expected_ids,
                      log_dir=work, deadline_s=120 + setup.events / (200 if key == "i" else 2000))
        row.round = round_index
        if row.seconds:
            print(f"    {row.rate:,.0f} events/s, {row.cpu_s:.1f} CPU s, "
                  f"{row.peak_rss_mb:.0f} MB, alerts {row.alerts}", file=sys.stderr)
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
