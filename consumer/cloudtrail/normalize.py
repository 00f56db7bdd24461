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
- `user.name` is the IAM user, or for a role session the role's name (not the session name);
- the free-form objects are also kept as text in Java's `Map.toString()` form (`{k=v, k2=[a, b]}`,
  keys in `java.util.HashMap` order), which Elastic's GROK patterns are written against;
- a keyword longer than its mapping's `ignore_above` is not indexed, so a query reads it as null
  (`extract`), while the stored document keeps it (`source`, what an alert carries).

Three fields come from outside the record: `data_stream.namespace` and the GeoIP databases are
process settings (`configure_enrichment`), and `event.ingested` is when the event reached us,
which the service puts next to the record under `INGESTED_MS` (epoch milliseconds of the Kafka
message); without it (`scan`) it is the event's own time.
"""

import ipaddress
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

import maxminddb
import ua_parser
from ua_parser.loaders import load_builtins

from consumer.cloudtrail.types import CloudTrailRecord, EcsValue, Extractor
from consumer.times import parse_iso_utc

EcsType = Literal[
    "keyword", "date", "ip", "long", "boolean", "double", "geo_point", "flattened"
]

INGESTED_MS: Final = "@ingested"
"""Key beside CloudTrail's own in a record: when the event reached the detector, epoch ms.

No CloudTrail key can take this name in the Avro record shape (unknown keys go to extraFields).
"""

KEYWORD_IGNORE_ABOVE: Final = 1024
"""Fleet's and ECS's default `ignore_above` for keyword fields."""

PAYLOAD_IGNORE_ABOVE: Final = 8191
"""`ignore_above` of `aws.cloudtrail.request_parameters` and `.response_elements` in Elastic's
AWS package."""

FLATTENED_LIMIT: Final = 32766
"""Elastic's pipeline keeps a flattened copy only when the object's text is shorter than this
(Lucene's longest term, in bytes): the same bound caps every string an alert carries."""


@dataclass(frozen=True, slots=True)
class EcsField:
    """One derivable ECS field: its dotted name, ECS type and how to extract it from a record."""

    name: str
    type: EcsType
    extract: Extractor
    """The value as a query reads it (after `ignore_above`)."""
    raw_source: str | None = None
    """Top-level CloudTrail key whose string value this field copies verbatim, if any.

    Set only where every non-null value of the field equals `record[raw_source]` exactly, so a
    byte-level prefilter may look for the value in the undecoded message.
    """
    derivation: str = ""
    """How Elastic's pipeline derives it, in a line: docs/ecs-fields.md is built from these."""
    source: Extractor | None = None
    """The value as the stored document holds it, when that differs from `extract`."""
    ignore_above: int | None = None
    """Longest value a query sees, in UTF-16 code units as Java counts them; longer reads null."""

    def stored(self, record: CloudTrailRecord) -> EcsValue:
        """The value as Elastic's stored document (`_source`) holds it."""
        return (self.source or self.extract)(record)


_DROPPED_STRINGS = frozenset({"", "-", "none"})
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_SERVICE_ROLE_MARKER = ":role/aws-service-role/"
_ROLE_SESSION_TYPES = ("AssumedRole", "FederatedUser")
_CONSOLE_LOGIN_OUTCOMES = {"Success": "success", "Failure": "failure"}


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
    return _iso_millis(parse_iso_utc(_text(record.get("eventTime"))))


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
    """sourceIPAddress when Elasticsearch's `ip` field type accepts it.

    Elastic's pipeline groks `^%{IP:source.ip}$`, whose IPV4 pattern allows leading zeros
    ("010.001.002.003"), but the `ip` mapping parses with Elasticsearch's InetAddresses, which
    refuses them (octal or decimal is ambiguous); `logs-*` indices ignore malformed values, so
    such an address is in no query's view of source.ip. AWS services appear there by host name.
    """
    address = _text(record.get("sourceIPAddress"))
    if address is None or not _is_ip(address):
        return None
    return address


@lru_cache(maxsize=65536)
def _is_ip(text: str) -> bool:
    """Cached: every rule reading source.ip asks for each event, and addresses repeat."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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


# --- the free-form objects, as Elastic keeps them ---------------------------------------------

_GONE: Final = object()
"""What Elastic's recursive drop of null/empty values leaves of a value it removes."""

_HASH_BUDGET: Final = 2 * FLATTENED_LIMIT
"""Key characters hashed per object to put its keys in HashMap order. Past it the text is too long
for any query to read (ignore_above) and for Elastic to keep a flattened copy, so insertion
order is kept instead of paying to hash hostile keys."""


@lru_cache(maxsize=8192)
def _java_hash(key: str) -> int:
    """`String.hashCode()` spread as `java.util.HashMap.hash()` spreads it."""
    if key.isascii():
        units: Iterable[int] = key.encode()
    else:
        data = key.encode("utf-16-le", "surrogatepass")
        units = (int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2))
    value = 0
    for unit in units:
        value = (31 * value + unit) & 0xFFFFFFFF
    return value ^ (value >> 16)


