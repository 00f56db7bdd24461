"""Typed ES|QL expressions -> closures over a row context.

Each column is read through a `Column.fetch(ctx)`; `ctx` is whatever the pipeline stage works
on (the CloudTrail record itself for the leading WHERE commands, a row frame later on).
Semantics follow ES|QL (three-valued logic, WHERE keeps a row only when its condition is true):
- a comparison or arithmetic is null when either side is null or multi-valued (ES|QL also adds
  a warning header for the multi-valued case; a stream has no response to attach it to);
- integer and long arithmetic that overflows, and division or modulo by zero, are null;
- `x IN (...)` is true on a match, else null when x is null or multi-valued or the list holds a
  null, else false; multi-valued list items never match;
- LIKE (`*`, `?`, `\\` escapes) and RLIKE must match the whole value, case sensitively;
- string functions of null or multi-valued input are null, except TO_LOWER and TO_UPPER which
  map each value (ES|QL 9.1+); conversion functions map each value; COALESCE returns its first
  non-null argument as it is.

Each boolean node compiles into two closures, "is true" and "is false", so evaluation is plain
two-valued Python that still gives exact Kleene results and stops at the first conjunct that is
not true.
"""

from __future__ import annotations

import base64
import binascii
import math
import operator
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consumer.rules import patterns
from consumer.rules.esql.syntax import (
    Arith,
    Call,
    Compare,
    Const,
    EsqlError,
    Expr,
    FieldRef,
    InList,
    Interval,
    IsNull,
    Logical,
    Match,
    MvConst,
    Neg,
    Not,
    Source,
    Star,
    UnsupportedEsqlError,
)
from consumer.rules.esql.values import (
    INT_RANGE,
    INTEGRAL_TYPES,
    NUMERIC_TYPES,
    ORDERABLE_TYPES,
    STRING_TYPES,
    add_months,
    date_key,
    date_key_exact,
    from_millis,
    ip_key,
    to_text,
)

ValueFn = Callable[[Any], Any]
Predicate = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class Column:
    """What a column name means where an expression is compiled."""

    type: str
    fetch: ValueFn
    extract: Callable[[Any], Any] | None = None
    """The source field's raw extractor, when `ctx` is the source record (the fast path)."""


@dataclass(frozen=True, slots=True)
class Span:
    """A time span constant: calendar months plus fixed milliseconds."""

    months: int
    millis: int
    kind: str  # "date_period" or "time_duration"


_UNIT_MILLIS = {"millisecond": 1, "second": 1000, "minute": 60_000, "hour": 3_600_000}
_PERIOD_MONTHS = {"month": 1, "quarter": 3, "year": 12}
_PERIOD_DAYS = {"day": 1, "week": 7}


def span_of(node: Interval) -> Span:
    if node.unit in _UNIT_MILLIS:
        return Span(0, node.amount * _UNIT_MILLIS[node.unit], "time_duration")
    if node.unit in _PERIOD_DAYS:
        return Span(0, node.amount * _PERIOD_DAYS[node.unit] * 86_400_000, "date_period")
    return Span(node.amount * _PERIOD_MONTHS[node.unit], 0, "date_period")


def single(value: Any) -> Any:
    """Elasticsearch's view of a list: empty is null, one element is that value."""
    if value.__class__ is list:
        if not value:
            return None
        if len(value) == 1:
            return value[0]
    return value


def constant(value: Any) -> ValueFn:
    return lambda _ctx: value


def never(_ctx: Any) -> bool:
    return False


def all_true(tests: tuple[Predicate, ...]) -> Predicate:
    """Nested pairs rather than a loop: a row failing the first test costs one extra call."""
    first, rest = tests[0], tests[1:]
    if not rest:
        return first
    second = all_true(rest)
    return lambda ctx: first(ctx) and second(ctx)


def any_true(tests: tuple[Predicate, ...]) -> Predicate:
    first, rest = tests[0], tests[1:]
    if not rest:
        return first
    second = any_true(rest)
    return lambda ctx: first(ctx) or second(ctx)


def three_valued(is_true: Predicate, is_false: Predicate) -> ValueFn:
    def value(ctx: Any) -> bool | None:
        if is_true(ctx):
            return True
        return False if is_false(ctx) else None

    return value


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


def string_matcher(pattern: str, regex: bool) -> Callable[[str], bool]:
    """LIKE/RLIKE as a whole-value test (Lucene syntax, bounded cost); raises ValueError
    (PatternError) for an invalid pattern."""
    return patterns.rlike(pattern) if regex else patterns.like(pattern)


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


def _bool_literal(value: object) -> bool | None:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


_LITERAL_KEYS: Mapping[str, Callable[[object], Any]] = {
    "ip": ip_key,
    "date": date_key,
    "boolean": _bool_literal,
}
"""String literals ES|QL casts implicitly where the other operand has one of these types."""


def _family(kind: str) -> str:
    if kind in STRING_TYPES:
        return "string"
    if kind in NUMERIC_TYPES:
        return "numeric"
    return kind


def _common_numeric(left: str, right: str) -> str:
    if "double" in (left, right):
        return "double"
    if "long" in (left, right):
        return "long"
    return "integer"


