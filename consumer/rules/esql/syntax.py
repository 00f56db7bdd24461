"""ES|QL text -> commands and expression trees: lexing, parsing and located errors.

Parsing is separate from type checking so that a query is first read whole: a syntax error
anywhere stops start-up, and only a well-formed query is judged for what we cannot run yet
(the first unsupported command or function, in query order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

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


# --- expression tree --------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class Arith:
    """`left op right` for op in + - * / %."""

    op: str
    left: Expr
    right: Expr
    pos: int


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Expr
    pos: int


@dataclass(frozen=True, slots=True)
class Interval:
    """A time span literal such as `10 seconds` or `1 month`; `unit` is canonical (singular)."""

    amount: int
    unit: str
    pos: int


@dataclass(frozen=True, slots=True)
class MvConst:
    """A multi-valued literal such as `[1, 2, 3]`: its values in the order written."""

    values: tuple[Scalar, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Star:
    """`*` as a function argument, as in COUNT(*)."""

    pos: int


Expr = (
    Const
    | FieldRef
    | Call
    | Compare
    | Logical
    | Not
    | IsNull
    | InList
    | Match
    | Arith
    | Neg
    | Interval
    | MvConst
    | Star
)


# --- commands -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NamePattern:
    """A column name or a `*` pattern in KEEP, DROP or RENAME."""

    text: str
    pos: int

    @property
    def wildcard(self) -> bool:
        return "*" in self.text


@dataclass(frozen=True, slots=True)
class From:
    patterns: tuple[str, ...]
    metadata: tuple[NamePattern, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Row:
    assignments: tuple[tuple[str, Expr, int], ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Where:
    condition: Expr
    pos: int


@dataclass(frozen=True, slots=True)
class Eval:
    assignments: tuple[tuple[str, Expr, int], ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Keep:
    patterns: tuple[NamePattern, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Drop:
    patterns: tuple[NamePattern, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Rename:
    pairs: tuple[tuple[NamePattern, NamePattern], ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Grok:
    operand: Expr
    pattern: str
    pattern_pos: int
    pos: int


@dataclass(frozen=True, slots=True)
class Dissect:
    operand: Expr
    pattern: str
    append_separator: str
    pattern_pos: int
    pos: int


@dataclass(frozen=True, slots=True)
class SortKey:
    expr: Expr
    ascending: bool
    nulls_first: bool


@dataclass(frozen=True, slots=True)
class Sort:
    keys: tuple[SortKey, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Limit:
    count: int
    pos: int


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One `name = expression [WHERE filter]` of STATS; the filter applies to every aggregate
    function inside the expression."""

    name: str
    expr: Expr
    filter: Expr | None
    pos: int


@dataclass(frozen=True, slots=True)
class Stats:
    aggregates: tuple[Aggregate, ...]
    groups: tuple[tuple[str, Expr, int], ...]
    pos: int


@dataclass(frozen=True, slots=True)
class MvExpand:
    column: NamePattern
    pos: int


Command = (
    From | Row | Where | Eval | Keep | Drop | Rename | Grok | Dissect | Sort | Limit | Stats
    | MvExpand
)


# --- lexing ---------------------------------------------------------------------------------

