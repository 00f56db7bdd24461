"""KQL (Kibana Query Language), parsed as Kibana parses it and matched as Elasticsearch would.

The parser follows the grammar of Kibana's `kbn-es-query` package rule for rule (ordered
choice with backtracking), quirks included:
- an unquoted value runs up to a special character (`\\ ( ) : < > " * { }`) or a keyword
  (` or `, ` and `, or `not ` anywhere, even inside a word), may contain spaces, and is trimmed;
  `*` in it is a wildcard, `\\*` a literal star, `null`, `true` and `false` are literals;
- a quoted value is a phrase: `*` in it is literal; escapes are `\\"`, `\\\\`, `\\t`, `\\n`,
  `\\r` and `\\uXXXX`, any other backslash stays as it is;
- `or` binds looser than `and`, `not` binds tightest; keywords are case-insensitive and need
  whitespace around them; `field:(a or b)` applies the field to each value.

Kibana turns each `field: value` into the Elasticsearch query that matches the field's mapping;
we compile straight to a predicate over a CloudTrail record with the same outcome:
- keyword fields (also constant_keyword and flattened sub-fields): exact and case-sensitive;
  a wildcard is a `wildcard` query (`*` any run of characters, `?` literal); values longer than
  the field's `ignore_above` are not indexed, so they match nothing, not even `field:*`; a
  range compares strings in code point order, as Lucene compares UTF-8 terms;
- text fields (`TEXT_FIELDS`, and the `.text` multi-fields in `TEXT_MULTI_FIELDS`): an
  unquoted value is a `match` query (any of its tokens), a quoted one a `match_phrase`, a
  wildcard a `query_string` term matched against single lower-cased tokens of Elasticsearch's
  standard analyzer (approximated: Unicode word runs, joined across `.` `'` `:` between letters
  and `.` `,` between digits, cut at 255 characters);
- ip fields take addresses and CIDR blocks, numbers and dates compare as their types (a date
  without time matches its whole day, as Elasticsearch rounds `lte`/`gt` up), booleans take
  true/false; a value that does not parse as the field's type fails the rule, as the shard
  query would;
- any value of a multi-valued field may match; `not` holds when no value matches, including
  when the field is absent; `field:*` holds when the field has an indexed value.

Not supported, refused when the rule loads: a value without a field (searches every field),
date math such as `now-1d`, a field the registry cannot derive. A nested query `path:{...}`
parses, but Elasticsearch refuses it on a path that is not mapped `nested`, and no field of
the CloudTrail mapping is, so it is an error here too.

`compile_kql` returns a `CompiledQuery`, the same object ES|QL compiles to. Its `condition` is
an ES|QL syntax tree that stands for the query only as far as the byte prefilter needs: exact
and wildcard tests on keyword fields become `==` and LIKE nodes (sound for literal derivation:
a match implies the literal is in the raw value); everything else becomes a node the prefilter
derives nothing from.
"""

from __future__ import annotations

import calendar
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from consumer.cloudtrail.normalize import ECS_FIELDS, EcsField
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.rules.esql import (
    Call,
    Compare,
    CompiledQuery,
    Const,
    EsqlError,
    Expr,
    FieldRef,
    Logical,
    Match,
    Not,
    UnsupportedEsqlError,
)
from consumer.rules.esql.values import as_float
from consumer.times import parse_iso_utc

Predicate = Callable[[CloudTrailRecord], bool]
RangeOp = Literal["lt", "lte", "gt", "gte"]

TEXT_FIELDS = frozenset({"message", "error.message"})
"""Fields mapped `text`/`match_only_text` in Elastic's CloudTrail data stream (ECS)."""

TEXT_MULTI_FIELDS = frozenset(
    {
        "aws.cloudtrail.request_parameters",
        "aws.cloudtrail.response_elements",
        "aws.cloudtrail.additional_eventdata",
        "aws.cloudtrail.service_event_details",
        "user_agent.original",
        "user_agent.os.name",
        "user_agent.os.full",
        "user.name",
        "user.changes.name",
        "user.target.name",
        "user.effective.name",
        "source.as.organization.name",
        "file.path",
    }
)
"""Keyword fields with a `<field>.text` text multi-field (integration's fields.yml and ECS)."""

IGNORE_ABOVE: Mapping[str, int] = {
    "aws.cloudtrail.request_parameters": 8191,
    "aws.cloudtrail.response_elements": 8191,
}
"""Keyword fields whose `ignore_above` is not the default (integration's fields.yml)."""
DEFAULT_IGNORE_ABOVE = 1024
"""ECS keyword fields, and Fleet's default for integration keyword fields without one."""
UNLIMITED_FIELDS = frozenset(
    {"data_stream.type", "data_stream.dataset", "data_stream.namespace", "event.module",
     "event.dataset"}
)
"""constant_keyword fields: no ignore_above."""
FLATTENED_PREFIX = "aws.cloudtrail.flattened."
"""Sub-fields of the integration's `flattened` fields: keyword leaves without ignore_above."""

