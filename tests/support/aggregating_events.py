"""Hand-written CloudTrail event sequences for aggregating rules, with the rows each run yields.

Each `EventSequence` names a rule (ours, built in, or one of Elastic's files under
../shared/elastic-rules/aws/), the raw CloudTrail records in the order they arrive, the input
partition each arrives on (for the stream tests), and what Elastic's schedule makes of them:
`rows`, the rows of every run whose result is not empty (before suppression), and `alerts`, the
runs whose row becomes an alert once the rule's `alert_suppression` has folded the others in.

Times are offsets in seconds from `T0` (2026-11-29T10:00:00Z, a multiple of every interval
used here, so runs fall on round minutes). Every sequence covers the edges the stream must get
right, most of them several: events with equal timestamps, an event exactly on a run's time
(inside that run: windows are (t - from, t]) or exactly on a window's start (outside it), an
event that arrives after later ones (`late`: its eventTime is older than the latest already
seen on its partition by more than a run interval), and an idle partition (ACCOUNT_C's) that
never receives anything.
The expected values are worked out by hand from the rule's query, not computed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MmdbU32, MMDBWriter
from netaddr import IPSet

from consumer.cloudtrail.normalize import configure_enrichment
from consumer.rules.esql.aggregate import AggregatingQuery
from consumer.rules.loader import BUILTIN_PREFIX, LoadedRule, load_rule_set, parse_rule
from tests.conftest import shared_path

ACCOUNT_A = "111122223333"
ACCOUNT_B = "444455556666"
ACCOUNT_C = "777788889999"
"""ACCOUNT_C's partition is idle in every sequence."""

PARTITIONS = 3
IDLE_PARTITION = 2
PARTITION_OF_ACCOUNT = {ACCOUNT_A: 0, ACCOUNT_B: 1, ACCOUNT_C: IDLE_PARTITION}

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
CLI = "aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64.amzn.2023"
BOTO = "Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux#6.1 md/arch#x86_64 lang/python#3.11.6"
CONSOLE = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"

COMPANION = "builtin:aws_iam_user_created_access_keys_for_another_user_then_used.toml"
SELF_CREATED = "persistence_iam_user_self_created_access_key_subsequently_used.toml"
LAMBDA = "impact_lambda_high_frequency_invocation.toml"
BEDROCK = "exfiltration_bedrock_high_frequency_inference_api_probing.toml"
DISCOVERY = "discovery_multiple_discovery_api_calls_via_cli.toml"
QUOTAS = "discovery_servicequotas_multi_region_service_quota_requests.toml"
SESSION_TOKEN = "initial_access_iam_session_token_used_from_multiple_addresses.toml"
CONSOLE_LOGINS = "initial_access_console_login_iam_user_multiple_geolocations.toml"
CROSS_ACCOUNT = "execution_lambda_function_invoked_cross_account.toml"


def at(seconds: float) -> str:
    """CloudTrail's eventTime for T0 + seconds (whole seconds, as CloudTrail writes it)."""
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(seconds: float) -> str:
    """The same moment as ES|QL prints a date: milliseconds and Z."""
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def run_ms(seconds: float) -> int:
    """Epoch milliseconds of the run at T0 + seconds."""
    return int((T0 + timedelta(seconds=seconds)).timestamp() * 1000)


def iam_user(name: str, account: str, key: str) -> dict[str, Any]:
    """An IAM user signing with long-term key `key`."""
    return {
        "type": "IAMUser",
        "principalId": f"AIDA{uuid.uuid5(uuid.NAMESPACE_DNS, name + account).hex[:16].upper()}",
        "arn": f"arn:aws:iam::{account}:user/{name}",
        "accountId": account,
        "accessKeyId": key,
        "userName": name,
    }


def arn(name: str, account: str = ACCOUNT_A) -> str:
    return f"arn:aws:iam::{account}:user/{name}"


def call(
    name: str,
    *,
    seconds: float,
    identity: dict[str, Any],
    source: str = "iam.amazonaws.com",
    ip: str = "198.51.100.7",
    agent: str = CLI,
    region: str = "us-east-1",
    request: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    error: str | None = None,
    category: str = "Management",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One CloudTrail record; its eventID is derived from everything that makes it unique."""
    seed = f"{name}|{seconds}|{identity['arn']}|{ip}|{region}|{request}|{error}|{extra}"
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, seed))
    record: dict[str, Any] = {
        "eventVersion": "1.09",
        "userIdentity": identity,
        "eventTime": at(seconds),
        "eventSource": source,
        "eventName": name,
        "awsRegion": region,
        "sourceIPAddress": ip,
        "userAgent": agent,
        "requestParameters": request,
        "responseElements": response,
        "requestID": str(uuid.uuid5(uuid.NAMESPACE_OID, event_id)),
        "eventID": event_id,
        "readOnly": name.startswith(("Get", "List", "Describe")),
        "eventType": "AwsApiCall",
        "managementEvent": category == "Management",
        "recipientAccountId": identity["accountId"],
        "eventCategory": category,
    }
    if error is not None:
        record["errorCode"] = error
        record["errorMessage"] = "User is not authorized to perform this action"
    record.update(extra or {})
    return record


def create_access_key(
    *, seconds: float, caller: dict[str, Any], target: str | None, new_key: str | None,
    ip: str = "198.51.100.7", agent: str = CLI, error: str | None = None,
) -> dict[str, Any]:
    """CreateAccessKey as CloudTrail records it: the new key ID in responseElements (never
    the secret), nothing there when the call failed."""
    owner = target or caller["userName"]
    response = None if new_key is None or error else {"accessKey": {
        "accessKeyId": new_key, "status": "Active", "userName": owner,
        "createDate": (T0 + timedelta(seconds=seconds)).strftime("%b %d, %Y, %I:%M:%S %p"),
    }}
    return call(
        "CreateAccessKey", seconds=seconds, identity=caller, ip=ip, agent=agent,
        request=None if target is None else {"userName": target}, response=response,
        error=error,
    )


@dataclass(frozen=True)
class ExpectedRow:
    """One row of a run's result: `columns` gives every column the test checks (all of them
    for our rule); a multi-value is written as ES|QL returns one value (a scalar) or several (a
    list, compared as a set since VALUES() promises no order)."""

    run_seconds: float
    columns: dict[str, object]
    complete: bool = True
    """False when `columns` lists only some of the row's columns."""

    @property
    def run_ms(self) -> int:
        return run_ms(self.run_seconds)


