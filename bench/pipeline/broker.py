"""The broker side of a run: the broker, topics, loading the input, a stand-in Schema Registry,
and watching a group's committed offsets.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.pipeline.workload import Mix
from consumer.cloudtrail.record import SCHEMA_TEXT
from scripts.kafka_local import LocalKafka

SCHEMA_ID = 1


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


def framing(input_format: str) -> bytes:
    return b"\x00" + SCHEMA_ID.to_bytes(4, "big") if input_format == "avro-registry" else b""

