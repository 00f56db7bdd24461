"""The prefilter over a whole batch: one multi-pattern scan of the joined payloads finds the
messages that may match, whatever the number of rules.

Every prefilter needs one literal of each of its groups, so a message that may match holds a
literal of one chosen group per prefilter (its anchor): the screen reports the messages in which
an anchor literal (or an `always` literal) occurs, and `may_match` then judges each of those as
usual. The anchor is the group found least often in a recent batch, re-chosen every
`REVIEW_EVERY` batches, so the scan reports few messages whatever the traffic mix.

The payloads are joined with 0xFF, a byte no UTF-8 literal contains, so no literal is ever found
across two messages. The search is Hyperscan's literal matcher where its wheel exists (x86-64
Linux, macOS) and Aho-Corasick (`ahocorasick-rs`) elsewhere: bench/rules_bench.py measures both
against one `bytes.find` pass per literal, which they beat from one literal on and by far with
many rules. `LiteralIndex` does the same for the per-message check of many rules.
"""

from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Protocol

import ahocorasick_rs

try:
    import hyperscan

    HAVE_HYPERSCAN = True
except ImportError:  # no wheel for this platform: Aho-Corasick does the same, a little slower
    HAVE_HYPERSCAN = False

SEPARATOR = b"\xff"

Groups = tuple[tuple[bytes, ...], ...]


class Matcher(Protocol):
    """Finds a fixed set of literals in a joined batch."""

    def offsets(self, joined: bytes) -> list[int]:
        """For each occurrence (or at least one per message holding a literal), an offset
        inside it."""

    def counts(self, sample: bytes) -> list[int]:
        """Occurrences of each literal (by position in the literal list) in `sample`."""

    def present(self, payload: bytes) -> set[int]:
        """The positions in the literal list of every literal `payload` holds."""


class AhoCorasick:
    """All literals in one automaton pass (`ahocorasick-rs`, Rust)."""

    def __init__(self, literals: Sequence[bytes]) -> None:
        self._size = len(literals)
        self._automaton = ahocorasick_rs.BytesAhoCorasick(list(literals))

    def offsets(self, joined: bytes) -> list[int]:
        # Non-overlapping matches suffice: a match hiding another lies in the same message.
        return [start for _, start, _ in self._automaton.find_matches_as_indexes(joined)]

    def counts(self, sample: bytes) -> list[int]:
        found = Counter(
            index for index, _, _ in self._automaton.find_matches_as_indexes(sample, True)
        )
        return [found[index] for index in range(self._size)]

    def present(self, payload: bytes) -> set[int]:
        # Overlapping: a literal inside another ("Key" in "AccessKey") must be seen too.
        return {index for index, _, _ in self._automaton.find_matches_as_indexes(payload, True)}


class Hyperscan:
    """All literals in one SIMD scan (Hyperscan's pure-literal compiler). The binding passes
    patterns as C strings, so a literal must not hold a NUL byte."""

    def __init__(self, literals: Sequence[bytes]) -> None:
        self._size = len(literals)
        self._database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._database.compile(
            expressions=list(literals),
            ids=list(range(len(literals))), elements=len(literals), flags=0, literal=True,
        )

    def offsets(self, joined: bytes) -> list[int]:
        found: list[int] = []

        def on_match(literal: int, start: int, end: int, flags: int, context: object) -> None:
            found.append(end - 1)  # the match's last byte (its start is not tracked)

        self._database.scan(joined, match_event_handler=on_match)
        return found

    def counts(self, sample: bytes) -> list[int]:
        found = [0] * self._size

        def on_match(literal: int, start: int, end: int, flags: int, context: object) -> None:
            found[literal] += 1

        self._database.scan(sample, match_event_handler=on_match)
        return found

    def present(self, payload: bytes) -> set[int]:
        found: set[int] = set()

        def on_match(literal: int, start: int, end: int, flags: int, context: object) -> None:
            found.add(literal)

        self._database.scan(payload, match_event_handler=on_match)
        return found


class _NoLiterals:
    """No rule loaded: nothing to find."""

    def offsets(self, joined: bytes) -> list[int]:
        return []

    def counts(self, sample: bytes) -> list[int]:
        return []

    def present(self, payload: bytes) -> set[int]:
        return set()


MultiPattern = Callable[[Sequence[bytes]], Matcher]
MULTI_PATTERN: MultiPattern = Hyperscan if HAVE_HYPERSCAN else AhoCorasick
"""The fastest multi-pattern matcher installed."""