VERBATIM_FIELDS: Mapping[str, str] = {
    "user.name": "userIdentity.userName|userIdentity.sessionContext.sessionIssuer.userName",
    "aws.cloudtrail.user_identity.type": "userIdentity.type",
    "aws.cloudtrail.user_identity.arn": "userIdentity.arn",
    "aws.cloudtrail.user_identity.access_key_id": "userIdentity.accessKeyId",
    "aws.cloudtrail.user_identity.invoked_by": "userIdentity.invokedBy",
}
"""Keyword fields whose every value is a string of the record's `userIdentity` copied verbatim.

userIdentity is a structured record in the Avro schema (its strings are raw UTF-8 bytes in
the message) and an object in JSON (its strings are JSON strings), so the prefilter may look
for their literals as it does for top-level strings: a compiled query's `field_specs` gives
these fields this path as `raw_source`."""

_KEYWORD_TYPES = frozenset({"keyword", "constant_keyword", "flattened", "wildcard"})
_TEXT_TYPES = frozenset({"text", "match_only_text"})
_NUMERIC_TYPES = frozenset({"long", "integer", "short", "byte", "double", "float", "half_float",
                            "scaled_float", "unsigned_long"})
_SPACE = frozenset(" \t\r\n\u00a0")
_SPECIAL = frozenset('\\():<>"*{}')
_JS_WHITESPACE = " \t\n\v\f\r\u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff" + "".join(
    chr(code) for code in range(0x2000, 0x200B)
)
_WHITESPACE_ESCAPES = {"t": "\t", "r": "\r", "n": "\n"}
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_RANGE_OPS: tuple[tuple[str, RangeOp], ...] = (
    ("<=", "lte"), (">=", "gte"), ("<", "lt"), (">", "gt")
)


class KqlError(EsqlError):
    """A KQL query that is invalid, or that Elasticsearch would refuse on this mapping."""


class UnsupportedKqlError(KqlError, UnsupportedEsqlError):
    """Valid KQL this engine cannot run yet: a rule using it is skipped with this reason."""


# --- syntax tree ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KqlLiteral:
    """A field name or value: `segments` is set when it holds unescaped `*` wildcards."""

    value: str | bool | None
    quoted: bool
    segments: tuple[str, ...] | None
    pos: int

    @property
    def text(self) -> str:
        if self.segments is not None:
            return "*".join(self.segments)
        if self.value is None:
            return "null"
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        return self.value

    @property
    def lone_wildcard(self) -> bool:
        return self.segments == ("", "")


@dataclass(frozen=True, slots=True)
class KqlIs:
    field: KqlLiteral | None
    value: KqlLiteral
    pos: int


@dataclass(frozen=True, slots=True)
class KqlRange:
    field: KqlLiteral
    op: RangeOp
    value: KqlLiteral
    pos: int


