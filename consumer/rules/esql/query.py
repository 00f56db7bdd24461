"""An ES|QL query compiled over a source of rows: verdicts one event at a time, or a table.

A source of rows is a registry of fields (name -> FieldSpec: name, mapping type, extract(row)),
read lazily: a row pays only for the fields the query reads. CloudTrail records are one source
(`consumer.cloudtrail.normalize.ECS_FIELDS`), the csv-spec harness's tables another.

Two ways to run a query:
- streaming (`matches`, `evaluate`): a non-aggregating rule judges one event at a time, so SORT
  and LIMIT n > 0 never change a verdict (Elastic's max_signals throttle lives elsewhere) and
  LIMIT 0 never matches;
- table (`run`): SORT and LIMIT apply over the whole result, with ES|QL's default LIMIT 1000
  when the query has none.
The leading WHERE commands read the record's extractors directly (the fast path of a typical
rule); later commands work on a frame that caches each field read and holds computed columns.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from typing import Any, Protocol

from consumer.cloudtrail.normalize import ECS_FIELDS
from consumer.rules import patterns
from consumer.rules.esql.compiler import (
    Column,
    ExprCompiler,
    Predicate,
    ValueFn,
    all_true,
    single,
)
from consumer.rules.esql.syntax import (
    Arith,
    Call,
    Command,
    Compare,
    Const,
    Dissect,
    Drop,
    Eval,
    Expr,
    FieldRef,
    From,
    Grok,
    InList,
    IsNull,
    Keep,
    Limit,
    Logical,
    Match,
    MvExpand,
    NamePattern,
    Neg,
    Not,
    Rename,
    Row,
    Sort,
    Source,
    Stats,
    Where,
    parse,
)
from consumer.rules.esql.values import (
    NORMALIZERS,
    STRING_TYPES,
    display,
    field_type,
)

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
MAX_EXPANDED_ROWS = 10_000
"""Rows MV_EXPAND may make of one record: each expansion multiplies them, and a stream must
not let one event hold a worker."""


class FieldSpec(Protocol):
    """One field of a row source."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def extract(self) -> Callable[[Any], Any]: ...


@dataclass(frozen=True, slots=True)
class RowField:
    """A FieldSpec for sources other than CloudTrail (tables, metadata)."""

    name: str
    type: str
    extract: Callable[[Any], Any]


def _cloudtrail_index(record: dict[str, Any]) -> str:
    namespace = ECS_FIELDS.get("data_stream.namespace")
    value = namespace.extract(record) if namespace is not None else None
    return f"logs-aws.cloudtrail-{value if isinstance(value, str) else 'default'}"


CLOUDTRAIL_METADATA: Mapping[str, FieldSpec] = {
    "_id": RowField("_id", "keyword", lambda record: record.get("eventID") or None),
    "_index": RowField("_index", "keyword", _cloudtrail_index),
    "_version": RowField("_version", "long", lambda _record: 1),
}
"""METADATA for CloudTrail: `_id` is the event's eventID, `_index` its data stream's name and
`_version` 1 (a stream event is never updated)."""


@dataclass(frozen=True, slots=True)
class Table:
    """A query's result in table mode: columns (name, ES|QL type) and rows of display values."""

    columns: tuple[tuple[str, str], ...]
    rows: list[list[Any]]


