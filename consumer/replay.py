"""Replay CloudTrail files into a topic, as Avro (bare or Schema Registry) or JSON.

For demos, load tests and reproducing an incident. Records are keyed by account, so the
default partitioner sends one account's events to one partition, in file order.
"""

from __future__ import annotations

import io
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro import schemaless_writer

from consumer.envelopes import Shape, wrap
from consumer.files import expand, read_records
from consumer.record import READER_SCHEMA, SCHEMA_TEXT, json_to_avro

ReplayFormat = Literal["avro", "avro-registry", "json"]
Encoder = Callable[[dict[str, Any]], bytes]
REPLAY_NAMESPACE = uuid.UUID("2b0c7d1e-5f57-4c2a-8d0a-6a1f6f0e4d21")


def avro_encoder() -> Encoder:
    def encode(record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        schemaless_writer(buffer, READER_SCHEMA, json_to_avro(record))
        return buffer.getvalue()

    return encode


def registry_encoder(client: SchemaRegistryClient, subject: str) -> Encoder:
    """Confluent wire format: registers our schema under `subject` once, then prefixes its id."""
    schema_id = client.register_schema(subject, Schema(SCHEMA_TEXT, "AVRO"))
    header = b"\x00" + schema_id.to_bytes(4, "big")
    body = avro_encoder()
    return lambda record: header + body(record)


def json_encoder() -> Encoder:
    return lambda record: json.dumps(record, separators=(",", ":")).encode()


def envelope_encoder(shape: Shape) -> Encoder:
    """JSON in one of the envelopes CloudTrail arrives in (EventBridge, CloudWatch Logs...),
    one record per message, so users and tests can feed every shape the detector reads."""
    return lambda record: wrap([record], shape)


def account_of(record: dict[str, Any]) -> bytes | None:
    identity = record.get("userIdentity")
    account = record.get("recipientAccountId") or (
        identity.get("accountId") if isinstance(identity, dict) else None
    )
    return account.encode() if isinstance(account, str) else None


@dataclass
class ReplayOptions:
    rate: float | None = None
    """Records per second; None for as fast as the broker takes them."""
    loop: bool = False
    """Replay again and again; each pass gets fresh eventIDs so alerts stay distinct."""
    retime: bool = False
    """Set eventTime to the moment of sending, for realistic event-to-alert latency."""


def _records(paths: Sequence[Path], options: ReplayOptions) -> Iterator[dict[str, Any]]:
    files = expand(paths)
    passes = 0
    while True:
        for path in files:
            for item in read_records(path):
                if not isinstance(item.record, dict):
                    continue
                record = dict(item.record)
                if passes and "eventID" in record:
                    record["eventID"] = str(
                        uuid.uuid5(REPLAY_NAMESPACE, f"{record['eventID']}:{passes}")
                    )
                if options.retime:
                    record["eventTime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                yield record
        passes += 1
        if not options.loop:
            return


def replay(
    paths: Sequence[Path],
    producer: Producer,
    topic: str,
    encode: Encoder,
    options: ReplayOptions,
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Produce the records of `paths`; returns how many were sent."""
    sent = 0
    started = time.monotonic()
    show_progress = sys.stderr.isatty()
    for record in _records(paths, options):
        if should_stop():
            break
        if options.rate:
            due = started + sent / options.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        while True:
            try:
                producer.produce(topic, value=encode(record), key=account_of(record))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        sent += 1
        if show_progress and sent % 1000 == 0:
            rate = sent / max(time.monotonic() - started, 1e-9)
            print(f"\r{sent} records sent ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
    producer.flush(60)
    if show_progress:
        print(f"\r{sent} records sent", file=sys.stderr)
    return sent
