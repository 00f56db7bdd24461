"""Fuzz: whatever the payload, a decoder returns a record or raises DecodeError, quickly and small.

Inputs are random bytes and valid messages mutated the way broken producers and hostile ones
break them: bit flips, truncation, inserted or deleted bytes, and Avro length/count varints that
lie (huge, negative). Each decode must finish within the deadline and allocate little.
"""

import io
import json
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.cloudtrail.decode import (
    Decoded,
    DecodeError,
    Decoder,
    Events,
    JsonDecoder,
    RegistryAvroDecoder,
    SchemalessAvroDecoder,
)
from consumer.cloudtrail.envelopes import SHAPES, wrap
from consumer.cloudtrail.record import READER_SCHEMA, SCHEMA_TEXT, json_to_avro

PEAK_BYTES_LIMIT = 1024 * 1024
"""Far above what decoding a sub-kilobyte message needs, far below what a trusted lying length
(gigabytes) would allocate."""

FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=500),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

EVENTS: list[dict[str, Any]] = [
    {
        "eventVersion": "1.09",
        "eventTime": "2024-07-30T21:53:13Z",
        "eventSource": "iam.amazonaws.com",
        "eventName": "CreateAccessKey",
        "requestParameters": {"userName": "bob"},
        "responseElements": None,
        "resources": [{"ARN": "arn:aws:iam::1:user/bob", "type": "AWS::IAM::User"}],
        "userIdentity": {
            "type": "AssumedRole",
            "userName": "alice",
            "sessionContext": {"attributes": {"mfaAuthenticated": "true"}},
        },
        "readOnly": False,
    },
    {
        "eventVersion": "1.05",
        "eventSource": "s3.amazonaws.com",
        "eventName": "GetObject",
        "@timestamp": "2020-09-14T00:44:23.000Z",
        "additionalEventData": {"bytesTransferredOut": 1.5},
    },
]
RECORDS = [json_to_avro(event) for event in EVENTS]
LYING_LENGTHS = [2**31, 2**40, 2**62, 2**63 - 1, -1, -(2**40)]


def avro_body(record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, READER_SCHEMA, record)
    return buffer.getvalue()


def zigzag_varint(number: int) -> bytes:
    """Avro's encoding of a long, as a lying length or block count would be written."""
    value = (number << 1) ^ (number >> 63)
    encoded = bytearray()
    while value > 0x7F:
        encoded.append((value & 0x7F) | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], keep_prefix: int = 0) -> bytes:
    """A seed message broken in one of the ways that matter; `keep_prefix` bytes stay intact."""
    data = bytearray(draw(st.sampled_from(seeds)))
    at = draw(st.integers(keep_prefix, len(data)))
    match draw(st.sampled_from(["flip", "truncate", "insert", "delete", "lying-varint"])):
        case "flip":
            position = min(at, len(data) - 1)
            data[position] ^= 1 << draw(st.integers(0, 7))
        case "truncate":
            del data[at:]
        case "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        case "delete":
            del data[at : at + draw(st.integers(1, 8))]
        case "lying-varint":
            lie = zigzag_varint(draw(st.sampled_from(LYING_LENGTHS)))
            data[at : at + draw(st.integers(0, 2))] = lie
    return bytes(data)


@pytest.fixture(scope="module")
def traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def decode_measuring_peak(
    decoder: Decoder, payload: bytes
) -> tuple[Decoded | DecodeError, int]:
    """Decode; return the record or DecodeError (anything else propagates) and the bytes the
    decode allocated at its peak, above what was allocated before."""
    baseline = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    outcome: Decoded | DecodeError
    try:
        outcome = decoder.decode(payload)
    except DecodeError as error:
        outcome = error
    return outcome, tracemalloc.get_traced_memory()[1] - baseline


def assert_decodes_or_rejects(decoder: Decoder, payload: bytes) -> None:
    outcome, peak = decode_measuring_peak(decoder, payload)
    for item in outcome.items if isinstance(outcome, Events) else (outcome,):
        if isinstance(item, DecodeError):
            assert item.reason
            assert str(item)
        else:
            assert isinstance(item["eventName"], str)
    assert peak < PEAK_BYTES_LIMIT


@pytest.fixture(scope="module")
def registry_decoder() -> tuple[RegistryAvroDecoder, list[bytes]]:
    client = SchemaRegistryClient.new_client({"url": "mock://"})
    schema_id = client.register_schema("cloudtrail-value", Schema(SCHEMA_TEXT, "AVRO"))
    header = b"\x00" + schema_id.to_bytes(4, "big")
    return RegistryAvroDecoder(client), [header + avro_body(record) for record in RECORDS]


SCHEMALESS_SEEDS = [avro_body(record) for record in RECORDS]
JSON_SEEDS = [json.dumps(event).encode() for event in EVENTS]


@FUZZ_SETTINGS
@given(data=st.data())
def test_registry_decoder_survives_mutated_messages(
    traced: None, registry_decoder: tuple[RegistryAvroDecoder, list[bytes]], data: st.DataObject
) -> None:
    decoder, seeds = registry_decoder
    assert_decodes_or_rejects(decoder, data.draw(mutated(seeds, keep_prefix=5)))


