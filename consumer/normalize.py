"""CloudTrail record -> flat ECS fields, derived the way Elastic's AWS CloudTrail integration does.

Detection rules written for Elastic (`logs-aws.cloudtrail-*`) read ECS fields that Elastic's ingest
pipeline derives; to give the same verdicts we must derive them the same way. Each field has its
own small extractor so that a rule pays only for the fields it reads: most events are rejected on
`event.provider`/`event.action`, and only the few survivors parse `requestParameters`.

Elastic's conventions reproduced here:
- a value that is null, "", "-" or "none", or an object/array holding nothing else, is absent;
- values are copied verbatim: letter case is never changed;
- an AWS service acting on its own (`AWSService`, or a service-linked role) is `service.name`,
  never `user.name`/`user.id`;
- `user.name` is the IAM user, or for a role session the role's name (not the session name).
"""

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from types import MappingProxyType
from typing import Any, Literal

from consumer.event import CloudTrailRecord, EcsValue, Extractor
from consumer.times import parse_iso_utc

EcsType = Literal["keyword", "date", "ip", "long", "boolean"]


@dataclass(frozen=True, slots=True)
class EcsField:
    """One derivable ECS field: its dotted name, ECS type and how to extract it from a record."""

    name: str
    type: EcsType
    extract: Extractor
    raw_source: str | None = None
    """Top-level CloudTrail key whose string value this field copies verbatim, if any.

    Set only where every non-null value of the field equals `record[raw_source]` exactly, so a
    byte-level prefilter may look for the value in the undecoded message.
    """


_DROPPED_STRINGS = frozenset({"", "-", "none"})
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_SERVICE_ROLE_MARKER = ":role/aws-service-role/"
_ROLE_SESSION_TYPES = ("AssumedRole", "FederatedUser")
_CONSOLE_LOGIN_OUTCOMES = {"Success": "success", "Failure": "failure"}
_IPV4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9]?[0-9])"
_IPV4 = re.compile(rf"{_IPV4_OCTET}(?:\.{_IPV4_OCTET}){{3}}")


def _text(value: object) -> str | None:
    """The value as ECS keyword text, or None where Elastic's pipeline drops it as empty."""
    if isinstance(value, str) and value not in _DROPPED_STRINGS:
        return value
    return None


def _present(value: object) -> bool:
    """Whether Elastic's recursive drop of null/empty values would keep this value."""
    if value is None:
        return False
    if isinstance(value, str):
        return value not in _DROPPED_STRINGS
    if isinstance(value, dict):
        return any(_present(item) for item in value.values())
    if isinstance(value, list):
        return any(_present(item) for item in value)
    return True


def _free_form(value: object) -> Mapping[str, Any]:
    """A free-form CloudTrail object, given as JSON text (Avro shape) or already as a dict.

    Text that is not a JSON object reads as empty: one malformed field must not stop the stream.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return _EMPTY
    return value if isinstance(value, dict) else _EMPTY


def _identity(record: CloudTrailRecord) -> Mapping[str, Any]:
    identity = record.get("userIdentity")
    return identity if isinstance(identity, dict) else _EMPTY


def _session_issuer(identity: Mapping[str, Any]) -> Mapping[str, Any]:
    session = identity.get("sessionContext")
    if not isinstance(session, dict):
        return _EMPTY
    issuer = session.get("sessionIssuer")
    return issuer if isinstance(issuer, dict) else _EMPTY


def _service_role_arn(identity: Mapping[str, Any]) -> str | None:
    """The issuing role's ARN when the actor is a session of a service-linked role."""
    if identity.get("type") != "AssumedRole":
        return None
    arn = _text(_session_issuer(identity).get("arn"))
    if arn is None or _SERVICE_ROLE_MARKER not in arn:
        return None
    return arn


def _is_service_actor(identity: Mapping[str, Any]) -> bool:
    return identity.get("type") == "AWSService" or _service_role_arn(identity) is not None


def _event_provider(record: CloudTrailRecord) -> EcsValue:
    return _text(record.get("eventSource"))


def _event_action(record: CloudTrailRecord) -> EcsValue:
    return _text(record.get("eventName"))


def _event_outcome(record: CloudTrailRecord) -> EcsValue:
    """failure when CloudTrail reports an error; a console sign-in says so itself."""
    if record.get("eventName") == "ConsoleLogin":
        response = _free_form(record.get("responseElements"))
        login_outcome = _CONSOLE_LOGIN_OUTCOMES.get(_text(response.get("ConsoleLogin")) or "")
        if login_outcome is not None:
            return login_outcome
    if _present(record.get("errorCode")) or _present(record.get("errorMessage")):
        return "failure"
    return "success"


def _event_id(record: CloudTrailRecord) -> EcsValue:
    return _text(record.get("eventID"))


