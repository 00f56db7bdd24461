"""How ES|QL values live at run time, and how they print.

A value is None (null), one Python scalar, or a list of two or more scalars (multi-valued):
keyword/text as str, integer/long as int, double as float, boolean as bool, date as epoch
milliseconds (int), ip as one int in IPv6 space (IPv4 mapped) so that both families order.
"""

from __future__ import annotations

import calendar
import ipaddress
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from consumer.times import parse_iso_utc

STRING_TYPES = frozenset({"keyword", "text"})
INTEGRAL_TYPES = frozenset({"integer", "long"})
NUMERIC_TYPES = frozenset({"integer", "long", "double"})
ORDERABLE_TYPES = STRING_TYPES | NUMERIC_TYPES | {"date", "ip"}
KNOWN_TYPES = ORDERABLE_TYPES | {"boolean", "null"}
INT_RANGE = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}

_FIELD_TYPES = {
    "keyword": "keyword", "constant_keyword": "keyword", "wildcard": "keyword",
    "flattened": "keyword", "text": "text", "match_only_text": "text",
    "integer": "integer", "short": "integer", "byte": "integer", "long": "long",
    "double": "double", "float": "double", "half_float": "double", "scaled_float": "double",
    "boolean": "boolean", "date": "date", "ip": "ip",
}  # fmt: skip
UNSUPPORTED_FIELD_TYPES = frozenset(
    {
        *("unsigned_long", "date_nanos", "version", "geo_point", "geo_shape", "point"),
        *("shape", "cartesian_point", "cartesian_shape", "counter_long", "counter_double"),
        *("counter_integer", "aggregate_metric_double", "dense_vector", "semantic_text"),
        *("object", "nested", "binary", "histogram", "exponential_histogram", "tdigest"),
    }
)


def field_type(mapping_type: str) -> str:
    """The ES|QL type of a field mapped as `mapping_type`; unknown names read as keyword."""
    if mapping_type in UNSUPPORTED_FIELD_TYPES:
        return "unsupported:" + mapping_type
    return _FIELD_TYPES.get(mapping_type, "keyword")


def ip_key(value: object) -> int | None:
    """An address as one integer in IPv6 space (IPv4 mapped), so the two families compare."""
    if not isinstance(value, str):
        return None
    return _ip_key(value)


@lru_cache(maxsize=65536)
def _ip_key(value: str) -> int | None:
    """Cached: CIDR_MATCH and ip comparisons parse the same few addresses event after event."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return 0xFFFF_0000_0000 | int(address)
    return int(address)


def date_key(value: object) -> int | None:
    """An ISO-8601 timestamp as epoch milliseconds (UTC when no offset is given)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    moment = parse_iso_utc(value)
    return None if moment is None else date_key_exact(moment)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def as_float(value: object) -> float | None:
    """A stored value as a double, as Elasticsearch coerces numbers and numeric strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _as_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _as_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, list | dict):
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


NORMALIZERS: Mapping[str, Callable[[object], Any]] = {
    "keyword": _as_text, "text": _as_text, "integer": _as_int, "long": _as_int,
    "double": as_float, "boolean": _as_bool, "date": date_key, "ip": ip_key,
}  # fmt: skip
"""Source value -> engine value for each type; None where the value does not fit the type."""


def java_double(value: float) -> str:
    """Java's Double.toString, which is how Elasticsearch prints a double."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    if 1e-3 <= abs(value) < 1e7:
        return repr(value)
    sign, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    power = len(digits) + exponent - 1
    digits = digits.rstrip("0") or "0"
    return f"{'-' if sign else ''}{digits[0]}.{digits[1:] or '0'}E{power}"


def format_date(millis: int) -> str:
    moment = _EPOCH + timedelta(milliseconds=millis)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def format_ip(key: int) -> str:
    address = ipaddress.IPv6Address(key)
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


def display(kind: str, value: Any) -> Any:
    """A value as a JSON-ready Python value: dates as ISO-8601 text, addresses as text."""
    if value is None:
        return None
    if value.__class__ is list:
        return [display(kind, item) for item in value]
    if kind == "date":
        return format_date(value)
    if kind == "ip":
        return format_ip(value)
    return value


def to_text(kind: str, value: Any) -> str:
    """One value as ES|QL's TO_STRING prints it."""
    if kind == "date":
        return format_date(value)
    if kind == "ip":
        return format_ip(value)
    if kind == "double":
        return java_double(value)
    if kind == "boolean":
        return "true" if value else "false"
    return str(value)


def add_months(millis: int, months: int) -> int:
    """Calendar month arithmetic in UTC, clamping the day as java.time does."""
    moment = _EPOCH + timedelta(milliseconds=millis)
    total = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(total, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    shifted = moment.replace(year=year, month=month + 1, day=day)
    return date_key_exact(shifted)


def date_key_exact(moment: datetime) -> int:
    """An aware datetime as epoch milliseconds, exactly (no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_millis(millis: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=millis)