@dataclass(frozen=True, slots=True)
class KqlAnd:
    items: tuple[KqlNode, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class KqlOr:
    items: tuple[KqlNode, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class KqlNot:
    item: KqlNode
    pos: int


@dataclass(frozen=True, slots=True)
class KqlNested:
    path: KqlLiteral
    query: KqlNode
    pos: int


@dataclass(frozen=True, slots=True)
class KqlMatchAll:
    pos: int


KqlNode = KqlIs | KqlRange | KqlAnd | KqlOr | KqlNot | KqlNested | KqlMatchAll


# --- parsing -------------------------------------------------------------------------------


def _position(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


class _Parser:
    """Kibana's PEG, one method per rule; a failed rule returns None with `pos` unchanged."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.furthest = 0
        self.expected: set[str] = set()

    def expect(self, what: str, pos: int) -> None:
        if pos > self.furthest:
            self.furthest, self.expected = pos, {what}
        elif pos == self.furthest:
            self.expected.add(what)

    def error(self) -> KqlError:
        pos = self.furthest
        found = repr(self.text[pos]) if pos < len(self.text) else "end of input"
        wanted = ", ".join(sorted(self.expected)) or "end of input"
        return KqlError(f"expected {wanted} but {found} found", *_position(self.text, pos))

    # lexical rules

    def spaces(self) -> int:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _SPACE:
            self.pos += 1
        if self.pos == start:
            self.expect("whitespace", start)
        return self.pos - start

    def word_at(self, pos: int, word: str) -> bool:
        return self.text[pos : pos + len(word)].lower() == word

    def space_at(self, pos: int) -> bool:
        return pos < len(self.text) and self.text[pos] in _SPACE

    def keyword_at(self, pos: int) -> bool:
        """Kibana's `Keyword` lookahead: ` or `, ` and `, or `not ` (no space needed before)."""
        if self.word_at(pos, "not") and self.space_at(pos + 3):
            return True
        if not self.space_at(pos):
            return False
        return any(
            self.word_at(pos + 1, word) and self.space_at(pos + 1 + len(word))
            for word in ("or", "and")
        )

    def separator(self, word: str) -> bool:
        """`Space+ word Space+`, consumed only as a whole."""
        start = self.pos
        if self.spaces() and self.word_at(self.pos, word):
            self.pos += len(word)
            if self.spaces():
                return True
        else:
            self.expect(word.upper(), self.pos)
        self.pos = start
        return False

    def not_keyword(self) -> bool:
        start = self.pos
        if self.word_at(start, "not"):
            self.pos += 3
            if self.spaces():
                return True
        self.expect("NOT", start)
        self.pos = start
        return False

    def literal_char(self, char: str) -> bool:
        if self.text.startswith(char, self.pos):
            self.pos += 1
            return True
        self.expect(repr(char), self.pos)
        return False

    def unicode_escape(self, pos: int) -> str | None:
        digits = self.text[pos + 2 : pos + 6]
        if self.text.startswith("u", pos + 1) and _HEX4.fullmatch(digits):
            return chr(int(digits, 16))
        return None

    def quoted_string(self) -> KqlLiteral | None:
        start = self.pos
        if not self.text.startswith('"', start):
            self.expect('\'"\'', start)
            return None
        pos = start + 1
        chars: list[str] = []
        text = self.text
        while pos < len(text) and text[pos] != '"':
            if text[pos] == "\\" and pos + 1 < len(text):
                escaped = text[pos + 1]
                unicode = self.unicode_escape(pos)
                if escaped in _WHITESPACE_ESCAPES:
                    chars.append(_WHITESPACE_ESCAPES[escaped])
                    pos += 2
                    continue
                if unicode is not None:
                    chars.append(unicode)
                    pos += 6
                    continue
                if escaped in '\\"':
                    chars.append(escaped)
                    pos += 2
                    continue
            chars.append(text[pos])
            pos += 1
        if pos >= len(text):
            self.expect('\'"\'', pos)
            return None
        self.pos = pos + 1
        return KqlLiteral("".join(chars), True, None, start)

    def unquoted_literal(self) -> KqlLiteral | None:
        start = pos = self.pos
        text = self.text
        chars: list[str | None] = []  # None is a wildcard
        while pos < len(text):
            char = text[pos]
            if char == "\\":
                escaped = text[pos + 1 : pos + 2]
                unicode = self.unicode_escape(pos)
                keyword = next(
                    (text[pos + 1 : pos + 1 + len(w)] for w in ("or", "and", "not")
                     if self.word_at(pos + 1, w)),
                    None,
                )
                if escaped in _WHITESPACE_ESCAPES:
                    chars.append(_WHITESPACE_ESCAPES[escaped])
                    pos += 2
                elif escaped and escaped in _SPECIAL:
                    chars.append(escaped)
                    pos += 2
                elif unicode is not None:
                    chars.append(unicode)
                    pos += 6
                elif keyword is not None:
                    chars.append(keyword)
                    pos += 1 + len(keyword)
                else:
                    break
            elif char == "*":
                chars.append(None)
                pos += 1
            elif char in _SPECIAL or self.keyword_at(pos):
                break
            else:
                chars.append(char)
                pos += 1
        if not chars:
            self.expect("literal", start)
            return None
        self.pos = pos
        return _unquoted(chars, start)

    def literal(self) -> KqlLiteral | None:
        return self.quoted_string() or self.unquoted_literal()

    # grammar rules

    def start(self) -> KqlNode:
        self.spaces()
        if self.pos == len(self.text):
            return KqlMatchAll(0)
        query = self.or_query()
        self.spaces()
        if query is None or self.pos != len(self.text):
            self.expect("end of input", self.pos)
            raise self.error()
        return query

    def or_query(self) -> KqlNode | None:
        return self.joined(self.and_query, "or")

    def and_query(self) -> KqlNode | None:
        return self.joined(self.not_query, "and")

    def joined(self, operand: Callable[[], KqlNode | None], word: str) -> KqlNode | None:
        head = operand()
        if head is None:
            return None
        items = [head]
        while True:
            save = self.pos
            if not self.separator(word):
                break
            item = operand()
            if item is None:
                self.pos = save
                break
            items.append(item)
        if len(items) == 1:
            return head
        if word == "or":
            return KqlOr(tuple(items), head.pos)
        return KqlAnd(tuple(items), head.pos)

    def not_query(self) -> KqlNode | None:
        start = self.pos
        if self.not_keyword():
            query = self.sub_query()
            if query is not None:
                return KqlNot(query, start)
            self.pos = start
        return self.sub_query()

    def sub_query(self) -> KqlNode | None:
        start = self.pos
        if self.literal_char("("):
            self.spaces()
            query = self.or_query()
            if query is not None:
                self.spaces()
                if self.literal_char(")"):
                    return query
            self.pos = start
        return self.nested_query()

    def nested_query(self) -> KqlNode | None:
        start = self.pos
        path = self.literal()
        if path is not None:
            self.spaces()
            if self.literal_char(":"):
                self.spaces()
                if self.literal_char("{"):
                    self.spaces()
                    query = self.or_query()
                    if query is not None:
                        self.spaces()
                        if self.literal_char("}"):
                            return KqlNested(path, query, start)
        self.pos = start
        return self.expression()

    def expression(self) -> KqlNode | None:
        start = self.pos
        field = self.literal()
        if field is not None:
            self.spaces()
            for symbol, op in _RANGE_OPS:
                if self.text.startswith(symbol, self.pos):
                    self.pos += len(symbol)
                    self.spaces()
                    value = self.literal()
                    if value is not None:
                        return KqlRange(field, op, value, start)
                    break
            else:
                self.expect("range operator", self.pos)
            self.pos = start
            field = self.literal()
            assert field is not None
            self.spaces()
            if self.literal_char(":"):
                self.spaces()
                values = self.list_of_values(field)
                if values is not None:
                    return values
        self.pos = start
        value = self.literal()
        return None if value is None else KqlIs(None, value, start)

    def list_of_values(self, field: KqlLiteral) -> KqlNode | None:
        start = self.pos
        if self.literal_char("("):
            self.spaces()
            values = self.or_values(field)
            if values is not None:
                self.spaces()
                if self.literal_char(")"):
                    return values
            self.pos = start
        value = self.literal()
        return None if value is None else KqlIs(field, value, start)

    def or_values(self, field: KqlLiteral) -> KqlNode | None:
        return self.joined(lambda: self.and_values(field), "or")

    def and_values(self, field: KqlLiteral) -> KqlNode | None:
        return self.joined(lambda: self.not_values(field), "and")

    def not_values(self, field: KqlLiteral) -> KqlNode | None:
        start = self.pos
        if self.not_keyword():
            values = self.list_of_values(field)
            if values is not None:
                return KqlNot(values, start)
            self.pos = start
        return self.list_of_values(field)


def _unquoted(chars: list[str | None], pos: int) -> KqlLiteral:
    """Kibana's trimmed unquoted literal: null, true, false, a wildcard or a string."""
    first = next((i for i, c in enumerate(chars) if c is None or c.strip(_JS_WHITESPACE)), None)
    if first is None:
        return KqlLiteral("", False, None, pos)
    last = max(i for i, c in enumerate(chars) if c is None or c.strip(_JS_WHITESPACE))
    trimmed = chars[first : last + 1]
    if trimmed[0] is not None:
        trimmed[0] = trimmed[0].lstrip(_JS_WHITESPACE)
    if trimmed[-1] is not None:
        trimmed[-1] = trimmed[-1].rstrip(_JS_WHITESPACE)
    if None not in chars:
        sequence = "".join(c for c in trimmed if c is not None)
        keywords: dict[str, bool | None] = {"null": None, "true": True, "false": False}
        if sequence in keywords:
            return KqlLiteral(keywords[sequence], False, None, pos)
        return KqlLiteral(sequence, False, None, pos)
    segments = [""]
    for char in trimmed:
        if char is None:
            segments.append("")
        else:
            segments[-1] += char
    return KqlLiteral(None, False, tuple(segments), pos)


def parse_kql(text: str) -> KqlNode:
    """The syntax tree of a KQL query; raises KqlError at the furthest point parsing reached."""
    try:
        return _Parser(text).start()
    except RecursionError:
        raise KqlError("the query nests too deeply", 1, 1) from None


# --- values --------------------------------------------------------------------------------


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if value.__class__ is list else [value]


def _as_keyword(value: Any) -> str | None:
    """A value as the keyword term Elasticsearch indexes for it (numbers and booleans coerced)."""
    if value.__class__ is str:
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def _utf16_length(value: str) -> int:
    """Java's String.length(), which is what ignore_above counts."""
    return len(value) + sum(1 for char in value if ord(char) > 0xFFFF)


_TOKEN_RE = re.compile(
    r"\w+(?:(?:(?<=[^\W\d_])[.:'\u2019\u00b7](?=[^\W\d_])|(?<=\d)[.,;'\u2019](?=\d))\w+)*"
)
_MAX_TOKEN = 255


def analyze(text: str) -> list[str]:
    """Tokens of Elasticsearch's standard analyzer (approximated, see the module docstring)."""
    tokens: list[str] = []
    for found in _TOKEN_RE.finditer(text):
        token = found.group()
        if token.strip("_"):
            tokens.extend(
                token[i : i + _MAX_TOKEN].lower() for i in range(0, len(token), _MAX_TOKEN)
            )
    return tokens


def _wildcard_regex(segments: Sequence[str]) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in segments), re.DOTALL)


def _ip_key(text: str) -> int | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return int(address) | 0xFFFF_0000_0000
    return int(address)


def _ip_block(text: str) -> tuple[int, int] | None:
    """The inclusive range of IPv6-space keys an address or CIDR block covers."""
    if "/" not in text:
        key = _ip_key(text)
        return None if key is None else (key, key)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    low, high = _ip_key(str(network.network_address)), _ip_key(str(network.broadcast_address))
    return None if low is None or high is None else (low, high)


_DATE_RE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?)?)?)?"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?"
)


