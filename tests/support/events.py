"""CloudTrail records written for tests: realistic shapes, known verdicts."""

from __future__ import annotations

import uuid
from typing import Any

ACCOUNTS = ("111122223333", "444455556666", "777788889999")


def iam_user(name: str, account: str = ACCOUNTS[0]) -> dict[str, Any]:
    return {
        "type": "IAMUser",
        "principalId": f"AIDA{uuid.uuid5(uuid.NAMESPACE_DNS, name).hex[:16].upper()}",
        "arn": f"arn:aws:iam::{account}:user/{name}",
        "accountId": account,
        "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
        "userName": name,
    }


def event(
    *,
    event_id: str,
    event_name: str = "GetObject",
    event_source: str = "s3.amazonaws.com",
    caller: str = "alice",
    account: str = ACCOUNTS[0],
    request_parameters: dict[str, Any] | None = None,
    error_code: str | None = None,
    event_time: str = "2026-11-29T10:00:00Z",
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "eventVersion": "1.09",
        "userIdentity": iam_user(caller, account),
        "eventTime": event_time,
        "eventSource": event_source,
        "eventName": event_name,
        "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.7",
        "userAgent": "aws-cli/2.15.0 Python/3.11.6",
        "requestParameters": request_parameters,
        "responseElements": None,
        "requestID": str(uuid.uuid5(uuid.NAMESPACE_URL, event_id)),
        "eventID": event_id,
        "readOnly": event_name.startswith(("Get", "List", "Describe")),
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": account,
        "eventCategory": "Management",
    }
    if error_code is not None:
        record["errorCode"] = error_code
        record["errorMessage"] = "User is not authorized to perform this action"
    return record


def create_access_key(
    *, event_id: str, caller: str, target: str | None, account: str = ACCOUNTS[0],
    error_code: str | None = None,
) -> dict[str, Any]:
    return event(
        event_id=event_id,
        event_name="CreateAccessKey",
        event_source="iam.amazonaws.com",
        caller=caller,
        account=account,
        request_parameters=None if target is None else {"userName": target},
        error_code=error_code,
    )


def mixed_workload(count: int, every: int = 50) -> tuple[list[dict[str, Any]], list[str]]:
    """`count` events; every `every`-th one is a cross-user CreateAccessKey (a match), and
    near-misses (self-created keys, failed calls) are sprinkled in. Returns the events and the
    eventIDs that must alert, in production order."""
    events: list[dict[str, Any]] = []
    matches: list[str] = []
    for index in range(count):
        event_id = f"00000000-0000-4000-8000-{index:012d}"
        account = ACCOUNTS[index % len(ACCOUNTS)]
        if index % every == 0:
            target = f"target-{index % 7}"
            events.append(create_access_key(event_id=event_id, caller="mallory", target=target,
                                            account=account))
            matches.append(event_id)
        elif index % every == 7:
            events.append(create_access_key(event_id=event_id, caller="bob", target="bob",
                                            account=account))
        elif index % every == 13:
            events.append(create_access_key(event_id=event_id, caller="eve", target="carol",
                                            account=account, error_code="AccessDenied"))
        else:
            events.append(event(event_id=event_id, account=account,
                                request_parameters={"bucketName": "logs", "key": f"k{index}"}))
    return events, matches
