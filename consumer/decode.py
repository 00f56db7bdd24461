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

import json
import time
from collections.abc import Mapping, Sequence
from io import BytesIO
from operator import itemgetter
from typing import Any, Final, Literal, NoReturn, Protocol, cast

from confluent_kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError
from fastavro import parse_schema, schemaless_reader
from fastavro.read import SchemaResolutionError
from fastavro.types import Schema

from consumer.event import CloudTrailRecord
from consumer.record import READER_SCHEMA, NotCloudTrailError, json_to_avro

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
]

DEFAULT_MAX_PAYLOAD_BYTES: Final = 1024 * 1024
"""Kafka's default message size limit; a CloudTrail record is far smaller."""

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


class Decoder(Protocol):
    """Turns one message payload into a record, or raises DecodeError."""

    text_format: bool
    """True when the payload is JSON text, whose strings may be \\u-escaped; False for Avro."""

    def decode(self, payload: bytes | None) -> CloudTrailRecord: ...

    def check_framing(self, payload: bytes | None) -> None:
        """Raise DecodeError when the payload's envelope is already wrong, at a tiny fraction of
        decode's cost: for messages the prefilter lets skip decoding, so framing garbage still
        reaches the dead-letter topic."""

    def well_framed(self, payloads: Sequence[bytes | None], sizes: Sequence[int]) -> bool:
        """True when `check_framing` would pass every payload (`sizes` are their lengths, 0 for
        a missing one), judged for the batch at once. False means "check them one by one":
        some may fail, or the batch is not one this shortcut can vouch for."""


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
        client: SchemaRegistryClient,
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
        self._schemas: dict[int, tuple[Schema, Schema | None]] = {}
        """Schema id -> (parsed writer schema, reader schema or None when it equals the writer)."""
        self._incompatible: dict[int, str] = {}
        """Schema id -> why its schema cannot be read; ids never change their schema."""

    def decode(self, payload: bytes | None) -> CloudTrailRecord:
        data = _bounded(payload, self._max_payload_bytes)
        schemas = self._writer_and_reader(data)
        return _read_avro(data, _HEADER_SIZE, *schemas)

    def check_framing(self, payload: bytes | None) -> None:
        data = _bounded(payload, self._max_payload_bytes)
        writer_schema, _ = self._writer_and_reader(data)
        if _starts_with_string(writer_schema):
            _check_leading_string(data, _HEADER_SIZE)

    def well_framed(self, payloads: Sequence[bytes | None], sizes: Sequence[int]) -> bool:
        """Each distinct header is checked once; its schema must be cached or fetched now, so
        a batch vouched for here cannot raise a retriable error when decoded."""
        if not _sizes_within(sizes, _HEADER_SIZE + 1, self._max_payload_bytes):
            return False
        framed = cast(Sequence[bytes], payloads)
        try:
            leading = {
                _starts_with_string(self._writer_and_reader(header)[0])
                for header in set(map(itemgetter(slice(0, _HEADER_SIZE)), framed))
            }
        except DecodeError:
            return False
        if leading == {False}:
            return True
        return leading == {True} and _leading_strings_fit(framed, sizes, _HEADER_SIZE)

    def _writer_and_reader(self, data: bytes) -> tuple[Schema, Schema | None]:
        """The schemas named by the 5-byte header, from the cache or the registry."""
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

    def _fetch(self, schema_id: int) -> tuple[Schema, Schema | None]:
        if schema_id in self._incompatible:
            raise DecodeError("incompatible-schema", self._incompatible[schema_id])
        until, why = self._unavailable.get(schema_id, (0.0, ""))
        if time.monotonic() < until:
            raise DecodeError("registry-unavailable", why, retriable=True)
        try:
            registered = self._client.get_schema(schema_id)
        except SchemaRegistryError as error:
            if error.http_status_code == _HTTP_NOT_FOUND:
                raise DecodeError(
                    "unknown-schema-id",
                    f"schema id {schema_id} is not in the registry: {_detail(error)}",
                ) from error
            self._unavailable_now(
                schema_id, f"registry failed to return schema id {schema_id}: {_detail(error)}"
            )
        except Exception as error:
            # httpx transport errors (refused, timeout, DNS), OAuth token failures and the like.
            self._unavailable_now(
                schema_id, f"registry unreachable for schema id {schema_id}: {_detail(error)}"
            )
        self._unavailable.pop(schema_id, None)
        try:
            if registered.schema_type not in (None, "AVRO"):
                raise ValueError(f"it is a {registered.schema_type} schema, not Avro")
            if registered.schema_str is None:
                raise ValueError("the registry returned no schema text")
            if registered.references:
                raise ValueError("it has schema references, which this decoder does not resolve")
            writer_schema = readable_writer_schema(json.loads(registered.schema_str))
        except Exception as error:
            why = f"schema id {schema_id} cannot be read: {_detail(error)}"
            self._incompatible[schema_id] = why
            raise DecodeError("incompatible-schema", why) from error
        schemas = (writer_schema, _resolve_to(writer_schema, self._reader_schema))
        self._schemas[schema_id] = schemas
        return schemas

    def _unavailable_now(self, schema_id: int, why: str) -> NoReturn:
        self._unavailable[schema_id] = (time.monotonic() + self._outage_memory_s, why)
        raise DecodeError("registry-unavailable", why, retriable=True)


