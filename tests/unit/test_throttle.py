"""max_signals on a stream: the limit per window, the suppressed count, and transaction rollback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consumer.alerts.throttle import ClosedWindow, Throttle, window_start

MINUTE = timedelta(minutes=1)
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
"""The start of a one-minute window (and of a five-minute one)."""


def admit_many(throttle: Throttle, rule_id: str, count: int, now: datetime) -> list[bool]:
    return [throttle.admit(rule_id, now) for _ in range(count)]


def test_window_start_is_aligned_to_the_epoch() -> None:
    assert window_start(T0 + timedelta(seconds=59.9), MINUTE) == T0
    assert window_start(T0 + MINUTE, MINUTE) == T0 + MINUTE
    assert window_start(T0 + timedelta(minutes=7), timedelta(minutes=5)) == T0 + 5 * MINUTE
    assert window_start(T0 + timedelta(seconds=3.5), timedelta(seconds=2)) == T0 + timedelta(
        seconds=2
    )


def test_at_most_max_signals_matches_per_window_become_alerts() -> None:
    throttle = Throttle({"r": (3, MINUTE)})

    admitted = admit_many(throttle, "r", 5, T0 + timedelta(seconds=10))

    assert admitted == [True, True, True, False, False]


def test_the_limit_starts_afresh_in_the_next_window() -> None:
    throttle = Throttle({"r": (2, MINUTE)})
    admit_many(throttle, "r", 4, T0)

    assert admit_many(throttle, "r", 3, T0 + MINUTE) == [True, True, False]


def test_rules_are_limited_independently() -> None:
    throttle = Throttle({"a": (1, MINUTE), "b": (2, MINUTE)})

    assert admit_many(throttle, "a", 2, T0) == [True, False]
    assert admit_many(throttle, "b", 3, T0) == [True, True, False]


def test_a_closed_window_is_reported_once_with_its_suppressed_count_when_it_has_ended() -> None:
    throttle = Throttle({"r": (5, MINUTE)})
    admit_many(throttle, "r", 12, T0 + timedelta(seconds=1))

    before_the_end = throttle.closed_windows(T0 + timedelta(seconds=59))
    at_the_end = throttle.closed_windows(T0 + MINUTE)
    later = throttle.closed_windows(T0 + 2 * MINUTE)

    assert before_the_end == []
    assert at_the_end == [ClosedWindow("r", T0, T0 + MINUTE, 7)]
    assert later == []


def test_a_window_without_suppressed_matches_is_not_reported() -> None:
    throttle = Throttle({"r": (5, MINUTE)})
    admit_many(throttle, "r", 5, T0)

    assert throttle.closed_windows(T0 + MINUTE) == []


def test_a_window_ended_by_the_next_match_is_reported_with_its_own_counts() -> None:
    throttle = Throttle({"r": (2, MINUTE)})
    admit_many(throttle, "r", 5, T0)
    admit_many(throttle, "r", 4, T0 + MINUTE)

    reported = throttle.closed_windows(T0 + MINUTE + timedelta(seconds=1))
    next_window = throttle.closed_windows(T0 + 2 * MINUTE)

    assert reported == [ClosedWindow("r", T0, T0 + MINUTE, 3)]
    assert next_window == [ClosedWindow("r", T0 + MINUTE, T0 + 2 * MINUTE, 2)]


def test_rollback_forgets_the_counts_of_an_aborted_batch() -> None:
    throttle = Throttle({"r": (2, MINUTE)})
    admit_many(throttle, "r", 1, T0)
    throttle.checkpoint()
    assert admit_many(throttle, "r", 3, T0) == [True, False, False]

    throttle.rollback()

    assert admit_many(throttle, "r", 3, T0) == [True, False, False]
    assert throttle.closed_windows(T0 + MINUTE) == [ClosedWindow("r", T0, T0 + MINUTE, 2)]


def test_rollback_restores_a_window_the_aborted_batch_closed_so_it_is_reported_once() -> None:
    throttle = Throttle({"r": (1, MINUTE)})
    admit_many(throttle, "r", 3, T0)
    throttle.checkpoint()
    admit_many(throttle, "r", 1, T0 + MINUTE)

    throttle.rollback()
    admit_many(throttle, "r", 1, T0 + MINUTE)

    assert throttle.closed_windows(T0 + MINUTE) == [ClosedWindow("r", T0, T0 + MINUTE, 2)]
    assert throttle.closed_windows(T0 + 2 * MINUTE) == []


def test_rollback_after_a_committed_batch_keeps_that_batchs_counts() -> None:
    throttle = Throttle({"r": (1, MINUTE)})
    throttle.checkpoint()
    admit_many(throttle, "r", 2, T0)
    throttle.checkpoint()
    admit_many(throttle, "r", 5, T0)

    throttle.rollback()

    assert throttle.closed_windows(T0 + MINUTE) == [ClosedWindow("r", T0, T0 + MINUTE, 1)]


def test_a_window_reported_inside_an_aborted_batch_is_reported_again() -> None:
    throttle = Throttle({"r": (1, MINUTE)})
    admit_many(throttle, "r", 4, T0)
    throttle.checkpoint()
    assert throttle.closed_windows(T0 + MINUTE) == [ClosedWindow("r", T0, T0 + MINUTE, 3)]

    throttle.rollback()

    assert throttle.closed_windows(T0 + MINUTE) == [ClosedWindow("r", T0, T0 + MINUTE, 3)]
