"""Our ECS fields against the documents Elastic's own AWS CloudTrail pipeline produced.

Each vector is a raw CloudTrail record and the ECS fields Elastic derived from it (see
../shared/conformance/elastic-pipeline/README.md). The rule's fields must match exactly, absence
included; other fields match as the pipeline version that wrote the vector set them, and where
that version differs from ours on purpose the divergence is listed below with its reason.
"""

import fnmatch
import gzip
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from consumer.cloudtrail.normalize import ECS_FIELDS, normalize
from consumer.cloudtrail.types import CloudTrailRecord, EcsValue
from tests.conftest import shared_path

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
VECTORS = SHARED / "conformance" / "elastic-pipeline" / "vectors.jsonl"
DATASETS = SHARED / "datasets"
FREE_FORM_KEYS = (
    "requestParameters",
    "responseElements",
    "additionalEventData",
    "serviceEventDetails",
)

RULE_FIELDS = ("event.provider", "event.action", "event.outcome", "user.name", "user.target.name")
STABLE_FIELDS = (
    "event.id",
    "event.kind",
    "event.category",
    "cloud.account.id",
    "cloud.region",
    "source.address",
    "source.ip",
    "user_agent.original",
    "user.target.id",
    "user.changes.name",
    "aws.cloudtrail.user_identity.type",
    "aws.cloudtrail.user_identity.arn",
    "aws.cloudtrail.user_identity.access_key_id",
    "aws.cloudtrail.error_code",
    "aws.cloudtrail.error_message",
)
INFORMATIVE_FIELDS = ("user.id", "related.user", "event.type", "service.name")
# Set by newer pipeline versions only: compared where the vector has it, since its absence in an
# older vector says nothing about what Elastic writes today.
COMPARED_WHEN_PRESENT = ("cloud.provider",)
# Not in the vectors' flattened documents at all: pinned in test_normalize.py instead, against
# facts of Elastic's pipeline and of the Java types it runs on.
NOT_IN_VECTORS = (
    "@timestamp",
    "event.dataset",
    "event.module",
    "event.ingested",
    "data_stream.type",
    "data_stream.dataset",
    "data_stream.namespace",
    "user.email",
    "group.id",
    "group.name",
    *(f"source.geo.{name}" for name in (
        "city_name", "continent_name", "country_iso_code", "country_name", "region_iso_code",
        "region_name", "location",
    )),
    "source.as.number",
    "source.as.organization.name",
    *(f"user_agent.{name}" for name in (
        "name", "version", "os.name", "os.version", "os.full", "device.name",
    )),
    "tls.version_protocol",
    "tls.version",
    "tls.cipher",
    "tls.client.server_name",
    "aws.cloudtrail.user_identity.invoked_by",
    *(f"aws.cloudtrail.user_identity.session_context.{name}" for name in (
        "mfa_authenticated", "creation_date", "ec2_role_delivery", "session_issuer.type",
        "session_issuer.principal_id", "session_issuer.arn", "session_issuer.account_id",
    )),
    *(f"aws.cloudtrail.{name}" for name in (
        "event_version", "event_type", "request_id", "api_version", "recipient_account_id",
        "vpc_endpoint_id", "session_credential_from_console", "event_category",
        "management_event", "read_only", "request_parameters", "response_elements",
        "additional_eventdata", "service_event_details", "flattened.request_parameters",
        "flattened.response_elements", "flattened.additional_eventdata",
        "flattened.service_event_details", "resources.arn", "resources.account_id",
        "resources.type", "console_login.additional_eventdata.login_to",
        "console_login.additional_eventdata.mobile_version",
        "console_login.additional_eventdata.mfa_used",
    )),
)

KNOWN_DIVERGENCES: dict[tuple[str, str], tuple[EcsValue, str]] = {
    ("test-attach-user-policy#0", "related.user"): (
        ["ec2-instance-role", "pwncloud-backdoor-user"],
        "this pipeline version also lists the role session name and user.id (a principal id, not"
        " a user name); we list user names only: actor, target, new name",
    ),
    ("test-upload-ssh-public-key-none#0", "related.user"): (
        ["Alice"],
        "this pipeline version also lists user.id (principal id EXAMPLE_ID), which is not a user"
        " name; older versions (most vectors) list names only, as we do",
    ),
}


