"""Judging a batch: screen, inspect, alerts, dead letters. No Kafka client in it.

The batch processor is the "process" step of the batch lifecycle (see `checkpoint.py`): it takes
the messages the source consumed, runs them through the `Detector` (the batch screen, then
`inspect` for the messages the screen hands back), produces the alerts (after the throttle) and
dead letters into an `Output` (the checkpoint, which holds them in the open batch), and tells
the loop what the batch consumed: the next offset to commit of each partition, and the
partitions to read again later (a "retry later" decode error, e.g. the registry is down). The
throttle's counts live in a state store, so they commit and roll back with the batch. Give it an
in-memory output (`consumer.stream.testing`) to test what a batch produces.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import compress, islice
from operator import ne
from typing import Any, Final, Protocol, cast

from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client import Counter as PrometheusCounter

from consumer.alerts.document import Alert, Headers, alert_for, build_throttle_summary
from consumer.alerts.throttle import Throttle
from consumer.cloudtrail.decode import DecodeError
from consumer.cloudtrail.envelopes import MessageHeaders, compressed
from consumer.cloudtrail.record import avro_to_json
from consumer.config import Settings
from consumer.rules.detector import Detector, EventsVerdict, RuleEvaluationError, Verdict
from consumer.rules.loader import LoadedRule
from consumer.stream.metrics import Metrics
from consumer.stream.progress import Progress, ReasonLog, format_hint
from consumer.stream.state import Partition, StateStore
from consumer.times import parse_iso_utc

log = logging.getLogger("consumer.stream.service")

THROTTLE_STORE: Final = "throttle"
"""The state store of the throttle's counts (changelog `<group.id>.throttle-changelog`)."""

_NO_FORMAT_HINT: Final = frozenset({
    "rule-error", "alert-too-large",
    "unsupported-encoding", "unsupported-content-type", "header-mismatch",
})
"""Reasons a wrong input format does not explain: the dead letter says what went wrong."""


class Output(Protocol):
    """Where a batch's messages go: the checkpoint's open batch."""

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
        *, partition: int | None = None,
    ) -> None: ...


@dataclass
class Judged:
    """What the loop needs to know of a processed batch."""

    offsets: dict[Partition, int] = field(default_factory=dict)
    """The next offset to commit of each partition in the batch."""
    retry_later: list[tuple[Message, DecodeError]] = field(default_factory=list)
    """The first message of each partition that must be read again after a pause."""


def _origin(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset: always set on a message the consumer returned."""
    return cast("tuple[str, int, int]", (message.topic(), message.partition(), message.offset()))


def throttle_for(detector: Detector) -> Throttle:
    """Each rule's max_signals per interval."""
    return Throttle({
        rule.rule_id: (rule.definition.rule.max_signals, rule.definition.rule.interval)
        for rule in detector.rules
    })


class BatchProcessor:
    def __init__(
        self, settings: Settings, detector: Detector, metrics: Metrics, output: Output,
        throttle_counts: StateStore, *, worker: int = 0,
        encode_alert: Callable[[Alert], bytes],
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.metrics = metrics
        self.output = output
        self.throttle = throttle_for(detector)
        self.throttle_counts = throttle_counts
        """The throttle's counts, one store per assigned partition."""
        self.worker = worker
        self._encode_alert = encode_alert
        self._rules_by_id = {rule.rule_id: rule for rule in detector.rules}
        self._consumed_counters: dict[Partition, tuple[PrometheusCounter, PrometheusCounter]] = {}
        self.progress = Progress()
        self.dead_letter_log = ReasonLog()

    def process(self, messages: list[Message], consumed_at: float) -> Judged:
        """Judge a batch. Nearly every message is ruled out on its bytes, so the batch is
        screened as a whole and only the messages the screen hands back are inspected one by
        one; the per-message work left is a few C-level passes over the batch."""
        judged = Judged()
        self.progress.consumed += len(messages)
        self.metrics.batch_size.observe(len(messages))
        if any(map(Message.error, messages)):
            messages = self._without_errors(messages)
            if not messages:
                return judged
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
                    self.metrics.decode_errors.labels(undecodable.reason).inc()
                    judged.retry_later.append((message, undecodable))
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
        self._tally_partitions(messages, sizes, blocked, judged.offsets)
        self.metrics.prefilter_skipped.inc(skipped + len(messages) - len(looked_at))
        self.metrics.events_decoded.inc(decoded)
        for rule in self.detector.rules:
            self.metrics.rule_evaluations.labels(rule.rule_id).inc(decoded)
        return judged

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
        self, messages: list[Message], sizes: list[int], blocked: dict[Partition, int],
        offsets: dict[Partition, int],
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
                offsets[key] = _origin(messages[end - 1])[2] + 1
                counted = end
            else:
                offsets[key] = read_again_from
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
        counts = self.throttle_counts.partition(_origin(message)[:2])
        if not self.throttle.admit(rule.rule_id, now, counts,
                                   self.throttle_counts.partitions.values()):
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
            self.output.produce(topic, key, value, headers)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise
            return False
        return True

    def emit_throttle_summaries(self, now: datetime) -> int:
        """Summaries of ended throttle windows, into the open batch or one of their own, so
        they are committed now rather than with the next input; returns how many."""
        closed = self.throttle.closed_windows(now, self.throttle_counts.partitions.values())
        sent = 0
        for window in closed:
            rule = self._rules_by_id.get(window.rule_id)
            if rule is None:
                log.warning("%d throttled matches of rule %s (window %s to %s) are not reported: "
                            "the rule is no longer loaded", window.suppressed, window.rule_id,
                            window.start.isoformat(), window.end.isoformat())
                continue
            summary = build_throttle_summary(
                rule=rule.definition.rule,
                ruleset=rule.source,
                suppressed=window.suppressed,
                window_start=window.start,
                window_end=window.end,
                worker=f"{self.settings.member_name}-{self.worker}",
            )
            self._send_alert(summary)
            sent += 1
        return sent

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
            self.output.produce(self.settings.dead_letter_topic, message.key(), None,
                              headers + omitted)
        self.metrics.dead_letters.labels(reason).inc()
        self.progress.dead_letters += 1
        self.dead_letter_log.warn(
            reason, f"dead letter {topic}[{partition}]@{offset} ({reason}): {detail}"
        )


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