def _hash_map_order(keys: list[str]) -> list[int]:
    """Indices of `keys` in the order a `java.util.HashMap` filled with them iterates.

    Elasticsearch's JSON parser builds HashMaps: 16 buckets, doubled whenever more than 3/4 full
    (or when a bucket's chain passes 8 keys below 64 buckets); iteration goes bucket by bucket,
    keys in one bucket in insertion order. Chains of 9+ colliding keys in 64+ buckets become
    trees, whose order this does not model; only crafted keys collide so.
    """
    hashes = [_java_hash(key) for key in keys]
    buckets = 16
    while len(keys) > buckets * 3 // 4:
        buckets *= 2
    while buckets < 64 and max(Counter(h & (buckets - 1) for h in hashes).values(), default=0) > 8:
        buckets *= 2
    mask = buckets - 1
    return sorted(range(len(keys)), key=lambda index: (hashes[index] & mask, index))


def _pruned(value: Any, budget: list[int]) -> Any:
    """The value after Elastic's drop of null/empty values, objects in HashMap order; or _GONE."""
    if value is None:
        return _GONE
    if isinstance(value, str):
        return _GONE if value in _DROPPED_STRINGS else value
    if isinstance(value, dict):
        keys = list(value)
        budget[0] -= sum(map(len, keys))
        order = _hash_map_order(keys) if budget[0] >= 0 else range(len(keys))
        kept = {}
        for index in order:
            item = _pruned(value[keys[index]], budget)
            if item is not _GONE:
                kept[keys[index]] = item
        return kept or _GONE
    if isinstance(value, list):
        items = [item for item in (_pruned(item, budget) for item in value) if item is not _GONE]
        return items or _GONE
    return value


def _java_double(value: float) -> str:
    """`Double.toString()`: shortest digits, plain from 1e-3 to 1e7, else `d.dddE±n`."""
    if math.isnan(value):
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if str(value).startswith("-") else "0.0"
    sign = "-" if value < 0 else ""
    digits, exponent = _shortest_digits(abs(value))
    point = len(digits) + exponent  # the value is 0.<digits> * 10**point
    if 1e-3 <= abs(value) < 1e7:
        if point <= 0:
            return f"{sign}0.{'0' * -point}{digits}"
        whole, fraction = digits[:point].ljust(point, "0"), digits[point:]
        return f"{sign}{whole}.{fraction or '0'}"
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E{point - 1}"


def _shortest_digits(value: float) -> tuple[str, int]:
    """Significant digits of repr(value) (the shortest that round-trip) and their exponent."""
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    point = len(whole) - (len(whole + fraction) - len((whole + fraction).lstrip("0")))
    stripped = digits.rstrip("0") or "0"
    return stripped, point - len(stripped) + (int(exponent) if exponent else 0)


def _java_text(value: Any) -> str:
    """`toString()` of the Java value Elasticsearch's JSON parser makes of `value`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}={_java_text(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_java_text(item) for item in value) + "]"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return _java_double(value)
    return str(value)


def _java_length(text: str) -> int:
    """Length as Java counts it: UTF-16 code units."""
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) // 2


def _kept_object(record: CloudTrailRecord, key: str) -> Any:
    """A free-form object as Elastic's pipeline keeps it, or _GONE."""
    raw = record.get(key)
    if raw is None:
        return _GONE
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            return _GONE
    try:
        return _pruned(raw, [_HASH_BUDGET])
    except RecursionError:
        return _GONE


def _as_text(record: CloudTrailRecord, key: str) -> str | None:
    kept = _kept_object(record, key)
    if kept is _GONE:
        return None
    try:
        return _java_text(kept)
    except RecursionError:
        return None


def _as_flattened(record: CloudTrailRecord, key: str) -> EcsValue:
    """The object itself, kept only while its text is under Elastic's flattened limit."""
    kept = _kept_object(record, key)
    if kept is _GONE:
        return None
    try:
        text = _java_text(kept)
    except RecursionError:
        return None
    return kept if _java_length(text) < FLATTENED_LIMIT else None


