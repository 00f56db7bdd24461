"""The sink's own decisions, without a broker: retry pauses, wedged commits, message sizes."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer.stream.sink import (
    RECORD_OVERHEAD,
    RETRY_BACKOFF_S,
    WEDGED_AFTER_UP_S,
    WedgeWatch,
    _retry,
    record_size,
)


class Failing:
    """A transactional call that fails `times` times with `error`, then succeeds."""

    def __init__(self, times: int, error: KafkaError) -> None:
        self.left = times
        self.error = error
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise KafkaException(self.error)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


CONFLICT = KafkaError(KafkaError._CONFLICT, "another call is in flight", retriable=True)


def test_a_retriable_error_that_returns_at_once_is_retried_after_growing_bounded_pauses() -> None:
    pauses: list[float] = []
    action = Failing(7, CONFLICT)

    _retry(action, "abort", time.monotonic() + 3600, sleep=pauses.append)

    assert action.calls == 8
    assert pauses == [*RETRY_BACKOFF_S, 1.0, 1.0]
    assert RETRY_BACKOFF_S == (0.05, 0.1, 0.2, 0.5, 1.0)


def test_retries_stop_at_the_deadline_and_no_pause_runs_past_it() -> None:
    clock = Clock()
    pauses: list[float] = []

    def sleep(pause: float) -> None:
        pauses.append(pause)
        clock.now += pause

    with pytest.raises(KafkaException):
        _retry(Failing(1000, CONFLICT), "abort", clock.now + 2.0, sleep=sleep, clock=clock)

    assert pauses == [0.05, 0.1, 0.2, 0.5, 1.0, pytest.approx(0.15)]


def test_an_error_that_is_not_retriable_is_raised_without_a_pause() -> None:
    pauses: list[float] = []
    fenced = KafkaError(KafkaError._FENCED, "fenced", fatal=True)

    with pytest.raises(KafkaException):
        _retry(Failing(1, fenced), "commit", time.monotonic() + 3600, sleep=pauses.append)

    assert pauses == []


def stats(*states: tuple[str, str]) -> str:
    """librdkafka's statistics JSON with brokers in the given (state, source)s."""
    return json.dumps({"brokers": {f"b{i}": {"state": state, "source": source}
                                   for i, (state, source) in enumerate(states)}})


def test_a_commit_blocked_while_the_broker_is_down_is_waiting_not_wedged() -> None:
    clock = Clock()
    watch = WedgeWatch(clock)
    watch.on_stats(stats(("UP", "learned")))
    watch.commit_started()
    watch.on_stats(stats(("TRY_CONNECT", "learned"), ("INIT", "configured"),
                         ("TRY_CONNECT", "logical"), ("INIT", "internal")))
    clock.now += 60

    assert not watch.wedged(0)


def test_a_commit_still_blocked_after_the_broker_is_back_for_a_while_is_wedged() -> None:
    clock = Clock()
    watch = WedgeWatch(clock)
    watch.commit_started()
    watch.on_stats(stats(("DOWN", "learned")))
    assert not watch.wedged(0)  # the service asks every 100 ms
    clock.now += 30
    # As in librdkafka#5456: the transaction coordinator is back, the learned broker unused.
    watch.on_stats(stats(("TRY_CONNECT", "learned"), ("UP", "logical")))
    clock.now += WEDGED_AFTER_UP_S - 0.5
    assert not watch.wedged(0)
    watch.on_stats(stats(("TRY_CONNECT", "learned"), ("UP", "logical")))
    clock.now += 0.5

    assert watch.wedged(0)


def test_a_commit_that_ended_or_only_the_internal_broker_up_is_not_wedged() -> None:
    clock = Clock()
    watch = WedgeWatch(clock)
    watch.commit_started()
    watch.on_stats(stats(("UP", "internal")))
    assert not watch.wedged(0)
    clock.now += 60
    assert not watch.wedged(0)
    watch.on_stats(stats(("UP", "learned")))
    watch.commit_ended()
    clock.now += 60

    assert not watch.wedged(0)


def test_a_record_is_never_larger_on_the_wire_than_its_size_bound() -> None:
    headers = [("dlq.reason", b"undecodable"), ("dlq.source.offset", b"12345")]

    size = record_size(b"k" * 10, b"v" * 1000, headers)

    assert size == RECORD_OVERHEAD + 10 + 1000 + sum(10 + len(k) + len(v) for k, v in headers)
    assert record_size(None, None, []) == RECORD_OVERHEAD


def test_a_commit_flushing_a_large_batch_is_busy_until_it_delivered_the_batch() -> None:
    clock = Clock()
    watch = WedgeWatch(clock)
    watch.on_stats(stats(("UP", "learned")))
    watch.commit_started()
    for _ in range(100):  # 10 s of polls every 100 ms, messages still in flight
        clock.now += 0.1
        assert not watch.wedged(in_flight=5000)
    clock.now += WEDGED_AFTER_UP_S - 0.1
    assert not watch.wedged(0)  # drained just now
    clock.now += 0.1
    assert not watch.wedged(0)
    clock.now += WEDGED_AFTER_UP_S

    assert watch.wedged(0)
