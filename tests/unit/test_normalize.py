"""ECS normalization pinned case by case, in our own words, without Elastic's vectors."""

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdb_writer import MmdbU32, MMDBWriter
from netaddr import IPSet

from consumer.cli import main
from consumer.cloudtrail.normalize import (
    ECS_FIELDS,
    INGESTED_MS,
    configure_enrichment,
    fields_table,
    normalize,
)
from consumer.cloudtrail.types import CloudTrailRecord
from tests.support.events import create_access_key

RULE_FIELDS = ("event.provider", "event.action", "event.outcome", "user.name", "user.target.name")
ACCOUNT = "111122223333"


def iam_user(name: str = "Alice") -> dict[str, Any]:
    return {
        "type": "IAMUser",
        "principalId": "AIDAEXAMPLEALICE",
        "arn": f"arn:aws:iam::{ACCOUNT}:user/{name}",
        "accountId": ACCOUNT,
        "accessKeyId": "AKIAEXAMPLEALICE",
        "userName": name,
    }


def role_session(role_arn: str, role_name: str, session: str) -> dict[str, Any]:
    """An AssumedRole identity, shaped as CloudTrail writes it for a role session."""
    return {
        "type": "AssumedRole",
        "principalId": f"AROAEXAMPLEROLE:{session}",
        "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{session}",
        "accountId": ACCOUNT,
        "accessKeyId": "ASIAEXAMPLESESSION",
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "principalId": "AROAEXAMPLEROLE",
                "arn": role_arn,
                "accountId": ACCOUNT,
                "userName": role_name,
            },
            "attributes": {"creationDate": "2024-05-01T12:00:00Z", "mfaAuthenticated": "false"},
        },
    }


def make_record(**overrides: Any) -> CloudTrailRecord:
    """An Avro-shape record of Alice creating an access key for Bob; `overrides` replace keys."""
    record: CloudTrailRecord = {
        "eventVersion": "1.08",
        "userIdentity": iam_user(),
        "eventTime": "2024-05-01T12:30:45Z",
        "eventSource": "iam.amazonaws.com",
        "eventName": "CreateAccessKey",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.7",
        "userAgent": "aws-cli/2.15.0 Python/3.11.6",
        "errorCode": None,
        "errorMessage": None,
        "requestParameters": json.dumps({"userName": "Bob"}),
        "responseElements": json.dumps(
            {"accessKey": {"accessKeyId": "AKIAEXAMPLEBOB", "status": "Active", "userName": "Bob"}}
        ),
        "additionalEventData": None,
        "serviceEventDetails": None,
        "requestID": "c0ffee00-0000-4000-8000-000000000001",
        "eventID": "c0ffee00-0000-4000-8000-000000000002",
        "eventType": "AwsApiCall",
        "recipientAccountId": ACCOUNT,
    }
    record.update(overrides)
    return record


def test_iam_user_is_the_actor_and_request_user_the_target() -> None:
    assert normalize(make_record(), RULE_FIELDS) == {
        "event.provider": "iam.amazonaws.com",
        "event.action": "CreateAccessKey",
        "event.outcome": "success",
        "user.name": "Alice",
        "user.target.name": "Bob",
    }


def test_iam_user_identity_fields_are_copied() -> None:
    document = normalize(make_record())

    assert document["user.id"] == "AIDAEXAMPLEALICE"
    assert document["aws.cloudtrail.user_identity.type"] == "IAMUser"
    assert document["aws.cloudtrail.user_identity.arn"] == f"arn:aws:iam::{ACCOUNT}:user/Alice"
    assert document["aws.cloudtrail.user_identity.access_key_id"] == "AKIAEXAMPLEALICE"
    assert document["cloud.account.id"] == ACCOUNT
    assert document["cloud.provider"] == "aws"
    assert document["cloud.region"] == "us-east-1"
    assert document["event.id"] == "c0ffee00-0000-4000-8000-000000000002"
    assert document["event.kind"] == "event"
    assert document["user_agent.original"] == "aws-cli/2.15.0 Python/3.11.6"
    assert "service.name" not in document


