"""ES|QL's pattern matchers, LIKE, RLIKE, GROK and DISSECT, with bounded cost on hostile values.

These run on values an attacker controls (request parameters, user agents, user names). Every
regular expression runs on Google's RE2 (``google-re2``), whose matching time is linear in the
value's length; a pattern whose meaning RE2 cannot reproduce exactly is refused with
UnsupportedPatternError, never approximated:

- LIKE compiles to RE2 (or to plain string tests for the common shapes).
- RLIKE is Lucene's RegExp syntax as ES|QL parses it (``RegExp.ALL`` syntax flags on Lucene 10:
  ``#`` empty language, ``@`` any string, ``<n-m>`` numeric interval, ``&`` intersection,
  ``"..."`` quoted strings, ``\\d \\s \\w`` and their negations; ``~`` is a plain character since
  Lucene 10 dropped complement from ``ALL``). It is parsed here the way Lucene parses it and
  written out in RE2 syntax; intersection, which RE2 cannot express, is refused.
- GROK patterns expand Elastic's ``%{SYNTAX:SEMANTIC:type}`` references (ECS v1 pattern names,
  as ES|QL's GROK uses ``GrokBuiltinPatterns.get(true)``) into an Oniguruma regex, which is
  translated to RE2. Oniguruma features RE2 lacks (lookaround, atomic groups, ``\\b`` with
  Unicode word characters) are decided from the characters the pattern puts around them (see
  :func:`_plan`); a pattern where that is not possible is refused. There is no backtracking
  fallback: even without nested repetition Python ``re`` is polynomial on patterns such as
  ``%{GREEDYDATA}%{WORD}x``, which had not finished after ten minutes on an 8 KB value.
- DISSECT is Elastic's left-to-right delimiter scan: linear, no regex at all.

No length cap is needed for that reason. Elastic's own limit, should a caller want one: in the
AWS CloudTrail integration the longest keyword fields, ``aws.cloudtrail.request_parameters``
and ``response_elements``, are mapped with ``ignore_above: 8191``
(packages/aws/data_stream/cloudtrail/fields/fields.yml of elastic/integrations) and other
keyword fields get Fleet's default ``ignore_above: 1024``; ES|QL reads a keyword value longer
than its ``ignore_above`` as null, since it is not indexed (elastic/elasticsearch#124678, open).
"""

from __future__ import annotations

import itertools
import re
import struct
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final, Literal

import re2
from re2 import _re2

from consumer.rules.grok_library import ECS_V1

MAX_CODE_POINT: Final = sys.maxunicode


class PatternError(ValueError):
    """A pattern that is invalid, or valid but impossible to run exactly in bounded time."""


class UnsupportedPatternError(PatternError):
    """A valid pattern using a construct we refuse rather than approximate."""


# ---------------------------------------------------------------------------------------------
# Character sets: sorted, disjoint, inclusive code point ranges.

Ranges = tuple[tuple[int, int], ...]


