"""Our STATS engine gives, run by run, the rows Elasticsearch's ES|QL gives for the same events.

For each hand-written sequence (tests/support/aggregating_events.py) the normalized ECS
documents are indexed into a `logs-aws.cloudtrail-*` index mapped with docs/ecs-fields.md's
types (keyword with its ignore_above, date, ip, flattened, ...). Then, for every run of the
rule's schedule that reads any of the events, the rule's query goes verbatim to `_query` with
the filter Kibana's ES|QL rule executor sends: a range on the rule's timestamp field (with
`@timestamp` as the fallback for documents without it, as Kibana's secondary timestamp). Our
window is (t - from, t], so the range is gt/lte; Kibana's gte differs only for an event exactly
on the window's start, which our sequences place there on purpose. The rows of our
`WindowedAggregation` for that run must equal Elasticsearch's: the same columns in the same
order, the same values; multi-values are compared as sorted lists, since Elasticsearch's
VALUES() promises no order and ours sorts.

ES|QL is an x-pack plugin that the integ-test-zip distribution (the only Elasticsearch
distribution Maven Central publishes) does not ship: against it every test here skips and says
so. Point ELASTICSEARCH_ESQL_URL at a default-distribution cluster (security off) to run them;
a rule whose `min_stack_version` the cluster does not reach is skipped with that reason.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

from consumer.cloudtrail.normalize import ECS_FIELDS, normalize
from consumer.cloudtrail.record import json_to_avro
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.rules.loader import LoadedRule
from consumer.rules.schedule import Schedule, WindowedAggregation
from scripts.elasticsearch_local import ELASTICSEARCH_VERSION, LocalElasticsearch
from scripts.server_local import http_json
from tests.support.aggregating_events import (
    EventSequence,
    aggregation_of,
    geoip,
    load,
    normalized_rows,
    sequences,
)

pytestmark = pytest.mark.slow

SEQUENCES = sequences()
INDEX_PREFIX = "logs-aws.cloudtrail-oracle"


class Cluster:
    """The Elasticsearch the comparisons run against: its URL and what it can run."""

    def __init__(self, url: str) -> None:
        self.url = url

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(method, f"{self.url}{path}", body, timeout=120)

    def version(self) -> tuple[int, ...]:
        status, info = self.request("GET", "/")
        assert status == 200, info
        return tuple(int(part) for part in info["version"]["number"].split("-")[0].split("."))

    def esql_missing(self) -> str | None:
        """Why this cluster cannot run ES|QL, or None when it can."""
        status, answer = self.request("POST", "/_query", {"query": "ROW a = 1"})
        if status == 200:
            return None
        return (f"the Elasticsearch at {self.url} has no ES|QL (POST /_query answered "
                f"{status}: {json.dumps(answer)[:200]}): the integ-test-zip distribution "
                f"({ELASTICSEARCH_VERSION}, the one Maven Central publishes) ships without the "
                "x-pack esql plugin; set ELASTICSEARCH_ESQL_URL to a default distribution")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """The cluster of ELASTICSEARCH_ESQL_URL, else the session's local Elasticsearch."""
    external = os.environ.get("ELASTICSEARCH_ESQL_URL")
    if external:
        return Cluster(external.rstrip("/"))
    server: LocalElasticsearch = request.getfixturevalue("elasticsearch")
    return Cluster(server.url)


@pytest.fixture(scope="module")
def esql(cluster: Cluster) -> Cluster:
    """The cluster, or a skip naming the reason when it cannot run ES|QL."""
    missing = cluster.esql_missing()
    if missing is not None:
        pytest.skip(missing)
    return cluster


def mapping() -> dict[str, Any]:
    """docs/ecs-fields.md's types as an Elasticsearch mapping (dotted names as objects)."""
    root: dict[str, Any] = {}
    for spec in ECS_FIELDS.values():
        *parents, leaf = spec.name.split(".")
        node = root
        for part in parents:
            node = node.setdefault(part, {"properties": {}})["properties"]
        field: dict[str, Any] = {"type": spec.type}
        if spec.type == "keyword" and spec.ignore_above is not None:
            field["ignore_above"] = spec.ignore_above
        node[leaf] = field
    return {"dynamic": False, "properties": root}


def document(record: CloudTrailRecord) -> dict[str, Any]:
    """The document Elastic's pipeline would store for the record (values as `_source` holds
    them; Elasticsearch applies ignore_above itself)."""
    return dict(normalize(record, stored=True))


def index_sequence(cluster: Cluster, sequence: EventSequence) -> str:
    """A fresh index holding only this sequence's events (every query reads all of
    logs-aws.cloudtrail-*, so the previous sequence's index is deleted first)."""
    cluster.request("DELETE", f"/{INDEX_PREFIX}-*")
    index = f"{INDEX_PREFIX}-{uuid.uuid4().hex[:8]}"
    status, answer = cluster.request("PUT", f"/{index}", {
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": mapping(),
    })
    assert status == 200, answer
    lines: list[str] = []
    for event in sequence.events:
        lines += [json.dumps({"create": {"_index": index}}),
                  json.dumps(document(json_to_avro(event)))]
    status, answer = http_json("POST", f"{cluster.url}/_bulk?refresh=true",
                               ("\n".join(lines) + "\n").encode(),
                               content_type="application/x-ndjson", timeout=120)
    assert status == 200, answer
    assert answer["errors"] is False, json.dumps(answer)[:2000]
    return index


