"""Where alerts and dead letters go, and how consumed offsets are committed with them.

Two delivery modes, one interface:
- exactly-once: a transactional producer commits alerts, dead letters and the consumed offsets
  in one transaction (`send_offsets_to_transaction`), so a `read_committed` reader sees every
  alert once, whatever instant the detector dies at;
- at-least-once: offsets are committed only after every alert's delivery report succeeded.
Either way `commit()` returning False means the batch did not land and must be read again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer.alerts.document import Headers
from consumer.stream.metrics import Metrics

log = logging.getLogger(__name__)

class GroupMetadata(Protocol):
    """What a commit needs of the consumer group: its metadata for a transaction, or a
    synchronous offset commit (at-least-once)."""

    @property
    def metadata(self) -> object: ...

    def commit(self, offsets: list[TopicPartition]) -> None: ...


class FatalSinkError(Exception):
    """The producer cannot go on (fenced by a newer instance, or a fatal librdkafka error)."""


class Sink(Protocol):
    fatal_error: KafkaError | None

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
        *, partition: int | None = None,
    ) -> None:
        """Queue one message in the current batch (to `partition`, else by its key)."""

    def begin(self) -> None:
        """Open a batch (a transaction in exactly-once mode); idempotent while one is open."""

    @property
    def in_batch(self) -> bool: ...

    def commit(self, offsets: Sequence[TopicPartition], group: GroupMetadata) -> bool:
        """Make the batch's messages and offsets durable together; False when it was abandoned."""

    def abort(self) -> None:
        """Abandon the open batch; its input will be read again."""

    def poll(self) -> None:
        """Serve delivery reports; call often."""

    def close(self, timeout: float) -> None: ...


class _ProducerSink:
    def __init__(self, config: dict[str, str], metrics: Metrics, timeout: float) -> None:
        self._producer = Producer({**config, "error_cb": self._on_error})
        self._metrics = metrics
        self._timeout = timeout
        self._failed_deliveries = 0
        self._open = False
        self.fatal_error: KafkaError | None = None
        """A fatal error the producer reported (fenced by a newer instance, ...), if any."""

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal_error = error
        log.warning("producer: %s", error)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failed_deliveries += 1
            self._metrics.produce_errors.labels(error.name()).inc()
            log.error("delivery to %s failed: %s", message.topic(), error)

    def _fatal(self, exception: KafkaException) -> None:
        """Re-raise a fatal producer error (fenced by a newer instance, ...) as the sink's own,
        so the service stops cleanly instead of flushing a dead producer."""
        error: KafkaError = exception.args[0]
        if not (error.fatal() or error.code() == KafkaError._FATAL):
            raise exception
        self.fatal_error = self.fatal_error or error
        raise FatalSinkError(f"transactional producer failed: {self.fatal_error}") from None

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
        *, partition: int | None = None,
    ) -> None:
        while True:
            try:
                if partition is None:
                    self._producer.produce(
                        topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                    )
                else:
                    self._producer.produce(
                        topic, value=value, key=key, headers=headers, partition=partition,
                        on_delivery=self._on_delivery,
                    )
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exception:
                self._fatal(exception)

    @property
    def in_batch(self) -> bool:
        return self._open

    def poll(self) -> None:
        try:
            self._producer.poll(0)
        except KafkaException as exception:
            # A fenced producer raises from poll() too: that is the fatal error, not a crash.
            self._fatal(exception)
        self._metrics.messages_in_flight.set(len(self._producer))

    def close(self, timeout: float) -> None:
        self._producer.flush(timeout)


RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)
"""Pauses between retries of a transactional call: an error that returns at once (a _CONFLICT
while another call is in flight) must not spin the loop."""


