"""What `scan` shows a person: a progress bar on a terminal, an alert table, and a summary.

The alerts themselves stay JSON Lines when written to a file or a pipe (for tools); the table
is for an analyst at a terminal, one line per alert with the pivots of an investigation.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

BAR_EVERY_S = 0.1
"""Redraw the progress bar at most this often: drawing costs more than scanning a record."""

TABLE_COLUMNS = (
    ("time", "kibana.alert.original_time", 24),
    ("severity", "kibana.alert.severity", 8),
    ("rule", "rule.name", 40),
    ("actor", "user.name", 24),
    ("target", "user.target.name", 24),
    ("account", "cloud.account.id", 12),
    ("source", "source.address", 15),
)
"""Header, ECS field and width of each table column; the last column is not cut."""


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _field(document: dict[str, Any], dotted: str) -> str:
    node: Any = document
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "-"
        node = node[part]
    if isinstance(node, list):
        return ",".join(str(item) for item in node)
    return str(node)


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class AlertTable:
    """Alerts as aligned text rows, written as they are found."""

    def __init__(self, output: TextIO) -> None:
        self._output = output
        self._header_written = False

    def write(self, document: dict[str, Any]) -> None:
        if not self._header_written:
            self._row([header for header, _, _ in TABLE_COLUMNS])
            self._header_written = True
        self._row([_field(document, dotted) for _, dotted, _ in TABLE_COLUMNS])

    def _row(self, cells: Sequence[str]) -> None:
        widths = [width for _, _, width in TABLE_COLUMNS]
        parts = [_cell(cell, width).ljust(width) for cell, width in zip(cells, widths, strict=True)]
        parts[-1] = cells[-1]
        self._output.write("  ".join(parts).rstrip() + "\n")
        self._output.flush()


@dataclass
class ProgressBar:
    """One self-redrawing stderr line: bytes of the files done, records and alerts so far."""

    stream: TextIO
    total_bytes: int
    clock: Callable[[], float] = time.monotonic
    width: Callable[[], int] = lambda: shutil.get_terminal_size((80, 24)).columns
    _started: float = field(default=0.0)
    _drawn_at: float = field(default=float("-inf"))
    _visible: bool = False

    def __post_init__(self) -> None:
        self._started = self.clock()

    def update(self, done_bytes: int, records: int, alerts: int, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._drawn_at < BAR_EVERY_S:
            return
        self._drawn_at = now
        elapsed = max(now - self._started, 1e-9)
        fraction = min(done_bytes / self.total_bytes, 1.0) if self.total_bytes else 1.0
        text = (f" {fraction:4.0%} {human_bytes(done_bytes)}/{human_bytes(self.total_bytes)}"
                f"  {records:,} records ({records / elapsed:,.0f}/s)  {alerts:,} alerts")
        room = max(self.width() - len(text) - 3, 10)
        filled = int(room * fraction)
        bar = "[" + "#" * filled + "-" * (room - filled) + "]"
        self.stream.write("\r" + (bar + text)[: self.width() - 1])
        self.stream.flush()
        self._visible = True

    def clear(self) -> None:
        """Erase the bar, so what is printed next starts on a clean line."""
        if self._visible:
            self.stream.write("\r" + " " * (self.width() - 1) + "\r")
            self.stream.flush()
            self._visible = False


def summary(*, files: int, total_bytes: int, records: int, alerts: int, rules: int,
            skipped: int, seconds: float) -> str:
    return (f"scanned {files:,} file(s), {human_bytes(total_bytes)}: {records:,} records, "
            f"{alerts:,} alerts from {rules} rule(s), {skipped:,} skipped, in {seconds:.1f}s")