def range_filter(schedule: Schedule, run_ms: int) -> dict[str, Any]:
    """Kibana's time-range filter for one run, on our half-open window."""
    bounds = {"gt": run_ms - schedule.lookback_ms, "lte": run_ms, "format": "epoch_millis"}
    primary = {"range": {schedule.timestamp_field: bounds}}
    if schedule.timestamp_field == "@timestamp":
        return primary
    fallback = {"bool": {
        "filter": [{"range": {"@timestamp": bounds}}],
        "must_not": [{"exists": {"field": schedule.timestamp_field}}],
    }}
    return {"bool": {"should": [primary, fallback], "minimum_should_match": 1}}


def elasticsearch_rows(cluster: Cluster, rule: LoadedRule, run_ms: int
                       ) -> tuple[list[str], list[dict[str, object]]]:
    schedule = Schedule.for_rule(rule)
    query = rule.definition.rule.query
    assert query is not None
    status, answer = cluster.request("POST", "/_query", {
        "query": query,
        "filter": {"bool": {"filter": [range_filter(schedule, run_ms)]}},
    })
    assert status == 200, f"run {run_ms}: {json.dumps(answer)[:1000]}"
    columns = [column["name"] for column in answer["columns"]]
    return columns, [dict(zip(columns, values, strict=True)) for values in answer["values"]]


def our_runs(rule: LoadedRule, sequence: EventSequence) -> tuple[list[int], dict[int, list[
        dict[str, object]]]]:
    """Every run that reads an event of the sequence, and our rows of each."""
    schedule = Schedule.for_rule(rule)
    aggregation = WindowedAggregation(aggregation_of(rule), schedule)
    runs: set[int] = set()
    for event in sequence.events:
        record = json_to_avro(event)
        moment = schedule.event_time(record)
        assert moment is not None
        runs.update(schedule.runs_covering(moment))
        for row in aggregation_of(rule).rows(record):
            aggregation.add(moment, row)
    return sorted(runs), {run.run_ms: run.rows for run in aggregation.flush()}


@pytest.mark.parametrize("sequence", SEQUENCES, ids=[sequence.name for sequence in SEQUENCES])
def test_every_run_gives_the_rows_elasticsearch_gives(esql: Cluster, sequence: EventSequence,
                                                      tmp_path: Path) -> None:
    rule = load(sequence.rule)
    needs = rule.definition.metadata.min_stack_version
    if needs is not None and esql.version() < tuple(int(part) for part in needs.split(".")):
        pytest.skip(f"{sequence.rule} needs Elastic {needs} (min_stack_version)")
    with geoip(tmp_path) if sequence.geoip else nullcontext():
        index_sequence(esql, sequence)
        runs, ours = our_runs(rule, sequence)
    compared = 0
    for run_ms in runs:
        columns, theirs = elasticsearch_rows(esql, rule, run_ms)
        mine = ours.get(run_ms, [])
        if theirs:
            assert columns == list(aggregation_of(rule).columns), f"run {run_ms}"
        assert normalized_rows(mine) == normalized_rows(theirs), f"run {run_ms}"
        compared += bool(theirs)
    assert compared == len({row.run_ms for row in sequence.rows})


@pytest.mark.parametrize("sequence", SEQUENCES, ids=[sequence.name for sequence in SEQUENCES])
def test_each_run_filter_selects_the_events_of_that_runs_window(cluster: Cluster,
                                                                sequence: EventSequence,
                                                                tmp_path: Path) -> None:
    """What the ES|QL comparison stands on, checked on any Elasticsearch: the documents index
    with docs/ecs-fields.md's mapping without an error, and the range filter of a run selects
    exactly the events our schedule puts in that run's window (event.ingested where the rule
    overrides the timestamp, window start excluded, run time included)."""
    rule = load(sequence.rule)
    schedule = Schedule.for_rule(rule)
    with geoip(tmp_path) if sequence.geoip else nullcontext():
        index = index_sequence(cluster, sequence)
    expected: dict[int, int] = {}
    for event in sequence.events:
        moment = schedule.event_time(json_to_avro(event))
        assert moment is not None
        for run_ms in schedule.runs_covering(moment):
            expected[run_ms] = expected.get(run_ms, 0) + 1
    for run_ms, count in sorted(expected.items()):
        status, answer = cluster.request("POST", f"/{index}/_count",
                                         {"query": range_filter(schedule, run_ms)})
        assert status == 200, answer
        assert answer["count"] == count, f"run {run_ms}"
