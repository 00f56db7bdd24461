"""Lossless conversion between CloudTrail JSON records and the Avro record shape.

The Avro schema (`schemas/cloudtrail_event.avsc`) types the fields CloudTrail documents. To lose
nothing a record may carry beyond them, every record level has an `extraFields` field: JSON text of
an object holding each key that the typed fields cannot carry exactly:
- keys the schema does not know (newer CloudTrail versions, vendor additions like `@timestamp`);
- keys whose value is JSON null (a typed field's null means the key was absent);
- values of another type than declared (e.g. a number where the schema has a string), and strings
  that UTF-8 cannot encode (lone surrogates from `\\udXXX` escapes).
Free-form objects (fields marked `"jsonText": true` in the schema) hold the JSON text of any
non-null value, so floats stay floats and nested unknown keys survive as they are.

The conversion plan is built from the schema itself, so a field added there is converted here.
"""

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final

from fastavro import parse_schema
from fastavro.types import Schema

from consumer.cloudtrail.types import CloudTrailRecord

SCHEMA_TEXT: Final[str] = (files("consumer") / "schemas" / "cloudtrail_event.avsc").read_text(
    encoding="utf-8"
)
"""The Avro schema as written in the `.avsc` file: what a producer registers."""

READER_SCHEMA: Final[Schema] = parse_schema(json.loads(SCHEMA_TEXT))
"""The schema parsed once by fastavro, ready for readers and writers."""

EXTRA_FIELDS: Final = "extraFields"

_MISFIT: Final = object()
"""Returned by a field converter when the JSON value does not fit the field's declared type."""


class NotCloudTrailError(ValueError):
    """The JSON value is not a CloudTrail record: not an object, or a required field is unusable."""


@dataclass(frozen=True, slots=True)
class _Field:
    """How one typed field converts: JSON value -> Avro value (or _MISFIT), and back."""

    to_avro: Callable[[Any], Any]
    to_json: Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _RecordPlan:
    """The conversion of one Avro record type: its typed fields and required field names."""

    name: str
    fields: dict[str, _Field]
    required: tuple[str, ...]
    blank: dict[str, Any]
    """Every Avro field set to None: the starting point of a converted record, so a record built
    from JSON has the same keys as one fastavro reads."""


def json_to_avro(record: object) -> CloudTrailRecord:
    """Convert a CloudTrail JSON record (as `json.loads` returns it) to the Avro record shape.

    Raises NotCloudTrailError when `record` is not a dict or a required field (eventVersion,
    eventSource, eventName) is missing or not a string.
    """
    if not isinstance(record, dict):
        raise NotCloudTrailError(f"expected a JSON object, got {_json_type(record)}")
    return _object_to_avro(record, _TOP_PLAN)


def avro_to_json(record: CloudTrailRecord) -> dict[str, Any]:
    """Rebuild the CloudTrail JSON record that `json_to_avro` converted: equal to the original.

    Raises ValueError when a JSON-text field of `record` does not hold valid JSON.
    """
    return _object_to_json(record, _TOP_PLAN)


def _object_to_avro(value: dict[str, Any], plan: _RecordPlan) -> dict[str, Any]:
    converted: dict[str, Any] = dict(plan.blank)
    extra: dict[str, Any] = {}
    for key, item in value.items():
        field = plan.fields.get(key)
        avro_value = _MISFIT if field is None else field.to_avro(item)
        if avro_value is _MISFIT:
            extra[key] = item
        else:
            converted[key] = avro_value
    for name in plan.required:
        if converted[name] is None:
            problem = "is missing" if name not in value else f"is {_json_type(value[name])}"
            raise NotCloudTrailError(f"{plan.name}.{name} {problem}; it must be a string")
    if extra:
        converted[EXTRA_FIELDS] = _json_text(extra)
    return converted


def _object_to_json(value: Mapping[str, Any], plan: _RecordPlan) -> dict[str, Any]:
    restored = {
        name: field.to_json(value[name])
        for name, field in plan.fields.items()
        if value.get(name) is not None
    }
    extra = value.get(EXTRA_FIELDS)
    if extra is not None:
        restored.update(json.loads(extra))
    return restored


_LITERAL_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ESCAPING_ENCODER: Final = json.JSONEncoder(separators=(",", ":"))


def _json_text(value: Any) -> str:
    """Compact JSON text of `value`; non-ASCII stays literal unless UTF-8 cannot encode it."""
    text = _LITERAL_ENCODER.encode(value)
    return text if _utf8_encodable(text) else _ESCAPING_ENCODER.encode(value)


