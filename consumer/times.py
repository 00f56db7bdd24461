"""Times and durations as CloudTrail, Elastic rules and our settings write them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_iso_utc(value: object) -> datetime | None:
    """An ISO-8601 time as an aware datetime (UTC when it names no offset), else None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_duration(text: str) -> timedelta:
    """'5m', '90s', '2h', '1d' or '250ms', as Elastic rules' `interval` and `from` write them."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a duration such as '5m' (units ms, s, m, h, d), got {text!r}")
    return timedelta(seconds=int(match[1]) * _DURATION_SECONDS[match[2]])
