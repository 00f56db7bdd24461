"""Elastic's max_signals, on a stream: at most N alerts per rule per interval, none lost silently.

Elastic's rule runs every `interval` and writes at most `max_signals` alerts a run. Here each rule
gets fixed windows of `interval` (aligned to the epoch); matches above the limit are counted, and
when the window has ended one summary alert reports how many were held back.

The counts live in a key/value store per input partition (`Counts`; on the stream a changelog-
backed state store), so they commit with the batch that counted them: an aborted batch read again
is not counted twice, and a restart, a crash or a rebalance before the window ends still gets
its summary out once, from whoever owns the partition then. A member's limit applies to the sum
over the partitions it holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, cast


class Counts(Protocol):
    """A partition's key/value store (`consumer.stream.state.PartitionStore`)."""

    def get(self, key: str, default: object = None) -> object: ...

    def put(self, key: str, value: object) -> None: ...

    def delete(self, key: str) -> None: ...

    def items(self) -> Iterable[tuple[str, object]]: ...


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    rule_id: str
    start: datetime
    end: datetime
    suppressed: int


def window_start(moment: datetime, interval: timedelta) -> datetime:
    seconds = interval.total_seconds()
    epoch_seconds = moment.timestamp()
    return datetime.fromtimestamp(epoch_seconds - epoch_seconds % seconds, UTC)


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


class Throttle:
    def __init__(self, limits: dict[str, tuple[int, timedelta]]) -> None:
        """limits: rule_id -> (max_signals, interval)."""
        self._limits = limits

    def admit(
        self, rule_id: str, now: datetime, counts: Counts,
        member: Iterable[Counts] | None = None,
    ) -> bool:
        """True when this match may become an alert; False when it is counted for the summary.
        `counts` is the store of the match's partition, `member` every store of this member
        (default: that one alone)."""
        max_signals, interval = self._limits[rule_id]
        start = window_start(now, interval)
        key = f"{rule_id}@{_ms(start)}"
        emitted = sum(_window(store.get(key))[0] for store in (member or (counts,)))
        mine = _window(counts.get(key))
        admitted = emitted < max_signals
        counts.put(key, [mine[0] + admitted, mine[1] + (not admitted), _ms(start + interval)])
        return admitted

    def closed_windows(self, now: datetime, member: Iterable[Counts]) -> list[ClosedWindow]:
        """Windows that ended with suppressed matches, summed over `member`'s stores; each is
        returned once (its counts are deleted, with the batch that reports it)."""
        now_ms = _ms(now)
        suppressed: dict[tuple[str, int, int], int] = {}
        for store in member:
            for key, value in list(store.items()):
                _, held_back, end_ms = _window(value)
                if end_ms > now_ms:
                    continue
                rule_id, _, start_ms = key.rpartition("@")
                window = (rule_id, int(start_ms), end_ms)
                suppressed[window] = suppressed.get(window, 0) + held_back
                store.delete(key)
        return [
            ClosedWindow(rule_id, datetime.fromtimestamp(start_ms / 1000, UTC),
                         datetime.fromtimestamp(end_ms / 1000, UTC), count)
            for (rule_id, start_ms, end_ms), count in sorted(suppressed.items()) if count
        ]


def _window(value: object) -> tuple[int, int, int]:
    """(emitted, suppressed, end in ms) of a stored window; zeros for none."""
    if value is None:
        return 0, 0, 0
    emitted, suppressed, end_ms = cast("list[int]", value)
    return emitted, suppressed, end_ms
