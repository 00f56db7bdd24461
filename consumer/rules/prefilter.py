"""A sound byte-level prefilter: skip a raw message only when no rule could match it.

From a compiled condition we derive literals that must appear in the undecoded message for the
condition to be true: `field == "x"`, `field IN ("x", "y")` and `field LIKE "x*"` on a keyword
field that copies a top-level CloudTrail string verbatim (`EcsField.raw_source`). The result is
a conjunction of any-of groups: every group needs at least one of its literals in the payload.

Why this is sound:
- Avro binary encodes a string as its length and its raw UTF-8 bytes, so a record whose
  `eventName` is "CreateAccessKey" carries those bytes. (This assumes the raw_source fields are
  Avro strings and the payload is plain binary encoding, not a compressed container block.)
- JSON text may spell a character as a `\\uXXXX` escape, and `"`, `\\`, `/` and control
  characters in other escaped forms. So for JSON we only use literals free of those characters,
  and let through any payload that contains a `\\u` escape at all.
- AND unions the groups of its operands; OR keeps only what every branch implies (each pair of
  groups, merged); NOT and everything else imply nothing.
- `CompiledQuery.condition` joins every WHERE of the query: no command before a WHERE drops or
  multiplies rows, a column that shows a source field unchanged (renamed or not) is spelled as
  that field, and a computed column (EVAL, GROK, DISSECT, a field copied by EVAL) is an opaque
  call, so a test on it, or on any function of a field, implies nothing.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import product

from consumer.cloudtrail.envelopes import text_forms
from consumer.rules.esql import (
    Compare,
    CompiledQuery,
    Const,
    Expr,
    FieldRef,
    InList,
    Logical,
    Match,
    like_literal_chunks,
)
from consumer.rules.screen import MULTI_PATTERN, BatchScreen, LiteralIndex, MultiPattern

Groups = tuple[frozenset[str], ...]
_MAX_GROUPS = 16
_JSON_ESCAPED = frozenset('"\\/') | {chr(code) for code in range(0x20)}
_UNICODE_ESCAPE = b"\\u"
INDEX_FROM = 8
"""Above this many prefilters, `checker` finds all their literals in one scan (LiteralIndex)."""


def _raw_keyword(node: Expr, query: CompiledQuery) -> bool:
    if not isinstance(node, FieldRef):
        return False
    spec = query.field_specs.get(node.name)
    raw_source = getattr(spec, "raw_source", None)
    return raw_source is not None and getattr(spec, "type", None) == "keyword"


def _string_constants(nodes: Iterable[Expr]) -> list[str] | None:
    values: list[str] = []
    for node in nodes:
        if not isinstance(node, Const):
            return None
        if isinstance(node.value, str):
            values.append(node.value)
        elif node.value is not None:
            return None
    return values


def _or(branches: list[Groups]) -> Groups:
    if not all(branches):
        return ()
    combined = branches[0]
    for branch in branches[1:]:
        merged = {left | right for left, right in product(combined, branch)}
        combined = tuple(sorted(merged, key=len)[:_MAX_GROUPS])
    return combined


def required_literals(node: Expr, query: CompiledQuery) -> Groups:
    """Groups of strings such that, when `node` is true, each group has a member equal to or
    inside one of the record's raw top-level strings."""
    if isinstance(node, Logical):
        parts = [required_literals(operand, query) for operand in node.operands]
        if node.op == "AND":
            return tuple(group for part in parts for group in part)
        return _or(parts)
    if isinstance(node, Compare) and node.op == "==":
        for field, other in ((node.left, node.right), (node.right, node.left)):
            if (
                _raw_keyword(field, query)
                and isinstance(other, Const)
                and isinstance(other.value, str)
            ):
                return (frozenset({other.value}),)
        return ()
    if isinstance(node, InList) and not node.negated and _raw_keyword(node.operand, query):
        values = _string_constants(node.items)
        return (frozenset(values),) if values else ()
    if (
        isinstance(node, Match)
        and not (node.negated or node.regex)
        and _raw_keyword(node.operand, query)
    ):
        return tuple(frozenset({chunk}) for chunk in like_literal_chunks(node.pattern))
    return ()


def _encode(groups: Iterable[frozenset[str]]) -> tuple[tuple[bytes, ...], ...]:
    """UTF-8 byte groups, once each, in the query's order (authors put selective tests first)."""
    encoded = (tuple(sorted(value.encode() for value in group)) for group in groups)
    return tuple(dict.fromkeys(encoded))


