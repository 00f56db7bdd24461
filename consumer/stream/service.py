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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import compress, islice
from operator import ne
from types import FrameType
from typing import Any, Final, cast

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType
from prometheus_client import Counter as PrometheusCounter

from consumer.alerts.document import Alert, Headers, alert_for, build_throttle_summary, encode_json
from consumer.alerts.throttle import Throttle
from consumer.cloudtrail.decode import DecodeError
from consumer.cloudtrail.envelopes import MessageHeaders, compressed
from consumer.cloudtrail.record import avro_to_json
from consumer.config import ConfigError, Settings
from consumer.rules.detector import Detector, EventsVerdict, RuleEvaluationError, Verdict
from consumer.rules.exceptions import ExceptionLoadError, ExceptionWatcher
from consumer.rules.loader import LoadedRule
from consumer.stream.metrics import Metrics
from consumer.stream.progress import Progress, ReasonLog, format_hint
from consumer.stream.sink import AtLeastOnceSink, FatalSinkError, Sink, TransactionalSink
from consumer.stream.source import Source
from consumer.times import parse_iso_utc

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
EXIT_SHUTDOWN_TIMEOUT = 3


DEFAULT_TRANSACTION_TIMEOUT_MS = "60000"
"""librdkafka's default transaction.timeout.ms."""

RETRY_LATER_BACKOFF_S = 5.0
"""How long a partition waits after a "retry later" decode error (e.g. registry down)."""

WEDGED_COMMIT_S = 20.0
"""A commit still blocked after this long is wedged, not slow: after a broker restart librdkafka
can wait forever in send_offsets_to_transaction (confluentinc/librdkafka#5456)."""


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


