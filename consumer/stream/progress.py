"""What the running detector tells its log: a periodic one-line summary, and dead-letter warnings
rate-limited per reason, with a hint when the input looks like the other format.

A wrong DETECTOR_INPUT_FORMAT dead-letters every message: one warning per message would bury
the log (thousands of lines for one replay) and the decoder's reason ("Expected -62 bytes")
does not say what is wrong. Here the first message of each reason is logged, the rest counted
and summarised once per window.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("consumer.stream.service")

WARNING_WINDOW_S = 10.0
"""At most one dead-letter warning per reason in this window; the rest are counted."""

PROGRESS_EVERY_S = 60.0
"""How often the one-line progress summary is logged at INFO."""


def format_hint(payload: bytes | None, input_format: str) -> str | None:
    """Why a payload that failed to decode may be in the other format, or None."""
    if not payload:
        return None
    body = payload.lstrip()
    looks_json = body[:1] in (b"{", b"[")
    if input_format != "json" and looks_json:
        return ("the payload looks like JSON: if the producers write JSON, set "
                "DETECTOR_INPUT_FORMAT=json (--input-format json)")
    if input_format == "json" and not looks_json:
        if payload[0] == 0 and len(payload) > 5:
            return ("the payload looks like Schema Registry Avro (magic byte 0): set "
                    "DETECTOR_INPUT_FORMAT=avro-registry (--input-format avro-registry)")
        return ("the payload is not JSON text; if the producers write bare Avro, set "
                "DETECTOR_INPUT_FORMAT=avro (--input-format avro)")
    if input_format == "avro-registry" and payload[0] != 0:
        return ("the payload has no Schema Registry header (magic byte 0); if the producers "
                "write bare Avro, set DETECTOR_INPUT_FORMAT=avro (--input-format avro)")
    return None


@dataclass
class ReasonLog:
    """Dead-letter warnings: the first of each reason per window, then a count."""

    window_s: float = WARNING_WINDOW_S
    clock: Callable[[], float] = time.monotonic
    _opened: dict[str, float] = field(default_factory=dict)
    _suppressed: Counter[str] = field(default_factory=Counter)

    def warn(self, reason: str, text: str) -> None:
        now = self.clock()
        opened = self._opened.get(reason)
        if opened is not None and now - opened < self.window_s:
            self._suppressed[reason] += 1
            return
        self._summarise(reason)
        self._opened[reason] = now
        log.warning("%s", text)

    def flush(self) -> None:
        """Report the counts of windows that have ended; call from the loop."""
        now = self.clock()
        for reason, opened in list(self._opened.items()):
            if now - opened >= self.window_s:
                self._summarise(reason)
                del self._opened[reason]

    def _summarise(self, reason: str) -> None:
        count = self._suppressed.pop(reason, 0)
        if count:
            log.warning("%d more dead letter(s) with reason %s in the last %.0fs (not logged "
                        "one by one; see cloudtrail_detector_dead_letters_total)",
                        count, reason, self.window_s)


@dataclass
class Progress:
    """Totals since start, and a summary line every `every_s`."""

    every_s: float = PROGRESS_EVERY_S
    clock: Callable[[], float] = time.monotonic
    consumed: int = 0
    alerts: int = 0
    dead_letters: int = 0
    _last_at: float = field(default=0.0)
    _last_consumed: int = 0

    def __post_init__(self) -> None:
        self._last_at = self.clock()

    def due(self) -> bool:
        return self.clock() - self._last_at >= self.every_s

    def line(self, lag: int | None, partitions: int) -> str:
        """The summary since the last line, and restart the interval."""
        now = self.clock()
        elapsed = max(now - self._last_at, 1e-9)
        rate = (self.consumed - self._last_consumed) / elapsed
        self._last_at, self._last_consumed = now, self.consumed
        lag_text = "unknown" if lag is None else f"{lag:,}"
        return (f"progress: consumed {self.consumed:,} ({rate:,.0f}/s), alerts {self.alerts:,}, "
                f"dead letters {self.dead_letters:,}, lag {lag_text} over {partitions} "
                f"partition(s)")