class ExprCompiler:
    """Type-checks expressions and turns them into closures."""

    def __init__(self, source: Source, resolve: Callable[[FieldRef], Column]) -> None:
        self.source = source
        self.resolve = resolve

    def error(self, message: str, node: Expr) -> EsqlError:
        return self.source.error(message, node.pos)

    def unsupported(self, message: str, node: Expr) -> UnsupportedEsqlError:
        return self.source.unsupported(message, node.pos)

    def describe(self, node: Expr, kind: str) -> str:
        if isinstance(node, FieldRef):
            return f"field '{node.name}' ({kind})"
        if isinstance(node, Const):
            return f"{node.value!r} ({kind})"
        return f"an expression of type {kind}"

    # values

    def value(self, node: Expr) -> tuple[str, ValueFn]:
        if isinstance(node, Const):
            kind = self.const_type(node)
            low, high = INT_RANGE["long"]
            if isinstance(node.value, int) and not low <= node.value <= high:
                raise self.unsupported("unsigned_long values are not supported", node)
            return kind, constant(node.value)
        if isinstance(node, FieldRef):
            column = self.resolve(node)
            return column.type, column.fetch
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Arith):
            return self.arith(node)
        if isinstance(node, Neg):
            return self.negate(node)
        if isinstance(node, Interval):
            span = span_of(node)
            return span.kind, constant(span)
        if isinstance(node, MvConst):
            kinds = {self.const_type(Const(value, node.pos)) for value in node.values}
            low, high = INT_RANGE["long"]
            if any(isinstance(v, int) and not low <= v <= high for v in node.values):
                raise self.unsupported("unsigned_long values are not supported", node)
            kind = kinds.pop() if len(kinds) == 1 else "double" if "double" in kinds else "long"
            values = [
                float(v) if kind == "double" and isinstance(v, int | float) else v
                for v in node.values
            ]
            return kind, constant(single(values))
        if isinstance(node, Star):
            raise self.error("'*' is only an argument of COUNT", node)
        is_true, is_false = self.truth(node)
        return "boolean", three_valued(is_true, is_false)

    @staticmethod
    def const_type(node: Const) -> str:
        value = node.value
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "boolean"
        if isinstance(value, int):
            low, high = INT_RANGE["integer"]
            return "integer" if low <= value <= high else "long"
        if isinstance(value, float):
            return "double"
        return "keyword"

    def string_argument(self, name: str, node: Expr) -> ValueFn:
        kind, fetch = self.value(node)
        if kind not in STRING_TYPES and kind != "null":
            raise self.error(f"{name} needs a string, found {self.describe(node, kind)}", node)
        return fetch

    def arity(self, node: Call, low: int, high: int | None = None) -> None:
        count = len(node.args)
        high = low if high is None else high
        if low <= count <= high:
            return
        wanted = str(low) if low == high else f"{low} to {high}"
        plural = "s" * (high > 1)
        raise self.error(f"{node.name} takes {wanted} argument{plural}, got {count}", node)

    def call(self, node: Call) -> tuple[str, ValueFn]:
        handler = _FUNCTIONS.get(node.name)
        if handler is None:
            if node.name.startswith("::"):
                raise self.unsupported(f"cast to {node.name[2:]} is not supported", node)
            raise self.unsupported(f"function {node.name} is not supported", node)
        return handler(self, node)

    def operand(self, node: Expr, other_kind: str) -> tuple[str, ValueFn]:
        """An operand, casting a string literal to the other side's ip or date type."""
        kind, fetch = self.value(node)
        key = _LITERAL_KEYS.get(other_kind)
        if isinstance(node, Const) and kind == "keyword" and key is not None:
            converted = key(node.value)
            if converted is None:
                raise self.error(f"{node.value!r} is not a valid {other_kind} literal", node)
            return other_kind, constant(converted)
        return kind, fetch

    def check_comparable(self, node: Expr, op: str, sides: tuple[tuple[Expr, str], ...]) -> None:
        (left, left_kind), (right, right_kind) = sides
        if "null" in (left_kind, right_kind):
            return
        if _family(left_kind) != _family(right_kind):
            raise self.error(
                f"cannot compare {self.describe(left, left_kind)} with "
                f"{self.describe(right, right_kind)}",
                node,
            )
        if op not in ("==", "!=") and left_kind not in ORDERABLE_TYPES:
            raise self.error(f"'{op}' does not apply to {left_kind} values", node)

    def arith(self, node: Arith) -> tuple[str, ValueFn]:
        spans = ("date_period", "time_duration")
        left_kind, left = self.value(node.left)
        right_kind, right = self.value(node.right)
        if right_kind in spans:
            left_kind, left = self.operand(node.left, "date")
        if left_kind in spans:
            right_kind, right = self.operand(node.right, "date")
        if "null" in (left_kind, right_kind):
            return "null", constant(None)
        if node.op in "+-" and left_kind in spans and right_kind == left_kind:
            first, second = left(None), right(None)
            sign = -1 if node.op == "-" else 1
            total = Span(
                first.months + sign * second.months, first.millis + sign * second.millis, left_kind
            )
            return left_kind, constant(total)
        if node.op in "+-" and left_kind == "date" and right_kind in spans:
            return "date", _date_shift(left, right, node.op == "-")
        if node.op == "+" and left_kind in spans and right_kind == "date":
            return "date", _date_shift(right, left, False)
        if left_kind not in NUMERIC_TYPES or right_kind not in NUMERIC_TYPES:
            raise self.error(
                f"'{node.op}' does not apply to {self.describe(node.left, left_kind)} and "
                f"{self.describe(node.right, right_kind)}",
                node,
            )
        kind = _common_numeric(left_kind, right_kind)
        return kind, _numeric(left, right, _ARITH[kind][node.op], kind)

    def negate(self, node: Neg) -> tuple[str, ValueFn]:
        kind, fetch = self.value(node.operand)
        if kind == "null":
            return kind, fetch
        if kind in ("date_period", "time_duration"):
            span = fetch(None)
            return kind, constant(Span(-span.months, -span.millis, kind))
        if kind not in NUMERIC_TYPES:
            raise self.error(f"'-' does not apply to {self.describe(node.operand, kind)}", node)
        return kind, _numeric(constant(0), fetch, _ARITH[kind]["-"], kind)

    # conditions

    def truth(self, node: Expr) -> tuple[Predicate, Predicate]:
        """Closures telling whether the condition is true, and whether it is false."""
        if isinstance(node, Logical):
            parts = [self.truth(operand) for operand in node.operands]
            trues = tuple(part[0] for part in parts)
            falses = tuple(part[1] for part in parts)
            if node.op == "AND":
                return all_true(trues), any_true(falses)
            return any_true(trues), all_true(falses)
        if isinstance(node, Not):
            is_true, is_false = self.truth(node.operand)
            return is_false, is_true
        if isinstance(node, Compare):
            return self.compare(node)
        if isinstance(node, IsNull):
            fetch = self.value(node.operand)[1]
            null: Predicate = lambda ctx: fetch(ctx) is None  # noqa: E731
            present: Predicate = lambda ctx: fetch(ctx) is not None  # noqa: E731
            return (present, null) if node.negated else (null, present)
        if isinstance(node, InList):
            is_true, is_false = self.in_list(node)
            return (is_false, is_true) if node.negated else (is_true, is_false)
        if isinstance(node, Match):
            is_true, is_false = self.match(node)
            return (is_false, is_true) if node.negated else (is_true, is_false)
        kind, fetch = self.value(node)
        if kind == "null":
            return never, never
        if kind != "boolean":
            raise self.error(f"expected a condition, found {self.describe(node, kind)}", node)
        return (lambda ctx: fetch(ctx) is True), (lambda ctx: fetch(ctx) is False)

    def compare(self, node: Compare) -> tuple[Predicate, Predicate]:
        left, right, op = node.left, node.right, node.op
        if isinstance(left, Const) and not isinstance(right, Const):
            left, right, op = right, left, _MIRRORED[op]
        left_kind, _ = self.value(left)
        right_kind, right_fetch = self.operand(right, left_kind)
        left_kind, left_fetch = self.operand(left, right_kind)
        self.check_comparable(node, op, ((left, left_kind), (right, right_kind)))
        if "null" in (left_kind, right_kind):
            return never, never
        if isinstance(right, Const):
            value = right_fetch(None)
            if isinstance(left, FieldRef):
                extract = self.resolve(left).extract
                if extract is not None and left_kind in STRING_TYPES:
                    return _field_against_constant(extract, op, value)
            return _against_constant(left_fetch, op, value)
        is_true = _between(left_fetch, right_fetch, op)
        return is_true, _between(left_fetch, right_fetch, _NEGATED[op])

    def in_list(self, node: InList) -> tuple[Predicate, Predicate]:
        kind, fetch = self.value(node.operand)
        items: list[tuple[str, ValueFn]] = []
        for item in node.items:
            item_kind, item_fetch = self.operand(item, kind)
            self.check_comparable(node, "==", ((node.operand, kind), (item, item_kind)))
            items.append((item_kind, item_fetch))
        if kind == "null":
            return never, never
        if all(isinstance(item, Const) for item in node.items):
            values = [item_fetch(None) for _, item_fetch in items]
            present = frozenset(value for value in values if value is not None)
            return _in_constants(fetch, present, None in values)
        tri = _in_expressions(fetch, tuple(item_fetch for _, item_fetch in items))
        return (lambda ctx: tri(ctx) is True), (lambda ctx: tri(ctx) is False)

    def match(self, node: Match) -> tuple[Predicate, Predicate]:
        kind, fetch = self.value(node.operand)
        verb = "RLIKE" if node.regex else "LIKE"
        if kind == "null":
            return never, never
        if kind not in STRING_TYPES:
            found = self.describe(node.operand, kind)
            raise self.error(f"{verb} needs a string, found {found}", node)
        if _matches_all(node):  # Elasticsearch rewrites these to IS NOT NULL
            return (lambda ctx: fetch(ctx) is not None), (lambda ctx: fetch(ctx) is None)
        try:
            matcher = string_matcher(node.pattern, node.regex)
        except patterns.UnsupportedPatternError as problem:
            raise self.unsupported(f"{verb} pattern: {problem}", node) from None
        except ValueError as problem:
            raise self.error(f"invalid {verb} pattern: {problem}", node) from None

        def is_true(ctx: Any) -> bool:
            value = fetch(ctx)
            return value.__class__ is str and matcher(value)

        def is_false(ctx: Any) -> bool:
            value = fetch(ctx)
            return value.__class__ is str and not matcher(value)

        return is_true, is_false