def _event_kind(record: CloudTrailRecord) -> EcsValue:
    return "event"


# Elastic categorises these API calls; every other call is event.type ["info"] with no category.
_CATEGORIZED_ACTIONS: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (
        ("iam",),
        ("user", "change"),
        "AttachUserPolicy ChangePassword CreateAccessKey CreateVirtualMFADevice"
        " DeactivateMFADevice DeleteAccessKey DeleteSSHPublicKey DeleteUserPermissionsBoundary"
        " DeleteUserPolicy DeleteVirtualMFADevice DetachUserPolicy EnableMFADevice"
        " PutUserPermissionsBoundary PutUserPolicy TagUser UntagUser UpdateAccessKey"
        " UpdateLoginProfile UpdateSSHPublicKey UpdateUser",
    ),
    (("iam",), ("user", "creation"), "CreateUser"),
    (("iam",), ("user", "deletion"), "DeleteUser"),
    (
        ("iam",),
        ("user", "info"),
        "GetUser GetUserPolicy ListAttachedUserPolicies ListGroupsForUser ListUserPolicies"
        " ListUserTags ListUsers",
    ),
    (
        ("iam",),
        ("group", "change"),
        "AddUserToGroup AttachGroupPolicy DeleteGroupPolicy DetachGroupPolicy PutGroupPolicy"
        " RemoveUserFromGroup UpdateGroup",
    ),
    (("iam",), ("group", "creation"), "CreateGroup"),
    (("iam",), ("group", "deletion"), "DeleteGroup"),
    (
        ("iam",),
        ("group", "info"),
        "GetGroup GetGroupPolicy ListAttachedGroupPolicies ListGroupPolicies ListGroups",
    ),
    (("iam",), ("admin", "creation"), "CreateKeyPair"),
    (
        ("iam",),
        ("admin", "change"),
        "SetDefaultPolicyVersion SetSecurityTokenServicePreferences UpdateAccountPasswordPolicy"
        " UpdateRole",
    ),
    (("authentication",), ("info",), "AssumeRole ConsoleLogin"),
    (("file",), ("creation",), "CreateBucket"),
    (("file",), ("deletion",), "DeleteBucket"),
)
_CATEGORY_BY_ACTION = {
    action: category for category, _, actions in _CATEGORIZED_ACTIONS for action in actions.split()
}
_TYPE_BY_ACTION = {
    action: event_type
    for _, event_type, actions in _CATEGORIZED_ACTIONS
    for action in actions.split()
}
_DEFAULT_EVENT_TYPE = ("info",)


def _event_category(record: CloudTrailRecord) -> EcsValue:
    category = _CATEGORY_BY_ACTION.get(_text(record.get("eventName")) or "")
    return None if category is None else list(category)


def _event_type(record: CloudTrailRecord) -> EcsValue:
    return list(_TYPE_BY_ACTION.get(_text(record.get("eventName")) or "", _DEFAULT_EVENT_TYPE))


def _timestamp(record: CloudTrailRecord) -> EcsValue:
    """eventTime as Elastic stores it: UTC, millisecond precision, `Z` suffix."""
    moment = parse_iso_utc(_text(record.get("eventTime")))
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def _user_name(record: CloudTrailRecord) -> EcsValue:
    identity = _identity(record)
    if _is_service_actor(identity):
        return None
    if identity.get("type") in _ROLE_SESSION_TYPES:
        role_name = _text(_session_issuer(identity).get("userName"))
        if role_name is not None:
            return role_name
    return _text(identity.get("userName"))


def _user_id(record: CloudTrailRecord) -> EcsValue:
    identity = _identity(record)
    if _is_service_actor(identity):
        return None
    return _text(identity.get("principalId"))


def _user_target_name(record: CloudTrailRecord) -> EcsValue:
    return _text(_free_form(record.get("requestParameters")).get("userName"))


def _user_changes_name(record: CloudTrailRecord) -> EcsValue:
    return _text(_free_form(record.get("requestParameters")).get("newUserName"))


def _user_target_id(record: CloudTrailRecord) -> EcsValue:
    created_user = _free_form(record.get("responseElements")).get("user")
    return _text(created_user.get("userId")) if isinstance(created_user, dict) else None


def _related_user(record: CloudTrailRecord) -> EcsValue:
    """The actor, target and new user names, once each, in that order."""
    request = _free_form(record.get("requestParameters"))
    names: list[str] = []
    for name in (
        _user_name(record),
        _text(request.get("userName")),
        _text(request.get("newUserName")),
    ):
        if isinstance(name, str) and name not in names:
            names.append(name)
    return names or None