_SEGMENT_RE = re.compile(
    r'"""(?:.|\n)*?(?:"""|\Z)|"(?:[^"\\\n]|\\.)*"?|`(?:[^`]|``)*`?'
    r"|//[^\n]*|/\*(?:.|\n)*?(?:\*/|\Z)|[^|\"`/]+|/|\|",
    re.DOTALL,
)
_SPACE = r"\s+|//[^\n]*|/\*.*?\*/"
_NAME_PART = r"(?:[A-Za-z_@][A-Za-z0-9_@]*|`(?:[^`]|``)*`)"
_TOKEN_RE = re.compile(
    rf"(?P<ws>{_SPACE})"
    r'|(?P<tstring>""".*?""")'
    r'|(?P<string>"(?:[^"\\\r\n]|\\.)*")'
    r"|(?P<number>(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)"
    rf"|(?P<name>{_NAME_PART}(?:\.(?:[A-Za-z0-9_@]+|`(?:[^`]|``)*`))*)"
    r"|(?P<op>==|!=|<=|>=|::|<|>|\(|\)|,|-|\+|\*|/|%|=|\[|\])",
    re.DOTALL,
)
_PATTERN_PART = r"(?:[A-Za-z0-9_@*]+|`(?:[^`]|``)*`)"
_PATTERN_TOKEN_RE = re.compile(
    rf"(?P<ws>{_SPACE})|(?P<name>{_PATTERN_PART}(?:\.{_PATTERN_PART})*)|(?P<op>,|=)",
    re.DOTALL,
)
_INDEX_TOKEN_RE = re.compile(
    rf'(?P<ws>{_SPACE})|(?P<string>"(?:[^"\\\r\n]|\\.)*")|(?P<op>,)'
    r"|(?P<name>(?:[^\s,\"/]|/(?![/*]))+)",
    re.DOTALL,
)
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", '"': '"', "\\": "\\"}
_KEYWORDS = frozenset(
    {"AND", "OR", "NOT", "IS", "NULL", "IN", "LIKE", "RLIKE", "TRUE", "FALSE", "AS", "BY"}
)
_SORT_WORDS = frozenset({"ASC", "DESC", "NULLS", "FIRST", "LAST"})
_INDEX_PATTERN_RE = re.compile(r"-?[A-Za-z0-9_.*:+-]+")
_UNITS = {
    "millisecond": "millisecond", "ms": "millisecond",
    "second": "second", "sec": "second", "s": "second",
    "minute": "minute", "min": "minute",
    "hour": "hour", "h": "hour",
    "day": "day", "d": "day",
    "week": "week", "w": "week",
    "month": "month", "mo": "month",
    "quarter": "quarter", "q": "quarter",
    "year": "year", "yr": "year", "y": "year",
}  # fmt: skip
UNSUPPORTED_COMMANDS = frozenset(
    {
        *("CHANGE_POINT", "COMPLETION", "ENRICH", "EXPLAIN", "FORK", "FUSE", "INLINESTATS"),
        *("INLINE", "JOIN", "LOOKUP", "METRICS", "RERANK", "SAMPLE", "SHOW"),
        *("TS", "SET", "INSIST", "URI_PARTS", "REGISTERED_DOMAIN"),
    }
)
UNSUPPORTED_FUNCTIONS = {
    "KQL": "the KQL() function is not supported",
    "QSTR": "the QSTR() function is not supported",
    "MATCH": "the MATCH() function is not supported",
    "MATCH_PHRASE": "the MATCH_PHRASE() function is not supported",
}


@dataclass(frozen=True, slots=True)
class Token:
    kind: Literal["keyword", "name", "string", "number", "op", "eof"]
    text: str
    value: Scalar
    pos: int


