"""Rule evaluation cost per event, with and without the byte prefilter, and the batch screen's
cost with 1, 23 and 100+ rules loaded.

Run: .venv/bin/python -m bench.rules_bench [--events N] [--repeats N] [--shared DIR]

Data: real CloudTrail records from ../shared/datasets (mostly non-IAM traffic) with the real
CreateAccessKey records mixed in at 0.1%; generated records when ../shared is absent. Each
record is Avro-encoded with the project schema, as the service receives it. Prints markdown
tables of mean microseconds per event (best of `--repeats` passes).

The rule-count table screens the same events for the literal sets of Elastic's AWS rules
(../shared/elastic-rules/aws: each rule's `event.provider` and `event.action` values, read from
its query whatever its language, as the prefilter would derive them; rules without an action
literal are left out, since one unconstrained rule turns the screen off): the seed rule alone,
the seed with 22 more (the ES|QL rules first), and the seed with all of them. Each matcher
screens with the same anchors: `bytes.find` per literal (the screen before it had a
multi-pattern matcher), Aho-Corasick (ahocorasick-rs), Hyperscan, and the one the detector picks.
"""

import argparse
import gzip
import io
import json
import random
import re
import time
import tomllib
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from bench import SHARED
from consumer.cloudtrail.record import READER_SCHEMA, NotCloudTrailError, json_to_avro
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.rules import CombinedPrefilter, CompiledQuery, Prefilter, load_rules
from consumer.rules.prefilter import INDEX_FROM
from consumer.rules.screen import (
    HAVE_HYPERSCAN,
    MULTI_PATTERN,
    AhoCorasick,
    BatchScreen,
    Hyperscan,
    MultiPattern,
)

SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
HARDENED_ID = "32403725-2adc-4bc1-a434-02793697b9bd"
CREATE_KEY_SHARE = 0.001