def test_assumed_role_is_named_by_role_not_session() -> None:
    identity = role_session(f"arn:aws:iam::{ACCOUNT}:role/ci-deployer", "ci-deployer", "build-42")

    document = normalize(make_record(userIdentity=identity))

    assert document["user.name"] == "ci-deployer"
    assert document["user.id"] == "AROAEXAMPLEROLE:build-42"
    assert "service.name" not in document


def test_assumed_role_without_session_issuer_has_no_user_name() -> None:
    identity = role_session(f"arn:aws:iam::{ACCOUNT}:role/ci-deployer", "ci-deployer", "build-42")
    del identity["sessionContext"]

    assert "user.name" not in normalize(make_record(userIdentity=identity))


def test_customer_role_under_a_service_role_path_is_still_a_user() -> None:
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/service-role/codebuild-project-role"
    identity = role_session(role_arn, "codebuild-project-role", "AWSCodeBuild-1234")

    document = normalize(make_record(userIdentity=identity))

    assert document["user.name"] == "codebuild-project-role"
    assert "service.name" not in document


def test_federated_user_is_named_by_the_issuing_iam_user() -> None:
    identity = {
        "type": "FederatedUser",
        "principalId": f"{ACCOUNT}:partner-session",
        "arn": f"arn:aws:sts::{ACCOUNT}:federated-user/partner-session",
        "accountId": ACCOUNT,
        "accessKeyId": "ASIAEXAMPLEFEDERATED",
        "sessionContext": {
            "sessionIssuer": {
                "type": "IAMUser",
                "principalId": "AIDAEXAMPLEALICE",
                "arn": f"arn:aws:iam::{ACCOUNT}:user/Alice",
                "accountId": ACCOUNT,
                "userName": "Alice",
            }
        },
    }

    assert normalize(make_record(userIdentity=identity))["user.name"] == "Alice"


def test_root_with_an_account_alias_is_named_by_the_alias() -> None:
    identity = {
        "type": "Root",
        "principalId": ACCOUNT,
        "arn": f"arn:aws:iam::{ACCOUNT}:root",
        "accountId": ACCOUNT,
        "userName": "example-corp",
    }

    assert normalize(make_record(userIdentity=identity))["user.name"] == "example-corp"


def test_root_without_an_account_alias_has_no_user_name() -> None:
    identity = {
        "type": "Root",
        "principalId": ACCOUNT,
        "arn": f"arn:aws:iam::{ACCOUNT}:root",
        "accountId": ACCOUNT,
    }

    document = normalize(make_record(userIdentity=identity))

    assert "user.name" not in document
    assert document["user.target.name"] == "Bob"
    assert document["user.id"] == ACCOUNT


def test_identity_center_user_has_no_user_name() -> None:
    identity = {
        "type": "IdentityCenterUser",
        "accountId": ACCOUNT,
        "onBehalfOf": {
            "userId": "906722e4-2011-70a7-bd77-000000000000",
            "identityStoreArn": "arn:aws:identitystore::111122223333:identitystore/d-0000000000",
        },
        "credentialId": "EXAMPLEcredentialId",
    }

    document = normalize(make_record(userIdentity=identity))

    assert "user.name" not in document
    assert document["aws.cloudtrail.user_identity.type"] == "IdentityCenterUser"


def test_aws_service_actor_gets_service_name_and_no_user() -> None:
    identity = {"type": "AWSService", "invokedBy": "cloudformation.amazonaws.com"}

    document = normalize(make_record(userIdentity=identity, recipientAccountId="444455556666"))

    assert document["service.name"] == "cloudformation.amazonaws.com"
    assert "user.name" not in document
    assert "user.id" not in document
    assert document["cloud.account.id"] == "444455556666"


@pytest.mark.parametrize(
    ("invoked_by", "expected_service"),
    [
        ("config.amazonaws.com", "config.amazonaws.com"),
        (None, "elasticmapreduce.amazonaws.com"),
    ],
    ids=["from-invoked-by", "from-role-path"],
)
def test_service_linked_role_actor_gets_service_name_and_no_user(
    invoked_by: str | None, expected_service: str
) -> None:
    role_arn = (
        f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/elasticmapreduce.amazonaws.com/"
        "AWSServiceRoleForEMRCleanup"
    )
    identity = role_session(role_arn, "AWSServiceRoleForEMRCleanup", "EMRCleanupSession")
    identity["invokedBy"] = invoked_by

    document = normalize(make_record(userIdentity=identity))

    assert document["service.name"] == expected_service
    assert "user.name" not in document
    assert "user.id" not in document