def _normalize(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def _complement(ranges: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    nxt = 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODE_POINT:
        out.append((nxt, MAX_CODE_POINT))
    return tuple(out)


def _re2_char(cp: int) -> str:
    if cp < 128 and (chr(cp).isalnum() or chr(cp) == "_"):
        return chr(cp)
    return f"\\x{{{cp:x}}}"


def _re2_class(ranges: Ranges) -> str:
    """RE2 syntax for a set of code points; an empty set never matches."""
    if not ranges:
        return "[^\\x00-\\x{10ffff}]"
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _re2_char(ranges[0][0])
    parts = []
    for lo, hi in ranges:
        parts.append(_re2_char(lo) if lo == hi else f"{_re2_char(lo)}-{_re2_char(hi)}")
    return "[" + "".join(parts) + "]"


def _ascii_fold(ranges: Ranges) -> Ranges:
    """Add the other ASCII case of every single letter (Lucene folds chars, not ranges)."""
    extra = []
    for lo, hi in ranges:
        if lo == hi and lo < 128 and chr(lo).isalpha():
            other = ord(chr(lo).swapcase())
            extra.append((other, other))
    return _normalize([*ranges, *extra])


@cache
def _unicode_class(name: str) -> Ranges:
    """Oniguruma's Unicode \\w, \\d and \\s (UTF-8 encoding, no ASCII_RANGE option)."""
    if name == "s":
        points = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029]
        points += [0x202F, 0x205F, 0x3000, *range(0x2000, 0x200B)]
        return _normalize((p, p) for p in points)
    wanted = ("L", "M", "N", "Pc") if name == "w" else ("Nd",)
    spans: list[tuple[int, int]] = []
    # planes 4 to 13 hold no assigned characters and 15 and 16 only private use ones
    for cp in itertools.chain(range(0x40000), range(0xE0000, 0xE1000)):
        cat = unicodedata.category(chr(cp))
        if cat.startswith(wanted):
            if spans and spans[-1][1] == cp - 1:
                spans[-1] = (spans[-1][0], cp)
            else:
                spans.append((cp, cp))
    return tuple(spans)


def _clean(text: str) -> str:
    """Lone surrogates become U+FFFD, as Lucene's UTF-16 to UTF-8 conversion does."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _clean(text).encode("utf-8")


class _Re2:
    """One compiled RE2 program, called through the binding's C++ ``RE2.Match``: the
    ``re``-like wrapper of ``google-re2`` costs about 25 µs of Python bookkeeping per call,
    the match itself about 3 µs on a CloudTrail-sized value.

    Grok programs name their groups g<i>[_<copy>] (capture i of the pattern, in one of its
    copies) and t<j>_<copy> (a character consumed to check a final lookahead)."""

    __slots__ = ("_both", "_captures", "_markers", "_program", "_unanchored")

    def __init__(self, source: str, pattern: str, what: str) -> None:
        options = re2.Options()
        options.log_errors = False
        program = _re2.RE2(source.encode("utf-8"), options)
        if not program.ok():
            reason = program.error()
            reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else reason
            raise UnsupportedPatternError(f"{what} pattern [{pattern}] cannot run on RE2: {reason}")
        self._program = program
        self._both = _re2.RE2.Anchor.ANCHOR_BOTH
        self._unanchored = _re2.RE2.Anchor.UNANCHORED
        captures: dict[int, list[int]] = {}
        markers: list[int] = []
        for raw, index in program.NamedCapturingGroups():
            name = raw.decode() if isinstance(raw, bytes) else raw
            if name.startswith("t"):
                markers.append(index)
            else:
                captures.setdefault(int(name[1:].split("_")[0]), []).append(index)
        self._captures = tuple(tuple(captures[i]) for i in sorted(captures))
        self._markers = tuple(markers)

    def fullmatch(self, text: str) -> bool:
        data = _utf8(text)
        return bool(self._program.Match(self._both, data, 0, len(data))[0][0] >= 0)

    def search(self, text: str) -> tuple[str | None, ...] | None:
        """The capture groups of the first match, in the order their groups open; with copies
        of a group, the value of the copy that took part."""
        data = _utf8(text)
        spans = self._program.Match(self._unanchored, data, 0, len(data))
        if spans[0][0] < 0:
            return None
        cut, end = -1, -1
        for index in self._markers:
            if spans[index][0] >= 0:
                cut, end = spans[index]
        out: list[str | None] = []
        for copies in self._captures:
            value = None
            for index in copies:
                a, b = spans[index]
                if a >= 0:
                    value = data[a : cut if b == end and a <= cut else b].decode("utf-8")
                    break
            out.append(value)
        return tuple(out)


# ---------------------------------------------------------------------------------------------
# LIKE


def like(pattern: str, *, case_insensitive: bool = False) -> Callable[[str], bool]:
    """ES|QL LIKE: ``*`` any run of characters, ``?`` one character, ``\\`` escapes ``*``,
    ``?`` or itself; the whole value must match. Any other escape, or a trailing ``\\``, is
    refused as ES|QL does ("Invalid sequence - escape character is not followed by special
    wildcard char"). Case-insensitive matching folds ASCII letters only, like Lucene's
    ``ASCII_CASE_INSENSITIVE``."""
    tokens: list[str | None] = []  # None = '*', '' = '?', else a literal character
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            if i + 1 == len(pattern) or pattern[i + 1] not in "*?\\":
                raise PatternError(
                    f"LIKE pattern [{pattern}]: invalid sequence at position {i} - escape "
                    "character is not followed by special wildcard char"
                )
            tokens.append(pattern[i + 1])
            i += 2
            continue
        tokens.append(None if ch == "*" else "" if ch == "?" else ch)
        i += 1
    fold = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
    norm: Callable[[str], str] = (lambda s: s.translate(fold)) if case_insensitive else str
    if "" not in tokens:
        literal = [t for t in tokens if t is not None]
        stars = [k for k, t in enumerate(tokens) if t is None]
        body = norm("".join(literal))
        if not stars:
            return lambda text: norm(text) == body
        if stars == [len(tokens) - 1]:
            return lambda text: norm(text).startswith(body)
        if stars == [0]:
            return lambda text: norm(text).endswith(body)
        if stars == [0, len(tokens) - 1] and len(tokens) > 1:
            return lambda text: body in norm(text)
    parts = []
    for t in tokens:
        if t is None:
            parts.append("(?s:.*)")
        elif t == "":
            parts.append("(?s:.)")
        else:
            ranges: Ranges = ((ord(t), ord(t)),)
            parts.append(_re2_class(_ascii_fold(ranges) if case_insensitive else ranges))
    return _Re2("".join(parts), pattern, "LIKE").fullmatch


# ---------------------------------------------------------------------------------------------
# RLIKE: a port of Lucene's RegExp parser (Lucene 10, syntax flags ALL) emitting RE2.

_PREDEFINED: Final[dict[str, Ranges]] = {
    "d": ((0x30, 0x39),),
    "s": _normalize([(0x20, 0x20), (0x09, 0x0A), (0x0D, 0x0D)]),
    "w": _normalize([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]),
}
_BAD_ESCAPES: Final = frozenset("abcefghijklmnopqrtuvxyzABCEFGHIJKLMNOPQRTUVXYZ")
_RE2_REPEAT_LIMIT: Final = 1000


class _LuceneRegex:
    """Recursive-descent parser mirroring org.apache.lucene.util.automaton.RegExp."""

    def __init__(self, pattern: str, case_insensitive: bool) -> None:
        self.s = pattern
        self.pos = 0
        self.ci = case_insensitive

    def fail(self, message: str) -> PatternError:
        return PatternError(f"RLIKE pattern [{self.s}]: {message}")

    def more(self) -> bool:
        return self.pos < len(self.s)

    def peek(self, chars: str) -> bool:
        return self.more() and self.s[self.pos] in chars

    def match(self, ch: str) -> bool:
        if self.more() and self.s[self.pos] == ch:
            self.pos += 1
            return True
        return False

    def next(self) -> str:
        if not self.more():
            raise self.fail("unexpected end-of-string")
        ch = self.s[self.pos]
        self.pos += 1
        return ch

    def parse(self) -> str:
        if not self.s:
            return ""
        out = self.union()
        if self.more():
            raise self.fail(f"end-of-string expected at position {self.pos}")
        return out

    def union(self) -> str:
        parts = [self.inter()]
        while self.match("|"):
            parts.append(self.inter())
        return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"

    def inter(self) -> str:
        first = self.concat()
        if self.match("&"):
            raise UnsupportedPatternError(
                f"RLIKE pattern [{self.s}]: intersection '&' at position {self.pos - 1} has no "
                "exact RE2 equivalent; escape it as \\& to match a literal '&'"
            )
        return first

    def concat(self) -> str:
        parts = [self.repeat()]
        while self.more() and not self.peek(")|&"):
            parts.append(self.repeat())
        return "".join(parts)

    def repeat(self) -> str:
        e = self.charclass_exp()
        while self.peek("?*+{"):
            if self.match("?"):
                e = f"(?:{e})?"
            elif self.match("*"):
                e = f"(?:{e})*"
            elif self.match("+"):
                e = f"(?:{e})+"
            elif self.match("{"):
                start = self.pos
                while self.peek("0123456789"):
                    self.pos += 1
                if start == self.pos:
                    raise self.fail(f"integer expected at position {self.pos}")
                n = int(self.s[start : self.pos])
                m: int | None = n
                if self.match(","):
                    start = self.pos
                    while self.peek("0123456789"):
                        self.pos += 1
                    m = int(self.s[start : self.pos]) if start != self.pos else None
                if not self.match("}"):
                    raise self.fail(f"expected '}}' at position {self.pos}")
                if m is not None and n > m:
                    raise self.fail(f"invalid repetition range(out of order): {n}..{m}")
                if max(n, m or 0) > _RE2_REPEAT_LIMIT:
                    raise UnsupportedPatternError(
                        f"RLIKE pattern [{self.s}]: repetition count above {_RE2_REPEAT_LIMIT}"
                    )
                e = f"(?:{e}){{{n},{'' if m is None else m}}}"
        return e

    def charclass_exp(self) -> str:
        if self.match("["):
            negate = self.match("^")
            ranges = self.charclasses()
            if not self.match("]"):
                raise self.fail(f"expected ']' at position {self.pos}")
            return _re2_class(_complement(ranges) if negate else ranges)
        return self.simple()

    def charclasses(self) -> Ranges:
        ranges = list(self.charclass())
        while self.more() and not self.peek("]"):
            ranges.extend(self.charclass())
        return _normalize(ranges)

    def charclass(self) -> Ranges:
        predefined = self.predefined()
        if predefined is not None:
            return predefined
        c = self.charexp()
        if self.match("-"):
            hi = self.charexp()
            if ord(c) > ord(hi):
                raise self.fail(f"invalid range: from ({ord(c)}) cannot be > to ({ord(hi)})")
            return ((ord(c), ord(hi)),)
        return self.char_ranges(c)

    def char_ranges(self, c: str) -> Ranges:
        ranges: Ranges = ((ord(c), ord(c)),)
        return _ascii_fold(ranges) if self.ci and ord(c) <= 128 else ranges

    def predefined(self) -> Ranges | None:
        if not self.match("\\"):
            return None
        if self.peek("dDwWsS"):
            letter = self.next()
            base = _PREDEFINED[letter.lower()]
            return _complement(base) if letter.isupper() else base
        if self.peek("\\"):
            return self.char_ranges(self.next())
        if self.more() and self.s[self.pos] in _BAD_ESCAPES:
            raise self.fail(f"invalid character class \\{self.next()}")
        self.pos -= 1
        return None

    def simple(self) -> str:
        if self.match("."):
            return "(?s:.)"
        if self.match("#"):
            return _re2_class(())
        if self.match("@"):
            return "(?s:.*)"
        if self.match('"'):
            start = self.pos
            while self.more() and not self.peek('"'):
                self.pos += 1
            if not self.match('"'):
                raise self.fail(f"expected '\"' at position {self.pos}")
            return "".join(_re2_class(self.char_ranges(c)) for c in self.s[start : self.pos - 1])
        if self.match("("):
            if self.match(")"):
                return ""
            inner = self.union()
            if not self.match(")"):
                raise self.fail(f"expected ')' at position {self.pos}")
            return f"(?:{inner})"
        if self.match("<"):
            return self.interval()
        predefined = self.predefined()
        if predefined is not None:
            return _re2_class(predefined)
        return _re2_class(self.char_ranges(self.charexp()))

    def charexp(self) -> str:
        if self.match("\\"):
            return self.next()
        return self.next()

    def interval(self) -> str:
        start = self.pos
        while self.more() and not self.peek(">"):
            self.pos += 1
        if not self.match(">"):
            raise self.fail(f"expected '>' at position {self.pos}")
        body = self.s[start : self.pos - 1]
        if "-" not in body:
            raise self.fail(f"named automaton <{body}> is not available")
        lo_text, _, hi_text = body.partition("-")
        if not (
            lo_text.isdigit() and hi_text.isdigit() and lo_text.isascii() and hi_text.isascii()
        ):
            raise self.fail(f"interval syntax error at position {self.pos - 1}")
        lo, hi = sorted((int(lo_text), int(hi_text)))
        if hi > 2**31 - 1:
            raise self.fail(f"interval syntax error at position {self.pos - 1}")
        digits = len(lo_text) if len(lo_text) == len(hi_text) else 0
        return _decimal_interval(lo, hi, digits)


def _digit_range(lo: str, hi: str) -> str:
    """RE2 for the decimal strings of equal length between lo and hi inclusive."""
    if not lo:
        return ""
    if lo == hi:
        return lo
    if lo[0] == hi[0]:
        return lo[0] + "(?:" + _digit_range(lo[1:], hi[1:]) + ")"
    rest = len(lo) - 1
    parts = [lo[0] + "(?:" + _digit_range(lo[1:], "9" * rest) + ")" if rest else lo[0]]
    if int(hi[0]) - int(lo[0]) > 1:
        parts.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}]" + "[0-9]" * rest)
    parts.append(hi[0] + "(?:" + _digit_range("0" * rest, hi[1:]) + ")" if rest else hi[0])
    return "(?:" + "|".join(parts) + ")"


def _decimal_interval(lo: int, hi: int, digits: int) -> str:
    """Lucene's Automata.makeDecimalInterval: fixed width with leading zeros when the two
    bounds were written with the same number of digits, else any number of leading zeros."""
    if digits:
        width = max(digits, len(str(hi)))
        return "(?:" + _digit_range(str(lo).zfill(width), str(hi).zfill(width)) + ")"
    alternatives = []
    for width in range(len(str(lo)), len(str(hi)) + 1):
        low = max(lo, 10 ** (width - 1) if width > 1 else 0)
        high = min(hi, 10**width - 1)
        alternatives.append(_digit_range(str(low), str(high)))
    return "(?:0*(?:" + "|".join(alternatives) + "))"


def rlike(pattern: str, *, case_insensitive: bool = False) -> Callable[[str], bool]:
    """ES|QL RLIKE: Lucene RegExp syntax, the whole value must match."""
    source = _LuceneRegex(pattern, case_insensitive).parse()
    return _Re2(source, pattern, "RLIKE").fullmatch


# ---------------------------------------------------------------------------------------------
# Oniguruma regex (as grok expands it) to an AST, then to RE2 or, failing that, Python re.


@dataclass
class _Node:
    kind: Literal["set", "seq", "alt", "rep", "group", "look", "atomic", "anchor", "backref"]
    items: list[_Node] = field(default_factory=list)
    ranges: Ranges = ()
    text: str = ""  # set: Python re spelling; anchor: which; group: capture name
    lo: int = 0
    hi: int | None = None
    greedy: bool = True
    ahead: bool = True
    negative: bool = False
    gid: str = ""  # group: the RE2/Python group id standing for the Oniguruma name


class _OnigParser:
    """The subset of Oniguruma (Ruby syntax) that grok patterns use."""

    def __init__(self, source: str, grok: str) -> None:
        self.s = source
        self.pos = 0
        self.grok = grok
        self.names: list[tuple[str, str]] = []  # (group id, Oniguruma name), opening order

    def fail(self, message: str) -> PatternError:
        return PatternError(f"GROK pattern [{self.grok}]: {message} at position {self.pos}")

    def parse(self) -> _Node:
        node = self.alt()
        if self.pos < len(self.s):
            raise self.fail("unmatched ')'")
        return node

    def alt(self) -> _Node:
        branches = [self.seq()]
        while self.pos < len(self.s) and self.s[self.pos] == "|":
            self.pos += 1
            branches.append(self.seq())
        return branches[0] if len(branches) == 1 else _Node("alt", branches)

    def seq(self) -> _Node:
        items: list[_Node] = []
        while self.pos < len(self.s) and self.s[self.pos] not in "|)":
            atom = self.atom()
            items.append(self.quantified(atom))
        return items[0] if len(items) == 1 else _Node("seq", items)

    def quantified(self, atom: _Node) -> _Node:
        while self.pos < len(self.s) and self.s[self.pos] in "*+?{":
            ch = self.s[self.pos]
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}.get(ch, (-1, None))
            if ch == "{":
                found = re.match(r"\{(\d*)(,?)(\d*)\}", self.s[self.pos :])
                if found is None or not (found.group(1) or found.group(3)):
                    break
                lo = int(found.group(1) or 0)
                hi = int(found.group(3)) if found.group(3) else (None if found.group(2) else lo)
                self.pos += found.end()
            else:
                self.pos += 1
            if atom.kind in ("anchor", "look"):
                raise self.fail("a quantifier after an anchor or lookaround")
            node = _Node("rep", [atom], lo=lo, hi=hi)
            if self.pos < len(self.s) and self.s[self.pos] == "?":
                node.greedy = False
                self.pos += 1
            elif self.pos < len(self.s) and self.s[self.pos] == "+" and ch != "{":
                self.pos += 1
                node = _Node("atomic", [node])
            atom = node
        return atom

    def atom(self) -> _Node:
        ch = self.s[self.pos]
        if ch == "(":
            return self.group()
        if ch == "[":
            return self.charclass()
        if ch == ".":
            self.pos += 1
            return _Node("set", ranges=_complement(((10, 10),)))
        if ch in "^$":
            self.pos += 1
            return _Node("anchor", text=ch)
        if ch == "\\":
            return self.escape(in_class=False)
        if ch in "*+?":
            raise self.fail(f"target of repeat operator '{ch}' is not specified")
        self.pos += 1
        return _Node("set", ranges=((ord(ch), ord(ch)),))

    def group(self) -> _Node:
        self.pos += 1
        rest = self.s[self.pos :]
        kind: str
        name = ""
        if rest.startswith("?:"):
            kind, self.pos = "group", self.pos + 2
        elif rest.startswith("?>"):
            kind, self.pos = "atomic", self.pos + 2
        elif rest.startswith(("?=", "?!", "?<=", "?<!")):
            kind = "look"
        elif rest.startswith(("?<", "?'")):
            close = ">" if rest[1] == "<" else "'"
            end = rest.find(close, 2)
            if end < 0:
                raise self.fail("unterminated group name")
            name = rest[2:end]
            if not name:
                raise self.fail("empty group name")
            kind, self.pos = "capture", self.pos + end + 1
        elif rest.startswith("?"):
            raise UnsupportedPatternError(
                f"GROK pattern [{self.grok}]: group syntax '({rest[:3]}' at position "
                f"{self.pos - 1} is not supported"
            )
        else:
            kind = "group"
        if kind == "look":
            behind = rest.startswith("?<")
            negative = rest[1 + behind] == "!"
            self.pos += 3 if behind else 2
            inner = self.alt()
            node = _Node("look", [inner], ahead=not behind, negative=negative)
        else:
            gid = ""
            if kind == "capture":
                gid = f"g{len(self.names)}"
                self.names.append((gid, name))
            inner = self.alt()
            node = _Node("atomic" if kind == "atomic" else "group", [inner], text=name, gid=gid)
        if self.pos >= len(self.s) or self.s[self.pos] != ")":
            raise self.fail("end pattern with unmatched parenthesis")
        self.pos += 1
        return node

    def escape(self, *, in_class: bool) -> _Node:
        self.pos += 1
        if self.pos >= len(self.s):
            raise self.fail("end pattern at escape")
        ch = self.s[self.pos]
        self.pos += 1
        classes = {"w": "w", "d": "d", "s": "s"}
        if ch.lower() in classes:
            base = _unicode_class(classes[ch.lower()])
            ranges = _complement(base) if ch.isupper() else base
            return _Node("set", ranges=ranges)
        if ch in "hH":
            base = _normalize([(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)])
            ranges = _complement(base) if ch == "H" else base
            return _Node("set", ranges=ranges)
        simple = {"t": 9, "n": 10, "r": 13, "f": 12, "v": 11, "a": 7, "e": 27}
        if ch in simple:
            cp = simple[ch]
            return _Node("set", ranges=((cp, cp),))
        if ch == "x":
            found = re.match(r"\{([0-9A-Fa-f]{1,8})\}|([0-9A-Fa-f]{1,2})", self.s[self.pos :])
            if found is None:
                raise self.fail("invalid \\x escape")
            self.pos += found.end()
            cp = int(found.group(1) or found.group(2), 16)
            return _Node("set", ranges=((cp, cp),))
        if not in_class and ch in "AzZbBG":
            return _Node("anchor", text="\\" + ch)
        if not in_class and ((ch.isdigit() and ch != "0") or ch == "k"):
            raise UnsupportedPatternError(
                f"GROK pattern [{self.grok}]: backreference at position {self.pos - 2} needs "
                "a backtracking engine; not supported"
            )
        if ch.isalnum():
            raise UnsupportedPatternError(
                f"GROK pattern [{self.grok}]: escape \\{ch} at position {self.pos - 2} is not "
                "supported"
            )
        return _Node("set", ranges=((ord(ch), ord(ch)),))

    def charclass(self) -> _Node:
        self.pos += 1
        negate = False
        if self.pos < len(self.s) and self.s[self.pos] == "^":
            negate = True
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            if self.pos >= len(self.s):
                raise self.fail("premature end of char-class")
            ch = self.s[self.pos]
            if ch == "]" and not first:
                self.pos += 1
                break
            first = False
            if ch == "[":
                if self.s.startswith("[:", self.pos):
                    raise UnsupportedPatternError(
                        f"GROK pattern [{self.grok}]: POSIX bracket at position {self.pos} is "
                        "not supported"
                    )
                raise UnsupportedPatternError(
                    f"GROK pattern [{self.grok}]: nested character class at position "
                    f"{self.pos} is not supported"
                )
            if ch == "&" and self.s.startswith("&&", self.pos):
                raise UnsupportedPatternError(
                    f"GROK pattern [{self.grok}]: class intersection '&&' at position "
                    f"{self.pos} is not supported"
                )
            lo_node = self.class_atom()
            if (
                len(lo_node.ranges) == 1
                and lo_node.ranges[0][0] == lo_node.ranges[0][1]
                and self.s.startswith("-", self.pos)
                and self.pos + 1 < len(self.s)
                and self.s[self.pos + 1] != "]"
            ):
                self.pos += 1
                hi_node = self.class_atom()
                if len(hi_node.ranges) != 1 or hi_node.ranges[0][0] != hi_node.ranges[0][1]:
                    raise self.fail("invalid range in character class")
                lo, hi = lo_node.ranges[0][0], hi_node.ranges[0][0]
                if lo > hi:
                    raise self.fail("empty range in char class")
                ranges.append((lo, hi))
            else:
                ranges.extend(lo_node.ranges)
        norm = _normalize(ranges)
        return _Node("set", ranges=_complement(norm) if negate else norm)

    def class_atom(self) -> _Node:
        if self.s[self.pos] == "\\":
            return self.escape(in_class=True)
        ch = self.s[self.pos]
        self.pos += 1
        return _Node("set", ranges=((ord(ch), ord(ch)),))


class _NeedsBacktracking(Exception):  # noqa: N818 - internal control flow, not an error
    pass


def _intersects(a: Ranges, b: Ranges) -> bool:
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i][1] < b[j][0]:
            i += 1
        elif b[j][1] < a[i][0]:
            j += 1
        else:
            return True
    return False


def _subset(a: Ranges, b: Ranges) -> bool:
    return not _intersects(a, _complement(b))


def _first(node: _Node) -> tuple[Ranges, bool]:
    """The characters a match of node can start with, and whether it can match empty."""
    k = node.kind
    if k == "set":
        return node.ranges, False
    if k in ("look", "anchor"):
        return (), True
    if k == "seq":
        acc: list[tuple[int, int]] = []
        for item in node.items:
            chars, nullable = _first(item)
            acc.extend(chars)
            if not nullable:
                return _normalize(acc), False
        return _normalize(acc), True
    if k == "alt":
        parts = [_first(n) for n in node.items]
        return _normalize(r for c, _ in parts for r in c), any(n for _, n in parts)
    chars, nullable = _first(node.items[0])
    return chars, nullable or (k == "rep" and node.lo == 0)


def _last(node: _Node) -> tuple[Ranges, bool]:
    """The characters a match of node can end with, and whether it can match empty."""
    if node.kind == "seq":
        acc: list[tuple[int, int]] = []
        for item in reversed(node.items):
            chars, nullable = _last(item)
            acc.extend(chars)
            if not nullable:
                return _normalize(acc), False
        return _normalize(acc), True
    if node.kind == "alt":
        parts = [_last(n) for n in node.items]
        return _normalize(r for c, _ in parts for r in c), any(n for _, n in parts)
    if node.kind in ("rep", "group", "atomic"):
        chars, nullable = _last(node.items[0])
        return chars, nullable or (node.kind == "rep" and node.lo == 0)
    return _first(node)


@dataclass(frozen=True)
class _Ctx:
    """What can sit next to a position: these characters, or the edge of the text."""

    chars: Ranges
    edge: bool

    def plus(self, chars: Ranges) -> _Ctx:
        return _Ctx(_normalize([*self.chars, *chars]), self.edge)


_ANY: Final = ((0, MAX_CODE_POINT),)


@dataclass
class _Plan:
    """How each zero-width or atomic node is written in RE2, decided from its context."""

    replace: dict[int, str] = field(default_factory=dict)
    # lookbehinds on the character before the match: (node, class, negative)
    lead: list[tuple[_Node, Ranges, bool]] = field(default_factory=list)
    # lookaheads with nothing after them: node id -> the character class that consumes
    trail: dict[int, str] = field(default_factory=dict)


def _ll1(node: _Node, follow: Ranges) -> bool:
    """Every choice inside node is decided by the next character: then an atomic group over
    node can only ever keep the one match a backtracking engine would try first."""
    k = node.kind
    if k == "seq":
        for i, item in enumerate(node.items):
            rest, nullable = _first(_Node("seq", node.items[i + 1 :]))
            if not _ll1(item, _normalize([*rest, *(follow if nullable else ())])):
                return False
        return True
    if k == "alt":
        firsts = [_first(n) for n in node.items]
        for i, (a, a_null) in enumerate(firsts):
            for b, b_null in firsts[i + 1 :]:
                if _intersects(a, b) or (a_null and b_null):
                    return False
            if a_null and any(_intersects(c, follow) for c, _ in firsts):
                return False
        return all(_ll1(n, follow) for n in node.items)
    if k == "rep":
        body_first, body_null = _first(node.items[0])
        if body_null:
            return False
        repeats = node.hi is None or node.hi > 1
        if (node.hi is None or node.lo < node.hi) and _intersects(body_first, follow):
            return False
        inner_follow = _normalize([*follow, *(body_first if repeats else ())])
        return _ll1(node.items[0], inner_follow)
    if k in ("group", "atomic"):
        return _ll1(node.items[0], follow)
    return True


def _plan(node: _Node, before: _Ctx, after: _Ctx, *, lead: bool, trail: bool, plan: _Plan) -> None:
    """Decide every lookaround, word boundary and atomic group from the characters that can
    precede and follow it; leave undecidable ones out of the plan (RE2 then cannot run it)."""
    k = node.kind
    if k == "seq":
        items = node.items
        for i, item in enumerate(items):
            b = _side_ctx(items[:i][::-1], before, _last, ("^", "\\A"))
            a = _side_ctx(items[i + 1 :], after, _first, ("$", "\\z"))
            last = i == len(items) - 1
            _plan(item, b, a, lead=lead and i == 0, trail=trail and last, plan=plan)
    elif k == "alt":
        for item in node.items:
            _plan(item, before, after, lead=lead, trail=trail, plan=plan)
    elif k == "rep":
        body = node.items[0]
        repeats = node.hi is None or node.hi > 1
        b = before.plus(_last(body)[0]) if repeats else before
        a = after.plus(_first(body)[0]) if repeats else after
        # an optional item, when taken, starts where the match starts
        _plan(body, b, a, lead=lead and not repeats, trail=False, plan=plan)
    elif k == "group":
        _plan(node.items[0], before, after, lead=lead, trail=trail, plan=plan)
    elif k == "atomic":
        body = node.items[0]
        _plan(body, before, after, lead=lead, trail=trail, plan=plan)
        greedy_only = _ll1(body, ()) and not _intersects(after.chars, _chars(body))
        if trail or _choiceless(body) or greedy_only:
            plan.replace[id(node)] = ""
    elif k == "look":
        _plan_look(node, before, after, lead=lead, trail=trail, plan=plan)
    elif k == "anchor" and node.text in ("\\b", "\\B"):
        _plan_boundary(node, before, after, lead=lead, trail=trail, plan=plan)


def _side_ctx(
    nearest_first: list[_Node],
    outer: _Ctx,
    chars_of: Callable[[_Node], tuple[Ranges, bool]],
    anchors: tuple[str, str],
) -> _Ctx:
    """What can sit on one side of a sequence item: the characters of the neighbours up to
    the first one that cannot match empty, else the outer context. A line anchor leaves only
    a newline or the text's edge, a text anchor only the edge."""
    acc: list[tuple[int, int]] = []
    for node in nearest_first:
        if node.kind == "anchor" and node.text in anchors:
            line = node.text == anchors[0]
            return _Ctx(_normalize([*acc, *(((10, 10),) if line else ())]), True)
        chars, nullable = chars_of(node)
        acc.extend(chars)
        if not nullable:
            return _Ctx(_normalize(acc), False)
    return outer.plus(_normalize(acc))


def _decide_one(
    node: _Node,
    ranges: Ranges,
    *,
    ahead: bool,
    negative: bool,
    ctx: _Ctx,
    at_edge: bool,
    plan: _Plan,
) -> None:
    """A one-character lookaround: constant when the context decides it; at the end of the
    pattern, an extra character consumed after the captures; at its start, a choice among
    copies of the pattern by the character before the match (see _re2_source)."""
    never = _re2_class(())
    if not _intersects(ctx.chars, ranges):
        plan.replace[id(node)] = "" if negative else never
    elif not ctx.edge and _subset(ctx.chars, ranges):
        plan.replace[id(node)] = never if negative else ""
    elif at_edge and not ahead:
        plan.lead.append((node, ranges, negative))
    elif at_edge:
        other = _re2_class(_complement(ranges))
        plan.trail[id(node)] = f"\\z|{other}" if negative else _re2_class(ranges)


def _choiceless(node: _Node) -> bool:
    """At most one way to match at any position: no alternation, no variable repetition."""
    if node.kind == "alt":
        return False
    if node.kind == "rep" and node.lo != node.hi:
        return False
    return all(_choiceless(n) for n in node.items)


def _plan_look(
    node: _Node, before: _Ctx, after: _Ctx, *, lead: bool, trail: bool, plan: _Plan
) -> None:
    body = node.items[0]
    while body.kind == "group" and not body.gid:
        body = body.items[0]
    if body.kind == "set":
        ctx, at_edge = (after, trail) if node.ahead else (before, lead)
        _decide_one(
            node,
            body.ranges,
            ahead=node.ahead,
            negative=node.negative,
            ctx=ctx,
            at_edge=at_edge,
            plan=plan,
        )
    elif (
        node.ahead
        and body.kind == "seq"
        and all(n.kind == "set" for n in body.items)
        and not _intersects(after.chars, body.items[0].ranges)
    ):
        plan.replace[id(node)] = "" if node.negative else _re2_class(())


def _plan_boundary(
    node: _Node, before: _Ctx, after: _Ctx, *, lead: bool, trail: bool, plan: _Plan
) -> None:
    word = _unicode_class("w")

    def side(ctx: _Ctx) -> bool | None:
        if not _intersects(ctx.chars, word):
            return False
        if not ctx.edge and _subset(ctx.chars, word):
            return True
        return None

    prev, nxt = side(before), side(after)
    wants_change = node.text == "\\b"
    if prev is not None and nxt is not None:
        plan.replace[id(node)] = "" if (prev != nxt) == wants_change else _re2_class(())
    elif prev is not None:
        # the next character must be a word character exactly when the previous is not
        next_word = (not prev) == wants_change
        _decide_one(
            node, word, ahead=True, negative=not next_word, ctx=after, at_edge=trail, plan=plan
        )
    elif nxt is not None:
        prev_word = (not nxt) == wants_change
        _decide_one(
            node, word, ahead=False, negative=not prev_word, ctx=before, at_edge=lead, plan=plan
        )


def _to_re2(node: _Node, replace: dict[int, str], copy: int, trail: dict[int, str]) -> str:
    """RE2 syntax for an Oniguruma AST; raises _NeedsBacktracking where RE2 has no equivalent.
    Capture groups of copy k > 0 get the suffix _k. A lookahead with nothing after it
    consumes the character it looks at, inside a group t<n> whose character _Re2 later trims
    from the captures that end with it."""
    k = node.kind
    if id(node) in trail:
        return f"(?P<t{list(trail).index(id(node))}_{copy}>{trail[id(node)]})"
    if id(node) in replace:
        if k == "atomic":
            return f"(?:{_to_re2(node.items[0], replace, copy, trail)})"
        return replace[id(node)]
    if k == "set":
        return _re2_class(node.ranges)
    if k == "seq":
        return "".join(_to_re2(n, replace, copy, trail) for n in node.items)
    if k == "alt":
        return "(?:" + "|".join(_to_re2(n, replace, copy, trail) for n in node.items) + ")"
    if k == "rep":
        return _rep_to_re2(node, _to_re2(node.items[0], replace, copy, trail))
    if k == "group":
        inner = _to_re2(node.items[0], replace, copy, trail)
        if not node.gid:
            return f"(?:{inner})"
        return f"(?P<{node.gid}{f'_{copy}' if copy else ''}>{inner})"
    if k == "anchor" and node.text in _RE2_ANCHORS:
        return _RE2_ANCHORS[node.text]
    raise _NeedsBacktracking


def _repeat_weight(node: _Node) -> int:
    """RE2's measure of nested counted repetition (its limit is 1000)."""
    inner = max((_repeat_weight(n) for n in node.items), default=1)
    if node.kind == "rep":
        return inner * max(node.hi if node.hi is not None else node.lo, 1)
    return inner


def _rep_to_re2(node: _Node, body: str) -> str:
    lazy = "" if node.greedy else "?"
    if _repeat_weight(node) <= _RE2_REPEAT_LIMIT:
        hi = "" if node.hi is None else str(node.hi)
        return f"(?:{body}){{{node.lo},{hi}}}{lazy}"
    if node.hi is None or _repeat_weight(node.items[0]) * node.lo > _RE2_REPEAT_LIMIT:
        raise _NeedsBacktracking
    if _has_capture(node.items[0]):
        raise _NeedsBacktracking
    # X{lo,hi} as X{lo} then hi-lo nested optionals: same strings, same order of preference,
    # and within RE2's nesting limit
    optional = ""
    for _ in range(node.hi - node.lo):
        optional = f"(?:{body}{optional}){'?' + lazy}"
    return f"(?:{body}){{{node.lo}}}{optional}"


def _has_capture(node: _Node) -> bool:
    return bool(node.gid) or any(_has_capture(n) for n in node.items)


def _atoms(classes: Iterable[Ranges]) -> list[Ranges]:
    """The coarsest partition of all characters that every class is a union of."""
    atoms: list[Ranges] = [_ANY]
    for cls in classes:
        split: list[Ranges] = []
        for atom in atoms:
            inside = _normalize(_intersection(atom, cls))
            outside = _normalize(_intersection(atom, _complement(cls)))
            split.extend(part for part in (inside, outside) if part)
        atoms = split
    return atoms


def _intersection(a: Ranges, b: Ranges) -> list[tuple[int, int]]:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _re2_source(tree: _Node) -> str:
    """The RE2 program for a parsed pattern.

    Lookbehinds at the very start of the match depend on the character before it. The
    program then starts with that character (or the start of the text) and continues with a
    copy of the pattern where each such lookbehind is decided for that character's class.
    At a given start exactly one copy applies and the order of attempts is unchanged, so the
    first match, and its captures, are the ones a backtracking engine finds."""
    plan = _Plan()
    _plan(tree, _Ctx(_ANY, True), _Ctx(_ANY, True), lead=True, trail=True, plan=plan)
    if not plan.lead:
        return "(?:" + _to_re2(tree, plan.replace, 0, plan.trail) + ")"
    never = _re2_class(())
    options = [("\\A", None), *((_re2_class(a), a) for a in _atoms(r for _, r, _ in plan.lead))]
    parts = []
    for copy, (consume, atom) in enumerate(options):
        replace = dict(plan.replace)
        for node, ranges, negative in plan.lead:
            inside = atom is not None and _subset(atom, ranges)
            replace[id(node)] = never if inside == negative else ""
        parts.append(f"{consume}(?:{_to_re2(tree, replace, copy, plan.trail)})")
    return "(?:" + "|".join(parts) + ")"


_RE2_ANCHORS: Final = {"^": "(?m:^)", "$": "(?m:$)", "\\A": "\\A", "\\z": "\\z"}


def _py_char(cp: int) -> str:
    if cp < 128 and (chr(cp).isalnum() or chr(cp) == "_"):
        return chr(cp)
    return f"\\U{cp:08x}"


def _py_class(ranges: Ranges) -> str:
    if not ranges:
        return "(?!)"
    parts = [_py_char(lo) if lo == hi else f"{_py_char(lo)}-{_py_char(hi)}" for lo, hi in ranges]
    return "[" + "".join(parts) + "]"


def _py_anchor(text: str) -> str:
    word = _py_class(_unicode_class("w"))
    boundary = f"(?:(?<={word})(?!{word})|(?<!{word})(?={word}))"
    mapping = {
        "^": "^",
        "$": "$",
        "\\A": "\\A",
        "\\z": "\\Z",
        "\\Z": "(?=\\n?\\Z)",
        "\\b": boundary,
        "\\B": f"(?!{boundary})",
    }
    if text not in mapping:
        raise UnsupportedPatternError(f"anchor {text} is not supported")
    return mapping[text]


def _to_python(node: _Node) -> str:
    k = node.kind
    if k == "set":
        return _py_class(node.ranges)
    if k == "seq":
        return "".join(_to_python(n) for n in node.items)
    if k == "alt":
        return "(?:" + "|".join(_to_python(n) for n in node.items) + ")"
    if k == "rep":
        hi = "" if node.hi is None else str(node.hi)
        lazy = "" if node.greedy else "?"
        return f"(?:{_to_python(node.items[0])}){{{node.lo},{hi}}}{lazy}"
    if k == "group":
        inner = _to_python(node.items[0])
        return f"(?P<{node.gid}>{inner})" if node.gid else f"(?:{inner})"
    if k == "atomic":
        return f"(?>{_to_python(node.items[0])})"
    if k == "look":
        op = "?" + ("" if node.ahead else "<") + ("!" if node.negative else "=")
        return f"({op}{_to_python(node.items[0])})"
    return _py_anchor(node.text)


def _chars(node: _Node) -> Ranges:
    return _normalize([*node.ranges, *(r for n in node.items for r in _chars(n))])


# ---------------------------------------------------------------------------------------------
# GROK

_GROK_REF: Final = re.compile(
    r"%\{(?P<name>(?P<pattern>[A-z0-9]+)(?::(?P<subname>[\w@\[\]:.-]+))?)"
    r"(?:=(?P<definition>[^{}]+))?\}"
)
_GROK_TYPES: Final[dict[str, str]] = {
    "int": "integer",
    "long": "long",
    "float": "double",
    "double": "double",
    "boolean": "boolean",
}


def _java_int(text: str, bits: int) -> int | None:
    if not re.fullmatch(r"[+-]?\d+", text):
        return None
    value = int(text)
    return value if -(2 ** (bits - 1)) <= value < 2 ** (bits - 1) else None


_JAVA_FLOAT: Final = re.compile(
    r"\s*[+-]?(?:NaN|Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)[fFdD]?\s*"
)


def _java_double(text: str, single: bool) -> float | None:
    if not _JAVA_FLOAT.fullmatch(text):
        return None
    body = text.strip().rstrip("fFdD")
    value = float(body.replace("Infinity", "inf"))
    if single:
        try:
            value = struct.unpack("f", struct.pack("f", value))[0]
        except OverflowError:
            value = float("inf") if value > 0 else float("-inf")
    return value


def _convert(kind: str, text: str) -> Any:
    """GrokCaptureType's parsing: Integer/Long/Float/Double.parseX, Boolean.parseBoolean;
    a value that does not parse gives null."""
    if kind == "int":
        return _java_int(text, 32)
    if kind == "long":
        return _java_int(text, 64)
    if kind in ("float", "double"):
        return _java_double(text, kind == "float")
    if kind == "boolean":
        return text.lower() == "true"
    return text


@dataclass(frozen=True)
class Grok:
    """A compiled ES|QL GROK pattern: columns sorted by name, as ES|QL adds them."""

    pattern: str
    columns: tuple[tuple[str, str], ...]
    _search: Callable[[str], Sequence[str | None] | None] = field(repr=False)
    _groups: tuple[tuple[int, str, str], ...] = field(repr=False)  # (position, column, type)
    _multi: frozenset[str] = field(repr=False, default=frozenset())  # columns of 2+ groups

    def __call__(self, text: str) -> dict[str, Any] | None:
        """The captured columns of the first match, or None when nothing matches (ES|QL then
        sets every column null). A name captured more than once gives a list (multi-value)."""
        found = self._search(text)
        if found is None:
            return None
        out: dict[str, Any] = dict.fromkeys(name for name, _ in self.columns)
        multi: dict[str, list[Any]] = {}
        for position, column, kind in self._groups:
            raw = found[position]
            if raw is None:
                continue
            value = raw if kind == "string" else _convert(kind, raw)
            if value is None:
                continue
            if column in self._multi:
                multi.setdefault(column, []).append(value)
            else:
                out[column] = value
        for column, got in multi.items():
            out[column] = got[0] if len(got) == 1 else got
        return out


def _expand_grok(pattern: str, library: dict[str, str]) -> str:
    """Elastic's Grok.toRegex: replace each %{NAME[:SUB[:type]]} left to right, re-scanning the
    inserted definition; a reference with a sub-name becomes a named group."""
    done: list[str] = []
    rest = pattern
    for _ in range(100_000):
        found = _GROK_REF.search(rest)
        if found is None:
            return "".join(done) + rest
        name = found.group("pattern")
        body = library.get(name)
        if body is None:
            raise PatternError(
                f"GROK pattern [{pattern}]: Unable to find pattern [{name}] in Grok's pattern "
                "dictionary"
            )
        if f"%{{{name}}}" in body or f"%{{{name}:" in body:
            raise PatternError(
                f"GROK pattern [{pattern}]: circular reference in pattern back [{name}]"
            )
        if found.group("subname") is not None:
            part = f"(?<{found.group('name')}>{body})"
        else:
            part = f"(?:{body})"
        done.append(rest[: found.start()])
        rest = part + rest[found.end() :]
    raise PatternError(
        f"GROK pattern [{pattern}]: Can not convert grok patterns to regular expression"
    )


def compile_grok(pattern: str) -> Grok:
    """Compile an ES|QL GROK pattern (ECS v1 pattern library, unanchored first match)."""
    tree, names = _parse_grok(pattern)
    try:
        program = _Re2(_re2_source(tree), pattern, "GROK")
    except _NeedsBacktracking:
        raise UnsupportedPatternError(
            f"GROK pattern [{pattern}] uses a lookaround, word boundary or atomic group whose "
            "outcome depends on text the pattern does not fix; RE2 cannot run it exactly and a "
            "backtracking engine has no cost bound on hostile values: not supported"
        ) from None
    return _grok(pattern, names, program.search)


def _parse_grok(pattern: str) -> tuple[_Node, list[tuple[str, str]]]:
    parser = _OnigParser(_expand_grok(pattern, ECS_V1), pattern)
    return parser.parse(), parser.names


def _grok(
    pattern: str,
    names: list[tuple[str, str]],
    search: Callable[[str], Sequence[str | None] | None],
) -> Grok:
    groups: list[tuple[int, str, str]] = []
    types: dict[str, str] = {}
    for position, (_, full) in enumerate(names):
        parts = full.split(":")
        column = parts[1] if len(parts) >= 2 else parts[0]
        kind = parts[2] if len(parts) == 3 and parts[2] in _GROK_TYPES else "string"
        esql_type = _GROK_TYPES.get(kind, "keyword")
        if types.setdefault(column, esql_type) != esql_type:
            raise PatternError(
                f"GROK pattern [{pattern}]: column [{column}] is captured with two types "
                f"({types[column]} and {esql_type})"
            )
        groups.append((position, column, kind))
    counts = Counter(column for _, column, _ in groups)
    multi = frozenset(column for column, n in counts.items() if n > 1)
    return Grok(pattern, tuple(sorted(types.items())), search, tuple(groups), multi)


def _backtracking_reference(pattern: str) -> Grok:
    """The same GROK pattern on Python ``re``, lookarounds and atomic groups as written: the
    oracle the tests check the RE2 translation against, and the benchmark's baseline. Never
    used on events: its cost on hostile values is unbounded."""
    tree, names = _parse_grok(pattern)
    compiled = re.compile(_to_python(tree), re.MULTILINE)

    def search(text: str) -> tuple[str | None, ...] | None:
        found = compiled.search(text)
        return None if found is None else found.groups()

    return _grok(pattern, names, search)


# ---------------------------------------------------------------------------------------------
# DISSECT


@dataclass(frozen=True)
class _DissectKey:
    name: str
    modifier: str  # "", "+", "/" (append with order), "*", "&" or "?"
    skip: bool
    right_padding: bool
    order: int


_MODIFIERS: Final = re.compile(r"[/+*&?]")


def _dissect_key(key: str, pattern: str) -> _DissectKey:
    modifier = ""
    found = _MODIFIERS.findall(key)
    for k, mod in enumerate(found):
        if k > 0 and not (modifier == "+" and mod == "/"):
            raise PatternError(
                f"DISSECT pattern [{pattern}]: key [{key}]: multiple modifiers are not allowed."
            )
        modifier = mod
    padding = key.endswith("->")
    order = 0
    if modifier == "":
        name = key[:-2] if padding else key
        skip = name == ""
    elif modifier == "/":
        parsed = re.search(r"[+](.*?)(/)([0-9]+)(->)?$", key, re.DOTALL)
        if parsed is None:
            raise PatternError(
                f"DISSECT pattern [{pattern}]: key [{key}]: The key name could not be determined"
            )
        name, order = parsed.group(1), int(parsed.group(3))
        if order > 32767:
            raise PatternError(
                f"DISSECT pattern [{pattern}]: key [{key}]: append order out of range"
            )
        skip = False
    else:
        parsed = re.search(r"([+*&?])(.*?)(->)?$", key, re.DOTALL)
        assert parsed is not None
        name = parsed.group(2)
        skip = modifier == "?"
    if not name and not skip:
        raise PatternError(
            f"DISSECT pattern [{pattern}]: key [{key}]: The key name could not be determined"
        )
    return _DissectKey(name, modifier, skip, padding, order)


@dataclass(frozen=True)
class Dissect:
    """A compiled ES|QL DISSECT pattern; every column is a keyword."""

    pattern: str
    append_separator: str
    columns: tuple[tuple[str, str], ...]
    _leading: str = field(repr=False)
    _pairs: tuple[tuple[_DissectKey, str], ...] = field(repr=False)
    _max_results: int = field(repr=False)

    def __call__(self, text: str) -> dict[str, str] | None:
        """The dissected keys, or None when the text does not fit the pattern."""
        matched: list[tuple[_DissectKey, str]] = []
        pairs = self._pairs
        if len(text) > len(self._leading) and text.startswith(self._leading):
            idx = 0
            key, delim = pairs[0]
            i = value_start = len(self._leading)
            n = len(text)
            while i < n:
                hit = text.find(delim, i) if delim else -1
                if hit < 0:
                    break
                matched.append((key, text[value_start:hit]))
                i = hit + len(delim)
                while delim and text.startswith(delim, i):
                    i += len(delim)
                    if not key.right_padding:
                        if idx + 1 >= len(pairs):
                            break
                        idx += 1
                        key = pairs[idx][0]
                        matched.append((key, ""))
                if idx + 1 >= len(pairs):
                    break
                idx += 1
                key, delim = pairs[idx]
                value_start = i
            if len(matched) != len(pairs) and not delim:
                matched.append((key, text[value_start:]))
        if len(matched) != len(pairs):
            return None
        simple: dict[str, str] = {}
        appends: dict[str, list[tuple[int, int, str]]] = {}
        implicit = -1000
        for seq, (key, value) in enumerate(matched):
            if key.skip:
                continue
            if key.modifier == "":
                simple[key.name] = value
                continue
            order = key.order
            if key.modifier == "+":
                order, implicit = implicit, implicit + 1
            appends.setdefault(key.name, []).append((order, seq, value))
        result = dict(simple)
        for name, parts in appends.items():
            result[name] = self.append_separator.join(v for _, _, v in sorted(parts))
        if len(result) != self._max_results:
            return None
        return {name: result[name] for name, _ in self.columns}


_KEY_AND_DELIMITER: Final = re.compile(r"%\{([^}]*?)}(.+?(?=%\{)|.*$)", re.DOTALL)


def compile_dissect(pattern: str, append_separator: str = "") -> Dissect:
    """Compile an ES|QL DISSECT pattern the way Elastic's DissectParser reads it."""
    lead = re.match("([^\n\r\u0085\u2028\u2029]*?)%\\{", pattern)
    leading = lead.group(1) if lead else ""
    pairs = [
        (_dissect_key(m.group(1), pattern), m.group(2))
        for m in _KEY_AND_DELIMITER.finditer(pattern[len(leading) :])
    ]
    names = list(dict.fromkeys(k.name for k, _ in pairs if not k.skip))
    if not pairs or not names:
        raise PatternError(
            f"Invalid pattern for dissect: [{pattern}]: Unable to find any keys or delimiters."
        )
    refs = [k.name for k, _ in pairs if k.modifier in ("*", "&")]
    unpaired = [name for name, n in Counter(refs).items() if n != 2]
    if unpaired:
        raise PatternError(
            f"Invalid pattern for dissect: [{pattern}]: Found invalid key/reference "
            f"associations: '{unpaired[0]}' Please ensure each '*<key>' is matched with a "
            "matching '&<key>"
        )
    if refs:
        raise UnsupportedPatternError(
            f"Reference keys not supported in dissect patterns: [%{{*{refs[0]}}}]"
        )
    appended = {k.name for k, _ in pairs if k.modifier in ("+", "/")}
    pairs = [
        (_DissectKey(k.name, "+", k.skip, k.right_padding, k.order), d)
        if k.modifier == "" and k.name in appended
        else (k, d)
        for k, d in pairs
    ]
    return Dissect(
        pattern,
        append_separator,
        tuple((name, "keyword") for name in names),
        leading,
        tuple(pairs),
        len(names),
    )
