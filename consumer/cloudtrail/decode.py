"""Kafka message payload -> CloudTrailRecord, for the three wire formats the pipeline reads.

Every decoder raises DecodeError and nothing else: a bad message is reported with a short
machine-readable reason (for metrics and dead-lettering) and a message a person can read, and
never stops the stream. Only a registry that cannot be asked right now is `retriable`; every other
failure is a property of the message itself (poison).

Bounds against hostile input: a payload above `max_payload_bytes` is refused before parsing;
fastavro checks string and bytes lengths against the bytes left and reads array/map blocks lazily,
so with writer schemas whose array items take at least one byte (checked once per schema) a lying
length or count ends in "avro-truncated" after at most one step per payload byte.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from operator import itemgetter
from typing import Any, Final, Literal, NoReturn, Protocol, TypeAlias, cast

from fastavro import parse_schema, schemaless_reader
from fastavro.read import SchemaResolutionError
from fastavro.types import Schema

from consumer.cloudtrail.envelopes import (
    EnvelopeError,
    MessageHeaders,
    Shape,
    compressed,
    declared_codings,
    inflate,
    undo_codings,
    unwrap,
)
from consumer.cloudtrail.record import (
    EXTRA_FIELDS,
    JSON_TEXT_FIELDS,
    READER_SCHEMA,
    NotCloudTrailError,
    json_to_avro,
)
from consumer.cloudtrail.types import CloudTrailRecord

DecodeReason = Literal[
    "empty",
    "too-large",
    "bad-magic",
    "unknown-schema-id",
    "registry-unavailable",
    "incompatible-schema",
    "avro-truncated",
    "avro-corrupt",
    "avro-trailing-bytes",
    "invalid-json",
    "not-cloudtrail",
    "corrupt-gzip",
    "corrupt-base64",
    "unsupported-encoding",
    "unsupported-content-type",
    "header-mismatch",
]

DEFAULT_MAX_PAYLOAD_BYTES: Final = 1024 * 1024
"""Kafka's default message size limit; a CloudTrail record is far smaller."""

DEFAULT_MAX_INFLATED_BYTES: Final = 64 * 1024 * 1024
"""What a compressed payload may inflate to: CloudWatch Logs batches compress about 10:1."""

CONFLUENT_MAGIC_BYTE: Final = 0
_HEADER_SIZE: Final = 5
_DETAIL_LIMIT: Final = 200
_HTTP_NOT_FOUND: Final = 404
_OPEN_BRACE: Final = ord("{")
_CLOSE_BRACE: Final = ord("}")