def test_error_code_alone_means_failure() -> None:
    record = make_record(errorCode="AccessDenied")

    assert normalize(record, ["event.outcome"]) == {"event.outcome": "failure"}
    assert normalize(record)["aws.cloudtrail.error_code"] == "AccessDenied"


def test_error_message_alone_means_failure() -> None:
    record = make_record(
        errorMessage="User: Alice is not authorized to perform iam:CreateAccessKey"
    )

    assert normalize(record, ["event.outcome"]) == {"event.outcome": "failure"}
    assert "aws.cloudtrail.error_code" not in normalize(record)


@pytest.mark.parametrize("empty", [None, "", "-", "none"])
def test_empty_error_values_do_not_mean_failure(empty: str | None) -> None:
    record = make_record(errorCode=empty, errorMessage=empty)

    document = normalize(record)

    assert document["event.outcome"] == "success"
    assert "aws.cloudtrail.error_code" not in document
    assert "aws.cloudtrail.error_message" not in document


@pytest.mark.parametrize(
    ("console_login", "error_message", "expected_outcome"),
    [
        ("Failure", None, "failure"),
        ("Success", None, "success"),
        ("Failure", "Failed authentication", "failure"),
        ("Pending", "Failed authentication", "failure"),
    ],
)
def test_console_login_outcome_follows_its_own_verdict(
    console_login: str, error_message: str | None, expected_outcome: str
) -> None:
    record = make_record(
        eventSource="signin.amazonaws.com",
        eventName="ConsoleLogin",
        errorMessage=error_message,
        responseElements=json.dumps({"ConsoleLogin": console_login}),
    )

    assert normalize(record, ["event.outcome"]) == {"event.outcome": expected_outcome}


@pytest.mark.parametrize("empty", [None, "", "-", "none"])
def test_empty_identity_and_request_values_are_absent(empty: str | None) -> None:
    identity = {**iam_user(), "userName": empty, "principalId": empty, "accessKeyId": empty}
    record = make_record(
        userIdentity=identity,
        requestParameters=json.dumps({"userName": empty}),
        eventName=empty,
        sourceIPAddress=empty,
    )

    document = normalize(record)

    for field in ("user.name", "user.id", "user.target.name", "event.action", "source.address"):
        assert field not in document
    assert "aws.cloudtrail.user_identity.access_key_id" not in document


@pytest.mark.parametrize(
    "request_parameters",
    [json.dumps({"userName": "Bob", "tags": []}), {"userName": "Bob", "tags": []}],
    ids=["json-text", "dict"],
)
def test_request_parameters_as_text_or_dict_give_the_target(
    request_parameters: str | dict[str, Any],
) -> None:
    record = make_record(requestParameters=request_parameters)

    assert normalize(record, ["user.target.name"]) == {"user.target.name": "Bob"}


@pytest.mark.parametrize(
    "request_parameters",
    [None, "null", "{}", "", "{not json", '["Bob"]', json.dumps({"userName": {"first": "B"}})],
    ids=["none", "json-null", "empty-object", "empty-text", "malformed", "array", "non-text-name"],
)
def test_request_parameters_without_a_user_name_give_no_target(
    request_parameters: str | None,
) -> None:
    document = normalize(make_record(requestParameters=request_parameters))

    assert "user.target.name" not in document
    assert document["user.name"] == "Alice"


def test_missing_request_parameters_key_gives_no_target() -> None:
    record = make_record()
    del record["requestParameters"]

    assert "user.target.name" not in normalize(record)


def test_letter_case_is_preserved_everywhere() -> None:
    record = make_record(
        eventSource="IAM.amazonaws.com",
        eventName="createAccessKey",
        userIdentity=iam_user("ALICE"),
        requestParameters=json.dumps({"userName": "alice"}),
    )

    assert normalize(record, RULE_FIELDS) == {
        "event.provider": "IAM.amazonaws.com",
        "event.action": "createAccessKey",
        "event.outcome": "success",
        "user.name": "ALICE",
        "user.target.name": "alice",
    }


