"""The detector end to end on an embedded broker: sample events in, alerts out.

Starts a local Kafka broker, creates the topics, runs `cloudtrail-detector run` as its own
process, replays the bundled sample (written for this project) as Avro, prints every alert the
detector produced, then shuts everything down cleanly. `--keep-running` leaves the detector up
(metrics on http://127.0.0.1:9464/metrics) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from importlib import resources
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.offline.replay import ReplayOptions, avro_encoder, replay
from scripts.kafka_local import LocalKafka

INPUT, ALERTS, DLQ = "cloudtrail-events", "cloudtrail-alerts", "cloudtrail-events.dlq"
EXPECTED_SAMPLE_ALERTS = 4


def create_topics(bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(INPUT, 3, 1), NewTopic(ALERTS, 3, 1), NewTopic(DLQ, 1, 1)]
    )
    for future in futures.values():
        future.result(30)


def read_alerts(bootstrap: str, wanted: int, timeout: float) -> list[dict[str, object]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"demo-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([ALERTS])
    alerts: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(alerts) < wanted and time.monotonic() < deadline:
            for message in consumer.consume(100, timeout=0.5):
                if message.error() is None:
                    alerts.append(json.loads(message.value() or b"{}"))
    finally:
        consumer.close()
    return alerts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-running", action="store_true")
    args = parser.parse_args()
    sample = resources.files("consumer") / "samples" / "cloudtrail-sample.jsonl"
    broker = LocalKafka()
    print("starting a local Kafka broker (KRaft)...", flush=True)
    broker.start()
    detector: subprocess.Popen[bytes] | None = None
    try:
        bootstrap = broker.bootstrap_servers
        create_topics(bootstrap)
        env = {
            **os.environ,
            "DETECTOR_BOOTSTRAP_SERVERS": bootstrap,
            "DETECTOR_INPUT_TOPICS": INPUT,
            "DETECTOR_ALERTS_TOPIC": ALERTS,
            "DETECTOR_INPUT_FORMAT": "avro",
            "DETECTOR_START_FROM": "earliest",
            "DETECTOR_METRICS_HOST": "127.0.0.1",
            "DETECTOR_LOG_LEVEL": "WARNING",
        }
        detector = subprocess.Popen([sys.executable, "-m", "consumer", "run"], env=env)
        with resources.as_file(sample) as sample_path:
            sent = replay(
                [Path(sample_path)],
                Producer({"bootstrap.servers": bootstrap}),
                INPUT,
                avro_encoder(),
                ReplayOptions(),
            )
        print(f"Kafka at {bootstrap}; replayed {sent} sample CloudTrail events as Avro to {INPUT}")
        alerts = read_alerts(bootstrap, EXPECTED_SAMPLE_ALERTS, timeout=60)
        for alert in alerts:
            kibana = alert["kibana"]
            assert isinstance(kibana, dict)
            print(f"ALERT [{kibana['alert']['severity']}] {kibana['alert']['reason']}")
        print(f"{len(alerts)} alert(s) in {ALERTS}; the sample holds {EXPECTED_SAMPLE_ALERTS}")
        if args.keep_running:
            print("detector running; metrics on http://127.0.0.1:9464/metrics; Ctrl-C stops")
            stop_signals = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            signal.sigwait(stop_signals)
        return 0 if len(alerts) == EXPECTED_SAMPLE_ALERTS else 1
    finally:
        if detector is not None:
            detector.send_signal(signal.SIGTERM)
            detector.wait(30)
        broker.close()


if __name__ == "__main__":
    sys.exit(main())