@dataclass(frozen=True)
class EventSequence:
    name: str
    rule: str
    """`builtin:<file>` or a file name under ../shared/elastic-rules/aws/."""
    events: list[dict[str, Any]]
    """In arrival order."""
    rows: list[ExpectedRow]
    """Every non-empty run result, run by run (ascending), rows in the query's order."""
    alerts: list[int] = field(default_factory=list)
    """Indexes into `rows` of the rows that become alerts after suppression; the other rows
    are folded into the alert of their suppression group (or, without suppression, are
    alerts too)."""
    late: frozenset[str] = frozenset()
    """eventIDs that arrive after an event of their partition more than one interval later."""
    geoip: bool = False
    """Whether the rows need the GeoIP databases of `geoip_databases` (see `geoip`)."""

    def partitions(self) -> list[int]:
        """The input partition of each event when the input is keyed by account."""
        return [PARTITION_OF_ACCOUNT[event["userIdentity"]["accountId"]] for event in self.events]


def _late(events: list[dict[str, Any]], *late: dict[str, Any]) -> tuple[list[dict[str, Any]],
                                                                       frozenset[str]]:
    """`events` followed by the late ones (which arrive last)."""
    return [*events, *late], frozenset(event["eventID"] for event in late)


# --- our companion: a key created for another user, then used ----------------------------------

NEW_KEY_1 = "AKIANEWKEYFORBOB0001"
NEW_KEY_2 = "AKIANEWKEYFORCAROL02"
NEW_KEY_3 = "AKIANEWKEYFORDAVE003"
NEW_KEY_4 = "AKIANEWKEYFORERIN004"
NEW_KEY_SELF = "AKIASELFKEYFRANK0005"
MALLORY_KEY = "AKIAMALLORYOWNKEY001"
FRANK_KEY = "AKIAFRANKOWNKEY00001"
ATTACKER_IP = "203.0.113.50"
ATTACKER_AGENT = "python-requests/2.31.0"


