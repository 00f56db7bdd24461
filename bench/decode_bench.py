"""Decode cost per event for each wire format, next to the raw parser it wraps.

Run: .venv/bin/python -m bench.decode_bench [--repeats N] [--max-events N]

Data: every record under ../shared/datasets when present, else a few generated records. For each
decoder it prints the mean cost per event of the raw parser (fastavro.schemaless_reader on the
same Avro body, or json.loads on the same text), of the decoder, and of the decoder followed by
normalizing the seed rule's five ECS fields, as a markdown table. Best of `--repeats` passes, in CPU
time (process time: the machine may be shared, and waiting for a core is not decode cost).
A second table gives the same for each shape CloudTrail arrives in
(consumer.cloudtrail.envelopes) and for
producers' own Avro schemas, per event: the multi-event shapes carry 100 events a message.
"""

import argparse
import gzip
import importlib
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from bench import SHARED
from consumer.cloudtrail.decode import (
    Decoder,
    Events,
    JsonDecoder,
    RegistryAvroDecoder,
    SchemalessAvroDecoder,
)
from consumer.cloudtrail.envelopes import Shape, wrap
from consumer.cloudtrail.record import READER_SCHEMA, SCHEMA_TEXT, json_to_avro
from consumer.cloudtrail.types import CloudTrailRecord

DATASETS = SHARED / "datasets"
SEED_RULE_FIELDS = (
    "event.provider",
    "event.action",
    "event.outcome",
    "user.name",
    "user.target.name",
)

Normalize = Callable[[CloudTrailRecord, Sequence[str]], dict[str, Any]]


