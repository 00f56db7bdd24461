"""Replay CloudTrail files into a topic, as Avro (bare or Schema Registry) or JSON.

For demos, load tests and reproducing an incident. Records are keyed by account, so the
default partitioner sends one account's events to one partition, in file order. Every message's
delivery report is counted: the caller learns how many the broker acknowledged, and a missing
topic or an unreachable broker is found before the first record is sent.
"""

from __future__ import annotations

import io
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro import schemaless_writer

from consumer.cloudtrail.envelopes import Shape, wrap
from consumer.cloudtrail.files import expand, read_records
from consumer.cloudtrail.record import READER_SCHEMA, SCHEMA_TEXT, json_to_avro
from consumer.kafka_properties import REPLAY_DELIVERY_TIMEOUT_MS, TOOLS_PRODUCER_DEFAULTS

ReplayFormat = Literal["avro", "avro-registry", "json"]
Encoder = Callable[[dict[str, Any]], bytes]
REPLAY_NAMESPACE = uuid.UUID("2b0c7d1e-5f57-4c2a-8d0a-6a1f6f0e4d21")

METADATA_TIMEOUT_S = 10.0
"""How long the pre-flight check waits for the broker's topic list."""

class ReplayError(Exception):
    """Replay cannot start: the topic is missing, or the broker or registry unreachable."""


def producer_settings(config: dict[str, str]) -> dict[str, str]:
    """The replay producer: given settings, a bounded delivery timeout unless set already."""
    return {**TOOLS_PRODUCER_DEFAULTS.values(), **config}


def check_topic(producer: Producer, topic: str, bootstrap: str) -> None:
    """Fail fast instead of queueing records for a topic that is not there. The full topic
    list is asked for, not the topic itself: a producer's metadata request for one topic may
    create it on a broker with auto.create.topics.enable."""
    try:
        topics = producer.list_topics(timeout=METADATA_TIMEOUT_S).topics
    except KafkaException as error:
        raise ReplayError(f"cannot reach Kafka at {bootstrap}: {error.args[0].str()}") from None
    if topic not in topics:
        raise ReplayError(
            f"topic {topic} does not exist at {bootstrap}: create it first "
            f"(cloudtrail-detector topics create)"
        )


def avro_encoder() -> Encoder:
    def encode(record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        schemaless_writer(buffer, READER_SCHEMA, json_to_avro(record))
        return buffer.getvalue()

    return encode


def registry_encoder(client: SchemaRegistryClient, subject: str) -> Encoder:
    """Confluent wire format: registers our schema under `subject` once, then prefixes its id."""
    try:
        schema_id = client.register_schema(subject, Schema(SCHEMA_TEXT, "AVRO"))
    except Exception as error:  # httpx, SchemaRegistryError: all mean "cannot register"
        raise ReplayError(f"cannot register the schema under {subject}: {error}") from None
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


@dataclass
class ReplayResult:
    """What was sent and what the broker acknowledged."""

    sent: int = 0
    delivered: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    """Failed deliveries by error text."""

    @property
    def complete(self) -> bool:
        return self.delivered == self.sent

    def summary(self, topic: str) -> str:
        text = f"{self.delivered} of {self.sent} records delivered to {topic}"
        if self.failures:
            text += "; failed: " + ", ".join(f"{n} x {e}" for e, n in self.failures.items())
        unreported = self.sent - self.delivered - sum(self.failures.values())
        if unreported:
            text += f"; {unreported} without a delivery report"
        return text


def replay(
    paths: Sequence[Path],
    producer: Producer,
    topic: str,
    encode: Encoder,
    options: ReplayOptions,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    flush_timeout_s: float = REPLAY_DELIVERY_TIMEOUT_MS / 1000 + 5,
) -> ReplayResult:
    """Produce the records of `paths` and wait for every delivery report."""
    result = ReplayResult()
    started = time.monotonic()
    show_progress = sys.stderr.isatty()

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        if error is None:
            result.delivered += 1
        else:
            result.failures[error.str()] += 1

    for record in _records(paths, options):
        if should_stop() or result.failures:  # a failed delivery ends the replay
            break
        if options.rate:
            due = started + result.sent / options.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        while True:
            try:
                producer.produce(
                    topic, value=encode(record), key=account_of(record), on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        result.sent += 1
        if show_progress and result.sent % 1000 == 0:
            rate = result.sent / max(time.monotonic() - started, 1e-9)
            print(f"\r{result.sent} records sent ({rate:,.0f}/s)", end="", file=sys.stderr,
                  flush=True)
    producer.flush(flush_timeout_s)
    if show_progress:
        print(file=sys.stderr)
    return result
