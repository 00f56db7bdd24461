"""An ES|QL subset, compiled once per rule into closures that judge one CloudTrail record.

Supported: `FROM <index patterns>`, one or more `| WHERE <condition>`, an optional final
`| KEEP <fields>`. Conditions use `== != < <= > >=`, `AND OR NOT`, parentheses, `IS [NOT] NULL`,
`[NOT] IN (...)`, `[NOT] LIKE`, `[NOT] RLIKE`, string/number/boolean/null literals, backquoted
field names and the functions TO_LOWER, TO_UPPER, STARTS_WITH, ENDS_WITH, COALESCE, LENGTH.
Anything else is rejected when the rule loads, with the line and column inside the query.

Semantics follow ES|QL (three-valued logic, WHERE keeps a row only when its condition is true):
- a comparison is null when either side is null or multi-valued (ES|QL also adds a warning
  header for the multi-valued case; a stream has no response to attach it to, so we only
  evaluate to null);
- `x IN (...)` is true on a match, else null when x is null or multi-valued or the list holds a
  null, else false; multi-valued list items never match;
- LIKE (`*` any run of characters, `?` one character, `\\` escapes) and RLIKE (Python `re`
  syntax, which covers the common Java/Lucene constructs) must match the whole value, case
  sensitively; on null or multi-valued input they are null;
- LENGTH, STARTS_WITH and ENDS_WITH of null or multi-valued input are null; TO_LOWER and
  TO_UPPER map each value of a multi-valued input (ES|QL 9.1+); COALESCE returns its first
  non-null argument as it is, multi-valued or not;
- a one-element list counts as a single value and an empty list as null, as in Elasticsearch.

Compilation turns each boolean node into two closures, "is true" and "is false", so evaluation
is plain two-valued Python that still gives exact Kleene results and stops at the first
conjunct that is not true.
"""

from __future__ import annotations

import difflib
import ipaddress
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from consumer.event import CloudTrailRecord
from consumer.normalize import ECS_FIELDS, EcsField
from consumer.times import parse_iso_utc

Predicate = Callable[[CloudTrailRecord], bool]
ValueFn = Callable[[CloudTrailRecord], Any]
Scalar = str | int | float | bool | None


class EsqlError(ValueError):
    """A query the engine cannot run, located by 1-based line and column inside the query."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.reason = message
        self.line = line
        self.column = column


class UnsupportedEsqlError(EsqlError):
    """Valid ES|QL that this engine cannot run yet: a rule using it is skipped with this reason,
    where a query that is simply wrong stops start-up."""


# --- syntax tree ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Const:
    value: Scalar
    pos: int


@dataclass(frozen=True, slots=True)
class FieldRef:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Expr, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Expr
    right: Expr
    pos: int


@dataclass(frozen=True, slots=True)
class Logical:
    op: Literal["AND", "OR"]
    operands: tuple[Expr, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    pos: int


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Expr
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class InList:
    operand: Expr
    items: tuple[Expr, ...]
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Match:
    operand: Expr
    pattern: str
    regex: bool
    negated: bool
    pos: int


Expr = Const | FieldRef | Call | Compare | Logical | Not | IsNull | InList | Match


@dataclass(frozen=True, slots=True)
class CompiledQuery:
    """A rule's query, ready to judge records; built once by `compile_query`."""

    query: str
    index_patterns: tuple[str, ...]
    condition: Expr
    """The WHERE commands joined by AND; kept for static analysis such as the prefilter."""
    fields_read: tuple[str, ...]
    """ECS fields the condition reads, in order of first use."""
    field_specs: Mapping[str, EcsField]
    """The registry entries of `fields_read`."""
    keep_fields: tuple[str, ...]
    """Fields named by KEEP (wildcards expanded), to copy into an alert."""
    matches: Predicate
    """True exactly when ES|QL's WHERE would keep the record."""


# --- lexing ----------------------------------------------------------------------------------