@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "utf-8"])
def test_non_ascii_names_survive_json_text(ensure_ascii: bool) -> None:
    record = make_record(
        userIdentity=iam_user("Jürgen"),
        requestParameters=json.dumps({"userName": "用户-Ølse"}, ensure_ascii=ensure_ascii),
    )

    assert normalize(record, ["user.name", "user.target.name"]) == {
        "user.name": "Jürgen",
        "user.target.name": "用户-Ølse",
    }


@pytest.mark.parametrize(
    ("source", "is_ip"),
    [
        ("198.51.100.7", True),
        ("010.000.000.007", False),
        ("010.001.002.003", False),
        ("10.1.2.3", True),
        ("2001:db8::8a2e:370:7334", True),
        ("iam.amazonaws.com", False),
        ("AWS Internal", False),
        ("256.1.1.1", False),
        ("198.51.100.7 ", False),
    ],
)
def test_source_ip_only_for_ip_addresses(source: str, is_ip: bool) -> None:
    document = normalize(make_record(sourceIPAddress=source), ["source.address", "source.ip"])

    expected = (
        {"source.address": source, "source.ip": source} if is_ip else {"source.address": source}
    )
    assert document == expected


@pytest.mark.parametrize(
    ("event_time", "expected"),
    [
        ("2024-05-01T12:30:45Z", "2024-05-01T12:30:45.000Z"),
        ("2024-05-01T12:30:45.123456Z", "2024-05-01T12:30:45.123Z"),
        ("2024-05-01T14:30:45+02:00", "2024-05-01T12:30:45.000Z"),
        ("2024-05-01 12:30:45", "2024-05-01T12:30:45.000Z"),
        ("yesterday", None),
    ],
)
def test_timestamp_is_utc_with_milliseconds(event_time: str, expected: str | None) -> None:
    document = normalize(make_record(eventTime=event_time), ["@timestamp"])

    assert document.get("@timestamp") == expected


@pytest.mark.parametrize(
    ("action", "category", "event_type"),
    [
        ("CreateAccessKey", ["iam"], ["user", "change"]),
        ("CreateUser", ["iam"], ["user", "creation"]),
        ("AddUserToGroup", ["iam"], ["group", "change"]),
        ("AssumeRole", ["authentication"], ["info"]),
        ("DescribeInstances", None, ["info"]),
    ],
)
def test_event_categorization_by_action(
    action: str, category: list[str] | None, event_type: list[str]
) -> None:
    document = normalize(make_record(eventName=action), ["event.category", "event.type"],
                         stored=True)

    assert document.get("event.category") == category
    assert document["event.type"] == event_type


def test_a_query_reads_multi_valued_keywords_sorted_and_unique_as_doc_values_hold_them() -> None:
    record = make_record(
        userIdentity=iam_user("zed"),
        requestParameters=json.dumps({"userName": "Bob", "newUserName": "alice"}),
    )
    names = ["event.type", "related.user"]

    assert normalize(record, names, stored=True) == {
        "event.type": ["user", "change"], "related.user": ["zed", "Bob", "alice"]
    }
    assert normalize(record, names) == {
        "event.type": ["change", "user"], "related.user": ["Bob", "alice", "zed"]
    }


def test_rename_names_old_and_new_user_once_each_in_related_user() -> None:
    record = make_record(
        eventName="UpdateUser",
        requestParameters=json.dumps({"userName": "Alice", "newUserName": "Alice2"}),
    )

    document = normalize(record)

    assert document["user.changes.name"] == "Alice2"
    assert document["related.user"] == ["Alice", "Alice2"]


def test_created_user_id_comes_from_the_response() -> None:
    record = make_record(
        eventName="CreateUser",
        responseElements=json.dumps({"user": {"userId": "AIDAEXAMPLEBOB", "userName": "Bob"}}),
    )

    assert normalize(record, ["user.target.id"]) == {"user.target.id": "AIDAEXAMPLEBOB"}


class KeyRecordingRecord(dict[str, Any]):
    """A record that remembers which top-level keys were read."""

    def __init__(self, record: CloudTrailRecord) -> None:
        super().__init__(record)
        self.read_keys: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.read_keys.append(key)
        return super().get(key, default)


