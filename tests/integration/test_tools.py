"""The commands a new user runs first, against the real broker: replay (under the default
exactly-once settings, to a missing topic, to a dead broker), topics create, dlq show|replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from scripts.kafka_local import free_port
from tests.conftest import Broker, TopicFactory
from tests.support.events import create_access_key, event
from tests.support.kafka import REPO, read_all

EXIT_OK, EXIT_FATAL = 0, 1


def cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    return subprocess.run(
        [sys.executable, "-m", "consumer", *argv], cwd=REPO, env={**environment, **(env or {})},
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def export(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "events.json"
    records = [event(event_id=f"e-{n}") for n in range(count - 1)]
    records.append(create_access_key(event_id="key-1", caller="mallory", target="bob"))
    path.write_text(json.dumps({"Records": records}))
    return path


def test_replay_under_the_default_exactly_once_settings_delivers_every_record(
    broker: Broker, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic("in", partitions=2)

    finished = cli("replay", str(export(tmp_path, 65)), "--topic", topic,
                   "--bootstrap-servers", broker.bootstrap_servers,
                   env={"DETECTOR_DELIVERY": "exactly-once", "DETECTOR_MEMBER_NAME": "m"})

    assert finished.returncode == EXIT_OK, finished.stderr
    assert finished.stderr.splitlines()[-1] == f"65 of 65 records delivered to {topic}"
    assert len(read_all(broker.bootstrap_servers, topic, wanted=65)) == 65


def test_replay_to_a_missing_topic_fails_at_once_naming_it(
    broker: Broker, tmp_path: Path
) -> None:
    topic = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()

    finished = cli("replay", str(export(tmp_path, 3)), "--topic", topic,
                   "--bootstrap-servers", broker.bootstrap_servers)

    assert finished.returncode == EXIT_FATAL
    assert f"topic {topic} does not exist" in finished.stderr
    assert "topics create" in finished.stderr
    assert time.monotonic() - started < 15


def test_replay_to_a_dead_broker_fails_saying_it_cannot_reach_kafka(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"

    finished = cli("replay", str(export(tmp_path, 3)), "--topic", "t", "--bootstrap-servers",
                   dead)

    assert finished.returncode == EXIT_FATAL
    assert f"cannot reach Kafka at {dead}" in finished.stderr
    assert "delivered" not in finished.stderr


def test_topics_create_makes_the_detector_topics_once(broker: Broker) -> None:
    base = f"fresh-{uuid.uuid4().hex[:8]}"
    argv = ("topics", "create", "--bootstrap-servers", broker.bootstrap_servers,
            "--input-topics", base, "--alerts-topic", f"{base}-alerts", "--partitions", "3",
            "--replication-factor", "1")

    first = cli(*argv)
    again = cli(*argv)

    assert first.returncode == EXIT_OK, first.stderr
    assert sorted(first.stdout.splitlines()) == sorted(
        [f"created: {base}", f"created: {base}-alerts", f"created: {base}.dlq"]
    )
    assert sorted(again.stdout.splitlines()) == sorted(
        [f"exists: {base}", f"exists: {base}-alerts", f"exists: {base}.dlq"]
    )
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    assert len(producer.list_topics(base, timeout=10).topics[base].partitions) == 3


def dead_letter_headers(source: str, offset: int, reason: str) -> list[tuple[str, bytes]]:
    return [("trace", b"t-1"), ("dlq.reason", reason.encode()),
            ("dlq.error", b"not valid UTF-8 JSON"), ("dlq.source.topic", source.encode()),
            ("dlq.source.partition", b"0"), ("dlq.source.offset", str(offset).encode())]


def test_dlq_show_prints_each_dead_letter_with_its_headers_and_replay_sends_fixed_ones_back(
    broker: Broker, new_topic: TopicFactory, tmp_path: Path
) -> None:
    source, dlq = new_topic("in"), new_topic("dlq")
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    producer.produce(dlq, key=b"k-1", value=b"{broken", headers=dead_letter_headers(
        source, 7, "invalid-json"))
    producer.produce(dlq, key=b"k-2", value=b"", headers=dead_letter_headers(source, 8, "empty"))
    assert producer.flush(30) == 0
    settings = ("--bootstrap-servers", broker.bootstrap_servers, "--dlq-topic", dlq)

    shown = cli("dlq", "show", *settings)

    assert shown.returncode == EXIT_OK, shown.stderr
    letters: list[dict[str, Any]] = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [(x["key"], x["value"], x["reason"]) for x in letters] == [
        ("k-1", "{broken", "invalid-json"), ("k-2", "", "empty")]
    assert letters[0]["source"] == {"topic": source, "partition": 0, "offset": 7}
    assert letters[0]["headers"]["trace"] == "t-1"

    fixed = tmp_path / "fixed.jsonl"
    letters[0]["value"] = json.dumps(create_access_key(event_id="fixed", caller="a", target="b"))
    fixed.write_text(json.dumps(letters[0]) + "\n")
    sent = cli("dlq", "replay", *settings, "--file", str(fixed))

    assert sent.returncode == EXIT_OK, sent.stderr
    replayed = read_all(broker.bootstrap_servers, source, wanted=1)
    assert [(m.key(), m.value(), m.headers()) for m in replayed] == [
        (b"k-1", letters[0]["value"].encode(), [("trace", b"t-1")])]

    again = cli("dlq", "replay", *settings, "--reason", "empty")

    assert again.returncode == EXIT_OK, again.stderr
    assert again.stderr.splitlines()[-1].startswith("1 of 1 records delivered")
    assert len(read_all(broker.bootstrap_servers, source, wanted=2)) == 2