def position(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def name_value(raw: str) -> str:
    """The field name a (possibly backquoted, dotted) identifier spells."""
    parts = re.findall(r"`(?:[^`]|``)*`|[^.`]+", raw)
    return ".".join(p[1:-1].replace("``", "`") if p.startswith("`") else p for p in parts)


class Source:
    """The query text plus error reporting at an offset."""

    def __init__(self, text: str) -> None:
        self.text = text

    def error(self, message: str, pos: int) -> EsqlError:
        return EsqlError(message, *position(self.text, pos))

    def unsupported(self, message: str, pos: int) -> UnsupportedEsqlError:
        return UnsupportedEsqlError(message, *position(self.text, pos))

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

    def tokens(self, start: int, end: int, lexer: re.Pattern[str] = _TOKEN_RE) -> list[Token]:
        tokens: list[Token] = []
        pos = start
        while pos < end:
            found = lexer.match(self.text, pos, end)
            if found is None:
                raise self._bad_character(pos)
            kind, raw = found.lastgroup, found.group()
            if kind == "tstring":
                tokens.append(Token("string", raw, raw[3:-3], pos))
            elif kind == "string":
                tokens.append(Token("string", raw, self.unescape(raw, pos), pos))
            elif kind == "number":
                number: int | float = int(raw) if raw.isdigit() else float(raw)
                tokens.append(Token("number", raw, number, pos))
            elif kind == "name":
                if raw.upper() in _KEYWORDS:
                    tokens.append(Token("keyword", raw.upper(), raw.upper(), pos))
                else:
                    tokens.append(Token("name", raw, name_value(raw), pos))
            elif kind == "op":
                tokens.append(Token("op", raw, raw, pos))
            pos = found.end()
        tokens.append(Token("eof", "", None, end))
        return tokens

    def _bad_character(self, pos: int) -> EsqlError:
        char = self.text[pos]
        if char == "{":
            return self.unsupported("map arguments ({...}) are not supported", pos)
        if self.text.startswith("/*", pos):
            return self.error("unterminated /* comment", pos)
        if char == '"':
            return self.error("unterminated string literal", pos)
        if char == "`":
            return self.error("unterminated backquoted name", pos)
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


# --- parsing --------------------------------------------------------------------------------

COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">="})