@dataclass(frozen=True, slots=True)
class CompiledQuery:
    """A query ready to judge records; built once by `compile_query`."""

    query: str
    index_patterns: tuple[str, ...]
    condition: Expr
    """Every WHERE joined by AND, columns spelled as the source fields they show unchanged and
    computed columns as opaque `Call("<computed>")` nodes: for static analysis (the prefilter)."""
    fields_read: tuple[str, ...]
    """Source fields the query reads, in order of first use."""
    field_specs: Mapping[str, FieldSpec]
    """The registry entries of `fields_read`."""
    keep_fields: tuple[str, ...]
    """Source fields in the output of a query with KEEP, to copy into an alert."""
    matches: Predicate
    """True exactly when the query would output a row for this record."""
    columns: tuple[tuple[str, str], ...] = ()
    """Output columns (name, ES|QL type)."""
    _evaluate: Callable[[Any], dict[str, Any] | None] | None = field(default=None, repr=False)
    _run: Callable[[Iterable[Any]], list[list[Any]]] | None = field(default=None, repr=False)
    """Set by `compile_query`; a query built elsewhere (KQL) has only a verdict, so its row
    is empty."""

    def evaluate(self, record: Any) -> dict[str, Any] | None:
        """The output row for one record (display values, nulls included), or None when the
        query drops the record."""
        if self._evaluate is None:
            return {} if self.matches(record) else None
        return self._evaluate(record)

    def run(self, records: Iterable[Any]) -> Table:
        """Table mode: every record through the whole pipeline, SORT and LIMIT included."""
        if self._run is None:
            matched = (record for record in records if self.matches(record))
            return Table(self.columns, [[] for _ in islice(matched, DEFAULT_LIMIT)])
        return Table(self.columns, self._run(records))


# --- frames ---------------------------------------------------------------------------------


class _Frame(dict[str, Any]):
    """One row in flight: source fields read on first use, computed columns by slot."""

    __slots__ = ("fetchers", "record")

    def __init__(self, record: Any, fetchers: dict[str, ValueFn]) -> None:
        super().__init__()
        self.record = record
        self.fetchers = fetchers

    def __missing__(self, key: str) -> Any:
        value = self.fetchers[key](self.record)
        self[key] = value
        return value

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> _Frame:
        """A frame holding computed columns only."""
        frame = cls(None, {})
        frame.update(values)
        return frame


def _many(values: list[Any], kind: str) -> Any:
    """A list from a source as ES|QL reads it: values of the wrong type dropped, keyword values
    sorted and deduplicated and other doc values sorted (as Elasticsearch's doc values are),
    text in source order; then one value is a single value and none is null."""
    normalize = NORMALIZERS[kind]
    converted = [item for item in map(normalize, values) if item is not None]
    if kind == "keyword":
        converted = sorted(set(converted))
    elif kind != "text":
        converted.sort()
    return single(converted)


def fetcher(extract: Callable[[Any], Any], kind: str) -> ValueFn:
    """Source value -> engine value (see values.py) for a field of ES|QL type `kind`."""
    normalize = NORMALIZERS[kind]
    if kind in STRING_TYPES:

        def fetch_text(ctx: Any) -> Any:
            value = extract(ctx)
            if value is None or value.__class__ is str:
                return value
            if value.__class__ is list:
                return _many(value, kind)
            return normalize(value)

        return fetch_text

    def fetch(ctx: Any) -> Any:
        value = extract(ctx)
        if value is None:
            return None
        if value.__class__ is list:
            return _many(value, kind)
        return normalize(value)

    return fetch


def _absent(_record: Any) -> None:
    return None


# --- compilation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnDef:
    """A column of the pipeline at some point: its type, frame key and source field if any."""

    type: str
    key: str
    source: str | None
    same_as: str | None = None
    """The frame key of the column it copies (`EVAL b = a`): always the same value, which
    STATS BY needs to know (grouping by a column and its copy makes one group per value)."""

    @property
    def origin(self) -> str:
        return self.same_as or self.key


_OPAQUE = "<computed>"


