"""The shapes CloudTrail arrives in, and the records inside them.

CloudTrail reaches Kafka bare, or wrapped by whatever carried it there:
- `record`: a bare record (what `aws cloudtrail` and most shippers forward);
- `records`: an S3 log file object `{"Records": [...]}`, or a JSON array of records; CloudTrail
  digest files (`digestStartTime`, `logFiles`) hold no events and are skipped;
- `eventbridge`: `{"detail-type": "AWS API Call via CloudTrail", "detail": {...}}`; other
  EventBridge events (GuardDuty findings, ...) are skipped;
- `cloudwatch`: a CloudWatch Logs subscription payload: `logEvents[].message` of a
  `DATA_MESSAGE` each hold a record; a `CONTROL_MESSAGE` is skipped. It is gzip-compressed,
  and base64 on top when it comes through Kinesis or Firehose;
- `filebeat`: a Filebeat / Elastic Agent document, the record as JSON text in `message`;
- `cribl`: a Cribl event, the record as JSON text in `_raw`;
- `lookup-events`: `aws cloudtrail lookup-events` output, `{"Events": [{"CloudTrailEvent": ...}]}`.
Any of them may be gzip-compressed, base64 of gzip, or base64 (as Kinesis hands records over),
found by their first bytes; a producer may say so in a `content-encoding` or `content-type`
header (`declared_codings`), which is then checked against the bytes. Detection looks at the
keys only, so it costs a few dict lookups; `unwrap(value, shape)` pins one shape instead.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

Shape = Literal[
    "record", "records", "eventbridge", "cloudwatch", "filebeat", "cribl", "lookup-events"
]
SHAPES: Final[tuple[str, ...]] = get_args(Shape)

GZIP_MAGIC: Final = b"\x1f\x8b"
BASE64_GZIP_MAGIC: Final = b"H4sI"
"""The base64 spelling of gzip's magic bytes and its deflate method byte."""
BASE64_JSON_MAGIC: Final = b"eyJ"
"""The base64 spelling of `{"`: a JSON object base64-encoded (no JSON text starts so)."""

CLOUDTRAIL_DETAIL_TYPES: Final = frozenset(
    {
        "AWS API Call via CloudTrail",
        "AWS Console Sign In via CloudTrail",
        "AWS Service Event via CloudTrail",
        "AWS Console Action via CloudTrail",
        "AWS Insight via CloudTrail",
    }
)

_RECORD_KEYS: Final = ("eventVersion", "eventSource", "eventName")


EnvelopeReason = Literal[
    "corrupt-gzip", "corrupt-base64", "invalid-json",
    "unsupported-encoding", "unsupported-content-type", "header-mismatch",
]


class EnvelopeError(ValueError):
    """A payload that claims a shape it does not hold: corrupt gzip or base64, a bad field."""

    def __init__(self, reason: EnvelopeReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """What a message holds: candidate records (JSON values; a str is the JSON text of one), the
    envelope's fields worth keeping for an alert, and why it holds none when it is skipped."""

    shape: Shape
    events: list[Any]
    context: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None


def compressed(data: bytes) -> bool:
    """True for gzip, base64-of-gzip and base64-of-JSON payloads, by their first bytes."""
    return (
        data[:2] == GZIP_MAGIC or data[:4] == BASE64_GZIP_MAGIC or data[:3] == BASE64_JSON_MAGIC
    )


def inflate(data: bytes, limit: int) -> bytes:
    """The bytes inside a gzip (or base64 gzip) payload, at most `limit` of them.

    Raises EnvelopeError for a corrupt stream and ValueError("too-large") past the limit: a
    small gzip bomb must not take the process's memory.
    """
    if data[:4] == BASE64_GZIP_MAGIC or data[:3] == BASE64_JSON_MAGIC:
        try:
            data = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError) as error:
            raise EnvelopeError("corrupt-base64", f"not valid base64: {error}") from error
        if data[:2] != GZIP_MAGIC:
            if len(data) > limit:
                raise ValueError(f"decodes to more than {limit} bytes")
            return data
    inflater = zlib.decompressobj(wbits=31)
    try:
        inflated = inflater.decompress(data, limit + 1)
    except zlib.error as error:
        raise EnvelopeError("corrupt-gzip", f"corrupt gzip: {error}") from error
    if len(inflated) > limit:
        raise ValueError(f"decompresses to more than {limit} bytes")
    if not inflater.eof:
        raise EnvelopeError("corrupt-gzip", "corrupt gzip: the stream ends early")
    return inflated


