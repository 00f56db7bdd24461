"""The detector service: consume a batch, judge every message, produce alerts, commit.

    source (consumer group) → Detector (prefilter → decode → rules) → alerts / dead letters → sink

A batch is the unit of delivery: everything it produced and the offsets it consumed are
committed together (one transaction in exactly-once mode), or abandoned together and read again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import cast

from confluent_kafka import KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.alert import Alert, Headers, build_alert, build_throttle_summary, encode_json
from consumer.config import Settings
from consumer.decode import DecodeError
from consumer.detector import Detector, RuleEvaluationError
from consumer.metrics import Metrics
from consumer.record import avro_to_json
from consumer.rules.loader import LoadedRule
from consumer.sink import AtLeastOnceSink, FatalSinkError, Sink, TransactionalSink
from consumer.source import Source
from consumer.throttle import Throttle
from consumer.times import parse_iso_utc

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
EXIT_SHUTDOWN_TIMEOUT = 3

RETRY_LATER_BACKOFF_S = 5.0
"""How long a partition waits after a "retry later" decode error (e.g. registry down)."""


@dataclass
class Health:
    """What /healthz and /readyz report, updated by the loop."""

    last_loop: float = field(default_factory=time.monotonic)
    ready: bool = False
    fatal: str | None = None
    stuck_after_s: float = 60.0

    def alive(self) -> bool:
        return self.fatal is None and time.monotonic() - self.last_loop < self.stuck_after_s


def _rule_lookback(rules: list[LoadedRule]) -> timedelta:
    lookbacks = [rule.definition.rule.lookback for rule in rules if rule.enabled]
    return max(lookbacks, default=timedelta(minutes=6))


def _origin(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset: always set on a message the consumer returned."""
    return cast("tuple[str, int, int]", (message.topic(), message.partition(), message.offset()))


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
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.metrics = metrics
        self.health = health
        self.worker = worker
        self._encode_alert = encode_alert
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self._throttle = Throttle(
            {
                rule.rule_id: (rule.definition.rule.max_signals, rule.definition.rule.interval)
                for rule in detector.rules
            }
        )
        self._paused_until: dict[tuple[str, int], float] = {}
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._batch_started = 0.0
        self._batch_messages = 0
        self.sink: Sink
        self.source: Source

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Run until `stopping` is set, then commit or abort and leave the group."""
        settings = self.settings
        self._wait_for_topics()
        if settings.delivery == "exactly-once":
            transactional = TransactionalSink(settings.producer_config(self.worker), self.metrics)
            transactional.init(deadline=float("inf"))
            self.sink = transactional
        else:
            self.sink = AtLeastOnceSink(settings.producer_config(self.worker), self.metrics, 30.0)
        self.source = Source(
            config=settings.consumer_config(self.worker),
            subscription=settings.subscription,
            start_from=settings.start_position(),
            lookback=_rule_lookback(list(self.detector.rules)),
            metrics=self.metrics,
            on_revoke=self._before_revoke,
            on_lost=self._after_loss,
        )
        try:
            while not self.stopping.is_set():
                self._step()
            self._commit()
        except FatalSinkError as error:
            self.health.fatal = str(error)
            raise
        finally:
            self.health.ready = False
            self.metrics.ready.set(0)
            self.source.close()
            self.sink.close(5.0)
            self.finished.set()

    def _wait_for_topics(self) -> None:
        """A missing topic or an unreachable broker is logged and waited for, never a crash."""
        admin = AdminClient(
            {k: v for k, v in self.settings.consumer_config(self.worker).items()
             if not k.startswith(("group.", "enable.", "isolation.", "partition.", "auto.",
                                  "statistics."))}
        )
        wanted = {self.settings.alerts_topic, self.settings.dead_letter_topic}
        if not self.settings.input_pattern:
            wanted |= set(self.settings.input_topics)
        delay = 1.0
        while not self.stopping.is_set():
            self.health.last_loop = time.monotonic()
            try:
                existing = set(admin.list_topics(timeout=10).topics)
            except Exception as error:  # any failure here means "not yet"
                log.error("cannot reach Kafka at %s: %s; retrying in %.0fs",
                          self.settings.bootstrap_servers, error, delay)
            else:
                missing = sorted(wanted - existing)
                if not missing:
                    return
                log.error("topic(s) %s do not exist; retrying in %.0fs", ", ".join(missing), delay)
            self.stopping.wait(delay)
            delay = min(delay * 2, 30.0)

    # --- the loop ----------------------------------------------------------------------------

    def _step(self) -> None:
        self.health.last_loop = time.monotonic()
        self._resume_due_partitions()
        messages = self.source.consume(self.settings.batch_size, 0.1)
        consumed_at = time.monotonic()
        if messages:
            self.sink.begin()
            if not self._batch_messages:
                self._batch_started = consumed_at
                self._throttle.checkpoint()
            self._handle(messages, consumed_at)
        self._emit_throttle_summaries()
        self.sink.poll()
        ready = bool(self.source.assignment) and self.source.broker_reachable
        self.health.ready = ready
        self.metrics.ready.set(1 if ready else 0)
        if self._batch_messages and (
            self._batch_messages >= self.settings.transaction_max_messages
            or (time.monotonic() - self._batch_started) * 1000 >= self.settings.transaction_max_ms
        ):
            self._commit()

    def _handle(self, messages: list[Message], consumed_at: float) -> None:
        counts: Counter[tuple[str, int]] = Counter()
        sizes: Counter[tuple[str, int]] = Counter()
        blocked: set[tuple[str, int]] = set()
        skipped = decoded = 0
        inspect = self.detector.inspect
        for message in messages:
            error = message.error()
            if error is not None:
                self._consumer_error(error)
                continue
            partition_key = cast("tuple[str, int]", (message.topic(), message.partition()))
            if partition_key in blocked:
                continue
            value = message.value()
            counts[partition_key] += 1
            sizes[partition_key] += len(value) if value else 0
            try:
                verdict = inspect(value)
            except DecodeError as undecodable:
                if undecodable.retriable:
                    blocked.add(partition_key)
                    self._retry_later(message, undecodable)
                    counts[partition_key] -= 1
                    continue
                self.metrics.decode_errors.labels(undecodable.reason).inc()
                self._dead_letter(message, undecodable.reason, str(undecodable))
            except RuleEvaluationError as failed:
                decoded += 1
                self._dead_letter(message, failed.reason, str(failed))
            else:
                if verdict is None:
                    skipped += 1
                else:
                    decoded += 1
                    for rule in verdict.matched:
                        self._alert(rule, verdict.record, value, consumed_at)
            self._next_offsets[partition_key] = cast(int, message.offset()) + 1
        self._batch_messages += len(messages)
        self.metrics.batch_size.observe(len(messages))
        self.metrics.prefilter_skipped.inc(skipped)
        self.metrics.events_decoded.inc(decoded)
        for (topic, partition), count in counts.items():
            self.metrics.messages_consumed.labels(topic, str(partition)).inc(count)
            self.metrics.bytes_consumed.labels(topic, str(partition)).inc(
                sizes[(topic, partition)]
            )
        for rule in self.detector.rules:
            self.metrics.rule_evaluations.labels(rule.rule_id).inc(decoded)

    def _consumer_error(self, error: KafkaError) -> None:
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consume: %s", error)

    def _alert(
        self, rule: LoadedRule, record: dict[str, object], payload: bytes | None, consumed_at: float
    ) -> None:
        self.metrics.rule_matches.labels(rule.rule_id).inc()
        now = datetime.now(UTC)
        if not self._throttle.admit(rule.rule_id, now):
            self.metrics.alerts_throttled.labels(rule.rule_id).inc()
            return
        original = None
        if self.settings.include_event_original and payload is not None:
            original = self._original_json(record, payload)
        alert = build_alert(
            rule=rule.definition.rule,
            ruleset=rule.source,
            record=record,
            fields_read=rule.query.fields_read + rule.query.keep_fields,
            detected_at=now,
            original=original,
        )
        self._send_alert(alert)
        self.metrics.alerts.labels(rule.rule_id, rule.severity).inc()
        self.metrics.processing_latency.observe(time.monotonic() - consumed_at)
        event_time = parse_iso_utc(record.get("eventTime"))
        if event_time is not None:
            lateness = max(0.0, (now - event_time).total_seconds())
            self.metrics.event_to_alert_latency.observe(lateness)

    def _original_json(self, record: dict[str, object], payload: bytes) -> str:
        """event.original is the CloudTrail JSON record, whatever the input encoding."""
        if self.detector.decoder.text_format:
            return payload.decode("utf-8", "replace")
        try:
            return json.dumps(avro_to_json(record), separators=(",", ":"))
        except (ValueError, RecursionError):
            # A producer wrote text that is not JSON into a free-form field: keep it as text.
            return json.dumps(record, separators=(",", ":"), default=str)

    def _send_alert(self, alert: Alert) -> None:
        self.sink.produce(
            self.settings.alerts_topic, alert.key, self._encode_alert(alert), alert.headers
        )

    def _emit_throttle_summaries(self) -> None:
        closed = self._throttle.closed_windows(datetime.now(UTC))
        if not closed:
            return
        by_id = {rule.rule_id: rule for rule in self.detector.rules}
        self.sink.begin()
        for window in closed:
            rule = by_id[window.rule_id]
            summary = build_throttle_summary(
                rule=rule.definition.rule,
                ruleset=rule.source,
                suppressed=window.suppressed,
                window_start=window.start,
                window_end=window.end,
                worker=f"{self.settings.member_name}-{self.worker}",
            )
            self._send_alert(summary)

    def _dead_letter(self, message: Message, reason: str, detail: str) -> None:
        topic, partition, offset = _origin(message)
        _, timestamp = message.timestamp()
        headers: Headers = [
            *(message.headers() or []),
            ("dlq.reason", reason.encode()),
            ("dlq.error", detail.encode("utf-8", "replace")[:4096]),
            ("dlq.source.topic", topic.encode()),
            ("dlq.source.partition", str(partition).encode()),
            ("dlq.source.offset", str(offset).encode()),
            ("dlq.source.timestamp", str(timestamp).encode()),
            ("dlq.detector.time", datetime.now(UTC).isoformat().encode()),
        ]
        self.sink.produce(self.settings.dead_letter_topic, message.key(), message.value(), headers)
        self.metrics.dead_letters.labels(reason).inc()
        log.warning("dead letter %s[%d]@%d: %s", topic, partition, offset, detail)

    def _retry_later(self, message: Message, error: DecodeError) -> None:
        """Not poison, just not now: read this partition again from here after a backoff."""
        tp = TopicPartition(*_origin(message))
        self.metrics.decode_errors.labels(error.reason).inc()
        log.warning("%s[%d]@%d: %s; retrying in %.0fs", tp.topic, tp.partition, tp.offset, error,
                    RETRY_LATER_BACKOFF_S)
        self.source.consumer.seek(tp)
        self.source.consumer.pause([tp])
        self._paused_until[(tp.topic, tp.partition)] = time.monotonic() + RETRY_LATER_BACKOFF_S

    def _resume_due_partitions(self) -> None:
        now = time.monotonic()
        due = [key for key, until in self._paused_until.items() if until <= now]
        for key in due:
            del self._paused_until[key]
            if key in self.source.assignment:
                self.source.consumer.resume([TopicPartition(*key)])

    # --- committing --------------------------------------------------------------------------

    def _commit(self) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._next_offsets.items()]
        committed = self.sink.commit(offsets, self.source.consumer)
        self._next_offsets.clear()
        self._batch_messages = 0
        if not committed:
            self._throttle.rollback()
            self.source.rewind_to_committed()

    def _before_revoke(self, revoked: list[TopicPartition]) -> None:
        """Inside a rebalance: land the open batch while we still own its partitions."""
        if self.sink.in_batch:
            self._commit()
        for tp in revoked:
            self._paused_until.pop((tp.topic, tp.partition), None)

    def _after_loss(self, lost: list[TopicPartition]) -> None:
        """Partitions were taken away (session timeout): our commit would be fenced, so the
        open batch is abandoned and their new owner reads it again."""
        self.sink.abort()
        self._throttle.rollback()
        self._next_offsets.clear()
        self._batch_messages = 0
        for tp in lost:
            self._paused_until.pop((tp.topic, tp.partition), None)


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