def test_requesting_one_field_reads_only_its_source() -> None:
    record = KeyRecordingRecord(make_record())

    document = normalize(record, ["event.action"])

    assert document == {"event.action": "CreateAccessKey"}
    assert record.read_keys == ["eventName"]


def test_all_fields_are_derived_when_none_are_named() -> None:
    document = normalize(make_record())

    # Absent: what this IAM-user CreateAccessKey record has no source for (no error, session,
    # resources, TLS details, console login, GeoIP database, OS in its agent).
    absent = set(ECS_FIELDS) - set(document)
    assert absent == {
        "service.name", "user.changes.name", "user.target.id", "user.email", "group.id",
        "group.name", "aws.cloudtrail.error_code", "aws.cloudtrail.error_message",
        *(name for name in ECS_FIELDS if name.startswith((
            "source.geo.", "source.as.", "tls.", "user_agent.os.",
            "aws.cloudtrail.user_identity.session_context.", "aws.cloudtrail.resources.",
            "aws.cloudtrail.console_login.",
        ))),
        "aws.cloudtrail.user_identity.invoked_by", "aws.cloudtrail.additional_eventdata",
        "aws.cloudtrail.service_event_details", "aws.cloudtrail.flattened.additional_eventdata",
        "aws.cloudtrail.flattened.service_event_details", "aws.cloudtrail.api_version",
        "aws.cloudtrail.event_category", "aws.cloudtrail.management_event",
        "aws.cloudtrail.read_only", "aws.cloudtrail.session_credential_from_console",
        "aws.cloudtrail.vpc_endpoint_id",
    }


def test_unknown_field_name_is_rejected() -> None:
    with pytest.raises(KeyError, match=r"user\.nmae"):
        normalize(make_record(), ["user.nmae"])


def test_fields_are_keyed_by_their_own_name() -> None:
    assert all(name == field.name for name, field in ECS_FIELDS.items())


RAW_VALUES = st.one_of(
    st.none(),
    st.sampled_from(["", "-", "none", "None", "CreateAccessKey", "iam.amazonaws.com"]),
    st.text(max_size=20),
    st.integers(),
)


@settings(max_examples=200, deadline=None)
@given(
    values=st.fixed_dictionaries(
        {field.raw_source: RAW_VALUES for field in ECS_FIELDS.values() if field.raw_source}
    )
)
def test_raw_source_fields_equal_the_raw_value_or_are_absent(values: dict[str, Any]) -> None:
    record = make_record(**values)

    document = normalize(record)

    for name, field in ECS_FIELDS.items():
        if field.raw_source is not None and name in document:
            assert document[name] == record[field.raw_source]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "userName", "arn", "sessionContext", "sessionIssuer", "x"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(identity=JSON_VALUES, request=JSON_VALUES, response=JSON_VALUES, error=JSON_VALUES)
def test_odd_shapes_never_raise(identity: Any, request: Any, response: Any, error: Any) -> None:
    record = make_record(
        userIdentity=identity,
        requestParameters=json.dumps(request),
        responseElements=response,
        errorCode=error,
        eventName="ConsoleLogin",
    )

    document = normalize(record)

    assert document["event.kind"] == "event"
    assert document["event.outcome"] in {"success", "failure"}


# --- the free-form objects as Elastic keeps them -------------------------------------------------
# Expected key orders were printed by a java.util.HashMap filled in the same order (JDK 17); the
# number forms are Double.toString's.


@pytest.mark.parametrize(
    ("keys", "java_order"),
    [
        (["userName", "policyArn"], ["policyArn", "userName"]),
        (
            ["bucketName", "Host", "key", "x-amz-server-side-encryption",
             "x-amz-server-side-encryption-aws-kms-key-id", "x-amz-copy-source"],
            ["bucketName", "Host", "x-amz-server-side-encryption-aws-kms-key-id",
             "x-amz-server-side-encryption", "x-amz-copy-source", "key"],
        ),
        (  # 14 keys: past 12 the HashMap has doubled to 32 buckets
            ["instanceId", "userData", "dryRun", "groupSet", "subnetId", "imageId", "minCount",
             "maxCount", "keyName", "instanceType", "blockDeviceMapping", "monitoring",
             "disableApiTermination", "tagSpecificationSet"],
            ["subnetId", "userData", "dryRun", "imageId", "blockDeviceMapping",
             "tagSpecificationSet", "instanceType", "keyName", "monitoring", "groupSet",
             "maxCount", "instanceId", "disableApiTermination", "minCount"],
        ),
    ],
    ids=["two-keys", "s3-copy", "fourteen-keys"],
)
def test_request_parameters_text_lists_keys_in_java_hash_map_order(
    keys: list[str], java_order: list[str]
) -> None:
    record = make_record(requestParameters=json.dumps(dict.fromkeys(keys, "v")))

    text = normalize(record, ["aws.cloudtrail.request_parameters"])

    assert text == {
        "aws.cloudtrail.request_parameters": "{" + ", ".join(f"{k}=v" for k in java_order) + "}"
    }


