"""max_signals on a stream: the limit per window, the suppressed count, and roll-back with the
batch (the counts live in the partition's state store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consumer.alerts.throttle import ClosedWindow, Throttle, window_start
from consumer.stream.state import PartitionStore

MINUTE = timedelta(minutes=1)
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
"""The start of a one-minute window (and of a five-minute one)."""


class Counted:
    """A throttle with the store of one partition, as the stream gives it."""

    def __init__(self, limits: dict[str, tuple[int, timedelta]]) -> None:
        self.throttle = Throttle(limits)
        self.store = PartitionStore(("in", 0))

    def admit(self, rule_id: str, now: datetime) -> bool:
        return self.throttle.admit(rule_id, now, self.store)

    def closed_windows(self, now: datetime) -> list[ClosedWindow]:
        return self.throttle.closed_windows(now, [self.store])


def admit_many(throttle: Counted, rule_id: str, count: int, now: datetime) -> list[bool]:
    return [throttle.admit(rule_id, now) for _ in range(count)]


def test_window_start_is_aligned_to_the_epoch() -> None:
    assert window_start(T0 + timedelta(seconds=59.9), MINUTE) == T0
    assert window_start(T0 + MINUTE, MINUTE) == T0 + MINUTE
    assert window_start(T0 + timedelta(minutes=7), timedelta(minutes=5)) == T0 + 5 * MINUTE
    assert window_start(T0 + timedelta(seconds=3.5), timedelta(seconds=2)) == T0 + timedelta(
        seconds=2
    )


def test_at_most_max_signals_matches_per_window_become_alerts() -> None:
    throttle = Counted({"r": (3, MINUTE)})

    admitted = admit_many(throttle, "r", 5, T0 + timedelta(seconds=10))

    assert admitted == [True, True, True, False, False]


def test_the_limit_starts_afresh_in_the_next_window() -> None:
    throttle = Counted({"r": (2, MINUTE)})
    admit_many(throttle, "r", 4, T0)

    assert admit_many(throttle, "r", 3, T0 + MINUTE) == [True, True, False]


def test_rules_are_limited_independently() -> None:
    throttle = Counted({"a": (1, MINUTE), "b": (2, MINUTE)})

    assert admit_many(throttle, "a", 2, T0) == [True, False]
    assert admit_many(throttle, "b", 3, T0) == [True, True, False]


def test_a_closed_window_is_reported_once_with_its_suppressed_count_when_it_has_ended() -> None:
    throttle = Counted({"r": (5, MINUTE)})
    admit_many(throttle, "r", 12, T0 + timedelta(seconds=1))

    before_the_end = throttle.closed_windows(T0 + timedelta(seconds=59))
    at_the_end = throttle.closed_windows(T0 + MINUTE)
    later = throttle.closed_windows(T0 + 2 * MINUTE)

    assert before_the_end == []
    assert at_the_end == [ClosedWindow("r", T0, T0 + MINUTE, 7)]
    assert later == []


def test_a_window_without_suppressed_matches_is_not_reported() -> None:
    throttle = Counted({"r": (5, MINUTE)})
    admit_many(throttle, "r", 5, T0)

    assert throttle.closed_windows(T0 + MINUTE) == []


def test_a_window_ended_by_the_next_match_is_reported_with_its_own_counts() -> None:
    throttle = Counted({"r": (2, MINUTE)})
    admit_many(throttle, "r", 5, T0)
    admit_many(throttle, "r", 4, T0 + MINUTE)

    reported = throttle.closed_windows(T0 + MINUTE + timedelta(seconds=1))
    next_window = throttle.closed_windows(T0 + 2 * MINUTE)

    assert reported == [ClosedWindow("r", T0, T0 + MINUTE, 3)]
    assert next_window == [ClosedWindow("r", T0 + MINUTE, T0 + 2 * MINUTE, 2)]


def test_a_rolled_back_batch_forgets_its_counts() -> None:
    throttle = Counted({"r": (2, MINUTE)})
    admit_many(throttle, "r", 1, T0)
    throttle.store.committed()
    assert admit_many(throttle, "r", 3, T0) == [True, False, False]

    throttle.store.rolled_back()

    assert admit_many(throttle, "r", 3, T0) == [True, False, False]
    assert throttle.closed_windows(T0 + MINUTE) == [ClosedWindow("r", T0, T0 + MINUTE, 2)]


def test_a_window_reported_inside_a_rolled_back_batch_is_reported_again() -> None:
    throttle = Counted({"r": (1, MINUTE)})
    admit_many(throttle, "r", 4, T0)
    throttle.store.committed()
    assert throttle.closed_windows(T0 + MINUTE) == [ClosedWindow("r", T0, T0 + MINUTE, 3)]

    throttle.store.rolled_back()

    assert throttle.closed_windows(T0 + MINUTE) == [ClosedWindow("r", T0, T0 + MINUTE, 3)]
    throttle.store.committed()
    assert throttle.closed_windows(T0 + 2 * MINUTE) == []


def test_the_limit_is_the_members_over_its_partitions_and_each_partition_reports_its_own_part(
) -> None:
    throttle = Throttle({"r": (3, MINUTE)})
    first, second = PartitionStore(("in", 0)), PartitionStore(("in", 1))
    member = [first, second]

    admitted = [throttle.admit("r", T0, store, member)
                for store in (first, second, first, second, first)]

    assert admitted == [True, True, True, False, False]
    assert throttle.closed_windows(T0 + MINUTE, member) == [
        ClosedWindow("r", T0, T0 + MINUTE, 2)
    ]
    assert dict(first.items()) == dict(second.items()) == {}
