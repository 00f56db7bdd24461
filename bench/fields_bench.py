"""What reading one ECS field costs, per record, and its worst case on crafted values.

Run: .venv/bin/python -m bench.fields_bench [--records N] [--repeats N]

Data: real CloudTrail records from ../shared/datasets (generated ones when it is absent), in the
Avro record shape the rules see. Each field is read from every record once per pass, caches
cleared between passes, best pass reported. The hostile rows read one record built to be slow.
"""

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence

from bench import SHARED
from bench.rules_bench import _generated, _records_in
from consumer.cloudtrail.normalize import ECS_FIELDS, _agent_device, _agent_family, _agent_os
from consumer.cloudtrail.record import NotCloudTrailError, json_to_avro
from consumer.cloudtrail.types import CloudTrailRecord

FIELDS = (
    "event.action",
    "event.provider",
    "aws.cloudtrail.user_identity.session_context.session_issuer.arn",
    "aws.cloudtrail.request_parameters",
    "aws.cloudtrail.response_elements",
    "aws.cloudtrail.flattened.request_parameters.bucketName",
    "aws.cloudtrail.resources.arn",
    "user_agent.name",
    "user_agent.device.name",
    "event.ingested",
)


def _clear_caches() -> None:
    for cache in (_agent_family, _agent_os, _agent_device):
        cache.cache_clear()


def _best(read: Callable[[CloudTrailRecord], object], records: Sequence[CloudTrailRecord],
          repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        _clear_caches()
        started = time.perf_counter()
        for record in records:
            read(record)
        best = min(best, time.perf_counter() - started)
    return best / len(records) * 1e6


def _records(count: int) -> tuple[list[CloudTrailRecord], str]:
    raw: list[dict[str, object]] = []
    datasets = SHARED / "datasets"
    if datasets.is_dir():
        for path in sorted(datasets.rglob("*.json*")):
            raw.extend(_records_in(path))
            if len(raw) >= count:
                break
    origin = "../shared datasets" if raw else "generated"
    if not raw:
        raw = _generated(count, random.Random(7))
    records = []
    for item in raw[:count]:
        try:
            records.append(json_to_avro(item))
        except NotCloudTrailError:
            continue
    return records, origin


def _hostile() -> dict[str, CloudTrailRecord]:
    base = {"eventVersion": "1.08", "eventSource": "s3.amazonaws.com", "eventName": "PutObject"}
    return {
        "user_agent.name, 1 MB crafted userAgent": json_to_avro(
            {**base, "userAgent": "Mozilla/5.0 (" + "x; " * 340_000 + ")"}
        ),
        "aws.cloudtrail.request_parameters, 1 MB, 50,000 keys": json_to_avro(
            {**base, "requestParameters": {f"k{i}": "v" * 10 for i in range(50_000)}}
        ),
        "aws.cloudtrail.request_parameters, one 1 MB key": json_to_avro(
            {**base, "requestParameters": {"k" * 1_000_000: 1}}
        ),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    records, origin = _records(args.records)
    print(f"{len(records)} records ({origin}), best of {args.repeats} passes, caches cleared\n")
    print("| field | µs / record |\n|---|---:|")
    for name in FIELDS:
        print(f"| `{name}` | {_best(ECS_FIELDS[name].extract, records, args.repeats):.2f} |")
    print("\n| crafted record | ms |\n|---|---:|")
    for label, record in _hostile().items():
        name = label.split(",")[0]
        elapsed = _best(ECS_FIELDS[name].extract, [record], 1) / 1000
        print(f"| {label} | {elapsed:.1f} |")
    print(json.dumps({"records": len(records)}))


if __name__ == "__main__":
    main()
