"""Where alerts and dead letters go, and how consumed offsets are committed with them.

Two delivery modes, one interface:
- exactly-once: a transactional producer commits alerts, dead letters and the consumed offsets
  in one transaction (`send_offsets_to_transaction`), so a `read_committed` reader sees every
  alert once, whatever instant the detector dies at;
- at-least-once: offsets are committed only after every alert's delivery report succeeded.
Either way `commit()` returning False means the batch did not land and must be read again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType

from consumer.alerts.document import Headers
from consumer.kafka_properties import TRANSACTIONAL_DEFAULTS
from consumer.stream.kafka_log import client_errors, librdkafka_logger
from consumer.stream.metrics import Metrics

log = logging.getLogger(__name__)

class GroupMetadata(Protocol):
    """What a commit needs of the consumer group: its metadata for a transaction, or a
    synchronous offset commit (at-least-once)."""

    @property
    def metadata(self) -> object: ...

    def commit(self, offsets: list[TopicPartition]) -> None: ...


RECORD_OVERHEAD = 61 + 36
"""Bytes a record batch of one record adds to its key, value and headers at most: the batch
header (61) and the record's own varints; each header adds up to 10 more."""

PRODUCER_ONLY = ("transactional.id", "enable.idempotence", "acks", "linger.ms", "compression.type")
"""Producer properties an admin client of the same cluster leaves out."""


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

    def commit_wedged(self) -> bool:
        """True while a commit (in another thread) waits on something that will not come,
        though the producer reaches the cluster: replace the producer now, not at the
        watchdog's deadline. Call it every ~100 ms while waiting for `commit`."""

    def abort(self) -> None:
        """Abandon the open batch; its input will be read again."""

    def poll(self) -> None:
        """Serve delivery reports; call often."""

    def close(self, timeout: float) -> None: ...


_known_limits: dict[str, int] = {}
"""The limits read so far in this process: a producer replaced after a wedged commit (the
broker may be down again) does not wait for them a second time."""


def topic_limits(config: dict[str, str], topics: Sequence[str], timeout: float = 5.0
                 ) -> dict[str, int]:
    """Each topic's `max.message.bytes`, as the broker enforces it: the producer's own
    message.max.bytes does not know it, and a larger message fails the whole transaction.
    Without those the broker does not give (not authorised to describe, unreachable)."""
    wanted = sorted(set(topics) - set(_known_limits))
    if wanted:
        admin = AdminClient({k: v for k, v in config.items() if k not in PRODUCER_ONLY})
        resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in wanted]
        try:
            described = admin.describe_configs(resources, request_timeout=timeout)
            for resource, future in described.items():
                entry = future.result().get("max.message.bytes")
                if entry is not None and entry.value is not None:
                    _known_limits[resource.name] = int(entry.value)
        except KafkaException as error:
            log.info("cannot read the max.message.bytes of %s: %s; a message over it is "
                     "dead-lettered once its delivery failed", ", ".join(wanted), error)
    return {topic: _known_limits[topic] for topic in topics if topic in _known_limits}


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """An upper bound of the bytes one message takes in a record batch, uncompressed."""
    return (RECORD_OVERHEAD + len(key or b"") + len(value or b"")
            + sum(10 + len(name) + len(data or b"") for name, data in headers))


class _ProducerSink:
    def __init__(
        self, config: dict[str, str], metrics: Metrics, timeout: float,
        topics: Sequence[str] = (),
    ) -> None:
        self._limits = topic_limits(config, topics)
        """max.message.bytes of the topics this sink writes, learned from the broker, and
        lowered to below a message whose delivery failed as too large."""
        self._limit_logged: set[str] = set()
        producer_config: dict[str, Any] = {**config, **self._callbacks()}
        smallest = min(self._limits.values(), default=None)
        if smallest is not None and smallest < int(config.get("batch.size", 1_000_000)):
            # The broker checks a whole record batch against max.message.bytes.
            producer_config["batch.size"] = str(smallest)
        self._producer = Producer(producer_config)
        self._metrics = metrics
        self._timeout = timeout
        self._failed_deliveries = 0
        self._open = False
        self.fatal_error: KafkaError | None = None
        """A fatal error the producer reported (fenced by a newer instance, ...), if any."""

    def _callbacks(self) -> dict[str, Any]:
        return {"error_cb": self._on_error, "logger": librdkafka_logger}

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal_error = error
        client_errors.report("producer", error)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failed_deliveries += 1
            self._metrics.produce_errors.labels(error.name()).inc()
            log.error("delivery to %s failed: %s", message.topic(), error)
            if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                # Read again, the batch's same message is refused at once, and dead-lettered.
                topic = str(message.topic())
                headers = cast("Headers", message.headers() or [])
                size = record_size(message.key(), message.value(), headers)
                self._limits[topic] = min(self._limits.get(topic, size), size - 1)

    def _refuse_if_too_large(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        """Raise MSG_SIZE_TOO_LARGE, as the producer does over its message.max.bytes, for a
        message over its topic's max.message.bytes: the broker would fail the transaction."""
        limit = self._limits.get(topic)
        if limit is None:
            return
        size = record_size(key, value, headers)
        if size <= limit:
            return
        self._count_too_large(topic, f"{size} bytes, above the max.message.bytes={limit} of "
                                     f"topic {topic}")
        raise KafkaException(KafkaError(
            KafkaError.MSG_SIZE_TOO_LARGE,
            f"message of {size} bytes is above the max.message.bytes={limit} of topic {topic}",
        ))

    def _count_too_large(self, topic: str, why: str) -> None:
        self._metrics.messages_too_large.labels(topic).inc()
        if topic not in self._limit_logged:
            self._limit_logged.add(topic)
            log.error("a message for %s was refused as too large (%s); such messages are "
                      "counted in messages_too_large_total{topic=%r} and not logged again",
                      topic, why, topic)

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
        if self._limits:
            self._refuse_if_too_large(topic, key, value, headers)
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
                if exception.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    self._count_too_large(topic, "above the producer's message.max.bytes")
                    raise
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
        client_errors.flush()

    def commit_wedged(self) -> bool:
        return False

    def close(self, timeout: float) -> None:
        self._producer.flush(timeout)


RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)
"""Pauses between retries of a transactional call: an error that returns at once (a _CONFLICT
while another call is in flight) must not spin the loop."""