class DecodeError(Exception):
    """A payload that did not decode to a CloudTrail record; `str(error)` says why."""

    reason: DecodeReason
    retriable: bool

    def __init__(self, reason: DecodeReason, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retriable = retriable

    def __repr__(self) -> str:
        return f"DecodeError({self.reason!r}, {str(self)!r}, retriable={self.retriable})"


@dataclass(frozen=True, slots=True)
class Events:
    """A message that is not one bare record (an S3 log file object, a CloudWatch Logs batch,
    an envelope): its records in order, a DecodeError in place of each one that did not
    convert; the envelope's fields for the alerts; or why it holds no event at all."""

    shape: Shape
    items: tuple[CloudTrailRecord | DecodeError, ...]
    raw: tuple[Any, ...]
    """Each item as the message held it (a JSON value, or the JSON text of one)."""
    context: Mapping[str, str] = field(default_factory=dict)
    skipped: str | None = None

    def original(self, index: int) -> str:
        """The JSON text of item `index`, for event.original and the dead-letter topic."""
        raw = self.raw[index]
        return raw if isinstance(raw, str) else json.dumps(raw, separators=(",", ":"))


Decoded: TypeAlias = CloudTrailRecord | Events
"""A bare record (a dict: the hot path), or the Events of a message holding several or none."""


class Decoder(Protocol):
    """Turns one message payload into a record or Events, or raises DecodeError."""

    text_format: bool
    """True when the payload is JSON text, whose strings may be \\u-escaped; False for Avro."""

    def decode(self, payload: bytes | None, headers: MessageHeaders | None = None) -> Decoded:
        """`headers`, the message's, are passed only when they name its content (see
        `consumer.cloudtrail.envelopes.declared_codings`); Avro decoders go by their bytes alone."""

    def check_framing(self, payload: bytes | None) -> bool:
        """Raise DecodeError when the payload's envelope is already wrong, at a tiny fraction of
        decode's cost: for messages the prefilter lets skip decoding, so framing garbage still
        reaches the dead-letter topic. False when the prefilter cannot judge this payload on
        its bytes (compressed, or a schema that holds the record as JSON text): decode it."""

    def well_framed(self, payloads: Sequence[bytes | None], sizes: Sequence[int]) -> bool:
        """True when `check_framing` would pass every payload (`sizes` are their lengths, 0 for
        a missing one), judged for the batch at once. False means "check them one by one":
        some may fail, or the batch is not one this shortcut can vouch for."""


class RegisteredSchema(Protocol):
    """What a Schema Registry returns for an id (confluent-kafka's `Schema` has this shape)."""

    @property
    def schema_str(self) -> str | None: ...
    @property
    def schema_type(self) -> str | None: ...
    @property
    def references(self) -> Sequence[object] | None: ...


class WriterSchemas(Protocol):
    """Looks writer schemas up by id: a Schema Registry client (see `consumer.stream.registry`).
    An error with `http_status_code` 404 means the id is unknown; any other error that the
    registry could not answer now."""

    def get_schema(self, schema_id: int) -> RegisteredSchema: ...


class RegistryAvroDecoder:
    """Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body.

    Writer schemas are fetched by id from the registry once, parsed once and kept; older or newer
    compatible writer schemas are resolved to `reader_schema`. The registry client's `timeout`
    and `max.retries` bound how long a first message with a new id can block. A registry that
    could not answer is not asked about the same id again for `outage_memory_s`: every message
    of a batch that needs it then gets the same retriable error at once, instead of each one
    holding up the loop for another round trip to a registry that is down.
    """

    text_format = False

    def __init__(
        self,
        client: WriterSchemas,
        reader_schema: Schema = READER_SCHEMA,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        outage_memory_s: float = 1.0,
    ) -> None:
        self._client = client
        self._outage_memory_s = outage_memory_s
        self._unavailable: dict[int, tuple[float, str]] = {}
        """Schema id -> (until when, why): the registry failed to answer for it just now."""
        self._reader_schema = parse_schema(reader_schema)
        self._max_payload_bytes = max_payload_bytes
        self._schemas: dict[int, _Reading] = {}
        """Schema id -> how to read and normalize its bodies."""
        self._incompatible: dict[int, str] = {}
        """Schema id -> why its schema cannot be read; ids never change their schema."""

    def decode(self, payload: bytes | None, headers: MessageHeaders | None = None) -> Decoded:
        data = _bounded(payload, self._max_payload_bytes)
        return _read_avro(data, _HEADER_SIZE, self._reading(data))

    def check_framing(self, payload: bytes | None) -> bool:
        data = _bounded(payload, self._max_payload_bytes)
        reading = self._reading(data)
        if reading.leading_string:
            _check_leading_string(data, _HEADER_SIZE)
        return reading.screenable

    def well_framed(self, payloads: Sequence[bytes | None], sizes: Sequence[int]) -> bool:
        """Each distinct header is checked once; its schema must be cached or fetched now, so
        a batch vouched for here cannot raise a retriable error when decoded."""
        if not _sizes_within(sizes, _HEADER_SIZE + 1, self._max_payload_bytes):
            return False
        framed = cast(Sequence[bytes], payloads)
        try:
            readings = [
                self._reading(header)
                for header in set(map(itemgetter(slice(0, _HEADER_SIZE)), framed))
            ]
        except DecodeError:
            return False
        if not all(reading.screenable for reading in readings):
            return False
        leading = {reading.leading_string for reading in readings}
        if leading == {False}:
            return True
        return leading == {True} and _leading_strings_fit(framed, sizes, _HEADER_SIZE)

    def _reading(self, data: bytes) -> _Reading:
        """How to read the schema named by the 5-byte header, from the cache or the registry."""
        if data[0] != CONFLUENT_MAGIC_BYTE:
            raise DecodeError(
                "bad-magic",
                f"first byte is {data[0]}, not the Confluent wire format's magic byte 0",
            )
        if len(data) < _HEADER_SIZE:
            raise DecodeError(
                "avro-truncated", f"{len(data)} bytes: shorter than the 5-byte header"
            )
        schema_id = int.from_bytes(data[1:_HEADER_SIZE], "big")
        return self._schemas.get(schema_id) or self._fetch(schema_id)

    def _fetch(self, schema_id: int) -> _Reading:
        if schema_id in self._incompatible:
            raise DecodeError("incompatible-schema", self._incompatible[schema_id])
        until, why = self._unavailable.get(schema_id, (0.0, ""))
        if time.monotonic() < until:
            raise DecodeError("registry-unavailable", why, retriable=True)
        try:
            registered = self._client.get_schema(schema_id)
        except Exception as error:
            status = getattr(error, "http_status_code", None)
            if status == _HTTP_NOT_FOUND:
                raise DecodeError(
                    "unknown-schema-id",
                    f"schema id {schema_id} is not in the registry: {_detail(error)}",
                ) from error
            # An HTTP error status, or httpx transport errors (refused, timeout, DNS), OAuth
            # token failures and the like.
            answered = "failed to return" if status is not None else "unreachable for"
            self._unavailable_now(
                schema_id, f"registry {answered} schema id {schema_id}: {_detail(error)}"
            )
        self._unavailable.pop(schema_id, None)
        try:
            if registered.schema_type not in (None, "AVRO"):
                raise ValueError(f"it is a {registered.schema_type} schema, not Avro")
            if registered.schema_str is None:
                raise ValueError("the registry returned no schema text")
            if registered.references:
                raise ValueError("it has schema references, which this decoder does not resolve")
            reading = _reading_for(
                readable_writer_schema(json.loads(registered.schema_str)), self._reader_schema
            )
        except Exception as error:
            why = f"schema id {schema_id} cannot be read: {_detail(error)}"
            self._incompatible[schema_id] = why
            raise DecodeError("incompatible-schema", why) from error
        self._schemas[schema_id] = reading
        return reading

    def _unavailable_now(self, schema_id: int, why: str) -> NoReturn:
        self._unavailable[schema_id] = (time.monotonic() + self._outage_memory_s, why)
        raise DecodeError("registry-unavailable", why, retriable=True)


class SchemalessAvroDecoder:
    """A bare Avro body written with a configured writer schema (by default, ours; any schema
    that carries CloudTrail is normalized as the registry decoder does)."""

    text_format = False

    def __init__(
        self,
        writer_schema: Schema = READER_SCHEMA,
        reader_schema: Schema = READER_SCHEMA,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        """Raises ValueError when `writer_schema` is not one this decoder can read safely."""
        self._reading = _reading_for(readable_writer_schema(writer_schema),
                                     parse_schema(reader_schema))
        self._max_payload_bytes = max_payload_bytes

    def decode(self, payload: bytes | None, headers: MessageHeaders | None = None) -> Decoded:
        data = _bounded(payload, self._max_payload_bytes)
        return _read_avro(data, 0, self._reading)

    def check_framing(self, payload: bytes | None) -> bool:
        data = _bounded(payload, self._max_payload_bytes)
        if self._reading.leading_string:
            _check_leading_string(data, 0)
        return self._reading.screenable

    def well_framed(self, payloads: Sequence[bytes | None], sizes: Sequence[int]) -> bool:
        if not _sizes_within(sizes, 1, self._max_payload_bytes) or not self._reading.screenable:
            return False
        return not self._reading.leading_string or _leading_strings_fit(
            cast(Sequence[bytes], payloads), sizes, 0
        )


class JsonDecoder:
    """CloudTrail JSON (UTF-8) in any shape of `consumer.cloudtrail.envelopes`, possibly gzip or
    base64 gzip, converted to the Avro record shape. `shape` pins one shape instead of detecting
    it."""

    text_format = True

    def __init__(
        self,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
        shape: Shape | None = None,
    ) -> None:
        self._max_payload_bytes = max_payload_bytes
        self._max_inflated_bytes = max_inflated_bytes
        self._shape = shape

    def decode(self, payload: bytes | None, headers: MessageHeaders | None = None) -> Decoded:
        """`headers` naming a coding (content-encoding gzip...) have it checked and undone
        first; without them gzip and base64 are found by their first bytes."""
        data = _bounded(payload, self._max_payload_bytes)
        if headers:
            data = self._declared(data, headers)
        if compressed(data):
            data = _inflated(data, self._max_inflated_bytes)
        value = _parse_json(data)
        if type(value) is dict and "eventVersion" in value and self._shape in (None, "record"):
            return _to_record(value)  # a bare record: the common case, detected in one lookup
        return from_json_value(value, self._shape)

    def _declared(self, data: bytes, headers: MessageHeaders) -> bytes:
        try:
            codings = declared_codings(headers)
            if codings is None:
                return data
            return undo_codings(data, codings, self._max_inflated_bytes)
        except EnvelopeError as error:
            raise DecodeError(error.reason, str(error)) from error
        except ValueError as error:
            raise DecodeError("too-large", f"the encoded payload {error}") from error

    def check_framing(self, payload: bytes | None) -> bool:
        data = _bounded(payload, self._max_payload_bytes)
        if compressed(data):
            return False
        stripped = data.strip()
        if stripped[:1] == b"{" and stripped[-1:] == b"}":
            return True
        if stripped[:1] == b"[" and stripped[-1:] == b"]":
            return False  # an array of records: rare on a topic, so simply decoded
        raise DecodeError("invalid-json", "a CloudTrail message is a JSON object: {...}")

    def well_framed(self, payloads: Sequence[bytes | None], sizes: Sequence[int]) -> bool:
        """Vouches for unpadded objects only; one with whitespace around it is checked alone,
        and so is a compressed one (its first byte is not a brace)."""
        if not _sizes_within(sizes, 1, self._max_payload_bytes):
            return False
        framed = cast(Sequence[bytes], payloads)
        return set(map(itemgetter(0), framed)) == {_OPEN_BRACE} and set(
            map(itemgetter(-1), framed)
        ) == {_CLOSE_BRACE}


def from_json_value(value: Any, shape: Shape | None = None) -> Decoded:
    """The record(s) of a parsed JSON message: a bare record as is, any other shape as Events.
    Raises DecodeError for a bare value that is not a record and for a shape it cannot hold."""
    try:
        unwrapped = unwrap(value, shape)
    except EnvelopeError as error:
        raise DecodeError(error.reason, str(error)) from error
    if unwrapped.shape == "record":
        return _to_record(unwrapped.events[0])
    items: list[CloudTrailRecord | DecodeError] = []
    for event in unwrapped.events:
        try:
            items.append(_to_record(_parse_json(event) if isinstance(event, str) else event))
        except DecodeError as error:
            items.append(error)
    return Events(unwrapped.shape, tuple(items), tuple(unwrapped.events), unwrapped.context,
                  unwrapped.skipped)


def _inflated(data: bytes, limit: int) -> bytes:
    try:
        return inflate(data, limit)
    except EnvelopeError as error:
        raise DecodeError(error.reason, str(error)) from error
    except ValueError as error:
        raise DecodeError("too-large", f"the compressed payload {error}") from error


def _parse_json(data: bytes | str) -> Any:
    """JSON from UTF-8 bytes, or from the text of a JSON string (which may hold lone
    surrogates from \\udXXX escapes: json.loads takes them as they are)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError as error:
        raise DecodeError("invalid-json", "JSON nests too deeply to parse") from error
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError both are
        raise DecodeError("invalid-json", f"not valid UTF-8 JSON: {_detail(error)}") from error


def _to_record(value: Any) -> CloudTrailRecord:
    try:
        return json_to_avro(value)
    except NotCloudTrailError as error:
        raise DecodeError("not-cloudtrail", f"not a CloudTrail record: {error}") from error
    except RecursionError as error:
        raise DecodeError("invalid-json", "JSON nests too deeply to convert") from error


def readable_writer_schema(schema: Schema) -> Schema:
    """Parse a writer schema, refusing ones a lying Avro body could make loop without bound.

    An array whose items encode in zero bytes (null, an empty record, fixed of size 0) lets a
    huge block count spin without consuming input; every other type takes at least one byte per
    item, so the payload size bounds the work. The top level must be a record. Raises ValueError.
    """
    try:
        parsed = parse_schema(schema)
    except Exception as error:  # fastavro raises SchemaParseException, UnknownType, KeyError...
        raise ValueError(f"not a valid Avro schema: {_detail(error)}") from error
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise ValueError("the writer schema's top level is not a record")
    named = cast(dict[str, Any], parsed.get("__named_schemas", {}))
    _refuse_zero_size_arrays(parsed, named, set())
    return parsed


def _refuse_zero_size_arrays(schema: Any, named: Mapping[str, Any], seen: set[str]) -> None:
    if isinstance(schema, str):
        if schema in named and schema not in seen:
            seen.add(schema)
            _refuse_zero_size_arrays(named[schema], named, seen)
        return
    if isinstance(schema, list):
        for branch in schema:
            _refuse_zero_size_arrays(branch, named, seen)
        return
    kind = schema["type"]
    if kind in ("record", "error"):
        seen.add(schema["name"])
        for field in schema["fields"]:
            _refuse_zero_size_arrays(field["type"], named, seen)
    elif kind == "array":
        if _encodes_in_zero_bytes(schema["items"], named, set()):
            raise ValueError("it has an array whose items encode in zero bytes")
        _refuse_zero_size_arrays(schema["items"], named, seen)
    elif kind == "map":
        _refuse_zero_size_arrays(schema["values"], named, seen)
    else:  # a primitive, enum or fixed, or a type given by name or nested as "type"
        _refuse_zero_size_arrays(kind, named, seen)


def _encodes_in_zero_bytes(schema: Any, named: Mapping[str, Any], seen: set[str]) -> bool:
    if isinstance(schema, list):
        return False  # a union writes its branch index
    if isinstance(schema, str):
        if schema == "null":
            return True
        if schema in named and schema not in seen:
            seen.add(schema)
            return _encodes_in_zero_bytes(named[schema], named, seen)
        return False
    kind = schema["type"]
    if kind in ("record", "error"):
        seen.add(schema["name"])
        return all(_encodes_in_zero_bytes(f["type"], named, seen) for f in schema["fields"])
    if kind == "fixed":
        return bool(schema["size"] == 0)
    return _encodes_in_zero_bytes(kind, named, seen)


@dataclass(frozen=True, slots=True)
class _Reading:
    """How the bodies of one writer schema are read and turned into CloudTrail records."""

    writer: Schema
    reader: Schema | None
    """The reader schema to resolve to, None to read with the writer schema alone."""
    normalize: Callable[[Any], Decoded] | None
    """For a foreign schema: what it read -> record(s); None when it reads our record shape."""
    screenable: bool
    """The record's top-level strings are plain Avro strings, so the prefilter's literals show
    in the body as they are; False for a record held as JSON text (which may \\u-escape)."""
    leading_string: bool
    """The body starts with eventVersion's length, checked on framing (ours and its versions)."""


_OUR_TOP_STRINGS: Final = frozenset(
    spec["name"]
    for spec in cast(dict[str, Any], READER_SCHEMA)["fields"]
    if "string" in (spec["type"] if isinstance(spec["type"], list) else [spec["type"]])
    and spec["name"] not in JSON_TEXT_FIELDS
    and spec["name"] != EXTRA_FIELDS
)
"""The record's own top-level strings, whose bytes the prefilter looks for (not the free-form
objects, which the prefilter never reads)."""


def _reading_for(writer: Schema, reader: Schema) -> _Reading:
    """Our schema and its versions (same full name) resolve to ours; any other schema is read
    as written and normalized from the field names it carries. Raises ValueError for a schema
    that does not carry CloudTrail."""
    spec = cast(dict[str, Any], writer)
    if spec["name"] == cast(dict[str, Any], reader)["name"]:
        return _Reading(writer, _resolve_to(writer, reader), None, True,
                        _starts_with_string(writer))
    fields = {field["name"]: field["type"] for field in spec["fields"]}
    if {"eventName", "eventSource"} <= fields.keys():
        screenable = all(
            _spelled_out(kind) for name, kind in fields.items() if name in _OUR_TOP_STRINGS
        )
        return _Reading(writer, None, _from_typed, screenable, False)
    texts = [name for name, kind in fields.items() if _plain_string(kind)]
    if len(texts) == 1:
        return _Reading(writer, None, _from_json_text(texts[0]), False, False)
    raise ValueError(
        f"record {spec['name']} does not carry CloudTrail: it has neither eventName and "
        f"eventSource fields nor a single string field holding the record as JSON "
        f"(fields: {', '.join(fields)})"
    )


def _spelled_out(kind: Any) -> bool:
    """A type whose strings are written as their bytes: a string is, an enum symbol is not
    (it is written as its index); a number or timestamp holds no string a rule compares."""
    branches = kind if isinstance(kind, list) else [kind]
    return all(
        branch in _PRIMITIVES if isinstance(branch, str) else branch.get("type") in _PRIMITIVES
        for branch in branches
    )


_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)


def _plain_string(kind: Any) -> bool:
    """A string, or a string that may be null: what reads back as the record's own bytes."""
    branches = kind if isinstance(kind, list) else [kind]
    return "string" in branches and set(branches) <= {"string", "null"}


def _from_typed(value: Any) -> Decoded:
    return from_json_value(_as_json(value, None))


def _from_json_text(name: str) -> Callable[[Any], Decoded]:
    def normalize(value: Any) -> Decoded:
        text = value.get(name)
        if not isinstance(text, str):
            raise DecodeError("not-cloudtrail", f"the record's {name} field is empty")
        return from_json_value(_parse_json(text))

    return normalize


def _as_json(value: Any, name: str | None) -> Any:
    """A value as fastavro read it -> the JSON value CloudTrail would have written: absent for
    null, free-form objects parsed from JSON text, timestamps in CloudTrail's spelling."""
    if isinstance(value, dict):
        converted = {key: _as_json(item, key) for key, item in value.items() if item is not None}
        extra = converted.pop(EXTRA_FIELDS, None)
        if isinstance(extra, str) and extra.startswith("{"):
            converted.update(_parse_json(extra))
        return converted
    if isinstance(value, list):
        return [_as_json(item, None) for item in value]
    if isinstance(value, str):
        if name in JSON_TEXT_FIELDS and value[:1] in ("{", "["):
            return _parse_json(value)
        return value
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool | int | float):
        return value
    return str(value)  # UUID, Decimal, date, time: their text


