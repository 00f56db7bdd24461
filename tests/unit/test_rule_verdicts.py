"""Verdicts of the seed rule and its hardened companion: labelled datasets and edge cases."""

import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.cloudtrail.record import READER_SCHEMA, avro_to_json, json_to_avro
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.rules import CombinedPrefilter, load_rules
from consumer.rules.loader import LoadedRule, parse_rule

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
RULES = {rule.rule_id: rule.query for rule in load_rules()}
SEED = RULES["696015ef-718e-40ff-ac4a-cc2ba88dbeeb"]
HARDENED = RULES["32403725-2adc-4bc1-a434-02793697b9bd"]
PREFILTER = CombinedPrefilter.for_queries([SEED, HARDENED])
ACCOUNT = "111122223333"
ELASTIC_SEED_FILE = SHARED.joinpath(
    "elastic-rules", "aws", "persistence_iam_user_created_access_keys_for_another_user.toml"
)


def elastic_seed() -> LoadedRule:
    """Elastic's current file for the seed rule (severity high, METADATA, a long KEEP)."""
    if not ELASTIC_SEED_FILE.is_file():
        pytest.skip(f"{ELASTIC_SEED_FILE} is absent")
    rule = parse_rule(ELASTIC_SEED_FILE.read_text(encoding="utf-8"), str(ELASTIC_SEED_FILE))
    assert isinstance(rule, LoadedRule), f"Elastic's seed file is skipped: {rule}"
    return rule


def labelled_events() -> list[Any]:
    datasets = SHARED / "datasets"
    if not datasets.is_dir():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{datasets} is absent"))]
    cases = []
    for labels_file in sorted(datasets.glob("*/labels.json")):
        with gzip.open(labels_file.parent / "events.jsonl.gz", "rt", encoding="utf-8") as lines:
            events = [json.loads(line) for line in lines if line.strip()]
        for label in json.loads(labels_file.read_text()):
            event = events[label["line"] - 1]
            case_id = f"{labels_file.parent.name}:{label['line']}"
            cases.append(pytest.param(event, label, id=case_id))
    return cases


@pytest.mark.parametrize(("event", "label"), labelled_events())
def test_labelled_dataset_verdicts(event: dict[str, Any], label: dict[str, Any]) -> None:
    record = json_to_avro(event)
    assert SEED.matches(record) is (label["elastic_verdict"] == "alert")
    assert HARDENED.matches(record) is (label["hardened_verdict"] == "alert")


def iam_user(name: str | None) -> dict[str, Any]:
    identity: dict[str, Any] = {
        "type": "IAMUser",
        "principalId": "AIDAEXAMPLEPRINCIPAL",
        "arn": f"arn:aws:iam::{ACCOUNT}:user/{name}",
        "accountId": ACCOUNT,
    }
    if name is not None:
        identity["userName"] = name
    return identity


def session(kind: str, issuer_name: str | None, issuer_arn: str) -> dict[str, Any]:
    issuer: dict[str, Any] = {"type": "Role", "arn": issuer_arn, "accountId": ACCOUNT}
    if issuer_name is not None:
        issuer["userName"] = issuer_name
    return {
        "type": kind,
        "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{issuer_name}/worker-session",
        "accountId": ACCOUNT,
        "sessionContext": {"sessionIssuer": issuer},
    }


def role(name: str) -> dict[str, Any]:
    return session("AssumedRole", name, f"arn:aws:iam::{ACCOUNT}:role/{name}")


def root(alias: str | None = None) -> dict[str, Any]:
    identity: dict[str, Any] = {"type": "Root", "arn": f"arn:aws:iam::{ACCOUNT}:root"}
    if alias is not None:
        identity["userName"] = alias
    return identity