_SEGMENT_RE = re.compile(
    r'"""(?:.|\n)*?(?:"""|\Z)|"(?:[^"\\\n]|\\.)*"?|`(?:[^`]|``)*`?'
    r"|//[^\n]*|/\*(?:.|\n)*?(?:\*/|\Z)|[^|\"`/]+|/|\|",
    re.DOTALL,
)
_NAME_PART = r"(?:[A-Za-z_@][A-Za-z0-9_@]*|`(?:[^`]|``)*`)"
_TOKEN_RE = re.compile(
    r"(?P<ws>\s+|//[^\n]*|/\*.*?\*/)"
    r'|(?P<tstring>""".*?""")'
    r'|(?P<string>"(?:[^"\\\r\n]|\\.)*")'
    r"|(?P<number>(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)"
    rf"|(?P<name>{_NAME_PART}(?:\.(?:[A-Za-z0-9_@]+|`(?:[^`]|``)*`))*)"
    r"|(?P<op>==|!=|<=|>=|<|>|\(|\)|,|-)",
    re.DOTALL,
)
_LIST_ITEM_RE = re.compile(r'\s+|,|"(?:[^"\\\n]|\\.)*"|`(?:[^`]|``)*`|[^\s,"`]+|.', re.DOTALL)
_INDEX_PATTERN_RE = re.compile(r"-?[A-Za-z0-9_.*:+-]+")
_KEEP_PATTERN_RE = re.compile(r"[A-Za-z0-9_@.*]+")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", '"': '"', "\\": "\\"}
_KEYWORDS = frozenset({"AND", "OR", "NOT", "IS", "NULL", "IN", "LIKE", "RLIKE", "TRUE", "FALSE"})
_ESQL_COMMANDS = frozenset(
    {
        *("CHANGE_POINT", "COMPLETION", "DISSECT", "DROP", "ENRICH", "EVAL", "EXPLAIN", "FORK"),
        *("GROK", "INLINESTATS", "JOIN", "LIMIT", "LOOKUP", "METRICS", "MV_EXPAND", "RENAME"),
        *("RERANK", "ROW", "SAMPLE", "SHOW", "SORT", "STATS", "TS"),
    }
)
_SUPPORTED = "FROM, WHERE and KEEP"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["keyword", "name", "string", "number", "op", "eof"]
    text: str
    value: Scalar
    pos: int


def _position(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _name_value(raw: str) -> str:
    """The field name a (possibly backquoted, dotted) identifier spells."""
    parts = re.findall(r"`(?:[^`]|``)*`|[^.`]+", raw)
    return ".".join(p[1:-1].replace("``", "`") if p.startswith("`") else p for p in parts)


class _Source:
    """The query text plus error reporting at an offset."""

    def __init__(self, text: str) -> None:
        self.text = text

    def error(self, message: str, pos: int) -> EsqlError:
        return EsqlError(message, *_position(self.text, pos))

    def unsupported(self, message: str, pos: int) -> UnsupportedEsqlError:
        return UnsupportedEsqlError(message, *_position(self.text, pos))

    def unescape(self, raw: str, pos: int) -> str:
        out: list[str] = []
        index = 1
        while index < len(raw) - 1:
            char = raw[index]
            if char == "\\":
                escaped = raw[index + 1]
                if escaped not in _ESCAPES:
                    raise self.error(
                        f"unknown escape sequence '\\{escaped}' in string", pos + index
                    )
                out.append(_ESCAPES[escaped])
                index += 2
            else:
                out.append(char)
                index += 1
        return "".join(out)

    def tokens(self, start: int, end: int) -> list[_Token]:
        tokens: list[_Token] = []
        pos = start
        while pos < end:
            found = _TOKEN_RE.match(self.text, pos, end)
            if found is None:
                raise self._bad_character(pos)
            kind, raw = found.lastgroup, found.group()
            if kind == "tstring":
                tokens.append(_Token("string", raw, raw[3:-3], pos))
            elif kind == "string":
                tokens.append(_Token("string", raw, self.unescape(raw, pos), pos))
            elif kind == "number":
                number: int | float = int(raw) if raw.isdigit() else float(raw)
                tokens.append(_Token("number", raw, number, pos))
            elif kind == "name":
                if raw.upper() in _KEYWORDS:
                    tokens.append(_Token("keyword", raw.upper(), raw.upper(), pos))
                else:
                    tokens.append(_Token("name", raw, _name_value(raw), pos))
            elif kind == "op":
                tokens.append(_Token("op", raw, raw, pos))
            pos = found.end()
        tokens.append(_Token("eof", "", None, end))
        return tokens

    def _bad_character(self, pos: int) -> EsqlError:
        char = self.text[pos]
        if self.text.startswith("/*", pos):
            return self.error("unterminated /* comment", pos)
        if char == '"':
            return self.error("unterminated string literal", pos)
        if char == "`":
            return self.error("unterminated backquoted name", pos)
        if char == "=":
            return self.error("'=' is not an operator; compare with '=='", pos)
        return self.error(f"unexpected character {char!r}", pos)

    def segments(self) -> list[tuple[int, int]]:
        """Offsets of the commands between top-level pipes."""
        bounds: list[tuple[int, int]] = []
        start = 0
        for piece in _SEGMENT_RE.finditer(self.text):
            if piece.group() == "|":
                bounds.append((start, piece.start()))
                start = piece.end()
        bounds.append((start, len(self.text)))
        return bounds

    def list_items(self, start: int, end: int) -> list[tuple[str, int]]:
        """Comma-separated items of a FROM or KEEP command, with their offsets."""
        items: list[tuple[str, int]] = []
        expect_item = True
        for piece in _LIST_ITEM_RE.finditer(self.text, start, end):
            raw = piece.group()
            if raw.isspace():
                continue
            if raw in ('"', "`"):
                raise self.error(f"unterminated {raw} quote", piece.start())
            if raw == ",":
                if expect_item:
                    raise self.error("expected a name before ','", piece.start())
                expect_item = True
                continue
            if not expect_item:
                if raw.upper() == "METADATA":
                    raise self.unsupported("FROM ... METADATA is not supported", piece.start())
                raise self.error(f"expected ',' before {raw!r}", piece.start())
            items.append((raw, piece.start()))
            expect_item = False
        if expect_item:
            raise self.error("expected a name", end)
        return items


# --- parsing ---------------------------------------------------------------------------------

_COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">="})


