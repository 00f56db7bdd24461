"""Elastic's max_signals, on a stream: at most N alerts per rule per interval, none lost silently.

Elastic's rule runs every `interval` and writes at most `max_signals` alerts a run. Here each rule
gets fixed windows of `interval` (aligned to the epoch); matches above the limit are counted, and
when the window has ended one summary alert reports how many were held back.

The counts belong to the open Kafka transaction: `checkpoint()` when it begins, `rollback()` when
it aborts, so an aborted batch that is read again is not counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    emitted: int = 0
    suppressed: int = 0


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


class Throttle:
    def __init__(self, limits: dict[str, tuple[int, timedelta]]) -> None:
        """limits: rule_id -> (max_signals, interval)."""
        self._limits = limits
        self._windows: dict[str, Window] = {}
        self._closed: list[ClosedWindow] = []
        self._saved: tuple[dict[str, Window], list[ClosedWindow]] = ({}, [])

    def admit(self, rule_id: str, now: datetime) -> bool:
        """True when this match may become an alert; False when it is counted for the summary."""
        max_signals, interval = self._limits[rule_id]
        start = window_start(now, interval)
        window = self._windows.get(rule_id)
        if window is None or window.start != start:
            if window is not None and window.suppressed:
                self._closed.append(self._close(rule_id, window))
            window = Window(start)
        if window.emitted < max_signals:
            self._windows[rule_id] = replace(window, emitted=window.emitted + 1)
            return True
        self._windows[rule_id] = replace(window, suppressed=window.suppressed + 1)
        return False

    def _close(self, rule_id: str, window: Window) -> ClosedWindow:
        end = window.start + self._limits[rule_id][1]
        return ClosedWindow(rule_id, window.start, end, window.suppressed)

    def closed_windows(self, now: datetime) -> list[ClosedWindow]:
        """Windows that ended with suppressed matches; each is returned once."""
        closed, self._closed = self._closed, []
        for rule_id, window in list(self._windows.items()):
            ended = self._close(rule_id, window)
            if now >= ended.end:
                del self._windows[rule_id]
                if window.suppressed:
                    closed.append(ended)
        return closed

    def checkpoint(self) -> None:
        """Remember the state at the start of a transaction."""
        self._saved = (dict(self._windows), list(self._closed))

    def rollback(self) -> None:
        """Forget what an aborted transaction counted."""
        windows, closed = self._saved
        self._windows, self._closed = dict(windows), list(closed)
