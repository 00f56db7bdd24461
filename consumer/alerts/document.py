"""The alert document: the contract with every SIEM that reads the alerts topic.

An alert is an ECS document (nested JSON objects) that also carries Elastic Security's
`kibana.alert.*` fields, so the topic can be indexed straight into Elastic. Its id is derived from
(rule_id, source event id), so a replayed or retried detection always carries the same id and a
SIEM can drop duplicates. An aggregating rule's alert is one row of one run
(`build_run_alert`): its id comes from (rule_id, run, group), its fields are the row's columns.

Like Elastic's alert for a non-aggregating rule, it carries the source document: every ECS and
`aws.cloudtrail.*` field Elastic's pipeline derives from the event, as the stored document holds
it (so `aws.cloudtrail.response_elements` names a new access key even without event.original),
and the rule's own output columns. Its size is bounded:
- a string longer than FIELD_LIMIT characters is cut there, and its field named in
  `detector.truncated_fields`;
- the event's fields take at most EVENT_FIELDS_LIMIT bytes of JSON; past it the largest fields
  the rule neither read nor kept, nor CONTEXT_FIELDS, are left out, largest first, and named in
  `detector.omitted_fields`.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from consumer.cloudtrail.normalize import FLATTENED_LIMIT, INGESTED_MS, normalize
from consumer.cloudtrail.types import CloudTrailRecord, EcsValue
from consumer.rules.loader import LoadedRule
from consumer.rules.model import RuleDefinition
from consumer.rules.schedule import GroupKey
from consumer.rules.schedule import alert_id as run_alert_id

ALERT_NAMESPACE = uuid.UUID("8f9a4c52-3c1e-4d4b-9a55-2f0f3e6c9b11")
"""UUIDv5 namespace of alert ids; changing it would change every alert id."""

CONTEXT_FIELDS = (
    "@timestamp",
    "event.id",
    "event.action",
    "event.provider",
    "event.outcome",
    "user.name",
    "user.target.name",
    "service.name",
    "source.ip",
    "source.address",
    "user_agent.original",
    "cloud.provider",
    "cloud.account.id",
    "cloud.region",
    "aws.cloudtrail.user_identity.type",
    "aws.cloudtrail.user_identity.arn",
    "aws.cloudtrail.user_identity.access_key_id",
)
"""ECS fields an alert always keeps, whatever its size: who, from where, which account."""

FIELD_LIMIT = FLATTENED_LIMIT
"""Longest string an alert carries, in characters: Lucene's longest term (32,766 bytes), the bound
Elastic's own pipeline puts on the flattened copies; longer is beyond what Elastic can index."""

EVENT_FIELDS_LIMIT = 256 * 1024
"""Bytes of JSON the event's fields may take: a quarter of Kafka's default 1 MiB message limit,
which the alert shares with event.original (the whole record, often the largest part)."""

_ACTION_PHRASES = {
    "CreateAccessKey": "created an access key for",
    "CreateLoginProfile": "created a console password for",
    "UpdateLoginProfile": "changed the console password of",
    "AttachUserPolicy": "attached a policy to",
}


Headers = list[tuple[str, str | bytes | None]]
"""Kafka message headers, as confluent-kafka takes them."""


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert ready for the sink: its id, Kafka key, headers and ECS document."""

    alert_id: str
    key: bytes
    headers: Headers
    document: dict[str, Any]


def alert_id(rule_id: str, event_id: str | None, payload: bytes | None) -> str:
    """Deterministic: the same rule on the same event always gives the same id."""
    source = event_id if event_id else hashlib.sha256(payload or b"").hexdigest()
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{rule_id}:{source}"))


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"user.target.name": x} -> {"user": {"target": {"name": x}}}."""
    document: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = document
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return document


def _subject(ecs: Mapping[str, EcsValue]) -> str:
    """A short name of the actor, for the alert's Kafka key."""
    for field in ("user.name", "service.name", "aws.cloudtrail.user_identity.arn"):
        value = ecs.get(field)
        if isinstance(value, str):
            return value
    identity_type = ecs.get("aws.cloudtrail.user_identity.type")
    return f"an unnamed {identity_type} identity" if identity_type else "an unknown identity"


