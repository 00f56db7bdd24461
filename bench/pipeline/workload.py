"""The pipeline benchmark's input: a realistic CloudTrail mix and the alerts it must produce.

Real records from ../shared/datasets are replayed with fresh eventIDs and eventTimes that advance
with the stream (generated records when ../shared is absent). About 0.1% are CreateAccessKey
calls, one in ten of those a cross-user key creation that the seed rule flags; the rest are near
misses (self-created keys, failed calls).
The expected alerts are found up front by evaluating the compiled seed rule directly on each
source record, without Kafka, decoder or prefilter, and checked against the datasets' labels.
For a whole rule set (every rule of ../shared/elastic-rules/aws the detector runs), each source
record is decoded as the detector decodes it and judged by `Detector.judge`, without prefilter,
by the rules that need no state; aggregating and suppressed rules are left out of it.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastavro import schemaless_writer

from bench import REPO, SHARED
from consumer.alerts.suppression import Suppressor
from consumer.cloudtrail.decode import SchemalessAvroDecoder
from consumer.cloudtrail.record import READER_SCHEMA, NotCloudTrailError, json_to_avro
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.rules import CompiledQuery, LoadedRule, load_rules
from consumer.rules.detector import Detector, Verdict
from consumer.rules.loader import BUILTIN_PREFIX
from tests.support.events import ACCOUNTS, event

DATASETS = SHARED / "datasets"
AWS_RULES = SHARED / "elastic-rules" / "aws"
SEED_RULE_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
SEED_RULE_FILE = "aws_iam_user_created_access_keys_for_another_user.toml"
BENCH_RULE_ID = "b3f0c1de-0b5e-4c1f-9a55-5e11c0ffee01"
"""The benchmark's copy of the seed rule: same query, max_signals high enough never to throttle."""
BENCH_MAX_SIGNALS = 1_000_000
CREATE_KEY_EVERY = 1000
"""One event in this many is a CreateAccessKey call."""
MATCHING_SHARE = 0.1
"""Share of the CreateAccessKey calls that the seed rule flags."""
ESQL_TYPE = re.compile(r'(?m)^type = "esql"$')
OTHER_BUILTINS = (
    "32403725-2adc-4bc1-a434-02793697b9bd",
    "5b0f0c87-35b5-4c1e-9a55-6f0e3a7a8d21",
)
"""The built-in rules besides the seed rule (the hardened seed rule and its companion): variant
j switches them off, to run Elastic's ES|QL rules and nothing else."""
LABEL_FILES = (
    "createaccesskey-real-events",
    "panther-analysis-createaccesskey-fixtures",
)


def write_bench_rules(directory: Path) -> Path:
    """The seed rule's TOML under a new rule_id with a huge max_signals, in `directory`.

    The detector runs it with the built-in seed rule disabled (DETECTOR_DISABLE_RULES), so
    a million-event run is never throttled and every match becomes an alert.
    """
    builtin = REPO / "consumer" / "rules" / "builtin"
    text = (builtin / SEED_RULE_FILE).read_text(encoding="utf-8")
    text, ids = re.subn(r'(?m)^rule_id = ".*"$', f'rule_id = "{BENCH_RULE_ID}"', text)
    text, caps = re.subn(r"(?m)^max_signals = \d+$", f"max_signals = {BENCH_MAX_SIGNALS}", text)
    if (ids, caps) != (1, 1):
        raise RuntimeError(f"{SEED_RULE_FILE} no longer has one rule_id and one max_signals line")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bench_seed_copy.toml"
    path.write_text(text, encoding="utf-8")
    return directory


def write_aws_rules(directory: Path, *, esql_only: bool = False) -> Path | None:
    """Every rule file of ../shared/elastic-rules/aws (with `esql_only`, every ES|QL one) with
    max_signals = BENCH_MAX_SIGNALS, in `directory`; None when ../shared is absent.

    Pointed at it, the detector runs every rule of the folder it can (Elastic's seed file
    replacing the built-in, the rule types it lacks skipped) and throttles none of them.
    """
    if not AWS_RULES.is_dir():
        return None
    directory.mkdir(parents=True, exist_ok=True)
    cap = f"max_signals = {BENCH_MAX_SIGNALS}"
    for path in sorted(AWS_RULES.glob("*.toml")):
        text = path.read_text(encoding="utf-8")
        if esql_only and not ESQL_TYPE.search(text):
            continue
        text, caps = re.subn(r"(?m)^max_signals = \d+$", cap, text)
        if not caps:
            text, caps = re.subn(r"(?m)^\[rule\]$", f"[rule]\n{cap}", text, count=1)
        if caps != 1:
            raise RuntimeError(f"{path.name} has no [rule] table or several max_signals lines")
        (directory / path.name).write_text(text, encoding="utf-8")
    return directory


