"""The three decoders: records out, every failure a DecodeError with the right reason."""

import io
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest.mock import MagicMock

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient

from consumer.cloudtrail import decode as decode_module
from consumer.cloudtrail.decode import (
    DecodeError,
    Decoder,
    JsonDecoder,
    RegistryAvroDecoder,
    SchemalessAvroDecoder,
    readable_writer_schema,
)
from consumer.cloudtrail.record import READER_SCHEMA, SCHEMA_TEXT, json_to_avro
from consumer.config import Settings
from consumer.stream.registry import registry_client

EVENT: dict[str, Any] = {
    "eventVersion": "1.09",
    "eventTime": "2024-07-30T21:53:13Z",
    "eventSource": "iam.amazonaws.com",
    "eventName": "CreateAccessKey",
    "awsRegion": "us-east-1",
    "sourceIPAddress": "203.0.113.7",
    "userAgent": "aws-cli/2.15",
    "requestParameters": {"userName": "bob"},
    "responseElements": {"accessKey": {"userName": "bob", "status": "Active"}},
    "readOnly": False,
    "sessionCredentialFromConsole": "true",
    "tlsDetails": {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256"},
    "userIdentity": {"type": "IAMUser", "userName": "alice", "accountId": "111122223333"},
    "@timestamp": "2024-07-30T21:53:14Z",
}
RECORD = json_to_avro(EVENT)


def avro_body(record: dict[str, Any], schema: Any = READER_SCHEMA) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def wire(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def schema_variant(edit: Callable[[dict[str, Any]], None]) -> str:
    """Our schema's text after `edit` changes its top-level record."""
    schema = json.loads(SCHEMA_TEXT)
    edit(schema)
    return json.dumps(schema)


def reason_of(decoder: Decoder, payload: bytes | None) -> str:
    with pytest.raises(DecodeError) as caught:
        decoder.decode(payload)
    assert str(caught.value)  # a message a person can read
    return caught.value.reason


@pytest.fixture
def registry() -> SchemaRegistryClient:
    client: SchemaRegistryClient = SchemaRegistryClient.new_client({"url": "mock://"})
    return client


@pytest.fixture
def schema_id(registry: SchemaRegistryClient) -> int:
    schema_id: int = registry.register_schema("cloudtrail-value", Schema(SCHEMA_TEXT, "AVRO"))
    return schema_id


@pytest.fixture
def decoder(registry: SchemaRegistryClient) -> RegistryAvroDecoder:
    return RegistryAvroDecoder(registry)


def test_decoders_declare_whether_payloads_are_text() -> None:
    decoders: list[Decoder] = [
        RegistryAvroDecoder(MagicMock()),
        SchemalessAvroDecoder(),
        JsonDecoder(),
    ]
    assert [d.text_format for d in decoders] == [False, False, True]


def test_registry_decoder_reads_confluent_wire_format(
    decoder: RegistryAvroDecoder, schema_id: int
) -> None:
    assert decoder.decode(wire(schema_id, avro_body(RECORD))) == RECORD


def test_registry_is_asked_once_per_schema_id(
    registry: SchemaRegistryClient, schema_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_id = registry.register_schema("other-value", Schema(schema_variant(_add_field), "AVRO"))
    spy = MagicMock(wraps=registry.get_schema)
    monkeypatch.setattr(registry, "get_schema", spy)
    decoder = RegistryAvroDecoder(registry)
    for _ in range(3):
        decoder.decode(wire(schema_id, avro_body(RECORD)))
        decoder.decode(wire(other_id, avro_body(RECORD, json.loads(schema_variant(_add_field)))))
    assert sorted(call.args[0] for call in spy.call_args_list) == sorted([schema_id, other_id])


def _drop_fields(schema: dict[str, Any]) -> None:
    gone = {"tlsDetails", "sessionCredentialFromConsole"}
    schema["fields"] = [field for field in schema["fields"] if field["name"] not in gone]


def _add_field(schema: dict[str, Any]) -> None:
    schema["fields"].insert(
        -1, {"name": "eventContext", "type": ["null", "string"], "default": None, "doc": "new"}
    )


def test_message_from_older_writer_schema_decodes_with_missing_fields_null(
    registry: SchemaRegistryClient, decoder: RegistryAvroDecoder
) -> None:
    older = schema_variant(_drop_fields)
    older_id = registry.register_schema("cloudtrail-value", Schema(older, "AVRO"))
    record = decoder.decode(wire(older_id, avro_body(RECORD, json.loads(older))))
    assert record["tlsDetails"] is None
    assert record["sessionCredentialFromConsole"] is None
    assert record == {**RECORD, "tlsDetails": None, "sessionCredentialFromConsole": None}


def test_message_from_newer_writer_schema_decodes_without_the_unknown_field(
    registry: SchemaRegistryClient, decoder: RegistryAvroDecoder
) -> None:
    newer = schema_variant(_add_field)
    newer_id = registry.register_schema("cloudtrail-value", Schema(newer, "AVRO"))
    body = avro_body({**RECORD, "eventContext": "tags"}, json.loads(newer))
    assert decoder.decode(wire(newer_id, body)) == RECORD


def test_resolution_is_skipped_only_when_the_writer_schema_is_the_reader_schema(
    registry: SchemaRegistryClient,
    schema_id: int,
    decoder: RegistryAvroDecoder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    older = schema_variant(_drop_fields)
    older_id = registry.register_schema("cloudtrail-value", Schema(older, "AVRO"))
    reader_spy = MagicMock(wraps=fastavro.schemaless_reader)
    monkeypatch.setattr(decode_module, "schemaless_reader", reader_spy)
    decoder.decode(wire(schema_id, avro_body(RECORD)))
    decoder.decode(wire(older_id, avro_body(RECORD, json.loads(older))))
    reader_schemas = [call.args[2] for call in reader_spy.call_args_list]
    assert reader_schemas == [None, READER_SCHEMA]


def test_writer_schema_that_cannot_resolve_is_incompatible(
    registry: SchemaRegistryClient, decoder: RegistryAvroDecoder
) -> None:
    def event_name_is_a_number(schema: dict[str, Any]) -> None:
        for field in schema["fields"]:
            if field["name"] == "eventName":
                field["type"] = "long"

    clashing = schema_variant(event_name_is_a_number)
    clashing_id = registry.register_schema("cloudtrail-value", Schema(clashing, "AVRO"))
    body = avro_body({**RECORD, "eventName": 7}, json.loads(clashing))
    assert reason_of(decoder, wire(clashing_id, body)) == "incompatible-schema"


@pytest.mark.parametrize(
    "schema",
    [
        Schema('{"type": "object"}', "JSON"),
        Schema('"string"', "AVRO"),
        Schema("{not json", "AVRO"),
        Schema(schema_variant(lambda s: None), "AVRO", [SchemaReference("Other", "other", 1)]),
        Schema(
            schema_variant(
                lambda s: s["fields"].append(
                    {"name": "nulls", "type": {"type": "array", "items": "null"}, "default": []}
                )
            ),
            "AVRO",
        ),
    ],
    ids=["json-schema", "not-a-record", "unparseable", "references", "array-of-null"],
)
def test_registered_schema_the_decoder_cannot_read_is_incompatible_and_asked_once(
    registry: SchemaRegistryClient, schema: Schema, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_id = registry.register_schema("bad-value", schema)
    spy = MagicMock(wraps=registry.get_schema)
    monkeypatch.setattr(registry, "get_schema", spy)
    decoder = RegistryAvroDecoder(registry)
    assert reason_of(decoder, wire(bad_id, b"\x00")) == "incompatible-schema"
    assert reason_of(decoder, wire(bad_id, b"\x00")) == "incompatible-schema"
    assert spy.call_count == 1


def test_unknown_schema_id_is_poison(decoder: RegistryAvroDecoder) -> None:
    with pytest.raises(DecodeError) as caught:
        decoder.decode(wire(999, avro_body(RECORD)))
    assert caught.value.reason == "unknown-schema-id"
    assert caught.value.retriable is False
    assert "999" in str(caught.value)


def test_registry_outage_is_retriable_and_not_cached(
    registry: SchemaRegistryClient, schema_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_get_schema = registry.get_schema
    outage = MagicMock(side_effect=ConnectionError("refused"))
    monkeypatch.setattr(registry, "get_schema", outage)
    decoder = RegistryAvroDecoder(registry, outage_memory_s=0)
    message = wire(schema_id, avro_body(RECORD))
    with pytest.raises(DecodeError) as caught:
        decoder.decode(message)
    assert (caught.value.reason, caught.value.retriable) == ("registry-unavailable", True)
    monkeypatch.setattr(registry, "get_schema", real_get_schema)
    assert decoder.decode(message) == RECORD


def test_a_registry_outage_is_remembered_briefly_so_a_batch_asks_once(
    registry: SchemaRegistryClient, schema_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    outage = MagicMock(side_effect=ConnectionError("refused"))
    monkeypatch.setattr(registry, "get_schema", outage)
    decoder = RegistryAvroDecoder(registry, outage_memory_s=60)
    message = wire(schema_id, avro_body(RECORD))
    reasons = []
    for _ in range(5):
        with pytest.raises(DecodeError) as caught:
            decoder.decode(message)
        error = caught.value
        reasons.append((error.reason, error.retriable, "refused" in str(error)))
    assert reasons == [("registry-unavailable", True, True)] * 5
    assert outage.call_count == 1


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_unreachable_registry_is_retriable(closed_port: int) -> None:
    client = SchemaRegistryClient(
        {"url": f"http://127.0.0.1:{closed_port}", "timeout": 2, "max.retries": 0}
    )
    with pytest.raises(DecodeError) as caught:
        RegistryAvroDecoder(client).decode(wire(1, avro_body(RECORD)))
    assert caught.value.reason == "registry-unavailable"
    assert caught.value.retriable is True
    assert "ConnectError" in str(caught.value)


def test_a_batch_is_not_vouched_for_while_the_registry_is_unreachable(closed_port: int) -> None:
    """Each message is then checked alone, which reports the retriable error per partition."""
    client = SchemaRegistryClient(
        {"url": f"http://127.0.0.1:{closed_port}", "timeout": 2, "max.retries": 0}
    )
    message = wire(1, avro_body(RECORD))
    assert not RegistryAvroDecoder(client).well_framed([message], [len(message)])


def test_a_batch_with_an_unknown_schema_id_is_not_vouched_for(
    decoder: RegistryAvroDecoder, schema_id: int
) -> None:
    known = wire(schema_id, avro_body(RECORD))
    unknown = wire(schema_id + 1000, avro_body(RECORD))
    assert decoder.well_framed([known, known], [len(known)] * 2)
    assert not decoder.well_framed([known, unknown], [len(known), len(unknown)])


def test_a_batch_with_a_message_over_the_limit_is_not_vouched_for() -> None:
    body = avro_body(RECORD)
    decoder = SchemalessAvroDecoder(max_payload_bytes=len(body))
    assert decoder.well_framed([body], [len(body)])
    assert not decoder.well_framed([body, body + b"x"], [len(body), len(body) + 1])


class _FixedAnswer(BaseHTTPRequestHandler):
    """Answers every GET with the server's `answer`: (status, registry error code)."""

    server: "_RegistryStub"

    def do_GET(self) -> None:
        self.server.asked += 1
        status, error_code = self.server.answer
        body = json.dumps({"error_code": error_code, "message": "stub answer"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


class _RegistryStub(ThreadingHTTPServer):
    answer: tuple[int, int]
    asked = 0


@pytest.fixture(scope="module")
def registry_stub() -> Iterator[_RegistryStub]:
    """A loopback HTTP server standing in for a Schema Registry that answers errors."""
    server = _RegistryStub(("127.0.0.1", 0), _FixedAnswer)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(
    ("answer", "reason", "retriable"),
    [
        ((404, 40403), "unknown-schema-id", False),
        ((503, 50301), "registry-unavailable", True),
        ((500, 50001), "registry-unavailable", True),
        ((401, 40101), "registry-unavailable", True),
    ],
)
def test_registry_http_errors_map_to_reasons(
    registry_stub: _RegistryStub, answer: tuple[int, int], reason: str, retriable: bool
) -> None:
    registry_stub.answer = answer
    host, port = registry_stub.server_address[:2]
    client = SchemaRegistryClient({"url": f"http://{host!s}:{port}", "max.retries": 0})
    with pytest.raises(DecodeError) as caught:
        RegistryAvroDecoder(client).decode(wire(1, avro_body(RECORD)))
    assert (caught.value.reason, caught.value.retriable) == (reason, retriable)
    assert str(answer[0]) in str(caught.value)


def test_the_detectors_registry_client_asks_once_and_leaves_retrying_to_the_service(
    registry_stub: _RegistryStub,
) -> None:
    registry_stub.answer = (503, 50301)
    host, port = registry_stub.server_address[:2]
    settings = Settings.model_validate(
        {"input_topics": ["in"], "input_format": "avro-registry",
         "schema_registry_url": f"http://{host!s}:{port}"}
    )
    asked_before = registry_stub.asked
    with pytest.raises(DecodeError) as caught:
        RegistryAvroDecoder(registry_client(settings)).decode(wire(1, avro_body(RECORD)))
    assert caught.value.retriable
    assert registry_stub.asked - asked_before == 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"\x01\x00\x00\x00\x01body", "bad-magic"),
        (b"{", "bad-magic"),
        (b"\x00\x00\x00", "avro-truncated"),
    ],
)
def test_registry_decoder_rejects_bad_framing(
    decoder: RegistryAvroDecoder, payload: bytes | None, reason: str
) -> None:
    assert reason_of(decoder, payload) == reason


def test_registry_decoder_body_errors(decoder: RegistryAvroDecoder, schema_id: int) -> None:
    body = avro_body(RECORD)
    assert reason_of(decoder, wire(schema_id, body[:-4])) == "avro-truncated"
    assert reason_of(decoder, wire(schema_id, body + b"\x00")) == "avro-trailing-bytes"
    assert reason_of(decoder, wire(schema_id, b"\xff" * 12)) == "avro-corrupt"


def test_schemaless_decoder_reads_a_bare_avro_body() -> None:
    assert SchemalessAvroDecoder().decode(avro_body(RECORD)) == RECORD


def test_schemaless_decoder_resolves_a_configured_older_writer_schema() -> None:
    older = json.loads(schema_variant(_drop_fields))
    decoder = SchemalessAvroDecoder(writer_schema=older)
    record = decoder.decode(avro_body(RECORD, older))
    assert record == {**RECORD, "tlsDetails": None, "sessionCredentialFromConsole": None}


def test_schemaless_decoder_refuses_an_unsafe_writer_schema_at_construction() -> None:
    zero_size_items = {
        "type": "record",
        "name": "Spin",
        "fields": [
            {
                "name": "a",
                "type": {"type": "array", "items": {"type": "record", "name": "E", "fields": []}},
            }
        ],
    }
    with pytest.raises(ValueError, match="zero bytes"):
        SchemalessAvroDecoder(writer_schema=zero_size_items)
    with pytest.raises(ValueError, match="not a record"):
        SchemalessAvroDecoder(writer_schema="string")
    with pytest.raises(ValueError, match="not a valid Avro schema"):
        SchemalessAvroDecoder(writer_schema={"type": "record", "name": "R", "fields": "x"})


def one_field_record(field_type: Any) -> dict[str, Any]:
    return {"type": "record", "name": "One", "fields": [{"name": "f", "type": field_type}]}


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "array", "items": ["null", "string"]},
        {"type": "array", "items": {"type": "array", "items": "string"}},
        {"type": "map", "values": "null"},
        {"type": "array", "items": {"type": "fixed", "name": "F", "size": 1}},
    ],
)
def test_writer_schema_check_accepts_arrays_whose_items_take_bytes(field_type: Any) -> None:
    readable_writer_schema(one_field_record(field_type))


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "array", "items": "null"},
        {"type": "array", "items": {"type": "array", "items": "null"}},
        {"type": "array", "items": {"type": "fixed", "name": "F", "size": 0}},
        {
            "type": "array",
            "items": {"type": "record", "name": "N", "fields": [{"name": "n", "type": "null"}]},
        },
        ["null", {"type": "array", "items": {"type": "record", "name": "E", "fields": []}}],
    ],
)
def test_writer_schema_check_refuses_arrays_of_zero_byte_items(field_type: Any) -> None:
    with pytest.raises(ValueError, match="zero bytes"):
        readable_writer_schema(one_field_record(field_type))