_NO_FORMAT_HINT: Final = frozenset({
    "rule-error", "alert-too-large",
    "unsupported-encoding", "unsupported-content-type", "header-mismatch",
})
"""Reasons a wrong input format does not explain: the dead letter says what went wrong."""


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
        exceptions: ExceptionWatcher | None = None,
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.exceptions = exceptions
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
        self._consumed_counters: dict[
            tuple[str, int], tuple[PrometheusCounter, PrometheusCounter]
        ] = {}
        self._batch_started = 0.0
        self._batch_messages = 0
        self.progress = Progress()
        self._dead_letter_log = ReasonLog()
        self.sink: Sink
        self.source: Source

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Run until `stopping` is set, then commit or abort and leave the group."""
        settings = self.settings
        self._wait_for_topics()
        if self.stopping.is_set():  # stopped while waiting for Kafka: nothing opened to close
            self.finished.set()
            return
        self.sink = self._open_sink()
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
            if self.health.fatal is None:  # a failed producer has nothing left to deliver
                self.sink.close(5.0)
            self.finished.set()

    def _open_sink(self) -> Sink:
        config = self.settings.producer_config(self.worker)
        topics = (self.settings.alerts_topic, self.settings.dead_letter_topic)
        if self.settings.delivery == "at-least-once":
            return AtLeastOnceSink(config, self.metrics, 30.0, topics)
        transactional = TransactionalSink(config, self.metrics, topics=topics)
        transactional.init(deadline=float("inf"))
        return transactional

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
                existing = set(admin.list_topics(timeout=10).topics)
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
                    self.health.waiting_for = "joining the consumer group"
                    return
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

    # --- the loop ----------------------------------------------------------------------------

    def _step(self) -> None:
        self.health.last_loop = time.monotonic()
        self._resume_due_partitions()
        batch_size = self.settings.batch_size
        # With a batch open, an empty input means commit now, not wait for more.
        if not self._batch_messages:
            self._reload_exceptions()
        messages = self.source.consume(batch_size, 0 if self._batch_messages else 0.1)
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
        if not ready:
            self.health.waiting_for = (
                "the broker is unreachable" if not self.source.broker_reachable
                else "no partitions assigned (waiting for the group, or more members than "
                "partitions)"
            )
        self.metrics.ready.set(1 if ready else 0)
        self._report_progress()
        # Alerts become visible when their batch commits: at once when the input is drained,
        # since waiting would only delay them; under a backlog, when the batch is full or old.
        if self._batch_messages and (
            len(messages) < batch_size
            or self._batch_messages >= self.settings.transaction_max_messages
            or (time.monotonic() - self._batch_started) * 1000 >= self.settings.transaction_max_ms
        ):
            self._commit()

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
                 ", ".join(f"{t}[{p}]={o}" for (t, p), o in sorted(self._next_offsets.items()))
                 or "none yet")

    def _handle(self, messages: list[Message], consumed_at: float) -> None:
        """Judge a batch. Nearly every message is ruled out on its bytes, so the batch is
        screened as a whole and only the messages the screen hands back are inspected one by
        one; the per-message work left is a few C-level passes over the batch."""
        self._batch_messages += len(messages)
        self.progress.consumed += len(messages)
        self.metrics.batch_size.observe(len(messages))
        if any(map(Message.error, messages)):
            messages = self._without_errors(messages)
            if not messages:
                return
        values = list(map(Message.value, messages))
        try:
            sizes = list(map(len, cast("list[bytes]", values)))
        except TypeError:  # a tombstone has no value
            sizes = [len(value) if value else 0 for value in values]
        blocked: dict[tuple[str, int], int] = {}
        """Partitions to read again from an offset, after a "retry later" decode error."""
        skipped = decoded = 0
        inspect = self.detector.inspect
        headers = (  # a consumed message's headers are a list of pairs, or None
            cast("list[MessageHeaders | None]", list(map(Message.headers, messages)))
            if self.detector.reads_headers and any(map(Message.headers, messages)) else None
        )
        looked_at = self.detector.screen(values, sizes, headers)
        for index in looked_at:
            message = messages[index]
            topic, partition, offset = _origin(message)
            if blocked and (topic, partition) in blocked:
                continue
            try:
                verdict = inspect(values[index], message.timestamp()[1],
                                  headers[index] if headers else None)
            except DecodeError as undecodable:
                if undecodable.retriable:
                    blocked[(topic, partition)] = offset
                    self._retry_later(message, undecodable)
                    continue
                self.metrics.decode_errors.labels(undecodable.reason).inc()
                self._dead_letter(message, undecodable.reason, str(undecodable))
            except RuleEvaluationError as failed:
                decoded += 1
                self._dead_letter(message, failed.reason, str(failed))
            else:
                if verdict is None:
                    skipped += 1
                elif type(verdict) is Verdict:
                    decoded += 1
                    for rule in verdict.matched:
                        self._alert(rule, verdict.record, message, consumed_at)
                    self._count_excepted(verdict)
                else:
                    decoded += self._handle_events(cast(EventsVerdict, verdict), message,
                                                   consumed_at)
        self._tally_partitions(messages, sizes, blocked)
        self.metrics.prefilter_skipped.inc(skipped + len(messages) - len(looked_at))
        self.metrics.events_decoded.inc(decoded)
        for rule in self.detector.rules:
            self.metrics.rule_evaluations.labels(rule.rule_id).inc(decoded)

    def _handle_events(self, verdict: EventsVerdict, message: Message, consumed_at: float) -> int:
        """Alerts for each event of a multi-event message, a dead letter for each event that
        failed (the event alone, with its index); returns how many events were judged."""
        events = verdict.events
        if events.skipped is not None:
            self.metrics.messages_without_cloudtrail.labels(events.shape).inc()
            log.debug("%s[%d]@%d skipped: %s", *_origin(message), events.skipped)
            return 0
        for index, judged in verdict.verdicts:
            for rule in judged.matched:
                self._alert(rule, judged.record, message, consumed_at,
                            original=events.original(index), context=events.context)
            self._count_excepted(judged)
        for index, failure in verdict.failures:
            if isinstance(failure, DecodeError):
                self.metrics.decode_errors.labels(failure.reason).inc()
            self._dead_letter(message, failure.reason, str(failure),
                              event=(index, events.original(index).encode("utf-8", "replace")))
        return len(verdict.verdicts)

    def _count_excepted(self, verdict: Verdict) -> None:
        for rule, item in verdict.excepted:
            self.metrics.exception_removals.labels(rule.rule_id, item.list_id, item.item_id).inc()

    def _without_errors(self, messages: list[Message]) -> list[Message]:
        """The batch without the consumer's error events, which are reported."""
        kept = []
        for message in messages:
            error = message.error()
            if error is None:
                kept.append(message)
            else:
                self._consumer_error(error)
        return kept

    def _tally_partitions(
        self, messages: list[Message], sizes: list[int], blocked: dict[tuple[str, int], int]
    ) -> None:
        """Messages, bytes and the next offset to commit of each partition in the batch, taken
        once per run of one partition's messages (a fetch delivers them together). A blocked
        partition is committed up to where it will be read again, and only what precedes that
        counts as consumed."""
        keys = cast(
            "list[tuple[str, int]]",
            list(zip(map(Message.topic, messages), map(Message.partition, messages), strict=True)),
        )
        starts = [*compress(range(1, len(keys)), map(ne, keys, islice(keys, 1, None)))]
        for start, end in zip([0, *starts], [*starts, len(keys)], strict=True):
            key = keys[start]
            read_again_from = blocked.get(key)
            if read_again_from is None:
                self._next_offsets[key] = _origin(messages[end - 1])[2] + 1
                counted = end
            else:
                self._next_offsets[key] = read_again_from
                counted = start + sum(
                    _origin(message)[2] < read_again_from for message in messages[start:end]
                )
            consumed, consumed_bytes = self._partition_counters(key)
            consumed.inc(counted - start)
            consumed_bytes.inc(sum(sizes[start:counted]))

    def _partition_counters(
        self, partition_key: tuple[str, int]
    ) -> tuple[PrometheusCounter, PrometheusCounter]:
        """The consumed-messages and consumed-bytes counters of a partition, looked up once."""
        counters = self._consumed_counters.get(partition_key)
        if counters is None:
            topic, partition = partition_key[0], str(partition_key[1])
            counters = (
                self.metrics.messages_consumed.labels(topic, partition),
                self.metrics.bytes_consumed.labels(topic, partition),
            )
            self._consumed_counters[partition_key] = counters
        return counters

    def _consumer_error(self, error: KafkaError) -> None:
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consume: %s", error)

    def _alert(
        self, rule: LoadedRule, record: dict[str, object], message: Message, consumed_at: float,
        *, original: str | None = None, context: Mapping[str, str] | None = None,
    ) -> None:
        """`original` is the event's JSON when the message held several; `context` the fields
        its envelope carried (EventBridge id and time, Filebeat timestamps)."""
        self.metrics.rule_matches.labels(rule.rule_id).inc()
        now = datetime.now(UTC)
        if not self._throttle.admit(rule.rule_id, now):
            self.metrics.alerts_throttled.labels(rule.rule_id).inc()
            return
        payload = message.value()
        if not self.settings.include_event_original or payload is None:
            original = None
        elif original is None:
            original = self._original_json(record, payload)

        def build(original: str | None) -> Alert:
            alert = alert_for(rule, record, detected_at=now, original=original)
            if context:
                _add_context(alert.document, context)
            return alert

        alert = build(original)
        # A record near Kafka's message size limit is too large to carry twice: once more in
        # event.original. Without it the alert usually fits; if not, it is dead-lettered.
        if not self._send_alert(alert):
            if original is not None and self._send_alert(build(None)):
                log.warning("alert %s sent without event.original: too large with it",
                            alert.alert_id)
            else:
                self._dead_letter(message, "alert-too-large",
                                  f"the alert of rule {rule.rule_id} is too large to produce")
                return
        self.metrics.alerts.labels(rule.rule_id, rule.severity).inc()
        self.progress.alerts += 1
        self.metrics.processing_latency.observe(time.monotonic() - consumed_at)
        event_time = parse_iso_utc(record.get("eventTime"))
        if event_time is not None:
            lateness = max(0.0, (now - event_time).total_seconds())
            self.metrics.event_to_alert_latency.observe(lateness)

    def _original_json(self, record: dict[str, object], payload: bytes) -> str:
        """event.original is the CloudTrail JSON record, whatever the input encoding."""
        if self.detector.decoder.text_format and not compressed(payload):
            return payload.decode("utf-8", "replace")
        try:
            return json.dumps(avro_to_json(record), separators=(",", ":"))
        except (ValueError, RecursionError):
            # A producer wrote text that is not JSON into a free-form field: keep it as text.
            return json.dumps(record, separators=(",", ":"), default=str)

    def _send_alert(self, alert: Alert) -> bool:
        return self._produce_if_fits(
            self.settings.alerts_topic, alert.key, self._encode_alert(alert), alert.headers
        )

    def _produce_if_fits(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> bool:
        """False when the producer refuses the message as over its message.max.bytes: a fact
        about this one message, which must not stop the stream."""
        try:
            self.sink.produce(topic, key, value, headers)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise
            return False
        return True

    def _emit_throttle_summaries(self) -> None:
        """Summaries of ended throttle windows, in the open batch or in one of their own, so
        they are committed now rather than with the next input."""
        if not self._batch_messages:
            self._throttle.checkpoint()
        closed = self._throttle.closed_windows(datetime.now(UTC))
        if not closed:
            return
        if not self._batch_messages:
            self._batch_started = time.monotonic()
        self._batch_messages += len(closed)
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

    def _report_progress(self) -> None:
        self._dead_letter_log.flush()
        if self.progress.due():
            log.info("%s", self.progress.line(self.source.lag(), len(self.source.assignment)))

    def _dead_letter(
        self, message: Message, reason: str, detail: str,
        *, event: tuple[int, bytes] | None = None,
    ) -> None:
        """The message, or with `event` (index, JSON) only that event of a multi-event one."""
        topic, partition, offset = _origin(message)
        hint = format_hint(message.value(), self.settings.input_format)
        if hint is not None and reason not in _NO_FORMAT_HINT:
            detail = f"{detail} ({hint})"
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
        value = message.value()
        if event is not None:
            headers.append(("dlq.event.index", str(event[0]).encode()))
            value = event[1]
        if not self._produce_if_fits(self.settings.dead_letter_topic, message.key(), value,
                                     headers):
            # The header says where the original is: it stays readable in the source topic.
            omitted: Headers = [("dlq.value.omitted", f"{len(value or b'')} bytes".encode())]
            self.sink.produce(self.settings.dead_letter_topic, message.key(), None,
                              headers + omitted)
        self.metrics.dead_letters.labels(reason).inc()
        self.progress.dead_letters += 1
        self._dead_letter_log.warn(
            reason, f"dead letter {topic}[{partition}]@{offset} ({reason}): {detail}"
        )

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
        with self.metrics.commit_duration.time():
            committed = self._commit_unless_wedged(offsets)
        self._next_offsets.clear()
        self._batch_messages = 0
        if committed:
            self.source.record_committed(offsets)
        else:
            self._throttle.rollback()
            self.source.rewind_to_committed()

    def _commit_unless_wedged(self, offsets: list[TopicPartition]) -> bool:
        """The sink's commit, watched from here: a producer wedged past WEDGED_COMMIT_S is left
        to its thread and a new one takes over. Its transactional.id fences the old producer, so
        the abandoned batch is either committed by it already or aborted, and read again."""
        sink = self.sink
        outcome: list[bool] = []
        failure: list[Exception] = []

        def commit() -> None:
            try:
                outcome.append(sink.commit(offsets, self.source.consumer))
            except Exception as error:
                failure.append(error)

        helper = threading.Thread(target=commit, name="commit", daemon=True)
        started = time.monotonic()
        helper.start()
        helper.join(0.1)
        while helper.is_alive() and time.monotonic() - started < WEDGED_COMMIT_S:
            if sink.commit_wedged():  # the sink's faster signal, e.g. after a broker restart
                break
            helper.join(0.1)
        if helper.is_alive():
            sink.poll()  # serves the producer's error reports, a fatal one among them
            if sink.fatal_error is not None:
                raise FatalSinkError(f"transactional producer failed: {sink.fatal_error}")
            log.error("commit blocked for %.0fs: replacing the producer and reading the batch "
                      "again", time.monotonic() - started)
            self.sink = self._open_sink()
            return False
        if failure:
            raise failure[0]
        return outcome[0]

    def _before_revoke(self, revoked: list[TopicPartition]) -> None:
        """Inside a rebalance: land the open batch while we still own its partitions."""
        if self.sink.in_batch and self.health.fatal is None:
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


def _add_context(document: dict[str, Any], context: Mapping[str, str]) -> None:
    """The envelope's fields into an alert, where the event did not set them already. A
    shipper's `@timestamp` becomes `event.created`, as Elastic's CloudTrail pipeline sets it
    before eventTime takes `@timestamp` over."""
    for dotted, value in context.items():
        *parents, leaf = ("event.created" if dotted == "@timestamp" else dotted).split(".")
        node = document
        for part in parents:
            node = node.setdefault(part, {})
        node.setdefault(leaf, value)


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