@dataclass(frozen=True)
class Row:
    decoder: str
    mean_bytes: float
    raw_name: str
    raw_us: float
    decode_us: float
    normalize_us: float | None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="passes per measurement; best wins")
    parser.add_argument("--max-events", type=int, default=0, help="use at most N events (0: all)")
    args = parser.parse_args(argv)

    events, source = load_events(args.max_events)
    records = [json_to_avro(event) for event in events]
    bodies = [avro_body(record) for record in records]
    normalize = find_normalize()

    registry = SchemaRegistryClient.new_client({"url": "mock://"})
    schema_id = registry.register_schema("cloudtrail-value", Schema(SCHEMA_TEXT, "AVRO"))
    header = b"\x00" + schema_id.to_bytes(4, "big")

    def raw_avro(payloads: list[bytes], offset: int) -> Callable[[], None]:
        def run() -> None:
            for payload in payloads:
                stream = io.BytesIO(payload)
                stream.seek(offset)
                fastavro.schemaless_reader(stream, READER_SCHEMA, None)

        return run

    def raw_json(payloads: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            for payload in payloads:
                json.loads(payload)

        return run

    wire = [header + body for body in bodies]
    texts = [json.dumps(event).encode() for event in events]
    cases: list[tuple[str, Decoder, list[bytes], str, Callable[[], None]]] = [
        (
            "registry Avro (wire format)",
            RegistryAvroDecoder(registry),
            wire,
            "fastavro",
            raw_avro(wire, 5),
        ),
        ("schemaless Avro", SchemalessAvroDecoder(), bodies, "fastavro", raw_avro(bodies, 0)),
        ("JSON", JsonDecoder(), texts, "json.loads", raw_json(texts)),
    ]
    rows = [
        Row(
            decoder=name,
            mean_bytes=sum(map(len, payloads)) / len(payloads),
            raw_name=raw_name,
            raw_us=per_event_us(raw, len(payloads), args.repeats),
            decode_us=per_event_us(decode_all(decoder, payloads), len(payloads), args.repeats),
            normalize_us=None
            if normalize is None
            else per_event_us(
                decode_and_normalize_all(decoder, payloads, normalize), len(payloads), args.repeats
            ),
        )
        for name, decoder, payloads, raw_name, raw in cases
    ]
    print_table(rows, source, len(events))
    print_shapes(shape_rows(events, args.repeats, normalize))


MULTI = 100
"""Events per message of the multi-event shapes (a CloudWatch Logs batch may hold more)."""

FOREIGN_TYPED: dict[str, Any] = {
    "type": "record", "name": "AuditEvent", "namespace": "bench",
    "fields": [
        *({"name": name, "type": ["null", "string"], "default": None} for name in (
            "eventVersion", "eventTime", "eventSource", "eventName", "awsRegion",
            "sourceIPAddress", "userAgent", "eventID", "recipientAccountId",
            "requestParameters", "responseElements")),
        {"name": "userIdentity", "type": ["null", {"type": "map", "values": "string"}],
         "default": None},
    ],
}
FOREIGN_JSON: dict[str, Any] = {
    "type": "record", "name": "RawEvent", "namespace": "bench",
    "fields": [{"name": "receivedAt", "type": "long"}, {"name": "json", "type": "string"}],
}


def shape_rows(
    events: list[dict[str, Any]], repeats: int, normalize: Normalize | None
) -> list[Row]:
    """Per-event cost of each JSON shape and of producers' own Avro schemas."""
    texts = [json.dumps(event).encode() for event in events]
    batches = [events[start:start + MULTI] for start in range(0, len(events), MULTI)]
    single: list[Shape] = ["record", "eventbridge", "filebeat", "cribl"]
    cases: list[tuple[str, Decoder, list[bytes], int]] = [
        (f"JSON {shape}", JsonDecoder(), [wrap([event], shape) for event in events], len(events))
        for shape in single
    ]
    cases += [
        ("JSON record, gzip", JsonDecoder(), [gzip.compress(text) for text in texts], len(events)),
        (f"JSON records ({MULTI}/message)", JsonDecoder(),
         [wrap(batch, "records") for batch in batches], len(events)),
        (f"JSON lookup-events ({MULTI}/message)", JsonDecoder(),
         [wrap(batch, "lookup-events") for batch in batches], len(events)),
        (f"CloudWatch gzip ({MULTI}/message)", JsonDecoder(),
         [wrap(batch, "cloudwatch") for batch in batches], len(events)),
        (f"CloudWatch base64 gzip ({MULTI}/message)", JsonDecoder(),
         [wrap(batch, "cloudwatch", base64_encoded=True) for batch in batches], len(events)),
        ("Avro, own typed schema", SchemalessAvroDecoder(writer_schema=FOREIGN_TYPED),
         [foreign_typed_body(event) for event in events], len(events)),
        ("Avro, record as one JSON string", SchemalessAvroDecoder(writer_schema=FOREIGN_JSON),
         [foreign_json_body(text) for text in texts], len(events)),
    ]
    rows = []
    for name, decoder, payloads, count in cases:
        rows.append(Row(
            decoder=name,
            mean_bytes=sum(map(len, payloads)) / len(payloads),
            raw_name="",
            raw_us=0.0,
            decode_us=per_event_us(decode_all(decoder, payloads), count, repeats),
            normalize_us=None if normalize is None else per_event_us(
                decode_and_normalize_all(decoder, payloads, normalize), count, repeats),
        ))
    return rows


def foreign_typed_body(event: dict[str, Any]) -> bytes:
    value: dict[str, Any] = {
        field["name"]: event.get(field["name"]) for field in FOREIGN_TYPED["fields"]
    }
    for name in ("requestParameters", "responseElements"):
        value[name] = None if value[name] is None else json.dumps(value[name])
    identity = event.get("userIdentity")
    value["userIdentity"] = None if identity is None else {
        key: item for key, item in identity.items() if isinstance(item, str)
    }
    for name in ("eventVersion", "eventTime", "eventSource", "eventName", "awsRegion",
                 "sourceIPAddress", "userAgent", "eventID", "recipientAccountId"):
        if not isinstance(value[name], str):
            value[name] = None
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(FOREIGN_TYPED), value)
    return buffer.getvalue()


def foreign_json_body(text: bytes) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(FOREIGN_JSON),
                               {"receivedAt": 0, "json": text.decode()})
    return buffer.getvalue()


def print_shapes(rows: list[Row]) -> None:
    print("\n| shape | mean payload (bytes) | decode µs/event "
          "| decode + normalize (5 fields) µs/event |")
    print("|---|---:|---:|---:|")
    for row in rows:
        normalized = "n/a" if row.normalize_us is None else f"{row.normalize_us:.2f}"
        print(f"| {row.decoder} | {row.mean_bytes:.0f} | {row.decode_us:.2f} | {normalized} |")


