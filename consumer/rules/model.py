"""Pydantic models of detection rule files, laid out as in Elastic's detection-rules repository.

A file has a `[metadata]` table, a `[rule]` table with `[[rule.threat]]` entries, and optionally
our own `[detector]` table. `[detector]` holds what Elastic's format has no place for: today only
`enabled` (default true), which says whether the service runs the rule. Keeping it out of
`[rule]` leaves that table exactly as Elastic writes it, so rules copy across unchanged.
"""

import re
import uuid
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from consumer.times import parse_duration


def _parse_interval(value: object) -> timedelta:
    if not isinstance(value, str):
        raise ValueError("expected a duration string such as '5m'")
    return parse_duration(value)


def _parse_lookback(value: object) -> timedelta:
    """`from = "now-6m"`: how far back each run looks, as a positive duration."""
    if not isinstance(value, str) or not value.startswith("now-"):
        raise ValueError(f"expected 'now-<duration>' such as 'now-6m', got {value!r}")
    return parse_duration(value.removeprefix("now-"))


def _check_uuid(value: str) -> str:
    uuid.UUID(value)
    return value


def _check_date(value: str) -> str:
    if not re.fullmatch(r"\d{4}/\d{2}/\d{2}", value):
        raise ValueError(f"expected a date as YYYY/MM/DD, got {value!r}")
    return value


def _check_url(value: str) -> str:
    if not re.fullmatch(r"https?://\S+", value):
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    return value


Interval = Annotated[timedelta, BeforeValidator(_parse_interval)]
Lookback = Annotated[timedelta, BeforeValidator(_parse_lookback)]
RuleId = Annotated[str, AfterValidator(_check_uuid)]
RuleDate = Annotated[str, AfterValidator(_check_date)]
Url = Annotated[str, AfterValidator(_check_url)]
Text = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RuleMetadata(_Strict):
    creation_date: RuleDate
    updated_date: RuleDate
    maturity: Literal["production", "development", "deprecated"]
    integration: list[Text] = Field(min_length=1)
    min_stack_version: str | None = None
    min_stack_comments: str | None = None


class Subtechnique(_Strict):
    id: Text
    name: Text
    reference: Url


class Technique(_Strict):
    id: Text
    name: Text
    reference: Url
    subtechnique: list[Subtechnique] = []


class Tactic(_Strict):
    id: Text
    name: Text
    reference: Url


class Threat(_Strict):
    framework: Text
    tactic: Tactic
    technique: list[Technique] = []


class ExceptionListReference(_Strict):
    """One `[[rule.exceptions_list]]` entry: the rule uses the exception list `list_id`."""

    id: str
    list_id: Text
    type: str = "detection"
    namespace_type: Literal["single", "agnostic"] = "single"


class RuleDefinition(_Strict):
    """The `[rule]` table. Only ES|QL rules exist here, so `type` and `language` are fixed.

    `from` (a Python keyword) is the attribute `lookback`.
    """

    rule_id: RuleId
    name: Text
    description: Text
    author: list[Text] = Field(min_length=1)
    license: Text
    type: Literal["esql"]
    language: Literal["esql"]
    query: Text
    risk_score: int = Field(ge=0, le=100)
    severity: Literal["low", "medium", "high", "critical"]
    tags: list[Text] = []
    lookback: Lookback = Field(alias="from")
    interval: Interval
    max_signals: int = Field(default=100, ge=1)
    version: int = Field(ge=1)
    references: list[Url] = []
    note: str | None = None
    setup: str | None = None
    false_positives: list[Text] = []
    timestamp_override: str | None = None
    threat: list[Threat] = []
    exceptions_list: list[ExceptionListReference] = []


class DetectorSettings(_Strict):
    """Our own table: `enabled = false` ships a rule without running it; `[[detector.exceptions]]`
    items (Elastic's exception item shape) allow a quick tuning without an exception list file."""

    enabled: bool = True
    exceptions: list[dict[str, Any]] = []


class RuleFile(_Strict):
    """One rule file. `[detector] enabled` (default true) switches the rule on or off."""

    metadata: RuleMetadata
    rule: RuleDefinition
    detector: DetectorSettings = DetectorSettings()