def _resolve_to(writer_schema: Schema, reader_schema: Schema) -> Schema | None:
    """The reader schema to pass fastavro: None when identical, which skips resolution."""
    return None if writer_schema == reader_schema else reader_schema


def _sizes_within(sizes: Sequence[int], shortest: int, longest: int) -> bool:
    """Every size in [shortest, longest]; for a batch, so an empty one has nothing to refuse."""
    return not sizes or (min(sizes) >= shortest and max(sizes) <= longest)


def _bounded(payload: bytes | None, max_payload_bytes: int) -> bytes:
    if not payload:
        raise DecodeError("empty", "the message has no payload (empty or a tombstone)")
    if len(payload) > max_payload_bytes:
        raise DecodeError(
            "too-large", f"{len(payload)} bytes is over the {max_payload_bytes}-byte limit"
        )
    return payload


def _read_avro(data: bytes, offset: int, reading: _Reading) -> Decoded:
    stream = BytesIO(data)
    stream.seek(offset)
    try:
        record = schemaless_reader(stream, reading.writer, reading.reader)
    except EOFError as error:
        raise DecodeError("avro-truncated", f"Avro body ends early: {_detail(error)}") from error
    except SchemaResolutionError as error:
        raise DecodeError(
            "incompatible-schema", f"writer schema does not resolve: {_detail(error)}"
        ) from error
    except Exception as error:
        # Corrupt bodies surface as IndexError, ValueError, UnicodeDecodeError, OverflowError...
        raise DecodeError("avro-corrupt", f"Avro body is corrupt: {_detail(error)}") from error
    trailing = len(data) - stream.tell()
    if trailing:
        raise DecodeError(
            "avro-trailing-bytes",
            f"{trailing} byte(s) left after the Avro record: wrong schema or corrupt framing",
        )
    if reading.normalize is not None:
        try:
            return reading.normalize(record)
        except RecursionError as error:  # a recursive writer schema, nested deep
            raise DecodeError("avro-corrupt", "the record nests too deeply") from error
    return cast(CloudTrailRecord, record)