def _session(arn: EcsValue, kind: str) -> tuple[str | None, str | None]:
    """(role or user, session) named in an STS ARN such as `...:assumed-role/Role/Session`."""
    if not isinstance(arn, str) or f":{kind}/" not in arn:
        return None, None
    name, _, session = arn.partition(f":{kind}/")[2].partition("/")
    return name or None, session or None


def _actor(ecs: Mapping[str, EcsValue]) -> str:
    """Who acted, saying what kind of identity: a role session is not the role's own user."""
    identity_type = ecs.get("aws.cloudtrail.user_identity.type")
    name = ecs.get("user.name")
    service = ecs.get("service.name")
    arn = ecs.get("aws.cloudtrail.user_identity.arn")
    if isinstance(service, str):
        return f"AWS service {service}"
    if identity_type == "AssumedRole":
        role, session = _session(arn, "assumed-role")
        role = name if isinstance(name, str) else role
        if role is not None:
            return f"role {role} (session {session})" if session else f"role {role}"
    if identity_type == "FederatedUser":
        federated, _ = _session(arn, "federated-user")
        if federated is not None:
            via = f" (via IAM user {name})" if isinstance(name, str) else ""
            return f"federated user {federated}{via}"
    if identity_type == "Root":
        alias = f" ({name})" if isinstance(name, str) else ""
        return f"the root user{alias}"
    if identity_type == "IAMUser" and isinstance(name, str):
        return f"IAM user {name}"
    if identity_type == "IdentityCenterUser":
        return "an IAM Identity Center user"
    return _subject(ecs)


def reason(rule: RuleDefinition, ecs: Mapping[str, EcsValue]) -> str:
    """A sentence an analyst reads first: who did what to whom, where."""
    action = ecs.get("event.action")
    target = ecs.get("user.target.name")
    account = ecs.get("cloud.account.id")
    where = f" in account {account}" if account else ""
    phrase = _ACTION_PHRASES.get(action) if isinstance(action, str) else None
    if phrase and target:
        return f"{_actor(ecs)} {phrase} IAM user {target}{where}"
    return f"{rule.name}: {_actor(ecs)} called {action}{where}"


def _threat(rule: RuleDefinition) -> dict[str, Any]:
    """ECS threat.* for the rule's MITRE mappings, as arrays across its tactics."""
    if not rule.threat:
        return {}
    techniques = {t.id: t for threat in rule.threat for t in threat.technique}
    subtechniques = {s.id: s for t in techniques.values() for s in t.subtechnique}
    flat: dict[str, Any] = {
        "threat.framework": rule.threat[0].framework,
        "threat.tactic.id": [t.tactic.id for t in rule.threat],
        "threat.tactic.name": [t.tactic.name for t in rule.threat],
        "threat.tactic.reference": [t.tactic.reference for t in rule.threat],
        "threat.technique.id": list(techniques),
        "threat.technique.name": [t.name for t in techniques.values()],
        "threat.technique.reference": [t.reference for t in techniques.values()],
    }
    if subtechniques:
        flat["threat.technique.subtechnique.id"] = list(subtechniques)
        flat["threat.technique.subtechnique.name"] = [s.name for s in subtechniques.values()]
        flat["threat.technique.subtechnique.reference"] = [
            s.reference for s in subtechniques.values()
        ]
    return flat


def _rule_fields(rule: RuleDefinition, ruleset: str) -> dict[str, Any]:
    return {
        "rule.id": rule.rule_id,
        "rule.uuid": rule.rule_id,
        "rule.name": rule.name,
        "rule.version": str(rule.version),
        "rule.description": rule.description,
        "rule.author": list(rule.author),
        "rule.license": rule.license,
        "rule.reference": rule.references[0] if rule.references else None,
        "rule.ruleset": ruleset,
        "kibana.alert.rule.rule_id": rule.rule_id,
        "kibana.alert.rule.name": rule.name,
        "kibana.alert.rule.version": rule.version,
        "kibana.alert.severity": rule.severity,
        "kibana.alert.risk_score": rule.risk_score,
        "kibana.alert.workflow_status": "open",
        **_threat(rule),
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _canonical(record: CloudTrailRecord) -> bytes:
    """The record's content, independent of key order, input format, event.original and of when
    it was read (a replayed event gets the alert id it had)."""
    content = {key: value for key, value in record.items() if key != INGESTED_MS}
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def _json_size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))


