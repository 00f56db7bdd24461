"""ES|QL `STATS ... BY` as partial states that add, merge and serialize, for rules that
aggregate over a window of events (Elastic's schedule, replayed in event time by the stream).

A query `<pre-STATS commands> | STATS ... BY ... | <post-STATS commands>` splits in three:
- `rows(record)`: the pre-STATS commands for one event, as the row STATS reads (only the
  columns STATS reads, engine values: dates as epoch ms, addresses as integers, JSON-able);
- `group_keys(row)`, `new_state()`, `add`, `merge`, `dump`, `load`: one partial state per
  group, so states of time buckets or partitions combine (`merge` of any split equals adding
  everything to one state, and `load(dump(s)) == s` through JSON);
- `finish(groups, now_ms)`: the STATS output rows (aggregates, then the BY columns, as ES|QL
  orders them) through the post-STATS commands, as display values (ISO dates, address text).

Semantics, as Elasticsearch's:
- BY: a null value is a group of its own; a multi-valued value puts the row in one group per
  distinct value (several multi-valued BY columns: every combination). STATS without BY has
  one group, and gives one row even over no events (COUNT 0, other aggregates null).
- `agg WHERE condition`: the aggregate functions of that expression see only the rows where
  the condition is true.
- COUNT(*) counts rows, COUNT(x) values (each value of a multi-valued one); MIN, MAX, SUM,
  AVG, VALUES, COUNT_DISTINCT, MEDIAN, PERCENTILE and TOP read every value of a multi-valued
  input and skip nulls. SUM of integers is a long (null when it overflows), of doubles a
  double; AVG, MEDIAN and PERCENTILE are doubles.
- Where Elasticsearch is approximate we are exact: COUNT_DISTINCT (HyperLogLog++, exact up
  to its precision threshold, 3000 by default, an estimate within a few percent above), and
  MEDIAN/PERCENTILE (t-digest); SUM and AVG of doubles are correctly rounded sums. Exactness
  costs memory: these states hold every distinct value (every value for percentiles).
- VALUES: Elasticsearch does not guarantee an order (it returns values as its hash tables
  met them); ours are sorted ascending (keyword by code point, ip and dates numerically), so
  the stream and the offline scan agree whatever the event order. Compare them as sets.
- NOW() is the run time (`now_ms`): the stream replays Elastic's schedule in event time.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from operator import itemgetter
from typing import Any

from consumer.cloudtrail.normalize import ECS_FIELDS
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.rules.esql.compiler import RUN_TIME, Column, ExprCompiler, ValueFn, single
from consumer.rules.esql.query import (
    CLOUDTRAIL_METADATA,
    ColumnDef,
    CompiledQuery,
    FieldSpec,
    Prepared,
    Table,
    TableStages,
    compile_query,
    compile_table_stages,
    prepare,
)
from consumer.rules.esql.syntax import (
    Aggregate,
    Arith,
    Call,
    Command,
    Compare,
    Const,
    Dissect,
    Eval,
    Expr,
    FieldRef,
    Grok,
    InList,
    IsNull,
    Limit,
    Logical,
    Match,
    Neg,
    Not,
    Source,
    Star,
    Stats,
    Where,
    parse,
)
from consumer.rules.esql.values import INT_RANGE, NUMERIC_TYPES, ORDERABLE_TYPES, display

Row = dict[str, object]
"""Column -> ES|QL engine value (None, a scalar, or a list for a multi-valued one)."""
GroupKey = tuple[object, ...]
"""The BY values of one group (None for null), in BY order; JSON-able."""
AggState = list[Any]
"""One group's partial state: one entry per aggregate function of the query."""

_HIDDEN = "\x00agg"


# --- aggregate functions --------------------------------------------------------------------


def _each(value: Any) -> Iterator[Any]:
    if value is None:
        return iter(())
    if value.__class__ is list:
        return iter(value)
    return iter((value,))


