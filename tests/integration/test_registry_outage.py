"""A Schema Registry outage against the real detector process: input in the Confluent wire format
whose schema id the detector has never seen, while the registry answers 503 and 500.

The decode error is "retry later", not poison: the partition is sought back and paused for
RETRY_LATER_BACKOFF_S, then read again. Nothing is dead-lettered, no alert is lost or doubled,
and once the registry is back the group commits the end of every partition.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from fastavro import schemaless_writer

from consumer.cloudtrail.record import READER_SCHEMA, SCHEMA_TEXT, json_to_avro
from consumer.offline.replay import account_of
from consumer.stream.service import RETRY_LATER_BACKOFF_S
from tests.conftest import Broker, TopicFactory
from tests.support.events import mixed_workload
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    alert_event_ids,
    committed_offsets,
    read_all,
    wait_all_committed,
    wait_until,
)
from tests.support.metrics import Scrape, scrape

PARTITIONS = 3
SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
SCHEMA_ID = 4242
"""The id our schema has in the stand-in registry: one the detector has never cached."""

OUTAGE_STATUSES = (503, 500)
"""What the registry answers while it is down, in turn: both are 5xx, neither is "not found"."""


@dataclass(frozen=True)
class Request:
    at: float
    path: str
    status: int


class StubRegistry:
    """A Schema Registry on loopback serving our schema as SCHEMA_ID, down until `restore()`.

    Every GET is recorded with the status it got, so a test can see that the detector asked
    during the outage, and again once the registry came back.
    """

    def __init__(self) -> None:
        self.available = threading.Event()
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> StubRegistry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def restore(self) -> None:
        self.available.set()

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def refused(self) -> list[Request]:
        return [r for r in self.requests() if r.status in OUTAGE_STATUSES]

    def served(self) -> list[Request]:
        return [r for r in self.requests() if r.status == 200]

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?")[0]
        with self._lock:
            if not self.available.is_set():
                refused = len([r for r in self._requests if r.status in OUTAGE_STATUSES])
                status = OUTAGE_STATUSES[refused % len(OUTAGE_STATUSES)]
                body: dict[str, object] = {
                    "error_code": status * 100 + 1,
                    "message": "schema registry is down for the test",
                }
            elif path == f"/schemas/ids/{SCHEMA_ID}":
                status, body = 200, {"schema": SCHEMA_TEXT}
            else:
                status, body = 404, {"error_code": 40403, "message": "Schema not found"}
            self._requests.append(Request(time.monotonic(), handler.path, status))
        payload = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


@pytest.fixture
def registry() -> Iterator[StubRegistry]:
    stub = StubRegistry().start()
    yield stub
    stub.stop()


@pytest.fixture
def topics(new_topic: TopicFactory) -> Topics:
    return Topics(input=new_topic("in", partitions=PARTITIONS), alerts=new_topic("alerts"),
                  dlq=new_topic("dlq"))


def wire_format(record: dict[str, Any]) -> bytes:
    """Magic byte 0, the 4-byte big-endian schema id, then the Avro body."""
    body = io.BytesIO()
    schemaless_writer(body, READER_SCHEMA, json_to_avro(record))
    return b"\x00" + SCHEMA_ID.to_bytes(4, "big") + body.getvalue()


def produce_spread(bootstrap: str, topic: str, records: Sequence[dict[str, Any]]) -> None:
    """Record n to partition n % PARTITIONS, keyed by account (mixed_workload cycles accounts
    with the same period), so every partition holds messages and matches."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "10"})
    for index, record in enumerate(records):
        producer.produce(topic, value=wire_format(record), key=account_of(record),
                         partition=index % PARTITIONS)
    assert producer.flush(60) == 0


def live_metrics(detector: DetectorProcess) -> Scrape | None:
    """The detector's /metrics, or None while its endpoint is not up; fails if it exited."""
    assert detector.process is not None
    if detector.process.poll() is not None:
        raise AssertionError(
            f"detector exited with {detector.process.returncode}:\n{detector.log()[-3000:]}"
        )
    try:
        return scrape(detector.port)
    except OSError:
        return None


@dataclass(frozen=True)
class Retry:
    """A "retry later" the detector logged: partition, offset to read again from, wall time."""

    partition: int
    offset: int
    at: float