def _cut(value: Any) -> tuple[Any, bool]:
    """The value with every string cut to FIELD_LIMIT characters, and whether one was.

    A number JSON cannot hold (1e400 in a payload reads as infinity) becomes Java's text for it,
    as in the payload's text form, so the alert stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return ("NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"), False
    if isinstance(value, str):
        return (value[:FIELD_LIMIT], True) if len(value) > FIELD_LIMIT else (value, False)
    if isinstance(value, list):
        items = [_cut(item) for item in value]
        return [item for item, _ in items], any(cut for _, cut in items)
    if isinstance(value, dict):
        entries = {key: _cut(item) for key, item in value.items()}
        return {key: item for key, (item, _) in entries.items()}, any(
            cut for _, cut in entries.values()
        )
    return value, False


def _event_fields(
    record: CloudTrailRecord, kept: Iterable[str]
) -> tuple[dict[str, EcsValue], list[str], list[str]]:
    """The event's fields as Elastic stores them, bounded: (fields, truncated, omitted)."""
    fields: dict[str, EcsValue] = {}
    truncated: list[str] = []
    for name, value in normalize(record, stored=True).items():
        fields[name], was_cut = _cut(value)
        if was_cut:
            truncated.append(name)
    # Every field a rule may read is among them, or inside a flattened object they hold.
    protected = {*CONTEXT_FIELDS, *kept}
    sizes = {name: _json_size(value) + len(name) for name, value in fields.items()}
    total = sum(sizes.values())
    omitted: list[str] = []
    for name in sorted(set(fields) - protected, key=lambda name: -sizes[name]):
        if total <= EVENT_FIELDS_LIMIT:
            break
        del fields[name]
        total -= sizes[name]
        omitted.append(name)
    return fields, truncated, omitted


def build_alert(
    *,
    rule: RuleDefinition,
    ruleset: str,
    record: CloudTrailRecord,
    fields_read: Iterable[str],
    detected_at: datetime,
    original: str | None,
    row: Mapping[str, Any] | None = None,
) -> Alert:
    """The alert for one match: the event's fields, the rule's output row (EVAL and GROK columns
    of an ES|QL rule, when the engine hands one over), rule metadata and a reason."""
    ecs, truncated, omitted = _event_fields(record, fields_read)
    event_id = ecs.get("event.id")
    identifier = alert_id(
        rule.rule_id, event_id if isinstance(event_id, str) else None, _canonical(record)
    )
    columns = {name: _cut(value)[0] for name, value in (row or {}).items() if value is not None}
    text = reason(rule, {**ecs, **columns})
    added: dict[str, Any] = {
        "detector.truncated_fields": truncated or None,
        "detector.omitted_fields": omitted or None,
    }
    if "@timestamp" in ecs:
        added["kibana.alert.original_time"] = ecs["@timestamp"]
    if original is not None:
        added["event.original"] = original
    account = ecs.get("cloud.account.id") or ""
    subject = ecs.get("user.target.name") or _subject(ecs)
    return _alert(rule, ruleset, identifier=identifier, text=text, detected_at=detected_at,
                  key=f"{account}/{subject}", fields={**ecs, **columns}, added=added)


def _alert(rule: RuleDefinition, ruleset: str, *, identifier: str, text: str,
           detected_at: datetime, key: str, fields: Mapping[str, Any],
           added: Mapping[str, Any]) -> Alert:
    """What both builders make: `fields` (the event's or the row's), then what every alert
    carries (time, kind, reason, the rule's fields, its id), then the builder's `added`
    fields; null fields left out, dotted names nested."""
    flat: dict[str, Any] = {
        **fields,
        "@timestamp": _iso(detected_at),
        "event.kind": "alert",
        "message": text,
        **_rule_fields(rule, ruleset),
        "kibana.alert.uuid": identifier,
        "kibana.alert.reason": text,
        **added,
    }
    return Alert(
        alert_id=identifier,
        # A name from a \u-escaped JSON string may hold a lone surrogate, which UTF-8 cannot
        # encode: the key spells it as an escape instead of failing the whole batch.
        key=key.encode("utf-8", "backslashreplace"),
        headers=[("rule.id", rule.rule_id.encode()), ("rule.severity", rule.severity.encode())],
        document=nest({k: v for k, v in flat.items() if v is not None}),
    )