_MAX_LEADING_STRING = 63
"""eventVersion, the first field of a CloudTrail record, is a few characters ("1.11"); up to 63
its zigzag length fits in one byte, which keeps the check to a few operations per message."""


def _starts_with_string(writer_schema: Schema) -> bool:
    fields = writer_schema.get("fields") if isinstance(writer_schema, dict) else None
    return isinstance(fields, list) and bool(fields) and fields[0].get("type") == "string"


def _check_leading_string(data: bytes, offset: int) -> None:
    """The body of a record whose first field is a plain string (eventVersion in ours) starts
    with that string's length: one byte, even (zigzag for positive), fitting in the payload."""
    if len(data) <= offset or not _leading_strings_fit((data,), (len(data),), offset):
        raise DecodeError(
            "avro-corrupt",
            "the Avro body does not start with the writer schema's first string field",
        )


def _leading_strings_fit(payloads: Sequence[bytes], sizes: Sequence[int], offset: int) -> bool:
    """The leading-string test of payloads at least `offset` + 1 bytes long, for a batch at once:
    the distinct first bytes are few (eventVersion has a handful of values), and the longest of
    their strings must fit in the shortest payload."""
    firsts = set(map(itemgetter(offset), payloads))
    return all(first < 0x80 and not first & 1 and first for first in firsts) and (
        max(firsts, default=0) >> 1 < min(sizes, default=0) - offset
    )


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _detail(error: BaseException) -> str:
    """The error's type and text, cut short: fastavro may quote whole schemas."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."