def _date_millis(text: str, round_up: bool) -> int | None:
    """Epoch milliseconds of a `strict_date_optional_time||epoch_millis` value; missing parts
    are filled with their maximum when `round_up`, as Elasticsearch's range parsing does."""
    if re.fullmatch(r"-?\d+(?:\.\d+)?", text) and not _DATE_RE.fullmatch(text):
        return int(float(text))
    found = _DATE_RE.fullmatch(text)
    if found is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = found.groups()
    month_n = int(month) if month else (12 if round_up else 1)
    try:
        last_day = calendar.monthrange(int(year), month_n)[1]
    except (ValueError, calendar.IllegalMonthError):
        return None
    fields = (
        month_n,
        int(day) if day else (last_day if round_up else 1),
        int(hour) if hour else (23 if round_up else 0),
        int(minute) if minute else (59 if round_up else 0),
        int(second) if second else (59 if round_up else 0),
    )
    if not (1 <= fields[0] <= 12 and 1 <= fields[1] <= last_day and fields[2] <= 23
            and fields[3] <= 59 and fields[4] <= 59):
        return None
    millis = int(fraction[:3].ljust(3, "0")) if fraction else (999 if round_up else 0)
    seconds = calendar.timegm((int(year), *fields, 0, 0, 0))
    offset = 0
    if zone and zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:] or 0) * 60
        offset = offset if zone[0] == "+" else -offset
    return (seconds - offset) * 1000 + millis


