"""Every shape CloudTrail arrives in, mixed in one topic, through the real detector process; and
producers' own Avro schemas appearing in the registry mid-stream."""

from __future__ import annotations

import base64
import gzip
import io
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from fastavro import parse_schema, schemaless_writer

from consumer.cloudtrail.envelopes import wrap
from consumer.cloudtrail.record import SCHEMA_TEXT, json_to_avro
from tests.conftest import Broker, TopicFactory
from tests.support.events import create_access_key, event
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    alert_event_ids,
    produce_raw,
    read_all,
    wait_all_committed,
    wait_until,
)
from tests.support.metrics import scrape
from tests.unit.test_decode_foreign_avro import JSON_STRING, TYPED, typed
from tests.unit.test_envelopes import DIGEST, GUARDDUTY_FINDING


@pytest.fixture
def topics(new_topic: TopicFactory) -> Topics:
    return Topics(input=new_topic("in"), alerts=new_topic("alerts"), dlq=new_topic("dlq"))


def match(event_id: str) -> dict[str, Any]:
    return create_access_key(event_id=event_id, caller="mallory", target=f"t-{event_id}")


def harmless(number: int) -> dict[str, Any]:
    return event(event_id=f"read-{number}", request_parameters={"bucketName": "logs"})


def start(broker: Broker, topics: Topics, run_dir: Path, started: list[DetectorProcess],
          env: dict[str, str]) -> DetectorProcess:
    group = f"g-{uuid.uuid4().hex}"
    detector = DetectorProcess(broker.bootstrap_servers, topics, run_dir / "detectors",
                               group=group, extra_env=env)
    started.append(detector)
    return detector.start()


def test_all_shapes_mixed_in_one_topic_give_each_alert_once_and_dead_letter_only_failures(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    thousand = [harmless(n) if n % 100 else match(f"cw-{n}") for n in range(1000)]
    control = {"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logEvents": []}
    messages = [
        wrap([match("bare")], "record"),
        wrap([harmless(1), match("s3-a"), {"eventName": "NoSource"}, match("s3-b")], "records"),
        wrap([match("eventbridge")], "eventbridge"),
        wrap([match("cw-gzip"), harmless(2)], "cloudwatch"),
        wrap(thousand, "cloudwatch", base64_encoded=True),
        wrap([match("filebeat")], "filebeat"),
        wrap([match("cribl")], "cribl"),
        wrap([match("lookup")], "lookup-events"),
        gzip.compress(wrap([match("gzipped")], "record")),
        json.dumps(GUARDDUTY_FINDING).encode(),
        gzip.compress(json.dumps(DIGEST).encode()),
        gzip.compress(json.dumps(control).encode()),
        gzip.compress(wrap([match("cut")], "record"))[:30],
        b"H4sI" + base64.b64encode(b"not gzip at all")[4:] + b"!",
    ]
    produce_raw(broker.bootstrap_servers, topics.input, [(b"k", value) for value in messages])
    detector = start(broker, topics, run_dir, detectors, {"DETECTOR_INPUT_FORMAT": "json"})

    expected = ["bare", "s3-a", "s3-b", "eventbridge", "cw-gzip",
                *(f"cw-{n}" for n in range(0, 1000, 100)),
                "filebeat", "cribl", "lookup", "gzipped"]
    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(expected))
    dead = read_all(broker.bootstrap_servers, topics.dlq, wanted=3)
    wait_all_committed(broker.bootstrap_servers, detector.env["DETECTOR_GROUP_ID"],
                       topics.input, 1)

    assert sorted(alert_event_ids(alerts)) == sorted(expected)
    by_id = {json.loads(a.value() or b"")["event"]["id"]: json.loads(a.value() or b"")
             for a in alerts}
    assert by_id["eventbridge"]["aws"]["eventbridge"]["id"] == "eventbridge"
    assert json.loads(by_id["s3-b"]["event"]["original"]) == match("s3-b")
    assert json.loads(by_id["gzipped"]["event"]["original"]) == match("gzipped")
    assert by_id["filebeat"]["event"]["ingested"] == match("filebeat")["eventTime"]
    reasons = sorted(
        (dict(m.headers() or [])["dlq.reason"], dict(m.headers() or []).get("dlq.event.index"))
        for m in dead
    )
    assert reasons == [(b"corrupt-base64", None), (b"corrupt-gzip", None),
                       (b"not-cloudtrail", b"2")]
    sub_event = next(m for m in dead if dict(m.headers() or []).get("dlq.event.index"))
    assert json.loads(sub_event.value() or b"") == {"eventName": "NoSource"}
    assert dict(sub_event.headers() or [])["dlq.source.offset"] == b"1"

    # The GuardDuty finding holds none of the rule's literals: skipped on its bytes, undecoded.
    # The digest file and the control message are compressed, so decoded, then skipped.
    def skipped_counted() -> bool:
        counts = scrape(detector.port).by_label("messages_without_cloudtrail_total", "shape")
        return counts == {"records": 1.0, "cloudwatch": 1.0}

    wait_until(skipped_counted, 30, "the messages without CloudTrail counted")
    metrics = scrape(detector.port)
    assert metrics.total("prefilter_skipped_total") == 1
    assert metrics.total("dead_letters_total") == 3


