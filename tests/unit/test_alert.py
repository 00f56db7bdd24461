"""The alert document: deterministic ids, the reason sentence, ECS and kibana.alert fields."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from consumer.alerts.document import (
    ALERT_NAMESPACE,
    EVENT_FIELDS_LIMIT,
    FIELD_LIMIT,
    Alert,
    alert_id,
    build_alert,
    build_throttle_summary,
    encode_json,
    nest,
    reason,
)
from consumer.cloudtrail.normalize import INGESTED_MS
from consumer.cloudtrail.record import json_to_avro
from consumer.cloudtrail.types import EcsValue
from consumer.rules.loader import LoadedRule, load_rules
from consumer.rules.model import RuleDefinition
from tests.support.events import create_access_key

SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
ACCOUNT = "123456789012"
DETECTED_AT = datetime(2026, 11, 29, 10, 0, 5, 250_000, tzinfo=UTC)


@pytest.fixture(scope="module")
def seed() -> LoadedRule:
    return next(rule for rule in load_rules() if rule.rule_id == SEED_ID)


def alert_for(
    seed: LoadedRule, record: dict[str, Any], *, original: str | None = None
) -> Alert:
    return build_alert(
        rule=seed.definition.rule,
        ruleset=seed.source,
        record=json_to_avro(record),
        fields_read=seed.query.fields_read + seed.query.keep_fields,
        detected_at=DETECTED_AT,
        original=original,
    )


def alice_creates_key_for_bob() -> dict[str, Any]:
    return create_access_key(event_id="3f0d5a9e-1111-4e5b-9c1d-000000000001", caller="alice",
                             target="bob", account=ACCOUNT)


def test_alert_id_is_the_uuid5_of_rule_and_event_id() -> None:
    identifier = alert_id(SEED_ID, "event-1", b"ignored when there is an event id")

    assert identifier == str(uuid.uuid5(ALERT_NAMESPACE, f"{SEED_ID}:event-1"))
    assert uuid.UUID(identifier).version == 5
    assert identifier == alert_id(SEED_ID, "event-1", b"another payload")
    assert identifier != alert_id(SEED_ID, "event-2", None)
    assert identifier != alert_id("32403725-2adc-4bc1-a434-02793697b9bd", "event-1", None)


def test_alert_id_without_an_event_id_is_derived_from_the_payload() -> None:
    first = alert_id(SEED_ID, None, b'{"eventName":"CreateAccessKey","n":1}')

    assert first == alert_id(SEED_ID, "", b'{"eventName":"CreateAccessKey","n":1}')
    assert first == alert_id(SEED_ID, None, b'{"eventName":"CreateAccessKey","n":1}')
    assert first != alert_id(SEED_ID, None, b'{"eventName":"CreateAccessKey","n":2}')


def test_events_without_event_id_get_distinct_alert_ids_even_without_event_original(
    seed: LoadedRule,
) -> None:
    first = alice_creates_key_for_bob()
    second = create_access_key(event_id="x", caller="alice", target="carol", account=ACCOUNT)
    for record in (first, second):
        del record["eventID"]

    ids = [alert_for(seed, record).alert_id for record in (first, second)]

    assert ids[0] != ids[1]
    assert ids[0] == alert_for(seed, first).alert_id


def test_the_same_event_gets_the_same_alert_id_whether_or_not_event_original_is_kept(
    seed: LoadedRule,
) -> None:
    record = alice_creates_key_for_bob()
    with_original = alert_for(seed, record, original=json.dumps(record))

    assert with_original.alert_id == alert_for(seed, record).alert_id
    assert with_original.alert_id == alert_id(SEED_ID, record["eventID"], None)


def test_nest_turns_dotted_names_into_objects_sharing_their_parents() -> None:
    flat = {
        "user.name": "alice",
        "user.target.name": "bob",
        "event.kind": "alert",
        "@timestamp": "t",
        "threat.tactic.id": ["TA0003", "TA0004"],
    }

    assert nest(flat) == {
        "user": {"name": "alice", "target": {"name": "bob"}},
        "event": {"kind": "alert"},
        "@timestamp": "t",
        "threat": {"tactic": {"id": ["TA0003", "TA0004"]}},
    }
    assert nest({}) == {}


def key_creation(**fields: EcsValue) -> dict[str, EcsValue]:
    return {
        "event.action": "CreateAccessKey",
        "user.target.name": "bob",
        "cloud.account.id": ACCOUNT,
        **fields,
    }


ROLE_ARN = f"arn:aws:sts::{ACCOUNT}:assumed-role/backup-operator/nightly-job"


@pytest.mark.parametrize(
    ("ecs", "expected"),
    [
        (
            key_creation(**{"user.name": "alice", "aws.cloudtrail.user_identity.type": "IAMUser"}),
            "IAM user alice created an access key for IAM user bob in account 123456789012",
        ),
        (
            key_creation(**{"user.name": "backup-operator", "user.target.name": "backup-operator",
                            "aws.cloudtrail.user_identity.type": "AssumedRole",
                            "aws.cloudtrail.user_identity.arn": ROLE_ARN}),
            "role backup-operator (session nightly-job) created an access key for IAM user "
            "backup-operator in account 123456789012",
        ),
        (
            key_creation(**{"service.name": "cloudformation.amazonaws.com",
                            "aws.cloudtrail.user_identity.type": "AWSService"}),
            "AWS service cloudformation.amazonaws.com created an access key for IAM user bob in "
            "account 123456789012",
        ),
        (
            key_creation(**{"aws.cloudtrail.user_identity.arn": "arn:aws:iam::123456789012:root",
                            "aws.cloudtrail.user_identity.type": "Root"}),
            "the root user created an access key for IAM user bob in account 123456789012",
        ),
        (
            key_creation(**{"user.name": "corp-alias",
                            "aws.cloudtrail.user_identity.type": "Root"}),
            "the root user (corp-alias) created an access key for IAM user bob in account "
            "123456789012",
        ),
        (
            key_creation(**{
                "user.name": "sso-broker", "aws.cloudtrail.user_identity.type": "FederatedUser",
                "aws.cloudtrail.user_identity.arn":
                    f"arn:aws:sts::{ACCOUNT}:federated-user/carol",
            }),
            "federated user carol (via IAM user sso-broker) created an access key for IAM user "
            "bob in account 123456789012",
        ),
        (
            key_creation(**{"aws.cloudtrail.user_identity.type": "SAMLUser"}),
            "an unnamed SAMLUser identity created an access key for IAM user bob in account "
            "123456789012",
        ),
        (key_creation(), "an unknown identity created an access key for IAM user bob in account "
                         "123456789012"),
        (
            {"event.action": "CreateAccessKey", "user.name": "alice", "user.target.name": "bob"},
            "alice created an access key for IAM user bob",
        ),
        (
            key_creation(**{"user.name": "alice", "event.action": "AttachUserPolicy"}),
            "alice attached a policy to IAM user bob in account 123456789012",
        ),
    ],
    ids=["iam-user", "role-session", "service", "root", "root-alias", "federated",
         "identity-type", "unknown", "no-account", "other-phrase"],
)
def test_reason_says_who_did_what_to_whom_where(
    seed: LoadedRule, ecs: Mapping[str, EcsValue], expected: str
) -> None:
    assert reason(seed.definition.rule, ecs) == expected


def test_reason_for_an_action_without_a_phrase_names_the_rule_and_the_call(
    seed: LoadedRule,
) -> None:
    ecs = {"event.action": "DeleteAccessKey", "user.name": "alice", "cloud.account.id": ACCOUNT}

    assert reason(seed.definition.rule, ecs) == (
        "AWS IAM User Created Access Keys For Another User: alice called DeleteAccessKey "
        "in account 123456789012"
    )


def test_alert_document_carries_the_events_fields_as_elastic_derives_them(
    seed: LoadedRule,
) -> None:
    record = alice_creates_key_for_bob()

    document = alert_for(seed, record).document

    assert document["@timestamp"] == "2026-11-29T10:00:05.250Z"
    assert document["event"] == {
        "id": record["eventID"],
        "kind": "alert",
        "action": "CreateAccessKey",
        "provider": "iam.amazonaws.com",
        "outcome": "success",
        "category": ["iam"],
        "type": ["user", "change"],
        "dataset": "aws.cloudtrail",
        "module": "aws",
        "ingested": "2026-11-29T10:00:00Z",
    }
    assert document["data_stream"] == {
        "type": "logs", "dataset": "aws.cloudtrail", "namespace": "default"
    }
    assert document["user"] == {
        "name": "alice", "id": record["userIdentity"]["principalId"], "target": {"name": "bob"}
    }
    assert document["source"] == {"ip": "198.51.100.7", "address": "198.51.100.7"}
    assert document["user_agent"] == {
        "original": "aws-cli/2.15.0 Python/3.11.6", "name": "aws-cli", "version": "2.15.0",
        "device": {"name": "Other"},
    }
    assert document["cloud"] == {
        "provider": "aws",
        "account": {"id": ACCOUNT},
        "region": "us-east-1",
    }
    cloudtrail = document["aws"]["cloudtrail"]
    assert cloudtrail["user_identity"] == {
        "type": "IAMUser",
        "arn": "arn:aws:iam::123456789012:user/alice",
        "access_key_id": "AKIAIOSFODNN7EXAMPLE",
    }
    assert cloudtrail["request_parameters"] == "{userName=bob}"
    assert cloudtrail["flattened"] == {"request_parameters": {"userName": "bob"}}
    assert document["message"] == (
        "IAM user alice created an access key for IAM user bob in account 123456789012"
    )
    assert "detector" not in document


def with_new_key(record: dict[str, Any]) -> dict[str, Any]:
    record["responseElements"] = {"accessKey": {
        "accessKeyId": "AKIAEXAMPLENEWKEY123", "status": "Active", "userName": "bob",
        "createDate": "Nov 29, 2026, 10:00:00 AM",
    }}
    return record


def test_the_new_access_key_id_is_in_the_alert_without_event_original(seed: LoadedRule) -> None:
    document = alert_for(seed, with_new_key(alice_creates_key_for_bob()), original=None).document

    cloudtrail = document["aws"]["cloudtrail"]
    assert "original" not in document["event"]
    assert cloudtrail["response_elements"] == (
        "{accessKey={accessKeyId=AKIAEXAMPLENEWKEY123, userName=bob, status=Active,"
        " createDate=Nov 29, 2026, 10:00:00 AM}}"
    )
    assert cloudtrail["flattened"]["response_elements"]["accessKey"]["accessKeyId"] == (
        "AKIAEXAMPLENEWKEY123"
    )


def test_a_string_past_the_field_limit_is_cut_and_named(seed: LoadedRule) -> None:
    record = alice_creates_key_for_bob()
    record["userAgent"] = "x" * (FIELD_LIMIT + 10)

    document = alert_for(seed, record).document

    assert document["user_agent"]["original"] == "x" * FIELD_LIMIT
    assert document["detector"]["truncated_fields"] == ["user_agent.original"]


def test_past_the_alert_limit_the_largest_unread_fields_are_left_out_and_named(
    seed: LoadedRule,
) -> None:
    record = with_new_key(alice_creates_key_for_bob())
    # Many mid-sized values: the text form (32,765 characters) stays under every field limit.
    record["requestParameters"] = {"userName": "bob", **{f"k{i:03}": "v" * 300 for i in range(105)}}
    record["additionalEventData"] = {f"k{i:03}": "w" * 300 for i in range(105)}
    record["serviceEventDetails"] = {f"k{i:03}": "z" * 300 for i in range(105)}
    record["responseElements"]["padding"] = "p" * 30000
    record["resources"] = [{"ARN": f"arn:aws:s3:::b/{i}{'r' * 1000}"} for i in range(30)]

    alert = alert_for(seed, record)
    document = alert.document

    omitted = document["detector"]["omitted_fields"]
    assert len(encode_json(alert)) < EVENT_FIELDS_LIMIT + 16 * 1024
    assert omitted[0] in {
        "aws.cloudtrail.flattened.request_parameters",
        "aws.cloudtrail.flattened.additional_eventdata",
        "aws.cloudtrail.flattened.service_event_details",
    }
    # The rule read user.target.name, and the context fields stay whatever the size.
    assert document["user"]["target"]["name"] == "bob"
    assert document["aws"]["cloudtrail"]["user_identity"]["arn"].endswith(":user/alice")


def test_the_rules_output_row_is_carried_beside_the_events_fields(seed: LoadedRule) -> None:
    row = {"Esql.access_key_id": "AKIAEXAMPLENEWKEY123", "Esql.empty": None}

    document = build_alert(
        rule=seed.definition.rule, ruleset=seed.source,
        record=json_to_avro(alice_creates_key_for_bob()),
        fields_read=seed.query.fields_read, detected_at=DETECTED_AT, original=None, row=row,
    ).document

    assert document["Esql"] == {"access_key_id": "AKIAEXAMPLENEWKEY123"}


def test_the_alert_id_does_not_depend_on_when_the_event_was_read(seed: LoadedRule) -> None:
    record = json_to_avro(alice_creates_key_for_bob())
    del record["eventID"]

    def alert_read_at(millis: int) -> Alert:
        return build_alert(
            rule=seed.definition.rule, ruleset=seed.source,
            record={**record, INGESTED_MS: millis}, fields_read=(), detected_at=DETECTED_AT,
            original=None,
        )

    first, replayed = alert_read_at(1_000), alert_read_at(9_000_000)
    assert first.alert_id == replayed.alert_id
    assert first.document["event"]["ingested"] != replayed.document["event"]["ingested"]


def test_alert_document_carries_the_ecs_rule_fields(seed: LoadedRule) -> None:
    rule = seed.definition.rule

    document = alert_for(seed, alice_creates_key_for_bob()).document

    assert document["rule"] == {
        "id": SEED_ID,
        "uuid": SEED_ID,
        "name": "AWS IAM User Created Access Keys For Another User",
        "version": "2",
        "description": rule.description,
        "author": ["Elastic"],
        "license": "Elastic License v2",
        "reference": "https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreateAccessKey.html",
        "ruleset": "builtin:aws_iam_user_created_access_keys_for_another_user.toml",
    }


def test_alert_document_carries_the_mitre_mapping_as_ecs_threat_fields(seed: LoadedRule) -> None:
    threat = alert_for(seed, alice_creates_key_for_bob()).document["threat"]

    assert threat["framework"] == "MITRE ATT&CK"
    assert threat["tactic"]["id"] == ["TA0003", "TA0004"]
    assert threat["tactic"]["name"] == ["Persistence", "Privilege Escalation"]
    assert threat["technique"]["id"] == ["T1098"]
    assert threat["technique"]["name"] == ["Account Manipulation"]
    assert threat["technique"]["subtechnique"]["id"] == ["T1098.001"]
    assert threat["technique"]["subtechnique"]["name"] == ["Additional Cloud Credentials"]
    assert threat["technique"]["subtechnique"]["reference"] == [
        "https://attack.mitre.org/techniques/T1098/001/"
    ]


def test_alert_document_carries_elastic_security_kibana_alert_fields(seed: LoadedRule) -> None:
    alert = alert_for(seed, alice_creates_key_for_bob())

    assert alert.document["kibana"]["alert"] == {
        "uuid": alert.alert_id,
        "rule": {
            "rule_id": SEED_ID,
            "name": "AWS IAM User Created Access Keys For Another User",
            "version": 2,
        },
        "severity": "medium",
        "risk_score": 47,
        "reason": "IAM user alice created an access key for IAM user bob in account 123456789012",
        "original_time": "2026-11-29T10:00:00.000Z",
        "workflow_status": "open",
    }


def test_event_original_is_included_only_when_given(seed: LoadedRule) -> None:
    record = alice_creates_key_for_bob()
    original = json.dumps(record, separators=(",", ":"))

    kept = alert_for(seed, record, original=original).document
    left_out = alert_for(seed, record).document

    assert kept["event"]["original"] == original
    assert json.loads(kept["event"]["original"]) == record
    assert "original" not in left_out["event"]


def test_alert_key_is_account_and_target_and_headers_name_rule_and_severity(
    seed: LoadedRule,
) -> None:
    alert = alert_for(seed, alice_creates_key_for_bob())

    assert alert.key == b"123456789012/bob"
    assert alert.headers == [("rule.id", SEED_ID.encode()), ("rule.severity", b"medium")]


def test_absent_fields_are_left_out_rather_than_null(seed: LoadedRule) -> None:
    record = alice_creates_key_for_bob()
    del record["userAgent"]
    record["sourceIPAddress"] = "cloudformation.amazonaws.com"

    alert = alert_for(seed, record)

    assert "user_agent" not in alert.document
    assert alert.document["source"] == {"address": "cloudformation.amazonaws.com"}
    assert b"null" not in encode_json(alert)


@pytest.mark.parametrize(
    "name",
    ["Zoë", "用户", "\U0001f511key", "lone\ud800surrogate", "ctl\x00\x1f\x7fchars",
     "line\u2028sep", '"quoted\\"'],
    ids=["latin", "cjk", "astral", "lone-surrogate", "control", "line-separator", "quotes"],
)
def test_encoded_alert_is_ascii_json_that_round_trips_any_user_name(
    seed: LoadedRule, name: str
) -> None:
    # The target name comes from requestParameters, free-form JSON text that keeps even a lone
    # surrogate from a \u-escaped JSON string.
    record = create_access_key(event_id="e-1", caller="alice", target=name, account=ACCOUNT)
    alert = alert_for(seed, record, original=json.dumps(record))

    encoded = encode_json(alert)

    assert encoded.isascii()
    assert b"\n" not in encoded
    assert json.loads(encoded) == alert.document
    assert json.loads(encoded)["user"]["name"] == "alice"
    assert json.loads(encoded)["user"]["target"] == {"name": name}
    assert alert.key.decode("utf-8").startswith(f"{ACCOUNT}/")


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(alphabet=st.characters(codec=None, exclude_categories=()), min_size=1).filter(
        lambda name: name not in ("-", "none")  # Elastic's pipeline drops these as empty
    )
)
def test_encoded_alert_round_trips_arbitrary_code_points(name: str) -> None:
    assume(name not in ("-", "none"))  # Elastic drops these values as empty
    seed = next(rule for rule in load_rules() if rule.rule_id == SEED_ID)
    record = create_access_key(event_id="e-1", caller="alice", target=name, account=ACCOUNT)

    encoded = encode_json(alert_for(seed, record))

    assert encoded.isascii()
    assert json.loads(encoded)["user"]["target"]["name"] == name


def summary(rule: RuleDefinition, worker: str = "host-0", minute: int = 0) -> Alert:
    start = datetime(2026, 11, 29, 10, minute, tzinfo=UTC)
    return build_throttle_summary(
        rule=rule,
        ruleset="builtin:seed.toml",
        suppressed=7,
        window_start=start,
        window_end=start + timedelta(minutes=5),
        worker=worker,
    )


def test_throttle_summary_reports_the_suppressed_matches_and_their_window(
    seed: LoadedRule,
) -> None:
    alert = summary(seed.definition.rule)
    document = alert.document

    assert document["@timestamp"] == "2026-11-29T10:05:00.000Z"
    assert document["event"] == {"kind": "alert", "action": "throttled-matches"}
    assert document["detector"]["throttle"] == {
        "suppressed": 7,
        "window_start": "2026-11-29T10:00:00.000Z",
        "window_end": "2026-11-29T10:05:00.000Z",
    }
    assert document["message"] == document["kibana"]["alert"]["reason"]
    assert document["message"].startswith(
        "7 further matches of 'AWS IAM User Created Access Keys For Another User' between "
        "2026-11-29T10:00:00.000Z and 2026-11-29T10:05:00.000Z were not sent as alerts "
        "(max_signals 100 per 5 minutes)"
    )
    assert document["kibana"]["alert"]["rule"]["rule_id"] == SEED_ID
    assert document["kibana"]["alert"]["uuid"] == alert.alert_id
    assert document["rule"]["id"] == SEED_ID
    assert document["threat"]["tactic"]["id"] == ["TA0003", "TA0004"]
    assert alert.key == SEED_ID.encode()
    assert alert.headers == [("rule.id", SEED_ID.encode()), ("rule.severity", b"medium")]
    assert json.loads(encode_json(alert)) == document


def test_throttle_summary_id_is_stable_per_worker_and_window(seed: LoadedRule) -> None:
    rule = seed.definition.rule

    assert summary(rule).alert_id == summary(rule).alert_id
    assert summary(rule).alert_id != summary(rule, worker="host-1").alert_id
    assert summary(rule).alert_id != summary(rule, minute=5).alert_id


def test_numbers_json_cannot_hold_become_text_and_the_alert_still_encodes(
    seed: LoadedRule,
) -> None:
    record = json_to_avro(alice_creates_key_for_bob())
    record["requestParameters"] = '{"userName":"bob","n":1e400,"m":-1e400,"x":NaN}'

    alert = build_alert(rule=seed.definition.rule, ruleset=seed.source, record=record,
                        fields_read=(), detected_at=DETECTED_AT, original=None)

    flattened = json.loads(encode_json(alert))["aws"]["cloudtrail"]["flattened"]
    assert flattened["request_parameters"] == {
        "userName": "bob", "n": "Infinity", "m": "-Infinity", "x": "NaN"
    }
