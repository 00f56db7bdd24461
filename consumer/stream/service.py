"""The detector service: consume a batch, judge every message, produce alerts, commit.

    source (consumer group) → BatchProcessor (Detector → alerts / dead letters) → Checkpoint

A batch is the unit of delivery: everything it produced, the state it changed and the offsets it
consumed are committed together (one transaction in exactly-once mode), or abandoned together
and read again (`checkpoint.py`). This module holds the lifecycle (wait for Kafka, open the
clients, run, shut down) and the loop; `batch.py` judges a batch.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Protocol, cast

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType

from consumer.alerts.document import Alert, encode_json
from consumer.cloudtrail.decode import DecodeError
from consumer.config import ConfigError, Settings
from consumer.rules.detector import Detector
from consumer.rules.exceptions import ExceptionLoadError, ExceptionWatcher
from consumer.rules.loader import LoadedRule
from consumer.stream.batch import THROTTLE_STORE, BatchProcessor
from consumer.stream.checkpoint import Checkpoint, CommitPolicy
from consumer.stream.metrics import Metrics
from consumer.stream.sink import AtLeastOnceSink, FatalSinkError, Sink, TransactionalSink
from consumer.stream.source import InputSource, PartitionsCallback, Source
from consumer.stream.state import (
    ChangelogReader,
    KafkaChangelogReader,
    Partition,
    StateStore,
    changelog_topic,
    ensure_changelogs,
)

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
EXIT_SHUTDOWN_TIMEOUT = 3

DEFAULT_TRANSACTION_TIMEOUT_MS = "60000"
"""librdkafka's default transaction.timeout.ms."""

RETRY_LATER_BACKOFF_S = 5.0
"""How long a partition waits after a "retry later" decode error (e.g. registry down)."""


@dataclass
class Health:
    """What /healthz and /readyz report, updated by the loop."""

    last_loop: float = field(default_factory=time.monotonic)
    ready: bool = False
    waiting_for: str = "starting"
    """Why the detector is not ready, as /readyz tells it (when `ready` is False)."""
    fatal: str | None = None
    stuck_after_s: float = 60.0
    unready_after_s: float = 5.0

    def alive(self) -> bool:
        return self.fatal is None and time.monotonic() - self.last_loop < self.stuck_after_s

    def serving(self) -> bool:
        """Ready, and the loop turned lately: a loop blocked in a commit to a broker that went
        away reports not ready at once, long before it counts as stuck."""
        return self.unready_reason() is None

    def unready_reason(self) -> str | None:
        """None when ready; else what /readyz says is missing."""
        if self.fatal is not None:
            return f"fatal: {self.fatal}"
        stalled = time.monotonic() - self.last_loop
        if stalled >= self.unready_after_s:
            return f"the loop has not turned for {stalled:.0f}s (blocked in a commit?)"
        if not self.ready:
            return self.waiting_for
        return None


def _rule_lookback(rules: list[LoadedRule]) -> timedelta:
    lookbacks = [rule.definition.rule.lookback for rule in rules if rule.enabled]
    return max(lookbacks, default=timedelta(minutes=6))


@dataclass(frozen=True, slots=True)
class Rebalance:
    """The service's rebalance hooks, which a source calls as librdkafka's callbacks run."""

    on_assign: PartitionsCallback
    on_revoke: PartitionsCallback
    on_lost: PartitionsCallback


class Clients(Protocol):
    """Where the service's source, sink and changelogs come from: Kafka (`KafkaClients`), or
    `consumer.stream.testing.InMemoryBroker` in unit tests."""

    def open_source(self, rebalance: Rebalance) -> InputSource: ...

    def open_sink(self) -> Sink: ...

    def changelog_reader(self) -> ChangelogReader: ...


class KafkaClients:
    def __init__(self, settings: Settings, worker: int, metrics: Metrics,
                 lookback: timedelta) -> None:
        self._settings = settings
        self._worker = worker
        self._metrics = metrics
        self._lookback = lookback

    def open_source(self, rebalance: Rebalance) -> InputSource:
        settings = self._settings
        return Source(
            config=settings.consumer_config(self._worker),
            subscription=settings.subscription,
            start_from=settings.start_position(),
            lookback=self._lookback,
            metrics=self._metrics,
            on_assign=rebalance.on_assign,
            on_revoke=rebalance.on_revoke,
            on_lost=rebalance.on_lost,
        )

    def open_sink(self) -> Sink:
        config = self._settings.producer_config(self._worker)
        if self._settings.delivery == "at-least-once":
            return AtLeastOnceSink(config, self._metrics, 30.0)
        transactional = TransactionalSink(config, self._metrics)
        transactional.init(deadline=float("inf"))
        return transactional

    def changelog_reader(self) -> ChangelogReader:
        return KafkaChangelogReader(self._settings.client_config(), self._settings.group_id)