class Parser:
    """Recursive descent over one command's tokens."""

    def __init__(self, source: Source, tokens: list[Token]) -> None:
        self.source = source
        self.tokens = tokens
        self.index = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def lookahead(self, offset: int) -> Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.current
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def at(self, kind: str, text: str) -> bool:
        return self.current.kind == kind and self.current.text == text

    def at_word(self, word: str) -> bool:
        return self.current.kind in ("name", "keyword") and self.current.text.upper() == word

    def expect(self, kind: str, text: str) -> Token:
        if not self.at(kind, text):
            raise self.unexpected(f"'{text}'")
        return self.advance()

    def unexpected(self, wanted: str) -> EsqlError:
        token = self.current
        found = "end of command" if token.kind == "eof" else repr(token.text)
        if token.kind == "op" and token.text == "=" and wanted.startswith("AND"):
            return self.source.error("'=' is not an operator; compare with '=='", token.pos)
        return self.source.error(f"expected {wanted}, found {found}", token.pos)

    def at_end(self) -> bool:
        return self.current.kind == "eof"

    def end(self, wanted: str) -> None:
        if not self.at_end():
            raise self.unexpected(wanted)

    def condition(self) -> Expr:
        if self.at_end():
            raise self.unexpected("a condition")
        expr = self.disjunction()
        self.end("AND, OR or the end of the command")
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
        left = self.additive()
        token = self.current
        if token.kind == "op" and token.text in COMPARISONS:
            self.advance()
            right = self.additive()
            if self.current.kind == "op" and self.current.text in COMPARISONS:
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
            return self.match(left, negated, token.pos)
        if negated:
            raise self.unexpected("IN, LIKE or RLIKE after NOT")
        return left

    def match(self, left: Expr, negated: bool, pos: int) -> Expr:
        """`x [NOT] LIKE "p"`, or the list form `x LIKE ("p", "q")`: true when any matches."""
        regex = self.advance().text == "RLIKE"
        patterns: list[str] = []
        if self.at("op", "("):
            self.advance()
            patterns.append(self.pattern())
            while self.at("op", ","):
                self.advance()
                patterns.append(self.pattern())
            self.expect("op", ")")
        else:
            patterns.append(self.pattern())
        matches = tuple(Match(left, pattern, regex, negated, pos) for pattern in patterns)
        if len(matches) == 1:
            return matches[0]
        return Logical("AND" if negated else "OR", matches, pos)

    def pattern(self) -> str:
        token = self.current
        if token.kind != "string":
            if token.kind in ("name", "op") and token.text not in (")", ","):
                raise self.source.unsupported(
                    "a LIKE or RLIKE pattern must be a literal", token.pos
                )
            raise self.unexpected("a string pattern")
        self.advance()
        return str(token.value)

    def in_items(self) -> tuple[Expr, ...]:
        self.expect("op", "(")
        items = [self.value_expression()]
        while self.at("op", ","):
            self.advance()
            items.append(self.value_expression())
        self.expect("op", ")")
        return tuple(items)

    def value_expression(self) -> Expr:
        """An arithmetic expression or one comparison of two (ES|QL's valueExpression)."""
        left = self.additive()
        token = self.current
        if token.kind == "op" and token.text in COMPARISONS:
            self.advance()
            return Compare(token.text, left, self.additive(), token.pos)
        return left

    def additive(self) -> Expr:
        left = self.multiplicative()
        while self.current.kind == "op" and self.current.text in ("+", "-"):
            token = self.advance()
            left = Arith(token.text, left, self.multiplicative(), token.pos)
        return left

    def multiplicative(self) -> Expr:
        left = self.unary()
        while self.current.kind == "op" and self.current.text in ("*", "/", "%"):
            token = self.advance()
            left = Arith(token.text, left, self.unary(), token.pos)
        return left

    def unary(self) -> Expr:
        token = self.current
        if token.kind == "op" and token.text in ("-", "+"):
            self.advance()
            if token.text == "+":
                return self.unary()
            if self.current.kind == "number" and not self._unit_follows(1):
                number = self.advance().value
                assert isinstance(number, int | float)
                return self.cast(Const(-number, token.pos))
            return Neg(self.unary(), token.pos)
        return self.cast(self.primary())

    def cast(self, expr: Expr) -> Expr:
        while self.at("op", "::"):
            self.advance()
            target = self.current
            if target.kind not in ("name", "keyword"):
                raise self.unexpected("a type name")
            self.advance()
            expr = Call("::" + target.text.lower(), (expr,), target.pos)
        return expr

    def _unit_follows(self, offset: int) -> bool:
        token = self.lookahead(offset)
        return token.kind == "name" and _unit(token.text) is not None

    def primary(self) -> Expr:
        token = self.current
        if token.kind == "op" and token.text == "(":
            self.advance()
            expr = self.disjunction()
            self.expect("op", ")")
            return expr
        if token.kind == "number":
            self.advance()
            unit = _unit(self.current.text) if self.current.kind == "name" else None
            if unit is not None:
                self.advance()
                if not isinstance(token.value, int):
                    raise self.source.error("a time span needs a whole number", token.pos)
                return Interval(token.value, unit, token.pos)
            return Const(token.value, token.pos)
        if token.kind == "string":
            self.advance()
            return Const(token.value, token.pos)
        if token.kind == "keyword" and token.text in ("TRUE", "FALSE", "NULL"):
            self.advance()
            return Const({"TRUE": True, "FALSE": False, "NULL": None}[token.text], token.pos)
        if token.kind == "op" and token.text == "[":
            return self.mv_literal()
        if token.kind == "name":
            self.advance()
            if self.at("op", "("):
                return self.call(token)
            return FieldRef(str(token.value), token.pos)
        raise self.unexpected("a field, literal, function or '('")

    def mv_literal(self) -> MvConst:
        start = self.advance().pos
        values: list[Scalar] = []
        while True:
            item = self.unary()
            if not isinstance(item, Const) or item.value is None:
                raise self.source.error("a multi-valued literal holds constants", item.pos)
            values.append(item.value)
            if not self.at("op", ","):
                break
            self.advance()
        self.expect("op", "]")
        kinds = {type(value) for value in values}
        if len(kinds) > 1 and not kinds <= {int, float}:
            raise self.source.error("the values of a multi-valued literal share one type", start)
        return MvConst(tuple(values), start)

    def call(self, name: Token) -> Call:
        self.advance()
        upper = name.text.upper()
        if upper in UNSUPPORTED_FUNCTIONS:
            raise self.source.unsupported(UNSUPPORTED_FUNCTIONS[upper], name.pos)
        args: list[Expr] = []
        if self.at("op", "*") and self.lookahead(1).text == ")":
            args.append(Star(self.advance().pos))
        elif not self.at("op", ")"):
            args.append(self.disjunction())
            while self.at("op", ","):
                self.advance()
                args.append(self.disjunction())
        self.expect("op", ")")
        return Call(upper, tuple(args), name.pos)

    # command bodies

    def assignments(self, allow_bare: bool) -> tuple[tuple[str, Expr, int], ...]:
        """`name = expr, ...`; a bare expression is named by its text (EVAL and STATS)."""
        return tuple((a.name, a.expr, a.pos) for a in self.filtered_assignments(allow_bare, False))

    def filtered_assignments(self, allow_bare: bool, filtered: bool) -> tuple[Aggregate, ...]:
        """Assignments that, with `filtered`, may each end in `WHERE condition` (STATS)."""
        out: list[Aggregate] = []
        while True:
            token = self.current
            if (
                token.kind == "name"
                and self.lookahead(1).kind == "op"
                and (self.lookahead(1).text == "=")
            ):
                self.advance()
                self.advance()
                name, expr, pos = str(token.value), self.disjunction(), token.pos
            elif allow_bare:
                pos = token.pos
                expr = self.disjunction()
                name = _strip_comments(self.source.text[pos : self.current.pos].strip())
            else:
                raise self.unexpected("'name = value'")
            condition: Expr | None = None
            if filtered and self.at_word("WHERE"):
                self.advance()
                condition = self.disjunction()
            out.append(Aggregate(name, expr, condition, pos))
            if not self.at("op", ","):
                return tuple(out)
            self.advance()


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.DOTALL).strip()


