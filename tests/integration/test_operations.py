"""What an operator reads off a running detector, checked against the broker: lag and committed
offsets in both delivery modes, /readyz's reason, and settings the broker refuses, which must
stop start-up with exit 2 (the supervisor too) instead of a crash loop."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from functools import partial
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer
from prometheus_client import CollectorRegistry

from consumer.offline.replay import avro_encoder
from consumer.stream.metrics import Metrics
from consumer.stream.sink import FatalSinkError, TransactionalSink
from tests.conftest import Broker, TopicFactory
from tests.support.events import event
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    committed_offsets,
    read_all,
    wait_all_committed,
    wait_until,
)
from tests.support.metrics import scrape

PARTITIONS = 3
FILLED = 2
"""Messages go to the first FILLED partitions; the last stays empty and must show lag 0 too."""
EXIT_CONFIG = 2


@pytest.fixture
def topics(new_topic: TopicFactory) -> Topics:
    return Topics(input=new_topic("in", partitions=PARTITIONS), alerts=new_topic("alerts"),
                  dlq=new_topic("dlq"))


def produce_to_each_partition(bootstrap: str, topic: str, count: int, tag: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "5"})
    encode = avro_encoder()
    for index in range(count):
        producer.produce(topic, value=encode(event(event_id=f"{tag}-{index}")),
                         partition=index % FILLED)
    assert producer.flush(30) == 0


@pytest.mark.parametrize("delivery", ["exactly-once", "at-least-once"])
def test_lag_and_committed_offset_follow_the_groups_real_commits(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess],
    delivery: str,
) -> None:
    bootstrap = broker.bootstrap_servers
    group = f"g-{uuid.uuid4().hex}"
    detector = DetectorProcess(
        bootstrap, topics, run_dir / "detectors", group=group,
        extra_env={"DETECTOR_DELIVERY": delivery,
                   "DETECTOR_KAFKA_CONSUMER": '{"statistics.interval.ms": "200"}'},
    )
    detectors.append(detector.start())
    detector.wait_ready()

    for round_number in range(2):  # the second round starts from offsets committed before
        produce_to_each_partition(bootstrap, topics.input, 300, f"r{round_number}")
        ends = wait_all_committed(bootstrap, group, topics.input, PARTITIONS)

        def metrics_match_the_broker(ends: list[int] = ends) -> bool:
            metrics = scrape(detector.port)
            committed = [metrics.value("committed_offset", topic=topics.input, partition=str(p))
                         for p in range(PARTITIONS)]
            lags = [metrics.matching("consumer_lag_messages", topic=topics.input,
                                     partition=str(p)) for p in range(PARTITIONS)]
            return committed == ends and all(len(lag) == 1 and lag[0].value == 0 for lag in lags)

        wait_until(metrics_match_the_broker, 15,
                   f"committed_offset {ends} and lag 0 on every partition ({delivery})")
        committed = committed_offsets(bootstrap, group, topics.input, PARTITIONS)
        assert committed[:FILLED] == ends[:FILLED]
        assert ends[FILLED:] == [0]


def readyz_body(port: int) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return None


def test_readyz_says_which_topic_is_missing(
    broker: Broker, run_dir: Path, detectors: list[DetectorProcess], new_topic: TopicFactory
) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    topics = Topics(input=missing, alerts=new_topic("alerts"), dlq=new_topic("dlq"))
    detector = DetectorProcess(broker.bootstrap_servers, topics, run_dir / "detectors",
                               group=f"g-{uuid.uuid4().hex}")
    detectors.append(detector.start())

    wait_until(lambda: readyz_body(detector.port) == (
        503, f"not ready: topic(s) {missing} do not exist\n"), 30, "/readyz naming the topic")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_transaction_timeout_above_the_brokers_maximum_stops_start_up_with_exit_2(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess],
    workers: str,
) -> None:
    detector = DetectorProcess(
        broker.bootstrap_servers, topics, run_dir / "detectors", group=f"g-{uuid.uuid4().hex}",
        extra_env={"DETECTOR_KAFKA_PRODUCER": '{"transaction.timeout.ms": "3600000"}',
                   "DETECTOR_WORKERS": workers},
    )
    detectors.append(detector.start())
    assert detector.process is not None

    assert detector.process.wait(60) == EXIT_CONFIG
    log = detector.log()
    assert "transaction.timeout.ms=3600000 is above the broker's transaction.max.timeout.ms" in log
    assert "DETECTOR_KAFKA_PRODUCER" in log
    assert "restarting" not in log


def test_avro_read_as_json_is_dead_lettered_with_a_hint_and_logged_once_per_window(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    bootstrap = broker.bootstrap_servers
    group = f"g-{uuid.uuid4().hex}"
    detector = DetectorProcess(bootstrap, topics, run_dir / "detectors", group=group,
                               extra_env={"DETECTOR_INPUT_FORMAT": "json",
                                          "DETECTOR_PREFILTER": "false"})
    detectors.append(detector.start())
    detector.wait_ready()

    produce_to_each_partition(bootstrap, topics.input, 300, "avro")
    dead = read_all(bootstrap, topics.dlq, wanted=300)

    assert len(dead) == 300
    errors = {dict(m.headers() or [])["dlq.error"] for m in dead}
    assert all(b"set DETECTOR_INPUT_FORMAT=avro (--input-format avro)" in e for e in errors)
    wait_until(lambda: "more dead letter(s) with reason" in detector.log(), 30,
               "the count of the dead letters not logged one by one")
    warnings = [line for line in detector.log().splitlines() if "dead letter " in line]
    assert len(warnings) < 10, warnings


def fenced(sink: TransactionalSink) -> bool:
    try:
        sink.poll()
    except FatalSinkError:
        return True
    return False


def test_a_fenced_producer_reported_by_poll_is_a_fatal_sink_error_not_a_crash(
    broker: Broker, new_topic: TopicFactory
) -> None:
    """librdkafka raises the fencing from poll() when a produce request meets the newer epoch:
    the service must see FatalSinkError (exit 1, "fatal: ..."), not a traceback."""
    topic = new_topic("fenced")
    transactional_id = f"t-{uuid.uuid4().hex}"
    config = {"bootstrap.servers": broker.bootstrap_servers, "transactional.id": transactional_id}
    sink = TransactionalSink(config, Metrics(CollectorRegistry()))
    sink.init(deadline=float("inf"))
    sink.begin()
    sink.produce(topic, b"k", b"before", [])
    Producer(config).init_transactions(30)
    sink.produce(topic, b"k", b"after", [])

    wait_until(partial(fenced, sink), 30, "poll to report the fencing")
    assert sink.fatal_error is not None
    assert sink.fatal_error.code() == KafkaError._FENCED
    del sink  # its producer goes now, not after the session's broker has stopped
