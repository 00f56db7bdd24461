"""A producer's content-type / content-encoding headers are honoured, checked against the bytes,
and refused with a reason naming what they say when they cannot be; without them nothing changes."""

from __future__ import annotations

import base64
import gzip
import io
import json
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from consumer.cloudtrail.decode import DecodeError, Events, JsonDecoder, SchemalessAvroDecoder
from consumer.cloudtrail.envelopes import declared_codings, wrap
from consumer.cloudtrail.record import READER_SCHEMA, json_to_avro
from consumer.rules.detector import SKIPPED, Detector, Verdict
from consumer.rules.loader import load_rules
from tests.unit.test_envelopes import HARDENED_ID, HARMLESS, MATCH

PLAIN = json.dumps(MATCH).encode()
ZIPPED = gzip.compress(PLAIN)
RECORD = json_to_avro(MATCH)

Headers = list[tuple[str, Any]]


def decoded(payload: bytes, headers: Headers) -> Any:
    return JsonDecoder().decode(payload, headers)


def refusal(payload: bytes, headers: Headers) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        JsonDecoder().decode(payload, headers)
    return caught.value


def detector(decoder: Any = None) -> Detector:
    return Detector(decoder or JsonDecoder(), load_rules(enabled_overrides={HARDENED_ID: True}))


@pytest.mark.parametrize(
    "headers",
    [
        [("content-encoding", b"gzip")],
        [("Content-Encoding", b"GZIP")],
        [("content-encoding", b"x-gzip")],
        [("content-type", b"application/gzip")],
        [("Content-Type", b"application/x-gzip")],
        [("content-type", b"application/gzip"), ("content-encoding", b"gzip")],
    ],
    ids=["encoding-gzip", "names-and-values-any-case", "x-gzip", "type-gzip", "type-x-gzip",
         "type-and-encoding-say-it-once"],
)
def test_a_gzip_payload_declared_gzip_decodes(headers: Headers) -> None:
    assert decoded(ZIPPED, headers) == RECORD


def test_base64_declared_alone_or_over_gzip_decodes() -> None:
    assert decoded(base64.b64encode(PLAIN), [("content-encoding", b"base64")]) == RECORD
    assert decoded(base64.b64encode(ZIPPED), [("content-encoding", b"gzip, base64")]) == RECORD


def test_a_header_naming_only_the_outer_coding_still_decodes_what_is_inside() -> None:
    cloudwatch = wrap([MATCH, HARMLESS], "cloudwatch", base64_encoded=True)

    events = decoded(cloudwatch, [("content-encoding", b"base64")])

    assert isinstance(events, Events)
    assert events.items == (RECORD, json_to_avro(HARMLESS))


@pytest.mark.parametrize(
    "headers",
    [
        [("content-type", b"application/json")],
        [("content-type", b"application/json; charset=utf-8")],
        [("contentType", b'"application/json"')],
        [("content-type", b"application/vnd.aws.cloudtrail+json")],
        [("content-type", b"text/plain")],
        [("content-type", b"application/octet-stream")],
        [("content-encoding", b"identity")],
        [("content-type", None)],
    ],
    ids=["json", "json-charset", "spring-quoted", "suffix-json", "text-plain", "octet-stream",
         "identity", "no-value"],
)
def test_headers_that_claim_no_coding_read_the_bytes_as_without_them(headers: Headers) -> None:
    assert decoded(PLAIN, headers) == RECORD
    assert decoded(ZIPPED, headers) == RECORD


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
        [("content-type", b"application/json"), ("ce_specversion", b"1.0")],
        [("Content-Encoding", b"identity")],
    ],
    ids=["tracing", "cloudevents-binary-json", "identity"],
)
def test_headers_claiming_no_coding_keep_the_prefilter_skipping(headers: Headers) -> None:
    harmless = json.dumps(HARMLESS).encode()
    found = detector()

    assert decoded(PLAIN, headers) == RECORD
    assert found.inspect(harmless, headers=headers) is SKIPPED
    assert list(found.screen([harmless, harmless], [len(harmless)] * 2, [headers, None])) == []