class _Aggregator:
    """One aggregate function's partial state: created, added to, merged, dumped, finished."""

    type: str = "long"

    def new(self) -> Any:
        return None

    def add(self, state: Any, value: Any) -> Any:
        raise NotImplementedError

    def merge(self, into: Any, other: Any) -> Any:
        raise NotImplementedError

    def dump(self, state: Any) -> object:
        return state

    def load(self, data: Any) -> Any:
        return data

    def final(self, state: Any) -> Any:
        return state


class _CountRows(_Aggregator):
    def new(self) -> int:
        return 0

    def add(self, state: int, value: Any) -> int:
        return state + 1

    def merge(self, into: int, other: int) -> int:
        return into + other


class _Count(_CountRows):
    def add(self, state: int, value: Any) -> int:
        if value is None:
            return state
        return state + (len(value) if value.__class__ is list else 1)


class _Distinct(_Aggregator):
    """A set of values: COUNT_DISTINCT counts it, VALUES lists it sorted."""

    def __init__(self, kind: str, count: bool) -> None:
        self.type = "long" if count else kind
        self.count = count

    def new(self) -> set[Any]:
        return set()

    def add(self, state: set[Any], value: Any) -> set[Any]:
        state.update(_each(value))
        return state

    def merge(self, into: set[Any], other: set[Any]) -> set[Any]:
        into.update(other)
        return into

    def dump(self, state: set[Any]) -> object:
        return sorted(state)

    def load(self, data: Any) -> set[Any]:
        return set(data)

    def final(self, state: set[Any]) -> Any:
        return len(state) if self.count else single(sorted(state))


class _Extreme(_Aggregator):
    def __init__(self, kind: str, pick: Callable[..., Any]) -> None:
        self.type = kind
        self.pick = pick

    def add(self, state: Any, value: Any) -> Any:
        if value is None:
            return state
        if value.__class__ is list:
            value = self.pick(value)
        return value if state is None else self.pick(state, value)

    def merge(self, into: Any, other: Any) -> Any:
        return self.add(into, other)


class _Sum(_Aggregator):
    """Integers exactly (null when the sum leaves the long range); doubles as an exact
    fraction, so the sum is the correctly rounded one whatever the order of addition."""

    def __init__(self, kind: str) -> None:
        self.type = kind if kind in ("double", "null") else "long"

    def add(self, state: Any, value: Any) -> Any:
        if value is None:
            return state
        total = (Fraction(0) if self.type != "long" else 0) if state is None else state
        for item in _each(value):
            total += Fraction(item) if self.type == "double" else item
        return total

    def merge(self, into: Any, other: Any) -> Any:
        if other is None:
            return into
        return other if into is None else into + other

    def dump(self, state: Any) -> object:
        if isinstance(state, Fraction):
            return [state.numerator, state.denominator]
        return state

    def load(self, data: Any) -> Any:
        if isinstance(data, list):
            return Fraction(data[0], data[1])
        return data

    def final(self, state: Any) -> Any:
        if state is None:
            return None
        if self.type == "double":
            return _finite(float(state))
        low, high = INT_RANGE["long"]
        return state if low <= state <= high else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class _Avg(_Aggregator):
    type = "double"

    def new(self) -> list[Any]:
        return [Fraction(0), 0]

    def add(self, state: list[Any], value: Any) -> list[Any]:
        for item in _each(value):
            state[0] += Fraction(item)
            state[1] += 1
        return state

    def merge(self, into: list[Any], other: list[Any]) -> list[Any]:
        into[0] += other[0]
        into[1] += other[1]
        return into

    def dump(self, state: list[Any]) -> object:
        return [state[0].numerator, state[0].denominator, state[1]]

    def load(self, data: Any) -> list[Any]:
        return [Fraction(data[0], data[1]), data[2]]

    def final(self, state: list[Any]) -> float | None:
        return _finite(float(state[0] / state[1])) if state[1] else None