def _service_name(record: CloudTrailRecord) -> EcsValue:
    """The AWS service acting on its own: its invokedBy, else named in its service-linked role."""
    identity = _identity(record)
    if identity.get("type") == "AWSService":
        return _text(identity.get("invokedBy"))
    role_arn = _service_role_arn(identity)
    if role_arn is None:
        return None
    invoked_by = _text(identity.get("invokedBy"))
    if invoked_by is not None:
        return invoked_by
    return role_arn.partition(_SERVICE_ROLE_MARKER)[2].partition("/")[0] or None


def _source_address(record: CloudTrailRecord) -> EcsValue:
    return _text(record.get("sourceIPAddress"))


def _source_ip(record: CloudTrailRecord) -> EcsValue:
    """sourceIPAddress when it is an IP address; AWS services appear there by host name.

    Like Elastic's grok IP pattern, IPv4 octets may carry leading zeros ("10.0.0.07").
    """
    address = _text(record.get("sourceIPAddress"))
    if address is None:
        return None
    if ":" not in address:
        return address if _IPV4.fullmatch(address) else None
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return None
    return address


def _user_agent(record: CloudTrailRecord) -> EcsValue:
    return _text(record.get("userAgent"))


def _cloud_provider(record: CloudTrailRecord) -> EcsValue:
    return "aws"


def _cloud_account_id(record: CloudTrailRecord) -> EcsValue:
    """The actor's account, else the account that received the event (AWS service actors)."""
    account = _text(_identity(record).get("accountId"))
    return account if account is not None else _text(record.get("recipientAccountId"))


def _cloud_region(record: CloudTrailRecord) -> EcsValue:
    return _text(record.get("awsRegion"))


def _identity_type(record: CloudTrailRecord) -> EcsValue:
    return _text(_identity(record).get("type"))


def _identity_arn(record: CloudTrailRecord) -> EcsValue:
    return _text(_identity(record).get("arn"))


def _identity_access_key_id(record: CloudTrailRecord) -> EcsValue:
    return _text(_identity(record).get("accessKeyId"))


def _error_code(record: CloudTrailRecord) -> EcsValue:
    return _text(record.get("errorCode"))


def _error_message(record: CloudTrailRecord) -> EcsValue:
    return _text(record.get("errorMessage"))


ECS_FIELDS: Mapping[str, EcsField] = MappingProxyType(
    {
        field.name: field
        for field in (
            EcsField("@timestamp", "date", _timestamp),
            EcsField("event.provider", "keyword", _event_provider, raw_source="eventSource"),
            EcsField("event.action", "keyword", _event_action, raw_source="eventName"),
            EcsField("event.outcome", "keyword", _event_outcome),
            EcsField("event.id", "keyword", _event_id, raw_source="eventID"),
            EcsField("event.kind", "keyword", _event_kind),
            EcsField("event.category", "keyword", _event_category),
            EcsField("event.type", "keyword", _event_type),
            EcsField("user.name", "keyword", _user_name),
            EcsField("user.id", "keyword", _user_id),
            EcsField("user.target.name", "keyword", _user_target_name),
            EcsField("user.target.id", "keyword", _user_target_id),
            EcsField("user.changes.name", "keyword", _user_changes_name),
            EcsField("related.user", "keyword", _related_user),
            EcsField("service.name", "keyword", _service_name),
            EcsField("source.address", "keyword", _source_address, raw_source="sourceIPAddress"),
            EcsField("source.ip", "ip", _source_ip, raw_source="sourceIPAddress"),
            EcsField("user_agent.original", "keyword", _user_agent, raw_source="userAgent"),
            EcsField("cloud.provider", "keyword", _cloud_provider),
            EcsField("cloud.account.id", "keyword", _cloud_account_id),
            EcsField("cloud.region", "keyword", _cloud_region, raw_source="awsRegion"),
            EcsField("aws.cloudtrail.user_identity.type", "keyword", _identity_type),
            EcsField("aws.cloudtrail.user_identity.arn", "keyword", _identity_arn),
            EcsField(
                "aws.cloudtrail.user_identity.access_key_id", "keyword", _identity_access_key_id
            ),
            EcsField("aws.cloudtrail.error_code", "keyword", _error_code, raw_source="errorCode"),
            EcsField(
                "aws.cloudtrail.error_message", "keyword", _error_message, raw_source="errorMessage"
            ),
        )
    }
)
"""Every ECS field this module derives, by dotted name."""


def normalize(record: CloudTrailRecord, fields: Iterable[str] | None = None) -> dict[str, EcsValue]:
    """Flat dotted ECS document with the requested fields (all when None); absent ones omitted.

    Raises KeyError for a field name not in ECS_FIELDS, so a typo in a rule fails loudly.
    """
    document: dict[str, EcsValue] = {}
    for name in ECS_FIELDS if fields is None else fields:
        value = ECS_FIELDS[name].extract(record)
        if value is not None:
            document[name] = value
    return document