def companion() -> EventSequence:
    """Four keys created by mallory for other users in account A, and a self-created one.

    - bob's key: created at T0, used twice at 59:59 in the same second (equal timestamps),
      once failing. First use 3599 s after: runs 11:00 and 11:05 see both (11:10's window
      starts at 10:04), so two rows, one alert (suppression by account and key).
    - carol's key: created at 10:04:00, exactly on the start of run 11:10's window; used at
      11:04:00, 3600 s later (the longest gap that qualifies). Run 11:05 sees both; run 11:10
      does not see the creation: one row.
    - dave's key: created at 10:20:00, used at 11:20:01, 3601 s later: no run alerts, though
      runs 11:25 and the next see both.
    - erin's key: created at 10:10:00 and never used; mallory's own key is used all along.
    - frank creates his own key (no userName) and uses it: the seed rule's non-match.
    - a failed CreateAccessKey for bob by eve: no key, no row.
    The use of carol's key arrives late, after dave's use (16 minutes later).
    """
    mallory = iam_user("mallory", ACCOUNT_A, MALLORY_KEY)
    bob, carol = iam_user("bob", ACCOUNT_A, NEW_KEY_1), iam_user("carol", ACCOUNT_A, NEW_KEY_2)
    dave = iam_user("dave", ACCOUNT_A, NEW_KEY_3)
    frank = iam_user("frank", ACCOUNT_B, FRANK_KEY)
    eve = iam_user("eve", ACCOUNT_B, "AKIAEVEOWNKEY0000001")
    carol_use = call("GetCallerIdentity", seconds=3840, identity=carol, source="sts.amazonaws.com",
                     ip=ATTACKER_IP, agent=ATTACKER_AGENT)
    events, late = _late([
        create_access_key(seconds=0, caller=mallory, target="bob", new_key=NEW_KEY_1),
        call("ListBuckets", seconds=60, identity=mallory, source="s3.amazonaws.com"),
        create_access_key(seconds=240, caller=mallory, target="carol", new_key=NEW_KEY_2),
        create_access_key(seconds=600, caller=mallory, target="erin", new_key=NEW_KEY_4),
        create_access_key(seconds=1200, caller=mallory, target="dave", new_key=NEW_KEY_3),
        create_access_key(seconds=1300, caller=frank, target=None, new_key=NEW_KEY_SELF),
        create_access_key(seconds=1300, caller=eve, target="bob", new_key=None,
                          error="AccessDenied"),
        call("ListUsers", seconds=1500, identity=iam_user("frank", ACCOUNT_B, NEW_KEY_SELF)),
        call("GetCallerIdentity", seconds=3599, identity=bob, source="sts.amazonaws.com",
             ip=ATTACKER_IP, agent=ATTACKER_AGENT),
        call("ListBuckets", seconds=3599, identity=bob, source="s3.amazonaws.com",
             ip=ATTACKER_IP, agent=ATTACKER_AGENT),
        call("CreateUser", seconds=3599, identity=bob, ip=ATTACKER_IP, agent=ATTACKER_AGENT,
             request={"userName": "backup-admin"}, error="AccessDenied"),
        call("ListBuckets", seconds=4500, identity=mallory, source="s3.amazonaws.com"),
        call("GetCallerIdentity", seconds=4801, identity=dave, source="sts.amazonaws.com",
             ip=ATTACKER_IP, agent=ATTACKER_AGENT),
    ], carol_use)
    bob_row = {
        "cloud.account.id": ACCOUNT_A,
        "Esql_priv.aws_cloudtrail_new_access_key_id": NEW_KEY_1,
        "Esql.creation_count": 1,
        "Esql.use_count": 3,
        "Esql.timestamp_creation_min": iso_ms(0),
        "Esql.timestamp_use_min": iso_ms(3599),
        "Esql.timestamp_use_max": iso_ms(3599),
        "Esql.user_name_creation_values": "mallory",
        "Esql.user_target_name_values": "bob",
        "Esql.aws_cloudtrail_user_identity_arn_creation_values": arn("mallory"),
        "Esql.aws_cloudtrail_user_identity_arn_use_values": arn("bob"),
        "Esql.source_ip_creation_values": "198.51.100.7",
        "Esql.source_ip_use_values": ATTACKER_IP,
        "Esql.user_agent_original_creation_values": CLI,
        "Esql.user_agent_original_use_values": ATTACKER_AGENT,
        "Esql.event_action_use_values": ["CreateUser", "GetCallerIdentity", "ListBuckets"],
        "Esql.event_provider_use_values": ["iam.amazonaws.com", "s3.amazonaws.com",
                                           "sts.amazonaws.com"],
        "Esql.event_outcome_use_values": ["failure", "success"],
    }
    carol_row = {
        **bob_row,
        "Esql_priv.aws_cloudtrail_new_access_key_id": NEW_KEY_2,
        "Esql.use_count": 1,
        "Esql.timestamp_creation_min": iso_ms(240),
        "Esql.timestamp_use_min": iso_ms(3840),
        "Esql.timestamp_use_max": iso_ms(3840),
        "Esql.user_target_name_values": "carol",
        "Esql.aws_cloudtrail_user_identity_arn_use_values": arn("carol"),
        "Esql.event_action_use_values": "GetCallerIdentity",
        "Esql.event_provider_use_values": "sts.amazonaws.com",
        "Esql.event_outcome_use_values": "success",
    }
    return EventSequence(
        name="companion_key_for_another_user_used_within_the_hour",
        rule=COMPANION,
        events=events,
        rows=[
            ExpectedRow(3600, bob_row),
            ExpectedRow(3900, bob_row),
            ExpectedRow(3900, carol_row),
        ],
        alerts=[0, 2],
        late=late,
    )


# --- Elastic's companion for self-created keys: its 35-minute look-back ---------------------------


def self_created() -> EventSequence:
    """frank creates his own key at T0 and uses it at 10:20 and 10:50; grace creates hers at
    10:30 and uses it at 11:05 (35 minutes later, exactly on run 11:05's time).

    The rule looks back 35 minutes over event.ingested (the scan's is eventTime): frank's pair
    is seen by runs 10:20, 10:25 and 10:30 (10:35's window starts at 10:00, excluded), and his
    use at 10:50, though within the hour the condition allows, changes nothing. grace's pair:
    run 11:05's window (10:30, 11:05] just misses her creation, so no row at all. Suppression
    by ARN and account (35m) leaves one alert, at 10:20.
    """
    new_frank, new_grace = "AKIAFRANKNEWKEY00001", "AKIAGRACENEWKEY00001"
    frank = iam_user("frank", ACCOUNT_A, FRANK_KEY)
    grace = iam_user("grace", ACCOUNT_A, "AKIAGRACEOWNKEY00001")
    events = [
        create_access_key(seconds=0, caller=frank, target=None, new_key=new_frank),
        call("ListBuckets", seconds=1200, identity=iam_user("frank", ACCOUNT_A, new_frank),
             source="s3.amazonaws.com", ip=ATTACKER_IP, agent=ATTACKER_AGENT),
        call("GetCallerIdentity", seconds=3000, identity=iam_user("frank", ACCOUNT_A, new_frank),
             source="sts.amazonaws.com", ip=ATTACKER_IP, agent=ATTACKER_AGENT),
        create_access_key(seconds=1800, caller=grace, target="grace", new_key=new_grace),
        call("ListUsers", seconds=3900, identity=iam_user("grace", ACCOUNT_A, new_grace)),
    ]

    def frank_row(uses: list[str]) -> dict[str, object]:
        return {
            "cloud.account.id": ACCOUNT_A,
            "aws.cloudtrail.user_identity.arn": arn("frank"),
            "Esql_priv.aws_cloudtrail_access_key_id_correlation": new_frank,
            "Esql.aws_cloudtrail_self_access_key_creation_count": 1,
            "Esql.aws_cloudtrail_created_access_key_use_count": len(uses),
            "Esql_priv.aws_cloudtrail_user_identity_access_key_id_creator_values": FRANK_KEY,
            "Esql_priv.aws_cloudtrail_response_elements_access_key_access_key_id_values":
                new_frank,
            "Esql_priv.aws_cloudtrail_user_identity_access_key_id_created_key_use_values":
                new_frank,
            "Esql.timestamp_self_access_key_creation_min": iso_ms(0),
            "Esql.timestamp_created_access_key_use_min": iso_ms(1200),
            "Esql.source_ip_self_access_key_creation_values": "198.51.100.7",
            "Esql.source_ip_created_access_key_use_values": ATTACKER_IP,
            "Esql.user_agent_original_self_access_key_creation_values": CLI,
            "Esql.user_agent_original_created_access_key_use_values": ATTACKER_AGENT,
            "Esql.event_action_created_access_key_use_values": uses[0] if len(uses) == 1 else uses,
        }

    return EventSequence(
        name="elastic_self_created_key_companion_sees_only_35_minutes",
        rule=SELF_CREATED,
        events=events,
        rows=[ExpectedRow(t, frank_row(["ListBuckets"])) for t in (1200, 1500, 1800)],
        alerts=[0],
    )