def _leaves(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(dotted key, text) of every leaf, arrays flattened into their parent's key, as the
    `flattened` field type indexes them."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item, path)
    else:
        yield path, _java_text(value)


def _flattened_key(key: str, sub_path: str) -> Extractor:
    def extract(record: CloudTrailRecord) -> EcsValue:
        root = _as_flattened(record, key)
        if root is None:
            return None
        try:
            values = [text for path, text in _leaves(root, "") if path == sub_path]
        except RecursionError:
            return None
        return values[0] if len(values) == 1 else values or None

    return extract


def _capped(extract: Extractor, limit: int) -> Extractor:
    """The extractor as a query sees it: a keyword value longer than `limit` is not indexed."""

    def capped(record: CloudTrailRecord) -> EcsValue:
        value = extract(record)
        if isinstance(value, str) and _java_length(value) > limit:
            return None
        return value

    return capped


def _payload_text(key: str) -> Extractor:
    return lambda record: _as_text(record, key)


def _payload_flattened(key: str) -> Extractor:
    return lambda record: _as_flattened(record, key)


# --- identity, session, resources --------------------------------------------------------------


def _nested(record: CloudTrailRecord, *path: str) -> object:
    node: object = record
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _nested_text(*path: str) -> Extractor:
    return lambda record: _text(_nested(record, *path))


def _nested_date(*path: str) -> Extractor:
    def extract(record: CloudTrailRecord) -> EcsValue:
        return _iso_millis(parse_iso_utc(_text(_nested(record, *path))))

    return extract


def _iso_millis(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def _boolean(key: str) -> Extractor:
    def extract(record: CloudTrailRecord) -> EcsValue:
        value = record.get(key)
        return value if isinstance(value, bool) else None

    return extract


def _boolean_text(key: str) -> Extractor:
    """A boolean in a keyword field (`management_event`): the text Elasticsearch stores."""

    def extract(record: CloudTrailRecord) -> EcsValue:
        value = record.get(key)
        if isinstance(value, bool):
            return "true" if value else "false"
        return _text(value)

    return extract


def _unique_resources(record: CloudTrailRecord) -> list[Mapping[str, Any]]:
    """Elastic's de-duplicated resources: one per (ARN, account, type), in its HashMap's order."""
    resources = record.get("resources")
    if not isinstance(resources, list):
        return []
    unique: dict[str, Mapping[str, Any]] = {}
    for resource in resources:
        if not isinstance(resource, dict):
            continue
        kept = {k: v for k, v in resource.items() if _present(v) and k != "extraFields"}
        key = "_".join(str(kept.get(name, "")) for name in ("ARN", "accountId", "type"))
        if kept:
            unique[key] = kept
    keys = list(unique)
    return [unique[keys[index]] for index in _hash_map_order(keys)]


def _doc_values(extract: Extractor) -> Extractor:
    """A multi-valued keyword as a query reads it: from doc values, sorted and de-duplicated."""

    def read(record: CloudTrailRecord) -> EcsValue:
        values = extract(record)
        if not isinstance(values, list):
            return values
        unique = sorted(set(values), key=lambda text: str(text).encode("utf-8", "surrogatepass"))
        return unique[0] if len(unique) == 1 else unique

    return read


def _resource_values(key: str) -> Extractor:
    def stored(record: CloudTrailRecord) -> EcsValue:
        values = [
            value for resource in _unique_resources(record)
            if isinstance(value := resource.get(key), str) and value not in _DROPPED_STRINGS
        ]
        return values or None

    return stored


def _event_category_text(record: CloudTrailRecord) -> EcsValue:
    return _text(record.get("eventCategory"))


def _group_id(record: CloudTrailRecord) -> EcsValue:
    group = _free_form(record.get("responseElements")).get("group")
    return _text(group.get("groupId")) if isinstance(group, dict) else None


def _group_name(record: CloudTrailRecord) -> EcsValue:
    return _text(_free_form(record.get("requestParameters")).get("groupName"))


def _user_email(record: CloudTrailRecord) -> EcsValue:
    name = _user_name(record)
    return name if isinstance(name, str) and name.find("@") > 0 else None


def _tls_version(part: int) -> Extractor:
    """`tls.version_protocol` / `tls.version` dissected from "TLSv1.3" as Elastic does."""

    def extract(record: CloudTrailRecord) -> EcsValue:
        version = _text(_nested(record, "tlsDetails", "tlsVersion"))
        if version is None or version == "tlsVersion":
            return None
        protocol, separator, number = version.partition("v")
        if not separator:
            return version if part == 1 else None
        return protocol.lower() if part == 0 else number

    return extract


def _console_login(key: str) -> Extractor:
    """aws.cloudtrail.console_login.additional_eventdata.*, for ConsoleLogin events only."""

    def extract(record: CloudTrailRecord) -> EcsValue:
        if record.get("eventName") != "ConsoleLogin":
            return None
        value = _free_form(record.get("additionalEventData")).get(key)
        if not _present(value):
            return None
        if key == "LoginTo":
            return value if isinstance(value, str) else None
        return value != "No"

    return extract


def _constant(value: str) -> Extractor:
    return lambda _record: value


# --- settings-dependent fields -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrichment:
    """What the pipeline knows besides the record: the integration's namespace and GeoIP data."""

    namespace: str = "default"
    city: maxminddb.Reader | None = field(default=None, compare=False)
    asn: maxminddb.Reader | None = field(default=None, compare=False)


class _Current:
    """The enrichment in force, set once at start-up."""

    enrichment = Enrichment()


def configure_enrichment(
    namespace: str = "default", city_database: Path | None = None, asn_database: Path | None = None
) -> None:
    """Set the namespace and open the MaxMind-format databases; without one, its fields are
    absent, as in Elastic without GeoIP. Call once at start-up, before any rule runs."""
    _Current.enrichment = Enrichment(
        namespace=namespace,
        city=None if city_database is None else maxminddb.open_database(str(city_database)),
        asn=None if asn_database is None else maxminddb.open_database(str(asn_database)),
    )
    _city_record.cache_clear()
    _asn_record.cache_clear()


def _namespace(record: CloudTrailRecord) -> EcsValue:
    return _Current.enrichment.namespace


def _ingested(record: CloudTrailRecord) -> EcsValue:
    """When the event was ingested, whole seconds as Fleet's final pipeline truncates it."""
    millis = record.get(INGESTED_MS)
    if isinstance(millis, int) and millis >= 0:
        moment: datetime | None = datetime.fromtimestamp(millis // 1000, UTC)
    else:
        moment = parse_iso_utc(_text(record.get("eventTime")))
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=4096)
def _city_record(address: str) -> Mapping[str, Any]:
    reader = _Current.enrichment.city
    found = None if reader is None else reader.get(address)
    return found if isinstance(found, dict) else _EMPTY


@lru_cache(maxsize=4096)
def _asn_record(address: str) -> Mapping[str, Any]:
    reader = _Current.enrichment.asn
    found = None if reader is None else reader.get(address)
    return found if isinstance(found, dict) else _EMPTY


def _geo(record: CloudTrailRecord) -> Mapping[str, Any]:
    if _Current.enrichment.city is None:
        return _EMPTY
    address = _source_ip(record)
    return _city_record(address) if isinstance(address, str) else _EMPTY


def _english(value: object) -> str | None:
    names = value.get("names") if isinstance(value, dict) else None
    return _text(names.get("en")) if isinstance(names, dict) else None


def _subdivision(found: Mapping[str, Any]) -> Mapping[str, Any]:
    subdivisions = found.get("subdivisions")
    last = subdivisions[-1] if isinstance(subdivisions, list) and subdivisions else None
    return last if isinstance(last, dict) else _EMPTY


def _geo_city(record: CloudTrailRecord) -> EcsValue:
    return _english(_geo(record).get("city"))


def _geo_continent(record: CloudTrailRecord) -> EcsValue:
    return _english(_geo(record).get("continent"))


def _geo_country_name(record: CloudTrailRecord) -> EcsValue:
    return _english(_geo(record).get("country"))


def _geo_country_iso(record: CloudTrailRecord) -> EcsValue:
    country = _geo(record).get("country")
    return _text(country.get("iso_code")) if isinstance(country, dict) else None


def _geo_region_name(record: CloudTrailRecord) -> EcsValue:
    return _english(_subdivision(_geo(record)))


def _geo_region_iso(record: CloudTrailRecord) -> EcsValue:
    country = _geo_country_iso(record)
    region = _text(_subdivision(_geo(record)).get("iso_code"))
    return f"{country}-{region}" if country and region else None


def _geo_location(record: CloudTrailRecord) -> EcsValue:
    location = _geo(record).get("location")
    if not isinstance(location, dict):
        return None
    lat, lon = location.get("latitude"), location.get("longitude")
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return None
    return {"lat": lat, "lon": lon}


def _as(record: CloudTrailRecord) -> Mapping[str, Any]:
    if _Current.enrichment.asn is None:
        return _EMPTY
    address = _source_ip(record)
    return _asn_record(address) if isinstance(address, str) else _EMPTY


def _as_number(record: CloudTrailRecord) -> EcsValue:
    number = _as(record).get("autonomous_system_number")
    return number if isinstance(number, int) and not isinstance(number, bool) else None


def _as_organization(record: CloudTrailRecord) -> EcsValue:
    return _text(_as(record).get("autonomous_system_organization"))


# --- user agent --------------------------------------------------------------------------------


_AGENT_PARSER: Final = ua_parser.Parser(ua_parser.BasicResolver(load_builtins()))
"""ua-parser over the uap-core regexes, which Elastic's user_agent processor also uses; the plain
`re` resolver whatever else is installed, so results do not depend on optional packages."""

AGENT_PARSE_LIMIT: Final = KEYWORD_IGNORE_ABOVE
"""Characters of userAgent the parser sees. Its regexes backtrack: 1 MB of crafted text takes
seconds, 1,024 characters (user_agent.original's ignore_above) milliseconds. Past it a query
cannot read user_agent.original anyway; the product token the rules look for comes first."""


@lru_cache(maxsize=4096)
def _agent_family(agent: str) -> ua_parser.UserAgent | None:
    return _AGENT_PARSER.parse_user_agent(agent[:AGENT_PARSE_LIMIT])


@lru_cache(maxsize=4096)
def _agent_os(agent: str) -> ua_parser.OS | None:
    return _AGENT_PARSER.parse_os(agent[:AGENT_PARSE_LIMIT])


@lru_cache(maxsize=4096)
def _agent_device(agent: str) -> ua_parser.Device | None:
    return _AGENT_PARSER.parse_device(agent[:AGENT_PARSE_LIMIT])


def _version(*parts: str | None) -> str | None:
    """major[.minor[.patch[.build]]], stopping at the first missing part, as Elastic joins it."""
    joined: list[str] = []
    for part in parts:
        if part is None:
            break
        joined.append(part)
    return ".".join(joined) or None


def _agent_name(record: CloudTrailRecord) -> EcsValue:
    agent = _text(record.get("userAgent"))
    if agent is None:
        return None
    found = _agent_family(agent)
    return "Other" if found is None else found.family


def _agent_version(record: CloudTrailRecord) -> EcsValue:
    agent = _text(record.get("userAgent"))
    found = None if agent is None else _agent_family(agent)
    if found is None:
        return None
    return _version(found.major, found.minor, found.patch, found.patch_minor)


def _os_name(record: CloudTrailRecord) -> EcsValue:
    agent = _text(record.get("userAgent"))
    found = None if agent is None else _agent_os(agent)
    return None if found is None else found.family


def _os_version(record: CloudTrailRecord) -> EcsValue:
    agent = _text(record.get("userAgent"))
    found = None if agent is None else _agent_os(agent)
    if found is None:
        return None
    return _version(found.major, found.minor, found.patch, found.patch_minor)


def _os_full(record: CloudTrailRecord) -> EcsValue:
    name, version = _os_name(record), _os_version(record)
    return f"{name} {version}" if name is not None and version is not None else None


def _device_name(record: CloudTrailRecord) -> EcsValue:
    agent = _text(record.get("userAgent"))
    if agent is None:
        return None
    found = _agent_device(agent)
    return "Other" if found is None else found.family


# --- the registry ------------------------------------------------------------------------------


def _keyword(
    name: str,
    extract: Extractor,
    derivation: str,
    *,
    raw_source: str | None = None,
    ignore_above: int | None = None,
) -> EcsField:
    if ignore_above is None:
        return EcsField(name, "keyword", extract, raw_source, derivation)
    return EcsField(
        name, "keyword", _capped(extract, ignore_above), raw_source, derivation, extract,
        ignore_above,
    )


_PAYLOADS: Final = (
    ("request_parameters", "requestParameters", PAYLOAD_IGNORE_ABOVE),
    ("response_elements", "responseElements", PAYLOAD_IGNORE_ABOVE),
    ("additional_eventdata", "additionalEventData", KEYWORD_IGNORE_ABOVE),
    ("service_event_details", "serviceEventDetails", KEYWORD_IGNORE_ABOVE),
)
_FLATTENED_PREFIX: Final = "aws.cloudtrail.flattened."


def _multi_keyword(name: str, extract: Extractor, derivation: str) -> EcsField:
    return EcsField(name, "keyword", _doc_values(extract), None,
                    derivation + "; a query reads the values sorted and unique", extract)


def _static_fields() -> Iterator[EcsField]:
    yield EcsField("@timestamp", "date", _timestamp, derivation="eventTime, UTC, milliseconds")
    yield EcsField("event.provider", "keyword", _event_provider, "eventSource",
                   "eventSource")
    yield EcsField("event.action", "keyword", _event_action, "eventName", "eventName")
    yield _keyword("event.outcome", _event_outcome,
                   "failure when errorCode or errorMessage is set, else success; ConsoleLogin:"
                   " its responseElements.ConsoleLogin, lower-cased")
    yield _keyword("event.id", _event_id, "eventID", raw_source="eventID")
    yield _keyword("event.kind", _event_kind, 'always "event"')
    yield _multi_keyword("event.category", _event_category,
                         "Elastic's table of categorised API calls (eventName)")
    yield _multi_keyword("event.type", _event_type,
                         'Elastic\'s table of categorised API calls, else ["info"]')
    yield _keyword("event.dataset", _constant("aws.cloudtrail"),
                   '"aws.cloudtrail" (constant_keyword of the data stream)')
    yield _keyword("event.module", _constant("aws"), '"aws" (constant_keyword)')
    yield EcsField("event.ingested", "date", _ingested,
                   derivation="when the event reached the detector (Kafka message timestamp;"
                   " scan: eventTime), whole seconds as Fleet's final pipeline keeps it")
    yield _keyword("data_stream.type", _constant("logs"), '"logs"')
    yield _keyword("data_stream.dataset", _constant("aws.cloudtrail"), '"aws.cloudtrail"')
    yield _keyword("data_stream.namespace", _namespace,
                   'setting DETECTOR_DATA_STREAM_NAMESPACE (default "default")')
    yield _keyword("user.name", _user_name,
                   "userIdentity.userName; for AssumedRole/FederatedUser the session issuer's"
                   " userName; absent for AWS service actors")
    yield _keyword("user.id", _user_id, "userIdentity.principalId, absent for service actors")
    yield _keyword("user.email", _user_email, "user.name when it looks like an e-mail address")
    yield _keyword("user.target.name", _user_target_name, "requestParameters.userName")
    yield _keyword("user.target.id", _user_target_id, "responseElements.user.userId")
    yield _keyword("user.changes.name", _user_changes_name, "requestParameters.newUserName")
    yield _multi_keyword("related.user", _related_user, "the actor, target and new user names")
    yield _keyword("group.id", _group_id, "responseElements.group.groupId")
    yield _keyword("group.name", _group_name, "requestParameters.groupName")
    yield _keyword("service.name", _service_name,
                   "userIdentity.invokedBy for AWSService actors and service-linked roles")
    yield _keyword("source.address", _source_address, "sourceIPAddress",
                   raw_source="sourceIPAddress")
    yield EcsField("source.ip", "ip", _source_ip, "sourceIPAddress",
                   "sourceIPAddress when it is an IP address the `ip` type accepts (no leading"
                   " zeros)")
    yield _keyword("source.geo.city_name", _geo_city, "GeoIP City database (optional)")
    yield _keyword("source.geo.continent_name", _geo_continent, "GeoIP City database")
    yield _keyword("source.geo.country_iso_code", _geo_country_iso, "GeoIP City database")
    yield _keyword("source.geo.country_name", _geo_country_name, "GeoIP City database")
    yield _keyword("source.geo.region_iso_code", _geo_region_iso,
                   "GeoIP City database: country and most specific subdivision codes")
    yield _keyword("source.geo.region_name", _geo_region_name, "GeoIP City database")
    yield EcsField("source.geo.location", "geo_point", _geo_location,
                   derivation="GeoIP City database: {lat, lon}")
    yield EcsField("source.as.number", "long", _as_number,
                   derivation="GeoIP ASN database (optional): autonomous_system_number")
    yield _keyword("source.as.organization.name", _as_organization,
                   "GeoIP ASN database: autonomous_system_organization")
    yield _keyword("user_agent.original", _user_agent, "userAgent", raw_source="userAgent",
                   ignore_above=KEYWORD_IGNORE_ABOVE)
    yield _keyword("user_agent.name", _agent_name,
                   'userAgent (its first 1,024 characters) parsed by ua-parser with the uap-core'
                   ' regexes; "Other" when unknown')
    yield _keyword("user_agent.version", _agent_version, "userAgent parsed by ua-parser")
    yield _keyword("user_agent.os.name", _os_name, "userAgent parsed by ua-parser")
    yield _keyword("user_agent.os.version", _os_version, "userAgent parsed by ua-parser")
    yield _keyword("user_agent.os.full", _os_full, "user_agent.os.name and .version")
    yield _keyword("user_agent.device.name", _device_name,
                   'userAgent parsed by ua-parser; "Other" when unknown')
    yield _keyword("cloud.provider", _cloud_provider, '"aws"')
    yield _keyword("cloud.account.id", _cloud_account_id,
                   "userIdentity.accountId, else recipientAccountId")
    yield _keyword("cloud.region", _cloud_region, "awsRegion", raw_source="awsRegion")
    yield _keyword("tls.version_protocol", _tls_version(0), "tlsDetails.tlsVersion before 'v',"
                   " lower-cased")
    yield _keyword("tls.version", _tls_version(1), "tlsDetails.tlsVersion after 'v'")
    yield _keyword("tls.cipher", _nested_text("tlsDetails", "cipherSuite"),
                   "tlsDetails.cipherSuite")
    yield _keyword("tls.client.server_name", _nested_text("tlsDetails", "clientProvidedHostHeader"),
                   "tlsDetails.clientProvidedHostHeader")
    identity = "aws.cloudtrail.user_identity."
    yield _keyword(identity + "type", _identity_type, "userIdentity.type")
    yield _keyword(identity + "arn", _identity_arn, "userIdentity.arn")
    yield _keyword(identity + "access_key_id", _identity_access_key_id,
                   "userIdentity.accessKeyId")
    yield _keyword(identity + "invoked_by", _nested_text("userIdentity", "invokedBy"),
                   "userIdentity.invokedBy")
    session = identity + "session_context."
    yield _keyword(session + "mfa_authenticated",
                   _nested_text("userIdentity", "sessionContext", "attributes", "mfaAuthenticated"),
                   "userIdentity.sessionContext.attributes.mfaAuthenticated")
    yield EcsField(session + "creation_date", "date",
                   _nested_date("userIdentity", "sessionContext", "attributes", "creationDate"),
                   derivation="userIdentity.sessionContext.attributes.creationDate")
    yield _keyword(session + "ec2_role_delivery",
                   _nested_text("userIdentity", "sessionContext", "ec2RoleDelivery"),
                   "userIdentity.sessionContext.ec2RoleDelivery")
    for key, part in (("type", "type"), ("principal_id", "principalId"), ("arn", "arn"),
                      ("account_id", "accountId")):
        yield _keyword(session + "session_issuer." + key,
                       _nested_text("userIdentity", "sessionContext", "sessionIssuer", part),
                       f"userIdentity.sessionContext.sessionIssuer.{part}")
    for name, key in (("event_version", "eventVersion"), ("event_type", "eventType"),
                      ("request_id", "requestID"), ("api_version", "apiVersion"),
                      ("recipient_account_id", "recipientAccountId"),
                      ("vpc_endpoint_id", "vpcEndpointId"),
                      ("session_credential_from_console", "sessionCredentialFromConsole")):
        yield _keyword("aws.cloudtrail." + name, _nested_text(key), key)
    yield _keyword("aws.cloudtrail.event_category", _event_category_text, "eventCategory")
    yield _keyword("aws.cloudtrail.management_event", _boolean_text("managementEvent"),
                   "managementEvent, as the keyword text true/false")
    yield EcsField("aws.cloudtrail.read_only", "boolean", _boolean("readOnly"),
                   derivation="readOnly")
    yield _keyword("aws.cloudtrail.error_code", _error_code, "errorCode", raw_source="errorCode",
                   ignore_above=KEYWORD_IGNORE_ABOVE)
    yield _keyword("aws.cloudtrail.error_message", _error_message, "errorMessage",
                   raw_source="errorMessage", ignore_above=KEYWORD_IGNORE_ABOVE)
    for name, key, limit in _PAYLOADS:
        yield _keyword("aws.cloudtrail." + name, _payload_text(key),
                       f"{key} in Java Map.toString() form (keys in HashMap order, null/empty"
                       f" values dropped); ignore_above {limit}", ignore_above=limit)
    for name, key, _ in _PAYLOADS:
        yield EcsField(_FLATTENED_PREFIX + name, "flattened", _payload_flattened(key),
                       derivation=f"{key} as an object, when its text is under {FLATTENED_LIMIT}"
                       f" characters; any sub-field {_FLATTENED_PREFIX}{name}.<key path>"
                       " reads as keyword text")
    resource = "aws.cloudtrail.resources."
    for name, key in (("arn", "ARN"), ("account_id", "accountId"), ("type", "type")):
        yield _multi_keyword(resource + name, _resource_values(key),
                             f"resources[].{key}, de-duplicated as Elastic does")
    console = "aws.cloudtrail.console_login.additional_eventdata."
    yield _keyword(console + "login_to", _console_login("LoginTo"),
                   "ConsoleLogin: additionalEventData.LoginTo")
    yield EcsField(console + "mobile_version", "boolean", _console_login("MobileVersion"),
                   derivation='ConsoleLogin: additionalEventData.MobileVersion != "No"')
    yield EcsField(console + "mfa_used", "boolean", _console_login("MFAUsed"),
                   derivation='ConsoleLogin: additionalEventData.MFAUsed != "No"')


class FieldRegistry(Mapping[str, EcsField]):
    """The derivable fields by name; iterating lists the fixed ones, lookup also resolves any
    sub-field of a flattened object (`aws.cloudtrail.flattened.request_parameters.userName`)."""

    def __init__(self, fields: Iterable[EcsField]) -> None:
        self._fixed = {spec.name: spec for spec in fields}
        self._dynamic: dict[str, EcsField] = {}

    def __getitem__(self, name: str) -> EcsField:
        spec = self._fixed.get(name) or self._dynamic.get(name)
        if spec is not None:
            return spec
        if not isinstance(name, str):  # `None in registry` must be False, as for a dict
            raise KeyError(name)
        for root, key, _ in _PAYLOADS:
            prefix = f"{_FLATTENED_PREFIX}{root}."
            if name.startswith(prefix) and len(name) > len(prefix):
                sub_path = name[len(prefix):]
                spec = EcsField(name, "keyword", _flattened_key(key, sub_path),
                                derivation=f"{key}.{sub_path}, leaf values as text")
                self._dynamic[name] = spec
                return spec
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._fixed)

    def __len__(self) -> int:
        return len(self._fixed)


ECS_FIELDS: Mapping[str, EcsField] = FieldRegistry(_static_fields())
"""Every ECS field this module derives, by dotted name (flattened sub-fields on lookup)."""


def normalize(
    record: CloudTrailRecord, fields: Iterable[str] | None = None, *, stored: bool = False
) -> dict[str, EcsValue]:
    """Flat dotted ECS document with the requested fields (all when None); absent ones omitted.

    `stored` gives the values as Elastic's stored document holds them (what an alert carries)
    rather than as a query reads them. Raises KeyError for a field name not in ECS_FIELDS, so a
    typo in a rule fails loudly.
    """
    document: dict[str, EcsValue] = {}
    for name in ECS_FIELDS if fields is None else fields:
        spec = ECS_FIELDS[name]
        value = spec.stored(record) if stored else spec.extract(record)
        if value is not None:
            document[name] = value
    return document


def fields_table() -> str:
    """docs/ecs-fields.md: every fixed field a rule may read, its type and derivation."""
    lines = [
        "# ECS fields a rule may read",
        "",
        "Generated from `consumer.cloudtrail.normalize.ECS_FIELDS` by `scripts/ecs_fields_doc.py`;"
        " `tests/unit/test_normalize.py` fails when this file and the code differ.",
        "",
        "Derived as Elastic's AWS CloudTrail integration pipeline derives them. Any sub-field of"
        " a flattened object also resolves, e.g."
        " `aws.cloudtrail.flattened.request_parameters.userName`. *ignore_above*: a longer value"
        " reads as null in a query (Elasticsearch does not index it) but is kept in alerts.",
        "",
        "| field | type | ignore_above | derived from |",
        "| --- | --- | --- | --- |",
    ]
    for spec in ECS_FIELDS.values():
        limit = "" if spec.ignore_above is None else str(spec.ignore_above)
        derivation = spec.derivation.replace("|", "\\|")
        lines.append(f"| `{spec.name}` | {spec.type} | {limit} | {derivation} |")
    return "\n".join(lines) + "\n"