def _records_in(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    try:
        documents: list[Any] = [json.loads(text)]
    except json.JSONDecodeError:
        documents = [json.loads(line) for line in text.splitlines() if line.strip()]
    for document in documents:
        items = document.get("Records", [document]) if isinstance(document, dict) else document
        yield from (item for item in items if isinstance(item, dict) and "eventName" in item)


def _generated(count: int, rng: random.Random) -> list[dict[str, Any]]:
    services = [
        ("s3.amazonaws.com", "GetObject"),
        ("ec2.amazonaws.com", "DescribeInstances"),
        ("sts.amazonaws.com", "AssumeRole"),
        ("kms.amazonaws.com", "Decrypt"),
        ("iam.amazonaws.com", "ListUsers"),
    ]
    records = []
    for index in range(count):
        source, name = rng.choice(services)
        records.append(
            {
                "eventVersion": "1.08",
                "eventTime": "2025-01-15T10:00:00Z",
                "eventSource": source,
                "eventName": name,
                "awsRegion": "us-east-1",
                "sourceIPAddress": f"203.0.113.{index % 250}",
                "userAgent": "aws-sdk-go-v2/1.30.0 os/linux lang/go#1.22",
                "userIdentity": {
                    "type": "AssumedRole",
                    "arn": "arn:aws:sts::111122223333:assumed-role/app/i-0abc",
                    "accountId": "111122223333",
                    "sessionContext": {
                        "sessionIssuer": {"type": "Role", "userName": "app"},
                        "attributes": {"creationDate": "2025-01-15T09:00:00Z"},
                    },
                },
                "requestParameters": {"bucketName": "logs", "key": f"2025/01/15/{index}.gz"},
                "eventID": f"00000000-0000-0000-0000-{index:012d}",
                "readOnly": True,
                "eventType": "AwsApiCall",
                "recipientAccountId": "111122223333",
            }
        )
    return records


def _create_key_records(datasets: Path) -> list[dict[str, Any]]:
    path = datasets / "createaccesskey-real-events" / "events.jsonl.gz"
    if path.exists():
        return list(_records_in(path))
    return [
        {
            "eventVersion": "1.08",
            "eventSource": "iam.amazonaws.com",
            "eventName": "CreateAccessKey",
            "userIdentity": {"type": "IAMUser", "userName": "alice"},
            "requestParameters": {"userName": "bob"},
        }
    ]


def realistic_mix(events: int, rng: random.Random, datasets: Path) -> list[dict[str, Any]]:
    """Mostly everyday traffic, with CreateAccessKey at CREATE_KEY_SHARE of the events."""
    background: list[dict[str, Any]] = []
    if datasets.is_dir():
        for path in sorted(datasets.rglob("*.json*")):
            background.extend(
                record for record in _records_in(path) if record["eventName"] != "CreateAccessKey"
            )
    if not background:
        background = _generated(5000, rng)
    create_keys = _create_key_records(datasets)
    mix = [rng.choice(background) for _ in range(events)]
    for position in range(0, events, round(1 / CREATE_KEY_SHARE)):
        mix[position] = rng.choice(create_keys)
    return mix


def avro_payload(record: CloudTrailRecord) -> bytes:
    buffer = io.BytesIO()
    schemaless_writer(buffer, READER_SCHEMA, record)
    return buffer.getvalue()


def decode(payload: bytes) -> CloudTrailRecord:
    record = schemaless_reader(io.BytesIO(payload), READER_SCHEMA, None)
    assert isinstance(record, dict)
    return record


def best_per_event(run: Callable[[], object], events: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / events * 1e6


class FindEachScreen:
    """The batch screen before the multi-pattern matcher: one `bytes.find` pass over the joined
    batch per anchor literal, jumping to the next message after each hit (consumer/rules/
    prefilter.py at c6ddab1, kept here as the baseline)."""

    REVIEW_EVERY = 500

    def __init__(self, groups_per_prefilter: Sequence[tuple[tuple[bytes, ...], ...]],
                 always: tuple[bytes, ...] = ()) -> None:
        self._groups = groups_per_prefilter
        self._always = always
        self.anchors: tuple[bytes, ...] = ()
        self._until_review = 0

    def candidates(self, payloads: Sequence[bytes], sizes: Sequence[int]) -> list[int]:
        joined = b"".join(payloads)
        if not self._until_review:
            chosen = (min(groups, key=lambda group: sum(map(joined.count, group)))
                      for groups in self._groups)
            self.anchors = tuple(dict.fromkeys([*self._always, *(x for g in chosen for x in g)]))
            self._until_review = self.REVIEW_EVERY
        self._until_review -= 1
        ends = list(accumulate(sizes))
        found: set[int] = set()
        for literal in self.anchors:
            start = joined.find(literal)
            while start >= 0:
                index = bisect_right(ends, start)
                found.add(index)
                start = joined.find(literal, ends[index])
        return sorted(found)


_LITERAL_FIELD = re.compile(
    r'event\.(action|provider)\s*(?:==|:|\bin\b|\bIN\b)\s*(\([^)]*\)|"[^"]*"|[\w.-]+)'
)


def rule_literals(query: str) -> tuple[tuple[bytes, ...], ...]:
    """The (provider, action) literal groups a query's equality and IN tests on those fields
    require, in any of Elastic's query languages; wildcard values are left out."""
    groups: dict[str, set[str]] = {}
    for match in _LITERAL_FIELD.finditer(query):
        quoted = re.findall(r'"([^"]+)"', match[2])
        words = quoted or [w for w in re.findall(r"[\w.-]+", match[2]) if w.lower() not in
                           ("or", "and")]
        values = {word for word in words if "*" not in word and "?" not in word}
        if values:
            groups.setdefault(match[1], set()).update(values)
    if "action" not in groups:
        return ()
    return tuple(tuple(sorted(value.encode() for value in values)) for values in groups.values())


def elastic_literal_sets(rules_dir: Path) -> list[tuple[tuple[bytes, ...], ...]]:
    """Each Elastic rule's literal groups, the ES|QL rules first."""
    found: list[tuple[bool, str, tuple[tuple[bytes, ...], ...]]] = []
    for path in sorted(rules_dir.glob("*.toml")):
        rule = tomllib.loads(path.read_text(encoding="utf-8"))["rule"]
        groups = rule_literals(rule.get("query") or "")
        if groups:
            found.append((rule.get("language") != "esql", path.name, groups))
    return [groups for _, _, groups in sorted(found)]


def screen_table(
    payloads: list[bytes], texts: list[bytes], seed: CompiledQuery, rules_dir: Path, repeats: int
) -> None:
    """The batch screen's cost per event by number of rules and by matcher."""
    seed_prefilter = Prefilter.for_query(seed)
    elastic = [Prefilter(groups, groups) for groups in elastic_literal_sets(rules_dir)]
    rule_sets = {1: [seed_prefilter], 23: [seed_prefilter, *elastic[:22]]}
    rule_sets[1 + len(elastic)] = [seed_prefilter, *elastic]
    matchers: dict[str, MultiPattern] = {"ahocorasick-rs": AhoCorasick}
    if HAVE_HYPERSCAN:
        matchers["hyperscan"] = Hyperscan
    picked = "hyperscan" if MULTI_PATTERN is Hyperscan else "ahocorasick-rs"
    print(f"\nBatch screen by rules loaded, 1,000 messages per batch (the detector uses {picked}),"
          " then the per-message check of its candidates (µs per event of the whole mix; the "
          f"`checker` uses one scan for all literals above {INDEX_FROM} rules):\n")
    print("| rules | format | anchor literals | candidates | may match | "
          "bytes.find each µs/event | "
          + " | ".join(f"{name} µs/event" for name in matchers)
          + " | check candidates, rule by rule | check candidates, `checker` |")
    print("|---:|---|---:|---:|---:|---:|" + "---:|" * (len(matchers) + 2))
    for count, prefilters in rule_sets.items():
        combined = CombinedPrefilter(prefilters)
        for messages, text_format in ((payloads, False), (texts, True)):
            batches = [messages[start : start + 1000] for start in range(0, len(messages), 1000)]
            sizes = [list(map(len, batch)) for batch in batches]
            kept = sum(combined.may_match(m, text_format) for m in messages)
            anchors = candidates = 0
            groups = [p.text_groups if text_format else p.binary_groups for p in prefilters]
            always = (b"\\u",) if text_format else ()
            screens: list[BatchScreen | FindEachScreen] = [FindEachScreen(groups, always)]
            screens += [BatchScreen(groups, always, matcher) for matcher in matchers.values()]
            runs: list[Callable[[], int]] = []
            for screen in screens:
                run = partial(screen_batches, screen, batches, sizes)
                candidates = run()
                assert candidates >= kept, "the batch screen dropped a message the prefilter kept"
                anchors = len(screen.anchors)
                runs.append(run)
            picked_screen = combined.batch_screen(text_format)
            assert picked_screen is not None
            kept_messages = [batch[index] for batch, lengths in zip(batches, sizes, strict=True)
                             for index in picked_screen.candidates(batch, lengths)]
            checker = combined.checker(text_format)
            runs.append(partial(check_each, combined, text_format, kept_messages))
            runs.append(partial(check_with, checker, kept_messages))
            assert runs[-1]() == runs[-2]() == kept, "the checker disagrees with may_match"
            cells = [f"{best:.3f}" for best in interleaved_best(runs, len(messages), repeats)]
            print(f"| {count} | {'JSON' if text_format else 'Avro'} | {anchors} | "
                  f"{candidates / len(messages):.2%} | {kept / len(messages):.2%} | "
                  + " | ".join(cells) + " |")


def screen_batches(
    screen: BatchScreen | FindEachScreen, batches: list[list[bytes]], sizes: list[list[int]]
) -> int:
    return sum(len(screen.candidates(batch, lengths))
               for batch, lengths in zip(batches, sizes, strict=True))


def check_each(combined: CombinedPrefilter, text_format: bool, messages: list[bytes]) -> int:
    """The candidates judged by every prefilter in turn (the checker for a few rules)."""
    return sum(combined.may_match(message, text_format) for message in messages)


def check_with(checker: Callable[[bytes], bool], messages: list[bytes]) -> int:
    return sum(map(checker, messages))


def interleaved_best(
    runs: Sequence[Callable[[], object]], events: int, repeats: int
) -> list[float]:
    """Best µs per event of each run, the runs taking turns so that a busy machine slows them
    alike."""
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for index, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[index] = min(best[index], time.perf_counter() - start)
    return [seconds / events * 1e6 for seconds in best]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shared", type=Path, default=SHARED,
                        help="the datasets and Elastic rules beside the repo (default ../shared)")
    args = parser.parse_args(argv)
    datasets = args.shared / "datasets"

    rng = random.Random(20250115)
    records: list[CloudTrailRecord] = []
    texts: list[bytes] = []
    for original in realistic_mix(args.events, rng, datasets):
        try:
            records.append(json_to_avro(original))
        except NotCloudTrailError:
            continue
        texts.append(json.dumps(original, ensure_ascii=False).encode())
    payloads = [avro_payload(record) for record in records]
    decoded = [decode(payload) for payload in payloads]
    count = len(records)

    queries = {rule.rule_id: rule.query for rule in load_rules()}
    seed, hardened = queries[SEED_ID], queries[HARDENED_ID]
    both = [seed, hardened]
    prefilter = CombinedPrefilter.for_queries(both)
    passing = [p for p in payloads if prefilter.may_match(p, text_format=False)]

    def matches_all(rules: list[CompiledQuery]) -> Callable[[], int]:
        def run() -> int:
            alerts = 0
            for record in decoded:
                for rule in rules:
                    alerts += rule.matches(record)
            return alerts

        return run

    def prefilter_alone(messages: list[bytes], text_format: bool) -> Callable[[], int]:
        def run() -> int:
            kept = 0
            for message in messages:
                kept += prefilter.may_match(message, text_format)
            return kept

        return run

    def screen_alone(messages: list[bytes], text_format: bool) -> Callable[[], int]:
        """The whole-batch form the service uses, on consume()-sized batches."""
        screen = prefilter.batch_screen(text_format)
        assert screen is not None
        batches = [messages[start : start + 1000] for start in range(0, len(messages), 1000)]

        def run() -> int:
            kept = 0
            for batch in batches:
                kept += len(screen.candidates(batch, list(map(len, batch))))
            return kept

        return run

    def decode_alone() -> None:
        for payload in payloads:
            decode(payload)

    def pipeline(use_prefilter: bool) -> int:
        alerts = 0
        for payload in payloads:
            if use_prefilter and not prefilter.may_match(payload, False):
                continue
            record = decode(payload)
            alerts += seed.matches(record) + hardened.matches(record)
        return alerts

    assert pipeline(True) == pipeline(False), "the prefilter dropped an alert"
    for messages, text_format in ((payloads, False), (texts, True)):
        kept = [m for m in messages if prefilter.may_match(m, text_format)]
        screened = screen_alone(messages, text_format)()
        assert screened >= len(kept), "the batch screen dropped a message the prefilter kept"
    measure = {
        "seed rule `matches` (decoded record)": matches_all([seed]),
        "hardened rule `matches` (decoded record)": matches_all([hardened]),
        "both rules `matches`": matches_all(both),
        "prefilter alone, Avro bytes": prefilter_alone(payloads, text_format=False),
        "prefilter alone, JSON text": prefilter_alone(texts, text_format=True),
        "batch screen, Avro bytes (1,000 per batch)": screen_alone(payloads, text_format=False),
        "batch screen, JSON text (1,000 per batch)": screen_alone(texts, text_format=True),
        "Avro decode alone (fastavro)": decode_alone,
        "decode + both rules, no prefilter": lambda: pipeline(False),
        "prefilter + decode + both rules": lambda: pipeline(True),
    }
    mean_bytes = sum(map(len, payloads)) / count
    mean_text = sum(map(len, texts)) / count
    create_keys = sum(record["eventName"] == "CreateAccessKey" for record in records)
    print(
        f"{count} events ({'../shared datasets' if datasets.is_dir() else 'generated'}), "
        f"{create_keys} CreateAccessKey, mean payload {mean_bytes:.0f} B Avro, "
        f"{mean_text:.0f} B JSON, "
        f"prefilter passes {len(passing)} ({len(passing) / count:.2%}), "
        f"alerts: seed {matches_all([seed])()}, hardened {matches_all([hardened])()}\n"
    )
    print("| measurement | µs / event |")
    print("|---|---:|")
    for name, run in measure.items():
        print(f"| {name} | {best_per_event(run, count, args.repeats):.3f} |")
    rules_dir = args.shared / "elastic-rules" / "aws"
    if rules_dir.is_dir():
        screen_table(payloads, texts, seed, rules_dir, args.repeats)


if __name__ == "__main__":
    main()