class _Variance(_Aggregator):
    """The population variance (or standard deviation), from exact sums."""

    type = "double"

    def __init__(self, root: bool) -> None:
        self.root = root

    def new(self) -> list[Any]:
        return [0, Fraction(0), Fraction(0)]

    def add(self, state: list[Any], value: Any) -> list[Any]:
        for item in _each(value):
            exact = Fraction(item)
            state[0] += 1
            state[1] += exact
            state[2] += exact * exact
        return state

    def merge(self, into: list[Any], other: list[Any]) -> list[Any]:
        return [into[0] + other[0], into[1] + other[1], into[2] + other[2]]

    def dump(self, state: list[Any]) -> object:
        return [state[0], *(part for total in state[1:] for part in total.as_integer_ratio())]

    def load(self, data: Any) -> list[Any]:
        return [data[0], Fraction(data[1], data[2]), Fraction(data[3], data[4])]

    def final(self, state: list[Any]) -> float | None:
        count, total, squares = state
        if not count:
            return None
        variance = float((squares - total * total / count) / count)
        return _finite(math.sqrt(variance) if self.root else variance)


class _Presence(_Aggregator):
    """PRESENT (any value at all) and ABSENT (none)."""

    type = "boolean"

    def __init__(self, present: bool) -> None:
        self.present = present

    def new(self) -> bool:
        return False

    def add(self, state: bool, value: Any) -> bool:
        return state or value is not None

    def merge(self, into: bool, other: bool) -> bool:
        return into or other

    def final(self, state: bool) -> bool:
        return state if self.present else not state


class _Percentile(_Aggregator):
    """Every value, kept sorted; the percentile interpolates linearly between the two closest
    ranks, as Elasticsearch's t-digest does while it still holds every value."""

    type = "double"

    def __init__(self, percentile: float) -> None:
        self.percentile = percentile

    def new(self) -> list[Any]:
        return []

    def add(self, state: list[Any], value: Any) -> list[Any]:
        for item in _each(value):
            bisect.insort(state, item)
        return state

    def merge(self, into: list[Any], other: list[Any]) -> list[Any]:
        into.extend(other)
        into.sort()
        return into

    def load(self, data: Any) -> list[Any]:
        return list(data)

    def final(self, state: list[Any]) -> float | None:
        if not state:
            return None
        rank = self.percentile / 100 * (len(state) - 1)
        low = math.floor(rank)
        high = min(low + 1, len(state) - 1)
        return float(state[low] + (state[high] - state[low]) * (rank - low))


class _Top(_Aggregator):
    """The `limit` first values in `order`, duplicates kept."""

    def __init__(self, kind: str, limit: int, ascending: bool) -> None:
        self.type = kind
        self.limit = limit
        self.ascending = ascending

    def new(self) -> list[Any]:
        return []

    def add(self, state: list[Any], value: Any) -> list[Any]:
        state.extend(_each(value))
        return self._trim(state)

    def _trim(self, state: list[Any]) -> list[Any]:
        state.sort(reverse=not self.ascending)
        del state[self.limit :]
        return state

    def merge(self, into: list[Any], other: list[Any]) -> list[Any]:
        into.extend(other)
        return self._trim(into)

    def load(self, data: Any) -> list[Any]:
        return list(data)

    def final(self, state: list[Any]) -> Any:
        return single(list(state))


AGGREGATE_FUNCTIONS = frozenset(
    {"COUNT", "COUNT_DISTINCT", "VALUES", "MIN", "MAX", "SUM", "AVG", "MEDIAN", "PERCENTILE"}
    | {"TOP", "STD_DEV", "VARIANCE", "STD_VAR", "PRESENT", "ABSENT"}
)
_KNOWN_UNSUPPORTED = frozenset(
    {"MEDIAN_ABSOLUTE_DEVIATION", "WEIGHTED_AVG", "SAMPLE", "ST_CENTROID_AGG"}
    | {"ST_EXTENT_AGG", "RATE", "FIRST", "LAST", "FIRST_OVER_TIME", "LAST_OVER_TIME"}
    | {"CATEGORIZE", "BUCKET", "AVG_OVER_TIME"}
)


# --- compiling STATS ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Input:
    """One aggregate function call: its argument over the row, its filter, its state."""

    fetch: ValueFn | None
    keep: Callable[[Any], bool] | None
    aggregator: _Aggregator


