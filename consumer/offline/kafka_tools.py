"""`topics create` and `dlq show|replay`: the Kafka chores of a first hour, without Kafka's
shell scripts (which a pip install does not bring).

Dead letters are shown as JSON Lines, one object per message with its headers, key and value
(as text when it is UTF-8, else base64). The same lines are what `dlq replay --file` reads, so a
dead letter can be shown, fixed in an editor and sent back to its input topic.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.alerts.document import Headers
from consumer.kafka_properties import DLQ_READER
from consumer.offline.replay import ReplayError, ReplayResult

ADMIN_TIMEOUT_S = 15.0

DLQ_HEADER_PREFIX = "dlq."


def create_topics(
    client_config: dict[str, str], names: Iterable[str], partitions: int, replication: int
) -> list[tuple[str, str]]:
    """Create each topic that does not exist yet; returns (topic, "created" | "exists")."""
    admin = AdminClient(dict(client_config))
    wanted = list(dict.fromkeys(names))
    try:
        existing = set(admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics)
    except KafkaException as error:
        raise ReplayError(f"cannot reach Kafka: {error.args[0].str()}") from None
    outcome = [(name, "exists") for name in wanted if name in existing]
    missing = [name for name in wanted if name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=replication)
             for name in missing],
            operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S,
        )
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as error:
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise ReplayError(f"cannot create {name}: {error.args[0].str()}") from None
                outcome.append((name, "exists"))
            else:
                outcome.append((name, "created"))
    return outcome


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "partition": self.partition,
            "offset": self.offset,
            "reason": self.header("dlq.reason"),
            "error": self.header("dlq.error"),
            "source": {
                "topic": self.header("dlq.source.topic"),
                "partition": _int_or_none(self.header("dlq.source.partition")),
                "offset": _int_or_none(self.header("dlq.source.offset")),
            },
            "headers": {k: v.decode("utf-8", "replace") for k, v in self.headers},
        }
        document.update(_encoded("key", self.key))
        document.update(_encoded("value", self.value))
        return document


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def _encoded(name: str, data: bytes | None) -> dict[str, str | None]:
    if data is None:
        return {name: None}
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode()}


def _decoded(document: dict[str, Any], name: str) -> bytes | None:
    if f"{name}_base64" in document:
        return base64.b64decode(document[f"{name}_base64"])
    value = document.get(name)
    return value.encode("utf-8") if isinstance(value, str) else None


def read_dead_letters(client_config: dict[str, str], topic: str) -> Iterator[DeadLetter]:
    """Every committed message of the dead-letter topic, from the start to the end each
    partition had when it was reached. Commits no offsets: reading the DLQ changes nothing."""
    consumer = Consumer({
        **client_config,
        "group.id": f"cloudtrail-detector-dlq-{uuid.uuid4().hex}",
        **DLQ_READER.values(),
    })
    try:
        try:
            metadata = consumer.list_topics(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as error:
            raise ReplayError(f"cannot reach Kafka: {error.args[0].str()}") from None
        if topic not in metadata.topics:
            raise ReplayError(f"topic {topic} does not exist")
        reading = set(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in reading])
        while reading:
            for message in consumer.consume(500, 1.0):
                problem = message.error()
                if problem is None:
                    yield _dead_letter_of(message)
                elif problem.code() == KafkaError._PARTITION_EOF:
                    reading.discard(message.partition() or 0)
                else:
                    raise ReplayError(f"reading {topic} failed: {problem.str()}")
    finally:
        consumer.close()


def _dead_letter_of(message: Message) -> DeadLetter:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = [(k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in pairs]
    return DeadLetter(message.partition() or 0, message.offset() or 0, message.key(),
                      message.value(), headers)


def show(letters: Iterable[DeadLetter], output: TextIO, reason: str | None, limit: int | None
         ) -> int:
    shown = 0
    for letter in letters:
        if limit is not None and shown >= limit:
            break
        if reason is None or letter.header("dlq.reason") == reason:
            output.write(json.dumps(letter.to_json(), ensure_ascii=False) + "\n")
            shown += 1
    return shown


def letters_from_file(lines: Iterable[str]) -> Iterator[DeadLetter]:
    """Dead letters as `dlq show` wrote them, possibly edited."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
            headers = [(k, str(v).encode()) for k, v in document.get("headers", {}).items()]
            yield DeadLetter(int(document.get("partition", -1)), int(document.get("offset", -1)),
                             _decoded(document, "key"), _decoded(document, "value"), headers)
        except (ValueError, TypeError, AttributeError) as error:
            raise ReplayError(f"line {number}: not a dead letter as dlq show writes it: {error}"
                              ) from None


def send_back(
    producer: Producer, letters: Iterable[DeadLetter], topic: str | None, reason: str | None
) -> ReplayResult:
    """Produce each dead letter's key and value to `topic`, or to the topic it came from, with
    its original headers (without the dlq.* ones): the detector judges it again."""
    result = ReplayResult()

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        if error is None:
            result.delivered += 1
        else:
            result.failures[error.str()] += 1

    for letter in letters:
        if reason is not None and letter.header("dlq.reason") != reason:
            continue
        target = topic or letter.header("dlq.source.topic")
        if target is None:
            raise ReplayError(
                f"dead letter at offset {letter.offset} has no dlq.source.topic: give --topic"
            )
        headers: Headers = [
            (k, v) for k, v in letter.headers if not k.startswith(DLQ_HEADER_PREFIX)
        ]
        producer.produce(target, value=letter.value, key=letter.key, headers=headers,
                         on_delivery=on_delivery)
        producer.poll(0)
        result.sent += 1
    producer.flush(60)
    return result