class _Parser:
    """Recursive descent over one WHERE command's tokens."""

    def __init__(self, source: _Source, tokens: list[_Token]) -> None:
        self.source = source
        self.tokens = tokens
        self.index = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def lookahead(self, offset: int) -> _Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.current
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def at(self, kind: str, text: str) -> bool:
        return self.current.kind == kind and self.current.text == text

    def expect(self, kind: str, text: str) -> _Token:
        if not self.at(kind, text):
            raise self.unexpected(f"'{text}'")
        return self.advance()

    def unexpected(self, wanted: str) -> EsqlError:
        token = self.current
        found = "end of command" if token.kind == "eof" else repr(token.text)
        return self.source.error(f"expected {wanted}, found {found}", token.pos)

    def at_end(self) -> bool:
        return self.current.kind == "eof"

    def condition(self) -> Expr:
        if self.at_end():
            raise self.unexpected("a condition")
        expr = self.disjunction()
        if not self.at_end():
            raise self.unexpected("AND, OR or the end of the command")
        return expr

    def disjunction(self) -> Expr:
        operands = [self.conjunction()]
        while self.at("keyword", "OR"):
            self.advance()
            operands.append(self.conjunction())
        if len(operands) == 1:
            return operands[0]
        return Logical("OR", tuple(operands), operands[0].pos)

    def conjunction(self) -> Expr:
        operands = [self.negation()]
        while self.at("keyword", "AND"):
            self.advance()
            operands.append(self.negation())
        if len(operands) == 1:
            return operands[0]
        return Logical("AND", tuple(operands), operands[0].pos)

    def negation(self) -> Expr:
        if self.at("keyword", "NOT"):
            pos = self.advance().pos
            return Not(self.negation(), pos)
        return self.predicate()

    def predicate(self) -> Expr:
        left = self.primary()
        token = self.current
        if token.kind == "op" and token.text in _COMPARISONS:
            self.advance()
            right = self.primary()
            if self.current.kind == "op" and self.current.text in _COMPARISONS:
                raise self.source.error(
                    "comparisons cannot be chained; join them with AND", self.current.pos
                )
            return Compare(token.text, left, right, token.pos)
        if self.at("keyword", "IS"):
            self.advance()
            negated = self.at("keyword", "NOT")
            if negated:
                self.advance()
            self.expect("keyword", "NULL")
            return IsNull(left, negated, token.pos)
        negated = self.at("keyword", "NOT") and self.lookahead(1).kind == "keyword"
        if negated:
            self.advance()
        if self.at("keyword", "IN"):
            self.advance()
            return InList(left, self.in_items(), negated, token.pos)
        if self.at("keyword", "LIKE") or self.at("keyword", "RLIKE"):
            regex = self.advance().text == "RLIKE"
            pattern = self.current
            if pattern.kind != "string":
                raise self.unexpected("a string pattern")
            self.advance()
            return Match(left, str(pattern.value), regex, negated, token.pos)
        if negated:
            raise self.unexpected("IN, LIKE or RLIKE after NOT")
        return left

    def in_items(self) -> tuple[Expr, ...]:
        self.expect("op", "(")
        items = [self.primary()]
        while self.at("op", ","):
            self.advance()
            items.append(self.primary())
        self.expect("op", ")")
        return tuple(items)

    def primary(self) -> Expr:
        token = self.current
        if token.kind == "op" and token.text == "(":
            self.advance()
            expr = self.disjunction()
            self.expect("op", ")")
            return expr
        if token.kind == "op" and token.text == "-" and self.lookahead(1).kind == "number":
            self.advance()
            number = self.advance().value
            assert isinstance(number, int | float)
            return Const(-number, token.pos)
        if token.kind in ("string", "number"):
            self.advance()
            return Const(token.value, token.pos)
        if token.kind == "keyword" and token.text in ("TRUE", "FALSE", "NULL"):
            self.advance()
            return Const({"TRUE": True, "FALSE": False, "NULL": None}[token.text], token.pos)
        if token.kind == "name":
            self.advance()
            if self.at("op", "("):
                return self.call(token)
            return FieldRef(str(token.value), token.pos)
        raise self.unexpected("a field, literal, function or '('")

    def call(self, name: _Token) -> Call:
        self.advance()
        args: list[Expr] = []
        if not self.at("op", ")"):
            args.append(self.disjunction())
            while self.at("op", ","):
                self.advance()
                args.append(self.disjunction())
        self.expect("op", ")")
        return Call(name.text.upper(), tuple(args), name.pos)


