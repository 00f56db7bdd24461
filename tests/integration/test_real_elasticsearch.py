"""A detector run's alerts indexed into a real Elasticsearch with deploy/'s index template.

The JSON alerts, and the `document` field of the Avro alerts, are bulk-indexed with zero mapping
errors, get ECS types (`@timestamp` date, `source.ip` ip, numbers as numbers, the rest keyword)
and answer the queries an analyst starts with: a term on `user.target.name`, a CIDR on
`source.ip`, the rule id.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from scripts.elasticsearch_local import LocalElasticsearch
from scripts.registry_local import LocalRegistry
from tests.conftest import REPO, Broker, TopicFactory
from tests.support.events import mixed_workload
from tests.support.kafka import DetectorProcess, Topics, produce, read_all
from tests.support.servers import REGISTRY_USER

pytestmark = pytest.mark.slow

TEMPLATE_FILE = REPO / "deploy" / "elasticsearch" / "cloudtrail-alerts.index-template.json"
SAMPLE_FILE = REPO / "consumer" / "samples" / "cloudtrail-sample.jsonl"
SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
WORKLOAD_CIDR = "198.51.100.0/24"
"""mixed_workload's sourceIPAddress (198.51.100.7) is in it; the bundled sample's are not."""


def workload() -> tuple[list[dict[str, Any]], list[str]]:
    """The bundled sample (varied callers, addresses, agents) and a synthetic workload."""
    sample = [json.loads(line) for line in SAMPLE_FILE.read_text().splitlines() if line.strip()]
    events, matches = mixed_workload(400, every=20)
    return sample + events, matches


def run_detector(broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess],
                 extra_env: dict[str, str] | None = None) -> list[bytes]:
    events, matches = workload()
    produce(broker.bootstrap_servers, topics.input, events)
    detector = DetectorProcess(broker.bootstrap_servers, topics, run_dir / "detectors",
                               group=f"g-{uuid.uuid4().hex}", extra_env=extra_env)
    detectors.append(detector.start())
    # The sample holds four matches besides the workload's.
    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(matches) + 4)
    detector.stop()
    return [message.value() or b"" for message in alerts]


EXPECTED_TYPES: dict[type, set[str | None]] = {
    str: {"keyword", "date", "ip", "text"},
    int: {"long", "float"},
    float: {"float", "double"},
    bool: {"boolean"},
}
"""What a JSON value of each kind may be mapped to: strings stay keywords unless the template
says date, ip or text; numbers stay numbers."""


def leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every scalar in a document, list items under their field."""
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in leaves(value, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [leaf for item in node for leaf in leaves(item, prefix)]
    return [] if node is None else [(prefix.rstrip("."), node)]


def index_alerts(server: LocalElasticsearch, documents: list[dict[str, Any]]) -> str:
    """Bulk-index into a fresh index the template applies to; fail on any item's error."""
    server.request("PUT", "/_index_template/cloudtrail-alerts",
                   json.loads(TEMPLATE_FILE.read_text()))
    index = f"cloudtrail-alerts-{uuid.uuid4().hex[:8]}"
    lines = []
    for document in documents:
        lines += [json.dumps({"create": {"_index": index}}), json.dumps(document)]
    answer = server.request("POST", "/_bulk?refresh=true", ("\n".join(lines) + "\n").encode(),
                            content_type="application/x-ndjson")
    failures = [item["create"] for item in answer["items"] if item["create"].get("error")]
    assert failures == [], f"{len(failures)} of {len(documents)} failed: {failures[:3]}"
    assert answer["errors"] is False
    return index


def count(server: LocalElasticsearch, index: str, query: dict[str, Any]) -> int:
    return int(server.request("POST", f"/{index}/_count", {"query": query})["count"])


def field_types(server: LocalElasticsearch, index: str) -> dict[str, str]:
    """Every mapped leaf field's dotted path -> type."""
    mapping = server.request("GET", f"/{index}/_mapping")[index]["mappings"]["properties"]
    types: dict[str, str] = {}

    def walk(properties: dict[str, Any], prefix: str) -> None:
        for name, field in properties.items():
            if "properties" in field:
                walk(field["properties"], f"{prefix}{name}.")
            else:
                types[f"{prefix}{name}"] = field["type"]

    walk(mapping, "")
    return types


def assert_searchable(server: LocalElasticsearch, index: str,
                      documents: list[dict[str, Any]]) -> None:
    types = field_types(server, index)
    assert types["@timestamp"] == "date"
    assert types["kibana.alert.original_time"] == "date"
    assert types["source.ip"] == "ip"
    assert types["kibana.alert.risk_score"] == "float"
    assert types["kibana.alert.rule.version"] == "long"
    assert types["user.target.name"] == "keyword"
    assert types["event.original"] == "keyword"
    wrong = {
        path: (type(value).__name__, types.get(path))
        for document in documents for path, value in leaves(document)
        if types.get(path) not in EXPECTED_TYPES[type(value)]
        and not any(path.startswith(f"{p}.") for p, t in types.items() if t == "flattened")
    }
    assert wrong == {}, "fields mapped to an unexpected type"

    targets = Counter(document["user"]["target"]["name"] for document in documents)
    for target, expected in targets.items():
        assert count(server, index, {"term": {"user.target.name": target}}) == expected
    in_cidr = sum(document["source"]["ip"] == "198.51.100.7" for document in documents)
    assert in_cidr > 0
    assert count(server, index, {"term": {"source.ip": WORKLOAD_CIDR}}) == in_cidr
    assert count(server, index, {"term": {"kibana.alert.rule.rule_id": SEED_ID}}) == len(documents)
    assert count(server, index, {"range": {"kibana.alert.risk_score": {"gte": 47}}}) == len(
        documents
    )


@pytest.fixture
def topics(new_topic: TopicFactory) -> Topics:
    return Topics(input=new_topic("in"), alerts=new_topic("alerts"), dlq=new_topic("dlq"))


def test_json_alerts_index_without_mapping_errors_and_answer_term_cidr_and_rule_queries(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess],
    elasticsearch: LocalElasticsearch,
) -> None:
    values = run_detector(broker, topics, run_dir, detectors)
    documents = [json.loads(value) for value in values]
    index = index_alerts(elasticsearch, documents)
    assert count(elasticsearch, index, {"match_all": {}}) == len(documents)
    assert_searchable(elasticsearch, index, documents)


