"""The batch processor without Kafka: what a batch produces, what it commits, what it retries;
and the loop's pause and resume of a partition whose decode must be retried later."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client import CollectorRegistry

from consumer.alerts.document import Headers
from consumer.cloudtrail.decode import Decoded, DecodeError, JsonDecoder
from consumer.cloudtrail.envelopes import MessageHeaders
from consumer.config import Settings
from consumer.rules.detector import Detector
from consumer.stream.app import load_enabled_rules
from consumer.stream.batch import BatchProcessor
from consumer.stream.metrics import Metrics
from consumer.stream.service import Health, Service
from consumer.stream.state import PartitionStore, StateStore
from consumer.stream.testing import InMemoryBroker
from tests.support.events import create_access_key, event
from tests.unit.test_checkpoint import ENCODE, match, miss

SETTINGS = Settings.model_validate({"input_topics": ["in"], "input_format": "json"})


class Recording:
    """An `Output` that keeps what was produced; refuses values above `limit` bytes, as a
    producer does above its message.max.bytes."""

    def __init__(self, limit: int = 10_000_000) -> None:
        self.produced: list[tuple[str, bytes | None, Headers]] = []
        self.limit = limit

    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
                *, partition: int | None = None) -> None:
        if value is not None and len(value) > self.limit:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.produced.append((topic, value, headers))

    def to(self, topic: str) -> list[tuple[bytes | None, dict[str, object]]]:
        return [(value, dict(headers)) for name, value, headers in self.produced
                if name == topic]


def processor(output: Recording, detector: Detector | None = None) -> BatchProcessor:
    throttle = StateStore("throttle", "g", InMemoryBroker())
    throttle.assign(("in", 0), None)
    return BatchProcessor(
        SETTINGS, detector or Detector(JsonDecoder(), load_enabled_rules(SETTINGS)),
        Metrics(CollectorRegistry()), output, throttle,
        encode_alert=lambda alert: json.dumps(alert.document).encode(),
    )


def messages(*values: bytes | None) -> list[Message]:
    return [Message(topic="in", partition=0, offset=offset, value=value, timestamp=(1, 0))
            for offset, value in enumerate(values, start=40)]


def test_matches_become_alerts_and_the_next_offset_is_after_the_batch() -> None:
    output = Recording()

    judged = processor(output).process(messages(miss(0), match(1), miss(2)), 0.0)

    alerts = output.to(SETTINGS.alerts_topic)
    assert [json.loads(value or b"")["event"]["id"] for value, _ in alerts] == ["m-001"]
    assert judged.offsets == {("in", 0): 43}
    assert judged.retry_later == []


def test_poison_is_dead_lettered_with_where_it_came_from_and_the_batch_goes_on() -> None:
    output = Recording()

    judged = processor(output).process(messages(b"\xff not json", match(1)), 0.0)

    [(value, headers)] = output.to(SETTINGS.dead_letter_topic)
    assert value == b"\xff not json"
    assert headers["dlq.source.offset"] == b"40"
    assert headers["dlq.reason"] == b"invalid-json"
    assert len(output.to(SETTINGS.alerts_topic)) == 1
    assert judged.offsets == {("in", 0): 42}


def test_one_bad_event_of_a_log_file_object_is_dead_lettered_alone() -> None:
    output = Recording()
    good = create_access_key(event_id="good", caller="mallory", target="t")
    envelope = json.dumps({"Records": [good, {"eventVersion": 7}]}).encode()

    processor(output).process(messages(envelope), 0.0)

    assert [json.loads(v or b"")["event"]["id"] for v, _ in output.to(SETTINGS.alerts_topic)] == [
        "good"
    ]
    [(_, headers)] = output.to(SETTINGS.dead_letter_topic)
    assert headers["dlq.event.index"] == b"1"


def test_an_alert_too_large_with_event_original_goes_without_it_then_to_the_dead_letters(
) -> None:
    record = create_access_key(event_id="big", caller="mallory", target="t")
    record["requestParameters"]["padding"] = "x" * 20_000
    fits_without = Recording(limit=50_000)
    fits_nowhere = Recording(limit=1_000)

    processor(fits_without).process(messages(ENCODE(record)), 0.0)
    processor(fits_nowhere).process(messages(ENCODE(record)), 0.0)

    [(value, _)] = fits_without.to(SETTINGS.alerts_topic)
    assert "original" not in json.loads(value or b"")["event"]
    assert fits_nowhere.to(SETTINGS.alerts_topic) == []
    [(_, headers)] = fits_nowhere.to(SETTINGS.dead_letter_topic)
    assert headers["dlq.reason"] == b"alert-too-large"


class LaterDecoder(JsonDecoder):
    """A registry that is down, while `down`, for payloads that say so."""

    down = True

    def decode(self, payload: bytes | None, headers: MessageHeaders | None = None) -> Decoded:
        if self.down and payload is not None and b"later" in payload:
            raise DecodeError("registry-unavailable", "registry down", retriable=True)
        return super().decode(payload, headers)


def test_a_retry_later_error_commits_up_to_it_and_hands_the_rest_back() -> None:
    output = Recording()
    detector = Detector(LaterDecoder(), load_enabled_rules(SETTINGS), use_prefilter=False)

    judged = processor(output, detector).process(
        messages(match(0), ENCODE(event(event_id="later")), match(2)), 0.0)

    assert judged.offsets == {("in", 0): 41}
    assert [(m.offset(), e.reason) for m, e in judged.retry_later] == [
        (41, "registry-unavailable")
    ]
    assert len(output.to(SETTINGS.alerts_topic)) == 1


def test_the_loop_pauses_a_retry_later_partition_and_resumes_it_after_the_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = InMemoryBroker(partitions=1)
    settings = SETTINGS.model_copy(update={"batch_size": 10})
    decoder = LaterDecoder()
    service = Service(settings, Detector(decoder, load_enabled_rules(settings),
                                         use_prefilter=False),
                      Metrics(CollectorRegistry()), Health(), clients=broker)
    service.open(broker)
    source = broker.sources[-1]
    source.assign()
    broker.produce("in", match(0), partition=0)
    broker.produce("in", ENCODE(event(event_id="later")), partition=0)

    service.step()
    paused = set(source.paused)
    monkeypatch.setattr("consumer.stream.service.RETRY_LATER_BACKOFF_S", 0.0)
    service.step()  # still paused: its deadline was set with the 5 s backoff
    still_paused = set(source.paused)
    committed_while_paused = dict(broker.committed)
    decoder.down = False
    service._paused_until[("in", 0)] = 0.0
    service.step()

    assert paused == still_paused == {("in", 0)}
    assert committed_while_paused == {("in", 0): 1}
    assert source.paused == set()
    assert broker.committed == {("in", 0): 2}


def test_a_store_delete_of_a_key_added_in_the_same_batch_leaves_no_change() -> None:
    store = PartitionStore(("in", 0))
    store.put("k", 1)
    store.delete("k")
    assert dict(store.changes) == {}