def test_map_to_string_form_of_nested_objects_lists_numbers_and_booleans() -> None:
    record = make_record(
        requestParameters=json.dumps({"items": [{"groupId": "sg-1"}, 2, 1.0, 1e7, True]})
    )

    assert normalize(record, ["aws.cloudtrail.request_parameters"]) == {
        "aws.cloudtrail.request_parameters": "{items=[{groupId=sg-1}, 2, 1.0, 1.0E7, true]}"
    }


def test_the_seed_rules_grok_pattern_finds_the_new_access_key_in_the_response_text() -> None:
    text = normalize(make_record(), ["aws.cloudtrail.response_elements"])[
        "aws.cloudtrail.response_elements"
    ]

    assert text == "{accessKey={accessKeyId=AKIAEXAMPLEBOB, userName=Bob, status=Active}}"


@pytest.mark.parametrize("empty", [None, "", "-", "none", {}, []])
def test_empty_values_are_dropped_inside_the_payload_and_an_empty_payload_is_absent(
    empty: Any,
) -> None:
    record = make_record(
        requestParameters=json.dumps({"userName": "Bob", "x": empty, "y": {"z": empty}}),
        responseElements=json.dumps({"only": empty}),
    )

    document = normalize(
        record, ["aws.cloudtrail.request_parameters", "aws.cloudtrail.response_elements"]
    )

    assert document == {"aws.cloudtrail.request_parameters": "{userName=Bob}"}


def test_payload_text_longer_than_ignore_above_reads_null_but_is_stored() -> None:
    long_text = {"policyDocument": "x" * 8200}
    record = make_record(requestParameters=json.dumps(long_text))
    name = "aws.cloudtrail.request_parameters"

    assert normalize(record, [name]) == {}
    assert normalize(record, [name], stored=True) == {name: "{policyDocument=" + "x" * 8200 + "}"}
    assert ECS_FIELDS[name].ignore_above == 8191


def test_flattened_sub_fields_resolve_by_name_with_leaves_as_text() -> None:
    record = make_record(
        requestParameters=json.dumps(
            {"userName": "Bob", "fromPort": 22, "groupSet": {"items": [{"groupId": "a"},
                                                                       {"groupId": "b"}]}}
        )
    )
    prefix = "aws.cloudtrail.flattened.request_parameters."

    document = normalize(record, [prefix + "userName", prefix + "fromPort",
                                  prefix + "groupSet.items.groupId", prefix + "missing"])

    assert document == {
        prefix + "userName": "Bob",
        prefix + "fromPort": "22",
        prefix + "groupSet.items.groupId": ["a", "b"],
    }
    assert prefix + "userName" in ECS_FIELDS
    assert prefix + "userName" not in list(ECS_FIELDS)
    assert ECS_FIELDS[prefix + "userName"].type == "keyword"


def test_flattened_copy_is_kept_only_below_elastics_limit() -> None:
    name = "aws.cloudtrail.flattened.request_parameters"
    small = make_record(requestParameters=json.dumps({"a": "x"}))
    large = make_record(requestParameters=json.dumps({"a": "x" * 32766}))

    assert normalize(small, [name]) == {name: {"a": "x"}}
    assert normalize(large, [name]) == {}


def test_fixed_constants_of_the_aws_cloudtrail_data_stream() -> None:
    names = ["data_stream.type", "data_stream.dataset", "data_stream.namespace",
             "event.dataset", "event.module"]

    assert normalize(make_record(), names) == {
        "data_stream.type": "logs",
        "data_stream.dataset": "aws.cloudtrail",
        "data_stream.namespace": "default",
        "event.dataset": "aws.cloudtrail",
        "event.module": "aws",
    }