def _matches_all(node: Match) -> bool:
    if node.regex:
        return node.pattern == ".*"
    return bool(node.pattern) and set(node.pattern) == {"*"}


# --- evaluation helpers ---------------------------------------------------------------------


def _field_against_constant(
    extract: Callable[[Any], Any], op: str, value: Any
) -> tuple[Predicate, Predicate]:
    """`field op literal` reading the extractor directly: the hot path of most rules."""
    if op in ("==", "!="):

        def equal(ctx: Any) -> bool:
            found = extract(ctx)
            if found == value:
                return True
            return found.__class__ is list and len(found) == 1 and found[0] == value

        def unequal(ctx: Any) -> bool:
            found = extract(ctx)
            if found.__class__ is list:
                found = single(found)
                if found.__class__ is list:
                    return False
            return found is not None and found != value

        return (equal, unequal) if op == "==" else (unequal, equal)
    return _against_constant(lambda ctx: single(extract(ctx)), op, value)


def _against_constant(fetch: ValueFn, op: str, value: Any) -> tuple[Predicate, Predicate]:
    holds, fails = _OPERATORS[op], _OPERATORS[_NEGATED[op]]

    def is_true(ctx: Any) -> bool:
        found = fetch(ctx)
        return found is not None and found.__class__ is not list and holds(found, value)

    def is_false(ctx: Any) -> bool:
        found = fetch(ctx)
        return found is not None and found.__class__ is not list and fails(found, value)

    return is_true, is_false


def _between(left: ValueFn, right: ValueFn, op: str) -> Predicate:
    holds = _OPERATORS[op]

    def compare(ctx: Any) -> bool:
        a = left(ctx)
        if a is None or a.__class__ is list:
            return False
        b = right(ctx)
        if b is None or b.__class__ is list:
            return False
        return holds(a, b)

    return compare


def _in_constants(
    fetch: ValueFn, values: frozenset[Any], list_has_null: bool
) -> tuple[Predicate, Predicate]:
    def is_true(ctx: Any) -> bool:
        value = fetch(ctx)
        return value.__class__ is not list and value in values

    if list_has_null:
        return is_true, never

    def is_false(ctx: Any) -> bool:
        value = fetch(ctx)
        return value is not None and value.__class__ is not list and value not in values

    return is_true, is_false