def test_writer_schema_check_accepts_our_schema() -> None:
    assert readable_writer_schema(READER_SCHEMA) == READER_SCHEMA


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"\x02\x02", "avro-truncated"),
        (b"\x02", "avro-truncated"),
        (b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80", "avro-corrupt"),
    ],
)
def test_schemaless_decoder_rejects_bad_bodies(payload: bytes | None, reason: str) -> None:
    assert reason_of(SchemalessAvroDecoder(), payload) == reason


def test_schemaless_decoder_rejects_trailing_garbage() -> None:
    assert reason_of(SchemalessAvroDecoder(), avro_body(RECORD) + b"junk") == "avro-trailing-bytes"


def test_payload_over_the_limit_is_too_large_for_every_decoder() -> None:
    body = avro_body(RECORD)
    limit = len(body) - 1
    json_text = json.dumps(EVENT).encode()
    assert reason_of(SchemalessAvroDecoder(max_payload_bytes=limit), body) == "too-large"
    assert reason_of(JsonDecoder(max_payload_bytes=len(json_text) - 1), json_text) == "too-large"
    registry_decoder = RegistryAvroDecoder(MagicMock(), max_payload_bytes=limit)
    assert reason_of(registry_decoder, wire(1, body)) == "too-large"


def test_json_decoder_gives_the_same_record_as_the_avro_path() -> None:
    record = JsonDecoder().decode(json.dumps(EVENT).encode())
    assert record == RECORD
    assert record == SchemalessAvroDecoder().decode(avro_body(record))


