"""The bundled CloudTrail sample: well-formed, fictional, alerting exactly where its README says.

The verdicts are computed here with a direct reading of Elastic's rule, independent of the
detector's normalizer and rule engine, so the sample checks them rather than echoes them.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from fastavro.validation import validate

from consumer.cloudtrail.record import READER_SCHEMA, avro_to_json, json_to_avro

SAMPLES = Path(__file__).resolve().parents[2] / "consumer" / "samples"
SAMPLE_FILE = SAMPLES / "cloudtrail-sample.jsonl"
SAMPLE_README = SAMPLES / "README.md"

REQUIRED_KEYS = ("eventVersion", "eventSource", "eventName", "eventTime", "eventID")
ALLOWED_NETWORKS = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.0.0.0/8")
)
"""RFC 5737's documentation ranges, and a private range for addresses inside a VPC."""
FICTIONAL_ACCOUNTS = frozenset({"111122223333", "444455556666", "777788889999"})
ABSENT_VALUES = frozenset({"", "-"})
"""Values Elastic's pipeline drops, so a field holding them is absent to the rule."""

ALERTING_HEADING = "Lines that alert"
NEAR_MISS_HEADING = "CreateAccessKey lines that do not alert"
TABLE_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`([0-9a-f-]{36})`\s*\|", re.MULTILINE)


@cache
def sample_records() -> tuple[dict[str, Any], ...]:
    """The sample's records, in file order (line n is index n - 1)."""
    records = []
    for number, line in enumerate(SAMPLE_FILE.read_text(encoding="utf-8").splitlines(), 1):
        value = json.loads(line)
        assert isinstance(value, dict), f"line {number} is not a JSON object"
        records.append(value)
    return tuple(records)


def documented_lines(heading: str) -> dict[int, str]:
    """The line number -> eventID table under `## heading` in the sample's README."""
    text = SAMPLE_README.read_text(encoding="utf-8")
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return {int(line): event_id for line, event_id in TABLE_ROW.findall(section)}


def _present(value: object) -> str | None:
    return value if isinstance(value, str) and value not in ABSENT_VALUES else None


def _target(record: dict[str, Any]) -> object:
    return (record.get("requestParameters") or {}).get("userName")


def elastic_rule_matches(record: dict[str, Any]) -> bool:
    """Elastic's "AWS IAM User Created Access Keys For Another User", read directly off a record.

    provider iam.amazonaws.com, action CreateAccessKey, outcome success (no errorCode nor
    errorMessage), and user.name != user.target.name with both present (ES|QL drops a comparison
    with null). user.name is the IAM user's name, or for a role session the role's name.
    """
    if record.get("eventSource") != "iam.amazonaws.com":
        return False
    if record.get("eventName") != "CreateAccessKey":
        return False
    if _present(record.get("errorCode")) or _present(record.get("errorMessage")):
        return False
    identity = record.get("userIdentity") or {}
    caller = _present(identity.get("userName"))
    if identity.get("type") == "AssumedRole":
        issuer = (identity.get("sessionContext") or {}).get("sessionIssuer") or {}
        caller = _present(issuer.get("userName")) or caller
    target = _present(_target(record))
    return caller is not None and target is not None and caller != target


def test_every_line_is_a_cloudtrail_record_with_the_required_keys() -> None:
    records = sample_records()
    assert 50 <= len(records) <= 80
    for number, record in enumerate(records, 1):
        missing = [key for key in REQUIRED_KEYS if not isinstance(record.get(key), str)]
        assert not missing, f"line {number} lacks {missing}"
        assert re.fullmatch(r"1\.(08|09|10|11)", record["eventVersion"]), f"line {number}"
        assert record["eventSource"].endswith(".amazonaws.com"), f"line {number}"


def test_event_ids_are_unique_uuids() -> None:
    event_ids = [record["eventID"] for record in sample_records()]
    assert len(set(event_ids)) == len(event_ids)
    for event_id in event_ids:
        assert str(uuid.UUID(event_id)) == event_id