# --- Lambda invocations: a 1000-call threshold over a 61-minute look-back, hourly ----------------


def lambda_invocations() -> EventSequence:
    """Hourly runs over (t - 61m, t]. worker (account A) invokes 1000 times in run 11:00's
    window: 998 over 10:00:00-10:57:45 (ten at a time in the same second), one at 10:59:30
    and one exactly at 11:00:00 (the run's time: inside). A call at exactly 09:59:00 (the
    window's start: outside) does not count, so the window holds 1000, not 1001; run 10:00
    sees eleven. prober (account B) makes 999 calls: no row. A failed call does not count.
    Run 12:00 ((10:59, 12:00]) sees worker's last two calls and two at 11:30. One of worker's
    calls, at 10:25, arrives last, after those at 11:30.
    """
    worker = iam_user("worker", ACCOUNT_A, "AKIAWORKERKEY0000001")
    prober = iam_user("prober", ACCOUNT_B, "AKIAPROBERKEY0000001")
    fn = {"functionName": "arn:aws:lambda:us-east-1:111122223333:function:billing"}

    def invoke(seconds: float, who: dict[str, Any], index: int, *,
               error: str | None = None) -> dict[str, Any]:
        return call("Invoke", seconds=seconds, identity=who, source="lambda.amazonaws.com",
                    ip="198.51.100.7" if index % 2 else "198.51.100.8", category="Data",
                    request=fn, error=error, extra={"sharedEventID": f"{who['userName']}-{index}"})

    early = [invoke(i // 10 * 35, worker, i) for i in range(998) if i != 360]
    late_call = invoke(1500, worker, 360)
    events, late = _late([
        invoke(-60, worker, 10_000),
        *early,
        invoke(3570, worker, 10_001),
        invoke(3600, worker, 10_002),
        invoke(1000, worker, 10_003, error="TooManyRequestsException"),
        *[invoke(i * 3, prober, i) for i in range(999)],
        invoke(5400, worker, 10_004),
        invoke(5400, worker, 10_005),
    ], late_call)
    return EventSequence(
        name="lambda_high_frequency_invocation_threshold_on_window_edges",
        rule=LAMBDA,
        events=events,
        rows=[ExpectedRow(3600, {
            "aws.cloudtrail.user_identity.arn": arn("worker"),
            "Esql.invocation_count": 1000,
            "Esql.source_ips": ["198.51.100.7", "198.51.100.8"],
        })],
        alerts=[0],
        late=late,
    )


# --- Bedrock inference probing: 500 calls per model in an hour, every 10 minutes ----------------


def bedrock_probing() -> EventSequence:
    """Runs every 10 minutes over the last hour; suppression by ARN and account for 60m.

    probe (account A) calls Converse 500 times with one model between 10:00:00 and 10:04:09
    (two calls a second: equal timestamps) and 499 times with another: only the first model's
    group reaches 500. Run 10:00 sees the two calls at 10:00:00 (its own time); runs 10:10
    through 10:50 see all 500; run 11:00's window starts at 10:00:00 (outside), so it sees 498.
    Five rows; suppression by ARN and account for an hour leaves one alert, at 10:10.
    """
    probe = iam_user("probe", ACCOUNT_A, "AKIAPROBEKEY00000001")
    model_a = "anthropic.claude-3-haiku-20240307-v1:0"
    model_b = "amazon.titan-text-express-v1"

    def converse(seconds: float, model: str, index: int) -> dict[str, Any]:
        return call("Converse", seconds=seconds, identity=probe, source="bedrock.amazonaws.com",
                    ip=ATTACKER_IP, agent=BOTO, request={"modelId": model},
                    extra={"sharedEventID": f"{model}-{index}"})

    events = [converse(i // 2, model_a, i) for i in range(500)]
    events += [converse(i // 2, model_b, i) for i in range(499)]

    def row(run: float) -> ExpectedRow:
        return ExpectedRow(run, {
            "aws.cloudtrail.user_identity.arn": arn("probe"),
            "cloud.account.id": ACCOUNT_A,
            "Esql.model_id": model_a,
            "Esql.inference_call_count": 500,
            "Esql.timestamp_min": iso_ms(0),
            "Esql.timestamp_max": iso_ms(249),
            "Esql.event_ingested_min": iso_ms(0),
            "Esql.event_ingested_max": iso_ms(249),
            "Esql.event_action_values": "Converse",
            "Esql.source_ip_values": ATTACKER_IP,
            "Esql.user_name_values": "probe",
            "Esql.user_agent_original_values": BOTO,
            "Esql.aws_cloudtrail_user_identity_type_values": "IAMUser",
            "Esql.aws_cloudtrail_user_identity_access_key_id_values": probe["accessKeyId"],
            "Esql.source_as_organization_name_values": None,
            "Esql.source_geo_country_iso_code_values": None,
            "Esql.source_geo_city_name_values": None,
            "Esql.session_issuer_arn_values": None,
            "Esql.cloud_region_values": "us-east-1",
            "Esql.data_stream_namespace_values": "default",
        })

    return EventSequence(
        name="bedrock_inference_probing_threshold_per_model",
        rule=BEDROCK,
        events=events,
        rows=[row(t) for t in (600, 1200, 1800, 2400, 3000)],
        alerts=[0],
    )


# --- Discovery bursts via the CLI: more than 5 distinct calls in a 10-second bucket --------------

DISCOVERY_CALLS = (
    ("DescribeInstances", "ec2.amazonaws.com"),
    ("ListUsers", "iam.amazonaws.com"),
    ("GetAccountAuthorizationDetails", "iam.amazonaws.com"),
    ("ListBuckets", "s3.amazonaws.com"),
    ("DescribeDBInstances", "rds.amazonaws.com"),
    ("GetCallerIdentity", "sts.amazonaws.com"),
    ("ListKeys", "kms.amazonaws.com"),
)


def discovery_bursts() -> EventSequence:
    """Runs every 5 minutes over the last 6; buckets of 10 s (date_trunc) by ARN.

    - recon (A): six distinct calls all at exactly 10:05:00, a run's time (equal timestamps):
      run 10:05 sees them, and so does run 10:10 ((10:04, 10:10]): two rows, no suppression.
    - recon (A): six distinct calls across 10:20:05-10:20:14, split 3/3 by the bucket edge at
      10:20:10: nothing.
    - scout (B): five distinct calls repeated twice in 10:30:00-10:30:09: nothing (> 5 needed).
    - console (A): seven distinct calls with a console session: excluded.
    - recon (A): six distinct calls at 10:41:00-10:41:05, one via boto3 (not aws-cli): nothing.
    One of the 10:05:00 calls arrives late, after scout's burst.
    """
    recon = iam_user("recon", ACCOUNT_A, "AKIARECONKEY00000001")
    scout = iam_user("scout", ACCOUNT_B, "AKIASCOUTKEY00000001")
    console_user = iam_user("console", ACCOUNT_A, "ASIACONSOLESESSION01")

    def burst(who: dict[str, Any], times: list[float], calls: int, *, agent: str = CLI,
              extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return [
            call(DISCOVERY_CALLS[i % calls][0], seconds=times[i % len(times)], identity=who,
                 source=DISCOVERY_CALLS[i % calls][1],
                 agent=BOTO if agent == BOTO and i == 0 else CLI, extra=extra)
            for i in range(len(times))
        ]

    first = burst(recon, [300.0] * 6, 6)
    events, late = _late([
        *first[:5],
        *burst(recon, [1205, 1206, 1207, 1210, 1212, 1214], 6),
        *burst(scout, [1800 + i for i in range(10)], 5),
        *burst(console_user, [2100 + i for i in range(7)], 7,
               extra={"sessionCredentialFromConsole": "true"}),
        *burst(recon, [2460 + i for i in range(6)], 6, agent=BOTO),
    ], first[5])

    def row(run: float) -> ExpectedRow:
        return ExpectedRow(run, {
            "aws.cloudtrail.user_identity.arn": arn("recon"),
            "Esql.time_window_date_trunc": iso_ms(300),
            "Esql.event_action_count_distinct": 6,
            "Esql.event_action_values": [name for name, _ in DISCOVERY_CALLS[:6]],
            "Esql.event_timestamp_values": iso_ms(300),
            "Esql.aws_cloudtrail_user_identity_type_values": "IAMUser",
            "Esql.aws_cloudtrail_user_identity_access_key_id_values": recon["accessKeyId"],
            "Esql.source_ip_values": "198.51.100.7",
            "Esql.cloud_account_id_values": ACCOUNT_A,
            "Esql.event_provider_values": sorted({p for _, p in DISCOVERY_CALLS[:6]}),
            "Esql.user_agent_name_values": "aws-cli",
            "Esql.source_as_organization_name_values": None,
            "Esql.cloud_region_values": "us-east-1",
            "Esql.data_stream_namespace_values": "default",
        })

    return EventSequence(
        name="discovery_burst_via_cli_in_one_ten_second_bucket",
        rule=DISCOVERY,
        events=events,
        rows=[row(300), row(600)],
        alerts=[0, 1],
        late=late,
    )


# --- Service quota requests in many regions within 30 seconds ----------------------------------


def quota_requests() -> EventSequence:
    """Runs every 5 minutes over the last 6; buckets of 30 s by ARN; at least 10 regions and
    10 calls for EC2's vCPU quota L-1216C47A.

    - miner (A): ten regions at 10:12:20-10:12:29 (two in the same second): run 10:15 alerts.
    - miner (A): nine regions at 10:22:00 plus a tenth at 10:22:30 (the next bucket): nothing.
    - miner (A): ten regions for another quota code at 10:32:00: nothing.
    """
    miner = iam_user("miner", ACCOUNT_A, "AKIAMINERKEY00000001")
    regions = ["us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-west-2",
               "eu-central-1", "ap-south-1", "ap-northeast-1", "sa-east-1"]

    def quota(seconds: float, region: str, code: str = "L-1216C47A") -> dict[str, Any]:
        return call("GetServiceQuota", seconds=seconds, identity=miner, region=region,
                    source="servicequotas.amazonaws.com",
                    request={"serviceCode": "ec2", "quotaCode": code})

    events = [quota(740 + min(i, 8), region) for i, region in enumerate(regions)]
    events += [quota(1320, region) for region in regions[:9]] + [quota(1350, regions[9])]
    events += [quota(1920, region, "L-34B43A08") for region in regions]
    return EventSequence(
        name="service_quota_requests_in_ten_regions_within_thirty_seconds",
        rule=QUOTAS,
        events=events,
        rows=[ExpectedRow(900, {
            "Esql.time_window_date_trunc": iso_ms(720),
            "aws.cloudtrail.user_identity.arn": arn("miner"),
            "Esql.cloud_region_count_distinct": 10,
            "Esql.event_count": 10,
            "Esql.aws_cloudtrail_request_parameters_values":
                "{serviceCode=ec2, quotaCode=L-1216C47A}",
            "Esql.event_timestamp_values": [iso_ms(740 + i) for i in range(9)],
            "Esql.aws_cloudtrail_user_identity_type_values": "IAMUser",
            "Esql.aws_cloudtrail_user_identity_access_key_id_values": miner["accessKeyId"],
            "Esql.source_ip_values": "198.51.100.7",
            "Esql.cloud_account_id_values": ACCOUNT_A,
            "Esql.user_agent_original_values": CLI,
            "Esql.source_as_organization_name_values": None,
            "Esql.cloud_region_values": regions,
            "Esql.data_stream_namespace_values": "default",
        })],
        alerts=[0],
    )


# --- A session token used from two networks, cities and agents within 30 minutes -------------

HOME_IP, HOME_CITY, HOME_ORG = "198.51.100.7", "Seattle", "EXAMPLE-TRANSIT"
AWAY_CITY, AWAY_ORG = "Lagos", "EXAMPLE-HOSTING"
"""What the GeoIP databases of `geoip_databases` say of 198.51.100.0/24 and of ATTACKER_IP's
203.0.113.0/24."""


def geoip_databases(directory: Path) -> tuple[Path, Path]:
    """A City and an ASN database in MaxMind's format for the two networks the sequences use."""
    city, asn = directory / "city.mmdb", directory / "asn.mmdb"
    places = [("198.51.100.0/24", HOME_CITY, "US", 64500, HOME_ORG),
              ("203.0.113.0/24", AWAY_CITY, "NG", 64501, AWAY_ORG)]
    city_writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    asn_writer = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    for network, name, country, number, organization in places:
        city_writer.insert_network(IPSet([network]), {
            "city": {"names": {"en": name}}, "country": {"iso_code": country}})
        asn_writer.insert_network(IPSet([network]), {
            "autonomous_system_number": MmdbU32(number),
            "autonomous_system_organization": organization})
    city_writer.to_db_file(str(city))
    asn_writer.to_db_file(str(asn))
    return city, asn


@contextmanager
def geoip(directory: Path) -> Iterator[None]:
    """Normalize with `geoip_databases` configured, as a deployment with GeoIP would."""
    city, asn = geoip_databases(directory)
    configure_enrichment(city_database=city, asn_database=asn)
    try:
        yield
    finally:
        configure_enrichment()


def session_token_addresses() -> EventSequence:
    """Runs every 15 minutes over the last 32; buckets of 30 minutes by access key; needs GeoIP.

    traveler's session token (ASIA..., an IAM user's GetSessionToken credentials) is used at
    10:01 from home (sts, aws-cli), at 10:10 twice in the same second from abroad (s3, another
    agent) and at 10:15:00, run 10:15's own time, from home (ec2): two addresses, networks,
    cities and agents, three services: "high". Runs 10:15 and 10:30 each see all four (no
    suppression: two alerts); run 10:45 sees only the 10:15 call.
    homebody does the same at 10:02 and 10:11, but CloudTrail writes sessionCredentialFromConsole
    only when it is true, and the rule's `not session_credential_from_console == "true"` is null
    (not true) for a missing field: ES|QL's WHERE drops those rows, so homebody never alerts.
    traveler's calls say "false" explicitly, which CloudTrail itself never writes.
    """
    traveler = iam_user("traveler", ACCOUNT_A, "ASIATRAVELERSESSION1")
    homebody = iam_user("homebody", ACCOUNT_A, "ASIAHOMEBODYSESSION1")
    marked = {"sessionCredentialFromConsole": "false"}

    def uses(who: dict[str, Any], extra: dict[str, Any] | None, offset: float
             ) -> list[dict[str, Any]]:
        return [
            call("GetCallerIdentity", seconds=60 + offset, identity=who,
                 source="sts.amazonaws.com", extra=extra),
            call("ListBuckets", seconds=600 + offset, identity=who, source="s3.amazonaws.com",
                 ip=ATTACKER_IP, agent=ATTACKER_AGENT, extra=extra),
            call("ListBuckets", seconds=600 + offset, identity=who, source="s3.amazonaws.com",
                 ip=ATTACKER_IP, agent=ATTACKER_AGENT,
                 extra={**(extra or {}), "sharedEventID": "again"}),
        ]

    events = [*uses(traveler, marked, 0), *uses(homebody, None, 60)]
    events.append(call("DescribeInstances", seconds=900, identity=traveler,
                       source="ec2.amazonaws.com", extra=marked))
    away = f"{ATTACKER_IP}"

    def row(run: float) -> ExpectedRow:
        return ExpectedRow(run, {
            "Esql.time_window_date_trunc": iso_ms(0),
            "Esql.activity_type": "multiple_ip_network_city_user_agent",
            "Esql.activity_fidelity_score": "high",
            "Esql.event_count": 4,
            "Esql.timestamp_first_seen": iso_ms(60),
            "Esql.timestamp_last_seen": iso_ms(900),
            "Esql.aws_cloudtrail_user_identity_arn_values": arn("traveler"),
            "Esql.aws_cloudtrail_user_identity_access_key_id_values": traveler["accessKeyId"],
            "Esql.event_provider_count_distinct": 3,
            "Esql.event_action_values": ["DescribeInstances", "GetCallerIdentity", "ListBuckets"],
            "Esql.event_provider_values": ["ec2.amazonaws.com", "s3.amazonaws.com",
                                           "sts.amazonaws.com"],
            "Esql.source_ip_values": [HOME_IP, away],
            "Esql.user_agent_original_values": [CLI, ATTACKER_AGENT],
            "Esql.source_ip_user_agent_pair_values": [f"{HOME_IP} - {CLI}",
                                                      f"{away} - {ATTACKER_AGENT}"],
            "Esql.source_geo_city_name_values": [HOME_CITY, AWAY_CITY],
            "Esql.source_ip_city_pair_values": [f"{HOME_IP} - {HOME_CITY}",
                                                f"{away} - {AWAY_CITY}"],
            "Esql.source_network_org_name_values": [HOME_ORG, AWAY_ORG],
            "Esql.source_ip_network_pair_values": [f"{HOME_IP}-{HOME_ORG}", f"{away}-{AWAY_ORG}"],
            "Esql.source_ip_count_distinct": 2,
            "Esql.user_agent_original_count_distinct": 2,
            "Esql.source_geo_city_name_count_distinct": 2,
            "Esql.source_network_org_name_count_distinct": 2,
            "Esql.data_stream_namespace_values": "default",
        })

    return EventSequence(
        name="session_token_used_from_two_networks_cities_and_agents",
        rule=SESSION_TOKEN,
        events=events,
        rows=[row(900), row(1800)],
        alerts=[0, 1],
        geoip=True,
    )


# --- Console logins from two countries within 65 minutes ----------------------------------------


def console_logins() -> EventSequence:
    """Runs every 10 minutes over the last 65; needs GeoIP (home is US, abroad NG).

    - pilot logs in at 10:05:00 from home and at 11:05:00 from abroad: the only run after the
      second login that could read the first, 11:10, starts exactly at 10:05:00 (outside). No
      row, though the logins are an hour apart.
    - rover does the same one minute later (10:06, 11:06): run 11:10 reads both.
    - tourist logs in from both countries in the same second, 10:30:00 (a run's time): runs
      10:30 to 11:30 each read both, seven rows (no suppression: seven alerts).
    - a failed login from abroad by pilot at 10:30 changes nothing.
    tourist's login from home arrives last, after pilot's at 11:05.
    """
    def login(name: str, seconds: float, ip: str, outcome: str = "Success") -> dict[str, Any]:
        identity = {key: value for key, value in iam_user(name, ACCOUNT_A, "").items()
                    if key != "accessKeyId"}
        return call("ConsoleLogin", seconds=seconds, identity=identity,
                    source="signin.amazonaws.com", ip=ip, agent=CONSOLE,
                    response={"ConsoleLogin": outcome},
                    extra={"additionalEventData": {"MFAUsed": "No", "LoginTo":
                                                   "https://console.aws.amazon.com/"}})

    events, late = _late([
        login("pilot", 300, HOME_IP),
        login("pilot", 3900, ATTACKER_IP),
        login("rover", 360, HOME_IP),
        login("rover", 3960, ATTACKER_IP),
        login("pilot", 1800, ATTACKER_IP, outcome="Failure"),
        login("tourist", 1800, ATTACKER_IP),
    ], login("tourist", 1800, HOME_IP))

    def row(run: float, name: str, first: float, last: float) -> ExpectedRow:
        return ExpectedRow(run, {
            "aws.cloudtrail.user_identity.arn": arn(name),
            "cloud.account.id": ACCOUNT_A,
            "Esql.source_geo_country_iso_code_count_distinct": 2,
            "Esql.source_as_organization_name_count_distinct": 2,
            "Esql.source_ip_values": [HOME_IP, ATTACKER_IP],
            "Esql.source_geo_country_iso_code_values": ["NG", "US"],
            "Esql.timestamp_min": iso_ms(first),
            "Esql.timestamp_max": iso_ms(last),
        })

    tourist = [row(run, "tourist", 1800, 1800) for run in range(1800, 5401, 600)]
    return EventSequence(
        name="console_logins_from_two_countries_within_the_look_back",
        rule=CONSOLE_LOGINS,
        events=events,
        rows=[*tourist[:5], row(4200, "rover", 360, 3960), *tourist[5:]],
        alerts=list(range(8)),
        late=late,
        geoip=True,
    )


# --- Lambda functions invoked from another account --------------------------------------------


def cross_account_invocations() -> EventSequence:
    """Hourly runs over the last 61 minutes; every caller invoking a function of another
    account is a row (no threshold), by caller ARN and the two accounts.

    integrator (account B) invokes account A's billing and reports functions twice in the same
    second at 10:10, then billing at 10:59:59, at 11:00:00 (run 11:00's own time) and at 11:30.
    Run 11:00 reads the first four; run 12:00 ((10:59, 12:00]) the last three. worker invoking
    its own account's function, and API Gateway invoking one on integrator's behalf
    (invokedBy), are not rows. One of the 10:10 calls arrives last, after the one at 11:30.
    """
    integrator = iam_user("integrator", ACCOUNT_B, "AKIAINTEGRATORKEY001")
    worker = iam_user("worker", ACCOUNT_A, "AKIAWORKERKEY0000001")

    def function(name: str) -> str:
        return f"arn:aws:lambda:us-east-1:{ACCOUNT_A}:function:{name}"

    def invoke(seconds: float, who: dict[str, Any], name: str, tag: str) -> dict[str, Any]:
        return call("Invoke", seconds=seconds, identity=who, source="lambda.amazonaws.com",
                    category="Data", request={"functionName": function(name)},
                    extra={"sharedEventID": tag, "resources": [
                        {"type": "AWS::Lambda::Function", "ARN": function(name),
                         "accountId": ACCOUNT_A}]})

    via_gateway = {**integrator, "invokedBy": "apigateway.amazonaws.com"}
    events, late = _late([
        invoke(600, integrator, "billing", "a"),
        invoke(3599, integrator, "billing", "c"),
        invoke(3600, integrator, "billing", "d"),
        invoke(1200, worker, "billing", "e"),
        invoke(1500, via_gateway, "reports", "f"),
        invoke(5400, integrator, "billing", "g"),
    ], invoke(600, integrator, "reports", "b"))

    def row(run: float, functions: object, count: int) -> ExpectedRow:
        return ExpectedRow(run, {
            "aws.cloudtrail.user_identity.arn": arn("integrator", ACCOUNT_B),
            "Esql.caller_account": ACCOUNT_B,
            "Esql.function_account": ACCOUNT_A,
            "Esql.function_arns": functions,
            "Esql.invocation_count": count,
            "Esql.source_ips": "198.51.100.7",
        })

    return EventSequence(
        name="lambda_functions_invoked_from_another_account",
        rule=CROSS_ACCOUNT,
        events=events,
        rows=[row(3600, [function("billing"), function("reports")], 4),
              row(7200, function("billing"), 3)],
        alerts=[0, 1],
        late=late,
    )


def sequences() -> list[EventSequence]:
    """Every sequence, the companion first."""
    return [companion(), self_created(), lambda_invocations(), bedrock_probing(),
            discovery_bursts(), quota_requests(), session_token_addresses(), console_logins(),
            cross_account_invocations()]


# --- loading the rules and comparing rows --------------------------------------------------------


def load(rule: str) -> LoadedRule:
    """The sequence's rule, compiled: a built-in by its source name, else Elastic's file from
    ../shared (a clean skip without it). A rule the engine skips fails the test with why."""
    if rule.startswith(BUILTIN_PREFIX):
        entry = next(entry for entry in load_rule_set().entries if entry.source == rule)
    else:
        path = shared_path("elastic-rules", "aws", rule)
        entry = parse_rule(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(entry, LoadedRule):
        pytest.fail(f"{rule} is skipped: {entry.reason}")
    return entry


def aggregation_of(rule: LoadedRule) -> AggregatingQuery:
    """The rule's STATS query (a failure when the rule does not aggregate)."""
    if rule.aggregation is None:
        pytest.fail(f"{rule.source} does not aggregate")
    return rule.aggregation


def _sorted_values(value: object) -> object:
    if isinstance(value, list):
        return sorted(value, key=lambda item: json.dumps(item, sort_keys=True))
    return value


def normalized_rows(rows: Iterable[Mapping[str, object]]) -> list[str]:
    """Rows as comparable text: multi-values sorted (VALUES() promises no order), rows in a
    fixed order (STATS promises none either)."""
    return sorted(
        json.dumps({name: _sorted_values(value) for name, value in row.items()}, sort_keys=True)
        for row in rows
    )
