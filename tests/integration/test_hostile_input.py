"""Hostile input against the real detector process: a flood of poison, and records built to
break a decoder (1 MiB strings, 10,000-deep JSON, invalid UTF-8, NaN, control characters).

The detector must stay one healthy process with bounded memory, dead-letter what it cannot
read, and still encode every alert so that its JSON round-trips the names it was given.
"""

from __future__ import annotations

import io
import json
import random
import re
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from fastavro import schemaless_writer

from consumer.alerts.document import FIELD_LIMIT
from consumer.cloudtrail.decode import DEFAULT_MAX_PAYLOAD_BYTES
from consumer.cloudtrail.record import READER_SCHEMA, json_to_avro
from consumer.offline.replay import avro_encoder
from tests.conftest import Broker
from tests.support.events import create_access_key, mixed_workload
from tests.support.kafka import DetectorProcess, Topics, read_all, wait_until

RSS_LIMIT_MB = 250.0
"""A detector holding a batch of 1 MiB messages, librdkafka's queues and Python: far below."""

LARGE_TOPIC = {"max.message.bytes": str(4 * 1024 * 1024)}
"""Input topics of these tests take messages over the decoder's 1 MiB limit."""


class RssSampler:
    """The resident memory of a process, sampled from /proc every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self._path = Path(f"/proc/{pid}/status")
        self.samples_mb: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def current_mb(self) -> float:
        """0 once the process has exited (a zombie has no VmRSS line)."""
        try:
            status = self._path.read_text()
        except FileNotFoundError:
            return 0.0
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        return int(match[1]) / 1024 if match else 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples_mb.append(self.current_mb())

    @property
    def peak_mb(self) -> float:
        return max(self.samples_mb, default=0.0)


def metric_total(metrics_text: str, name: str) -> float:
    """The sum of a counter over all its label sets."""
    pattern = re.compile(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", re.M)
    return sum(float(value) for value in pattern.findall(metrics_text))


def create_topics(broker: Broker, label: str, input_config: dict[str, str]) -> Topics:
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(f"{label}-in-{suffix}", f"{label}-alerts-{suffix}", f"{label}-dlq-{suffix}")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    futures = admin.create_topics([
        NewTopic(topics.input, 1, 1, config=input_config),
        NewTopic(topics.alerts, 1, 1),
        NewTopic(topics.dlq, 1, 1),
    ])
    for future in futures.values():
        future.result(timeout=30)
    return topics


def start_detector(
    broker: Broker, topics: Topics, run_dir: Path, started: list[DetectorProcess],
    env: dict[str, str],
) -> DetectorProcess:
    detector = DetectorProcess(broker.bootstrap_servers, topics, run_dir / "detectors",
                               group=f"g-{uuid.uuid4().hex}", extra_env=env)
    started.append(detector)
    detector.start()
    detector.wait_ready()
    return detector


def producer(broker: Broker) -> Producer:
    return Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": "20",
                     "message.max.bytes": LARGE_TOPIC["max.message.bytes"],
                     "queue.buffering.max.messages": "200000"})


def produce_values(
    broker: Broker, topic: str, values: Sequence[tuple[bytes, bytes | None]]
) -> None:
    sink = producer(broker)
    for index, (key, value) in enumerate(values):
        sink.produce(topic, value=value, key=key)
        if index % 5000 == 0:
            sink.poll(0)
    assert sink.flush(60) == 0


def report(scenario: str, **counts: int) -> None:
    print(f"\n[{scenario}] " + " ".join(f"{name}={value}" for name, value in counts.items()))


# --- poison flood --------------------------------------------------------------------------

FLOOD = 100_000


def decodable_only_in_part(rng: random.Random, valid: bytes) -> bytes:
    """Poison that passes the framing check: the head of a valid record, then garbage."""
    cut = rng.randrange(20, len(valid) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return valid[:cut]
    if kind == 1:
        return valid[:cut] + rng.randbytes(rng.randrange(1, 64))
    return valid + rng.randbytes(rng.randrange(1, 8))  # trailing bytes


def framing_garbage(rng: random.Random) -> bytes:
    """Poison whose very first bytes are wrong for our writer schema (eventVersion first)."""
    body = rng.randbytes(rng.randrange(8, 120))
    kind = rng.randrange(5)
    if kind == 0:
        return b"\x00" + body  # an empty eventVersion
    if kind == 1:
        return bytes([rng.randrange(1, 128, 2)]) + body  # a negative length
    if kind == 2:  # a two-byte length, over 64
        return bytes([rng.randrange(130, 256, 2), rng.randrange(1, 128)]) + body
    if kind == 3:
        return b"\x7e" + body[:20]  # a 63-byte string in a shorter payload
    return b"{" + body  # JSON-looking text


def dead_letters_reach(detector: DetectorProcess, count: int) -> bool:
    dead = metric_total(detector.metrics_text(), "cloudtrail_detector_dead_letters_total")
    return dead >= count


def header(message: Message, name: str) -> bytes:
    value = dict(message.headers() or [])[name]
    assert isinstance(value, bytes), (name, value)
    return value


@dataclass
class Flood:
    values: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    poison: int = 0
    matches: list[str] = field(default_factory=list)


def flood(prefilter: bool, seed: int, part: int) -> Flood:
    """FLOOD // 2 poison messages with a mixed workload of valid events spread among them."""
    rng = random.Random(seed)
    events, matches = mixed_workload(1000, every=25)
    for event in events:
        event["eventID"] = f"{part:08d}{event['eventID'][8:]}"
    encode = avro_encoder()
    valid = [encode(event) for event in events]
    result = Flood(matches=[f"{part:08d}{event_id[8:]}" for event_id in matches])
    every = FLOOD // 2 // len(valid)
    for index in range(FLOOD // 2):
        if index % every == 0 and index // every < len(valid):
            result.values.append((b"valid", valid[index // every]))
        body = (
            framing_garbage(rng) if prefilter else decodable_only_in_part(rng, rng.choice(valid))
        )
        result.values.append((b"poison", body))
        result.poison += 1
    return result


@pytest.mark.parametrize("prefilter", [True, False], ids=["framing-garbage", "decode-all"])
def test_a_flood_of_100k_poison_messages_is_dead_lettered_in_flat_memory_without_a_crash(
    broker: Broker, run_dir: Path, detectors: list[DetectorProcess], prefilter: bool
) -> None:
    topics = create_topics(broker, "flood", {})
    detector = start_detector(broker, topics, run_dir, detectors,
                              {"DETECTOR_PREFILTER": str(prefilter).lower(),
                               "DETECTOR_LOG_LEVEL": "ERROR"})
    assert detector.process is not None
    halves = [flood(prefilter, seed, part) for part, seed in enumerate((1129, 2026))]
    rss_after: list[float] = []

    with RssSampler(detector.process.pid) as rss:
        dead_so_far = 0
        for half in halves:
            produce_values(broker, topics.input, half.values)
            dead_so_far += half.poison
            wait_until(partial(dead_letters_reach, detector, dead_so_far), 120,
                       f"{dead_so_far} dead letters")
            rss_after.append(rss.current_mb())

    expected = [event_id for half in halves for event_id in half.matches]
    poison = sum(half.poison for half in halves)
    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(expected))
    dead = read_all(broker.bootstrap_servers, topics.dlq, wanted=poison, timeout=120)
    alert_ids = [json.loads(m.value() or b"")["event"]["id"] for m in alerts]
    counts = Counter(alert_ids)
    report(f"poison flood, {'prefilter' if prefilter else 'decode-all'}",
           sent=sum(len(half.values) for half in halves), poison=poison,
           valid=sum(len(half.values) - half.poison for half in halves),
           alerted=len(alert_ids), dlq=len(dead),
           duplicated=sum(n - 1 for n in counts.values()),
           lost=len(set(expected) - set(counts)),
           rss_peak_mb=round(rss.peak_mb), rss_growth_second_half_mb=round(
               rss_after[1] - rss_after[0]))

    assert detector.process.poll() is None
    assert sorted(alert_ids) == sorted(expected)
    assert len(dead) == poison
    assert {m.key() for m in dead} == {b"poison"}
    source_offsets = {header(m, "dlq.source.offset") for m in dead}
    assert len(source_offsets) == poison
    reasons = Counter(header(m, "dlq.reason").decode() for m in dead)
    assert set(reasons) <= {"avro-corrupt", "avro-truncated", "avro-trailing-bytes"}, reasons
    assert rss.peak_mb < RSS_LIMIT_MB
    assert rss_after[1] - rss_after[0] < 25.0, rss_after


# --- hostile values ------------------------------------------------------------------------

CALLER = "mal\x00lo\x1bry\n\r\t\x7f\u202e"
TARGET = "vic\ttim\x01\x1f \u2028\"quoted\"\\"


@dataclass
class Hostile:
    """One hostile message and what the detector must make of it."""

    name: str
    value: bytes
    alert: tuple[str, str] | None = None
    """(user.name, user.target.name) of the alert it must raise, or None for no alert."""
    dead_letter: str | None = None
    """The dlq.reason it must be dead-lettered with, or None when it must not be."""

    @property
    def event_id(self) -> str:
        return f"hostile-{self.name}"


def hostile_event(name: str, caller: str = "mallory", target: str = "victim") -> dict[str, Any]:
    return create_access_key(event_id=f"hostile-{name}", caller=caller, target=target)


def encode_avro(record: dict[str, Any], **raw_fields: str) -> bytes:
    """Our Avro encoding of `record`, with JSON-text fields replaced by `raw_fields` verbatim."""
    avro_record = json_to_avro(record)
    avro_record.update(raw_fields)
    buffer = io.BytesIO()
    schemaless_writer(buffer, READER_SCHEMA, avro_record)
    return buffer.getvalue()


def encode_json(record: dict[str, Any], **raw_fields: str) -> bytes:
    """The record's JSON text, with the given fields' values spliced in as raw JSON text."""
    placeholders = {name: f"@@{name}@@" for name in raw_fields}
    text = json.dumps({**record, **placeholders}, separators=(",", ":"))
    for name, raw in raw_fields.items():
        text = text.replace(f'"{placeholders[name]}"', raw)
    return text.encode("utf-8", "surrogatepass")


def padded_to(name: str, size: int, fmt: str) -> bytes:
    """A matching record whose requestParameters carry padding up to exactly `size` bytes."""
    record = hostile_event(name, target="victim-of-a-big-record")
    encode = encode_avro if fmt == "avro" else encode_json

    def with_padding(length: int) -> bytes:
        parameters = json.dumps({"userName": "victim-of-a-big-record", "pad": "p" * length})
        return encode(record, requestParameters=parameters)

    shortfall = size - len(with_padding(0))
    value = with_padding(shortfall)
    if len(value) != size:  # Avro's length prefix grew by a byte or two
        value = with_padding(shortfall - (len(value) - size))
    assert len(value) == size
    return value


def nested(depth: int) -> str:
    return '{"userName":"victim","deep":' + '{"a":' * depth + "1" + "}" * depth + "}"


def hostile_messages(fmt: str) -> list[Hostile]:
    encode = encode_avro if fmt == "avro" else encode_json
    json_only = fmt == "json"
    invalid_utf8 = encode(hostile_event("invalid-utf8", caller="ZZZZ")).replace(
        b"ZZZZ", b"\xff\xfe\xc0\x80"
    )
    deep_parameters = encode(hostile_event("deep-parameters"), requestParameters=nested(10_000))
    deep_elsewhere = encode(
        hostile_event("deep-elsewhere"),
        requestParameters='{"userName":"victim"}',
        additionalEventData=nested(10_000).replace('"userName":"victim",', ""),
    )
    nan = encode(hostile_event("nan"),
                 requestParameters='{"userName":"victim","durationSeconds":NaN,"x":Infinity}')
    huge_numbers = encode(
        hostile_event("huge-numbers"),
        requestParameters='{"userName":"victim","n":1e400,"m":-1e400,"big":' + "9" * 300 + "}",
    )
    messages = [
        Hostile("control-characters",
                encode(hostile_event("control-characters", CALLER, TARGET)),
                alert=(CALLER, TARGET)),
        Hostile("just-under-1MiB",
                padded_to("just-under-1MiB", DEFAULT_MAX_PAYLOAD_BYTES - 600, fmt),
                alert=("mallory", "victim-of-a-big-record")),
        Hostile("exactly-1MiB", padded_to("exactly-1MiB", DEFAULT_MAX_PAYLOAD_BYTES, fmt),
                alert=("mallory", "victim-of-a-big-record")),
        Hostile("just-over-1MiB",
                padded_to("just-over-1MiB", DEFAULT_MAX_PAYLOAD_BYTES + 1, fmt),
                dead_letter="too-large"),
        Hostile("invalid-utf8", invalid_utf8,
                dead_letter="invalid-json" if json_only else "avro-corrupt"),
        # Avro carries requestParameters as text: the record decodes, its unreadable
        # requestParameters name no target user, so the rule cannot match.
        Hostile("deep-parameters", deep_parameters,
                dead_letter="invalid-json" if json_only else None),
        Hostile("deep-elsewhere", deep_elsewhere,
                dead_letter="invalid-json" if json_only else None,
                alert=None if json_only else ("mallory", "victim")),
        Hostile("nan", nan, dead_letter="invalid-json" if json_only else None,
                alert=None if json_only else ("mallory", "victim")),
        Hostile("huge-numbers", huge_numbers, alert=("mallory", "victim")),
        # The target's name recurs in the alert (target, related users, payloads, reason): each
        # string is cut at the alert's field limit, so a quarter-MiB name still gives an alert.
        Hostile("quarter-MiB-target-name",
                encode(hostile_event("quarter-MiB-target-name", target="v" * 256 * 1024)),
                alert=("mallory", "v" * FIELD_LIMIT)),
    ]
    if json_only:
        # JSON may escape a lone surrogate (\udc80), which no UTF-8 string holds. The record
        # shape keeps such a value aside in extraFields, so no rule sees these names: no alert.
        lone_surrogates = encode_json(
            hostile_event("lone-surrogates", "eve-SURROGATE", "bob-SURROGATE")
        ).replace(b"SURROGATE", b"\\udc80")
        messages.append(Hostile("lone-surrogates", lone_surrogates))
    return messages


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_hostile_values_are_alerted_or_dead_lettered_and_alert_json_round_trips_the_names(
    broker: Broker, run_dir: Path, detectors: list[DetectorProcess], fmt: str
) -> None:
    topics = create_topics(broker, f"hostile-{fmt}", LARGE_TOPIC)
    detector = start_detector(broker, topics, run_dir, detectors,
                              {"DETECTOR_INPUT_FORMAT": fmt})
    assert detector.process is not None
    messages = hostile_messages(fmt)
    canary = create_access_key(event_id="hostile-canary", caller="mallory", target="canary")
    canary_value = encode_avro(canary) if fmt == "avro" else encode_json(canary)

    with RssSampler(detector.process.pid) as rss:
        produce_values(broker, topics.input,
                       [(m.name.encode(), m.value) for m in messages] + [(b"canary", canary_value)])
        expected_alerts = {m.event_id for m in messages if m.alert} | {"hostile-canary"}
        alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(expected_alerts))
    expected_dead = {m.name: m.dead_letter for m in messages if m.dead_letter}
    dead = read_all(broker.bootstrap_servers, topics.dlq, wanted=len(expected_dead))

    documents = {doc["event"]["id"]: doc for doc in (json.loads(m.value() or b"") for m in alerts)}
    report(f"hostile values, {fmt}", sent=len(messages) + 1, alerted=len(alerts),
           dlq=len(dead), duplicated=len(alerts) - len(documents),
           lost=len(expected_alerts - set(documents)), rss_peak_mb=round(rss.peak_mb))
    assert detector.process.poll() is None, detector.log()[-3000:]
    assert sorted(documents) == sorted(expected_alerts)
    assert len(alerts) == len(documents)
    by_id = {m.event_id: m for m in messages}
    for event_id, document in documents.items():
        names = (document["user"]["name"], document["user"]["target"]["name"])
        wanted = by_id[event_id].alert if event_id in by_id else ("mallory", "canary")
        assert names == wanted, event_id
    assert dead_letter_reasons(dead) == expected_dead
    # Near 1 MiB the record does not fit a second time into its alert, nor over the producer's
    # message.max.bytes into the dead-letter topic: both say so instead of failing the batch.
    for near_limit in ("hostile-just-under-1MiB", "hostile-exactly-1MiB"):
        assert "original" not in documents[near_limit]["event"]
    (oversized,) = [m for m in dead if m.key() == b"just-over-1MiB"]
    assert oversized.value() is None
    assert header(oversized, "dlq.value.omitted") == b"1048577 bytes"
    assert rss.peak_mb < RSS_LIMIT_MB


def dead_letter_reasons(dead: list[Message]) -> dict[str, str]:
    return {
        (m.key() or b"").decode(): header(m, "dlq.reason").decode() for m in dead
    }