class _Pipeline:
    def __init__(
        self,
        source: Source,
        fields: Mapping[str, FieldSpec],
        metadata: Mapping[str, FieldSpec],
    ) -> None:
        self.source = source
        self.fields = fields
        self.metadata = metadata
        self.read: dict[str, FieldSpec] = {}
        self.fetchers: dict[str, ValueFn] = {}
        self.scope: dict[str, ColumnDef] = {}
        self.slots = 0
        self.conditions: list[Expr] = []

    # names

    def not_derived(self, name: str, pos: int) -> Exception:
        close = difflib.get_close_matches(name, list(self.fields), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return self.source.unsupported(f"field '{name}' is not derived{hint}", pos)

    def source_spec(self, name: str, pos: int) -> tuple[FieldSpec, str]:
        spec = self.fields.get(name) or self.metadata.get(name)
        if spec is None:
            raise self.not_derived(name, pos)
        kind = field_type(spec.type)
        if kind.startswith("unsupported:"):
            raise self.source.unsupported(
                f"field '{name}' has type {kind.split(':', 1)[1]}, which is not supported", pos
            )
        return spec, kind

    def record_column(self, node: FieldRef) -> Column:
        """Phase 0: a field read straight from the source record."""
        if node.name in self.metadata and node.name not in self.scope:
            raise self.source.error(f"unknown column '{node.name}' (not in METADATA)", node.pos)
        spec, kind = self.source_spec(node.name, node.pos)
        self.read.setdefault(node.name, spec)
        return Column(kind, fetcher(spec.extract, kind), spec.extract)

    def unknown(self, node: FieldRef) -> Exception:
        """A name not in scope: an error for a source field no longer a column, else a field
        we do not derive (Elasticsearch may have it)."""
        if node.name in self.fields:
            return self.source.error(f"unknown column '{node.name}'", node.pos)
        return self.not_derived(node.name, node.pos)

    def frame_column(self, node: FieldRef) -> Column:
        entry = self.scope.get(node.name)
        if entry is None:
            raise self.unknown(node)
        if entry.type.startswith("unsupported:"):
            raise self.source.unsupported(
                f"column '{node.name}' has type {entry.type.split(':', 1)[1]}, "
                "which is not supported",
                node.pos,
            )
        if entry.source is not None:
            self.read.setdefault(
                entry.source, self.fields.get(entry.source) or self.metadata[entry.source]
            )
        return Column(entry.type, itemgetter(entry.key))

    def add_source_columns(self, names: Iterable[str], registry: Mapping[str, FieldSpec]) -> None:
        for name in names:
            spec = registry[name]
            kind = field_type(spec.type)
            self.scope[name] = ColumnDef(kind, name, name)
            if kind.startswith("unsupported:"):  # shown as null, as Elasticsearch does
                self.fetchers[name] = _absent
            else:
                self.fetchers[name] = fetcher(spec.extract, kind)

    def slot(self) -> str:
        self.slots += 1
        return f"#{self.slots}"

    def redefine(self, name: str) -> str:
        """A new frame key for a column whose values change in place (MV_EXPAND): no longer
        the source field it showed, nor a copy of another column."""
        key = self.slot()
        self.scope[name] = ColumnDef(self.scope[name].type, key, None)
        return key

    def define(self, name: str, kind: str, same_as: str | None = None) -> str:
        key = self.slot()
        self.scope.pop(name, None)
        self.scope[name] = ColumnDef(kind, key, None, same_as)
        return key

    # conditions for static analysis

    def source_level(self, node: Expr) -> Expr:
        """`node` with each column spelled as its source field, computed ones made opaque."""
        if isinstance(node, FieldRef):
            entry = self.scope.get(node.name)
            if entry is not None and entry.source is not None and entry.source in self.fields:
                return FieldRef(entry.source, node.pos)
            return Call(_OPAQUE, (), node.pos)
        if isinstance(node, Call):
            return Call(node.name, tuple(map(self.source_level, node.args)), node.pos)
        if isinstance(node, Compare):
            return Compare(
                node.op, self.source_level(node.left), self.source_level(node.right), node.pos
            )
        if isinstance(node, Arith):
            return Arith(
                node.op, self.source_level(node.left), self.source_level(node.right), node.pos
            )
        if isinstance(node, Logical):
            return Logical(node.op, tuple(map(self.source_level, node.operands)), node.pos)
        if isinstance(node, Not):
            return Not(self.source_level(node.operand), node.pos)
        if isinstance(node, Neg):
            return Neg(self.source_level(node.operand), node.pos)
        if isinstance(node, IsNull):
            return IsNull(self.source_level(node.operand), node.negated, node.pos)
        if isinstance(node, InList):
            items = tuple(map(self.source_level, node.items))
            return InList(self.source_level(node.operand), items, node.negated, node.pos)
        if isinstance(node, Match):
            operand = self.source_level(node.operand)
            return Match(operand, node.pattern, node.regex, node.negated, node.pos)
        return node

    # name patterns

    def matching(self, pattern: NamePattern) -> list[str]:
        if not pattern.wildcard:
            if pattern.text in self.scope:
                return [pattern.text]
            if pattern.text in self.fields or pattern.text in self.metadata:
                raise self.source.error(f"unknown column '{pattern.text}'", pattern.pos)
            raise self.not_derived(pattern.text, pattern.pos)
        regex = re.compile(".*".join(re.escape(part) for part in pattern.text.split("*")))
        found = [name for name in self.scope if regex.fullmatch(name)]
        if not found:
            raise self.source.error(f"no field matches the pattern '{pattern.text}'", pattern.pos)
        return found

    def keep(self, command: Keep) -> None:
        chosen: dict[str, tuple[int, int]] = {}
        for index, pattern in enumerate(command.patterns):
            rank = 0 if not pattern.wildcard else 2 if pattern.text == "*" else 1
            for name in self.matching(pattern):
                previous = chosen.get(name)
                if previous is None or rank <= previous[0]:
                    chosen[name] = (rank, index)
        order = sorted(chosen, key=lambda name: chosen[name][1])
        self.scope = {name: self.scope[name] for name in order}

    def drop(self, command: Drop) -> None:
        dropped = [name for pattern in command.patterns for name in self.matching(pattern)]
        for name in dropped:
            self.scope.pop(name, None)

    def rename(self, command: Rename) -> None:
        for old, new in command.pairs:
            if old.wildcard or new.wildcard:
                raise self.source.unsupported("RENAME with wildcards is not supported", old.pos)
            (name,) = self.matching(old)
            entry = self.scope[name]
            renamed: dict[str, ColumnDef] = {}
            for key, value in self.scope.items():
                if key == name:
                    renamed[new.text] = entry
                elif key != new.text:
                    renamed[key] = value
            self.scope = renamed


_RowStage = Callable[[_Frame], bool]


@dataclass(slots=True)
class _Stages:
    """The commands after the fast path, as per-row steps and whole-table steps."""

    steps: list[tuple[str, Any]] = field(default_factory=list)
    filters: bool = False
    expands: bool = False
    """MV_EXPAND: one record may give several rows."""
    limit_zero: bool = False
    has_limit: bool = False


def compile_query(
    query: str,
    fields: Mapping[str, FieldSpec] = ECS_FIELDS,
    metadata: Mapping[str, FieldSpec] = CLOUDTRAIL_METADATA,
) -> CompiledQuery:
    """Parse, type-check and compile a query against a row source; raises EsqlError
    (UnsupportedEsqlError for valid ES|QL this engine cannot run, or a field not derived)."""
    source, commands = parse(query)
    return prepare(query, source, commands, fields, metadata).query


@dataclass(frozen=True, slots=True)
class Prepared:
    """Commands compiled over a row source: the query they make and, for what follows them
    (STATS, see aggregate.py), each record's frame after their per-row steps and the columns
    in scope with their types and frame keys."""

    query: CompiledQuery
    frames: Callable[[Any], list[Any]]
    scope: Mapping[str, ColumnDef]
    unknown: Callable[[FieldRef], Exception]
    """The error for a name not in scope."""
    from_row: bool
    """A ROW query: its one frame whatever the record."""


def prepare(
    query: str,
    source: Source,
    commands: list[Command],
    fields: Mapping[str, FieldSpec],
    metadata: Mapping[str, FieldSpec],
) -> Prepared:
    """Compile parsed commands (a source command first) against a row source."""
    pipeline = _Pipeline(source, fields, metadata)
    first = commands[0]
    rest = commands[1:]
    prefix_tests: list[Predicate] = []
    index_patterns: tuple[str, ...] = ()
    row: dict[str, Any] | None = None
    if isinstance(first, From):
        index_patterns = first.patterns
        pipeline.add_source_columns(sorted(fields), fields)
        declared = [entry.text for entry in first.metadata]
        for name in declared:
            if name not in metadata:
                raise source.unsupported(f"METADATA {name} is not supported", first.pos)
        pipeline.add_source_columns(declared, metadata)
        record_compiler = ExprCompiler(source, pipeline.record_column)
        while rest and isinstance(rest[0], Where):
            where = rest[0]
            is_true, _ = record_compiler.truth(where.condition)
            prefix_tests.append(is_true)
            pipeline.conditions.append(where.condition)
            rest = rest[1:]
    else:
        assert isinstance(first, Row)
        row = _row_values(pipeline, first)
    stages = _compile_stages(pipeline, rest)
    prefix = _conjunction(prefix_tests)
    fetchers = pipeline.fetchers
    output = [
        (name, "unsupported" if entry.type.startswith("unsupported:") else entry.type, entry.key)
        for name, entry in pipeline.scope.items()
    ]
    steps = [step for kind, step in stages.steps if kind == "row"]

    def through(frame: _Frame) -> bool:
        return all(step(frame) for step in steps)

    def emit(frame: _Frame) -> dict[str, Any]:
        return {name: display(kind, frame[key]) for name, kind, key in output}

    row_values = row or {}

    def new_frame(record: Any) -> _Frame:
        """A frame for one record; a ROW query's frame holds its one row whatever the record."""
        frame = _Frame(record, fetchers)
        frame.update(row_values)
        return frame

    per_row = [(kind, step) for kind, step in stages.steps if kind in ("row", "expand")]

    def frames_of(record: Any) -> list[_Frame]:
        """The rows one record gives, before any SORT or LIMIT."""
        if not prefix(record):
            return []
        if not stages.expands:
            frame = new_frame(record)
            return [frame] if through(frame) else []
        frames = [new_frame(record)]
        for kind, step in per_row:
            if kind == "row":
                frames = [frame for frame in frames if step(frame)]
            else:
                frames = [row for frame in frames for row in step(frame)]
                if len(frames) > MAX_EXPANDED_ROWS:
                    raise source.unsupported(
                        f"MV_EXPAND gives more than {MAX_EXPANDED_ROWS} rows for one record",
                        step.pos,
                    )
        return frames

    def evaluate(record: Any) -> dict[str, Any] | None:
        """The record's first row: a stream alerts once per event."""
        if stages.limit_zero:
            return None
        frames = frames_of(record)
        return emit(frames[0]) if frames else None

    if stages.limit_zero:
        matches: Predicate = lambda _record: False  # noqa: E731
    elif stages.expands:
        matches = lambda record: bool(frames_of(record))  # noqa: E731
    elif stages.filters:
        matches = lambda record: prefix(record) and through(new_frame(record))  # noqa: E731
    else:
        matches = prefix

    def run(records: Iterable[Any]) -> list[list[Any]]:
        if row is not None:
            frames = [new_frame(None)]
        else:
            frames = [new_frame(record) for record in records if prefix(record)]
        frames = _apply(stages, frames)
        return [[display(kind, frame[key]) for _name, kind, key in output] for frame in frames]

    condition: Expr
    if not pipeline.conditions:
        condition = Const(True, 0)
    elif len(pipeline.conditions) == 1:
        condition = pipeline.conditions[0]
    else:
        condition = Logical("AND", tuple(pipeline.conditions), 0)
    source_outputs = [entry.source for entry in pipeline.scope.values() if entry.source in fields]
    keeps = any(isinstance(command, Keep) for command in commands)
    compiled = CompiledQuery(
        query=query,
        index_patterns=index_patterns,
        condition=condition,
        fields_read=tuple(pipeline.read),
        field_specs=dict(pipeline.read),
        keep_fields=tuple(str(name) for name in source_outputs) if keeps else (),
        matches=matches,
        columns=tuple((name, kind) for name, kind, _key in output),
        _evaluate=evaluate,
        _run=run,
    )
    scope = dict(pipeline.scope)
    return Prepared(compiled, frames_of, scope, pipeline.unknown, row is not None)


def _apply(stages: _Stages, frames: Iterable[Any]) -> list[Any]:
    """Table mode: every step over the whole table, ES|QL's default LIMIT when none is given.
    Rows flow lazily up to a SORT, so a LIMIT stops MV_EXPAND early."""
    rows: Iterator[Any] = iter(frames)
    for kind, step in stages.steps:
        if kind == "row":
            rows = filter(step, rows)
        elif kind == "expand":
            rows = _expanded(step, rows)
        elif kind == "sort":
            rows = iter(step(list(rows)))
        else:
            rows = islice(rows, step)
    if not stages.has_limit:
        rows = islice(rows, DEFAULT_LIMIT)
    return list(rows)


def _expanded(step: Callable[[Any], list[Any]], rows: Iterator[Any]) -> Iterator[Any]:
    for frame in rows:
        yield from step(frame)


@dataclass(frozen=True, slots=True)
class TableStages:
    """Commands compiled over a table of given columns (the output of STATS)."""

    columns: tuple[tuple[str, str], ...]
    """Output columns (name, ES|QL type)."""
    run: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    """Input rows -> output rows (column name -> engine value)."""


def compile_table_stages(
    source: Source,
    columns: Iterable[tuple[str, str]],
    commands: list[Command],
    fields: Mapping[str, FieldSpec],
) -> TableStages:
    """Processing commands over a table; `fields` only tell apart a source field that is no
    longer a column (an error) from one the source lacks."""
    pipeline = _Pipeline(source, fields, {})
    keys = {name: pipeline.define(name, kind) for name, kind in columns}
    stages = _compile_stages(pipeline, commands)
    output = [
        (name, "unsupported" if entry.type.startswith("unsupported:") else entry.type, entry.key)
        for name, entry in pipeline.scope.items()
    ]

    def run(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        frames = (_Frame.of({keys[name]: value for name, value in row.items()}) for row in rows)
        table = _apply(stages, frames)
        return [{name: frame[key] for name, _kind, key in output} for frame in table]

    return TableStages(tuple((name, kind) for name, kind, _ in output), run)


def _conjunction(tests: list[Predicate]) -> Predicate:
    if not tests:
        return lambda _record: True
    return all_true(tuple(tests))


def _row_values(pipeline: _Pipeline, row: Row) -> dict[str, Any]:
    values: dict[str, Any] = {}
    compiler = ExprCompiler(pipeline.source, pipeline.frame_column)
    for name, expr, pos in row.assignments:
        kind, fetch = compiler.value(expr)
        _check_storable(pipeline, kind, pos)
        key = pipeline.define(name, kind)
        frame = _Frame(None, pipeline.fetchers)
        frame.update(values)
        values[key] = fetch(frame)
    return values


def _check_storable(pipeline: _Pipeline, kind: str, pos: int) -> None:
    if kind in ("date_period", "time_duration"):
        raise pipeline.source.unsupported(f"a column of type {kind} is not supported", pos)


def _compile_stages(pipeline: _Pipeline, commands: list[Command]) -> _Stages:
    stages = _Stages()
    compiler = ExprCompiler(pipeline.source, pipeline.frame_column)
    for command in commands:
        if isinstance(command, Where):
            is_true, _ = compiler.truth(command.condition)
            pipeline.conditions.append(pipeline.source_level(command.condition))
            stages.steps.append(("row", is_true))
            stages.filters = True
        elif isinstance(command, Eval):
            for name, expr, pos in command.assignments:
                kind, fetch = compiler.value(expr)
                _check_storable(pipeline, kind, pos)
                copied = pipeline.scope.get(expr.name) if isinstance(expr, FieldRef) else None
                same_as = copied.origin if copied is not None else None
                key = pipeline.define(name, kind, same_as)
                stages.steps.append(("row", _assign(key, fetch)))
        elif isinstance(command, Grok | Dissect):
            stages.steps.append(("row", _extract_step(pipeline, compiler, command)))
        elif isinstance(command, Keep):
            pipeline.keep(command)
        elif isinstance(command, Drop):
            pipeline.drop(command)
        elif isinstance(command, Rename):
            pipeline.rename(command)
        elif isinstance(command, Sort):
            stages.steps.append(("sort", _sorter(compiler, command)))
        elif isinstance(command, Limit):
            stages.has_limit = True
            stages.limit_zero = stages.limit_zero or command.count == 0
            stages.steps.append(("limit", min(command.count, MAX_LIMIT)))
        elif isinstance(command, MvExpand):
            stages.steps.append(("expand", _expand_step(pipeline, command)))
            stages.expands = True
        elif isinstance(command, Stats):
            raise pipeline.source.unsupported(
                "aggregating rule: needs stateful evaluation", command.pos
            )
        else:
            raise pipeline.source.error("a source command must come first", command.pos)
    return stages


def _expand_step(pipeline: _Pipeline, command: MvExpand) -> _Expand:
    """One row per value of a multi-valued column (a null or single value: the row as is)."""
    (name,) = pipeline.matching(command.column)
    old = pipeline.scope[name].key
    key = pipeline.redefine(name)

    return _Expand(old, key, command.pos)


@dataclass(frozen=True, slots=True)
class _Expand:
    old: str
    key: str
    pos: int

    def __call__(self, frame: _Frame) -> list[_Frame]:
        value = frame[self.old]
        if value.__class__ is not list:
            frame[self.key] = value
            return [frame]
        out: list[_Frame] = []
        for item in value:
            copy = _Frame(frame.record, frame.fetchers)
            copy.update(frame)
            copy[self.key] = item
            out.append(copy)
        return out


def _assign(key: str, fetch: ValueFn) -> _RowStage:
    def step(frame: _Frame) -> bool:
        frame[key] = fetch(frame)
        return True

    return step


def _extract_step(
    pipeline: _Pipeline, compiler: ExprCompiler, command: Grok | Dissect
) -> _RowStage:
    verb = "GROK" if isinstance(command, Grok) else "DISSECT"
    kind, fetch = compiler.value(command.operand)
    if kind not in STRING_TYPES and kind != "null":
        raise compiler.error(
            f"{verb} needs a string, found {compiler.describe(command.operand, kind)}",
            command.operand,
        )
    try:
        if isinstance(command, Grok):
            extractor: patterns.Grok | patterns.Dissect = patterns.compile_grok(command.pattern)
        else:
            extractor = patterns.compile_dissect(command.pattern, command.append_separator)
    except patterns.UnsupportedPatternError as problem:
        raise pipeline.source.unsupported(
            f"{verb} pattern: {problem}", command.pattern_pos
        ) from None
    except patterns.PatternError as problem:
        raise pipeline.source.error(
            f"invalid {verb} pattern: {problem}", command.pattern_pos
        ) from None
    columns = extractor.columns
    keys = [(name, pipeline.define(name, field_type(column_type))) for name, column_type in columns]

    def step(frame: _Frame) -> bool:
        value = fetch(frame)
        found: list[dict[str, Any]] = []
        for text in value if value.__class__ is list else (value,):
            if text.__class__ is str:
                result = extractor(text)
                if result is not None:
                    found.append(result)
        for name, key in keys:
            values = [result[name] for result in found if result.get(name) is not None]
            flat = [item for v in values for item in (v if v.__class__ is list else [v])]
            frame[key] = single(flat)
        return True

    return step


def _sorter(compiler: ExprCompiler, command: Sort) -> Callable[[list[_Frame]], list[_Frame]]:
    keys = [(compiler.value(key.expr)[1], key.ascending, key.nulls_first) for key in command.keys]

    def sort(frames: list[_Frame]) -> list[_Frame]:
        ordered = list(frames)
        for fetch, ascending, nulls_first in reversed(keys):
            null_rank = (0,) if nulls_first == ascending else (2,)

            def key(
                frame: _Frame,
                fetch: ValueFn = fetch,
                ascending: bool = ascending,
                null_rank: tuple[int] = null_rank,
            ) -> Any:
                value = fetch(frame)
                if value is None:
                    return null_rank
                if value.__class__ is list:
                    value = min(value) if ascending else max(value)
                return (1, value)

            ordered.sort(key=key, reverse=not ascending)
        return ordered

    return sort
