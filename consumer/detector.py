"""One message in, its verdicts out: prefilter → decode → rules. No Kafka, no I/O.

The service, the offline scanner and the benchmarks all run messages through this one path,
so they cannot disagree about what matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from consumer.decode import Decoder
from consumer.event import CloudTrailRecord
from consumer.normalize import INGESTED_MS
from consumer.rules.loader import LoadedRule
from consumer.rules.prefilter import CombinedPrefilter


class RuleEvaluationError(Exception):
    """A rule raised while judging a record: the message goes to the dead-letter topic."""

    reason = "rule-error"

    def __init__(self, rule: LoadedRule, error: Exception) -> None:
        super().__init__(f"rule {rule.rule_id} ({rule.name}) failed: {error!r}")
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decoded record and the enabled rules that matched it (often none)."""

    record: CloudTrailRecord
    matched: tuple[LoadedRule, ...]


SKIPPED = None
"""What `Detector.inspect` returns for a message the prefilter proved no rule can match."""


class Detector:
    def __init__(self, decoder: Decoder, rules: Sequence[LoadedRule], use_prefilter: bool = True):
        self.decoder = decoder
        self.rules = tuple(rule for rule in rules if rule.enabled)
        prefilter = CombinedPrefilter.for_queries(rule.query for rule in self.rules)
        self._may_match = prefilter.checker(decoder.text_format) if use_prefilter else None
        self._batch_screen = prefilter.batch_screen(decoder.text_format) if use_prefilter else None

    def screen(self, payloads: Sequence[bytes | None], sizes: Sequence[int]) -> Sequence[int]:
        """Indices, ascending, of the payloads `inspect` must see: it would skip every other one.

        `sizes` are the payloads' lengths (0 for a missing one). A batch whose framing cannot be
        vouched for at once, or a rule set the prefilter cannot narrow, is inspected whole.
        """
        if self._batch_screen is None or not self.decoder.well_framed(payloads, sizes):
            return range(len(payloads))
        # Well framed: every payload is present.
        return self._batch_screen.candidates(cast("Sequence[bytes]", payloads), sizes)

    def inspect(self, payload: bytes | None, ingested_ms: int | None = None) -> Verdict | None:
        """The verdict for one message, or SKIPPED when its bytes rule out every rule.

        A skipped message is not decoded, only its framing is checked: a corrupt body that no
        rule could match is counted as skipped. Without the prefilter every message is decoded.
        `ingested_ms` (the Kafka message's timestamp) becomes the record's event.ingested.
        Raises DecodeError for undecodable input and RuleEvaluationError when a rule fails.
        """
        if (
            payload is not None
            and self._may_match is not None
            and not self._may_match(payload)
        ):
            self.decoder.check_framing(payload)
            return SKIPPED
        record = self.decoder.decode(payload)
        if ingested_ms is not None:
            record[INGESTED_MS] = ingested_ms
        matched = []
        for rule in self.rules:
            try:
                if rule.query.matches(record):
                    matched.append(rule)
            except Exception as error:  # one bad rule must not stop the stream
                raise RuleEvaluationError(rule, error) from error
        return Verdict(record, tuple(matched))