def _retry(
    action: Callable[[], Any], what: str, deadline: float,
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run a transactional call, retrying while librdkafka says the error is retriable, with
    a growing pause (RETRY_BACKOFF_S) between attempts, until `deadline` (on `clock`)."""
    attempt = 0
    while True:
        try:
            action()
            return
        except KafkaException as exception:
            error: KafkaError = exception.args[0]
            if not error.retriable() or clock() >= deadline:
                raise
            pause = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
            log.warning("%s: %s; retrying in %.2fs", what, error, pause)
            sleep(min(pause, max(deadline - clock(), 0.0)))
            attempt += 1


WEDGED_AFTER_UP_S = 8.0
"""A commit still blocked this long after the producer has a broker up again is wedged. A
restarted broker accepts connections seconds before its coordinators have loaded: at 5 s a
slow start on a loaded machine was taken for a wedge (a needless, if harmless, replacement)."""


class WedgeWatch:
    """Tells a commit that waits on the cluster from one that waits on nothing: blocked for
    WEDGED_AFTER_UP_S while a broker was up and every message of the batch was delivered,
    librdkafka lost the coordinator it waits for (a commit flushing a large batch is busy,
    not wedged)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._committing_since: float | None = None
        self._brokers_up_since: float | None = None
        """Since when the producer has had a broker up, without a break; None while none is."""
        self._drained_since: float | None = None
        """Since when the producer has had no message in flight; None while it has."""

    def commit_started(self) -> None:
        self._committing_since = self._clock()

    def commit_ended(self) -> None:
        self._committing_since = None

    def brokers_up(self, up: bool) -> None:
        """What the producer's latest statistics say: is any broker of the cluster up?"""
        if not up:
            self._brokers_up_since = None
        elif self._brokers_up_since is None:
            self._brokers_up_since = self._clock()

    def on_stats(self, stats_json: str) -> None:
        """librdkafka's statistics callback: the brokers' states. The transaction coordinator
        (a logical broker) counts: in the wedge it is up while the learned broker it stands
        for stays in TRY_CONNECT, unused."""
        brokers = json.loads(stats_json).get("brokers", {}).values()
        self.brokers_up(any(broker.get("state") == "UP" and broker.get("source") != "internal"
                            for broker in brokers))

    def wedged(self, in_flight: int) -> bool:
        """`in_flight`: the messages the producer has not delivered yet."""
        if in_flight:
            self._drained_since = None
            return False
        if self._drained_since is None:
            self._drained_since = self._clock()
        if self._committing_since is None or self._brokers_up_since is None:
            return False
        since = max(self._committing_since, self._brokers_up_since, self._drained_since)
        return self._clock() - since >= WEDGED_AFTER_UP_S


class TransactionalSink(_ProducerSink):
    """Exactly-once: alerts, dead letters and offsets in one Kafka transaction."""

    def __init__(
        self, config: dict[str, str], metrics: Metrics, timeout: float = 30.0,
        topics: Sequence[str] = (),
    ) -> None:
        self._watch = WedgeWatch()
        super().__init__({**TRANSACTIONAL_DEFAULTS.values(), **config}, metrics, timeout, topics)
        self._initialised = False

    def _callbacks(self) -> dict[str, Any]:
        return {**super()._callbacks(), "stats_cb": self._watch.on_stats}

    def commit_wedged(self) -> bool:
        """The commit has been blocked for WEDGED_AFTER_UP_S while a broker was up and the
        batch delivered: the transactional call waits on a coordinator librdkafka lost."""
        try:
            self._producer.poll(0)  # serves the statistics (and a fatal error)
        except KafkaException as exception:
            self._fatal(exception)
        return self._watch.wedged(len(self._producer))

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
        self._watch.commit_started()
        try:
            return self._commit(offsets, group)
        finally:
            self._watch.commit_ended()

    def _commit(self, offsets: Sequence[TopicPartition], group: GroupMetadata) -> bool:
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
