"""One message in, its verdicts out: prefilter → decode → rules. No Kafka, no I/O.

The service, the offline scanner and the benchmarks all run messages through this one path,
so they cannot disagree about what matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from consumer.cloudtrail.decode import DecodeError, Decoder, Events
from consumer.cloudtrail.envelopes import (
    MessageHeaders,
    any_content_header,
    claiming_headers,
    makes_claim,
)
from consumer.cloudtrail.normalize import INGESTED_MS
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.rules.exceptions import NO_EXCEPTIONS, CompiledItem, ExceptionSet
from consumer.rules.loader import LoadedRule
from consumer.rules.prefilter import CombinedPrefilter
from consumer.rules.schedule import Row
from consumer.times import parse_iso_utc


class RuleEvaluationError(Exception):
    """A rule raised while judging a record: the message goes to the dead-letter topic."""

    reason = "rule-error"

    def __init__(self, rule: LoadedRule, error: Exception) -> None:
        super().__init__(f"rule {rule.rule_id} ({rule.name}) failed: {error!r}")
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decoded record, the enabled rules that matched it (often none), the matches an
    exception item removed, and the rows it gives each aggregating rule (its commands before
    STATS; what the schedule counts)."""

    record: CloudTrailRecord
    matched: tuple[LoadedRule, ...]
    excepted: tuple[tuple[LoadedRule, CompiledItem], ...] = ()
    rows: tuple[tuple[LoadedRule, tuple[Row, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class EventsVerdict:
    """The verdicts of a message holding several events (or none): each with its index inside
    the message, and the events that did not decode or whose rules failed, by index."""

    events: Events
    verdicts: tuple[tuple[int, Verdict], ...]
    failures: tuple[tuple[int, DecodeError | RuleEvaluationError], ...]


SKIPPED = None
"""What `Detector.inspect` returns for a message the prefilter proved no rule can match."""


class Detector:
    def __init__(
        self,
        decoder: Decoder,
        rules: Sequence[LoadedRule],
        use_prefilter: bool = True,
        exceptions: ExceptionSet = NO_EXCEPTIONS,
    ):
        self.decoder = decoder
        self.reads_headers = decoder.text_format
        """Whether a message's content headers count: JSON input only, Avro goes by its bytes,
        so an Avro topic's batches need no look at their headers at all."""
        self.rules = tuple(rule for rule in rules if rule.enabled and rule.aggregation is None)
        self.aggregating = tuple(
            rule for rule in rules if rule.enabled and rule.aggregation is not None
        )
        """Rules with STATS: a record gives them rows to count over their schedule, never an
        alert of its own. Their commands before STATS join the prefilter, so a message none
        of those can keep is skipped too."""
        self.exceptions = exceptions
        """Replaced whole between batches when the exception files change; exceptions only
        remove matches, so the prefilter stays sound whatever they say."""
        prefilter = CombinedPrefilter.for_queries(
            rule.query for rule in self.rules + self.aggregating
        )
        self._may_match = prefilter.checker(decoder.text_format) if use_prefilter else None
        self._batch_screen = prefilter.batch_screen(decoder.text_format) if use_prefilter else None

    def screen(
        self, payloads: Sequence[bytes | None], sizes: Sequence[int],
        headers: Sequence[MessageHeaders | None] | None = None,
    ) -> Sequence[int]:
        """Indices, ascending, of the payloads `inspect` must see: it would skip every other one.

        `sizes` are the payloads' lengths (0 for a missing one). A batch whose framing cannot be
        vouched for at once, or a rule set the prefilter cannot narrow, is inspected whole.
        `headers`, the messages' (None when none has any), add each message whose headers claim
        a coding (see `makes_claim`): its bytes alone do not tell how to read it.
        """
        if self._batch_screen is None or not self.decoder.well_framed(payloads, sizes):
            return range(len(payloads))
        # Well framed: every payload is present.
        candidates = self._batch_screen.candidates(cast("Sequence[bytes]", payloads), sizes)
        if headers is None or not self.reads_headers or not any_content_header(headers):
            return candidates
        claiming = claiming_headers(headers)
        if not claiming:
            return candidates
        declared = [index for index, named in enumerate(headers)
                    if named and not claiming.isdisjoint(named)]
        return sorted({*candidates, *declared})

    def inspect(
        self, payload: bytes | None, ingested_ms: int | None = None,
        headers: MessageHeaders | None = None,
    ) -> Verdict | EventsVerdict | None:
        """The verdict for one message, or SKIPPED when its bytes rule out every rule.

        A skipped message is not decoded, only its framing is checked: a corrupt body that no
        rule could match is counted as skipped. Without the prefilter every message is decoded,
        and so is one the prefilter cannot judge on its bytes (compressed). A message holding
        several events gets an EventsVerdict. `ingested_ms` (the Kafka message's timestamp)
        becomes each record's event.ingested. Raises DecodeError for undecodable input and
        RuleEvaluationError when a rule fails on a bare record. `headers` (the message's) that
        claim a coding are the decoder's to check and undo, so such a message is decoded.
        """
        if headers and self.reads_headers and makes_claim(headers):
            record = self.decoder.decode(payload, headers)
        elif (
            payload is not None
            and self._may_match is not None
            and not self._may_match(payload)
            and self.decoder.check_framing(payload)
        ):
            return SKIPPED
        else:
            record = self.decoder.decode(payload)
        if type(record) is not dict:
            return self._judge_all(cast(Events, record), ingested_ms)
        if ingested_ms is not None:
            record[INGESTED_MS] = ingested_ms
        return self.judge(record)

    def _judge_all(self, events: Events, ingested_ms: int | None) -> EventsVerdict:
        """A shipper's own `event.ingested` (Filebeat, Elastic Agent) is carried over; else
        the message's timestamp is when its events reached us."""
        shipped = parse_iso_utc(events.context.get("event.ingested"))
        if shipped is not None:
            ingested_ms = int(shipped.timestamp() * 1000)
        verdicts: list[tuple[int, Verdict]] = []
        failures: list[tuple[int, DecodeError | RuleEvaluationError]] = []
        for index, item in enumerate(events.items):
            if isinstance(item, DecodeError):
                failures.append((index, item))
                continue
            if ingested_ms is not None:
                item[INGESTED_MS] = ingested_ms
            try:
                verdicts.append((index, self.judge(item)))
            except RuleEvaluationError as error:
                failures.append((index, error))
        return EventsVerdict(events, tuple(verdicts), tuple(failures))

    def judge(self, record: CloudTrailRecord) -> Verdict:
        """The verdict on a decoded record; raises RuleEvaluationError when a rule fails."""
        matched = []
        for rule in self.rules:
            try:
                if rule.query.matches(record):
                    matched.append(rule)
            except Exception as error:  # one bad rule must not stop the stream
                raise RuleEvaluationError(rule, error) from error
        rows = self._rows(record) if self.aggregating else ()
        if not (matched or rows) or not self.exceptions.by_rule:
            return Verdict(record, tuple(matched), (), rows)
        return self._apply_exceptions(record, matched, rows)

    def _rows(self, record: CloudTrailRecord) -> tuple[tuple[LoadedRule, tuple[Row, ...]], ...]:
        found = []
        for rule in self.aggregating:
            assert rule.aggregation is not None
            try:
                rows = rule.aggregation.rows(record)
            except Exception as error:  # one bad rule must not stop the stream
                raise RuleEvaluationError(rule, error) from error
            if rows:
                found.append((rule, tuple(rows)))
        return tuple(found)

    def _apply_exceptions(
        self, record: CloudTrailRecord, matched: list[LoadedRule],
        rows: tuple[tuple[LoadedRule, tuple[Row, ...]], ...],
    ) -> Verdict:
        """Elastic's `query AND NOT (item1 OR item2 ...)`, with expiry by the wall clock as
        Kibana drops expired items when a rule runs. Kibana filters the source events of an
        aggregating rule the same way, before its query counts them."""
        now = datetime.now(UTC)
        kept: list[LoadedRule] = []
        excepted: list[tuple[LoadedRule, CompiledItem]] = []
        for rule in matched:
            item = self.exceptions.excluding(rule.rule_id, record, now)
            if item is None:
                kept.append(rule)
            else:
                excepted.append((rule, item))
        counted = []
        for rule, rule_rows in rows:
            item = self.exceptions.excluding(rule.rule_id, record, now)
            if item is None:
                counted.append((rule, rule_rows))
            else:
                excepted.append((rule, item))
        return Verdict(record, tuple(kept), tuple(excepted), tuple(counted))

