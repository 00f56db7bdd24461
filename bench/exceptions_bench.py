"""What exceptions cost: microseconds per matching event judged, with value lists of 65,536.

Run: .venv/bin/python -m bench.exceptions_bench [--calls N]

Exceptions are only consulted for an event a rule already matched (they can only remove a
match), so their cost per consumed event is this figure times the match rate (about 0.1% on the
bench mix). Each row judges the same matching CreateAccessKey record with the seed rule and one
exception item whose test fails, the worst case: every item is tried.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from consumer.cloudtrail.decode import JsonDecoder
from consumer.cloudtrail.record import json_to_avro
from consumer.rules import load_rules
from consumer.rules.detector import Detector
from consumer.rules.exceptions import load_exceptions, rule_links
from tests.support.events import create_access_key

SEED = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
LIST_SIZE = 65_536

HEADER = f"""\
[metadata]
creation_date = "2026/12/01"
list_name = "bench"
rule_ids = ["{SEED}"]
updated_date = "2026/12/01"

[[exceptions]]
[exceptions.container]
list_id = "bench"
name = "bench"

[[exceptions.items]]
name = "bench"
[[exceptions.items.entries]]
"""

ENTRIES = {
    "match": 'field = "user.name"\ntype = "match"\noperator = "included"\nvalue = "nobody"',
    "wildcard": (
        'field = "aws.cloudtrail.user_identity.arn"\ntype = "wildcard"\n'
        'operator = "included"\nvalue = "arn:aws:iam::*:user/svc-*"'
    ),
    "keyword list": (
        'field = "user.name"\ntype = "list"\noperator = "included"\n'
        '[exceptions.items.entries.list]\nid = "names.txt"\ntype = "keyword"'
    ),
    "ip list": (
        'field = "source.ip"\ntype = "list"\noperator = "included"\n'
        '[exceptions.items.entries.list]\nid = "ips.txt"\ntype = "ip"'
    ),
    "ip_range list": (
        'field = "source.ip"\ntype = "list"\noperator = "included"\n'
        '[exceptions.items.entries.list]\nid = "ranges.txt"\ntype = "ip_range"'
    ),
}


def _write_lists(folder: Path) -> None:
    (folder / "names.txt").write_text(
        "\n".join(f"user-{index}" for index in range(LIST_SIZE)), encoding="utf-8"
    )
    (folder / "ips.txt").write_text(
        "\n".join(f"10.{index >> 8}.{index & 255}.1" for index in range(LIST_SIZE)),
        encoding="utf-8",
    )
    (folder / "ranges.txt").write_text(
        "\n".join(f"10.{index >> 8}.{index & 255}.0/25" for index in range(LIST_SIZE)),
        encoding="utf-8",
    )


def _per_call_us(detector: Detector, calls: int) -> float:
    record = json_to_avro(create_access_key(event_id="e", caller="mallory", target="carol"))
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            detector.judge(record)
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args(argv)
    rules = load_rules()
    baseline = _per_call_us(Detector(JsonDecoder(), rules), args.calls)
    print("| exception item | load ms | µs per matching event | added µs |")
    print("|---|---:|---:|---:|")
    print(f"| none | 0 | {baseline:.2f} | 0 |")
    with tempfile.TemporaryDirectory() as scratch:
        for name, entry in ENTRIES.items():
            folder = Path(scratch) / name.replace(" ", "-")
            folder.mkdir()
            _write_lists(folder)
            (folder / "bench.toml").write_text(HEADER + entry + "\n", encoding="utf-8")
            started = time.perf_counter()
            exceptions = load_exceptions(folder, rule_links(rules))
            load_ms = (time.perf_counter() - started) * 1000
            cost = _per_call_us(Detector(JsonDecoder(), rules, exceptions=exceptions), args.calls)
            print(f"| {name} | {load_ms:.0f} | {cost:.2f} | {cost - baseline:.2f} |")


if __name__ == "__main__":
    main()
