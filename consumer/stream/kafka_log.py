"""The Kafka clients' error reports, aggregated: one line per distinct error per window.

While a broker is down librdkafka reports every failed connection attempt of every client
twice, through `error_cb` and its own log: about 39 lines a second, the consumer's and the
producer's the same. `ClientErrorLog` logs the first report of an error at once, then counts
its repeats (from any client, by either path) and logs one line per window with the count,
"... (x57 in the last 10 s)", until the error stops.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError

WINDOW_S = 10.0
"""How long the repeats of one error are counted before they are logged as one line."""

_VARYING = re.compile(
    r"^\[thrd:[^\]]*\]: "
    r"|\s*\(after \d+ms in state \w+(?:, \d+ identical error\(s\) suppressed)?\)"
)
"""The parts of librdkafka's messages that differ between two reports of the same failure: the
thread its log names, and how long the connection had been in which state."""

_CLIENT = re.compile(r"#(\w+)-")
"""The client kind in librdkafka's instance name, "rdkafka#producer-3"."""


def error_key(text: str) -> str:
    """What makes two reports the same error: their text without thread and timings."""
    return _VARYING.sub("", text)


@dataclass
class _Window:
    started: float
    clients: set[str] = field(default_factory=set)
    repeats: int = 0


class ClientErrorLog:
    """Aggregates client errors into one line per distinct error per `window_s`.

    Fatal errors are logged every time: each one ends the producer or the consumer."""

    def __init__(
        self, logger: logging.Logger, window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._window_s = window_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        """error_cb runs in whichever thread serves the client: the loop's, or the commit's."""

    def report(self, client: str, error: KafkaError) -> None:
        """Log `error`, which `client` ("consumer", "producer") reported, unless it repeats
        an error logged within the window: then it is only counted."""
        if error.fatal():
            self._log.error("%s: %s", client, error.str())
        elif self.first(client, error_key(error.str())):
            self._log.warning("%s: %s", client, error.str())

    def first(self, client: str, key: str) -> bool:
        """True when `key` starts a window (log it now); else the repeat is counted."""
        with self._lock:
            self._flush(self._clock())
            window = self._windows.get(key)
            if window is not None:
                window.repeats += 1
                window.clients.add(client)
                return False
            self._windows[key] = _Window(self._clock(), {client})
            return True

    def flush(self) -> None:
        """Log the counts of windows that ended; call it now and then (each loop turn)."""
        if not self._windows:
            return
        with self._lock:
            self._flush(self._clock())

    def _flush(self, now: float) -> None:
        for key, window in list(self._windows.items()):
            elapsed = now - window.started
            if elapsed < self._window_s:
                continue
            if not window.repeats:
                del self._windows[key]
                continue
            self._log.warning("%s: %s (x%d in the last %.0f s)", ", ".join(sorted(window.clients)),
                              key, window.repeats, elapsed)
            self._windows[key] = _Window(now)


class LibrdkafkaFilter(logging.Filter):
    """Lets a librdkafka log line through only when it starts a window of `errors`."""

    def __init__(self, errors: ClientErrorLog) -> None:
        super().__init__()
        self._errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        # confluent_kafka logs ("%s [%s] %s", facility, instance name, message)
        if not isinstance(record.args, tuple) or len(record.args) != 3:
            return True
        _, name, text = (str(arg) for arg in record.args)
        kind = _CLIENT.search(name)
        return self._errors.first(kind.group(1) if kind else name, error_key(text))


client_errors = ClientErrorLog(logging.getLogger("consumer.stream.kafka"))
"""The one log the consumer and the producer of a process share, so that the same connection
failure, reported by both, is counted in one line."""

librdkafka_logger = logging.getLogger("consumer.stream.librdkafka")
"""The `logger` property of every client: librdkafka's own log lines, aggregated with the
`error_cb` reports they repeat."""
librdkafka_logger.addFilter(LibrdkafkaFilter(client_errors))