# --- value representations ------------------------------------------------------------------

EsType = Literal["keyword", "date", "ip", "long", "double", "boolean", "null"]
_NUMERIC = frozenset({"long", "double"})
_ORDERABLE = frozenset({"keyword", "date", "ip", "long", "double"})


def _ip_key(value: object) -> int | None:
    """An address as one integer in IPv6 space (IPv4 mapped), so the two families compare."""
    if not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return 0xFFFF_0000_0000 | int(address)
    return int(address)


def _date_key(value: object) -> int | None:
    """An ISO-8601 timestamp as epoch milliseconds (UTC when no offset is given)."""
    moment = parse_iso_utc(value)
    return None if moment is None else int(moment.timestamp() * 1000)


_KEYS: Mapping[str, Callable[[object], int | None]] = {"ip": _ip_key, "date": _date_key}


def _single(value: Any) -> Any:
    """Elasticsearch's view of a list: empty is null, one element is that value."""
    if value.__class__ is list:
        if not value:
            return None
        if len(value) == 1:
            return value[0]
    return value


def _fetcher(field: EcsField) -> ValueFn:
    extract = field.extract
    key = _KEYS.get(field.type)
    if key is None:

        def fetch(record: CloudTrailRecord) -> Any:
            value = extract(record)
            return _single(value) if value.__class__ is list else value

        return fetch

    def fetch_key(record: CloudTrailRecord) -> Any:
        value = _single(extract(record))
        if value.__class__ is list:
            return [key(item) for item in value]
        return None if value is None else key(value)

    return fetch_key


def _constant(value: Any) -> ValueFn:
    return lambda _record: value


def _never(_record: CloudTrailRecord) -> bool:
    return False


def _all_true(tests: tuple[Predicate, ...]) -> Predicate:
    """Nested pairs rather than a loop: a record failing the first test costs one extra call."""
    first, rest = tests[0], tests[1:]
    if not rest:
        return first
    second = _all_true(rest)
    return lambda record: first(record) and second(record)


def _any_true(tests: tuple[Predicate, ...]) -> Predicate:
    first, rest = tests[0], tests[1:]
    if not rest:
        return first
    second = _any_true(rest)
    return lambda record: first(record) or second(record)


def _three_valued(is_true: Predicate, is_false: Predicate) -> ValueFn:
    def value(record: CloudTrailRecord) -> bool | None:
        if is_true(record):
            return True
        return False if is_false(record) else None

    return value