Coding = Literal["gzip", "base64"]
MessageHeaders = Sequence[tuple[str, Any]]
"""A Kafka message's headers as confluent_kafka gives them: (name, bytes or None) pairs."""

CONTENT_HEADERS: Final = frozenset({"content-type", "contenttype", "content-encoding"})

_CODINGS: Final[dict[str, tuple[Coding, ...]]] = {
    "gzip": ("gzip",), "x-gzip": ("gzip",), "base64": ("base64",), "identity": (),
}
"""`content-encoding` tokens: HTTP's gzip (x-gzip its old alias, RFC 9110) and identity, and
base64, which is no HTTP coding but names what Kinesis and Firehose hand over."""

_GZIP_TYPES: Final = frozenset({"application/gzip", "application/x-gzip"})
_OPAQUE_TYPES: Final = frozenset({"application/octet-stream", "text/plain"})
"""Content types that say nothing about the bytes (Spring's default for byte[] payloads)."""


def any_content_header(batch: Iterable[MessageHeaders | None]) -> bool:
    """True when a content header is among the headers of a batch's messages: each distinct
    header name is looked at once, so tracing headers on every message cost a set insert each."""
    names = {key for headers in batch if headers for key, _ in headers}
    return not CONTENT_HEADERS.isdisjoint(map(str.lower, names))


def claiming_headers(batch: Iterable[MessageHeaders | None]) -> set[tuple[str, Any]]:
    """The distinct (name, value) headers of a batch that claim a coding: each is judged once,
    so a content type every message carries costs a set insert a message."""
    pairs = {pair for headers in batch if headers for pair in headers}
    return {
        (key, raw) for key, raw in pairs
        if key.lower() in CONTENT_HEADERS and not _claims_nothing(key.lower(), raw)
    }


def makes_claim(headers: MessageHeaders) -> bool:
    """True when the headers declare a coding, or one `declared_codings` refuses: the message
    must be decoded with them. A JSON or opaque content type claims nothing, so a topic whose
    producer sets `content-type: application/json` keeps the prefilter's skips."""
    return any(
        not _claims_nothing(key.lower(), raw)
        for key, raw in headers
        if key.lower() in CONTENT_HEADERS
    )


@functools.lru_cache(maxsize=256)
def _claims_nothing(name: str, raw: Any) -> bool:
    """For one content header (its values repeat across a topic, hence the cache)."""
    try:
        return not declared_codings(((name, raw),))
    except EnvelopeError:
        return False


def declared_codings(headers: MessageHeaders) -> tuple[Coding, ...] | None:
    """The codings a producer's headers say the payload carries, in the order it applied them
    (`content-encoding: gzip, base64` is base64 of gzip); None when no header makes a claim.

    Header names are case-insensitive; Spring's `contentType` counts as `content-type`, and a
    value quoted as Spring's JSON header mapper writes it is unquoted. A JSON content type
    (CloudEvents' binary mode sets `content-type` to the data's type) or an opaque one claims
    nothing; of several content-encoding headers the last counts. Raises EnvelopeError for a
    coding or content type this reader does not handle.
    """
    encoded: list[Coding] | None = None
    gzip_type = False
    for key, raw in headers:
        name = key.lower()
        if name == "content-encoding":
            tokens = [token.strip().lower() for token in _header_text(raw).split(",")]
            unknown = [token for token in tokens if token not in _CODINGS]
            if unknown:
                raise EnvelopeError(
                    "unsupported-encoding",
                    f"content-encoding {', '.join(unknown)!r} is not supported (gzip, x-gzip, "
                    "base64 and identity are)",
                )
            encoded = [coding for token in tokens for coding in _CODINGS[token]]
        elif name in ("content-type", "contenttype"):
            gzip_type = _gzip_content_type(_header_text(raw).split(";")[0].strip().lower())
    if gzip_type and "gzip" not in (encoded or ()):
        return ("gzip", *(encoded or ()))
    return None if encoded is None else tuple(encoded)


def _gzip_content_type(media: str) -> bool:
    """True for a gzip file's type; False for JSON or a type that claims nothing."""
    if media in _GZIP_TYPES:
        return True
    if media.startswith("application/cloudevents"):
        raise EnvelopeError(
            "unsupported-content-type",
            f"content-type {media!r} is a structured-mode CloudEvent, which this reader does "
            "not unwrap: have the producer use binary mode (the record as the value)",
        )
    if media in _OPAQUE_TYPES or media in ("", "application/json", "text/json") or (
        media.endswith("+json")
    ):
        return False
    raise EnvelopeError(
        "unsupported-content-type",
        f"content-type {media!r} is not JSON, which this input format reads "
        "(DETECTOR_INPUT_FORMAT chooses Avro)",
    )