@FUZZ_SETTINGS
@given(data=st.data())
def test_registry_decoder_survives_random_bytes(
    traced: None, registry_decoder: tuple[RegistryAvroDecoder, list[bytes]], data: st.DataObject
) -> None:
    decoder, seeds = registry_decoder
    header = data.draw(st.sampled_from([seeds[0][:5], b""]))
    assert_decodes_or_rejects(decoder, header + data.draw(st.binary(max_size=300)))


@FUZZ_SETTINGS
@given(payload=mutated(SCHEMALESS_SEEDS) | st.binary(max_size=300))
def test_schemaless_decoder_survives_mutated_and_random_bodies(
    traced: None, payload: bytes
) -> None:
    assert_decodes_or_rejects(SchemalessAvroDecoder(), payload)


@FUZZ_SETTINGS
@given(payload=mutated(JSON_SEEDS) | st.binary(max_size=300) | st.text().map(str.encode))
def test_json_decoder_survives_mutated_and_random_text(traced: None, payload: bytes) -> None:
    assert_decodes_or_rejects(JsonDecoder(), payload)


ENVELOPE_SEEDS = [wrap(EVENTS[:1], shape) for shape in SHAPES] + [
    wrap(EVENTS, "cloudwatch", base64_encoded=True), wrap(EVENTS, "records"),
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=10,
)
ENVELOPE_KEYS = ["Records", "digestStartTime", "logFiles", "detail-type", "detail", "messageType",
                 "logEvents", "Events", "_raw", "message", "event", "@timestamp", "eventVersion"]


@FUZZ_SETTINGS
@given(payload=mutated(ENVELOPE_SEEDS))
def test_json_decoder_survives_mutated_envelopes_compressed_or_not(
    traced: None, payload: bytes
) -> None:
    assert_decodes_or_rejects(JsonDecoder(), payload)


@FUZZ_SETTINGS
@given(value=st.dictionaries(st.sampled_from(ENVELOPE_KEYS), JSON_VALUES, min_size=1))
def test_json_decoder_survives_envelope_keys_holding_anything(
    traced: None, value: dict[str, Any]
) -> None:
    assert_decodes_or_rejects(JsonDecoder(), json.dumps(value).encode())


def first_difference(left: bytes, right: bytes) -> int:
    return next(i for i, (a, b) in enumerate(zip(left, right, strict=False)) if a != b)


@pytest.mark.parametrize("lie", LYING_LENGTHS)
def test_lying_string_length_is_rejected_without_allocating_it(traced: None, lie: int) -> None:
    body = avro_body(RECORDS[0])
    assert body[0] == 2 * len("1.09")  # the first field, eventVersion: length then text
    outcome, peak = decode_measuring_peak(SchemalessAvroDecoder(), zigzag_varint(lie) + body[1:])
    assert isinstance(outcome, DecodeError)
    assert outcome.reason in {"avro-truncated", "avro-corrupt"}
    assert peak < PEAK_BYTES_LIMIT


@pytest.mark.parametrize("lie", LYING_LENGTHS)
def test_lying_array_block_count_is_rejected_without_allocating_it(traced: None, lie: int) -> None:
    without = avro_body({**RECORDS[1], "resources": None})
    empty = avro_body({**RECORDS[1], "resources": []})
    count_at = first_difference(without, empty) + 1  # after the union branch index
    assert empty[count_at] == 0
    lying = empty[:count_at] + zigzag_varint(lie) + empty[count_at + 1 :]
    outcome, peak = decode_measuring_peak(SchemalessAvroDecoder(), lying)
    assert isinstance(outcome, DecodeError)
    assert outcome.reason in {"avro-truncated", "avro-corrupt"}
    assert peak < PEAK_BYTES_LIMIT


def assert_vouched_batches_pass_one_by_one(decoder: Decoder, batch: list[bytes | None]) -> bool:
    """`well_framed` may say True only when `check_framing` passes every payload; returns it."""
    vouched = decoder.well_framed(batch, [len(payload or b"") for payload in batch])
    if vouched:
        for payload in batch:
            decoder.check_framing(payload)
    return vouched


BATCH_SETTINGS = settings(max_examples=300, deadline=None)


def batches(payloads: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes | None]]:
    return st.lists(payloads | st.none(), max_size=6)


@BATCH_SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("wire", ["schemaless", "registry", "json"])
def test_a_batch_is_vouched_for_only_when_every_message_is_well_framed(
    registry_decoder: tuple[RegistryAvroDecoder, list[bytes]], wire: str, data: st.DataObject
) -> None:
    decoder, seeds = {
        "schemaless": (SchemalessAvroDecoder(), SCHEMALESS_SEEDS),
        "registry": registry_decoder,
        "json": (JsonDecoder(), JSON_SEEDS),
    }[wire]
    batch = data.draw(batches(mutated(seeds) | st.sampled_from(seeds)))
    assert_vouched_batches_pass_one_by_one(decoder, batch)


def test_batches_of_intact_messages_are_vouched_for_so_the_properties_are_not_vacuous(
    registry_decoder: tuple[RegistryAvroDecoder, list[bytes]],
) -> None:
    decoder, seeds = registry_decoder
    assert assert_vouched_batches_pass_one_by_one(decoder, [*seeds, *seeds])
    assert assert_vouched_batches_pass_one_by_one(SchemalessAvroDecoder(), [*SCHEMALESS_SEEDS])
    assert assert_vouched_batches_pass_one_by_one(JsonDecoder(), [*JSON_SEEDS])
