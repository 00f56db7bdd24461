"""Pydantic models of detection rule files, laid out as in Elastic's detection-rules repository.

A file has a `[metadata]` table, a `[rule]` table with `[[rule.threat]]` entries, and optionally
Elastic's `[transform]` table and our own `[detector]` table. Every key of Elastic's schema
(detection_rules/rule.py: every rule type) is accepted, so Elastic's files load verbatim: the
keys we use are typed and checked, the others are dropped unread, and any other key is an error
(a typo must not pass silently). Defaults are Elastic's: `interval` 5m, `from` now-6m,
`max_signals` 100; `version` is 1 (Elastic keeps versions in its lock file, not in the rule).

`[detector]` holds what Elastic's format has no place for: `enabled` (default true), which says
whether the service runs the rule, `version`, which overrides the rule's, and
`alert_suppression`, which adds suppression to a rule (or replaces its own). Keeping it out of
`[rule]` leaves that table exactly as Elastic writes it, so rules copy across unchanged.
"""

import re
import uuid
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

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


def _as_list(value: object) -> object:
    """Elastic allows `integration = "aws"` as well as a list."""
    return [value] if isinstance(value, str) else value


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
Integrations = Annotated[list[Text], BeforeValidator(_as_list)]

RuleType = Literal[
    "query", "saved_query", "machine_learning", "eql", "esql", "threshold", "threat_match",
    "new_terms",
]
Language = Literal["eql", "esql", "kuery", "lucene"]

IGNORED_METADATA_KEYS = frozenset({
    "bypass_bbr_timing", "comments", "deprecation_date", "extended", "os_type_list", "promotion",
    "query_schema_validation", "related_endpoint_rules",
})
"""Keys of Elastic's `[metadata]` that say nothing about how a rule runs here."""

IGNORED_RULE_KEYS = frozenset({
    # every rule type (BaseRuleData)
    "actions", "building_block_type", "enabled", "filters",
    "investigation_fields", "meta", "related_integrations", "required_fields",
    "response_actions", "revision", "risk_score_mapping", "rule_name_override",
    "severity_mapping", "threat_mappings", "throttle", "timeline_id", "timeline_title", "to",
    # query, eql, esql, threshold, new_terms, threat_match
    "data_view_id",
    "threshold", "new_terms",
    "event_category_override", "tiebreaker_field", "timestamp_field",
    "anomaly_threshold", "machine_learning_job_id",
    "concurrent_searches", "items_per_search", "threat_filters", "threat_index",
    "threat_indicator_path", "threat_language", "threat_mapping", "threat_query",
})
"""Keys of Elastic's `[rule]` we do not use yet (`enabled` included: our `[detector]` decides).
The issue that gives one a meaning (exceptions, suppression, ...) moves it into the model."""


def _drop(keys: frozenset[str], data: object) -> object:
    if isinstance(data, dict):
        return {key: value for key, value in data.items() if key not in keys}
    return data



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RuleMetadata(_Strict):
    creation_date: RuleDate
    updated_date: RuleDate
    maturity: Literal["development", "experimental", "beta", "production", "deprecated"] | None = (
        None
    )
    integration: Integrations = []
    min_stack_version: str | None = None
    min_stack_comments: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _ignore(cls, data: object) -> object:
        return _drop(IGNORED_METADATA_KEYS, data)


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
    framework: Literal["MITRE ATT&CK", "MITRE ATLAS"]
    tactic: Tactic
    technique: list[Technique] = []


class ExceptionListReference(_Strict):
    """One `[[rule.exceptions_list]]` entry: the rule uses the exception list `list_id`."""

    id: str
    list_id: Text
    type: str = "detection"
    namespace_type: Literal["single", "agnostic"] = "single"


class SuppressionDuration(_Strict):
    """`duration = {value = 35, unit = "m"}`: how long a group's first alert absorbs later
    ones (Elastic allows seconds, minutes and hours)."""

    value: int = Field(ge=1)
    unit: Literal["s", "m", "h"]

    def total_ms(self) -> int:
        return self.value * {"s": 1_000, "m": 60_000, "h": 3_600_000}[self.unit]


