"""The same detection as a Quix Streams application, run as its own process by bench.pipeline_bench.

    python -m bench.pipeline.quix --bootstrap B --topic T --group G --alerts-topic A \
        --rules-dir D [--guarantee exactly-once|at-least-once] [--framed]

Quix Streams is optional and not a project dependency: it pins confluent-kafka < 2.13 and
pydantic < 2.14, so it lives in its own virtualenv and this module runs with that interpreter,
from the repository root (see docs/benchmarks.md). The application deserializes
each message with Quix's own AvroDeserializer (fastavro's schemaless reader under the hood), keeps
the records the rule matches, and produces their alert documents. It prints `{"first": t}` when
the first message reaches the filter, and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quixstreams import Application  # type: ignore[import-not-found]
from quixstreams.models.serializers import (  # type: ignore[import-not-found]
    Deserializer,
    Serializer,
)
from quixstreams.models.serializers.avro import AvroDeserializer  # type: ignore[import-not-found]

from bench.pipeline.reference import bench_rule, report
from consumer.alerts.document import Alert, alert_for, encode_json
from consumer.cloudtrail.record import SCHEMA_TEXT, avro_to_json

CONFLUENT_HEADER_BYTES = 5


class AlertSerializer(Serializer):  # type: ignore[misc]
    """Alert documents as the detector writes them."""

    def __call__(self, value: Alert, ctx: Any) -> bytes:
        return encode_json(value)


class FramedAvroDeserializer(Deserializer):  # type: ignore[misc]
    """Schema Registry framing around a body written with our schema: skip the header."""

    def __init__(self, schema: dict[str, Any]) -> None:
        super().__init__()
        self._body = AvroDeserializer(schema=schema)

    def __call__(self, value: bytes, ctx: Any) -> Any:
        return self._body(value[CONFLUENT_HEADER_BYTES:], ctx)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--alerts-topic", required=True)
    parser.add_argument("--rules-dir", type=Path, required=True)
    parser.add_argument("--guarantee", choices=["exactly-once", "at-least-once"],
                        default="exactly-once")
    parser.add_argument("--commit-interval", type=float, default=0.1,
                        help="seconds between commits (Quix's default is 5)")
    parser.add_argument("--framed", action="store_true",
                        help="payloads carry the 5-byte Schema Registry header")
    args = parser.parse_args(argv)

    rule = bench_rule(args.rules_dir)
    schema = json.loads(SCHEMA_TEXT)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee=args.guarantee,
        commit_interval=args.commit_interval,
        auto_create_topics=False,
        use_changelog_topics=False,
        loglevel="WARNING",
    )
    deserializer = FramedAvroDeserializer(schema) if args.framed else AvroDeserializer(schema)
    source = app.topic(args.topic, value_deserializer=deserializer)
    alerts = app.topic(args.alerts_topic, value_serializer=AlertSerializer())
    seen_first = False

    def matches(record: dict[str, Any]) -> bool:
        nonlocal seen_first
        if not seen_first:
            seen_first = True
            report(first=time.time())
        return rule.query.matches(record)

    def to_alert(record: dict[str, Any]) -> Alert:
        return alert_for(
            rule, record, detected_at=datetime.now(UTC),
            original=json.dumps(avro_to_json(record), separators=(",", ":")),
        )

    stream = app.dataframe(source).filter(matches).apply(to_alert)
    stream.to_topic(alerts, key=lambda alert: alert.key)
    app.run()


if __name__ == "__main__":
    main()