def test_json_decoder_reads_unicode_escapes() -> None:
    payload = json.dumps(EVENT, ensure_ascii=True).replace(
        "CreateAccessKey", "\\u0043reateAccessKey"
    )
    assert JsonDecoder().decode(payload.encode())["eventName"] == "CreateAccessKey"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"{", "invalid-json"),
        (b'{"eventVersion": "1.08"} trailing', "invalid-json"),
        (b"\xff\xfe{}", "invalid-json"),
        (b"\xef\xbb\xbf{}", "invalid-json"),
        (b'{"eventVersion": NaN}', "invalid-json"),
        (b'{"n": Infinity}', "invalid-json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid-json"),
        (b'"text"', "not-cloudtrail"),
        (b"null", "not-cloudtrail"),
        (b'{"eventVersion": "1.08", "eventSource": "s3.amazonaws.com"}', "not-cloudtrail"),
        (b'{"eventVersion": 1.08, "eventSource": "s", "eventName": "n"}', "not-cloudtrail"),
    ],
)
def test_json_decoder_rejects(payload: bytes | None, reason: str) -> None:
    assert reason_of(JsonDecoder(), payload) == reason


def test_json_decoder_message_names_the_missing_field() -> None:
    with pytest.raises(DecodeError, match="eventName is missing"):
        JsonDecoder().decode(b'{"eventVersion": "1.08", "eventSource": "s3.amazonaws.com"}')


