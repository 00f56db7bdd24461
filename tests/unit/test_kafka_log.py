"""The aggregated log of the Kafka clients' errors: what an outage's flood of reports becomes."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from consumer.stream.kafka_log import ClientErrorLog, LibrdkafkaFilter, error_key

REFUSED = ("127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused "
           "(after {ms}ms in state CONNECT)")


def refused(ms: int = 0) -> KafkaError:
    return KafkaError(KafkaError._TRANSPORT, REFUSED.format(ms=ms))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def errors(clock: Clock) -> ClientErrorLog:
    return ClientErrorLog(logging.getLogger("test.kafka"), window_s=10.0, clock=clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "test.kafka"]


def test_an_outage_of_repeated_connection_errors_from_two_clients_logs_one_line_per_window(
    errors: ClientErrorLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for tick in range(300):  # 30 s of a consumer and a producer failing every 100 ms each
        clock.now = 1000.0 + tick / 10
        errors.report("consumer", refused(tick % 3))
        errors.report("producer", refused())
        errors.flush()
    clock.now = 1031.0
    errors.flush()

    logged = lines(caplog)
    key = error_key(refused().str())
    assert logged == [
        f"consumer: {REFUSED.format(ms=0)}",
        f"consumer, producer: {key} (x199 in the last 10 s)",
        f"consumer, producer: {key} (x200 in the last 10 s)",
        f"consumer, producer: {key} (x200 in the last 11 s)",
    ]


def test_an_error_that_stopped_is_logged_at_once_when_it_comes_back(
    errors: ClientErrorLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    errors.report("consumer", refused())
    clock.now += 30
    errors.flush()
    errors.report("producer", refused())

    assert lines(caplog) == [f"consumer: {REFUSED.format(ms=0)}",
                             f"producer: {REFUSED.format(ms=0)}"]


def test_distinct_errors_are_counted_apart(
    errors: ClientErrorLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
    for _ in range(3):
        errors.report("consumer", refused())
        errors.report("consumer", down)
    clock.now += 10
    errors.flush()

    assert sorted(lines(caplog)) == sorted([
        f"consumer: {REFUSED.format(ms=0)}",
        "consumer: 1/1 brokers are down",
        f"consumer: {error_key(refused().str())} (x2 in the last 10 s)",
        "consumer: 1/1 brokers are down (x2 in the last 10 s)",
    ])


def test_a_fatal_error_is_logged_every_time_as_an_error(
    errors: ClientErrorLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    fenced = KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    errors.report("producer", fenced)
    errors.report("producer", fenced)

    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "producer: fenced by a newer instance"),
    ] * 2


def test_librdkafkas_own_log_line_of_a_failure_counts_with_its_error_cb_report(
    errors: ClientErrorLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    librdkafka = logging.getLogger("test.kafka.librdkafka")
    librdkafka.addFilter(LibrdkafkaFilter(errors))
    try:
        errors.report("consumer", refused())
        for _ in range(2):  # as confluent_kafka logs it
            librdkafka.error("%s [%s] %s", "FAIL", "rdkafka#producer-2",
                             "[thrd:127.0.0.1:9092/bootstrap]: " + REFUSED.format(ms=1)
                             .replace(")", ", 1 identical error(s) suppressed)"))
        clock.now += 10
        errors.flush()
    finally:
        librdkafka.filters.clear()

    assert [record.getMessage() for record in caplog.records] == [
        f"consumer: {REFUSED.format(ms=0)}",
        f"consumer, producer: {error_key(refused().str())} (x2 in the last 10 s)",
    ]