def _unit(word: str) -> str | None:
    lowered = word.lower()
    if lowered in _UNITS:
        return _UNITS[lowered]
    if lowered.endswith("s") and lowered[:-1] in _UNITS and len(lowered) > 2:
        return _UNITS[lowered[:-1]]
    return None


_LEADING_SPACE_RE = re.compile(rf"(?:{_SPACE})*", re.DOTALL)
_WORD_RE = re.compile(r"[A-Za-z_]+")


def _command(source: Source, start: int, end: int) -> tuple[str, int, int]:
    """The command keyword of a segment (upper case), its offset and where its body starts."""
    leading = _LEADING_SPACE_RE.match(source.text, start, end)
    pos = leading.end() if leading else start
    if pos == end:
        raise source.error("expected a command", end)
    word = _WORD_RE.match(source.text, pos, end)
    if word is None:
        raise source.error(f"expected a command, found {source.text[pos]!r}", pos)
    return word.group().upper(), pos, word.end()


def _name_list(source: Source, start: int, end: int, what: str) -> list[NamePattern]:
    tokens = source.tokens(start, end, _PATTERN_TOKEN_RE)
    items: list[NamePattern] = []
    expect_item = True
    for token in tokens:
        if token.kind == "eof":
            break
        if token.kind == "op":
            if expect_item:
                raise source.error(f"expected a {what} before {token.text!r}", token.pos)
            expect_item = True
            continue
        if not expect_item:
            raise source.error(f"expected ',' before {token.text!r}", token.pos)
        items.append(NamePattern(name_value(token.text), token.pos))
        expect_item = False
    if expect_item:
        raise source.error(f"expected a {what}", tokens[-1].pos)
    return items