def bench_rule_query(rules_dir: Path) -> CompiledQuery:
    """The compiled query of the benchmark's rule, as every variant evaluates it."""
    for rule in load_rules(rules_dir, {SEED_RULE_ID: False}):
        if rule.rule_id == BENCH_RULE_ID:
            return rule.query
    raise RuntimeError(f"{rules_dir} does not hold rule {BENCH_RULE_ID}")


def seed_query() -> CompiledQuery:
    for rule in load_rules():
        if rule.source == BUILTIN_PREFIX + SEED_RULE_FILE:
            return rule.query
    raise RuntimeError(f"built-in rule {SEED_RULE_FILE} is missing")


def _documents_in(path: Path) -> Iterator[Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        yield from (json.loads(line) for line in text.splitlines() if line.strip())
        return
    if isinstance(document, dict) and isinstance(document.get("Records"), list):
        yield from document["Records"]
    elif isinstance(document, list):
        yield from document
    else:
        yield document


def _to_avro(records: Iterator[Any]) -> list[CloudTrailRecord]:
    converted = []
    for record in records:
        try:
            converted.append(json_to_avro(record))
        except NotCloudTrailError:
            continue
    return converted


def _generated_record(index: int, **fields: Any) -> dict[str, Any]:
    """An everyday call built the way the tests build theirs, by `index`: ids and account."""
    fields.setdefault("request_parameters", {"bucketName": "logs", "key": f"k{index}"})
    return event(event_id=str(uuid.uuid5(uuid.NAMESPACE_OID, str(index))),
                 account=ACCOUNTS[index % len(ACCOUNTS)], **fields)


def _near_misses() -> list[dict[str, Any]]:
    """CreateAccessKey calls the seed rule must not flag, plus cross-user ones it must."""
    create = {"event_name": "CreateAccessKey", "event_source": "iam.amazonaws.com"}
    return [
        _generated_record(1, caller="bob", request_parameters={"userName": "bob"}, **create),
        _generated_record(2, caller="carol", **create),
        _generated_record(3, caller="eve", request_parameters={"userName": "carol"},
                          error_code="AccessDenied", **create),
        _generated_record(4, caller="mallory", request_parameters={"userName": "target-4"},
                          **create),
        _generated_record(5, caller="mallory", request_parameters={"userName": "target-5"},
                          **create),
    ]


@dataclass(frozen=True)
class SourceRecords:
    background: list[CloudTrailRecord]
    """Everyday traffic, no CreateAccessKey."""
    matching: list[CloudTrailRecord]
    """CreateAccessKey records the seed rule flags."""
    near_misses: list[CloudTrailRecord]
    """CreateAccessKey records it does not."""
    origin: str


def _labelled_verdicts() -> list[tuple[CloudTrailRecord, bool]]:
    """The labelled CreateAccessKey records and Elastic's verdict on each, from ../shared."""
    verdicts = []
    for folder in LABEL_FILES:
        records = list(_documents_in(DATASETS / folder / "events.jsonl.gz"))
        labels = json.loads((DATASETS / folder / "labels.json").read_text(encoding="utf-8"))
        for label in labels:
            record = json_to_avro(records[label["line"] - 1])
            verdicts.append((record, label["elastic_verdict"] == "alert"))
    return verdicts


def load_sources(query: CompiledQuery) -> SourceRecords:
    """Records to replay, each sorted by the verdict `query` gives it (checked against labels)."""
    create_keys = [json_to_avro(record) for record in _near_misses()]
    if DATASETS.is_dir():
        background = [
            record
            for path in sorted(DATASETS.rglob("*.json*"))
            if path.name != "labels.json" and not path.parent.name.startswith(LABEL_FILES)
            for record in _to_avro(_documents_in(path))
            if record["eventName"] != "CreateAccessKey"
        ]
        for record, alerts in _labelled_verdicts():
            if query.matches(record) != alerts:
                raise RuntimeError(f"seed rule disagrees with the label of {record['eventID']}")
            create_keys.append(record)
        origin = f"{len(background):,} real records from ../shared/datasets"
    else:
        background = [json_to_avro(_generated_record(index)) for index in range(5000)]
        origin = "5,000 generated records (../shared/datasets is absent)"
    matching = [record for record in create_keys if query.matches(record)]
    near_misses = [record for record in create_keys if not query.matches(record)]
    if any(query.matches(record) for record in background):
        raise RuntimeError("a background record matches the seed rule")
    return SourceRecords(background, matching, near_misses, origin)


@dataclass
class Event:
    payload: bytes
    key: bytes | None
    event_id: str
    matches: bool
    """The seed rule flags it."""
    rules: tuple[str, ...] = ()
    """The rule_ids of the Mix's rule set that flag it."""


_ID_PLACEHOLDER = "00000000-0000-4000-8000-0000000000ff"
"""Written as each template's eventID; a fresh id of the same length replaces its bytes."""
_TIME_PLACEHOLDER = "1999-12-31T23:59:59Z"
"""Written as each template's eventTime (when it has one); the event's own time replaces it."""
EVENT_TIME_START = datetime(2025, 11, 29, 10, 0, tzinfo=UTC)
EVENTS_PER_SECOND = 300
"""Event time advances by a second every this many events (a million events: about 55 minutes
of an account's CloudTrail), so that the aggregating rules' windows (5 to 60 minutes) fill
with groups as a stream's would, instead of every replay of a dataset landing on the same,
long past times and being late."""


@dataclass(frozen=True)
class _Template:
    payload: bytes
    key: bytes | None
    rules: tuple[str, ...] = ()
    timed: bool = False
    """It has an eventTime (the placeholder), which each event replaces."""


def _template(record: CloudTrailRecord, oracle: Detector | None) -> _Template:
    """The record encoded once, so a million events cost a bytes.replace each, not an encode;
    with the rule_ids that `oracle` says flag it, judged once (no rule reads event.id, the
    fields that differ between the events of a template, event.id and @timestamp: checked by
    `rule_oracle`)."""
    timed = isinstance(record.get("eventTime"), str)
    fields: dict[str, Any] = {**record, "eventID": _ID_PLACEHOLDER}
    if timed:
        fields["eventTime"] = _TIME_PLACEHOLDER
    buffer = io.BytesIO()
    schemaless_writer(buffer, READER_SCHEMA, fields)
    payload = buffer.getvalue()
    if payload.count(_ID_PLACEHOLDER.encode()) != 1 or (
            timed and payload.count(_TIME_PLACEHOLDER.encode()) != 1):
        raise RuntimeError("a placeholder is not unique in an encoded record")
    account = record.get("recipientAccountId")
    key = account.encode() if isinstance(account, str) else None
    if oracle is None:
        return _Template(payload, key, timed=timed)
    verdict = oracle.inspect(payload)
    assert isinstance(verdict, Verdict), "a bench record is one event, never skipped"
    return _Template(payload, key, tuple(rule.rule_id for rule in verdict.matched), timed)


def is_stateful(rule: LoadedRule) -> bool:
    """An aggregating (STATS) or suppressed rule: its alerts depend on event time, schedule and
    watermark, not on each event alone, so the per-event oracle leaves it out (for an
    aggregating rule `rule.query` is only the part before STATS)."""
    return rule.aggregation is not None or Suppressor.for_rule(rule) is not None


def rule_oracle(rules: list[LoadedRule]) -> Detector:
    """The detector's own decode and judge, without prefilter, over the stateless `rules`: the
    (rule, event) alerts it must give; the stateful rules' alerts are counted, not checked."""
    stateless = [rule for rule in rules if not is_stateful(rule)]
    for rule in stateless:
        for changed in ("event.id", "@timestamp"):
            if changed in rule.query.fields_read:
                raise RuntimeError(f"rule {rule.rule_id} reads {changed}, which each event "
                                   "changes")
    return Detector(SchemalessAvroDecoder(), stateless, use_prefilter=False)


class Mix:
    """An endless, reproducible stream of encoded events with their known verdicts.

    Event `i` is a CreateAccessKey call when `i % create_key_every == create_key_every // 2`,
    and of those a `matching_share` (drawn at random) is one the rule flags. Every event gets
    a fresh eventID, so every alert is distinct, and an eventTime that advances with `i`
    (EVENTS_PER_SECOND). With `oracle`, each event also names the rules
    of its rule set that flag it.
    """

    def __init__(
        self,
        sources: SourceRecords,
        seed: int,
        create_key_every: int = CREATE_KEY_EVERY,
        matching_share: float = MATCHING_SHARE,
        oracle: Detector | None = None,
    ) -> None:
        self._background = [_template(record, oracle) for record in sources.background]
        self._matching = [_template(record, oracle) for record in sources.matching]
        self._near_misses = [_template(record, oracle) for record in sources.near_misses]
        self._random = random.Random(seed)
        self._id_base = self._random.getrandbits(128) & ~((1 << 64) - 1)
        self._create_key_every = create_key_every
        self._matching_share = matching_share
        self._index = 0

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        index = self._index
        self._index += 1
        if index % self._create_key_every == self._create_key_every // 2:
            matches = self._random.random() < self._matching_share
            template = self._random.choice(self._matching if matches else self._near_misses)
        else:
            matches = False
            template = self._background[index % len(self._background)]
        event_id = str(uuid.UUID(int=self._id_base | index))
        payload = template.payload.replace(_ID_PLACEHOLDER.encode(), event_id.encode(), 1)
        if template.timed:
            moment = EVENT_TIME_START + timedelta(seconds=index // EVENTS_PER_SECOND)
            payload = payload.replace(_TIME_PLACEHOLDER.encode(),
                                      moment.strftime("%Y-%m-%dT%H:%M:%SZ").encode(), 1)
        return Event(payload, template.key, event_id, matches, template.rules)