def alert_for(
    rule: LoadedRule,
    record: CloudTrailRecord,
    *,
    detected_at: datetime,
    original: str | None,
    row: Mapping[str, Any] | None = None,
) -> Alert:
    """The alert for a match of a loaded rule: the event's fields, those the query read or KEEPs
    always among them, and the query's output row when the engine gives one."""
    return build_alert(
        rule=rule.definition.rule,
        ruleset=rule.source,
        record=record,
        fields_read=rule.query.fields_read + rule.query.keep_fields,
        detected_at=detected_at,
        original=original,
        row=row,
    )


def build_run_alert(
    *,
    rule: RuleDefinition,
    ruleset: str,
    run_ms: int,
    row: Mapping[str, Any],
    group_key: GroupKey,
    detected_at: datetime,
) -> Alert:
    """The alert for one row of an aggregating rule's run, as Kibana builds it for an ES|QL
    query with STATS: the row's columns are the document (nulls left out, as Kibana drops the
    null columns), then the rule's fields. Its id comes from the rule, the run and the row's
    group (`consumer.rules.schedule.alert_id`), and `detector.run` names the window it read."""
    columns = {name: _cut(value)[0] for name, value in row.items() if value is not None}
    identifier = run_alert_id(rule.rule_id, run_ms, group_key)
    run_end = datetime.fromtimestamp(run_ms / 1000, UTC)
    run_start = run_end - rule.lookback
    group = ", ".join(str(value) for value in group_key)
    text = (f"{rule.name}: {group or 'all events'} in the {_duration(rule.lookback)} "
            f"to {_iso(run_end)}")
    account = columns.get("cloud.account.id")
    return _alert(rule, ruleset, identifier=identifier, text=text, detected_at=detected_at,
                  key=f"{account if isinstance(account, str) else ''}/{group}", fields=columns,
                  added={"detector.run.start": _iso(run_start),
                         "detector.run.end": _iso(run_end)})


def run_alert_for(
    rule: LoadedRule, run_ms: int, row: Mapping[str, Any], group_key: GroupKey,
    *, detected_at: datetime,
) -> Alert:
    """`build_run_alert` for a loaded rule."""
    return build_run_alert(rule=rule.definition.rule, ruleset=rule.source, run_ms=run_ms,
                           row=row, group_key=group_key, detected_at=detected_at)


def _duration(interval: timedelta) -> str:
    """'5 minutes', '1 hour 30 minutes', '90 seconds' rather than timedelta's '0:05:00'."""
    seconds = int(interval.total_seconds())
    if seconds == 0:
        return f"{round(interval.total_seconds() * 1000)} ms"
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
    return " ".join(parts)


def build_throttle_summary(
    *,
    rule: RuleDefinition,
    ruleset: str,
    suppressed: int,
    window_start: datetime,
    window_end: datetime,
    worker: str,
) -> Alert:
    """One alert that stands for the matches above max_signals in one interval."""
    identifier = str(
        uuid.uuid5(ALERT_NAMESPACE, f"{rule.rule_id}:throttle:{worker}:{window_start.isoformat()}")
    )
    text = (
        f"{suppressed} further matches of {rule.name!r} between {_iso(window_start)} and "
        f"{_iso(window_end)} were not sent as alerts (max_signals {rule.max_signals} per "
        f"{_duration(rule.interval)}); search the source topic for them"
    )
    flat: dict[str, Any] = {
        "@timestamp": _iso(window_end),
        "event.kind": "alert",
        "event.action": "throttled-matches",
        "message": text,
        **_rule_fields(rule, ruleset),
        "kibana.alert.uuid": identifier,
        "kibana.alert.reason": text,
        "detector.throttle.suppressed": suppressed,
        "detector.throttle.window_start": _iso(window_start),
        "detector.throttle.window_end": _iso(window_end),
    }
    return Alert(
        alert_id=identifier,
        key=rule.rule_id.encode(),
        headers=[("rule.id", rule.rule_id.encode()), ("rule.severity", rule.severity.encode())],
        document=nest({k: v for k, v in flat.items() if v is not None}),
    )


def encode_json(alert: Alert) -> bytes:
    """Compact ASCII JSON: lone surrogates from hostile input stay valid escapes, never NaN."""
    text = json.dumps(alert.document, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.encode()