class SchemalessAvroDecoder:
    """A bare Avro body written with a configured writer schema (by default, ours)."""

    text_format = False

    def __init__(
        self,
        writer_schema: Schema = READER_SCHEMA,
        reader_schema: Schema = READER_SCHEMA,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        """Raises ValueError when `writer_schema` is not one this decoder can read safely."""
        self._writer_schema = readable_writer_schema(writer_schema)
        self._leading_string = _starts_with_string(self._writer_schema)
        self._reader_schema = _resolve_to(self._writer_schema, parse_schema(reader_schema))
        self._max_payload_bytes = max_payload_bytes

    def decode(self, payload: bytes | None) -> CloudTrailRecord:
        data = _bounded(payload, self._max_payload_bytes)
        return _read_avro(data, 0, self._writer_schema, self._reader_schema)

    def check_framing(self, payload: bytes | None) -> None:
        data = _bounded(payload, self._max_payload_bytes)
        if self._leading_string:
            _check_leading_string(data, 0)

    def well_framed(self, payloads: Sequence[bytes | None], sizes: Sequence[int]) -> bool:
        if not _sizes_within(sizes, 1, self._max_payload_bytes):
            return False
        return not self._leading_string or _leading_strings_fit(
            cast(Sequence[bytes], payloads), sizes, 0
        )


class JsonDecoder:
    """One CloudTrail JSON record (UTF-8) per message, converted to the Avro record shape."""

    text_format = True

    def __init__(self, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self._max_payload_bytes = max_payload_bytes

    def decode(self, payload: bytes | None) -> CloudTrailRecord:
        data = _bounded(payload, self._max_payload_bytes)
        try:
            value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
        except RecursionError as error:
            raise DecodeError("invalid-json", "JSON nests too deeply to parse") from error
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError both are
            raise DecodeError("invalid-json", f"not valid UTF-8 JSON: {_detail(error)}") from error
        try:
            return json_to_avro(value)
        except NotCloudTrailError as error:
            raise DecodeError("not-cloudtrail", f"not a CloudTrail record: {error}") from error
        except RecursionError as error:
            raise DecodeError("invalid-json", "JSON nests too deeply to convert") from error

    def check_framing(self, payload: bytes | None) -> None:
        data = _bounded(payload, self._max_payload_bytes)
        if data.lstrip()[:1] != b"{" or data.rstrip()[-1:] != b"}":
            raise DecodeError("invalid-json", "a CloudTrail record is a JSON object: {...}")

    def well_framed(self, payloads: Sequence[bytes | None], sizes: Sequence[int]) -> bool:
        """Vouches for unpadded objects only; one with whitespace around it is checked alone."""
        if not _sizes_within(sizes, 1, self._max_payload_bytes):
            return False
        framed = cast(Sequence[bytes], payloads)
        return set(map(itemgetter(0), framed)) == {_OPEN_BRACE} and set(
            map(itemgetter(-1), framed)
        ) == {_CLOSE_BRACE}


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


def _read_avro(
    data: bytes, offset: int, writer_schema: Schema, reader_schema: Schema | None
) -> CloudTrailRecord:
    stream = BytesIO(data)
    stream.seek(offset)
    try:
        record = schemaless_reader(stream, writer_schema, reader_schema)
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
