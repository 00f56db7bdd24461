"""Every shape CloudTrail arrives in decodes to the records it holds, or is skipped, saying why."""

from __future__ import annotations

import base64
import gzip
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.cli import main
from consumer.cloudtrail.decode import DecodeError, Events, JsonDecoder
from consumer.cloudtrail.envelopes import SHAPES, Shape, text_forms, unwrap, wrap
from consumer.cloudtrail.record import json_to_avro
from consumer.offline.replay import envelope_encoder
from consumer.rules.detector import SKIPPED, Detector, EventsVerdict
from consumer.rules.loader import load_rules
from tests.support.events import create_access_key, event
from tests.unit.test_prefilter import RECORDS, json_text

HARDENED_ID = "32403725-2adc-4bc1-a434-02793697b9bd"
MATCH = create_access_key(event_id="cross-1", caller="mallory", target="bob")
HARMLESS = event(event_id="read-1", request_parameters={"bucketName": "logs"})

GUARDDUTY_FINDING = {
    "version": "0", "id": "c8c4daa7-a20c-2f03-0070-b7393dd542ad",
    "detail-type": "GuardDuty Finding", "source": "aws.guardduty",
    "account": "111122223333", "time": "2026-11-29T10:00:00Z", "region": "us-east-1",
    "resources": [],
    "detail": {"schemaVersion": "2.0", "type": "Recon:EC2/PortProbeUnprotectedPort", "severity": 2},
}
DIGEST = {
    "awsAccountId": "111122223333", "digestStartTime": "2026-11-29T09:00:00Z",
    "digestEndTime": "2026-11-29T10:00:00Z", "digestS3Bucket": "trail",
    "digestS3Object": "AWSLogs/111122223333/CloudTrail-Digest/x.json.gz",
    "logFiles": [], "previousDigestSignature": "ab",
}


def events_of(payload: bytes, decoder: JsonDecoder | None = None) -> Events:
    decoded = (decoder or JsonDecoder()).decode(payload)
    assert isinstance(decoded, Events)
    return decoded


@pytest.mark.parametrize("shape", [shape for shape in SHAPES if shape != "record"])
def test_each_shape_decodes_to_the_record_it_holds(shape: Shape) -> None:
    decoded = events_of(wrap([MATCH], shape))

    assert decoded.shape == shape
    assert decoded.items == (json_to_avro(MATCH),)
    assert json.loads(decoded.original(0)) == MATCH


def test_a_bare_record_stays_a_plain_record_the_fast_path() -> None:
    assert JsonDecoder().decode(wrap([MATCH], "record")) == json_to_avro(MATCH)


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_gzipped_decodes_the_same(shape: Shape) -> None:
    plain = wrap([MATCH], shape)
    zipped = plain if plain[:2] == b"\x1f\x8b" else gzip.compress(plain)

    assert JsonDecoder().decode(zipped) == JsonDecoder().decode(plain)


def test_cloudwatch_payload_base64_as_kinesis_delivers_it() -> None:
    decoded = events_of(wrap([MATCH, HARMLESS], "cloudwatch", base64_encoded=True))

    assert decoded.items == (json_to_avro(MATCH), json_to_avro(HARMLESS))
    assert decoded.context["cloud.account.id"] == "111122223333"


def test_a_base64_json_message_as_kinesis_hands_it_over_decodes() -> None:
    assert JsonDecoder().decode(base64.b64encode(wrap([MATCH], "record"))) == json_to_avro(MATCH)
    decoded = events_of(base64.b64encode(wrap([MATCH], "eventbridge")))
    assert decoded.items == (json_to_avro(MATCH),)


def test_cloudwatch_payload_with_a_thousand_log_events_gives_each_in_order() -> None:
    records = [event(event_id=f"e-{n}") for n in range(1000)]

    decoded = events_of(wrap(records, "cloudwatch"))

    assert [item["eventID"] for item in decoded.items if isinstance(item, dict)] == [
        f"e-{n}" for n in range(1000)
    ]