@pytest.mark.parametrize(
    ("payload", "headers", "says"),
    [
        (PLAIN, [("content-encoding", b"gzip")], "gzip"),
        (PLAIN, [("content-type", b"application/gzip")], "gzip"),
        (base64.b64encode(PLAIN), [("content-encoding", b"gzip")], "gzip"),
        (ZIPPED, [("content-encoding", b"base64")], "base64"),
        (base64.b64encode(PLAIN), [("content-encoding", b"gzip, base64")], "gzip"),
    ],
    ids=["gzip-over-json", "gzip-type-over-json", "gzip-over-base64", "base64-over-gzip",
         "gzip-inside-base64-over-json"],
)
def test_a_header_the_bytes_contradict_is_a_header_mismatch(
    payload: bytes, headers: Headers, says: str
) -> None:
    error = refusal(payload, headers)

    assert error.reason == "header-mismatch"
    assert f"say {says}" in str(error)


@pytest.mark.parametrize("coding", ["zstd", "br", "deflate", "snappy", "lz4"])
def test_an_encoding_not_supported_is_refused_naming_it(coding: str) -> None:
    error = refusal(ZIPPED, [("content-encoding", coding.encode())])

    assert error.reason == "unsupported-encoding"
    assert repr(coding) in str(error)


@pytest.mark.parametrize(
    ("content_type", "why"),
    [
        ("application/avro", "not JSON"),
        ("application/x-protobuf", "not JSON"),
        ("application/cloudevents+json; charset=UTF-8", "structured-mode CloudEvent"),
    ],
)
def test_a_content_type_not_read_here_is_refused_naming_it(content_type: str, why: str) -> None:
    error = refusal(PLAIN, [("content-type", content_type.encode())])

    assert error.reason == "unsupported-content-type"
    assert repr(content_type.split(";", maxsplit=1)[0]) in str(error)
    assert why in str(error)


def test_a_declared_gzip_bomb_is_refused_before_it_is_inflated_whole() -> None:
    bomb = gzip.compress(b" " * 5_000_000)

    with pytest.raises(DecodeError) as caught:
        JsonDecoder(max_inflated_bytes=1_000_000).decode(bomb, [("content-encoding", b"gzip")])
    assert caught.value.reason == "too-large"


def test_a_declared_corrupt_gzip_is_corrupt_gzip() -> None:
    assert refusal(ZIPPED[:25], [("content-encoding", b"gzip")]).reason == "corrupt-gzip"


def test_the_last_content_encoding_header_is_the_one_that_counts() -> None:
    assert declared_codings([("content-encoding", b"base64"), ("content-encoding", b"gzip")]) == (
        "gzip",
    )
    assert declared_codings([("x-other", b"gzip")]) is None


def test_a_lying_header_on_a_message_no_rule_matches_is_not_skipped_but_refused() -> None:
    """The prefilter would skip this record on its bytes; its header says they are something
    else, so it is decoded, and the contradiction reaches the dead-letter topic."""
    harmless = json.dumps(HARMLESS).encode()
    lying: Headers = [("content-encoding", b"gzip")]
    found = detector()
    json_typed: Headers = [("content-type", b"application/json")]
    payloads = [harmless] * 4

    assert list(found.screen(payloads, [len(harmless)] * 4,
                             [None, lying, json_typed, [*json_typed, *lying]])) == [1, 3]
    assert found.inspect(harmless) is SKIPPED
    with pytest.raises(DecodeError) as caught:
        found.inspect(harmless, headers=lying)
    assert caught.value.reason == "header-mismatch"


def test_a_declared_gzip_message_that_matches_alerts() -> None:
    verdict = detector().inspect(ZIPPED, headers=[("content-encoding", b"gzip")])

    assert isinstance(verdict, Verdict)
    assert HARDENED_ID in {rule.rule_id for rule in verdict.matched}


def test_avro_input_goes_by_its_bytes_whatever_the_headers_say() -> None:
    found = detector(SchemalessAvroDecoder())
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(READER_SCHEMA), json_to_avro(HARMLESS))

    assert found.inspect(body.getvalue(), headers=[("content-encoding", b"zstd")]) is SKIPPED