def test_avro_alerts_document_field_indexes_like_the_json_alert(
    *, broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess],
    elasticsearch: LocalElasticsearch, registry_server: LocalRegistry,
) -> None:
    credentials = ":".join(REGISTRY_USER)
    values = run_detector(broker, topics, run_dir, detectors, extra_env={
        "DETECTOR_ALERT_FORMAT": "avro-registry",
        "DETECTOR_SCHEMA_REGISTRY_URL": registry_server.url,
        "DETECTOR_SCHEMA_REGISTRY_BASIC_AUTH": credentials,
    })
    deserialize = AvroDeserializer(
        SchemaRegistryClient({"url": registry_server.url, "basic.auth.user.info": credentials})
    )
    context = SerializationContext(topics.alerts, MessageField.VALUE)
    documents = [json.loads(deserialize(value, context)["document"]) for value in values]
    index = index_alerts(elasticsearch, documents)
    assert_searchable(elasticsearch, index, documents)


def test_template_takes_the_cloudtrail_fields_elastic_derives_without_mapping_errors(
    elasticsearch: LocalElasticsearch,
) -> None:
    """The shapes the pipeline's aws.cloudtrail.* and ECS fields take: flattened objects of any
    depth, dates, booleans, geo points, numbers, lists, and strings never seen before."""
    document = {
        "@timestamp": "2026-11-29T10:00:00.000Z",
        "event": {"ingested": "2026-11-29T10:00:05Z", "category": ["iam"], "type": ["creation"]},
        "source": {"ip": "203.0.113.9", "as": {"number": 64500},
                   "geo": {"location": {"lat": 48.85, "lon": 2.35}, "country_iso_code": "FR"}},
        "related": {"user": ["mallory", "target-1"]},
        "user": {"target": {"name": "target-1"}},
        "aws": {"cloudtrail": {
            "read_only": False,
            "management_event": "true",
            "request_parameters": "{userName=target-1}",
            "flattened": {
                "request_parameters": {"userName": "target-1", "tags": [{"key": "k", "v": 1}]},
                "response_elements": {"accessKey": {"accessKeyId": "AKIAEXAMPLE",
                                                    "createDate": "Nov 29, 2026 10:00:00 AM"}},
                "some_future_object": {"deep": {"deeper": "x"}},
            },
            "user_identity": {"session_context": {"creation_date": "2026-11-29T09:00:00Z",
                                                  "mfa_authenticated": "false"}},
            "console_login": {"additional_eventdata": {"mfa_used": True}},
            "a_new_string_field": "2026-11-29",
        }},
    }
    index = index_alerts(elasticsearch, [document])
    types = field_types(elasticsearch, index)
    assert types["aws.cloudtrail.flattened.request_parameters"] == "flattened"
    assert types["aws.cloudtrail.flattened.some_future_object"] == "flattened"
    assert types["aws.cloudtrail.user_identity.session_context.creation_date"] == "date"
    assert types["aws.cloudtrail.a_new_string_field"] == "keyword"
    assert types["source.geo.location"] == "geo_point"
    assert types["aws.cloudtrail.read_only"] == "boolean"
    assert count(elasticsearch, index, {"term": {
        "aws.cloudtrail.flattened.response_elements.accessKey.accessKeyId": "AKIAEXAMPLE"}}) == 1