def test_a_non_cloudtrail_eventbridge_event_is_counted_by_shape_when_decoded(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    produce_raw(broker.bootstrap_servers, topics.input, [
        (b"k", json.dumps(GUARDDUTY_FINDING).encode()), (b"k", wrap([match("m")], "eventbridge")),
    ])
    detector = start(broker, topics, run_dir, detectors,
                     {"DETECTOR_INPUT_FORMAT": "json", "DETECTOR_PREFILTER": "false"})

    assert alert_event_ids(read_all(broker.bootstrap_servers, topics.alerts, wanted=1)) == ["m"]
    wait_until(lambda: scrape(detector.port).by_label("messages_without_cloudtrail_total", "shape")
               == {"eventbridge": 1.0}, 30, "the GuardDuty finding counted")
    assert scrape(detector.port).total("dead_letters_total") == 0


def test_content_encoding_headers_are_honoured_and_a_contradicting_one_is_dead_lettered(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    producer.produce(topics.input, key=b"k", value=gzip.compress(wrap([match("gz")], "record")),
                     headers=[("Content-Encoding", b"gzip")])
    # No rule's literal is in it, so the prefilter would skip it on its bytes but for the header.
    producer.produce(topics.input, key=b"k", value=json.dumps(harmless(1)).encode(),
                     headers=[("content-encoding", b"gzip")])
    producer.produce(topics.input, key=b"k", value=wrap([match("bare")], "record"),
                     headers=[("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-01")])
    assert producer.flush(60) == 0
    detector = start(broker, topics, run_dir, detectors, {"DETECTOR_INPUT_FORMAT": "json"})

    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=2)
    dead = read_all(broker.bootstrap_servers, topics.dlq, wanted=1)
    wait_all_committed(broker.bootstrap_servers, detector.env["DETECTOR_GROUP_ID"],
                       topics.input, 1)

    assert sorted(alert_event_ids(alerts)) == ["bare", "gz"]
    assert len(dead) == 1
    headers = dict(dead[0].headers() or [])
    assert headers["dlq.reason"] == b"header-mismatch"
    assert b"say gzip" in headers["dlq.error"]
    assert headers["content-encoding"] == b"gzip"
    assert headers["dlq.source.offset"] == b"1"


class Registry:
    """A Schema Registry on loopback serving the schemas it is given, by id, as they come."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                schema_id = self.path.split("?")[0].rsplit("/", 1)[-1]
                text = registry.schemas.get(int(schema_id)) if schema_id.isdigit() else None
                status, body = (200, {"schema": text}) if text else (
                    404, {"error_code": 40403, "message": "Schema not found"})
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def registry() -> Iterator[Registry]:
    stub = Registry()
    yield stub
    stub.server.shutdown()
    stub.server.server_close()


def framed(schema_id: int, schema: Any, value: dict[str, Any]) -> bytes:
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(schema), value)
    return b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()


def test_foreign_avro_schemas_registered_mid_stream_decode_and_alert(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess],
    registry: Registry,
) -> None:
    ours = json.loads(SCHEMA_TEXT)
    registry.schemas[1] = SCHEMA_TEXT
    produce_raw(broker.bootstrap_servers, topics.input, [
        (b"k", framed(1, ours, json_to_avro(harmless(1)))),
        (b"k", framed(1, ours, json_to_avro(match("ours")))),
    ])
    detector = start(broker, topics, run_dir, detectors, {
        "DETECTOR_INPUT_FORMAT": "avro-registry", "DETECTOR_SCHEMA_REGISTRY_URL": registry.url,
    })
    first = read_all(broker.bootstrap_servers, topics.alerts, wanted=1)
    assert alert_event_ids(first) == ["ours"]

    registry.schemas[2] = json.dumps(TYPED)
    registry.schemas[3] = json.dumps(JSON_STRING)
    produce_raw(broker.bootstrap_servers, topics.input, [
        (b"k", framed(2, TYPED, typed(harmless(2)))),
        (b"k", framed(2, TYPED, typed(match("typed")))),
        (b"k", framed(3, JSON_STRING, {"ingestedAt": 1, "payload": json.dumps(match("text"))})),
        (b"k", framed(3, JSON_STRING, {"ingestedAt": 2, "payload": json.dumps(
            {"detail-type": "AWS API Call via CloudTrail", "detail": match("wrapped")})})),
    ])

    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=4)
    wait_all_committed(broker.bootstrap_servers, detector.env["DETECTOR_GROUP_ID"],
                       topics.input, 1)
    assert sorted(alert_event_ids(alerts)) == ["ours", "text", "typed", "wrapped"]
    assert scrape(detector.port).total("dead_letters_total") == 0