def call(
    identity: dict[str, Any],
    target: str | None,
    action: str = "CreateAccessKey",
    provider: str = "iam.amazonaws.com",
    **extra: Any,
) -> CloudTrailRecord:
    """A CloudTrail record in the Avro shape: requestParameters is JSON text."""
    return {
        "eventVersion": "1.08",
        "eventTime": "2025-01-15T10:00:00Z",
        "eventSource": provider,
        "eventName": action,
        "awsRegion": "us-east-1",
        "sourceIPAddress": "203.0.113.7",
        "userAgent": "aws-cli/2.15.0",
        "userIdentity": identity,
        "requestParameters": None if target is None else json.dumps({"userName": target}),
        "recipientAccountId": ACCOUNT,
        **extra,
    }


ALERT, SILENT = True, False
EDGE_CASES: list[tuple[str, CloudTrailRecord, bool, bool]] = [
    ("user creates key for another user", call(iam_user("alice"), "bob"), ALERT, ALERT),
    ("user names itself as target", call(iam_user("alice"), "alice"), SILENT, SILENT),
    ("user creates own key without UserName", call(iam_user("alice"), None), SILENT, SILENT),
    (
        "user creates own key, empty requestParameters",
        call(iam_user("alice"), None, requestParameters="{}"),
        SILENT,
        SILENT,
    ),
    ("target differs only in letter case", call(iam_user("alice"), "Alice"), ALERT, ALERT),
    ("caller differs only in letter case", call(iam_user("Alice"), "alice"), ALERT, ALERT),
    ("assumed role for a user", call(role("deploy"), "bob"), ALERT, ALERT),
    ("assumed role named like its target", call(role("bob"), "bob"), SILENT, ALERT),
    (
        "assumed role without issuer name",
        call(session("AssumedRole", None, f"arn:aws:iam::{ACCOUNT}:role/x"), "bob"),
        SILENT,
        ALERT,
    ),
    (
        "federated user named like its target",
        call(session("FederatedUser", "bob", f"arn:aws:iam::{ACCOUNT}:user/bob"), "bob"),
        SILENT,
        ALERT,
    ),
    (
        "federated user for another user",
        call(session("FederatedUser", "carol", f"arn:aws:iam::{ACCOUNT}:user/carol"), "bob"),
        ALERT,
        ALERT,
    ),
    ("root without alias for a user", call(root(), "bob"), SILENT, ALERT),
    ("root without alias, own key", call(root(), None), SILENT, SILENT),
    ("root with alias for a user", call(root("acme-prod"), "bob"), ALERT, ALERT),
    ("root alias equal to target name", call(root("bob"), "bob"), SILENT, ALERT),
    (
        "service-linked role caller",
        call(
            session(
                "AssumedRole",
                "AWSServiceRoleForSSO",
                f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/sso.amazonaws.com/AWSServiceRoleForSSO",
            ),
            "bob",
        ),
        SILENT,
        ALERT,
    ),
    (
        "AWS service caller",
        call({"type": "AWSService", "invokedBy": "cloudformation.amazonaws.com"}, "bob"),
        SILENT,
        ALERT,
    ),
    (
        "Identity Center user caller",
        call({"type": "IdentityCenterUser", "accountId": ACCOUNT}, "bob"),
        SILENT,
        ALERT,
    ),
    (
        "failure marked by errorCode alone",
        call(iam_user("alice"), "bob", errorCode="AccessDenied"),
        SILENT,
        SILENT,
    ),
    (
        "failure marked by errorMessage alone",
        call(iam_user("alice"), "bob", errorMessage="User: alice is not authorized"),
        SILENT,
        SILENT,
    ),
    (
        "root failure for a user",
        call(root(), "bob", errorCode="LimitExceeded"),
        SILENT,
        SILENT,
    ),
    ("errorCode of '-' is no error", call(iam_user("alice"), "bob", errorCode="-"), ALERT, ALERT),
    ("empty errorCode is no error", call(iam_user("alice"), "bob", errorCode=""), ALERT, ALERT),
    ("target of '-' is no target", call(iam_user("alice"), "-"), SILENT, SILENT),
    ("empty target is no target", call(iam_user("alice"), ""), SILENT, SILENT),
    ("target 'none' is no target", call(root(), "none"), SILENT, SILENT),
    ("caller name '-' is no name", call(iam_user("-"), "bob"), SILENT, ALERT),
    (
        "unparseable requestParameters",
        call(iam_user("alice"), None, requestParameters="{not json"),
        SILENT,
        SILENT,
    ),
    (
        "target spelled with a JSON escape",
        call(iam_user("alice"), None, requestParameters='{"userName": "\\u0062ob"}'),
        ALERT,
        ALERT,
    ),
    ("UpdateAccessKey on another", call(iam_user("a"), "b", "UpdateAccessKey"), SILENT, SILENT),
    ("CreateLoginProfile for b", call(iam_user("a"), "b", "CreateLoginProfile"), SILENT, SILENT),
    ("AttachUserPolicy on another", call(iam_user("a"), "b", "AttachUserPolicy"), SILENT, SILENT),
    ("DeleteAccessKey of another", call(iam_user("a"), "b", "DeleteAccessKey"), SILENT, SILENT),
    ("action in other letter case", call(iam_user("a"), "b", "createaccesskey"), SILENT, SILENT),
    (
        "wrong event source",
        call(iam_user("alice"), "bob", provider="sts.amazonaws.com"),
        SILENT,
        SILENT,
    ),
    (
        "look-alike event source",
        call(iam_user("alice"), "bob", provider="iam.amazonaws.com.example"),
        SILENT,
        SILENT,
    ),
    ("non-ASCII target", call(iam_user("alice"), "ålice"), ALERT, ALERT),
    ("non-ASCII caller names itself", call(iam_user("jürgen"), "jürgen"), SILENT, SILENT),
    ("non-ASCII names differing in case", call(iam_user("Ålice"), "ålice"), ALERT, ALERT),
]