def _encode_text(groups: Iterable[frozenset[str]]) -> tuple[tuple[bytes, ...], ...]:
    """As `_encode`, each literal in every spelling a JSON payload gives it: a record may sit
    in a JSON string (Filebeat's `message`, Cribl's `_raw`), its quotes escaped."""
    encoded = (
        tuple(sorted({form for value in group for form in text_forms(value)})) for group in groups
    )
    return tuple(dict.fromkeys(encoded))


def _json_safe(group: frozenset[str]) -> bool:
    return not any(_JSON_ESCAPED.intersection(value) for value in group)


@dataclass(frozen=True, slots=True)
class Prefilter:
    """Byte groups that must all be satisfied for one rule to possibly match.

    An empty tuple of groups means no constraint: the rule may match any message.
    """

    binary_groups: tuple[tuple[bytes, ...], ...]
    text_groups: tuple[tuple[bytes, ...], ...]

    @classmethod
    def for_query(cls, query: CompiledQuery) -> "Prefilter":
        groups = required_literals(query.condition, query)
        return cls(_encode(groups), _encode_text(group for group in groups if _json_safe(group)))

    def may_match(self, payload: bytes, text_format: bool) -> bool:
        """False only when the rule cannot match the record(s) encoded in `payload`.

        `text_format` is True for JSON text and False for Avro binary.
        """
        if text_format:
            groups = self.text_groups
            if groups and _UNICODE_ESCAPE in payload:
                return True
        else:
            groups = self.binary_groups
        for group in groups:
            for literal in group:
                if literal in payload:
                    break
            else:
                return False
        return True


class CombinedPrefilter:
    """The prefilters of several rules: a message is skipped only if no rule may match it."""

    def __init__(self, prefilters: Iterable[Prefilter]) -> None:
        unique = list(dict.fromkeys(prefilters))
        self._binary = _without_unconstrained(unique, text_format=False)
        self._text = _without_unconstrained(unique, text_format=True)

    @classmethod
    def for_queries(cls, queries: Iterable[CompiledQuery]) -> "CombinedPrefilter":
        return cls(Prefilter.for_query(query) for query in queries)

    def may_match(self, payload: bytes, text_format: bool) -> bool:
        prefilters = self._text if text_format else self._binary
        if prefilters is None:
            return True
        if len(prefilters) == 1:  # the usual case: rules that share their literals dedupe to one
            return prefilters[0].may_match(payload, text_format)
        return any(prefilter.may_match(payload, text_format) for prefilter in prefilters)

    def checker(self, text_format: bool) -> Callable[[bytes], bool]:
        """`may_match` for one payload format as a single closure: for the usual rule set the
        per-message test is then two substring searches, with no dispatch around them."""
        prefilters = self._text if text_format else self._binary
        if prefilters is None:
            return _anything
        if len(prefilters) == 1:
            groups = prefilters[0].text_groups if text_format else prefilters[0].binary_groups
            if all(len(group) == 1 for group in groups):
                present = _all_present(tuple(group[0] for group in groups))
                if text_format:
                    return lambda payload: _UNICODE_ESCAPE in payload or present(payload)
                return present
        if len(prefilters) > INDEX_FROM:
            return LiteralIndex(
                [p.text_groups if text_format else p.binary_groups for p in prefilters],
                always=(_UNICODE_ESCAPE,) if text_format else (),
            ).may_match
        return lambda payload: self.may_match(payload, text_format)

    def batch_screen(
        self, text_format: bool, multi_pattern: MultiPattern = MULTI_PATTERN
    ) -> BatchScreen | None:
        """The screen for whole batches; None when some rule may match any message."""
        prefilters = self._text if text_format else self._binary
        if prefilters is None:
            return None
        return BatchScreen(
            [p.text_groups if text_format else p.binary_groups for p in prefilters],
            always=(_UNICODE_ESCAPE,) if text_format else (),
            multi_pattern=multi_pattern,
        )


def _anything(payload: bytes) -> bool:
    return True


def _all_present(literals: tuple[bytes, ...]) -> Callable[[bytes], bool]:
    if len(literals) == 1:
        (only,) = literals
        return lambda payload: only in payload
    if len(literals) == 2:  # the seed rule: its provider and its action
        first, second = literals
        return lambda payload: first in payload and second in payload
    return lambda payload: all(literal in payload for literal in literals)


def _without_unconstrained(
    prefilters: list[Prefilter], text_format: bool
) -> tuple[Prefilter, ...] | None:
    """None when some rule has no constraint for this format (so every message may match)."""
    for prefilter in prefilters:
        if not (prefilter.text_groups if text_format else prefilter.binary_groups):
            return None
    return tuple(prefilters)