def _keys(partitions: list[TopicPartition]) -> list[Partition]:
    return [(tp.topic, tp.partition) for tp in partitions]


class Service:
    """One member of the consumer group (one worker process)."""

    def __init__(
        self,
        settings: Settings,
        detector: Detector,
        metrics: Metrics,
        health: Health,
        *,
        worker: int = 0,
        encode_alert: Callable[[Alert], bytes] = encode_json,
        exceptions: ExceptionWatcher | None = None,
        clients: Clients | None = None,
    ) -> None:
        """`clients` None means Kafka, waited for at start-up."""
        self.settings = settings
        self.detector = detector
        self.exceptions = exceptions
        self.metrics = metrics
        self.health = health
        self.worker = worker
        self._encode_alert = encode_alert
        self._clients = clients
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self._paused_until: dict[Partition, float] = {}
        self.store_names = [THROTTLE_STORE]
        """The state stores this member keeps; their changelogs are created at start-up."""
        self.stores: dict[str, StateStore] = {}
        self.source: InputSource
        self.checkpoint: Checkpoint
        self.batch: BatchProcessor

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Run until `stopping` is set, then commit or abort and leave the group."""
        clients = self._clients
        if clients is None:
            self._wait_for_topics()
            if self.stopping.is_set():  # stopped while waiting for Kafka: nothing to close
                self.finished.set()
                return
            clients = KafkaClients(self.settings, self.worker, self.metrics,
                                   _rule_lookback(list(self.detector.rules)))
        reader = self.open(clients)
        try:
            while not self.stopping.is_set():
                self.step()
            self.checkpoint.commit()
        except FatalSinkError as error:
            self.health.fatal = str(error)
            raise
        finally:
            self.health.ready = False
            self.metrics.ready.set(0)
            self.source.close()
            if self.health.fatal is None:  # a failed producer has nothing left to deliver
                self.checkpoint.close(5.0)
            reader.close()
            self.finished.set()

    def open(self, clients: Clients) -> ChangelogReader:
        """The sink first (its init_transactions fences an older instance and aborts what it
        left open), then the source, whose rebalances land in the checkpoint. Returns the
        changelog reader the stores restore with, to close at the end."""
        settings = self.settings
        reader = clients.changelog_reader()
        self.stores = {name: StateStore(name, settings.group_id, reader)
                       for name in self.store_names}
        sink = clients.open_sink()
        self.source = clients.open_source(
            Rebalance(self._after_assign, self._before_revoke, self._after_loss)
        )
        self.checkpoint = Checkpoint(
            self.source, sink, clients.open_sink,
            CommitPolicy(settings.transaction_max_messages, settings.transaction_max_ms,
                         self._transaction_timeout_s()),
            self.metrics, participants=list(self.stores.values()),
        )
        self.batch = BatchProcessor(
            settings, self.detector, self.metrics, self.checkpoint, self.stores[THROTTLE_STORE],
            worker=self.worker, encode_alert=self._encode_alert,
        )
        return reader

    def _transaction_timeout_s(self) -> float:
        if self.settings.delivery != "exactly-once":
            return float("inf")
        return int(self.settings.producer_config(self.worker).get(
            "transaction.timeout.ms", DEFAULT_TRANSACTION_TIMEOUT_MS)) / 1000

    def _wait_for_topics(self) -> None:
        """A missing topic or an unreachable broker is logged and waited for, never a crash."""
        refusals: list[KafkaError] = []

        def on_error(error: KafkaError) -> None:
            if error.code() == KafkaError._AUTHENTICATION:
                refusals.append(error)

        admin = AdminClient({**self.settings.client_config()}, error_cb=on_error)
        wanted = {self.settings.alerts_topic, self.settings.dead_letter_topic}
        if not self.settings.input_pattern:
            wanted |= set(self.settings.input_topics)
        delay = 1.0
        while not self.stopping.is_set():
            self.health.last_loop = time.monotonic()
            try:
                metadata = admin.list_topics(timeout=10)
                existing = set(metadata.topics)
            except Exception as error:  # any failure here means "not yet"
                admin.poll(0)
                if refusals:
                    log.error("Kafka at %s refused our credentials (%s): check sasl.mechanism, "
                              "sasl.username and DETECTOR_KAFKA_SASL_PASSWORD or "
                              "DETECTOR_KAFKA_SASL_PASSWORD_FILE; retrying in %.0fs",
                              self.settings.bootstrap_servers, refusals[-1].str(), delay)
                    refusals.clear()
                else:
                    log.error("cannot reach Kafka at %s: %s; retrying in %.0fs",
                              self.settings.bootstrap_servers, error, delay)
                self.health.waiting_for = f"cannot reach Kafka at {self.settings.bootstrap_servers}"
            else:
                missing = sorted(wanted - existing)
                if not missing:
                    self._check_transaction_timeout(admin)
                    if self._create_changelogs(admin, metadata.topics, delay):
                        self.health.waiting_for = "joining the consumer group"
                        return
                else:
                    self.health.waiting_for = f"topic(s) {', '.join(missing)} do not exist"
                    log.error("topic(s) %s do not exist (create them with cloudtrail-detector "
                              "topics create); retrying in %.0fs", ", ".join(missing), delay)
            self.stopping.wait(delay)
            delay = min(delay * 2, 30.0)

    def _check_transaction_timeout(self, admin: AdminClient) -> None:
        """A transaction.timeout.ms above the broker's transaction.max.timeout.ms makes
        init_transactions fail with INVALID_TRANSACTION_TIMEOUT: refuse it here, by name."""
        if self.settings.delivery != "exactly-once":
            return
        wanted = int(self.settings.producer_config(self.worker).get(
            "transaction.timeout.ms", DEFAULT_TRANSACTION_TIMEOUT_MS))
        brokers = admin.list_topics(timeout=10).brokers
        resource = ConfigResource(ResourceType.BROKER, str(next(iter(brokers))))
        try:
            described = admin.describe_configs([resource], request_timeout=10)[resource].result()
        except KafkaException as error:  # e.g. not authorised to describe: the broker decides
            log.info("cannot read the broker's transaction.max.timeout.ms: %s", error)
            return
        entry = described.get("transaction.max.timeout.ms")
        if entry is not None and entry.value is not None and wanted > int(entry.value):
            raise ConfigError(
                f"setting kafka_producer (DETECTOR_KAFKA_PRODUCER): transaction.timeout.ms="
                f"{wanted} is above the broker's transaction.max.timeout.ms={entry.value}"
            )

    def _create_changelogs(self, admin: AdminClient, topics: Mapping[str, Any],
                           delay: float) -> bool:
        """The state stores' changelog topics, with as many partitions as the largest input
        topic; False (logged, retried) when the broker refuses."""
        if self.settings.input_pattern:
            pattern = re.compile(self.settings.input_pattern[1:])
            inputs = [name for name in topics if pattern.match(name)]
        else:
            inputs = list(self.settings.input_topics)
        partitions = max((len(topics[name].partitions) for name in inputs if name in topics),
                         default=1)
        changelogs = [changelog_topic(self.settings.group_id, name) for name in self.store_names]
        try:
            ensure_changelogs(admin, changelogs, partitions)
        except KafkaException as error:
            self.health.waiting_for = f"cannot create the changelog topics: {error}"
            log.error("cannot create or grow the changelog topic(s) %s: %s; retrying in %.0fs",
                      ", ".join(changelogs), error, delay)
            return False
        return True

    # --- the loop ----------------------------------------------------------------------------

    def step(self) -> None:
        """Consume, process, checkpoint when due."""
        self.health.last_loop = time.monotonic()
        self._resume_due_partitions()
        checkpoint, batch_size = self.checkpoint, self.settings.batch_size
        if not checkpoint.open:
            self._reload_exceptions()
        # With a batch open, an empty input means commit now, not wait for more.
        messages = self.source.consume(batch_size, 0 if checkpoint.open else 0.1)
        if messages:
            judged = self.batch.process(messages, time.monotonic())
            checkpoint.consumed(judged.offsets, len(messages))
            for message, error in judged.retry_later:
                self._retry_later(message, error)
        summaries = self.batch.emit_throttle_summaries(datetime.now(UTC))
        if summaries:
            checkpoint.produced_alone(summaries)
        checkpoint.poll()
        self._report()
        if checkpoint.due(drained=len(messages) < batch_size):
            checkpoint.commit()

    def _report(self) -> None:
        """Readiness, and the periodic progress line."""
        source = self.source
        ready = bool(source.assignment) and source.broker_reachable
        self.health.ready = ready
        if not ready:
            self.health.waiting_for = (
                "the broker is unreachable" if not source.broker_reachable
                else "no partitions assigned (waiting for the group, or more members than "
                "partitions)"
            )
        self.metrics.ready.set(1 if ready else 0)
        progress = self.batch.progress
        self.batch.dead_letter_log.flush()
        if progress.due():
            log.info("%s", progress.line(source.lag(), len(source.assignment)))

    def _reload_exceptions(self) -> None:
        """Swap in changed exception files between batches, so that each batch, and a replay of
        it, is judged by one set; the log names the offsets from which the new set applies."""
        if self.exceptions is None:
            return
        try:
            loaded = self.exceptions.poll()
        except ExceptionLoadError as invalid:
            self.metrics.exception_reloads.labels("failed").inc()
            log.error("exception files not reloaded, the previous set stays:\n%s", invalid)
            return
        if loaded is None:
            return
        self.detector.exceptions = loaded
        self.metrics.exception_reloads.labels("applied").inc()
        self.metrics.exception_items.set(loaded.item_count)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        log.info("exceptions %s (%d items) apply from the next batch; committed offsets: %s",
                 loaded.digest, loaded.item_count,
                 ", ".join(f"{t}[{p}]={o}" for (t, p), o in sorted(self.source.committed.items()))
                 or "none yet")

    def _retry_later(self, message: Message, error: DecodeError) -> None:
        """Not poison, just not now: read this partition again from here after a backoff."""
        topic, partition, offset = cast("tuple[str, int, int]", (
            message.topic(), message.partition(), message.offset()))
        log.warning("%s[%d]@%d: %s; retrying in %.0fs", topic, partition, offset, error,
                    RETRY_LATER_BACKOFF_S)
        self.source.pause_at((topic, partition), offset)
        self._paused_until[(topic, partition)] = time.monotonic() + RETRY_LATER_BACKOFF_S

    def _resume_due_partitions(self) -> None:
        now = time.monotonic()
        due = [key for key, until in self._paused_until.items() if until <= now]
        for key in due:
            del self._paused_until[key]
            self.source.resume(key)

    # --- rebalances --------------------------------------------------------------------------

    def _after_assign(self, partitions: list[TopicPartition]) -> None:
        """Restore the new partitions' state before their first message."""
        for key in _keys(partitions):
            for store in self.stores.values():
                store.assign(key, self.source.committed.get(key))

    def _before_revoke(self, revoked: list[TopicPartition]) -> None:
        """Inside a rebalance: land the open batch while we still own its partitions."""
        keys = _keys(revoked)
        if self.health.fatal is None:
            self.checkpoint.revoke(keys)
        self._forget(keys)

    def _after_loss(self, lost: list[TopicPartition]) -> None:
        """Partitions were taken away (session timeout): our commit would be fenced, so the
        open batch is abandoned and their new owner reads it again."""
        keys = _keys(lost)
        self.checkpoint.lose(keys)
        self._forget(keys)

    def _forget(self, partitions: list[Partition]) -> None:
        for key in partitions:
            self._paused_until.pop(key, None)
            for store in self.stores.values():
                store.revoke(key)


def install_signal_handlers(service: Service) -> None:
    """First SIGTERM/SIGINT: stop consuming and shut down cleanly within the deadline.
    A second signal, or a shutdown past the deadline, exits at once."""

    def enforce_deadline() -> None:
        deadline = service.settings.shutdown_timeout_s
        if not service.finished.wait(deadline):
            log.error("shutdown took longer than %.0fs; exiting", deadline)
            os._exit(EXIT_SHUTDOWN_TIMEOUT)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if service.stopping.is_set():
            log.warning("second %s: exiting now", name)
            os._exit(EXIT_INTERRUPTED)
        log.info("%s: finishing the current batch and leaving the group", name)
        service.stopping.set()
        threading.Thread(target=enforce_deadline, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if service.exceptions is not None:
        watcher = service.exceptions
        signal.signal(signal.SIGHUP, lambda signum, frame: watcher.request_reload())