def test_event_times_are_utc_and_in_file_order() -> None:
    times = [record["eventTime"] for record in sample_records()]
    for event_time in times:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event_time), event_time
        datetime.fromisoformat(event_time)
    assert times == sorted(times)


def test_sample_uses_only_documentation_addresses_and_fictional_accounts() -> None:
    text = SAMPLE_FILE.read_text(encoding="utf-8")
    addresses = {
        ipaddress.ip_address(match)
        for match in re.findall(r"(?<![\d./])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])", text)
    }
    outside = {
        str(address)
        for address in addresses
        if not any(address in network for network in ALLOWED_NETWORKS)
    }
    assert addresses, "the sample should carry source addresses"
    assert not outside, f"addresses outside the documentation ranges: {sorted(outside)}"
    accounts = set(re.findall(r"(?<!\d)\d{12}(?!\d)", text))
    assert accounts == FICTIONAL_ACCOUNTS


def test_every_line_converts_losslessly_to_the_avro_schema() -> None:
    for number, record in enumerate(sample_records(), 1):
        avro_record = json_to_avro(record)
        assert validate(avro_record, READER_SCHEMA, raise_errors=True), f"line {number}"
        assert avro_to_json(avro_record) == record, f"line {number}"


def test_elastic_rule_alerts_on_exactly_the_lines_the_readme_lists() -> None:
    matching = {
        number: record["eventID"]
        for number, record in enumerate(sample_records(), 1)
        if elastic_rule_matches(record)
    }
    assert matching == documented_lines(ALERTING_HEADING)
    assert len(matching) == 4
    alerting = [sample_records()[number - 1] for number in matching]
    callers = {record["userIdentity"]["userName"] for record in alerting}
    targets = {_target(record) for record in alerting}
    assert len(callers) == len(targets) == len(matching), "each alert has its own caller, target"


NEAR_MISS_KINDS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "failed-cross-user-attempt": lambda record: (
        bool(record.get("errorCode"))
        and _target(record) not in {None, record["userIdentity"].get("userName")}
    ),
    "role-named-like-its-target": lambda record: (
        record["userIdentity"]["type"] == "AssumedRole"
        and record["userIdentity"]["sessionContext"]["sessionIssuer"]["userName"] == _target(record)
    ),
    "self-with-explicit-user-name": lambda record: (
        record["userIdentity"]["type"] == "IAMUser"
        and _target(record) == record["userIdentity"]["userName"]
    ),
    "self-without-user-name": lambda record: (
        record["userIdentity"]["type"] == "IAMUser" and record.get("requestParameters") is None
    ),
    "root-without-alias": lambda record: (
        record["userIdentity"]["type"] == "Root"
        and "userName" not in record["userIdentity"]
        and _target(record) is not None
    ),
}
"""The ways a CreateAccessKey can look cross-user, or be so, without Elastic's rule alerting."""


@pytest.mark.parametrize("kind", sorted(NEAR_MISS_KINDS))
def test_readme_documents_each_kind_of_create_access_key_near_miss(kind: str) -> None:
    records = sample_records()
    documented = documented_lines(NEAR_MISS_HEADING)
    assert any(NEAR_MISS_KINDS[kind](records[number - 1]) for number in documented)


def test_documented_near_misses_are_create_access_key_calls_the_rule_ignores() -> None:
    records = sample_records()
    near_misses = documented_lines(NEAR_MISS_HEADING)
    assert near_misses
    for number, event_id in near_misses.items():
        record = records[number - 1]
        assert record["eventID"] == event_id, f"line {number}"
        assert (record["eventSource"], record["eventName"]) == (
            "iam.amazonaws.com",
            "CreateAccessKey",
        )
        assert not elastic_rule_matches(record), f"line {number}"
    create_access_key_lines = {
        number
        for number, record in enumerate(records, 1)
        if record["eventName"] == "CreateAccessKey"
    }
    assert create_access_key_lines == set(near_misses) | set(documented_lines(ALERTING_HEADING))