def test_json_nesting_around_the_recursion_limit_never_escapes_as_recursion_error() -> None:
    """Depths where parsing succeeds but re-encoding the free-form value may not."""
    outcomes = set()
    for depth in range(sys.getrecursionlimit() - 150, sys.getrecursionlimit() + 10):
        nested = "[" * depth + "]" * depth
        payload = f'{{"eventVersion":"1","eventSource":"s","eventName":"n","x":{nested}}}'
        try:
            outcomes.add(JsonDecoder().decode(payload.encode())["eventName"])
        except DecodeError as error:
            outcomes.add(error.reason)
    assert outcomes == {"n", "invalid-json"}


def test_conversion_running_out_of_stack_is_invalid_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_module, "json_to_avro", MagicMock(side_effect=RecursionError))
    assert reason_of(JsonDecoder(), json.dumps(EVENT).encode()) == "invalid-json"


def test_decode_error_carries_reason_retriable_and_readable_text() -> None:
    error = DecodeError("avro-corrupt", "Avro body is corrupt: bad union index")
    assert (error.reason, error.retriable, str(error)) == (
        "avro-corrupt",
        False,
        "Avro body is corrupt: bad union index",
    )
    assert "avro-corrupt" in repr(error)


def test_a_registry_that_never_answers_costs_the_configured_timeout_not_the_clients_ten_seconds(
) -> None:
    """A server that accepts the connection and then says nothing (a hung registry)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    host, port = silent.getsockname()
    settings = Settings.model_validate(
        {"input_topics": ["in"], "input_format": "avro-registry",
         "schema_registry_url": f"http://{host}:{port}", "schema_registry_timeout_s": 0.3}
    )
    started = time.monotonic()
    try:
        with pytest.raises(DecodeError) as caught:
            RegistryAvroDecoder(registry_client(settings)).decode(wire(1, avro_body(RECORD)))
    finally:
        silent.close()
    assert (caught.value.reason, caught.value.retriable) == ("registry-unavailable", True)
    assert time.monotonic() - started < 5