def _from(source: Source, pos: int, start: int, end: int) -> From:
    tokens = source.tokens(start, end, _INDEX_TOKEN_RE)
    patterns: list[str] = []
    expect_item = True
    index = 0
    metadata: list[NamePattern] = []
    while tokens[index].kind != "eof":
        token = tokens[index]
        index += 1
        if token.kind == "op":
            if expect_item:
                raise source.error("expected a name before ','", token.pos)
            expect_item = True
            continue
        if not expect_item:
            if token.text.upper() == "METADATA":
                rest = tokens[index].pos if tokens[index].kind != "eof" else end
                metadata = _name_list(source, rest, end, "metadata field")
                break
            raise source.error(f"expected ',' before {token.text!r}", token.pos)
        text = source.unescape(token.text, token.pos) if token.kind == "string" else token.text
        if not _INDEX_PATTERN_RE.fullmatch(text):
            raise source.error(f"invalid index pattern {token.text!r}", token.pos)
        patterns.append(text)
        expect_item = False
    if expect_item:
        raise source.error("expected a name", tokens[index].pos)
    for field in metadata:
        if field.text not in ("_id", "_index", "_version", "_score", "_ignored", "_source"):
            raise source.error(f"unknown metadata field '{field.text}'", field.pos)
    return From(tuple(patterns), tuple(metadata), pos)


def _rename(source: Source, pos: int, start: int, end: int) -> Rename:
    tokens = source.tokens(start, end, _PATTERN_TOKEN_RE)
    pairs: list[tuple[NamePattern, NamePattern]] = []
    index = 0

    def name_at(i: int) -> NamePattern:
        token = tokens[i]
        if token.kind not in ("name", "keyword"):
            found = "end of command" if token.kind == "eof" else repr(token.text)
            raise source.error(f"expected a column name, found {found}", token.pos)
        return NamePattern(name_value(token.text), token.pos)

    while True:
        first = name_at(index)
        middle = tokens[index + 1]
        if middle.kind == "keyword" and middle.text == "AS":
            pairs.append((first, name_at(index + 2)))
        elif middle.kind == "op" and middle.text == "=":
            pairs.append((name_at(index + 2), first))
        else:
            found = "end of command" if middle.kind == "eof" else repr(middle.text)
            raise source.error(f"expected AS, found {found}", middle.pos)
        index += 3
        if tokens[index].kind == "eof":
            return Rename(tuple(pairs), pos)
        if not (tokens[index].kind == "op" and tokens[index].text == ","):
            raise source.error(f"expected ',' before {tokens[index].text!r}", tokens[index].pos)
        index += 1


def _sort(parser: Parser, pos: int) -> Sort:
    keys: list[SortKey] = []
    while True:
        expr = parser.additive()
        ascending = True
        if parser.at_word("ASC") or parser.at_word("DESC"):
            ascending = parser.advance().text.upper() == "ASC"
        nulls_first = not ascending
        if parser.at_word("NULLS"):
            parser.advance()
            if not (parser.at_word("FIRST") or parser.at_word("LAST")):
                raise parser.unexpected("FIRST or LAST")
            nulls_first = parser.advance().text.upper() == "FIRST"
        keys.append(SortKey(expr, ascending, nulls_first))
        if not parser.at("op", ","):
            parser.end("',' or the end of the command")
            return Sort(tuple(keys), pos)
        parser.advance()


def _pattern_command(parser: Parser) -> tuple[Expr, str, int]:
    operand = parser.additive()
    token = parser.current
    if token.kind != "string":
        raise parser.unexpected("a pattern string")
    parser.advance()
    return operand, str(token.value), token.pos


def _dissect(parser: Parser, pos: int) -> Dissect:
    operand, pattern, pattern_pos = _pattern_command(parser)
    separator = ""
    if parser.at_word("APPEND_SEPARATOR"):
        parser.advance()
        parser.expect("op", "=")
        token = parser.current
        if token.kind != "string":
            raise parser.unexpected("a string")
        separator = str(parser.advance().value)
    parser.end("APPEND_SEPARATOR or the end of the command")
    return Dissect(operand, pattern, separator, pattern_pos, pos)


def _stats(parser: Parser, pos: int) -> Stats:
    aggregates: tuple[Aggregate, ...] = ()
    groups: tuple[tuple[str, Expr, int], ...] = ()
    if not parser.at_end() and not parser.at("keyword", "BY"):
        aggregates = parser.filtered_assignments(allow_bare=True, filtered=True)
    if parser.at("keyword", "BY"):
        parser.advance()
        groups = parser.assignments(allow_bare=True)
    parser.end("',', BY or the end of the command")
    if not aggregates and not groups:
        raise parser.source.error("STATS needs an aggregate or a BY clause", pos)
    return Stats(aggregates, groups, pos)


