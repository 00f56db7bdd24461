"""Elastic's AWS KQL `query` rules, verbatim from ../shared: every one parses and compiles, and
for 25 of them hand-written CloudTrail events that must alert and near misses that must not."""

from __future__ import annotations

import shutil
import tomllib
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from consumer.alerts.document import alert_for
from consumer.cloudtrail.decode import Decoder, JsonDecoder, SchemalessAvroDecoder
from consumer.cloudtrail.record import json_to_avro
from consumer.offline.replay import avro_encoder, json_encoder
from consumer.rules.detector import Detector
from consumer.rules.kql import compile_kql, parse_kql
from consumer.rules.loader import LoadedRule, load_rule_set, parse_rule
from tests.conftest import shared_path
from tests.support.events import ACCOUNTS, event

ROLE_ARN = f"arn:aws:sts::{ACCOUNTS[0]}:assumed-role/ops/session"


def rules_dir() -> Path:
    return shared_path("elastic-rules", "aws")


def query_rule_files() -> list[Path]:
    files = []
    for path in sorted(rules_dir().glob("*.toml")):
        rule = tomllib.loads(path.read_text(encoding="utf-8"))["rule"]
        if rule["type"] == "query" and rule.get("language") == "kuery":
            files.append(path)
    return files


@cache
def rule(file_name: str) -> LoadedRule:
    path = rules_dir() / file_name
    loaded = parse_rule(path.read_text(encoding="utf-8"), str(path))
    assert isinstance(loaded, LoadedRule), getattr(loaded, "reason", loaded)
    return loaded


def test_all_85_elastic_kql_query_rules_parse_and_compile() -> None:
    files = query_rule_files()
    assert len(files) == 85
    for path in files:
        definition = tomllib.loads(path.read_text(encoding="utf-8"))["rule"]
        parse_kql(definition["query"])
        compiled = compile_kql(definition["query"], index=definition["index"])
        assert compiled.index_patterns == tuple(definition["index"])
        loaded = parse_rule(path.read_text(encoding="utf-8"), str(path))
        assert isinstance(loaded, LoadedRule), (path.name, getattr(loaded, "reason", None))