def test_namespace_is_a_setting() -> None:
    try:
        configure_enrichment(namespace="prod")
        assert normalize(make_record(), ["data_stream.namespace"]) == {
            "data_stream.namespace": "prod"
        }
    finally:
        configure_enrichment()


def test_event_ingested_is_the_arrival_time_else_the_event_time_in_whole_seconds() -> None:
    arrived = make_record(**{INGESTED_MS: 1_714_567_890_987})
    scanned = make_record(eventTime="2024-05-01T12:30:45.678Z")

    assert normalize(arrived, ["event.ingested"]) == {"event.ingested": "2024-05-01T12:51:30Z"}
    assert normalize(scanned, ["event.ingested"]) == {"event.ingested": "2024-05-01T12:30:45Z"}


def test_session_issuer_invoked_by_and_console_credential_fields() -> None:
    identity = role_session(f"arn:aws:iam::{ACCOUNT}:role/ops", "ops", "alice")
    identity["invokedBy"] = "cloudformation.amazonaws.com"
    record = make_record(userIdentity=identity, sessionCredentialFromConsole="true")
    base = "aws.cloudtrail.user_identity."

    document = normalize(record, [
        base + "invoked_by",
        base + "session_context.session_issuer.arn",
        base + "session_context.session_issuer.type",
        base + "session_context.creation_date",
        base + "session_context.mfa_authenticated",
        "aws.cloudtrail.session_credential_from_console",
    ])

    assert document == {
        base + "invoked_by": "cloudformation.amazonaws.com",
        base + "session_context.session_issuer.arn": f"arn:aws:iam::{ACCOUNT}:role/ops",
        base + "session_context.session_issuer.type": "Role",
        base + "session_context.creation_date": "2024-05-01T12:00:00.000Z",
        base + "session_context.mfa_authenticated": "false",
        "aws.cloudtrail.session_credential_from_console": "true",
    }


def test_resources_are_deduplicated_and_a_query_reads_them_sorted() -> None:
    bucket = {"ARN": "arn:aws:s3:::b", "accountId": ACCOUNT, "type": "AWS::S3::Bucket"}
    object_ = {"ARN": "arn:aws:s3:::b/k", "type": "AWS::S3::Object"}
    record = make_record(resources=[object_, bucket, dict(bucket)])

    read = normalize(record, ["aws.cloudtrail.resources.arn", "aws.cloudtrail.resources.type"])

    assert read == {
        "aws.cloudtrail.resources.arn": ["arn:aws:s3:::b", "arn:aws:s3:::b/k"],
        "aws.cloudtrail.resources.type": ["AWS::S3::Bucket", "AWS::S3::Object"],
    }
    stored = normalize(record, ["aws.cloudtrail.resources.arn"], stored=True)
    assert sorted(stored["aws.cloudtrail.resources.arn"]) == [  # type: ignore[arg-type]
        "arn:aws:s3:::b", "arn:aws:s3:::b/k"
    ]


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (
            "aws-cli/2.18.17 md/awscrt#0.22.0 ua/2.0 os/linux#6.8.0-1016-aws md/arch#x86_64",
            {"user_agent.name": "aws-cli", "user_agent.version": "2.18.17",
             "user_agent.os.name": "Linux", "user_agent.device.name": "Other"},
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like"
            " Gecko) Chrome/120.0.0.0 Safari/537.36",
            {"user_agent.name": "Chrome", "user_agent.version": "120.0.0.0",
             "user_agent.os.name": "Mac OS X", "user_agent.os.version": "10.15.7",
             "user_agent.os.full": "Mac OS X 10.15.7", "user_agent.device.name": "Mac"},
        ),
        ("ec2.amazonaws.com", {"user_agent.name": "Other", "user_agent.device.name": "Other"}),
    ],
    ids=["aws-cli", "chrome", "aws-service"],
)
def test_user_agent_is_parsed_with_the_ua_parser_regexes(
    agent: str, expected: dict[str, str]
) -> None:
    names = ["user_agent.name", "user_agent.version", "user_agent.os.name",
             "user_agent.os.version", "user_agent.os.full", "user_agent.device.name"]

    assert normalize(make_record(userAgent=agent), names) == expected