def load_vectors() -> list[dict[str, Any]]:
    with VECTORS.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def vector_params() -> list[Any]:
    if not VECTORS.is_file():
        reason = f"Elastic pipeline vectors not found at {VECTORS} (../shared is absent)"
        return [pytest.param(None, id="no-vectors", marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(vector, id=vector["name"]) for vector in load_vectors()]


def as_avro_shape(record: CloudTrailRecord) -> CloudTrailRecord:
    """The record as the Avro schema carries it: free-form objects as JSON text."""
    return {
        key: json.dumps(value) if key in FREE_FORM_KEYS and value is not None else value
        for key, value in record.items()
    }


def test_every_derived_field_is_classified() -> None:
    classified = (
        RULE_FIELDS + STABLE_FIELDS + INFORMATIVE_FIELDS + COMPARED_WHEN_PRESENT + NOT_IN_VECTORS
    )

    assert sorted(classified) == sorted(ECS_FIELDS)


@pytest.mark.parametrize("vector", vector_params())
@pytest.mark.parametrize("shape", ["json-dicts", "avro-json-text"])
def test_rule_fields_match_elastic(vector: dict[str, Any], shape: str) -> None:
    record = vector["input"] if shape == "json-dicts" else as_avro_shape(vector["input"])

    document = normalize(record, RULE_FIELDS)

    expected = {
        name: vector["expected"][name] for name in RULE_FIELDS if name in vector["expected"]
    }
    assert document == expected


@pytest.mark.parametrize("vector", vector_params())
def test_stable_fields_match_elastic(vector: dict[str, Any]) -> None:
    document = normalize(vector["input"], stored=True)

    for name in STABLE_FIELDS:
        assert document.get(name) == vector["expected"].get(name), name
    for name in COMPARED_WHEN_PRESENT:
        if name in vector["expected"]:
            assert document.get(name) == vector["expected"][name], name


@pytest.mark.parametrize("vector", vector_params())
def test_informative_fields_match_elastic_or_a_documented_divergence(
    vector: dict[str, Any],
) -> None:
    document = normalize(vector["input"], stored=True)

    for name in INFORMATIVE_FIELDS:
        divergence = KNOWN_DIVERGENCES.get((vector["name"], name))
        expected = vector["expected"].get(name) if divergence is None else divergence[0]
        assert document.get(name) == expected, name


def test_known_divergences_are_real() -> None:
    if not VECTORS.is_file():
        pytest.skip(f"Elastic pipeline vectors not found at {VECTORS} (../shared is absent)")
    vectors = {vector["name"]: vector for vector in load_vectors()}

    for (vector_name, field), (ours, _reason) in KNOWN_DIVERGENCES.items():
        assert vectors[vector_name]["expected"].get(field) != ours, (vector_name, field)


@pytest.mark.parametrize("vector", vector_params())
def test_json_text_and_dict_free_form_objects_normalize_identically(
    vector: dict[str, Any],
) -> None:
    assert normalize(as_avro_shape(vector["input"])) == normalize(vector["input"])


@pytest.mark.parametrize("vector", vector_params())
def test_raw_source_fields_copy_the_top_level_value(vector: dict[str, Any]) -> None:
    record = as_avro_shape(vector["input"])
    raw_sources = {
        field.name: field.raw_source
        for field in ECS_FIELDS.values()
        if field.raw_source is not None
    }

    document = normalize(record, raw_sources)

    for name, value in document.items():
        assert value == record[raw_sources[name]], name
    assert {"event.provider", "event.action", "cloud.region"} <= set(document)


def elastic_rule_alerts(document: dict[str, EcsValue]) -> bool:
    """The seed rule under ES|QL semantics: a comparison with a missing field is not true."""
    actor = document.get("user.name")
    target = document.get("user.target.name")
    return (
        document.get("event.provider") == "iam.amazonaws.com"
        and document.get("event.action") == "CreateAccessKey"
        and document.get("event.outcome") == "success"
        and actor is not None
        and target is not None
        and actor != target
    )


def labelled_events() -> list[Any]:
    folders = ("createaccesskey-real-events", "panther-analysis-createaccesskey-fixtures")
    if not all((DATASETS / folder / "labels.json").is_file() for folder in folders):
        reason = f"labelled CreateAccessKey datasets not found under {DATASETS}"
        return [pytest.param(None, None, id="no-datasets", marks=pytest.mark.skip(reason=reason))]
    params = []
    for folder in folders:
        with gzip.open(DATASETS / folder / "events.jsonl.gz", "rt", encoding="utf-8") as lines:
            events = [json.loads(line) for line in lines if line.strip()]
        labels = json.loads((DATASETS / folder / "labels.json").read_text(encoding="utf-8"))
        params += [
            pytest.param(events[label["line"] - 1], label, id=f"{folder}#{label['line']}")
            for label in labels
        ]
    return params


@pytest.mark.parametrize(("event", "label"), labelled_events())
def test_seed_rule_on_our_fields_gives_elastics_verdict(
    event: CloudTrailRecord, label: dict[str, Any]
) -> None:
    document = normalize(as_avro_shape(event), RULE_FIELDS)

    verdict = "alert" if elastic_rule_alerts(document) else "no_alert"
    assert verdict == label["elastic_verdict"]


SOURCE_FIELD = re.compile(
    r"(?<![\w.`])`?(@timestamp|(?:aws|source|user_agent|user|event|cloud|data_stream|related"
    r"|service|tls|group|host)\.[\w@.\-*]*[\w*])`?"
)


def fields_named(query: str) -> set[str]:
    """Source field names in an ES|QL query, outside strings, comments and its FROM command."""
    query = re.sub(r'"""[\s\S]*?"""|"(?:\\.|[^"\\])*"|//[^\n]*', '""', query)
    query = re.sub(r"(?i)^\s*from\s[^|]*", "", query)
    return set(SOURCE_FIELD.findall(query))


def derived(name: str) -> bool:
    """A field we derive, or a KEEP pattern (`source.geo.*`) matching at least one."""
    if "*" in name:
        return any(fnmatch.fnmatchcase(known, name) for known in ECS_FIELDS)
    return name in ECS_FIELDS


def test_every_field_elastics_aws_esql_rules_read_is_derived() -> None:
    """Rules over CloudTrail only (one rule reads .alerts-security.*, Kibana's own alerts)."""
    read: dict[str, set[str]] = {}
    for path in sorted(shared_path("elastic-rules", "aws").glob("*.toml")):
        rule = tomllib.loads(path.read_text(encoding="utf-8"))["rule"]
        if rule.get("language") == "esql" and "logs-aws.cloudtrail" in rule["query"]:
            read[path.name] = fields_named(rule["query"])

    assert len(read) >= 20
    underived = {name: sorted(f for f in fields if not derived(f)) for name, fields in read.items()}
    assert {name: fields for name, fields in underived.items() if fields} == {}