def _walk(node: Expr) -> Iterator[Expr]:
    yield node
    children: Sequence[Expr] = ()
    if isinstance(node, Call):
        children = node.args
    elif isinstance(node, Compare | Arith):
        children = (node.left, node.right)
    elif isinstance(node, Logical):
        children = node.operands
    elif isinstance(node, Not | Neg | IsNull | Match):
        children = (node.operand,)
    elif isinstance(node, InList):
        children = (node.operand, *node.items)
    for child in children:
        yield from _walk(child)


def _replace(node: Expr, change: Callable[[Expr], Expr | None]) -> Expr:
    """`node` with every subtree `change` maps to something else replaced (outermost first)."""
    changed = change(node)
    if changed is not None:
        return changed

    def again(child: Expr) -> Expr:
        return _replace(child, change)

    if isinstance(node, Call):
        return Call(node.name, tuple(map(again, node.args)), node.pos)
    if isinstance(node, Compare):
        return Compare(node.op, again(node.left), again(node.right), node.pos)
    if isinstance(node, Arith):
        return Arith(node.op, again(node.left), again(node.right), node.pos)
    if isinstance(node, Logical):
        return Logical(node.op, tuple(map(again, node.operands)), node.pos)
    if isinstance(node, Not):
        return Not(again(node.operand), node.pos)
    if isinstance(node, Neg):
        return Neg(again(node.operand), node.pos)
    if isinstance(node, IsNull):
        return IsNull(again(node.operand), node.negated, node.pos)
    if isinstance(node, InList):
        return InList(again(node.operand), tuple(map(again, node.items)), node.negated, node.pos)
    if isinstance(node, Match):
        return Match(again(node.operand), node.pattern, node.regex, node.negated, node.pos)
    return node


class _StatsCompiler:
    """Type-checks one STATS command over the columns before it."""

    def __init__(
        self,
        source: Source,
        scope: Mapping[str, ColumnDef],
        unknown: Callable[[FieldRef], Exception],
    ) -> None:
        self.source = source
        self.scope = scope
        self.unknown = unknown
        self.inputs: dict[str, tuple[str, str | None]] = {}
        """Pre-STATS columns STATS reads: name -> (frame key, source field)."""
        self.row_compiler = ExprCompiler(source, self.row_column)
        self.aliases: dict[str, Column] = {}
        """BY columns by name, once the BY clause is compiled: inside an aggregate function
        (and its filter) a BY name is that row's value of the BY expression."""

    def row_column(self, node: FieldRef) -> Column:
        alias = self.aliases.get(node.name)
        if alias is not None:
            return alias
        entry = self.scope.get(node.name)
        if entry is None:
            raise self.unknown(node)
        kind, key, field = entry.type, entry.key, entry.source
        if kind.startswith("unsupported:"):
            raise self.source.unsupported(
                f"column '{node.name}' has type {kind.split(':', 1)[1]}, which is not supported",
                node.pos,
            )
        self.inputs[node.name] = (key, field)
        return Column(kind, itemgetter(node.name))

    def aggregate_call(self, node: Call, condition: Expr | None) -> _Input:
        name = node.name
        for inner in (arg for top in node.args for arg in _walk(top)):
            if isinstance(inner, Call) and inner.name in AGGREGATE_FUNCTIONS:
                raise self.source.error(
                    f"aggregate function {inner.name} inside aggregate function {name}",
                    inner.pos,
                )
        keep = self.row_compiler.truth(condition)[0] if condition is not None else None
        if name == "COUNT" and (not node.args or isinstance(node.args[0], Star)):
            if len(node.args) > 1:
                raise self.source.error("COUNT takes 1 argument", node.pos)
            return _Input(None, keep, _CountRows())
        limits = {"COUNT": (1, 1), "COUNT_DISTINCT": (1, 2), "PERCENTILE": (2, 2), "TOP": (3, 3)}
        self.row_compiler.arity(node, *limits.get(name, (1, 1)))
        kind, fetch = self.row_compiler.value(node.args[0])
        aggregator = self._aggregator(node, kind)
        return _Input(fetch, keep, aggregator)

    def _aggregator(self, node: Call, kind: str) -> _Aggregator:
        name = node.name
        if name == "COUNT":
            return _Count()
        if name in ("COUNT_DISTINCT", "VALUES"):
            return _Distinct(kind, count=name == "COUNT_DISTINCT")
        if name in ("PRESENT", "ABSENT"):
            return _Presence(present=name == "PRESENT")
        if name in ("MIN", "MAX", "TOP"):
            if kind not in ORDERABLE_TYPES | {"boolean", "null"}:
                raise self.source.error(f"{name} does not apply to {kind} values", node.pos)
            kind = "keyword" if kind == "text" else kind  # as Elasticsearch returns them
            if name == "TOP":
                return self._top(node, kind)
            return _Extreme(kind, min if name == "MIN" else max)
        if kind not in NUMERIC_TYPES | {"null"}:
            raise self.source.error(f"{name} needs numbers, found {kind}", node.pos)
        if name == "SUM":
            return _Sum(kind)
        if name == "AVG":
            return _Avg()
        if name in ("STD_DEV", "VARIANCE", "STD_VAR"):
            return _Variance(root=name == "STD_DEV")
        if name == "MEDIAN":
            return _Percentile(50.0)
        return _Percentile(self._constant_number(node, node.args[1]))

    def _constant_number(self, node: Call, arg: Expr) -> float:
        if not isinstance(arg, Const) or not isinstance(arg.value, int | float):
            raise self.source.unsupported(f"{node.name} takes a constant number", arg.pos)
        if isinstance(arg.value, bool) or not 0 <= arg.value <= 100:
            raise self.source.error(f"{node.name} takes a number from 0 to 100", arg.pos)
        return float(arg.value)

    def _top(self, node: Call, kind: str) -> _Aggregator:
        limit, order = node.args[1], node.args[2]
        if not isinstance(limit, Const) or not isinstance(limit.value, int) or limit.value < 1:
            raise self.source.error("TOP takes a positive whole number as its limit", limit.pos)
        if not isinstance(order, Const) or str(order.value).lower() not in ("asc", "desc"):
            raise self.source.error("TOP takes 'asc' or 'desc' as its order", order.pos)
        return _Top(kind, limit.value, str(order.value).lower() == "asc")