@pytest.mark.parametrize(
    ("record", "seed_alerts", "hardened_alerts"),
    [pytest.param(record, seed, hardened, id=name) for name, record, seed, hardened in EDGE_CASES],
)
def test_edge_case_verdicts(
    record: CloudTrailRecord, seed_alerts: bool, hardened_alerts: bool
) -> None:
    assert SEED.matches(record) is seed_alerts
    assert HARDENED.matches(record) is hardened_alerts


def test_elastics_current_seed_file_gives_the_builtins_verdict_on_every_case() -> None:
    current = elastic_seed().query
    cases = [json_to_avro(event) for event, _ in (p.values for p in labelled_events())
             if event is not None]
    cases += [record for _, record, _, _ in EDGE_CASES]
    assert len(cases) > len(EDGE_CASES)
    assert [current.matches(record) for record in cases] == [SEED.matches(r) for r in cases]


@pytest.mark.parametrize(
    "record",
    [pytest.param(record, id=name) for name, record, seed, hardened in EDGE_CASES if hardened],
)
def test_prefilter_keeps_every_alerting_edge_case(record: CloudTrailRecord) -> None:
    avro = io.BytesIO()
    schemaless_writer(avro, READER_SCHEMA, record)
    assert PREFILTER.may_match(avro.getvalue(), text_format=False)
    assert PREFILTER.may_match(json.dumps(avro_to_json(record)).encode(), text_format=True)


NAMES = st.sampled_from(["alice", "Alice", "bob", "-", "", "none", "ålice"])
IDENTITIES = st.one_of(
    st.builds(iam_user, st.none() | NAMES),
    st.builds(role, NAMES),
    st.builds(root, st.none() | NAMES),
    st.fixed_dictionaries({"type": st.sampled_from(["AWSService", "IdentityCenterUser", "X"])}),
)


@settings(max_examples=300, deadline=None)
@given(
    identity=IDENTITIES,
    target=st.none() | NAMES,
    action=st.sampled_from(["CreateAccessKey", "UpdateAccessKey"]),
    error=st.fixed_dictionaries(
        {}, optional={"errorCode": st.sampled_from(["-", "Denied"]), "errorMessage": NAMES}
    ),
)
def test_hardened_rule_alerts_whenever_the_seed_rule_does(
    identity: dict[str, Any], target: str | None, action: str, error: dict[str, str]
) -> None:
    record = call(identity, target, action, **error)
    if SEED.matches(record):
        assert HARDENED.matches(record)
