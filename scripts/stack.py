"""The compose stack without Docker: broker, Schema Registry, detector, replay and Prometheus
(Elasticsearch too with --elasticsearch) as processes on this machine, all on loopback.

Like `docker compose up`: the bundled sample is replayed in a loop at 20 events/s through the
registry (Avro), the detector reads it and writes JSON alerts, Prometheus scrapes the detector
and evaluates deploy/prometheus/alerts.yml. With --elasticsearch, the alerts are indexed into
`cloudtrail-alerts` with deploy/'s index template as they arrive. Ctrl-C stops everything.
`--check` waits for the first alerts (and their indexing), then stops: a smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from scripts.elasticsearch_local import LocalElasticsearch
from scripts.kafka_local import LocalKafka
from scripts.prometheus_local import LocalPrometheus
from scripts.registry_local import LocalRegistry
from scripts.server_local import ServerProcess

REPO = Path(__file__).resolve().parents[1]
INPUT, ALERTS, DLQ = "cloudtrail-events", "cloudtrail-alerts", "cloudtrail-events.dlq"
TEMPLATE = REPO / "deploy" / "elasticsearch" / "cloudtrail-alerts.index-template.json"


def create_topics(bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(INPUT, 4, 1), NewTopic(ALERTS, 1, 1), NewTopic(DLQ, 1, 1)]
    )
    for future in futures.values():
        future.result(30)


class Child(ServerProcess):
    """The detector or the replayer: `python -m consumer ...` with its log in the stack's dir."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        super().__init__(workdir)


def index_alerts(bootstrap: str, server: LocalElasticsearch, stop: threading.Event,
                 indexed: list[int]) -> None:
    """Consume committed alerts and bulk-index them, until `stop`."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"stack-indexer-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest", "isolation.level": "read_committed",
    })
    consumer.subscribe([ALERTS])
    try:
        while not stop.is_set():
            batch = [m for m in consumer.consume(500, timeout=1.0) if m.error() is None]
            if not batch:
                continue
            lines = []
            for message in batch:
                lines += [json.dumps({"create": {"_index": ALERTS}}),
                          (message.value() or b"{}").decode()]
            answer = server.request("POST", "/_bulk?refresh=true",
                                    ("\n".join(lines) + "\n").encode(),
                                    content_type="application/x-ndjson")
            if answer["errors"]:
                print(f"indexing errors: {answer['items'][:2]}", file=sys.stderr, flush=True)
            indexed[0] += len(batch)
    finally:
        consumer.close()


@contextlib.contextmanager
def running(server: ServerProcess, what: str) -> Iterator[None]:
    try:
        yield
    finally:
        print(f"stopping {what}", flush=True)
        server.stop()


def alerts_so_far(bootstrap: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"w-{uuid.uuid4().hex}",
                         "isolation.level": "read_committed"})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(ALERTS, 0), timeout=10)[1])
    finally:
        consumer.close()


def main() -> int:
    """Run the stack; with --check, remove its temporary directory once the check passed."""
    args = parse_arguments()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cloudtrail-stack-"))
    code = run_stack(args, workdir)
    if args.check and code == 0 and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elasticsearch", action="store_true",
                        help="also run Elasticsearch and index the alerts (default: off)")
    parser.add_argument("--metrics-port", type=int, default=9464,
                        help="the detector's /metrics port (default: 9464)")
    parser.add_argument("--check", action="store_true",
                        help="stop once alerts arrived (and were indexed): a smoke test")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where logs and data go (default: a new temporary directory)")
    return parser.parse_args()


def run_stack(args: argparse.Namespace, workdir: Path) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    with contextlib.ExitStack() as stack:
        broker = LocalKafka(workdir=workdir / "kafka")
        broker.start()
        stack.callback(broker.stop)
        bootstrap = broker.bootstrap_servers
        create_topics(bootstrap)
        print(f"kafka       {bootstrap}", flush=True)

        registry = LocalRegistry(workdir / "registry")
        registry.start()
        stack.enter_context(running(registry, "registry"))
        print(f"registry    {registry.url}", flush=True)

        environment = {
            "DETECTOR_BOOTSTRAP_SERVERS": bootstrap,
            "DETECTOR_SCHEMA_REGISTRY_URL": registry.url,
            "DETECTOR_INPUT_TOPICS": INPUT,
            "DETECTOR_ALERTS_TOPIC": ALERTS,
            "DETECTOR_DLQ_TOPIC": DLQ,
            "DETECTOR_METRICS_HOST": "127.0.0.1",
            "DETECTOR_METRICS_PORT": str(args.metrics_port),
        }
        detector = Child("detector", workdir)
        detector.spawn([sys.executable, "-m", "consumer", "run"], env=environment, cwd=REPO)
        stack.enter_context(running(detector, "detector"))
        print(f"detector    http://127.0.0.1:{args.metrics_port}/metrics "
              f"(log {detector.log_path})", flush=True)

        sample = resources.files("consumer") / "samples" / "cloudtrail-sample.jsonl"
        replayer = Child("replay", workdir)
        replayer.spawn(
            [sys.executable, "-m", "consumer", "replay", str(sample), "--topic", INPUT,
             "--format", "avro-registry", "--bootstrap-servers", bootstrap,
             "--schema-registry-url", registry.url, "--rate", "20/s", "--loop", "--retime"],
            # Replay needs no transaction: exactly-once delivery is the detector's business.
            env={**{key: value for key, value in os.environ.items()
                    if not key.startswith("DETECTOR_")},
                 "DETECTOR_DELIVERY": "at-least-once"},
            cwd=REPO,
        )
        stack.enter_context(running(replayer, "replay"))
        print(f"replay      {sample.name} at 20 events/s (log {replayer.log_path})", flush=True)

        prometheus = LocalPrometheus(
            [f"127.0.0.1:{args.metrics_port}"], workdir / "prometheus",
            rule_files=[REPO / "deploy" / "prometheus" / "alerts.yml"], scrape_interval="5s",
        )
        prometheus.start()
        stack.enter_context(running(prometheus, "prometheus"))
        print(f"prometheus  {prometheus.url}/alerts", flush=True)

        indexed = [0]
        if args.elasticsearch:
            elasticsearch = LocalElasticsearch(workdir / "elasticsearch")
            elasticsearch.start()
            stack.enter_context(running(elasticsearch, "elasticsearch"))
            elasticsearch.request("PUT", "/_index_template/cloudtrail-alerts",
                                  json.loads(TEMPLATE.read_text()))
            indexer = threading.Thread(
                target=index_alerts, args=(bootstrap, elasticsearch, stop, indexed), daemon=True
            )
            indexer.start()
            stack.callback(indexer.join, 10)
            print(f"elastic     {elasticsearch.url}/{ALERTS}/_search", flush=True)
        print(f"logs and data in {workdir}; Ctrl-C stops the stack", flush=True)

        deadline = time.monotonic() + 180
        while not stop.wait(1.0):
            for child in (detector, replayer):
                if child.process is not None and child.process.poll() is not None:
                    print(f"{child.name} exited: {child.log_tail()}", file=sys.stderr)
                    return 1
            if args.check:
                done = alerts_so_far(bootstrap) > 0 and (not args.elasticsearch or indexed[0])
                if done:
                    print(f"check passed: alerts in {ALERTS}"
                          + (f", {indexed[0]} indexed" if args.elasticsearch else ""))
                    stop.set()
                elif time.monotonic() > deadline:
                    print("check failed: no alert within 180 s", file=sys.stderr)
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