def matcher_for(literals: Sequence[bytes], multi_pattern: MultiPattern = MULTI_PATTERN) -> Matcher:
    """A matcher of `literals`: Aho-Corasick for a literal Hyperscan cannot take (a NUL byte)."""
    if not literals:
        return _NoLiterals()
    if multi_pattern is Hyperscan and any(b"\0" in literal for literal in literals):
        return AhoCorasick(literals)
    return multi_pattern(literals)


class LiteralIndex:
    """`may_match` of many prefilters on one message at once: one scan finds which of all their
    literals it holds, then only the prefilters holding one of those are checked, by set
    intersection, instead of each prefilter searching the message for each of its literals."""

    def __init__(
        self,
        groups_per_prefilter: Sequence[Groups],
        always: tuple[bytes, ...] = (),
        multi_pattern: MultiPattern = MULTI_PATTERN,
    ) -> None:
        # A group holding the empty literal is satisfied by any message.
        needed = [tuple(group for group in groups if b"" not in group)
                  for groups in groups_per_prefilter]
        literals = list(dict.fromkeys(
            literal for groups in needed for group in groups for literal in group
        ))
        position = {literal: index for index, literal in enumerate(literals)}
        self._prefilters = [
            tuple(frozenset(position[literal] for literal in group) for group in groups)
            for groups in needed
        ]
        self._everything = any(not groups for groups in self._prefilters)
        self._by_literal: dict[int, list[int]] = {}
        for index, groups in enumerate(self._prefilters):
            for literal in groups[0] if groups else ():
                self._by_literal.setdefault(literal, []).append(index)
        self._always = always
        self._matcher = matcher_for(literals, multi_pattern)

    def may_match(self, payload: bytes) -> bool:
        if self._everything or any(literal in payload for literal in self._always):
            return True
        present = self._matcher.present(payload)
        prefilters = self._prefilters
        for literal in present:
            for index in self._by_literal.get(literal, ()):
                if all(not group.isdisjoint(present) for group in prefilters[index]):
                    return True
        return False


class BatchScreen:
    """Which messages of a batch may match: a superset of those `may_match` keeps."""

    REVIEW_EVERY = 500

    def __init__(
        self,
        groups_per_prefilter: Sequence[Groups],
        always: tuple[bytes, ...] = (),
        multi_pattern: MultiPattern = MULTI_PATTERN,
    ) -> None:
        # A group holding the empty literal is satisfied by any message.
        self._groups = [
            tuple(group for group in groups if b"" not in group) for groups in groups_per_prefilter
        ]
        self._everything = any(not groups for groups in self._groups)
        self._always = always
        self._multi_pattern = multi_pattern
        self._literals = tuple(
            dict.fromkeys(
                [*always, *(literal for groups in self._groups for g in groups for literal in g)]
            )
        )
        if any(SEPARATOR in literal for literal in self._literals):
            raise ValueError("a literal holds 0xFF, the byte that separates the batch's messages")
        self._counter = matcher_for(self._literals, multi_pattern)
        self._anchors: tuple[bytes, ...] = ()
        self._search = self._counter
        self._until_review = 0

    @property
    def anchors(self) -> tuple[bytes, ...]:
        """The literals searched for now (chosen on the first batch)."""
        return self._anchors

    def candidates(self, payloads: Sequence[bytes], sizes: Sequence[int]) -> list[int]:
        """Indices, ascending, of the payloads that may match; `sizes` are their lengths."""
        if self._everything:
            return list(range(len(payloads)))
        joined = SEPARATOR.join(payloads)
        if not self._until_review:
            self._choose_anchors(joined)
        self._until_review -= 1
        offsets = self._search.offsets(joined)
        if not offsets:  # the usual batch: spare the mapping to messages
            return []
        ends = list(accumulate(size + 1 for size in sizes))
        return sorted({bisect_right(ends, offset) for offset in offsets})

    def _choose_anchors(self, sample: bytes) -> None:
        seen = dict(zip(self._literals, self._counter.counts(sample), strict=True))
        anchors = (
            min(groups, key=lambda group: sum(seen[literal] for literal in group))
            for groups in self._groups
        )
        chosen = tuple(
            dict.fromkeys([*self._always, *(literal for group in anchors for literal in group)])
        )
        if chosen != self._anchors:
            self._anchors = chosen
            self._search = matcher_for(chosen, self._multi_pattern)
        self._until_review = self.REVIEW_EVERY