def undo_codings(data: bytes, codings: tuple[Coding, ...], limit: int) -> bytes:
    """The payload with its declared codings undone, last applied first, each checked against
    the bytes: a header that says gzip over bytes that are not raises "header-mismatch". What is
    left is read as an undeclared payload is, so a header naming only the outer coding works."""
    for coding in reversed(codings):
        if coding == "base64":
            try:
                data = base64.b64decode(data.strip(), validate=True)
            except (binascii.Error, ValueError) as error:
                raise EnvelopeError(
                    "header-mismatch",
                    f"the headers say base64, but the payload is not base64: {error}",
                ) from error
        else:
            if data[:2] != GZIP_MAGIC:
                raise EnvelopeError(
                    "header-mismatch",
                    f"the headers say gzip, but the payload does not start with gzip's magic "
                    f"bytes 1f 8b (it starts {data[:8]!r})",
                )
            data = inflate(data, limit)
    if len(data) > limit:
        raise ValueError(f"decodes to more than {limit} bytes")
    return data


def _header_text(raw: Any) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    return text.strip().strip('"')


def is_record(value: Any) -> bool:
    return isinstance(value, dict) and all(key in value for key in _RECORD_KEYS)


def unwrap(value: Any, shape: Shape | None = None) -> Unwrapped:
    """The records of one parsed JSON value, its shape detected unless `shape` pins it.

    A value of no known shape is returned as a bare record, which the record conversion then
    refuses with a reason; a pinned shape that does not fit raises EnvelopeError.
    """
    detected = shape or detect(value)
    if shape is not None and not isinstance(value, list | dict):
        raise EnvelopeError("invalid-json", f"a {shape} message is a JSON object")
    return _UNWRAP[detected](value)


def detect(value: Any) -> Shape:
    if isinstance(value, list):
        return "records"
    if not isinstance(value, dict) or "eventVersion" in value:
        return "record"
    if "Records" in value or "digestStartTime" in value:
        return "records"
    if "detail-type" in value and "detail" in value:
        return "eventbridge"
    if "logEvents" in value and "messageType" in value:
        return "cloudwatch"
    if isinstance(value.get("Events"), list):
        return "lookup-events"
    if isinstance(value.get("_raw"), str):
        return "cribl"
    if isinstance(value.get("message"), str):
        return "filebeat"
    return "record"


def _record(value: Any) -> Unwrapped:
    return Unwrapped("record", [value])


def _records(value: Any) -> Unwrapped:
    if isinstance(value, list):
        return Unwrapped("records", value)
    if "digestStartTime" in value or "logFiles" in value:
        return Unwrapped("records", [], skipped="a CloudTrail digest file: it holds no events")
    records = value.get("Records")
    if not isinstance(records, list):
        raise EnvelopeError("invalid-json", "an S3 log file object's Records is an array")
    return Unwrapped("records", records)


def _eventbridge(value: dict[str, Any]) -> Unwrapped:
    detail_type = value.get("detail-type")
    context = _strings(value, (("id", "aws.eventbridge.id"), ("time", "aws.eventbridge.time"),
                               ("account", "cloud.account.id"), ("region", "cloud.region")))
    detail = value.get("detail")
    cloudtrail = isinstance(detail_type, str) and detail_type in CLOUDTRAIL_DETAIL_TYPES
    if not cloudtrail and not is_record(detail):
        source = value.get("source")
        return Unwrapped("eventbridge", [], context,
                         skipped=f"an EventBridge {detail_type!r} event from {source!r}, "
                                 "not CloudTrail")
    return Unwrapped("eventbridge", [detail], context)


def _cloudwatch(value: dict[str, Any]) -> Unwrapped:
    kind = value.get("messageType")
    if kind == "CONTROL_MESSAGE":
        return Unwrapped("cloudwatch", [], skipped="a CloudWatch Logs CONTROL_MESSAGE")
    events = value.get("logEvents")
    if kind != "DATA_MESSAGE" or not isinstance(events, list):
        raise EnvelopeError("invalid-json", "a CloudWatch Logs DATA_MESSAGE has logEvents")
    context = _strings(value, (("owner", "cloud.account.id"),
                               ("logGroup", "aws.cloudwatch.log_group")))
    return Unwrapped("cloudwatch", [_field(event, "message") for event in events], context)