def _record_date(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    moment = parse_iso_utc(value)
    if moment is None:
        return None
    return calendar.timegm(moment.utctimetuple()) * 1000 + moment.microsecond // 1000


def _record_boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    return None


# --- compiling -----------------------------------------------------------------------------

_COMPARE: Mapping[RangeOp, Callable[[Any, Any], bool]] = {
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
}
_ESQL_OP: Mapping[RangeOp, str] = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


@dataclass(frozen=True, slots=True)
class _Target:
    """A field a leaf query runs on: its registry entry and how Elasticsearch maps it."""

    name: str
    spec: EcsField
    kind: Literal["keyword", "text", "ip", "number", "date", "boolean"]
    limit: int | None
    """ignore_above, for keyword fields."""
    stored: bool = False
    """Read the value as stored, before the keyword parent's ignore_above (text multi-fields)."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    predicate: Predicate
    condition: Expr
    cost: int
    """For ordering AND operands: -1 exact test of eventName (the most selective field of a
    CloudTrail record), 0 of another raw keyword, 1 other exact test, 2 the rest."""


def _always(record: CloudTrailRecord) -> bool:
    return True


def _never(record: CloudTrailRecord) -> bool:
    return False


def _all(predicates: tuple[Predicate, ...]) -> Predicate:
    if len(predicates) == 2:
        first, second = predicates
        return lambda record: first(record) and second(record)

    def every(record: CloudTrailRecord) -> bool:
        for predicate in predicates:  # noqa: SIM110 (a loop costs less than all() on a genexpr)
            if not predicate(record):
                return False
        return True

    return every


def _any(predicates: tuple[Predicate, ...]) -> Predicate:
    def some(record: CloudTrailRecord) -> bool:
        for predicate in predicates:  # noqa: SIM110 (a loop costs less than any() on a genexpr)
            if predicate(record):
                return True
        return False

    return some


class _Compiler:
    def __init__(self, text: str, fields: Mapping[str, EcsField]) -> None:
        self.text = text
        self.fields = fields
        self.read: dict[str, EcsField] = {}

    def error(self, message: str, pos: int) -> KqlError:
        return KqlError(message, *_position(self.text, pos))

    def unsupported(self, message: str, pos: int) -> UnsupportedKqlError:
        return UnsupportedKqlError(message, *_position(self.text, pos))

    # fields

    def target(self, name: str) -> _Target | None:
        spec = self.fields.get(name)
        if spec is not None:
            kind = self.kind(name, spec.type)
            if kind is None:
                return None
            limit = None
            if kind == "keyword" and name not in UNLIMITED_FIELDS and not name.startswith(
                FLATTENED_PREFIX
            ) and spec.type == "keyword":
                limit = spec.ignore_above or IGNORE_ABOVE.get(name, DEFAULT_IGNORE_ABOVE)
            return _Target(name, spec, kind, limit)
        parent_name = name.removesuffix(".text")
        parent = self.fields.get(parent_name)
        if name.endswith(".text") and parent_name in TEXT_MULTI_FIELDS and parent is not None:
            return _Target(parent_name, parent, "text", None, stored=True)
        return None

    @staticmethod
    def kind(
        name: str, es_type: str
    ) -> Literal["keyword", "text", "ip", "number", "date", "boolean"] | None:
        if name in TEXT_FIELDS or es_type in _TEXT_TYPES:
            return "text"
        if es_type in _KEYWORD_TYPES:
            return "keyword"
        if es_type in _NUMERIC_TYPES:
            return "number"
        if es_type in ("ip", "date", "boolean"):
            return es_type  # type: ignore[return-value]
        return None

    def targets(self, field: KqlLiteral, prefix: str) -> list[_Target]:
        if field.segments is None:
            name = prefix + field.text
            target = self.target(name)
            if target is None:
                spec = self.fields.get(name)
                if spec is not None:
                    raise self.unsupported(
                        f"field '{name}' has type {spec.type}, which KQL cannot match here",
                        field.pos,
                    )
                raise self.unsupported(f"field '{name}' is not derived from CloudTrail", field.pos)
            return [target]
        pattern = _wildcard_regex((prefix + field.segments[0], *field.segments[1:]))
        names = [name for name in self.fields if pattern.fullmatch(name)]
        names += [
            parent + ".text" for parent in sorted(TEXT_MULTI_FIELDS)
            if parent in self.fields and pattern.fullmatch(parent + ".text")
        ]
        targets = [target for name in names if (target := self.target(name)) is not None]
        if not targets:
            raise self.unsupported(
                f"no field derived from CloudTrail matches '{prefix}{field.text}'", field.pos
            )
        return targets

    def use(self, target: _Target) -> Callable[[CloudTrailRecord], Any]:
        spec = target.spec
        verbatim = VERBATIM_FIELDS.get(spec.name)
        if spec.raw_source is None and verbatim is not None and not target.stored:
            spec = replace(spec, raw_source=verbatim)
        self.read.setdefault(spec.name, spec)
        if target.stored and target.spec.source is not None:
            return target.spec.source
        return target.spec.extract

    # nodes

    def compile(self, node: KqlNode, prefix: str = "") -> _Compiled:
        if isinstance(node, KqlMatchAll):
            return _Compiled(_always, Const(True, node.pos), 2)
        if isinstance(node, KqlAnd | KqlOr):
            parts = [self.compile(item, prefix) for item in node.items]
            if isinstance(node, KqlAnd):
                parts.sort(key=lambda part: part.cost)  # no side effects: order is free
                predicate = _all(tuple(part.predicate for part in parts))
                op: Literal["AND", "OR"] = "AND"
            else:
                predicate = _any(tuple(part.predicate for part in parts))
                op = "OR"
            condition = Logical(op, tuple(part.condition for part in parts), node.pos)
            return _Compiled(predicate, condition, max(part.cost for part in parts))
        if isinstance(node, KqlNot):
            inner = self.compile(node.item, prefix)
            negated = inner.predicate
            return _Compiled(lambda record: not negated(record), Not(inner.condition, node.pos), 2)
        if isinstance(node, KqlNested):
            raise self.error(
                f"nested query on '{prefix}{node.path.text}': Elasticsearch refuses a nested "
                "query on a path not mapped as nested, and no CloudTrail field is",
                node.pos,
            )
        if node.field is None:
            raise self.unsupported(
                f"value {node.value.text!r} has no field name (a search of every field)",
                node.pos,
            )
        if isinstance(node, KqlIs) and node.field.lone_wildcard and node.value.lone_wildcard:
            return _Compiled(_always, Const(True, node.pos), 2)
        leaves = [self.leaf(node, target) for target in self.targets(node.field, prefix)]
        if len(leaves) == 1:
            return leaves[0]
        return _Compiled(
            _any(tuple(leaf.predicate for leaf in leaves)),
            Logical("OR", tuple(leaf.condition for leaf in leaves), node.pos),
            2,
        )

    def leaf(self, node: KqlIs | KqlRange, target: _Target) -> _Compiled:
        extract = self.use(target)
        ref = FieldRef(target.spec.name, node.pos)
        opaque = Call("KQL", (ref,), node.pos)
        if isinstance(node, KqlRange):
            return _Compiled(self.range(node, target, extract), opaque if target.kind == "text"
                             else Compare(_ESQL_OP[node.op], ref, Const(node.value.text, node.pos),
                                          node.pos), 2)
        value = node.value
        if value.lone_wildcard:
            return _Compiled(self.exists(target, extract), opaque, 2)
        if target.kind == "keyword":
            if value.segments is not None:
                pattern = "*".join(re.sub(r"([\\*?])", r"\\\1", part) for part in value.segments)
                return _Compiled(
                    _keyword_wildcard(extract, _wildcard_regex(value.segments), target.limit),
                    Match(ref, pattern, False, False, node.pos),
                    2,
                )
            term = value.text if value.value is not None else None
            if term is None:
                raise self.error("null is not a value a field can be compared with", value.pos)
            raw = target.spec.raw_source
            cost = 1 if raw is None else -1 if raw == "eventName" else 0
            return _Compiled(
                _keyword_equals(extract, term, target.limit, raw),
                Compare("==", ref, Const(term, node.pos), node.pos),
                cost,
            )
        if target.kind == "text":
            return _Compiled(self.text_match(value, extract), opaque, 2)
        if value.segments is not None:
            raise self.error(
                f"wildcard value on {target.kind} field '{target.name}': Elasticsearch only "
                "runs wildcard queries on keyword and text fields",
                value.pos,
            )
        return _Compiled(self.typed_equals(value, target, extract), opaque, 2)

    def exists(self, target: _Target, extract: Callable[[CloudTrailRecord], Any]) -> Predicate:
        limit = target.limit
        if limit is None:
            return lambda record: bool(_values(extract(record)))

        def exists(record: CloudTrailRecord) -> bool:
            for item in _values(extract(record)):
                term = _as_keyword(item)
                if term is not None and _utf16_length(term) <= limit:
                    return True
            return False

        return exists

    def text_match(
        self, value: KqlLiteral, extract: Callable[[CloudTrailRecord], Any]
    ) -> Predicate:
        if value.segments is not None:
            return _text_query_string(extract, value.segments)
        tokens = analyze(value.text)
        if not tokens:
            return _never
        if value.quoted:
            return _text_phrase(extract, tuple(tokens))
        wanted = frozenset(tokens)
        return lambda record: any(
            not wanted.isdisjoint(analyze(str(item))) for item in _values(extract(record))
        )

    def parse_typed(self, value: KqlLiteral, target: _Target, round_up: bool) -> Any:
        """The value in the field's type, or the error Elasticsearch's shard query gives."""
        text = value.text
        parsed: Any = None
        if target.kind == "number" and not isinstance(value.value, bool):
            parsed = as_float(text)
        elif target.kind == "date":
            if text.startswith("now"):
                raise self.unsupported("date math ('now...') is not supported", value.pos)
            parsed = _date_millis(text, round_up)
        elif target.kind == "boolean":
            parsed = _record_boolean(value.value if isinstance(value.value, bool) else text)
        elif target.kind == "ip":
            parsed = _ip_key(text)
        if parsed is None:
            raise self.error(
                f"{text!r} is not a valid {target.kind} value for field '{target.name}'",
                value.pos,
            )
        return parsed

    def typed_equals(
        self, value: KqlLiteral, target: _Target, extract: Callable[[CloudTrailRecord], Any]
    ) -> Predicate:
        if target.kind == "ip":
            block = _ip_block(value.text)
            if block is None:
                raise self.error(
                    f"{value.text!r} is not an IP address or CIDR block for '{target.name}'",
                    value.pos,
                )
            low, high = block
            return lambda record: any(
                (key := _ip_key(item)) is not None and low <= key <= high
                for item in _values(extract(record)) if isinstance(item, str)
            )
        if target.kind == "date":
            low = self.parse_typed(value, target, round_up=False)
            high = self.parse_typed(value, target, round_up=True)
            return lambda record: any(
                (millis := _record_date(item)) is not None and low <= millis <= high
                for item in _values(extract(record))
            )
        wanted = self.parse_typed(value, target, False)
        convert = as_float if target.kind == "number" else _record_boolean
        return lambda record: any(convert(item) == wanted for item in _values(extract(record)))

    def range(
        self, node: KqlRange, target: _Target, extract: Callable[[CloudTrailRecord], Any]
    ) -> Predicate:
        holds = _COMPARE[node.op]
        convert: Callable[[Any], Any]
        if target.kind == "keyword":
            bound: Any = node.value.text
            limit = target.limit

            def convert(item: Any) -> Any:
                term = _as_keyword(item)
                if term is None or (limit is not None and _utf16_length(term) > limit):
                    return None
                return term
        elif target.kind == "text":
            bound = node.value.text
            return lambda record: any(
                holds(token, bound)
                for item in _values(extract(record)) for token in analyze(str(item))
            )
        else:
            bound = self.parse_typed(node.value, target, round_up=node.op in ("gt", "lte"))
            convert = {
                "number": as_float,
                "date": _record_date,
                "boolean": _record_boolean,
                "ip": lambda item: _ip_key(item) if isinstance(item, str) else None,
            }[target.kind]
        return lambda record: any(
            (converted := convert(item)) is not None and holds(converted, bound)
            for item in _values(extract(record))
        )


def _keyword_equals(
    extract: Callable[[CloudTrailRecord], Any], term: str, limit: int | None, raw: str | None
) -> Predicate:
    """`field: term` on a keyword field: the hot path of most rules.

    With a raw source (a top-level string the field copies verbatim whenever it has a value),
    a record whose raw string differs cannot match, which one dict lookup tells.
    """
    if limit is not None and _utf16_length(term) > limit:
        return _never  # a value this long is never indexed

    def equals(record: CloudTrailRecord) -> bool:
        value = extract(record)
        if value.__class__ is str:
            return term == value
        return any(_as_keyword(item) == term for item in _values(value))

    if raw is None:
        return equals
    get = dict.get

    def raw_equals(record: CloudTrailRecord) -> bool:
        return term == get(record, raw) and equals(record)

    return raw_equals


def _keyword_wildcard(
    extract: Callable[[CloudTrailRecord], Any], pattern: re.Pattern[str], limit: int | None
) -> Predicate:
    matches = pattern.fullmatch

    def wildcard(record: CloudTrailRecord) -> bool:
        for item in _values(extract(record)):
            term = _as_keyword(item)
            if (
                term is not None
                and (limit is None or len(term) <= limit // 2 or _utf16_length(term) <= limit)
                and matches(term) is not None
            ):
                return True
        return False

    return wildcard


def _text_phrase(extract: Callable[[CloudTrailRecord], Any], phrase: tuple[str, ...]) -> Predicate:
    size = len(phrase)

    def phrase_in(record: CloudTrailRecord) -> bool:
        for item in _values(extract(record)):
            tokens = analyze(str(item))
            if any(tuple(tokens[i : i + size]) == phrase for i in range(len(tokens) - size + 1)):
                return True
        return False

    return phrase_in


def _text_query_string(
    extract: Callable[[CloudTrailRecord], Any], segments: tuple[str, ...]
) -> Predicate:
    """Kibana's `query_string` for a wildcard on a text field: whitespace separates terms
    (any may match); a term with `*` is matched, lower-cased, against single tokens."""
    items: list[str | None] = []
    for index, segment in enumerate(segments):
        if index:
            items.append(None)
        items.extend(segment)
    terms: list[list[str | None]] = [[]]
    for item in items:
        if item is not None and item.isspace():
            if terms[-1]:
                terms.append([])
        else:
            terms[-1].append(item)
    patterns: list[re.Pattern[str]] = []
    words: set[str] = set()
    for term in terms:
        if None in term:
            parts = [""]
            for char in term:
                if char is None:
                    parts.append("")
                else:
                    parts[-1] += char.lower()
            patterns.append(_wildcard_regex(parts))
        elif term:
            words.update(analyze("".join(char for char in term if char is not None)))

    def query_string(record: CloudTrailRecord) -> bool:
        for item in _values(extract(record)):
            tokens = analyze(str(item))
            if not words.isdisjoint(tokens):
                return True
            if any(pattern.fullmatch(token) for pattern in patterns for token in tokens):
                return True
        return False

    return query_string


def compile_kql(
    query: str, fields: Mapping[str, EcsField] = ECS_FIELDS, index: Sequence[str] = ()
) -> CompiledQuery:
    """Parse and compile a KQL query against a field registry; raises KqlError.

    `index` is the rule's `index` key (its index patterns), checked by `with_index`.
    """
    tree = parse_kql(query)
    compiler = _Compiler(query, fields)
    compiled = compiler.compile(tree)
    result = CompiledQuery(
        query=query,
        index_patterns=(),
        condition=compiled.condition,
        fields_read=tuple(compiler.read),
        field_specs=dict(compiler.read),
        keep_fields=(),
        matches=compiled.predicate,
    )
    return with_index(result, index) if index else result


def cloudtrail_data_stream() -> str:
    """The data stream Elastic's AWS integration writes CloudTrail events to: its namespace is
    the registry's `data_stream.namespace` (a setting, "default" unless configured)."""
    spec = ECS_FIELDS.get("data_stream.namespace")
    namespace = spec.extract({}) if spec is not None else None
    return f"logs-aws.cloudtrail-{namespace if isinstance(namespace, str) else 'default'}"


def with_index(query: CompiledQuery, index: Sequence[str]) -> CompiledQuery:
    """The query with a rule's `index` patterns; raises UnsupportedKqlError when none of them
    covers CloudTrail's data stream (such a rule never sees these events in Elastic either).

    Patterns are comma-free globs with `*`, as Elasticsearch resolves them; a leading `-`
    excludes.
    """
    patterns = tuple(index)
    included = [p for p in patterns if not p.startswith("-")]
    excluded = [p[1:] for p in patterns if p.startswith("-")]

    stream = cloudtrail_data_stream()

    def covers(pattern: str) -> bool:
        return _wildcard_regex(pattern.split("*")).fullmatch(stream) is not None

    if not any(map(covers, included)) or any(map(covers, excluded)):
        raise UnsupportedKqlError(
            f"index {list(patterns)} does not cover CloudTrail's data stream {stream}",
            1,
            1,
        )
    return replace(query, index_patterns=patterns)