def test_a_bad_log_event_is_one_failure_at_its_index_and_the_others_decode() -> None:
    payload = json.loads(gzip.decompress(wrap([MATCH, HARMLESS, MATCH], "cloudwatch")))
    payload["logEvents"][1]["message"] = '{"eventName": "Cut'

    decoded = events_of(gzip.compress(json.dumps(payload).encode()))

    assert isinstance(decoded.items[1], DecodeError)
    assert decoded.items[1].reason == "invalid-json"
    assert decoded.items[0] == decoded.items[2] == json_to_avro(MATCH)
    assert decoded.original(1) == '{"eventName": "Cut'


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (gzip.compress(json.dumps(MATCH).encode())[:25], "corrupt-gzip"),
        (b"\x1f\x8b\x08\x00garbage-after-the-magic", "corrupt-gzip"),
        (b"H4sI!!not base64!!", "corrupt-base64"),
        (base64.b64encode(gzip.compress(b"{}"))[:-6], "corrupt-base64"),
        (base64.b64encode(b"\x1f\x8b\x08\x00" + b"\x00" * 12), "corrupt-gzip"),
        (gzip.compress(b"[" * 10 + b"not json"), "invalid-json"),
    ],
    ids=["cut-gzip", "garbage-gzip", "bad-base64", "cut-base64", "base64-of-bad-gzip",
         "gzip-of-not-json"],
)
def test_corrupt_compressed_payloads_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        JsonDecoder().decode(payload)
    assert caught.value.reason == reason


def test_a_gzip_bomb_is_refused_before_it_is_inflated_whole() -> None:
    bomb = gzip.compress(b" " * 5_000_000)
    with pytest.raises(DecodeError) as caught:
        JsonDecoder(max_inflated_bytes=1_000_000).decode(bomb)
    assert caught.value.reason == "too-large"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (GUARDDUTY_FINDING, "GuardDuty Finding"),
        (DIGEST, "digest"),
        ({"messageType": "CONTROL_MESSAGE", "logEvents": [{"message": "CWL CONTROL MESSAGE"}]},
         "CONTROL_MESSAGE"),
    ],
    ids=["guardduty-finding", "digest-file", "control-message"],
)
def test_messages_holding_no_cloudtrail_are_skipped_with_a_reason(
    value: dict[str, Any], why: str
) -> None:
    decoded = events_of(json.dumps(value).encode())

    assert decoded.items == ()
    assert decoded.skipped is not None
    assert why in decoded.skipped


def test_eventbridge_keeps_the_envelope_fields_for_the_alert() -> None:
    decoded = events_of(wrap([MATCH], "eventbridge"))

    assert decoded.context == {
        "aws.eventbridge.id": "cross-1", "aws.eventbridge.time": MATCH["eventTime"],
        "cloud.account.id": "111122223333", "cloud.region": "us-east-1",
    }


def test_filebeat_keeps_its_timestamps() -> None:
    document = {"@timestamp": "2026-11-29T10:00:05.123Z", "message": json.dumps(MATCH),
                "event": {"ingested": "2026-11-29T10:00:09Z"}}

    decoded = events_of(json.dumps(document).encode())

    assert decoded.context == {"@timestamp": "2026-11-29T10:00:05.123Z",
                               "event.ingested": "2026-11-29T10:00:09Z"}


def test_a_pinned_shape_reads_only_that_shape() -> None:
    pinned = JsonDecoder(shape="cribl")

    other = pinned.decode(wrap([MATCH], "filebeat"))
    cribl = pinned.decode(wrap([MATCH], "cribl"))

    assert isinstance(other, Events)
    assert [item.reason for item in other.items if isinstance(item, DecodeError)] == [
        "not-cloudtrail"
    ]
    assert isinstance(cribl, Events)
    assert cribl.items == (json_to_avro(MATCH),)


def test_a_log_event_whose_text_holds_a_lone_surrogate_is_one_refused_event() -> None:
    decoded = events_of(b'{"_raw": "\\ud800"}')

    assert [item.reason for item in decoded.items if isinstance(item, DecodeError)] == [
        "invalid-json"
    ]