def _filebeat(value: dict[str, Any]) -> Unwrapped:
    context = _strings(value, (("@timestamp", "@timestamp"),))
    event = value.get("event")
    if isinstance(event, dict) and isinstance(event.get("ingested"), str):
        context["event.ingested"] = event["ingested"]
    return Unwrapped("filebeat", [_field(value, "message")], context)


def _cribl(value: dict[str, Any]) -> Unwrapped:
    return Unwrapped("cribl", [_field(value, "_raw")])


def _lookup_events(value: dict[str, Any]) -> Unwrapped:
    events = value.get("Events")
    if not isinstance(events, list):
        raise EnvelopeError("invalid-json", "lookup-events output's Events is an array")
    return Unwrapped("lookup-events", [_field(event, "CloudTrailEvent") for event in events])


def _field(value: Any, name: str) -> Any:
    """The record held in `value[name]`; None (refused downstream) when it is absent."""
    return value.get(name) if isinstance(value, dict) else None


def _strings(value: dict[str, Any], names: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {ecs: value[key] for key, ecs in names if isinstance(value.get(key), str)}


_UNWRAP: Final = {
    "record": _record,
    "records": _records,
    "eventbridge": _eventbridge,
    "cloudwatch": _cloudwatch,
    "filebeat": _filebeat,
    "cribl": _cribl,
    "lookup-events": _lookup_events,
}


def text_forms(literal: str) -> tuple[bytes, ...]:
    """The byte spellings a literal of a record takes in a JSON payload of any shape: as is
    (bare record, `Records`, `detail`), and JSON-string-escaped once (the record as text in
    `message`, `_raw`, `CloudTrailEvent` or a CloudWatch log event). A literal without `"` or
    `\\` is spelled the same in both."""
    plain = literal.encode()
    escaped = json.dumps(literal, ensure_ascii=False)[1:-1].encode()
    return (plain,) if escaped == plain else (plain, escaped)


def wrap(records: list[dict[str, Any]], shape: Shape, *, base64_encoded: bool = False) -> bytes:
    """One message of `shape` holding `records`, as its producer would write it: for replay
    and tests. The single-event shapes (record, eventbridge, filebeat, cribl) take one record.
    A CloudWatch Logs payload is gzipped, and base64 on top with `base64_encoded`."""
    if shape not in ("records", "cloudwatch", "lookup-events") and len(records) != 1:
        raise ValueError(f"a {shape} message holds one record, not {len(records)}")
    first = records[0] if records else {}
    account = _account(first)
    text = [json.dumps(record, separators=(",", ":")) for record in records]
    value: Any
    if shape == "record":
        value = first
    elif shape == "records":
        value = {"Records": records}
    elif shape == "eventbridge":
        value = {
            "version": "0", "id": str(first.get("eventID", "")),
            "detail-type": "AWS API Call via CloudTrail",
            "source": _eventbridge_source(first), "account": account,
            "time": first.get("eventTime"), "region": first.get("awsRegion"),
            "resources": [], "detail": first,
        }
    elif shape == "filebeat":
        value = {"@timestamp": first.get("eventTime"), "message": text[0],
                 "event": {"ingested": first.get("eventTime")},
                 "input": {"type": "aws-s3"}, "ecs": {"version": "8.11.0"}}
    elif shape == "cribl":
        value = {"_raw": text[0], "_time": 0, "source": "cloudtrail", "sourcetype": "aws"}
    elif shape == "lookup-events":
        value = {"Events": [{"EventId": record.get("eventID"), "CloudTrailEvent": body}
                            for record, body in zip(records, text, strict=True)]}
    else:
        value = {
            "messageType": "DATA_MESSAGE", "owner": account,
            "logGroup": "aws-cloudtrail-logs", "logStream": f"{account}_CloudTrail_us-east-1",
            "subscriptionFilters": ["cloudtrail-detector"],
            "logEvents": [{"id": str(index), "timestamp": 0, "message": body}
                          for index, body in enumerate(text)],
        }
    data = json.dumps(value, separators=(",", ":")).encode()
    if shape != "cloudwatch":
        return data
    packed = zlib.compressobj(wbits=31)
    data = packed.compress(data) + packed.flush()
    return base64.b64encode(data) if base64_encoded else data


def _account(record: dict[str, Any]) -> str:
    identity = record.get("userIdentity")
    account = record.get("recipientAccountId") or (
        identity.get("accountId") if isinstance(identity, dict) else None
    )
    return account if isinstance(account, str) else ""


def _eventbridge_source(record: dict[str, Any]) -> str:
    source = record.get("eventSource")
    return "aws." + source.split(".")[0] if isinstance(source, str) else "aws.cloudtrail"