ALERT_INDEX_RE = re.compile(r"\.(?:internal\.)?alerts-.*")
"""Kibana's alert indices (`.alerts-security.alerts-*` and their aliases)."""


def parse(query: str) -> tuple[Source, list[Command]]:
    """Every command of the query; raises EsqlError (UnsupportedEsqlError for valid ES|QL we do
    not run) at the first problem, syntax errors anywhere taking precedence."""
    source = Source(query)
    commands: list[Command] = []
    unsupported: UnsupportedEsqlError | None = None
    for number, (start, end) in enumerate(source.segments()):
        name, pos, body = _command(source, start, end)
        try:
            command = _parse_command(source, name, pos, body, end, first=number == 0)
        except UnsupportedEsqlError as problem:
            unsupported = unsupported or problem
            continue
        if isinstance(command, From) and all(map(ALERT_INDEX_RE.fullmatch, command.patterns)):
            unsupported = unsupported or source.unsupported(
                f"FROM {', '.join(command.patterns)} reads Kibana's alerts, not CloudTrail events",
                pos,
            )
        commands.append(command)
    if unsupported is not None:
        raise unsupported
    return source, commands


def _parse_command(  # noqa: PLR0917 - one command's span and place in the query
    source: Source, name: str, pos: int, body: int, end: int, first: bool
) -> Command:
    if first:
        if name == "FROM":
            return _from(source, pos, body, end)
        if name == "ROW":
            parser = Parser(source, source.tokens(body, end))
            row = Row(parser.assignments(allow_bare=True), pos)
            parser.end("',' or the end of the command")
            return row
        if name in ("SHOW", "TS", "METRICS", "EXPLAIN", "SET"):
            raise source.unsupported(f"unsupported source command {name}", pos)
        raise source.error(f"a query starts with FROM, found {name}", pos)
    if name in ("KEEP", "DROP"):
        patterns = tuple(_name_list(source, body, end, "field name or pattern"))
        return Keep(patterns, pos) if name == "KEEP" else Drop(patterns, pos)
    if name == "RENAME":
        return _rename(source, pos, body, end)
    if name == "MV_EXPAND":
        columns = _name_list(source, body, end, "column name")
        if len(columns) > 1 or columns[0].wildcard:
            raise source.error("MV_EXPAND takes one column name", columns[-1].pos)
        return MvExpand(columns[0], pos)
    parser = Parser(source, source.tokens(body, end))
    if name == "WHERE":
        return Where(parser.condition(), pos)
    if name == "EVAL":
        if parser.at_end():
            raise parser.unexpected("an expression")
        evaluation = Eval(parser.assignments(allow_bare=True), pos)
        parser.end("',' or the end of the command")
        return evaluation
    if name == "GROK":
        operand, pattern, pattern_pos = _pattern_command(parser)
        if parser.at("op", ","):
            raise source.unsupported("GROK with several patterns is not supported", pos)
        parser.end("the end of the command")
        return Grok(operand, pattern, pattern_pos, pos)
    if name == "DISSECT":
        return _dissect(parser, pos)
    if name == "SORT":
        return _sort(parser, pos)
    if name == "LIMIT":
        token = parser.current
        if token.kind != "number" or not isinstance(token.value, int):
            raise parser.unexpected("a whole number")
        parser.advance()
        parser.end("the end of the command")
        return Limit(token.value, pos)
    if name == "STATS":
        return _stats(parser, pos)
    if name in UNSUPPORTED_COMMANDS or name in ("FROM", "ROW"):
        raise source.unsupported(f"unsupported command {name}", pos)
    raise source.error(f"unknown command {name}", pos)
