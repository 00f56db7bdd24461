"""Driving the real detector process and reading what it wrote, for integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.offline.replay import account_of, avro_encoder, json_encoder
from scripts.kafka_local import LocalKafka, free_port

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def local_broker(workdir: Path) -> Iterator[LocalKafka]:
    """A local KRaft broker in `workdir` for the block; stopped after it, its files kept for
    the logs (`running_broker` removes them)."""
    local = LocalKafka(workdir=workdir)
    local.start()
    try:
        yield local
    finally:
        local.stop()


def produce(
    bootstrap: str, topic: str, records: Iterable[dict[str, Any]], fmt: str = "avro"
) -> int:
    encode = avro_encoder() if fmt == "avro" else json_encoder()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "10"})
    count = 0
    for record in records:
        producer.produce(topic, value=encode(record), key=account_of(record))
        count += 1
        if count % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return count


def produce_raw(
    bootstrap: str, topic: str, values: Iterable[tuple[bytes | None, bytes | None]]
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in values:
        producer.produce(topic, value=value, key=key)
    assert producer.flush(60) == 0


def read_all(bootstrap: str, topic: str, *, wanted: int, timeout: float = 60) -> list[Message]:
    """Every committed message of `topic` (read_committed, from the start): waits until at
    least `wanted` arrived, then drains to the end so extra (duplicate) messages show up too."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": "false",
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, timeout=0.5)
            batch = [m for m in batch if m.error() is None or _fatal(m.error())]
            messages += batch
            if batch:
                quiet_since = None
            elif len(messages) >= wanted:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= 1.0:
                    break
    finally:
        consumer.close()
    return messages


def _fatal(error: KafkaError | None) -> bool:
    if error is None:
        return False
    raise AssertionError(f"consumer error: {error}")


def alert_event_ids(messages: Iterable[Message]) -> list[str]:
    return [json.loads(m.value() or b"{}")["event"]["id"] for m in messages]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Topics:
    input: str
    alerts: str
    dlq: str


class DetectorProcess:
    """`python -m consumer run` as a real child process, configured by environment."""

    def __init__(
        self, bootstrap: str, topics: Topics, log_dir: Path, *, group: str,
        member: str = "member-a", extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"detector-{member}-{uuid.uuid4().hex[:6]}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")},
            "DETECTOR_BOOTSTRAP_SERVERS": bootstrap,
            "DETECTOR_INPUT_TOPICS": topics.input,
            "DETECTOR_ALERTS_TOPIC": topics.alerts,
            "DETECTOR_DLQ_TOPIC": topics.dlq,
            "DETECTOR_GROUP_ID": group,
            "DETECTOR_MEMBER_NAME": member,
            "DETECTOR_INPUT_FORMAT": "avro",
            "DETECTOR_START_FROM": "earliest",
            "DETECTOR_METRICS_HOST": "127.0.0.1",
            "DETECTOR_METRICS_PORT": str(self.port),
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DetectorProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "consumer", "run"],
                env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )
        return self

    def http_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(lambda: self._alive_or_fail() and self.http_status("/readyz") == 200,
                   timeout, f"detector ready (log {self.log_path})")

    def _alive_or_fail(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"detector exited with {self.process.returncode}:\n{self.log()[-3000:]}"
            )
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


COORDINATOR_NOT_READY = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offsets; OFFSET_INVALID while its new coordinator is not ready."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=30
        )
    except KafkaException as error:
        if error.args[0].code() not in COORDINATOR_NOT_READY:
            raise
        return [OFFSET_INVALID] * partitions
    finally:
        consumer.close()
    return [tp.offset for tp in committed]


def create_topics(
    bootstrap: str, topics: Mapping[str, int], config: Mapping[str, str] | None = None
) -> None:
    """Create `topics` (name -> partitions, one replica), each with topic `config`."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, partitions, 1, config=dict(config or {}))
         for name, partitions in topics.items()],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=60)


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"w-{uuid.uuid4().hex}"})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


def wait_all_committed(bootstrap: str, group: str, topic: str, partitions: int,
                       timeout: float = 90) -> list[int]:
    """The end offsets, once the group has committed every message of `topic`."""
    ends = end_offsets(bootstrap, topic, partitions)
    wait_until(
        lambda: [max(c, 0) for c in committed_offsets(bootstrap, group, topic, partitions)]
        == ends,
        timeout, f"group {group} to commit {ends} on {topic}",
    )
    return ends