def _in_expressions(fetch: ValueFn, items: tuple[ValueFn, ...]) -> ValueFn:
    """ES|QL's IN decision tree for list items that are not all literals."""

    def evaluate(ctx: Any) -> bool | None:
        value = fetch(ctx)
        if value is None or value.__class__ is list:
            return None
        saw_null = False
        saw_single = False
        for item in items:
            candidate = item(ctx)
            if candidate is None:
                saw_null = True
            elif candidate.__class__ is not list:
                saw_single = True
                if candidate == value:
                    return True
        return None if saw_null or not saw_single else False

    return evaluate


def _checked(kind: str) -> Callable[[int], int | None]:
    low, high = INT_RANGE[kind]
    return lambda value: value if low <= value <= high else None


def _int_div(a: int, b: int) -> int | None:
    if b == 0:
        return None
    quotient = abs(a) // abs(b)
    return quotient if (a >= 0) == (b >= 0) else -quotient


def _int_mod(a: int, b: int) -> int | None:
    if b == 0:
        return None
    remainder = abs(a) % abs(b)
    return remainder if a >= 0 else -remainder


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _float_div(a: float, b: float) -> float | None:
    return None if b == 0 else _finite(a / b)


def _float_mod(a: float, b: float) -> float | None:
    return None if b == 0 else _finite(math.fmod(a, b))


def _integral_ops(kind: str) -> dict[str, Callable[[Any, Any], Any]]:
    check = _checked(kind)

    def div(a: int, b: int) -> int | None:
        result = _int_div(a, b)
        return None if result is None else check(result)

    return {
        "+": lambda a, b: check(a + b),
        "-": lambda a, b: check(a - b),
        "*": lambda a, b: check(a * b),
        "/": div,
        "%": _int_mod,
    }


_ARITH: Mapping[str, Mapping[str, Callable[[Any, Any], Any]]] = {
    "integer": _integral_ops("integer"),
    "long": _integral_ops("long"),
    "double": {
        "+": lambda a, b: _finite(float(a) + b),
        "-": lambda a, b: _finite(float(a) - b),
        "*": lambda a, b: _finite(float(a) * b),
        "/": lambda a, b: _float_div(float(a), float(b)),
        "%": lambda a, b: _float_mod(float(a), float(b)),
    },
}


def _numeric(left: ValueFn, right: ValueFn, op: Callable[[Any, Any], Any], kind: str) -> ValueFn:
    def evaluate(ctx: Any) -> Any:
        a = left(ctx)
        if a is None or a.__class__ is list:
            return None
        b = right(ctx)
        if b is None or b.__class__ is list:
            return None
        return op(a, b)

    return evaluate


_DATE_RANGE = (-62_135_596_800_000, 253_402_300_799_999)
"""Years 1 to 9999: what we can print; a date outside is null, as an overflow is in ES|QL."""


def _shift(millis: int, span: Span, backwards: bool) -> int | None:
    sign = -1 if backwards else 1
    if not _DATE_RANGE[0] <= millis <= _DATE_RANGE[1]:
        return None
    try:
        if span.months:
            millis = add_months(millis, sign * span.months)
    except (OverflowError, ValueError):
        return None
    millis += sign * span.millis
    return millis if _DATE_RANGE[0] <= millis <= _DATE_RANGE[1] else None


def _date_shift(date: ValueFn, span_fetch: ValueFn, backwards: bool) -> ValueFn:
    span = span_fetch(None)

    def evaluate(ctx: Any) -> int | None:
        millis = date(ctx)
        if millis is None or millis.__class__ is list:
            return None
        return _shift(millis, span, backwards)

    return evaluate


# --- functions ------------------------------------------------------------------------------

Handler = Callable[[ExprCompiler, Call], tuple[str, ValueFn]]


def _single_valued(fetch: ValueFn, change: Callable[[Any], Any]) -> ValueFn:
    def evaluate(ctx: Any) -> Any:
        value = fetch(ctx)
        if value is None or value.__class__ is list:
            return None
        return change(value)

    return evaluate


def _each_value(fetch: ValueFn, change: Callable[[Any], Any]) -> ValueFn:
    """A conversion: applied to every value; values that do not convert are dropped."""

    def evaluate(ctx: Any) -> Any:
        value = fetch(ctx)
        if value is None:
            return None
        if value.__class__ is list:
            converted = [change(item) for item in value]
            return single([item for item in converted if item is not None])
        return change(value)

    return evaluate


