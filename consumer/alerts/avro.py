"""Alerts as Avro in the Confluent wire format, for SIEM pipelines that read Avro.

The schema (`schemas/alert.avsc`) is registered once under `<alerts topic>-value`; every alert
is then the 5-byte header (magic byte, schema id) and the Avro body.
"""

from __future__ import annotations

import io
import json
from importlib.resources import files
from typing import Any, Final

from fastavro import parse_schema, schemaless_writer

from consumer.alerts.document import Alert, encode_json

ALERT_SCHEMA_TEXT: Final[str] = (files("consumer") / "schemas" / "alert.avsc").read_text("utf-8")
_ALERT_SCHEMA: Final = parse_schema(json.loads(ALERT_SCHEMA_TEXT))


def _get(document: dict[str, Any], dotted: str) -> Any:
    node: Any = document
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def to_avro_record(alert: Alert) -> dict[str, Any]:
    doc = alert.document
    return {
        "timestamp": doc["@timestamp"],
        "alert_uuid": alert.alert_id,
        "rule_id": _get(doc, "kibana.alert.rule.rule_id"),
        "rule_name": _get(doc, "kibana.alert.rule.name"),
        "rule_version": int(_get(doc, "kibana.alert.rule.version")),
        "severity": _get(doc, "kibana.alert.severity"),
        "risk_score": int(_get(doc, "kibana.alert.risk_score")),
        "reason": _get(doc, "kibana.alert.reason"),
        "original_time": _get(doc, "kibana.alert.original_time"),
        "event_id": _get(doc, "event.id"),
        "event_action": _get(doc, "event.action"),
        "event_provider": _get(doc, "event.provider"),
        "event_outcome": _get(doc, "event.outcome"),
        "user_name": _get(doc, "user.name"),
        "user_target_name": _get(doc, "user.target.name"),
        "source_ip": _get(doc, "source.ip"),
        "user_agent": _get(doc, "user_agent.original"),
        "cloud_account_id": _get(doc, "cloud.account.id"),
        "cloud_region": _get(doc, "cloud.region"),
        "identity_type": _get(doc, "aws.cloudtrail.user_identity.type"),
        "identity_arn": _get(doc, "aws.cloudtrail.user_identity.arn"),
        "identity_access_key_id": _get(doc, "aws.cloudtrail.user_identity.access_key_id"),
        "tactic_ids": _listed(_get(doc, "threat.tactic.id")),
        "technique_ids": _listed(_get(doc, "threat.technique.id"))
        + _listed(_get(doc, "threat.technique.subtechnique.id")),
        "event_original": _get(doc, "event.original"),
        "document": encode_json(alert).decode("ascii"),
    }


class WireAlertEncoder:
    """Encodes alerts in the Confluent wire format under a schema id the registry gave ours."""

    def __init__(self, schema_id: int) -> None:
        self._header = b"\x00" + schema_id.to_bytes(4, "big")

    def __call__(self, alert: Alert) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self._header)
        schemaless_writer(buffer, _ALERT_SCHEMA, to_avro_record(alert))
        return buffer.getvalue()
