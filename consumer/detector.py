"""One message in, its verdicts out: prefilter → decode → rules. No Kafka, no I/O.

The service, the offline scanner and the benchmarks all run messages through this one path,
so they cannot disagree about what matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consumer.decode import Decoder
from consumer.event import CloudTrailRecord
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
        self._may_match = (
            CombinedPrefilter.for_queries(rule.query for rule in self.rules).checker(
                decoder.text_format
            )
            if use_prefilter
            else None
        )

    def inspect(self, payload: bytes | None) -> Verdict | None:
        """The verdict for one message, or SKIPPED when its bytes rule out every rule.

        A skipped message is not decoded, only its framing is checked: a corrupt body that no
        rule could match is counted as skipped. Without the prefilter every message is decoded.
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
        matched = []
        for rule in self.rules:
            try:
                if rule.query.matches(record):
                    matched.append(rule)
            except Exception as error:  # one bad rule must not stop the stream
                raise RuleEvaluationError(rule, error) from error
        return Verdict(record, tuple(matched))