def record(
    action: str,
    provider: str,
    *,
    error: str | None = None,
    request: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    agent: str = "aws-cli/2.15.0 Python/3.11.6",
    ip: str = "198.51.100.7",
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A CloudTrail record (JSON shape) for `action` on `provider`, by IAM user alice."""
    built = event(
        event_id="11111111-2222-4333-8444-555555555555",
        event_name=action,
        event_source=provider,
        request_parameters=request,
        error_code=error,
    )
    built.update(userAgent=agent, sourceIPAddress=ip, responseElements=response)
    if identity is not None:
        built["userIdentity"] = identity
    return built


def role_session(invoked_by: str | None = None, service: bool = False) -> dict[str, Any]:
    identity: dict[str, Any] = {
        "type": "AWSService" if service else "AssumedRole",
        "principalId": "AROAEXAMPLE:session",
        "arn": ROLE_ARN,
        "accountId": ACCOUNTS[0],
        "sessionContext": {
            "sessionIssuer": {"type": "Role", "arn": ROLE_ARN, "userName": "ops"}
        },
    }
    if invoked_by is not None:
        identity["invokedBy"] = invoked_by
    return identity


ROOT = {"type": "Root", "principalId": ACCOUNTS[0], "arn": f"arn:aws:iam::{ACCOUNTS[0]}:root",
        "accountId": ACCOUNTS[0]}
INGRESS = {
    "groupId": "sg-0123",
    "ipPermissions": {"items": [{
        "ipProtocol": "tcp", "fromPort": 22, "toPort": 22,
        "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]},
    }]},
}

CASES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("collection_cloudtrail_logging_created.toml", "trail created",
     record("CreateTrail", "cloudtrail.amazonaws.com"), True),
    ("collection_cloudtrail_logging_created.toml", "denied",
     record("CreateTrail", "cloudtrail.amazonaws.com", error="AccessDenied"), False),
    ("credential_access_credentials_in_s3_bucket.toml", "credentials object read",
     record("GetObject", "s3.amazonaws.com",
            request={"bucketName": "b", "key": "home/dev/.aws/credentials"}), True),
    ("credential_access_credentials_in_s3_bucket.toml", "pem read",
     record("GetObject", "s3.amazonaws.com", request={"bucketName": "b", "key": "certs/a.pem"}),
     True),
    ("credential_access_credentials_in_s3_bucket.toml", "ordinary object",
     record("GetObject", "s3.amazonaws.com", request={"bucketName": "b", "key": "docs/a.txt"}),
     False),
    ("credential_access_credentials_in_s3_bucket.toml", "read by an AWS service",
     record("GetObject", "s3.amazonaws.com", request={"bucketName": "b", "key": "x/id_rsa"},
            identity=role_session("s3.amazonaws.com", service=True)), False),
    ("credential_access_iam_user_addition_to_group.toml", "user added",
     record("AddUserToGroup", "iam.amazonaws.com", request={"groupName": "admins"}), True),
    ("credential_access_iam_user_addition_to_group.toml", "other provider",
     record("AddUserToGroup", "identitystore.amazonaws.com"), False),
    ("defense_evasion_cloudtrail_logging_evasion.toml", "parameters omitted",
     record("PutRolePolicy", "iam.amazonaws.com",
            request={"reason": "requestParameters too large", "omitted": True}), True),
    ("defense_evasion_cloudtrail_logging_evasion.toml", "parameters present",
     record("PutRolePolicy", "iam.amazonaws.com", request={"roleName": "r"}), False),
    ("defense_evasion_cloudtrail_management_events_disabled_via_eventselectors.toml",
     "management events off",
     record("PutEventSelectors", "cloudtrail.amazonaws.com", request={
         "trailName": "t",
         "eventSelectors": [{"readWriteType": "All", "includeManagementEvents": False}],
     }), True),
    ("defense_evasion_cloudtrail_management_events_disabled_via_eventselectors.toml",
     "management events kept",
     record("PutEventSelectors", "cloudtrail.amazonaws.com", request={
         "trailName": "t",
         "eventSelectors": [{"readWriteType": "All", "includeManagementEvents": True}],
     }), False),
    ("defense_evasion_cloudwatch_alarm_deletion.toml", "alarm deleted from an address",
     record("DeleteAlarms", "monitoring.amazonaws.com"), True),
    ("defense_evasion_cloudwatch_alarm_deletion.toml", "deleted by AWS internally",
     record("DeleteAlarms", "monitoring.amazonaws.com", agent="AWS Internal"), False),
    ("defense_evasion_cloudwatch_alarm_deletion.toml", "source is a service host name",
     record("DeleteAlarms", "monitoring.amazonaws.com", ip="cloudformation.amazonaws.com"),
     False),
    ("defense_evasion_config_service_rule_deletion.toml", "config rule deleted",
     record("DeleteConfigRule", "config.amazonaws.com"), True),
    ("defense_evasion_config_service_rule_deletion.toml", "deleted by Security Hub",
     record("DeleteConfigRule", "config.amazonaws.com",
            identity=role_session("securityhub.amazonaws.com")), False),
    ("defense_evasion_ec2_flow_log_deletion.toml", "flow logs deleted",
     record("DeleteFlowLogs", "ec2.amazonaws.com"), True),
    ("defense_evasion_ec2_flow_log_deletion.toml", "action in other case",
     record("deleteflowlogs", "ec2.amazonaws.com"), False),
    ("defense_evasion_guardduty_finding_suppression.toml", "trusted IP set activated",
     record("CreateIPSet", "guardduty.amazonaws.com", request={"activate": True}), True),
    ("defense_evasion_guardduty_finding_suppression.toml", "detector disabled",
     record("UpdateDetector", "guardduty.amazonaws.com", request={"enable": False}), True),
    ("defense_evasion_guardduty_finding_suppression.toml", "IP set left inactive",
     record("CreateIPSet", "guardduty.amazonaws.com", request={"activate": False}), False),
    ("defense_evasion_iam_account_password_policy_deleted.toml", "policy deleted by hand",
     record("DeleteAccountPasswordPolicy", "iam.amazonaws.com"), True),
    ("defense_evasion_iam_account_password_policy_deleted.toml", "deleted by terraform",
     record("DeleteAccountPasswordPolicy", "iam.amazonaws.com",
            agent="APN/1.0 HashiCorp/1.0 terraform/1.9.5"), False),
    ("defense_evasion_iam_account_password_policy_deleted.toml", "deleted via CloudFormation",
     record("DeleteAccountPasswordPolicy", "iam.amazonaws.com",
            ip="cloudformation.amazonaws.com"), False),
    ("defense_evasion_vpc_security_group_ingress_rule_added_for_remote_connections.toml",
     "ssh open to the world", record("AuthorizeSecurityGroupIngress", "ec2.amazonaws.com",
                                     request=INGRESS), True),
    ("defense_evasion_vpc_security_group_ingress_rule_added_for_remote_connections.toml",
     "https open to the world",
     record("AuthorizeSecurityGroupIngress", "ec2.amazonaws.com", request={
         **INGRESS, "ipPermissions": {"items": [{
             "ipProtocol": "tcp", "fromPort": 443, "toPort": 443,
             "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]}}]}}), False),
    ("defense_evasion_vpc_security_group_ingress_rule_added_for_remote_connections.toml",
     "ssh from one network",
     record("AuthorizeSecurityGroupIngress", "ec2.amazonaws.com", request={
         **INGRESS, "ipPermissions": {"items": [{
             "ipProtocol": "tcp", "fromPort": 22, "toPort": 22,
             "ipRanges": {"items": [{"cidrIp": "203.0.113.0/24"}]}}]}}), False),
    ("execution_lambda_external_layer_added_to_function.toml", "versioned action name",
     record("PublishLayerVersion20181031", "lambda.amazonaws.com"), True),
    ("execution_lambda_external_layer_added_to_function.toml", "other lambda call",
     record("GetLayerVersion20181031", "lambda.amazonaws.com"), False),
    ("exfiltration_ec2_ami_shared_with_separate_account.toml", "AMI shared",
     record("ModifyImageAttribute", "ec2.amazonaws.com", request={
         "imageId": "ami-1", "launchPermission": {"add": {"items": [{"userId": "444455556666"}]}},
         "attributeType": "launchPermission"}), True),
    ("exfiltration_ec2_ami_shared_with_separate_account.toml", "share removed",
     record("ModifyImageAttribute", "ec2.amazonaws.com", request={
         "imageId": "ami-1",
         "launchPermission": {"remove": {"items": [{"userId": "444455556666"}]}}}), False),
    ("impact_cloudwatch_log_group_deletion.toml", "log group deleted",
     record("DeleteLogGroup", "logs.amazonaws.com", request={"logGroupName": "/app"}), True),
    ("impact_cloudwatch_log_group_deletion.toml", "log stream deleted instead",
     record("DeleteLogStream", "logs.amazonaws.com"), False),
    ("initial_access_console_login_root.toml", "root signs in",
     record("ConsoleLogin", "signin.amazonaws.com", identity=ROOT,
            response={"ConsoleLogin": "Success"}), True),
    ("initial_access_console_login_root.toml", "root sign-in fails",
     record("ConsoleLogin", "signin.amazonaws.com", identity=ROOT,
            response={"ConsoleLogin": "Failure"}), False),
    ("initial_access_console_login_root.toml", "IAM user signs in",
     record("ConsoleLogin", "signin.amazonaws.com", response={"ConsoleLogin": "Success"}), False),
    ("initial_access_assume_role_with_web_identity_kubernetes_sa_from_external_asn.toml",
     "no ASN without a GeoIP database",
     record("AssumeRoleWithWebIdentity", "sts.amazonaws.com",
            identity={"type": "WebIdentityUser", "userName": "system:serviceaccount:ns:sa",
                      "principalId": "x"}), False),
    ("persistence_sensitive_operations_via_cloudshell.toml", "access key from CloudShell",
     record("CreateAccessKey", "iam.amazonaws.com",
            agent="aws-cli/2.15 md/awscrt#0.19 CloudShell/1.0"), True),
    ("persistence_sensitive_operations_via_cloudshell.toml", "access key from the CLI",
     record("CreateAccessKey", "iam.amazonaws.com"), False),
    ("privilege_escalation_bedrock_phantom_user_activity_outside_bedrock.toml",
     "Bedrock key user lists users",
     record("ListUsers", "iam.amazonaws.com", identity={
         "type": "IAMUser", "userName": "BedrockAPIKey-x1", "principalId": "AIDA1",
         "arn": f"arn:aws:iam::{ACCOUNTS[0]}:user/BedrockAPIKey-x1"}), True),
    ("privilege_escalation_bedrock_phantom_user_activity_outside_bedrock.toml",
     "Bedrock key user calls Bedrock",
     record("InvokeModel", "bedrock.amazonaws.com", identity={
         "type": "IAMUser", "userName": "BedrockAPIKey-x1", "principalId": "AIDA1",
         "arn": f"arn:aws:iam::{ACCOUNTS[0]}:user/BedrockAPIKey-x1"}), False),
    ("privilege_escalation_iam_customer_managed_policy_version_created_or_set_default.toml",
     "policy version by a person", record("CreatePolicyVersion", "iam.amazonaws.com"), True),
    ("privilege_escalation_iam_customer_managed_policy_version_created_or_set_default.toml",
     "policy version by the terraform role",
     record("CreatePolicyVersion", "iam.amazonaws.com", identity={
         **role_session(), "arn": f"arn:aws:sts::{ACCOUNTS[0]}:assumed-role/terraform"}), False),
    ("privilege_escalation_iam_privilege_operations_via_lambda_execution_role.toml",
     "lambda role creates a user",
     record("CreateUser", "iam.amazonaws.com", identity=role_session(),
            agent="Boto3/1.34 md/Botocore#1.34 exec-env/AWS_Lambda_python3.12"), True),
    ("privilege_escalation_iam_privilege_operations_via_lambda_execution_role.toml",
     "a person's role creates a user",
     record("CreateUser", "iam.amazonaws.com", identity=role_session()), False),
    ("privilege_escalation_iam_saml_provider_updated.toml", "SAML provider updated",
     record("UpdateSAMLProvider", "iam.amazonaws.com"), True),
    ("privilege_escalation_iam_saml_provider_updated.toml", "updated by IAM Identity Center",
     record("UpdateSAMLProvider", "iam.amazonaws.com", ip="sso.amazonaws.com",
            agent="sso.amazonaws.com"), False),
    ("privilege_escalation_sts_get_federation_token_administrator_access.toml",
     "federation token with admin policy",
     record("GetFederationToken", "sts.amazonaws.com", request={
         "name": "x",
         "policyArns": [{"arn": "arn:aws:iam::aws:policy/AdministratorAccess"}]}), True),
    ("privilege_escalation_sts_get_federation_token_administrator_access.toml",
     "federation token read-only",
     record("GetFederationToken", "sts.amazonaws.com", request={
         "name": "x", "policyArns": [{"arn": "arn:aws:iam::aws:policy/ReadOnlyAccess"}]}),
     False),
    ("persistence_ec2_security_group_configuration_change_detection.toml",
     "instance security groups replaced",
     record("ModifyInstanceAttribute", "ec2.amazonaws.com", request={
         "instanceId": "i-1", "groupSet": {"items": [{"groupId": "sg-1"}]}}), True),
    ("persistence_ec2_security_group_configuration_change_detection.toml",
     "instance type changed",
     record("ModifyInstanceAttribute", "ec2.amazonaws.com", request={
         "instanceId": "i-1", "instanceType": {"value": "t3.large"}}), False),
    ("defense_evasion_eks_control_plane_logging_disabled.toml", "control plane logging off",
     record("UpdateClusterConfig", "eks.amazonaws.com", request={
         "name": "prod",
         "logging": {"clusterLogging": [{"types": ["api", "audit"], "enabled": False}]}}), True),
    ("defense_evasion_eks_control_plane_logging_disabled.toml", "logging on",
     record("UpdateClusterConfig", "eks.amazonaws.com", request={
         "name": "prod",
         "logging": {"clusterLogging": [{"types": ["api"], "enabled": True}]}}), False),
    ("impact_lambda_function_deleted.toml", "versioned delete",
     record("DeleteFunction20150331", "lambda.amazonaws.com"), True),
    ("impact_lambda_function_deleted.toml", "delete failed",
     record("DeleteFunction20150331", "lambda.amazonaws.com", error="ResourceNotFound"), False),
    ("persistence_bedrock_foundation_model_access_denied_attempt.toml", "entitlement denied",
     record("PutFoundationModelEntitlement", "bedrock.amazonaws.com", error="AccessDenied"),
     True),
    ("persistence_bedrock_foundation_model_access_denied_attempt.toml", "other error",
     record("PutFoundationModelEntitlement", "bedrock.amazonaws.com", error="Throttling"),
     False),
    ("impact_kms_cmk_disabled_or_scheduled_for_deletion.toml", "key deletion scheduled",
     record("ScheduleKeyDeletion", "kms.amazonaws.com"), True),
    ("impact_kms_cmk_disabled_or_scheduled_for_deletion.toml", "key enabled",
     record("EnableKey", "kms.amazonaws.com"), False),
]


@pytest.mark.parametrize(
    ("file_name", "scenario", "cloudtrail", "alerts"),
    CASES,
    ids=[f"{case[0].removesuffix('.toml')}: {case[1]}" for case in CASES],
)
def test_elastic_kql_rule_verdict(
    file_name: str, scenario: str, cloudtrail: dict[str, Any], alerts: bool
) -> None:
    assert rule(file_name).query.matches(json_to_avro(cloudtrail)) is alerts, scenario


def test_at_least_twenty_rules_have_alerting_and_near_miss_cases() -> None:
    alerting = {case[0] for case in CASES if case[3]}
    missing = {case[0] for case in CASES if not case[3]}
    assert len(alerting & missing) >= 20


@pytest.mark.parametrize("wire", ["avro", "json"])
def test_detector_with_every_kql_rule_gives_the_rules_verdicts_through_the_prefilter(
    tmp_path: Path, wire: str
) -> None:
    for path in query_rule_files():
        shutil.copy(path, tmp_path / path.name)
    rules = [rule for rule in load_rule_set(tmp_path).rules
             if rule.source.startswith(str(tmp_path))]
    assert len(rules) == 85
    decoder: Decoder = SchemalessAvroDecoder() if wire == "avro" else JsonDecoder()
    encode = avro_encoder() if wire == "avro" else json_encoder()
    detector = Detector(decoder, rules)
    records = [case[2] for case in CASES] + [event(event_id=f"read-{i}") for i in range(20)]
    payloads = [encode(record) for record in records]
    screened = set(detector.screen(payloads, [len(payload) for payload in payloads]))
    for index, (record, payload) in enumerate(zip(records, payloads, strict=True)):
        expected = {rule.name for rule in rules if rule.query.matches(json_to_avro(record))}
        verdict = detector.inspect(payload)
        matched = set() if verdict is None else {rule.name for rule in verdict.matched}
        assert matched == expected, record["eventName"]
        assert index in screened or not expected
    assert len(screened) < len(payloads), "the screen narrows the batch"


def test_an_alert_of_a_kql_rule_carries_the_fields_its_query_read() -> None:
    loaded = rule("credential_access_credentials_in_s3_bucket.toml")
    record = json_to_avro(CASES[2][2])
    alert = alert_for(loaded, record, detected_at=datetime(2026, 12, 1, tzinfo=UTC), original=None)
    document = alert.document
    assert document["aws"]["cloudtrail"]["flattened"]["request_parameters"]["key"] == (
        "home/dev/.aws/credentials"
    )
    assert document["kibana"]["alert"]["rule"]["rule_id"] == loaded.rule_id