def _case_change(change: Callable[[str], str]) -> Handler:
    def handler(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
        compiler.arity(node, 1)
        kind, fetch = compiler.value(node.args[0])
        if kind not in STRING_TYPES and kind != "null":
            arg = node.args[0]
            raise compiler.error(
                f"{node.name} needs a string, found {compiler.describe(arg, kind)}", node
            )
        return ("keyword" if kind == "null" else kind), _each_value(fetch, change)

    return handler


def _length(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    compiler.arity(node, 1)
    return "integer", _single_valued(compiler.string_argument(node.name, node.args[0]), len)


def _affix(test: Callable[[str, str], bool]) -> Handler:
    def handler(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
        compiler.arity(node, 2)
        value = compiler.string_argument(node.name, node.args[0])
        part = compiler.string_argument(node.name, node.args[1])

        def evaluate(ctx: Any) -> bool | None:
            text = value(ctx)
            if text.__class__ is not str:
                return None
            affix = part(ctx)
            return test(text, affix) if affix.__class__ is str else None

        return "boolean", evaluate

    return handler


def _unify(compiler: ExprCompiler, node: Call, kinds: list[tuple[Expr, str]]) -> str:
    result = "null"
    for arg, kind in kinds:
        if kind == "null":
            continue
        if result == "null":
            result = kind
        elif _family(kind) != _family(result):
            raise compiler.error(
                f"{node.name} arguments must share one type: {result} and "
                f"{compiler.describe(arg, kind)}",
                arg,
            )
        elif kind != result:
            if result in STRING_TYPES:
                result = "keyword" if "keyword" in (kind, result) else result
            else:
                result = _common_numeric(kind, result)
    return result


def _coalesce(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    compiler.arity(node, 1, 1 << 16)
    compiled = [(arg, *compiler.value(arg)) for arg in node.args]
    result = _unify(compiler, node, [(arg, kind) for arg, kind, _ in compiled])
    candidates = tuple(_widen(fetch, kind, result) for _, kind, fetch in compiled)

    def first_present(ctx: Any) -> Any:
        for fetch in candidates:
            value = fetch(ctx)
            if value is not None:
                return value
        return None

    return result, first_present


def _widen(fetch: ValueFn, kind: str, target: str) -> ValueFn:
    if target == "double" and kind in INTEGRAL_TYPES:
        return _each_value(fetch, float)
    return fetch


def _case(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    compiler.arity(node, 1, 1 << 16)
    args = node.args
    pairs: list[tuple[Predicate, Expr]] = []
    for index in range(0, len(args) - 1, 2):
        is_true, _ = compiler.truth(args[index])
        pairs.append((is_true, args[index + 1]))
    otherwise = args[-1] if len(args) % 2 else None
    branches = [value for _, value in pairs] + ([otherwise] if otherwise is not None else [])
    compiled = [(value, *compiler.value(value)) for value in branches]
    result = _unify(compiler, node, [(arg, kind) for arg, kind, _ in compiled])
    fetches = [_widen(fetch, kind, result) for _, kind, fetch in compiled]
    tests = tuple(zip((test for test, _ in pairs), fetches, strict=False))
    fallback = fetches[-1] if otherwise is not None else constant(None)

    def evaluate(ctx: Any) -> Any:
        for test, fetch in tests:
            if test(ctx):
                return fetch(ctx)
        return fallback(ctx)

    return result, evaluate


def _concat(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    compiler.arity(node, 2, 1 << 16)
    fetches = tuple(compiler.string_argument(node.name, arg) for arg in node.args)

    def evaluate(ctx: Any) -> str | None:
        parts: list[str] = []
        for fetch in fetches:
            value = fetch(ctx)
            if value.__class__ is not str:
                return None
            parts.append(value)
        return "".join(parts)

    return "keyword", evaluate


def _to_string(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    compiler.arity(node, 1)
    kind, fetch = compiler.value(node.args[0])
    if kind in STRING_TYPES or kind == "null":
        return "keyword", fetch
    if kind.startswith(("date_period", "time_duration")):
        raise compiler.error("TO_STRING does not apply to a time span", node)
    return "keyword", _each_value(fetch, lambda value: to_text(kind, value))


_JAVA_DOUBLE_RE = re.compile(r"[+-]?(?:NaN|Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[fFdD]?)")


def _parse_double(text: str) -> float | None:
    """Java's Double.parseDouble, which trims spaces and accepts a d/f suffix; None if invalid."""
    stripped = text.strip()
    if not _JAVA_DOUBLE_RE.fullmatch(stripped):
        return None
    if stripped[-1] in "fFdD" and stripped[-2:] not in ("NaN",):
        stripped = stripped[:-1]
    return float(stripped.replace("Infinity", "inf"))


def _to_double(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    compiler.arity(node, 1)
    kind, fetch = compiler.value(node.args[0])
    if kind == "null":
        return "double", fetch
    if kind in STRING_TYPES:
        return "double", _each_value(fetch, _parse_double)
    if kind in NUMERIC_TYPES or kind == "date":
        return "double", _each_value(fetch, float)
    if kind == "boolean":
        return "double", _each_value(fetch, lambda value: 1.0 if value else 0.0)
    raise compiler.error(
        f"TO_DOUBLE does not apply to {compiler.describe(node.args[0], kind)}", node
    )


def _mv_count(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    compiler.arity(node, 1)
    _, fetch = compiler.value(node.args[0])

    def evaluate(ctx: Any) -> int | None:
        value = fetch(ctx)
        if value is None:
            return None
        return len(value) if value.__class__ is list else 1

    return "integer", evaluate


def _mv_pick(index: int) -> Handler:
    def handler(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
        compiler.arity(node, 1)
        kind, fetch = compiler.value(node.args[0])

        def evaluate(ctx: Any) -> Any:
            value = fetch(ctx)
            return value[index] if value.__class__ is list else value

        return kind, evaluate

    return handler


RUN_TIME: ContextVar[int | None] = ContextVar("esql_run_time", default=None)
"""NOW() in epoch milliseconds while set (an aggregating rule's run time, replayed in event
time); the wall clock otherwise."""


def _now(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    compiler.arity(node, 0)

    def now(_ctx: Any) -> int:
        run_time = RUN_TIME.get()
        return date_key_exact(datetime.now(UTC)) if run_time is None else run_time

    return "date", now


def _truncate(span: Span) -> Callable[[int], int]:
    if span.kind == "time_duration" or (span.months == 0 and span.millis == 86_400_000):
        step = span.millis
        return lambda millis: millis - millis % step
    if span.months == 0 and span.millis == 7 * 86_400_000:
        # ISO weeks start on Monday; 1970-01-01 was a Thursday
        offset = 3 * 86_400_000
        return lambda millis: millis - (millis + offset) % span.millis
    months = span.months

    def calendar(millis: int) -> int:
        moment = from_millis(millis)
        index = (moment.year * 12 + moment.month - 1) // months * months
        year, month = divmod(index, 12)
        return date_key_exact(datetime(year, month + 1, 1, tzinfo=UTC))

    return calendar


def _date_trunc(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    compiler.arity(node, 2)
    span_arg, date_arg = node.args
    if not isinstance(span_arg, Interval):
        raise compiler.unsupported("DATE_TRUNC takes a time span literal such as 1 hour", node)
    span = span_of(span_arg)
    if span.kind == "date_period" and span_arg.amount != 1 and span_arg.unit != "month":
        raise compiler.unsupported(f"DATE_TRUNC by {span_arg.amount} {span_arg.unit}s", node)
    if (span.months == 0 and span.millis <= 0) or span.months < 0:
        raise compiler.error("DATE_TRUNC needs a positive time span", node)
    kind, fetch = compiler.operand(date_arg, "date")
    if kind == "null":
        return "date", fetch
    if kind != "date":
        raise compiler.error(
            f"DATE_TRUNC needs a date, found {compiler.describe(date_arg, kind)}", node
        )
    return "date", _single_valued(fetch, _truncate(span))


_DIFF_UNITS = {
    **dict.fromkeys(("year", "years", "yy", "yyyy"), ("months", 12)),
    **dict.fromkeys(("quarter", "quarters", "qq", "q"), ("months", 3)),
    **dict.fromkeys(("month", "months", "mm", "m"), ("months", 1)),
    **dict.fromkeys(("dayofyear", "dy", "y", "day", "days", "dd", "d"), ("millis", 86_400_000)),
    **dict.fromkeys(("week", "weeks", "wk", "ww"), ("millis", 7 * 86_400_000)),
    **dict.fromkeys(("weekday", "weekdays", "dw"), ("millis", 86_400_000)),
    **dict.fromkeys(("hour", "hours", "hh"), ("millis", 3_600_000)),
    **dict.fromkeys(("minute", "minutes", "mi", "n"), ("millis", 60_000)),
    **dict.fromkeys(("second", "seconds", "ss", "s"), ("millis", 1000)),
    **dict.fromkeys(("millisecond", "milliseconds", "ms"), ("millis", 1)),
}


def _months_between(start: int, end: int) -> int:
    """java.time's ChronoUnit.MONTHS.between for two UTC instants."""
    a, b = from_millis(start), from_millis(end)
    months = (b.year - a.year) * 12 + b.month - a.month
    a_rest = (a.day, a.hour, a.minute, a.second, a.microsecond)
    b_rest = (b.day, b.hour, b.minute, b.second, b.microsecond)
    if months > 0 and b_rest < a_rest:
        months -= 1
    elif months < 0 and b_rest > a_rest:
        months += 1
    return months


def _date_diff(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    compiler.arity(node, 3)
    unit_arg = node.args[0]
    if not (isinstance(unit_arg, Const) and isinstance(unit_arg.value, str)):
        raise compiler.unsupported("DATE_DIFF takes its unit as a string literal", node)
    unit = _DIFF_UNITS.get(unit_arg.value.lower())
    if unit is None:
        if unit_arg.value.lower().rstrip("s") in ("microsecond", "mc", "nanosecond", "n"):
            raise compiler.unsupported(f"DATE_DIFF in {unit_arg.value}", node)
        raise compiler.error(f"unknown DATE_DIFF unit {unit_arg.value!r}", unit_arg)
    dates = []
    for arg in node.args[1:]:
        kind, fetch = compiler.operand(arg, "date")
        if kind not in ("date", "null"):
            raise compiler.error(
                f"DATE_DIFF needs dates, found {compiler.describe(arg, kind)}", arg
            )
        dates.append(fetch)
    start_fetch, end_fetch = dates
    measure, size = unit
    check = _checked("integer")

    def evaluate(ctx: Any) -> int | None:
        start = start_fetch(ctx)
        end = end_fetch(ctx)
        if start is None or end is None or start.__class__ is list or end.__class__ is list:
            return None
        if measure == "months":
            whole = _months_between(start, end)
            return check(int(whole / size))
        return check(_int_div(end - start, size) or 0)

    return "integer", evaluate


def _java_round(value: float) -> int:
    """Java's Math.round: halves go up."""
    return math.floor(value + 0.5)


def _integral(kind: str) -> Callable[[str, Any], int | None]:
    check = _checked(kind)
    low, high = INT_RANGE[kind]

    def from_double(number: float | None) -> int | None:
        """In range before rounding, as Elasticsearch's safe conversions check."""
        if number is None or not low <= number <= high:
            return None
        return check(_java_round(number))

    def convert(source: str, value: Any) -> int | None:
        if source in STRING_TYPES:
            text = value.strip()
            try:
                return check(int(text))
            except ValueError:
                return from_double(_parse_double(text))
        if source == "double":
            return from_double(value)
        if source == "boolean":
            return 1 if value else 0
        return check(value)

    return convert


_DATETIME_RE = re.compile(
    r"[+-]?\d{4,}-\d{2}-\d{2}(?:T\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?)?)?"
    r"(?:Z|[+-]\d{2}(?::?\d{2})?)?"
)


def _to_datetime_value(source: str, value: Any) -> int | None:
    if source in STRING_TYPES:
        text = value.strip()
        if not _DATETIME_RE.fullmatch(text):
            return None
        return date_key(re.sub(r"([.,]\d{6})\d+", r"\1", text).replace(",", "."))
    if source == "double":
        return _java_round(value) if math.isfinite(value) else None
    return _checked("long")(value)


def _to_boolean_value(source: str, value: Any) -> bool:
    if source in STRING_TYPES:
        return bool(value.lower() == "true")
    return bool(value != 0)


def _to_ip_value(source: str, value: Any) -> int | None:
    return ip_key(value) if source in STRING_TYPES else value


def _converter(result: str, accepts: frozenset[str], convert: Callable[[str, Any], Any]) -> Handler:
    """A TO_xxx function: each value converted, those that do not convert dropped (null)."""

    def handler(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
        compiler.arity(node, 1)
        kind, fetch = compiler.value(node.args[0])
        if kind == "null":
            return result, fetch
        if kind == result:
            return result, fetch
        if kind not in accepts:
            found = compiler.describe(node.args[0], kind)
            raise compiler.error(f"{node.name} does not apply to {found}", node)
        return result, _each_value(fetch, lambda value: convert(kind, value))

    return handler


_NUMERIC_SOURCES = STRING_TYPES | NUMERIC_TYPES | {"boolean", "date"}
_TO_LONG = _converter("long", _NUMERIC_SOURCES, _integral("long"))
_TO_INTEGER = _converter("integer", _NUMERIC_SOURCES, _integral("integer"))
_TO_DATETIME = _converter("date", STRING_TYPES | NUMERIC_TYPES, _to_datetime_value)
_TO_BOOLEAN = _converter("boolean", STRING_TYPES | NUMERIC_TYPES, _to_boolean_value)
_TO_IP = _converter("ip", STRING_TYPES, _to_ip_value)


def _mv_reduce(name: str) -> Handler:
    def handler(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
        compiler.arity(node, 1)
        kind, fetch = compiler.value(node.args[0])
        if name == "MV_SUM":
            if kind not in NUMERIC_TYPES and kind != "null":
                raise compiler.error(f"MV_SUM needs numbers, found {kind}", node)
            check = _checked(kind) if kind in INTEGRAL_TYPES else _finite
            reduce: Callable[[list[Any]], Any] = lambda values: check(sum(values))  # noqa: E731
        elif kind not in ORDERABLE_TYPES | {"boolean", "null"}:
            raise compiler.error(f"{name} does not apply to {kind}", node)
        else:
            reduce = min if name == "MV_MIN" else max

        def evaluate(ctx: Any) -> Any:
            value = fetch(ctx)
            return reduce(value) if value.__class__ is list else value

        return kind, evaluate

    return handler


def _mv_sort(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    """MV_SORT(values[, "ASC" | "DESC"]): the order a constant."""
    compiler.arity(node, 1, 2)
    kind, fetch = compiler.value(node.args[0])
    if kind not in ORDERABLE_TYPES | {"boolean", "null"}:
        raise compiler.error(f"MV_SORT does not apply to {kind}", node)
    descending = False
    if len(node.args) == 2:
        order = node.args[1]
        if not isinstance(order, Const) or str(order.value).upper() not in ("ASC", "DESC"):
            raise compiler.error("MV_SORT takes 'ASC' or 'DESC' as its order", order)
        descending = str(order.value).upper() == "DESC"

    def evaluate(ctx: Any) -> Any:
        value = fetch(ctx)
        return sorted(value, reverse=descending) if value.__class__ is list else value

    return kind, evaluate


def _mv_dedupe(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    """MV_DEDUPE: each value once, in the order first seen."""
    compiler.arity(node, 1)
    kind, fetch = compiler.value(node.args[0])

    def evaluate(ctx: Any) -> Any:
        value = fetch(ctx)
        return single(list(dict.fromkeys(value))) if value.__class__ is list else value

    return kind, evaluate


def _mv_slice(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    """MV_SLICE(values, start[, end]): zero-based, `end` included, negative from the end;
    null when the range holds no value."""
    compiler.arity(node, 2, 3)
    kind, fetch = compiler.value(node.args[0])
    start_fetch = _integer_argument(compiler, node, node.args[1])
    end_fetch = _integer_argument(compiler, node, node.args[-1])

    def evaluate(ctx: Any) -> Any:
        value = fetch(ctx)
        start, end = start_fetch(ctx), end_fetch(ctx)
        if value is None or start is None or end is None:
            return None
        values = value if value.__class__ is list else [value]
        count = len(values)
        first = start + count if start < 0 else start
        last = end + count if end < 0 else end
        if first > last or first >= count or last < 0:
            return None
        return single(values[max(first, 0) : last + 1])

    return kind, evaluate


def _mv_average(median: bool) -> Handler:
    """MV_AVG (a double) and MV_MEDIAN (of integers: the mean of the middle two rounded
    down, as an integer)."""

    def handler(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
        compiler.arity(node, 1)
        kind, fetch = compiler.value(node.args[0])
        if kind not in NUMERIC_TYPES | {"null"}:
            raise compiler.error(f"{node.name} needs numbers, found {kind}", node)
        result = kind if median and kind != "null" else "double"

        def evaluate(ctx: Any) -> Any:
            value = fetch(ctx)
            if value is None:
                return None
            values = sorted(value) if value.__class__ is list else [value]
            if not median:
                return _finite(math.fsum(values) / len(values))
            middle = len(values) // 2
            if len(values) % 2:
                return values[middle] if result != "double" else float(values[middle])
            low, high = values[middle - 1], values[middle]
            if result == "double":
                return (low + high) / 2
            return (low + high) // 2

        return result, evaluate

    return handler


def _round_integral(value: int, decimals: int) -> int:
    """Half away from zero at 10^-decimals, as Elasticsearch's Maths.round(long, long)."""
    if decimals >= 0:
        return value
    scale: int = 10 ** (-decimals)
    quotient, remainder = divmod(abs(value), scale)
    if 2 * remainder >= scale:
        quotient += 1
    return int(quotient * scale * (1 if value >= 0 else -1))


def _round_double(value: float, decimals: int) -> float:
    """Elasticsearch's Maths.round(double, long): Math.round of |value| scaled, signed."""
    scale = 10.0**decimals
    middle = value * scale
    if math.isinf(middle) or math.isnan(middle):
        return value
    sign = 1 if middle >= 0 else -1
    return math.floor(abs(middle) + 0.5) / scale * sign


def _round(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    compiler.arity(node, 1, 2)
    kind, fetch = compiler.value(node.args[0])
    if kind not in NUMERIC_TYPES | {"null"}:
        raise compiler.error(f"ROUND needs a number, found {kind}", node)
    decimals = _integer_argument(compiler, node, node.args[1]) if len(node.args) == 2 else None
    check: Callable[[Any], Any] = _checked(kind) if kind in INTEGRAL_TYPES else _finite

    def evaluate(ctx: Any) -> Any:
        value = fetch(ctx)
        places = 0 if decimals is None else decimals(ctx)
        if value is None or value.__class__ is list or places is None or places.__class__ is list:
            return None
        if kind == "double":
            return check(_round_double(value, places))
        return check(_round_integral(value, places))

    return kind, evaluate


def _mv_concat(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    compiler.arity(node, 2)
    values = compiler.string_argument(node.name, node.args[0])
    delimiter = compiler.string_argument(node.name, node.args[1])

    def evaluate(ctx: Any) -> str | None:
        value = values(ctx)
        separator = delimiter(ctx)
        if value is None or separator.__class__ is not str:
            return None
        return separator.join(value) if value.__class__ is list else value

    return "keyword", evaluate


_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _from_base64_value(text: str) -> str | None:
    """java.util.Base64's basic decoder (padding optional, but exact when present), as UTF-8;
    None where Elasticsearch's FROM_BASE64 fails and yields null."""
    if not _BASE64_RE.fullmatch(text) or ("=" in text and len(text) % 4):
        return None
    body = text.rstrip("=")
    if len(body) % 4 == 1:
        return None
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _base64(encode: bool) -> Handler:
    def handler(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
        compiler.arity(node, 1)
        fetch = compiler.string_argument(node.name, node.args[0])
        if encode:
            return "keyword", _single_valued(
                fetch, lambda text: base64.b64encode(text.encode()).decode("ascii")
            )
        return "keyword", _single_valued(fetch, _from_base64_value)

    return handler


def _integer_argument(compiler: ExprCompiler, node: Call, arg: Expr) -> ValueFn:
    kind, fetch = compiler.value(arg)
    if kind not in INTEGRAL_TYPES and kind != "null":
        raise compiler.error(
            f"{node.name} needs a whole number, found {compiler.describe(arg, kind)}", arg
        )
    return fetch


def _substring(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
    """SUBSTRING(text, start[, length]): 1-based code points, 0 read as 1 and a negative start
    counted from the end, as Elasticsearch's Substring does."""
    compiler.arity(node, 2, 3)
    text_fetch = compiler.string_argument(node.name, node.args[0])
    start_fetch = _integer_argument(compiler, node, node.args[1])
    length_fetch = (
        _integer_argument(compiler, node, node.args[2]) if len(node.args) == 3 else None
    )

    def evaluate(ctx: Any) -> str | None:
        text = text_fetch(ctx)
        start = start_fetch(ctx)
        if text.__class__ is not str or start is None or start.__class__ is list:
            return None
        length = len(text) if length_fetch is None else length_fetch(ctx)
        if length is None or length.__class__ is list:
            return None
        if length < 0:
            return None
        begin = start - 1 if start > 0 else max(0, len(text) + start) if start < 0 else 0
        return text[begin : begin + length] if begin < len(text) else ""

    return "keyword", evaluate


def _side(left: bool) -> Handler:
    def handler(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
        compiler.arity(node, 2)
        text_fetch = compiler.string_argument(node.name, node.args[0])
        count_fetch = _integer_argument(compiler, node, node.args[1])

        def evaluate(ctx: Any) -> str | None:
            text = text_fetch(ctx)
            count = count_fetch(ctx)
            if text.__class__ is not str or count is None or count.__class__ is list:
                return None
            if count <= 0:
                return ""
            return text[:count] if left else text[-count:]

        return "keyword", evaluate

    return handler


def _extreme(pick: Callable[[list[Any]], Any]) -> Handler:
    """GREATEST/LEAST: over every value of every argument; null when any argument is null."""

    def handler(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
        compiler.arity(node, 1, 1 << 16)
        compiled = [(arg, *compiler.value(arg)) for arg in node.args]
        result = _unify(compiler, node, [(arg, kind) for arg, kind, _ in compiled])
        if result not in ORDERABLE_TYPES | {"boolean", "null"}:
            raise compiler.error(f"{node.name} does not apply to {result}", node)
        fetches = tuple(_widen(fetch, kind, result) for _, kind, fetch in compiled)

        def evaluate(ctx: Any) -> Any:
            values: list[Any] = []
            for fetch in fetches:
                value = fetch(ctx)
                if value is None:
                    return None
                values.extend(value if value.__class__ is list else (value,))
            return pick(values)

        return result, evaluate

    return handler


_JAVA_WHITESPACE = (
    " \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2008\u2009\u200a\u2028\u2029\u205f\u3000"
)
"""Java's Character.isWhitespace: the space separators except the no-break ones, plus the
ASCII controls it names. TRIM, LTRIM and RTRIM strip these."""


def _trim(strip: Callable[[str, str], str]) -> Handler:
    def handler(compiler: ExprCompiler, node: Call) -> tuple[str, ValueFn]:
        compiler.arity(node, 1)
        fetch = compiler.string_argument(node.name, node.args[0])
        return "keyword", _single_valued(fetch, lambda text: strip(text, _JAVA_WHITESPACE))

    return handler


_FUNCTIONS: Mapping[str, Handler] = {
    "TRIM": _trim(str.strip),
    "LTRIM": _trim(str.lstrip),
    "RTRIM": _trim(str.rstrip),
    "SUBSTRING": _substring,
    "LEFT": _side(left=True),
    "RIGHT": _side(left=False),
    "GREATEST": _extreme(max),
    "LEAST": _extreme(min),
    "FROM_BASE64": _base64(encode=False),
    "TO_BASE64": _base64(encode=True),
    "TO_LONG": _TO_LONG,
    "::long": _TO_LONG,
    "TO_INTEGER": _TO_INTEGER,
    "TO_INT": _TO_INTEGER,
    "::integer": _TO_INTEGER,
    "::int": _TO_INTEGER,
    "TO_DATETIME": _TO_DATETIME,
    "TO_DT": _TO_DATETIME,
    "::datetime": _TO_DATETIME,
    "::date": _TO_DATETIME,
    "TO_BOOLEAN": _TO_BOOLEAN,
    "TO_BOOL": _TO_BOOLEAN,
    "::boolean": _TO_BOOLEAN,
    "::bool": _TO_BOOLEAN,
    "TO_IP": _TO_IP,
    "::ip": _TO_IP,
    "MV_MIN": _mv_reduce("MV_MIN"),
    "MV_MAX": _mv_reduce("MV_MAX"),
    "MV_SUM": _mv_reduce("MV_SUM"),
    "MV_CONCAT": _mv_concat,
    "MV_SORT": _mv_sort,
    "ROUND": _round,
    "MV_DEDUPE": _mv_dedupe,
    "MV_SLICE": _mv_slice,
    "MV_AVG": _mv_average(median=False),
    "MV_MEDIAN": _mv_average(median=True),
    "TO_LOWER": _case_change(str.lower),
    "TO_UPPER": _case_change(str.upper),
    "LENGTH": _length,
    "STARTS_WITH": _affix(str.startswith),
    "ENDS_WITH": _affix(str.endswith),
    "COALESCE": _coalesce,
    "CASE": _case,
    "CONCAT": _concat,
    "TO_STRING": _to_string,
    "::string": _to_string,
    "::keyword": _to_string,
    "TO_DOUBLE": _to_double,
    "::double": _to_double,
    "MV_COUNT": _mv_count,
    "MV_FIRST": _mv_pick(0),
    "MV_LAST": _mv_pick(-1),
    "NOW": _now,
    "DATE_TRUNC": _date_trunc,
    "DATE_DIFF": _date_diff,
}