def _retry(action: Callable[[], Any], what: str, deadline: float) -> None:
    """Run a transactional call, retrying while librdkafka says the error is retriable."""
    attempt = 0
    while True:
        try:
            action()
            return
        except KafkaException as exception:
            error: KafkaError = exception.args[0]
            if error.retriable() and time.monotonic() < deadline:
                log.warning("%s: %s; retrying", what, error)
                time.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
                attempt += 1
                continue
            raise


TRANSACTIONAL_DEFAULTS = {"retry.backoff.ms": "2"}
"""Producer settings for transactions; `kafka_producer` overrides them.

Until the broker has written the markers of the transaction just committed, it answers the next
transaction's first request with CONCURRENT_TRANSACTIONS, and librdkafka retries after
`retry.backoff.ms`: 100 ms by default, which made every send_offsets_to_transaction take
~100 ms (Kafka's Java producer retries this case after 20 ms). The markers take a few ms, so a
10 ms backoff still made back-to-back transactions (a steady stream, committed whenever the
input is drained) wait ~10 ms each: 2 ms gives alerts at 10,000 events/s a p50 ~10 ms lower
(bench/commit_latency_bench.py, bench/pipeline_bench.py's latency run). Retries still back off
exponentially up to `retry.backoff.max.ms`.
"""


class TransactionalSink(_ProducerSink):
    """Exactly-once: alerts, dead letters and offsets in one Kafka transaction."""

    def __init__(self, config: dict[str, str], metrics: Metrics, timeout: float = 30.0) -> None:
        super().__init__({**TRANSACTIONAL_DEFAULTS, **config}, metrics, timeout)
        self._initialised = False

    def init(self, deadline: float) -> None:
        """Fence older instances with our transactional.id and abort what they left open."""
        _retry(lambda: self._producer.init_transactions(self._timeout), "init", deadline)
        self._initialised = True

    def begin(self) -> None:
        if not self._open:
            self._producer.begin_transaction()
            self._failed_deliveries = 0
            self._open = True

    def commit(self, offsets: Sequence[TopicPartition], group: GroupMetadata) -> bool:
        if not self._open:
            return True
        deadline = time.monotonic() + self._timeout
        try:
            if offsets:
                _retry(
                    lambda: self._producer.send_offsets_to_transaction(
                        list(offsets), group.metadata, self._timeout
                    ),
                    "send offsets",
                    deadline,
                )
            _retry(lambda: self._producer.commit_transaction(self._timeout), "commit", deadline)
        except KafkaException as exception:
            self._fail(exception.args[0])
            return False
        self._open = False
        self._metrics.transactions.labels("committed").inc()
        return True

    def _fail(self, error: KafkaError) -> None:
        if error.fatal():
            raise FatalSinkError(f"transactional producer failed: {error}")
        log.warning("transaction abandoned: %s", error)
        self.abort()

    def abort(self) -> None:
        if not self._open:
            return
        try:
            _retry(
                lambda: self._producer.abort_transaction(self._timeout),
                "abort",
                time.monotonic() + self._timeout,
            )
        except KafkaException as exception:
            error: KafkaError = exception.args[0]
            raise FatalSinkError(f"could not abort the transaction: {error}") from exception
        self._open = False
        self._metrics.transactions.labels("aborted").inc()


class AtLeastOnceSink(_ProducerSink):
    """Offsets are committed only once every message of the batch was acknowledged."""

    def begin(self) -> None:
        if not self._open:
            self._failed_deliveries = 0
            self._open = True

    def commit(self, offsets: Sequence[TopicPartition], group: GroupMetadata) -> bool:
        if not self._open:
            return True
        remaining = self._producer.flush(self._timeout)
        self._open = False
        if remaining or self._failed_deliveries:
            log.warning(
                "batch not acknowledged (%d failed, %d unsent); reading it again",
                self._failed_deliveries, remaining,
            )
            return False
        if offsets:
            try:
                group.commit(list(offsets))
            except KafkaException as exception:
                log.warning("offset commit failed: %s; reading the batch again", exception)
                return False
        return True

    def abort(self) -> None:
        self._open = False