def test_an_unknown_object_is_judged_as_a_bare_record_and_refused() -> None:
    assert unwrap({"labels": 1}).shape == "record"
    with pytest.raises(DecodeError) as caught:
        JsonDecoder().decode(b'{"labels": 1}')
    assert caught.value.reason == "not-cloudtrail"


def test_text_forms_add_the_escaped_spelling_only_when_it_differs() -> None:
    assert text_forms("CreateAccessKey") == (b"CreateAccessKey",)
    assert text_forms('"eventName":"X"') == (b'"eventName":"X"', b'\\"eventName\\":\\"X\\"')


def detector() -> Detector:
    return Detector(JsonDecoder(), load_rules(enabled_overrides={HARDENED_ID: True}))


def test_every_event_of_a_multi_event_message_is_judged_and_failures_keep_their_index() -> None:
    second = create_access_key(event_id="cross-2", caller="eve", target="carol")
    verdict = detector().inspect(
        json.dumps({"Records": [HARMLESS, MATCH, {"eventName": "NoSource"}, second]}).encode()
    )

    assert isinstance(verdict, EventsVerdict)
    matched = {(index, judged.record["eventID"]) for index, judged in verdict.verdicts
               if judged.matched}
    assert matched == {(1, "cross-1"), (3, "cross-2")}
    assert [(index, failure.reason) for index, failure in verdict.failures] == [
        (2, "not-cloudtrail")
    ]


def test_a_compressed_message_is_never_skipped_on_its_bytes() -> None:
    payload = gzip.compress(json.dumps(MATCH).encode())
    found = detector()

    assert found.screen([payload], [len(payload)]) == range(1)
    assert found.inspect(payload) is not SKIPPED


@settings(max_examples=300, deadline=None)
@given(
    records=st.lists(RECORDS, min_size=1, max_size=3),
    shape=st.sampled_from([shape for shape in SHAPES if shape != "cloudwatch"]),
    rnd=st.randoms(use_true_random=False),
    escape_rate=st.sampled_from([0.0, 0.3]),
    ensure_ascii=st.booleans(),
)
def test_the_prefilter_never_drops_a_message_in_any_shape_whose_event_matches(
    records: list[dict[str, Any]], shape: Shape, rnd: random.Random, escape_rate: float,
    ensure_ascii: bool,
) -> None:
    """The record's text, \\u-escaped at random, inside each envelope; the inner text in
    `message`, `_raw` and `CloudTrailEvent` escaped once more by the outer JSON string."""
    found = detector()
    records = records if shape in ("records", "lookup-events") else records[:1]
    inner = [json_text(record, rnd, escape_rate, ensure_ascii) for record in records]
    outer = json.loads(wrap(records, shape))
    if shape in ("filebeat", "cribl"):
        outer["message" if shape == "filebeat" else "_raw"] = inner[0]
    elif shape == "lookup-events":
        for item, text in zip(outer["Events"], inner, strict=True):
            item["CloudTrailEvent"] = text
    payload = json.dumps(outer, ensure_ascii=ensure_ascii).encode()
    if shape in ("record", "records", "eventbridge"):
        payload = payload.replace(json.dumps(records[0], ensure_ascii=ensure_ascii).encode(),
                                  inner[0].encode())
    matches = any(
        rule.query.matches(json_to_avro(record)) for record in records for rule in found.rules
    )
    if matches:
        assert 0 in found.screen([payload], [len(payload)])
        assert found.inspect(payload) is not SKIPPED


@pytest.mark.parametrize("shape", SHAPES)
def test_replay_envelope_writes_each_shape_the_decoder_reads_back(shape: Shape) -> None:
    decoded = JsonDecoder().decode(envelope_encoder(shape)(MATCH))

    items = decoded.items if isinstance(decoded, Events) else (decoded,)
    assert items == (json_to_avro(MATCH),)


def test_replay_envelope_with_an_avro_format_is_a_configuration_error(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(tmp_path), "--topic", "t", "--format", "avro",
                 "--envelope", "eventbridge"]) == 2
    assert "--envelope" in capsys.readouterr().err
