"""One message through prefilter, decoder and rules: skipped, judged, or refused with a reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from consumer.cloudtrail.decode import (
    Decoded,
    DecodeError,
    Decoder,
    JsonDecoder,
    SchemalessAvroDecoder,
)
from consumer.cloudtrail.normalize import normalize
from consumer.cloudtrail.record import json_to_avro
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.offline.replay import avro_encoder, json_encoder
from consumer.rules.detector import SKIPPED, Detector, RuleEvaluationError
from consumer.rules.loader import LoadedRule, load_rules
from tests.support.events import create_access_key, event

SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
HARDENED_ID = "32403725-2adc-4bc1-a434-02793697b9bd"

CROSS_USER = create_access_key(event_id="cross", caller="mallory", target="bob")
OWN_KEY = create_access_key(event_id="own", caller="bob", target="bob")
READ = event(event_id="read", request_parameters={"bucketName": "logs"})
ROOT_CALLER = {
    **create_access_key(event_id="root", caller="root", target="bob"),
    "userIdentity": {"type": "Root", "arn": "arn:aws:iam::111122223333:root",
                     "accountId": "111122223333", "principalId": "111122223333"},
}


class CountingDecoder:
    """Wraps a decoder to count full decodes and framing checks."""

    def __init__(self, inner: Decoder) -> None:
        self.inner = inner
        self.text_format = inner.text_format
        self.decoded = 0
        self.framing_checked = 0

    def decode(self, payload: bytes | None) -> Decoded:
        self.decoded += 1
        return self.inner.decode(payload)

    def check_framing(self, payload: bytes | None) -> bool:
        self.framing_checked += 1
        return self.inner.check_framing(payload)

    def well_framed(self, payloads: Sequence[bytes | None], sizes: Sequence[int]) -> bool:
        return self.inner.well_framed(payloads, sizes)


FORMATS = {
    "avro": (SchemalessAvroDecoder, avro_encoder()),
    "json": (JsonDecoder, json_encoder()),
}


@pytest.fixture(params=sorted(FORMATS))
def wire(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def detector_for(wire: str, rules: list[LoadedRule] | None = None,
                 use_prefilter: bool = True) -> tuple[Detector, CountingDecoder]:
    decoder = CountingDecoder(FORMATS[wire][0]())
    return Detector(decoder, rules if rules is not None else load_rules(), use_prefilter), decoder


def encode(wire: str, record: dict[str, Any]) -> bytes:
    return FORMATS[wire][1](record)


def test_a_message_no_rule_can_match_is_skipped_without_decoding(wire: str) -> None:
    detector, decoder = detector_for(wire)

    assert detector.inspect(encode(wire, READ)) is SKIPPED
    assert (decoder.decoded, decoder.framing_checked) == (0, 1)


def screened(detector: Detector, payloads: list[bytes | None]) -> list[int]:
    return list(detector.screen(payloads, [len(payload or b"") for payload in payloads]))


def test_a_batch_is_screened_down_to_the_messages_a_rule_may_match(wire: str) -> None:
    detector, decoder = detector_for(wire)
    batch: list[bytes | None] = [
        encode(wire, record) for record in (READ, CROSS_USER, READ, OWN_KEY, READ)
    ]

    assert screened(detector, batch) == [1, 3]
    assert decoder.decoded == 0
    assert [detector.inspect(batch[index]) for index in (0, 2, 4)] == [SKIPPED] * 3


@pytest.mark.parametrize("odd_one", [None, b"", b"\xff\xfe not a record"])
def test_a_batch_holding_a_message_with_broken_framing_is_inspected_whole(
    wire: str, odd_one: bytes | None
) -> None:
    detector, _ = detector_for(wire)
    batch = [encode(wire, READ), odd_one, encode(wire, READ)]

    assert screened(detector, batch) == [0, 1, 2]


def test_without_the_prefilter_a_batch_is_inspected_whole(wire: str) -> None:
    detector, _ = detector_for(wire, use_prefilter=False)

    assert screened(detector, [encode(wire, READ), encode(wire, READ)]) == [0, 1]


def test_a_candidate_is_decoded_and_judged_by_the_enabled_rules(wire: str) -> None:
    detector, decoder = detector_for(wire)

    matched = detector.inspect(encode(wire, CROSS_USER))
    not_matched = detector.inspect(encode(wire, OWN_KEY))

    assert matched is not None
    assert matched.record == json_to_avro(CROSS_USER)
    assert [rule.rule_id for rule in matched.matched] == [SEED_ID]
    assert not_matched is not None
    assert not_matched.matched == ()
    assert decoder.decoded == 2


def test_without_the_prefilter_every_message_is_decoded(wire: str) -> None:
    detector, decoder = detector_for(wire, use_prefilter=False)

    verdict = detector.inspect(encode(wire, READ))

    assert verdict is not None
    assert verdict.matched == ()
    assert verdict.record == json_to_avro(READ)
    assert (decoder.decoded, decoder.framing_checked) == (1, 0)


@pytest.mark.parametrize(
    ("wire_format", "payload", "reason"),
    [
        ("avro", b"\xff\xfe not avro at all", "avro-corrupt"),
        ("avro", b"", "empty"),
        ("json", b"{1, 2, 3]", "invalid-json"),
        ("json", b"garbage", "invalid-json"),
        ("json", b"", "empty"),
    ],
)
def test_a_skipped_message_with_broken_framing_raises_decode_error(
    wire_format: str, payload: bytes, reason: str
) -> None:
    detector, decoder = detector_for(wire_format)

    with pytest.raises(DecodeError) as raised:
        detector.inspect(payload)

    assert raised.value.reason == reason
    assert decoder.decoded == 0


def test_a_corrupt_candidate_raises_decode_error(wire: str) -> None:
    valid = encode(wire, CROSS_USER)
    detector, _ = detector_for(wire)

    with pytest.raises(DecodeError) as raised:
        detector.inspect(valid[: len(valid) * 2 // 3])

    assert raised.value.reason in {"avro-truncated", "invalid-json"}


def test_a_tombstone_is_refused_as_empty(wire: str) -> None:
    detector, _ = detector_for(wire)

    with pytest.raises(DecodeError) as raised:
        detector.inspect(None)

    assert raised.value.reason == "empty"


def failing_copy(rule: LoadedRule, *, enabled: bool) -> LoadedRule:
    def explode(record: CloudTrailRecord) -> bool:
        raise KeyError("eventName")

    return dataclasses.replace(
        rule, query=dataclasses.replace(rule.query, matches=explode), enabled=enabled
    )


def test_a_rule_that_raises_becomes_a_rule_evaluation_error_naming_the_rule(wire: str) -> None:
    seed = next(rule for rule in load_rules() if rule.rule_id == SEED_ID)
    detector, _ = detector_for(wire, [failing_copy(seed, enabled=True)])

    with pytest.raises(RuleEvaluationError) as raised:
        detector.inspect(encode(wire, CROSS_USER))

    assert raised.value.reason == "rule-error"
    assert raised.value.rule.rule_id == SEED_ID
    assert SEED_ID in str(raised.value)
    assert "KeyError" in str(raised.value)
    assert isinstance(raised.value.__cause__, KeyError)


def test_disabled_rules_are_not_run(wire: str) -> None:
    rules = load_rules()
    seed = next(rule for rule in rules if rule.rule_id == SEED_ID)
    detector, _ = detector_for(wire, [*rules, failing_copy(seed, enabled=False)])

    verdict = detector.inspect(encode(wire, ROOT_CALLER))

    assert [rule.rule_id for rule in detector.rules] == [SEED_ID]
    assert verdict is not None
    assert verdict.matched == ()


def test_an_enabled_hardened_rule_judges_alongside_the_seed_rule(wire: str) -> None:
    detector, _ = detector_for(wire, load_rules(enabled_overrides={HARDENED_ID: True}))

    root = detector.inspect(encode(wire, ROOT_CALLER))
    cross = detector.inspect(encode(wire, CROSS_USER))

    assert root is not None
    assert cross is not None
    assert [rule.rule_id for rule in root.matched] == [HARDENED_ID]
    assert sorted(rule.rule_id for rule in cross.matched) == sorted([SEED_ID, HARDENED_ID])


def test_the_message_timestamp_becomes_event_ingested_of_the_judged_record(wire: str) -> None:
    detector, _ = detector_for(wire)

    verdict = detector.inspect(encode(wire, CROSS_USER), ingested_ms=1_764_600_000_250)

    assert verdict is not None
    assert normalize(verdict.record, ["event.ingested"]) == {
        "event.ingested": "2025-12-01T14:40:00Z"
    }