def logged_retries(log: str, topic: str) -> list[Retry]:
    """The detector's "retrying in 5s" warnings for `topic`, with their log timestamps (the
    default logging format: local time, milliseconds after a comma)."""
    pattern = re.compile(
        rf"^(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}}) WARNING .* {re.escape(topic)}"
        rf"\[(\d+)\]@(\d+): registry .*; retrying in {RETRY_LATER_BACKOFF_S:.0f}s$",
        re.M,
    )
    return [
        Retry(int(partition), int(offset),
              datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
        for stamp, partition, offset in pattern.findall(log)
    ]


def origin_of(event_id: str) -> tuple[int, int]:
    """Partition and offset of a mixed_workload event as produce_spread wrote it."""
    index = int(event_id.rsplit("-", 1)[1])
    return index % PARTITIONS, index // PARTITIONS


def alerted_at(message: Message) -> float:
    """When the detector produced the alert: the message's CreateTime, in seconds."""
    _, timestamp_ms = message.timestamp()
    return float(timestamp_ms) / 1000


def registry_unavailable_errors(detector: DetectorProcess) -> float:
    metrics = live_metrics(detector)
    return 0.0 if metrics is None else metrics.value("decode_errors_total",
                                                     reason="registry-unavailable")


def test_registry_down_503_500_pauses_the_partition_and_rereads_it_without_loss_or_dead_letters(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess],
    registry: StubRegistry,
) -> None:
    bootstrap = broker.bootstrap_servers
    events, matches = mixed_workload(600, every=20)
    assert len(matches) == 30  # under the seed rule's max_signals: nothing is throttled
    produce_spread(bootstrap, topics.input, events)
    group = f"g-{uuid.uuid4().hex}"
    detector = DetectorProcess(
        bootstrap, topics, run_dir / "detectors", group=group,
        extra_env={
            "DETECTOR_INPUT_FORMAT": "avro-registry",
            "DETECTOR_SCHEMA_REGISTRY_URL": registry.url,
        },
    )
    detectors.append(detector.start())

    # The outage lasts until the detector has met it: asked the registry, been refused, and
    # turned the refusal into a "retry later" decode error.
    wait_until(lambda: registry_unavailable_errors(detector) > 0, 30,
               f"a registry-unavailable decode error (log {detector.log_path})")
    refused_during_outage = len(registry.refused())
    assert registry.served() == []
    assert committed_offsets(bootstrap, group, topics.input, PARTITIONS) != [
        len(events) // PARTITIONS
    ] * PARTITIONS, "the group committed everything before the outage was lifted"
    restored_at = time.monotonic()
    registry.restore()

    ends = wait_all_committed(bootstrap, group, topics.input, PARTITIONS,
                              timeout=RETRY_LATER_BACKOFF_S + 25)
    caught_up_s = time.monotonic() - restored_at
    alerts = read_all(bootstrap, topics.alerts, wanted=len(matches), timeout=30)
    dead = read_all(bootstrap, topics.dlq, wanted=0, timeout=10)
    metrics = scrape(detector.port)
    log = detector.log()

    assert ends == [len(events) // PARTITIONS] * PARTITIONS
    counts = Counter(alert_event_ids(alerts))
    assert sorted(counts) == sorted(matches), "alerts lost or unexpected"
    assert [event_id for event_id, n in counts.items() if n > 1] == [], "alerts duplicated"
    assert [(m.key(), dict(m.headers() or [])) for m in dead] == []
    assert metrics.total("dead_letters_total") == 0
    assert "dead letter" not in log
    # The outage was met, as a retriable error of the registry and nothing else.
    assert refused_during_outage > 0
    assert metrics.value("decode_errors_total", reason="registry-unavailable") > 0
    assert metrics.by_label("decode_errors_total", "reason").keys() == {"registry-unavailable"}
    retries = logged_retries(log, topics.input)
    assert retries, f"no partition was logged as paused for a retry:\n{log[-3000:]}"
    assert len(retries) == metrics.value("decode_errors_total", reason="registry-unavailable")
    # A paused partition is read again only after the backoff: no alert of an event at or past
    # its retry point was produced sooner (log times have millisecond resolution).
    first_retry = {r.partition: r for r in reversed(retries)}
    held_back = 0
    for message, event_id in zip(alerts, alert_event_ids(alerts), strict=True):
        partition, offset = origin_of(event_id)
        retry = first_retry.get(partition)
        if retry is not None and offset >= retry.offset:
            held_back += 1
            waited = alerted_at(message) - retry.at
            assert waited >= RETRY_LATER_BACKOFF_S - 0.01, (
                f"{event_id} ({partition}@{offset}) alerted {waited:.2f}s after its partition "
                f"was paused at {retry.offset}"
            )
    assert held_back > 0, "no alert came from behind a retry point: the backoff went unchecked"
    # Once back, the registry was asked again and the paused partitions were read again.
    assert len(registry.served()) >= 1
    assert all(r.path.split("?")[0] == f"/schemas/ids/{SCHEMA_ID}" for r in registry.requests())
    # Every message judged exactly once: what was read before the retry point and then again
    # from it adds up to the input, neither skipped nor counted twice.
    assert metrics.total("messages_consumed_total") == len(events)
    assert (
        metrics.value("events_decoded_total") + metrics.value("prefilter_skipped_total")
        == len(events)
    )
    assert metrics.value("alerts_total", rule_id=SEED_ID, severity="medium") == len(matches)
    assert metrics.value("transactions_total", outcome="aborted") == 0
    print(
        f"\n[registry outage] refused={refused_during_outage} served={len(registry.served())} "
        f"retries={[(r.partition, r.offset) for r in retries]} held_back_alerts={held_back} "
        f"caught_up_after_restore={caught_up_s:.1f}s"
    )