def _sort_key(key: GroupKey) -> tuple[tuple[int, Any], ...]:
    return tuple((0, 0) if value is None else (1, value) for value in key)


@dataclass(frozen=True, slots=True)
class _Group:
    name: str
    type: str
    fetch: ValueFn
    same_as: int | None = None
    """An earlier BY column this one copies: it takes that one's value, not every value."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """One STATS command compiled over the columns before it: rows (column name -> engine
    value) in, one output row (aggregates, then BY columns) per group out."""

    inputs: Mapping[str, tuple[str, str | None]]
    groups: tuple[_Group, ...]
    calls: tuple[_Input, ...]
    outputs: tuple[tuple[str, str, ValueFn], ...]

    @property
    def columns(self) -> list[tuple[str, str]]:
        names = {group.name for group in self.groups}
        columns = [(name, kind) for name, kind, _ in self.outputs if name not in names]
        return columns + [(group.name, group.type) for group in self.groups]

    def group_keys(self, row: Row) -> list[GroupKey]:
        choices: list[list[Any]] = []
        tied = False
        for group in self.groups:
            if group.same_as is not None:
                choices.append([None])
                tied = True
                continue
            value = group.fetch(row)
            choices.append(list(dict.fromkeys(value)) if value.__class__ is list else [value])
        if not tied and all(len(choice) == 1 for choice in choices):
            return [tuple(choice[0] for choice in choices)]
        keys = [list(key) for key in itertools.product(*choices)]
        for index, group in enumerate(self.groups):
            if group.same_as is not None:
                for key in keys:
                    key[index] = key[group.same_as]
        return [tuple(key) for key in keys]

    def new_state(self) -> AggState:
        return [call.aggregator.new() for call in self.calls]

    def add(self, state: AggState, row: Row) -> None:
        for index, call in enumerate(self.calls):
            if call.keep is not None and not call.keep(row):
                continue
            value = call.fetch(row) if call.fetch is not None else True
            state[index] = call.aggregator.add(state[index], value)

    def output(self, key: GroupKey, state: AggState) -> dict[str, Any]:
        values: dict[str, Any] = {
            f"{_HIDDEN}{index}": call.aggregator.final(part)
            for index, (call, part) in enumerate(zip(self.calls, state, strict=True))
        }
        for group, value in zip(self.groups, key, strict=True):
            values[group.name] = value
        row = {name: fetch(values) for name, _kind, fetch in self.outputs}
        for group, value in zip(self.groups, key, strict=True):
            row[group.name] = value
        return {name: row[name] for name, _ in self.columns}

    def outputs_of(self, groups: Iterable[tuple[GroupKey, AggState]]) -> list[dict[str, Any]]:
        """Output rows in order of the group keys (nulls first); without BY, one row even
        for no group."""
        ordered = sorted(groups, key=lambda item: _sort_key(item[0]))
        if not self.groups and not ordered:
            ordered = [((), self.new_state())]
        return [self.output(key, state) for key, state in ordered]

    def table(self, rows: Iterable[Row]) -> list[dict[str, Any]]:
        """Table mode: every row into its groups, then their output rows."""
        states: dict[GroupKey, AggState] = {}
        for row in rows:
            for key in self.group_keys(row):
                state = states.get(key)
                if state is None:
                    state = states[key] = self.new_state()
                self.add(state, row)
        return self.outputs_of(states.items())


@dataclass(frozen=True, slots=True)
class _Chain:
    """What follows the first STATS: commands, and any further STATS over their rows."""

    stages: tuple[TableStages | _Plan, ...]
    columns: tuple[tuple[str, str], ...]

    def run(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for stage in self.stages:
            rows = stage.table(rows) if isinstance(stage, _Plan) else stage.run(rows)
        return rows


class AggregatingQuery:
    """A compiled `... | STATS ... BY ... | ...` query; see the module docstring."""

    def __init__(
        self,
        prepared: Prepared,
        plan: _Plan,
        chain: _Chain,
        reads_now: bool,
    ) -> None:
        self.pre_stats = prepared.query
        """The commands before STATS as a stateless query: `matches` tells whether an event
        gives a row, `condition` serves the prefilter."""
        self.query = prepared.query.query
        self.index_patterns = prepared.query.index_patterns
        self.fields_read: frozenset[str] = frozenset(prepared.query.fields_read) | {
            field for _, field in plan.inputs.values() if field is not None
        }
        self.group_by: tuple[str, ...] = tuple(group.name for group in plan.groups)
        self.columns: tuple[str, ...] = tuple(name for name, _ in chain.columns)
        self.column_types: tuple[tuple[str, str], ...] = chain.columns
        self.reads_now_before_stats = reads_now
        """Whether NOW() comes before STATS: then a row depends on the run time."""
        self._frames = prepared.frames
        self._from_row = prepared.from_row
        self._inputs = [(name, key) for name, (key, _) in plan.inputs.items()]
        self._plan = plan
        self._chain = chain

    def rows(self, record: CloudTrailRecord | None, now_ms: int | None = None) -> list[Row]:
        """The pre-STATS commands for one event: its rows (none, one, or several after
        MV_EXPAND) of the columns STATS reads. NOW() before STATS is `now_ms` when given,
        else the wall clock (`reads_now_before_stats` tells whether it matters)."""
        token = RUN_TIME.set(now_ms) if now_ms is not None else None
        try:
            frames = self._frames(record)
            return [{name: frame[key] for name, key in self._inputs} for frame in frames]
        finally:
            if token is not None:
                RUN_TIME.reset(token)

    def group_keys(self, row: Row) -> list[GroupKey]:
        """The groups a row belongs to: one per combination of distinct BY values."""
        return self._plan.group_keys(row)

    def new_state(self) -> AggState:
        return self._plan.new_state()

    def add(self, state: AggState, row: Row) -> None:
        self._plan.add(state, row)

    def merge(self, into: AggState, other: AggState) -> None:
        """Adds `other` into `into`; `other` stays as it was."""
        for index, call in enumerate(self._plan.calls):
            into[index] = call.aggregator.merge(into[index], _copy(other[index]))

    def dump(self, state: AggState) -> object:
        """The state as JSON-able data (lists, ints, strings, floats, booleans, null)."""
        calls = self._plan.calls
        return [call.aggregator.dump(part) for call, part in zip(calls, state, strict=True)]

    def load(self, data: object) -> AggState:
        assert isinstance(data, list)
        calls = self._plan.calls
        return [call.aggregator.load(part) for call, part in zip(calls, data, strict=True)]

    def finish(self, groups: Iterable[tuple[GroupKey, AggState]], now_ms: int) -> list[Row]:
        """STATS's output rows for these groups, then the post-STATS commands, with NOW() at
        `now_ms`; display values (dates as ISO-8601 text, addresses as text). Groups are
        taken in order of their keys (nulls first), so the result does not depend on the
        order they come in."""
        token = RUN_TIME.set(now_ms)
        try:
            rows = self._chain.run(self._plan.outputs_of(groups))
        finally:
            RUN_TIME.reset(token)
        kinds = self.column_types
        return [{name: display(kind, row[name]) for name, kind in kinds} for row in rows]

    def run(self, records: Iterable[CloudTrailRecord | None], now_ms: int) -> Table:
        """Table mode: every record into its groups, then `finish`."""
        states: dict[GroupKey, AggState] = {}
        sources: Iterable[CloudTrailRecord | None] = [None] if self._from_row else records
        for record in sources:
            for row in self.rows(record, now_ms):
                for key in self.group_keys(row):
                    state = states.get(key)
                    if state is None:
                        state = states[key] = self.new_state()
                    self.add(state, row)
        rows = self.finish(states.items(), now_ms)
        return Table(self.column_types, [[row[name] for name in self.columns] for row in rows])


def _copy(part: Any) -> Any:
    if isinstance(part, set):
        return set(part)
    if isinstance(part, list):
        return list(part)
    return part


def _reads_now(commands: Iterable[Command]) -> bool:
    exprs: list[Expr] = []
    for command in commands:
        if isinstance(command, Where):
            exprs.append(command.condition)
        elif isinstance(command, Eval):
            exprs.extend(expr for _, expr, _ in command.assignments)
        elif isinstance(command, Grok | Dissect):
            exprs.append(command.operand)
    return any(
        isinstance(node, Call) and node.name == "NOW" for expr in exprs for node in _walk(expr)
    )


def compile_aggregating_query(
    query: str,
    fields: Mapping[str, FieldSpec] = ECS_FIELDS,
    metadata: Mapping[str, FieldSpec] = CLOUDTRAIL_METADATA,
) -> AggregatingQuery:
    """Compile a query with STATS; raises EsqlError (UnsupportedEsqlError for what we cannot
    run: LIMIT before the first STATS, an aggregate function we lack). The first STATS is
    the one whose states add and merge; a later one runs over the rows of `finish`."""
    source, commands = parse(query)
    at = [index for index, command in enumerate(commands) if isinstance(command, Stats)]
    if not at:
        raise source.error("not an aggregating query: it has no STATS", 0)
    stats = commands[at[0]]
    assert isinstance(stats, Stats)
    before = commands[: at[0]]
    for command in before:
        if isinstance(command, Limit):
            raise source.unsupported(
                "LIMIT before STATS (it limits the whole window) is not supported", command.pos
            )
    prepared = prepare(query, source, before, fields, metadata)
    plan = _compile_stats(source, prepared.scope, stats, prepared.unknown)
    stages: list[TableStages | _Plan] = []
    columns = plan.columns
    bounds = [*at, len(commands)]
    for start, end in itertools.pairwise(bounds):
        table = compile_table_stages(source, columns, commands[start + 1 : end], fields)
        stages.append(table)
        columns = list(table.columns)
        if end < len(commands):
            later = commands[end]
            assert isinstance(later, Stats)
            scope = {name: ColumnDef(kind, name, None) for name, kind in columns}
            stages.append(later_plan := _compile_stats(source, scope, later, prepared.unknown))
            columns = later_plan.columns
    chain = _Chain(tuple(stages), tuple(columns))
    return AggregatingQuery(prepared, plan, chain, _reads_now(before))


def _compile_stats(
    source: Source,
    scope: Mapping[str, ColumnDef],
    stats: Stats,
    unknown: Callable[[FieldRef], Exception],
) -> _Plan:
    compiler = _StatsCompiler(source, scope, unknown)
    groups: list[_Group] = []
    origins: dict[str, int] = {}
    last = {name: index for index, (name, _, _) in enumerate(stats.groups)}
    for index, (name, expr, pos) in enumerate(stats.groups):
        if any(isinstance(node, Call) and node.name in AGGREGATE_FUNCTIONS for node in _walk(expr)):
            raise source.error("an aggregate function cannot be a BY group", pos)
        if last[name] != index:  # shadowed by a later BY column of the same name
            continue
        kind, fetch = compiler.row_compiler.value(expr)
        if kind in ("date_period", "time_duration"):
            raise source.error(f"cannot group by a {kind}", pos)
        entry = scope.get(expr.name) if isinstance(expr, FieldRef) else None
        same_as = origins.get(entry.origin) if entry is not None else None
        if entry is not None and same_as is None:
            origins[entry.origin] = len(groups)
        groups.append(_Group(name, kind, fetch, same_as))
    group_types = {group.name: group.type for group in groups}
    compiler.aliases = {group.name: Column(group.type, group.fetch) for group in groups}
    calls: list[_Input] = []
    outputs: dict[str, tuple[str, ValueFn]] = {}
    for aggregate in stats.aggregates:
        outputs.pop(aggregate.name, None)
        outputs[aggregate.name] = _output(source, compiler, aggregate, calls, group_types)
    return _Plan(
        inputs=compiler.inputs,
        groups=tuple(groups),
        calls=tuple(calls),
        outputs=tuple((name, kind, fetch) for name, (kind, fetch) in outputs.items()),
    )


def _output(
    source: Source,
    compiler: _StatsCompiler,
    aggregate: Aggregate,
    calls: list[_Input],
    group_types: Mapping[str, str],
) -> tuple[str, ValueFn]:
    """One STATS output: its aggregate function calls become hidden columns (appended to
    `calls`), the expression around them is compiled over those and the BY columns."""
    hidden: dict[str, str] = {}

    def lift(node: Expr) -> Expr | None:
        if isinstance(node, Call) and node.name in _KNOWN_UNSUPPORTED:
            raise source.unsupported(f"aggregate function {node.name} is not supported", node.pos)
        if not (isinstance(node, Call) and node.name in AGGREGATE_FUNCTIONS):
            return None
        call = compiler.aggregate_call(node, aggregate.filter)
        name = f"{_HIDDEN}{len(calls)}"
        calls.append(call)
        hidden[name] = call.aggregator.type
        return FieldRef(name, node.pos)

    lifted = _replace(aggregate.expr, lift)
    if not hidden and not any(
        isinstance(node, FieldRef) and node.name in group_types for node in _walk(lifted)
    ):
        raise source.error(
            f"'{aggregate.name}' must be an aggregate function or use one", aggregate.pos
        )
    available = {**group_types, **hidden}

    def stats_column(node: FieldRef) -> Column:
        kind = available.get(node.name)
        if kind is None:
            raise source.error(
                f"column '{node.name}' must be a BY group or inside an aggregate function",
                node.pos,
            )
        return Column(kind, itemgetter(node.name))

    return ExprCompiler(source, stats_column).value(lifted)


def is_aggregating(query: str) -> bool:
    """Whether the query has a STATS command; raises EsqlError like `parse`."""
    return any(isinstance(command, Stats) for command in parse(query)[1])


def compile_esql(
    query: str,
    fields: Mapping[str, FieldSpec] = ECS_FIELDS,
    metadata: Mapping[str, FieldSpec] = CLOUDTRAIL_METADATA,
) -> CompiledQuery | AggregatingQuery:
    """A rule's ES|QL: an AggregatingQuery when it has STATS, else a CompiledQuery."""
    if is_aggregating(query):
        return compile_aggregating_query(query, fields, metadata)
    return compile_query(query, fields, metadata)