def load_events(max_events: int) -> tuple[list[dict[str, Any]], str]:
    events = list(dataset_events()) if DATASETS.is_dir() else []
    source = f"{DATASETS.resolve()} (real records)"
    if not events:
        events, source = generated_events(), "generated records (../shared/datasets is absent)"
    return (events[:max_events] if max_events else events), source


def dataset_events() -> Iterator[dict[str, Any]]:
    for path in sorted(DATASETS.rglob("*.gz")):
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
        if path.name.endswith(".jsonl.gz"):
            yield from (json.loads(line) for line in text.splitlines() if line.strip())
        else:
            document = json.loads(text)
            yield from document["Records"] if isinstance(document, dict) else document


def generated_events() -> list[dict[str, Any]]:
    """Records shaped like CloudTrail's IAM and S3 calls, for a clone without ../shared."""
    events = []
    for index in range(2000):
        caller, target = f"user{index % 7}", f"user{index % 5}"
        events.append(
            {
                "eventVersion": "1.09",
                "userIdentity": {
                    "type": "IAMUser",
                    "principalId": f"AIDA{index:016d}",
                    "arn": f"arn:aws:iam::111122223333:user/{caller}",
                    "accountId": "111122223333",
                    "accessKeyId": f"AKIA{index:016d}",
                    "userName": caller,
                },
                "eventTime": "2024-07-30T21:53:13Z",
                "eventSource": "iam.amazonaws.com" if index % 3 else "s3.amazonaws.com",
                "eventName": "CreateAccessKey" if index % 3 else "GetObject",
                "awsRegion": "us-east-1",
                "sourceIPAddress": "203.0.113.7",
                "userAgent": "aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64",
                "requestParameters": {"userName": target},
                "responseElements": {"accessKey": {"userName": target, "status": "Active"}},
                "requestID": f"{index:08d}-aaaa-bbbb-cccc-dddddddddddd",
                "eventID": f"{index:08d}-eeee-ffff-0000-111111111111",
                "readOnly": False,
                "eventType": "AwsApiCall",
                "managementEvent": True,
                "recipientAccountId": "111122223333",
                "eventCategory": "Management",
                "tlsDetails": {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256"},
            }
        )
    return events


def avro_body(record: CloudTrailRecord) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, READER_SCHEMA, record)
    return buffer.getvalue()


def find_normalize() -> Normalize | None:
    """`consumer.cloudtrail.normalize.normalize`, when that module is there to import."""
    try:
        module = importlib.import_module("consumer.cloudtrail.normalize")
    except ImportError:
        return None
    normalize: Normalize | None = getattr(module, "normalize", None)
    return normalize


def decode_all(decoder: Decoder, payloads: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        for payload in payloads:
            decoder.decode(payload)

    return run


def decode_and_normalize_all(
    decoder: Decoder, payloads: list[bytes], normalize: Normalize
) -> Callable[[], None]:
    def run() -> None:
        for payload in payloads:
            decoded = decoder.decode(payload)
            if isinstance(decoded, Events):
                for item in decoded.items:
                    if isinstance(item, dict):
                        normalize(item, SEED_RULE_FIELDS)
            else:
                normalize(decoded, SEED_RULE_FIELDS)

    return run


def per_event_us(run: Callable[[], None], events: int, repeats: int) -> float:
    best = min(timed_ns(run) for _ in range(repeats))
    return best / events / 1000


def timed_ns(run: Callable[[], None]) -> int:
    start = time.process_time_ns()
    run()
    return time.process_time_ns() - start


def print_table(rows: list[Row], source: str, events: int) -> None:
    print(f"Data: {events} events from {source}\n")
    print(
        "| decoder | mean payload (bytes) | raw parser | raw µs/event | decode µs/event "
        "| decode / raw | decode + normalize (5 fields) µs/event |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for row in rows:
        normalized = "n/a (no consumer.cloudtrail.normalize.normalize)"
        if row.normalize_us is not None:
            normalized = f"{row.normalize_us:.2f}"
        print(
            f"| {row.decoder} | {row.mean_bytes:.0f} | {row.raw_name} | {row.raw_us:.2f} "
            f"| {row.decode_us:.2f} | {row.decode_us / row.raw_us:.2f}x | {normalized} |"
        )


if __name__ == "__main__":
    main()