GEO_FIELDS = [name for name in ECS_FIELDS if name.startswith(("source.geo.", "source.as."))]


def write_geoip_databases(directory: Path) -> tuple[Path, Path]:
    """A City and an ASN database in MaxMind's format covering 198.51.100.0/24 only."""
    city, asn = directory / "city.mmdb", directory / "asn.mmdb"
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    writer.insert_network(IPSet(["198.51.100.0/24"]), {
        "city": {"names": {"en": "Milton"}},
        "continent": {"names": {"en": "North America"}},
        "country": {"iso_code": "US", "names": {"en": "United States"}},
        "subdivisions": [{"iso_code": "WA", "names": {"en": "Washington"}}],
        "location": {"latitude": 47.2513, "longitude": -122.3149},
    })
    writer.to_db_file(str(city))
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    writer.insert_network(IPSet(["198.51.100.0/24"]), {
        "autonomous_system_number": MmdbU32(64500),
        "autonomous_system_organization": "EXAMPLE-NET",
    })
    writer.to_db_file(str(asn))
    return city, asn


def test_geoip_fields_come_from_the_configured_databases(tmp_path: Path) -> None:
    city, asn = write_geoip_databases(tmp_path)
    try:
        configure_enrichment(city_database=city, asn_database=asn)
        found = normalize(make_record(sourceIPAddress="198.51.100.7"), GEO_FIELDS)
        elsewhere = normalize(make_record(sourceIPAddress="203.0.113.9"), GEO_FIELDS)
        by_name = normalize(make_record(sourceIPAddress="iam.amazonaws.com"), GEO_FIELDS)
    finally:
        configure_enrichment()

    assert found == {
        "source.geo.city_name": "Milton",
        "source.geo.continent_name": "North America",
        "source.geo.country_iso_code": "US",
        "source.geo.country_name": "United States",
        "source.geo.region_iso_code": "US-WA",
        "source.geo.region_name": "Washington",
        "source.geo.location": {"lat": 47.2513, "lon": -122.3149},
        "source.as.number": 64500,
        "source.as.organization.name": "EXAMPLE-NET",
    }
    assert elsewhere == {}
    assert by_name == {}


def test_geoip_fields_are_absent_without_databases() -> None:
    assert normalize(make_record(sourceIPAddress="198.51.100.7"), GEO_FIELDS) == {}


def test_docs_list_every_field_as_the_registry_has_it() -> None:
    """docs/ecs-fields.md is generated: run scripts/ecs_fields_doc.py after changing a field."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "ecs-fields.md"

    assert doc.read_text(encoding="utf-8") == fields_table()


def test_the_user_agent_parser_sees_only_the_first_1024_characters() -> None:
    padded = make_record(userAgent="aws-cli/2.18.17 " + "x" * 2_000_000)
    late = make_record(userAgent="x" * 1024 + " aws-cli/2.18.17")

    assert normalize(padded, ["user_agent.name", "user_agent.original"]) == {
        "user_agent.name": "aws-cli"
    }
    assert normalize(late, ["user_agent.name"]) == {"user_agent.name": "Other"}


def test_scan_takes_namespace_and_geoip_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    city, asn = write_geoip_databases(tmp_path)
    events = tmp_path / "events.json"
    events.write_text(json.dumps({"Records": [create_access_key(
        event_id="e-1", caller="mallory", target="bob"
    )]}))
    output = tmp_path / "alerts.jsonl"
    monkeypatch.setenv("DETECTOR_GEOIP_CITY_DATABASE", str(city))
    monkeypatch.setenv("DETECTOR_GEOIP_ASN_DATABASE", str(asn))
    monkeypatch.setenv("DETECTOR_DATA_STREAM_NAMESPACE", "prod")
    try:
        assert main(["scan", str(events), "--output", str(output)]) == 0
    finally:
        configure_enrichment()

    alert = json.loads(output.read_text().splitlines()[0])
    assert alert["source"]["geo"]["city_name"] == "Milton"
    assert alert["source"]["as"]["number"] == 64500
    assert alert["data_stream"]["namespace"] == "prod"