def _like_regex(pattern: str) -> str:
    parts: list[str] = []
    escaped = False
    for char in pattern:
        if escaped:
            parts.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    if escaped:
        raise ValueError("the pattern ends with a lone escape '\\'")
    return "".join(parts)


def like_literal_chunks(pattern: str) -> list[str]:
    """The literal runs of a LIKE pattern: any matching value contains each of them."""
    chunks: list[str] = [""]
    escaped = False
    for char in pattern:
        if escaped:
            chunks[-1] += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "*?":
            chunks.append("")
        else:
            chunks[-1] += char
    return [chunk for chunk in chunks if chunk]


_MIRRORED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_OPERATORS: Mapping[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_NEGATED = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}


# --- compilation -----------------------------------------------------------------------------


class _Compiler:
    """Type-checks the tree and turns it into closures; records the fields it reads."""

    def __init__(self, source: _Source, fields: Mapping[str, EcsField]) -> None:
        self.source = source
        self.fields = fields
        self.read: dict[str, EcsField] = {}

    def error(self, message: str, node: Expr) -> EsqlError:
        return self.source.error(message, node.pos)

    def field(self, node: FieldRef) -> EcsField:
        spec = self.fields.get(node.name)
        if spec is None:
            close = difflib.get_close_matches(node.name, list(self.fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise self.error(f"unknown field '{node.name}'{hint}", node)
        self.read.setdefault(node.name, spec)
        return spec

    def describe(self, node: Expr, kind: EsType) -> str:
        if isinstance(node, FieldRef):
            return f"field '{node.name}' ({kind})"
        if isinstance(node, Const):
            return f"{node.value!r} ({kind})"
        return f"an expression of type {kind}"

    # values

    def value(self, node: Expr) -> tuple[EsType, ValueFn]:
        if isinstance(node, Const):
            return self.const_type(node), _constant(node.value)
        if isinstance(node, FieldRef):
            spec = self.field(node)
            # geo_point and flattened are no ES|QL type we support: the checks refuse them.
            return cast("EsType", spec.type), _fetcher(spec)
        if isinstance(node, Call):
            return self.call(node)
        is_true, is_false = self.truth(node)
        return "boolean", _three_valued(is_true, is_false)

    @staticmethod
    def const_type(node: Const) -> EsType:
        value = node.value
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "boolean"
        if isinstance(value, int):
            return "long"
        if isinstance(value, float):
            return "double"
        return "keyword"

    def string_argument(self, name: str, node: Expr) -> ValueFn:
        kind, fetch = self.value(node)
        if kind not in ("keyword", "null"):
            raise self.error(f"{name} needs a string, found {self.describe(node, kind)}", node)
        return fetch

    def call(self, node: Call) -> tuple[EsType, ValueFn]:
        arity = {"TO_LOWER": 1, "TO_UPPER": 1, "LENGTH": 1, "STARTS_WITH": 2, "ENDS_WITH": 2}
        if node.name == "COALESCE":
            if not node.args:
                raise self.error("COALESCE takes at least 1 argument, got 0", node)
            return self.coalesce(node)
        if node.name not in arity:
            supported = ", ".join(sorted([*arity, "COALESCE"]))
            raise self.error(f"unknown function {node.name} (supported: {supported})", node)
        if len(node.args) != arity[node.name]:
            wanted = arity[node.name]
            raise self.error(
                f"{node.name} takes {wanted} argument{'s' * (wanted > 1)}, got {len(node.args)}",
                node,
            )
        fetches = [self.string_argument(node.name, arg) for arg in node.args]
        if node.name == "TO_LOWER":
            return "keyword", _case_mapper(fetches[0], str.lower)
        if node.name == "TO_UPPER":
            return "keyword", _case_mapper(fetches[0], str.upper)
        if node.name == "LENGTH":
            return "long", _length(fetches[0])
        test = str.startswith if node.name == "STARTS_WITH" else str.endswith
        return "boolean", _affix(fetches[0], fetches[1], test)

    def coalesce(self, node: Call) -> tuple[EsType, ValueFn]:
        result: EsType = "null"
        fetches: list[ValueFn] = []
        for arg in node.args:
            kind, fetch = self.value(arg)
            fetches.append(fetch)
            if kind == "null":
                continue
            if result == "null":
                result = kind
            elif not (kind == result or {kind, result} <= _NUMERIC):
                raise self.error(
                    f"COALESCE arguments must share one type: {result} and "
                    f"{self.describe(arg, kind)}",
                    arg,
                )
        candidates = tuple(fetches)

        def first_present(record: CloudTrailRecord) -> Any:
            for fetch in candidates:
                value = fetch(record)
                if value is not None:
                    return value
            return None

        return result, first_present

    def operand(self, node: Expr, other: Expr, other_kind: EsType) -> tuple[EsType, ValueFn]:
        """An operand, casting a string literal to the other side's ip or date type."""
        kind, fetch = self.value(node)
        key = _KEYS.get(other_kind)
        if isinstance(node, Const) and kind == "keyword" and key is not None:
            converted = key(node.value)
            if converted is None:
                raise self.error(f"{node.value!r} is not a valid {other_kind} literal", node)
            return other_kind, _constant(converted)
        return kind, fetch

    def check_comparable(self, node: Expr, op: str, sides: tuple[tuple[Expr, EsType], ...]) -> None:
        (left, left_kind), (right, right_kind) = sides
        if "null" in (left_kind, right_kind):
            return
        same = left_kind == right_kind or {left_kind, right_kind} <= _NUMERIC
        if not same:
            raise self.error(
                f"cannot compare {self.describe(left, left_kind)} with "
                f"{self.describe(right, right_kind)}",
                node,
            )
        if op not in ("==", "!=") and left_kind not in _ORDERABLE:
            raise self.error(f"'{op}' does not apply to {left_kind} values", node)

    # conditions

    def truth(self, node: Expr) -> tuple[Predicate, Predicate]:
        """Closures telling whether the condition is true, and whether it is false."""
        if isinstance(node, Logical):
            parts = [self.truth(operand) for operand in node.operands]
            trues = tuple(part[0] for part in parts)
            falses = tuple(part[1] for part in parts)
            if node.op == "AND":
                return _all_true(trues), _any_true(falses)
            return _any_true(trues), _all_true(falses)
        if isinstance(node, Not):
            is_true, is_false = self.truth(node.operand)
            return is_false, is_true
        if isinstance(node, Compare):
            return self.compare(node)
        if isinstance(node, IsNull):
            null, present = _null_tests(self.value(node.operand)[1])
            return (present, null) if node.negated else (null, present)
        if isinstance(node, InList):
            is_true, is_false = self.in_list(node)
            return (is_false, is_true) if node.negated else (is_true, is_false)
        if isinstance(node, Match):
            is_true, is_false = self.match(node)
            return (is_false, is_true) if node.negated else (is_true, is_false)
        kind, fetch = self.value(node)
        if kind == "null":
            return _never, _never
        if kind != "boolean":
            raise self.error(f"expected a condition, found {self.describe(node, kind)}", node)
        return (lambda record: fetch(record) is True), (lambda record: fetch(record) is False)

    def compare(self, node: Compare) -> tuple[Predicate, Predicate]:
        left, right, op = node.left, node.right, node.op
        if isinstance(left, Const) and not isinstance(right, Const):
            left, right, op = right, left, _MIRRORED[op]
        left_kind, _ = self.value(left)
        right_kind, right_fetch = self.operand(right, left, left_kind)
        left_kind, left_fetch = self.operand(left, right, right_kind)
        self.check_comparable(node, op, ((left, left_kind), (right, right_kind)))
        if "null" in (left_kind, right_kind):
            return _never, _never
        if isinstance(right, Const):
            constant = right_fetch({})
            if left_kind in _KEYS or not isinstance(left, FieldRef):
                return _against_constant(left_fetch, op, constant)
            return _field_against_constant(self.field(left).extract, op, constant)
        is_true = _between(left_fetch, right_fetch, op)
        return is_true, _between(left_fetch, right_fetch, _NEGATED[op])

    def in_list(self, node: InList) -> tuple[Predicate, Predicate]:
        kind, fetch = self.value(node.operand)
        items: list[tuple[EsType, ValueFn]] = []
        for item in node.items:
            item_kind, item_fetch = self.operand(item, node.operand, kind)
            self.check_comparable(node, "==", ((node.operand, kind), (item, item_kind)))
            items.append((item_kind, item_fetch))
        if kind == "null":
            return _never, _never
        if all(isinstance(item, Const) for item in node.items):
            values = [item_fetch({}) for _, item_fetch in items]
            present = frozenset(value for value in values if value is not None)
            return _in_constants(fetch, present, None in values)
        tri = _in_expressions(fetch, tuple(item_fetch for _, item_fetch in items))
        return (lambda record: tri(record) is True), (lambda record: tri(record) is False)

    def match(self, node: Match) -> tuple[Predicate, Predicate]:
        kind, fetch = self.value(node.operand)
        verb = "RLIKE" if node.regex else "LIKE"
        if kind == "null":
            return _never, _never
        if kind != "keyword":
            found = self.describe(node.operand, kind)
            raise self.error(f"{verb} needs a string, found {found}", node)
        try:
            expression = node.pattern if node.regex else _like_regex(node.pattern)
            matcher = re.compile(expression, re.DOTALL).fullmatch
        except (re.error, ValueError) as problem:
            raise self.error(f"invalid {verb} pattern: {problem}", node) from None

        def is_true(record: CloudTrailRecord) -> bool:
            value = fetch(record)
            return value.__class__ is str and matcher(value) is not None

        def is_false(record: CloudTrailRecord) -> bool:
            value = fetch(record)
            return value.__class__ is str and matcher(value) is None

        return is_true, is_false


def _null_tests(fetch: ValueFn) -> tuple[Predicate, Predicate]:
    return (lambda record: fetch(record) is None), (lambda record: fetch(record) is not None)


def _case_mapper(fetch: ValueFn, change: Callable[[str], str]) -> ValueFn:
    def mapped(record: CloudTrailRecord) -> Any:
        value = fetch(record)
        if value.__class__ is list:
            return [change(item) for item in value]
        return None if value is None else change(value)

    return mapped


def _length(fetch: ValueFn) -> ValueFn:
    def length(record: CloudTrailRecord) -> int | None:
        value = fetch(record)
        return len(value) if value.__class__ is str else None

    return length


def _affix(fetch: ValueFn, fetch_affix: ValueFn, test: Callable[[str, str], bool]) -> ValueFn:
    def affix(record: CloudTrailRecord) -> bool | None:
        value = fetch(record)
        if value.__class__ is not str:
            return None
        part = fetch_affix(record)
        return test(value, part) if part.__class__ is str else None

    return affix


def _field_against_constant(
    extract: Callable[[CloudTrailRecord], Any], op: str, constant: Any
) -> tuple[Predicate, Predicate]:
    """`field op literal` reading the extractor directly: the hot path of most rules."""
    if op in ("==", "!="):

        def equal(record: CloudTrailRecord) -> bool:
            value = extract(record)
            if value == constant:
                return True
            return value.__class__ is list and len(value) == 1 and value[0] == constant

        def unequal(record: CloudTrailRecord) -> bool:
            value = extract(record)
            if value.__class__ is list:
                value = _single(value)
                if value.__class__ is list:
                    return False
            return value is not None and value != constant

        return (equal, unequal) if op == "==" else (unequal, equal)
    return _against_constant(_single_fetch(extract), op, constant)


def _single_fetch(extract: Callable[[CloudTrailRecord], Any]) -> ValueFn:
    return lambda record: _single(extract(record))


def _against_constant(fetch: ValueFn, op: str, constant: Any) -> tuple[Predicate, Predicate]:
    holds, fails = _OPERATORS[op], _OPERATORS[_NEGATED[op]]

    def is_true(record: CloudTrailRecord) -> bool:
        value = fetch(record)
        return value is not None and value.__class__ is not list and holds(value, constant)

    def is_false(record: CloudTrailRecord) -> bool:
        value = fetch(record)
        return value is not None and value.__class__ is not list and fails(value, constant)

    return is_true, is_false


def _between(left: ValueFn, right: ValueFn, op: str) -> Predicate:
    holds = _OPERATORS[op]

    def compare(record: CloudTrailRecord) -> bool:
        a = left(record)
        if a is None or a.__class__ is list:
            return False
        b = right(record)
        if b is None or b.__class__ is list:
            return False
        return holds(a, b)

    return compare


def _in_constants(
    fetch: ValueFn, values: frozenset[Any], list_has_null: bool
) -> tuple[Predicate, Predicate]:
    def is_true(record: CloudTrailRecord) -> bool:
        value = fetch(record)
        return value.__class__ is not list and value in values

    if list_has_null:
        return is_true, _never

    def is_false(record: CloudTrailRecord) -> bool:
        value = fetch(record)
        return value is not None and value.__class__ is not list and value not in values

    return is_true, is_false


def _in_expressions(fetch: ValueFn, items: tuple[ValueFn, ...]) -> ValueFn:
    """ES|QL's IN decision tree for list items that are not all literals."""

    def evaluate(record: CloudTrailRecord) -> bool | None:
        value = fetch(record)
        if value is None or value.__class__ is list:
            return None
        saw_null = False
        saw_single = False
        for item in items:
            candidate = item(record)
            if candidate is None:
                saw_null = True
            elif candidate.__class__ is not list:
                saw_single = True
                if candidate == value:
                    return True
        return None if saw_null or not saw_single else False

    return evaluate


def _index_patterns(source: _Source, start: int, end: int) -> tuple[str, ...]:
    patterns: list[str] = []
    for raw, pos in source.list_items(start, end):
        pattern = source.unescape(raw, pos) if raw.startswith('"') else raw
        if not _INDEX_PATTERN_RE.fullmatch(pattern):
            raise source.error(f"invalid index pattern {raw!r}", pos)
        patterns.append(pattern)
    return tuple(patterns)


def _keep_fields(
    source: _Source, start: int, end: int, fields: Mapping[str, EcsField]
) -> tuple[str, ...]:
    kept: dict[str, None] = {}
    for raw, pos in source.list_items(start, end):
        name = _name_value(raw) if "`" in raw else raw
        if "`" not in raw and not _KEEP_PATTERN_RE.fullmatch(raw):
            raise source.error(f"invalid field name or pattern {raw!r}", pos)
        if "*" in name:
            regex = re.compile(".*".join(re.escape(part) for part in name.split("*")))
            matched = [field for field in fields if regex.fullmatch(field)]
            if not matched:
                raise source.error(f"no field matches the pattern '{name}'", pos)
            kept.update(dict.fromkeys(matched))
        elif name in fields:
            kept[name] = None
        else:
            raise source.error(f"unknown field '{name}'", pos)
    return tuple(kept)


_LEADING_SPACE_RE = re.compile(r"(?:\s+|//[^\n]*|/\*.*?\*/)*", re.DOTALL)
_WORD_RE = re.compile(r"[A-Za-z_]+")


def _command(source: _Source, start: int, end: int) -> tuple[str, int, int]:
    """The command keyword of a segment (upper case), its offset and where its body starts."""
    leading = _LEADING_SPACE_RE.match(source.text, start, end)
    pos = leading.end() if leading else start
    if pos == end:
        raise source.error("expected a command", end)
    word = _WORD_RE.match(source.text, pos, end)
    if word is None:
        raise source.error(f"expected a command, found {source.text[pos]!r}", pos)
    return word.group().upper(), pos, word.end()


def compile_query(query: str, fields: Mapping[str, EcsField] = ECS_FIELDS) -> CompiledQuery:
    """Parse, type-check and compile a query against a field registry; raises EsqlError."""
    source = _Source(query)
    segments = source.segments()
    name, pos, body = _command(source, *segments[0])
    if name != "FROM":
        raise source.error(f"a query starts with FROM, found {name}", pos)
    index_patterns = _index_patterns(source, body, segments[0][1])
    compiler = _Compiler(source, fields)
    conditions: list[Expr] = []
    keep: tuple[str, ...] | None = None
    for start, end in segments[1:]:
        name, pos, body = _command(source, start, end)
        if keep is not None:
            raise source.error(f"{name} after KEEP is not supported; KEEP comes last", pos)
        if name == "WHERE":
            conditions.append(_Parser(source, source.tokens(body, end)).condition())
        elif name == "KEEP":
            keep = _keep_fields(source, body, end, fields)
        elif name in _ESQL_COMMANDS:
            raise source.unsupported(
                f"unsupported command {name}; only {_SUPPORTED} are supported", pos
            )
        else:
            raise source.error(f"unknown command {name}; only {_SUPPORTED} are supported", pos)
    if not conditions:
        raise source.error("the query needs at least one WHERE command", len(query))
    condition = conditions[0] if len(conditions) == 1 else Logical("AND", tuple(conditions), 0)
    is_true, _ = compiler.truth(condition)
    return CompiledQuery(
        query=query,
        index_patterns=index_patterns,
        condition=condition,
        fields_read=tuple(compiler.read),
        field_specs=dict(compiler.read),
        keep_fields=keep or (),
        matches=is_true,
    )