def _utf8_encodable(text: str) -> bool:
    """False only for text with lone surrogates, which an Avro string cannot hold."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
    return type(value).__name__


def _string_to_avro(value: Any) -> Any:
    if isinstance(value, str) and (value.isascii() or _utf8_encodable(value)):
        return value
    return _MISFIT


def _boolean_to_avro(value: Any) -> Any:
    return value if isinstance(value, bool) else _MISFIT


def _json_text_to_avro(value: Any) -> Any:
    return _MISFIT if value is None else _json_text(value)


def _unchanged(value: Any) -> Any:
    return value


def _record_field(plan: _RecordPlan) -> _Field:
    def to_avro(value: Any) -> Any:
        return _object_to_avro(value, plan) if isinstance(value, dict) else _MISFIT

    def to_json(value: Any) -> Any:
        return _object_to_json(value, plan)

    return _Field(to_avro, to_json)


def _record_array_field(plan: _RecordPlan) -> _Field:
    def to_avro(value: Any) -> Any:
        if isinstance(value, list) and all(isinstance(item, dict) for item in value):
            return [_object_to_avro(item, plan) for item in value]
        return _MISFIT

    def to_json(value: Any) -> Any:
        return [_object_to_json(item, plan) for item in value]

    return _Field(to_avro, to_json)


_STRING = _Field(_string_to_avro, _unchanged)
_BOOLEAN = _Field(_boolean_to_avro, _unchanged)
_JSON_TEXT = _Field(_json_text_to_avro, json.loads)


def _build_plan(schema: Mapping[str, Any], *, top_level: bool) -> _RecordPlan:
    """Derive a record's conversion from its Avro schema (the raw JSON form of the .avsc)."""
    fields: dict[str, _Field] = {}
    required: list[str] = []
    for spec in schema["fields"]:
        name, avro_type = spec["name"], spec["type"]
        if name == EXTRA_FIELDS:
            continue
        if isinstance(avro_type, list):
            if len(avro_type) != 2 or avro_type[0] != "null" or spec.get("default", 0) is not None:
                raise ValueError(f"{name}: an optional field is ['null', T] with default null")
            avro_type = avro_type[1]
        elif top_level and avro_type == "string":
            required.append(name)
        else:
            raise ValueError(f"{name}: only top-level strings may be required")
        fields[name] = _field_for(name, avro_type, json_text=spec.get("jsonText") is True)
    if EXTRA_FIELDS not in {spec["name"] for spec in schema["fields"]}:
        raise ValueError(f"record {schema['name']} lacks its {EXTRA_FIELDS} field")
    blank = dict.fromkeys([spec["name"] for spec in schema["fields"]])
    return _RecordPlan(schema["name"], fields, tuple(required), blank)


def _field_for(name: str, avro_type: Any, *, json_text: bool) -> _Field:
    if avro_type == "string":
        return _JSON_TEXT if json_text else _STRING
    if avro_type == "boolean":
        return _BOOLEAN
    if isinstance(avro_type, dict) and avro_type["type"] == "record":
        return _record_field(_build_plan(avro_type, top_level=False))
    if isinstance(avro_type, dict) and avro_type["type"] == "array":
        items = avro_type["items"]
        if isinstance(items, dict) and items["type"] == "record":
            return _record_array_field(_build_plan(items, top_level=False))
    raise ValueError(f"{name}: no lossless JSON conversion for Avro type {avro_type!r}")


_TOP_PLAN: Final = _build_plan(json.loads(SCHEMA_TEXT), top_level=True)

REQUIRED_FIELDS: Final[tuple[str, ...]] = _TOP_PLAN.required
"""Top-level fields every CloudTrail record has; a JSON object lacking one is not a record."""


def _json_text_names(schema: Any) -> set[str]:
    if isinstance(schema, list):
        return set().union(*map(_json_text_names, schema))
    if not isinstance(schema, dict):
        return set()
    if schema.get("type") == "array":
        return _json_text_names(schema["items"])
    names: set[str] = set()
    for spec in schema.get("fields", ()):
        if spec.get("jsonText") is True and spec["name"] != EXTRA_FIELDS:
            names.add(spec["name"])
        names |= _json_text_names(spec["type"])
    return names


JSON_TEXT_FIELDS: Final[frozenset[str]] = frozenset(_json_text_names(json.loads(SCHEMA_TEXT)))
"""The free-form objects (requestParameters, responseElements, ...): a producer's own Avro
schema often carries them as JSON text, which is parsed back when the record is normalized."""