class AlertSuppression(_Strict):
    """Elastic's `[rule.alert_suppression]`: alerts with the same values of `group_by` (1 to 5
    fields) within `duration` (else within one rule run) become one alert that counts the
    others; `missing_fields_strategy` says whether alerts lacking a field are grouped
    (`suppress`, as if null were a value) or each sent on its own (`doNotSuppress`). A
    threshold rule's has only `duration` (it groups by its threshold fields)."""

    group_by: list[Text] = Field(default=[], max_length=5)
    duration: SuppressionDuration | None = None
    missing_fields_strategy: Literal["suppress", "doNotSuppress"] = "suppress"


def _check_groups(rule_type: str, suppression: AlertSuppression | None) -> None:
    if suppression is not None and rule_type != "threshold" and not suppression.group_by:
        raise ValueError("alert_suppression.group_by needs 1 to 5 fields")


class RuleDefinition(_Strict):
    """The `[rule]` table of any rule type; whether we can run it is the loader's question.

    `from` (a Python keyword) is the attribute `lookback`. A machine-learning rule has no query.
    """

    rule_id: RuleId
    name: Text
    description: Text
    author: list[Text] = Field(min_length=1)
    license: str | None = None
    type: RuleType
    language: Language | None = None
    query: str | None = None
    index: list[Text] = []
    """Index patterns a `query` rule searches (ES|QL names its own in FROM)."""
    risk_score: int = Field(ge=0, le=100)
    severity: Literal["low", "medium", "high", "critical"]
    tags: list[Text] = []
    lookback: Lookback = Field(alias="from", default=timedelta(minutes=6))
    interval: Interval = timedelta(minutes=5)
    max_signals: int = Field(default=100, ge=1)
    version: int = Field(default=1, ge=1)
    references: list[Url] = []
    note: str | None = None
    setup: str | None = None
    false_positives: list[Text] = []
    timestamp_override: str | None = None
    threat: list[Threat] = []
    exceptions_list: list[ExceptionListReference] = []
    alert_suppression: AlertSuppression | None = None

    @model_validator(mode="before")
    @classmethod
    def _ignore(cls, data: object) -> object:
        return _drop(IGNORED_RULE_KEYS, data)

    @model_validator(mode="after")
    def _suppression_groups(self) -> "RuleDefinition":
        _check_groups(self.type, self.alert_suppression)
        return self


class DetectorSettings(_Strict):
    """Our own table: `enabled = false` ships a rule without running it; `version` sets the
    rule's version where Elastic's file has none; `[[detector.exceptions]]` items (Elastic's
    exception item shape) allow a quick tuning without an exception list file;
    `[detector.alert_suppression]` (Elastic's shape) suppresses a rule's alerts, taking the
    place of the rule's own when it has one."""

    enabled: bool = True
    version: int | None = Field(default=None, ge=1)
    exceptions: list[dict[str, Any]] = []
    alert_suppression: AlertSuppression | None = None


class RuleFile(_Strict):
    """One rule file. `[detector] enabled` (default true) switches the rule on or off."""

    metadata: RuleMetadata
    rule: RuleDefinition
    detector: DetectorSettings = DetectorSettings()
    transform: dict[str, Any] | None = None
    """Elastic's investigation-guide plugins (osquery, investigate): kept unread."""

    @model_validator(mode="after")
    def _detector_overrides(self) -> "RuleFile":
        update: dict[str, Any] = {}
        if self.detector.version is not None and self.detector.version != self.rule.version:
            update["version"] = self.detector.version
        if self.detector.alert_suppression is not None:
            update["alert_suppression"] = self.detector.alert_suppression
        if not update:
            return self
        _check_groups(self.rule.type, self.detector.alert_suppression)
        rule = self.rule.model_copy(update=update)
        return self.model_copy(update={"rule": rule})
