"""Elastic's rule exceptions and value lists, read from files and judged on CloudTrail records.

An exception item is a list of entries, ANDed; a rule's items are ORed; the rule alerts on
`query AND NOT (item1 OR item2 ...)`. Each entry is translated the way Kibana's
`build_exception_filter` turns it into an Elasticsearch filter, and judged as Elasticsearch
would judge that filter on the ECS document:

- `match` is a `match_phrase`, `match_any` an OR of them: on keyword fields an exact,
  case-sensitive comparison; on `ip` fields a term query, so a CIDR value matches its network;
- `wildcard` is a `wildcard` query (`*`, `?`, `\\` escapes), whole value, case-sensitive;
- `exists` is an `exists` query;
- `list` is a `terms` query over a value list (`keyword`, `ip`) or, for `ip_range`, a `range` per
  dash-notation entry plus `terms` for CIDR entries;
- `excluded` wraps the clause in `must_not`, so an excluded entry holds for a missing field;
- any value of a multi-valued field may match, as in Elasticsearch.

`nested` entries need a field mapped as `nested`; no field derived from CloudTrail is, and
Elasticsearch fails a rule run whose filter names one, so they are refused when files load.
Exceptions read the source event's fields: for ES|QL rules Kibana applies them as a filter
before the query, so a column made by EVAL, GROK or STATS is never visible to them. A field the
detector does not derive is refused rather than guessed as absent.

Files follow detection-rules: an exception list is a TOML file with `[metadata]` (`list_name`,
`rule_ids`, ...) and `[[exceptions]]` holding `[exceptions.container]` and
`[[exceptions.items]]`. A rule uses a list when its `[[rule.exceptions_list]]` names the
container's `list_id`, or when the file's `metadata.rule_ids` names the rule. A value list is any
other file in the directory, one value a line, known by its file name (Kibana names an imported
value list after its file).
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from consumer.cloudtrail.normalize import ECS_FIELDS, EcsField
from consumer.cloudtrail.types import CloudTrailRecord, EcsValue
from consumer.rules.loader import LoadedRule
from consumer.rules.patterns import like
from consumer.times import parse_iso_utc

Test = Callable[[CloudTrailRecord], bool]
ValueListType = Literal["keyword", "ip", "ip_range", "text"]


class ExceptionLoadError(ValueError):
    """Exception files or value lists are invalid; one problem per line, each naming its file."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- files, as detection-rules writes them ---------------------------------------------------


class _Elastic(BaseModel):
    """Elastic's own keys we do not use (comments, tags, meta, os_types...) are accepted."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class ListReference(_Elastic):
    id: str = Field(min_length=1)
    type: ValueListType


class Entry(_Elastic):
    field: str = Field(min_length=1)
    type: Literal["match", "match_any", "exists", "list", "wildcard", "nested"]
    operator: Literal["included", "excluded"] = "included"
    value: str | list[str] | None = None
    list_ref: ListReference | None = Field(default=None, alias="list")
    list_vals: ListReference | None = None
    """detection-rules' TOML spelling of `list`."""
    entries: list[Entry] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Entry:
        if self.type in ("match", "wildcard") and not isinstance(self.value, str):
            raise ValueError(f"a {self.type} entry needs a string value")
        if self.type == "match_any" and not (isinstance(self.value, list) and self.value):
            raise ValueError("a match_any entry needs a non-empty list of values")
        if self.type == "list" and self.list_ref is None and self.list_vals is None:
            raise ValueError("a list entry needs `list = { id = ..., type = ... }`")
        if self.type == "nested" and not self.entries:
            raise ValueError("a nested entry needs entries")
        return self

    @property
    def value_list(self) -> ListReference | None:
        return self.list_ref or self.list_vals


class Item(_Elastic):
    name: str = Field(min_length=1)
    item_id: str | None = None
    list_id: str | None = None
    description: str = ""
    entries: list[Entry] = Field(min_length=1)
    expire_time: datetime | None = None


class Container(_Elastic):
    list_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    description: str = ""
    type: str = "detection"


class ExceptionData(_Elastic):
    container: Container
    items: list[Item] = []


class ExceptionMetadata(_Elastic):
    list_name: str = Field(min_length=1)
    rule_ids: list[str] = []
    rule_names: list[str] = []


class ExceptionFile(_Elastic):
    metadata: ExceptionMetadata
    exceptions: list[ExceptionData] = Field(min_length=1)


# --- compiled form ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledItem:
    """One exception item, ready to judge records."""

    list_id: str
    item_id: str
    """The item's `item_id`, else its position in the list: a stable, user-free metric label."""
    name: str
    source: str
    expire_time: datetime | None
    applies: Test

    def active(self, now: datetime) -> bool:
        """Kibana drops expired items before a rule runs."""
        return self.expire_time is None or now < self.expire_time


@dataclass(frozen=True, slots=True)
class RuleExceptions:
    """The items attached to one rule, in file order."""

    items: tuple[CompiledItem, ...]

    def excluding(self, record: CloudTrailRecord, now: datetime) -> CompiledItem | None:
        """The first active item that removes this record's match, if any."""
        for item in self.items:
            if item.active(now) and item.applies(record):
                return item
        return None


@dataclass(frozen=True, slots=True)
class ExceptionSet:
    """Every rule's exceptions, plus a digest of the files they came from (to log a reload)."""

    by_rule: Mapping[str, RuleExceptions]
    digest: str
    warnings: tuple[str, ...] = ()
    """What loaded but does not apply (a list naming a rule that is not loaded), to be logged."""

    @property
    def item_count(self) -> int:
        return sum(len(exceptions.items) for exceptions in self.by_rule.values())

    def excluding(
        self, rule_id: str, record: CloudTrailRecord, now: datetime
    ) -> CompiledItem | None:
        exceptions = self.by_rule.get(rule_id)
        return None if exceptions is None else exceptions.excluding(record, now)


NO_EXCEPTIONS = ExceptionSet({}, "")


@dataclass(frozen=True, slots=True)
class RuleLink:
    """What attaching exceptions needs to know of a rule."""

    rule_id: str
    list_ids: tuple[str, ...]
    """`list_id` of each `[[rule.exceptions_list]]` entry."""
    inline_items: tuple[Mapping[str, Any], ...] = ()
    """Items written in the rule file's `[detector]` table."""
    source: str = ""


# --- value lists -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _IpRanges:
    """Merged, sorted inclusive ranges per address family, searched with bisect."""

    starts: tuple[tuple[int, ...], tuple[int, ...]]
    ends: tuple[tuple[int, ...], tuple[int, ...]]

    @classmethod
    def of(cls, ranges: Iterable[tuple[int, int, int]]) -> _IpRanges:
        merged: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
        for family, start, end in sorted(ranges):
            spans = merged[family]
            if spans and start <= spans[-1][1] + 1:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
        return cls(
            (tuple(s for s, _ in merged[0]), tuple(s for s, _ in merged[1])),
            (tuple(e for _, e in merged[0]), tuple(e for _, e in merged[1])),
        )

    def __contains__(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        family = 0 if address.version == 4 else 1
        number = int(address)
        at = bisect.bisect_right(self.starts[family], number) - 1
        return at >= 0 and number <= self.ends[family][at]


def _network_span(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int, int]:
    return (
        0 if network.version == 4 else 1,
        int(network.network_address),
        int(network.broadcast_address),
    )


def _parse_range(text: str) -> tuple[int, int, int]:
    """`10.0.0.0/8`, `10.0.0.1-10.0.0.9` or a single address, as (family, first, last)."""
    if "-" in text:
        first_text, last_text = (part.strip() for part in text.split("-", 1))
        first, last = ipaddress.ip_address(first_text), ipaddress.ip_address(last_text)
        if first.version != last.version or int(last) < int(first):
            raise ValueError(f"{text!r} is not a range from a lower to a higher address")
        return (0 if first.version == 4 else 1, int(first), int(last))
    return _network_span(ipaddress.ip_network(text, strict=False))


@dataclass(frozen=True, slots=True)
class ValueList:
    """A value list's lines, parsed for the type an entry reads it as."""

    list_id: str
    type: ValueListType
    keywords: frozenset[str]
    ranges: _IpRanges | None

    def __len__(self) -> int:
        return len(self.keywords) if self.ranges is None else sum(map(len, self.ranges.starts))


def read_value_list(path: Path, list_type: ValueListType) -> ValueList:
    """One value a line (blank lines skipped); raises ValueError naming the line."""
    lines = [
        (number, line.strip())
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if line.strip()
    ]
    if list_type in ("keyword", "text"):
        return ValueList(path.name, list_type, frozenset(value for _, value in lines), None)
    spans = []
    for number, value in lines:
        try:
            if list_type == "ip":
                address = ipaddress.ip_address(value)
                spans.append(_network_span(ipaddress.ip_network(address)))
            else:
                spans.append(_parse_range(value))
        except ValueError as problem:
            raise ValueError(f"line {number}: not an {list_type} value: {problem}") from None
    return ValueList(path.name, list_type, frozenset(), _IpRanges.of(spans))


# --- entries -> tests ------------------------------------------------------------------------


def _values(field: EcsField) -> Callable[[CloudTrailRecord], list[Any]]:
    extract = field.extract

    def values(record: CloudTrailRecord) -> list[Any]:
        value: EcsValue = extract(record)
        if value is None:
            return []
        return value if isinstance(value, list) else [value]

    return values


def _address(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _equals(field: EcsField, text: str) -> Callable[[object], bool]:
    """`match_phrase` of one value against one field value, by the field's type."""
    if field.type == "ip":
        network = ipaddress.ip_network(text, strict=False)
        return lambda value: (address := _address(value)) is not None and address in network
    if field.type == "long":
        number = int(text)
        return lambda value: value == number
    if field.type == "boolean":
        if text not in ("true", "false"):
            raise ValueError(f"{text!r} is not a boolean")
        flag = text == "true"
        return lambda value: value is flag
    if field.type == "date":
        moment = parse_iso_utc(text)
        if moment is None:
            raise ValueError(f"{text!r} is not an ISO-8601 date")
        return lambda value: parse_iso_utc(value) == moment
    return lambda value: value == text


def _any_value(
    values: Callable[[CloudTrailRecord], list[Any]], test: Callable[[Any], bool]
) -> Test:
    return lambda record: any(test(value) for value in values(record))


def _list_test(field: EcsField, value_list: ValueList) -> Callable[[Any], bool]:
    if value_list.ranges is None:
        keywords = value_list.keywords
        return lambda value: isinstance(value, str) and value in keywords
    if field.type not in ("ip", "keyword"):
        raise ValueError(
            f"an {value_list.type} list needs an ip field; {field.name} is {field.type}"
        )
    ranges = value_list.ranges
    return lambda value: (address := _address(value)) is not None and address in ranges


class _EntryCompiler:
    def __init__(
        self, fields: Mapping[str, EcsField], lists: Callable[[ListReference], ValueList]
    ) -> None:
        self.fields = fields
        self.lists = lists

    def field(self, name: str) -> EcsField:
        field = self.fields.get(name)
        if field is None:
            raise ValueError(
                f"field {name!r} is not derived from CloudTrail by the detector (exceptions read "
                "the source event's fields; an ES|QL rule's EVAL/GROK/STATS columns are not "
                "visible to them, as in Elastic)"
            )
        return field

    def entry(self, entry: Entry) -> Test:
        clause = self.clause(entry)
        if entry.operator == "excluded":
            return lambda record: not clause(record)
        return clause

    def clause(self, entry: Entry) -> Test:
        if entry.type == "nested":
            raise ValueError(
                f"nested entry on {entry.field!r}: no field derived from CloudTrail is mapped as "
                "nested, and Elasticsearch fails a rule whose exception names one"
            )
        field = self.field(entry.field)
        values = _values(field)
        if entry.type == "exists":
            return lambda record: bool(values(record))
        if entry.type == "match":
            assert isinstance(entry.value, str)
            return _any_value(values, _equals(field, entry.value))
        if entry.type == "match_any":
            assert isinstance(entry.value, list)
            tests = [_equals(field, value) for value in entry.value]
            return _any_value(values, lambda value: any(test(value) for test in tests))
        if entry.type == "wildcard":
            assert isinstance(entry.value, str)
            if field.type != "keyword":
                raise ValueError(
                    f"a wildcard entry needs a keyword field; {field.name} is {field.type}"
                )
            matches = like(entry.value)
            return _any_value(values, lambda value: isinstance(value, str) and matches(value))
        reference = entry.value_list
        assert reference is not None
        return _any_value(values, _list_test(field, self.lists(reference)))

    def item(self, item: Item) -> Test:
        tests = tuple(self.entry(entry) for entry in item.entries)
        if len(tests) == 1:
            return tests[0]
        return lambda record: all(test(record) for test in tests)


# --- loading ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ListFile:
    source: str
    metadata: ExceptionMetadata
    data: ExceptionData


def _read_exception_files(directory: Path, problems: list[str]) -> list[_ListFile]:
    lists: list[_ListFile] = []
    for path in sorted(directory.rglob("*.toml")):
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
            parsed = ExceptionFile.model_validate(document)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as problem:
            problems.append(f"{path}: cannot read: {problem}")
            continue
        except ValidationError as invalid:
            problems.extend(
                f"{path}: {'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in invalid.errors()
            )
            continue
        lists.extend(_ListFile(str(path), parsed.metadata, data) for data in parsed.exceptions)
    return lists


def _value_list_paths(directory: Path) -> dict[str, Path]:
    return {
        path.name: path
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.suffix != ".toml" and not path.name.startswith(".")
    }


def _digest(directory: Path | None, links: Sequence[RuleLink]) -> str:
    hasher = hashlib.sha256()
    if directory is not None:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                hasher.update(str(path.relative_to(directory)).encode())
                hasher.update(path.read_bytes())
    for link in links:
        hasher.update(repr((link.rule_id, link.inline_items)).encode())
    return hasher.hexdigest()[:12]


def load_exceptions(
    directory: Path | None,
    rules: Sequence[RuleLink],
    fields: Mapping[str, EcsField] = ECS_FIELDS,
) -> ExceptionSet:
    """Read every exception list and value list under `directory` and attach them to `rules`.

    Raises ExceptionLoadError listing every problem (file, item, what is wrong), so a reload
    can keep the previous set whole.
    """
    problems: list[str] = []
    warnings: list[str] = []
    if directory is not None and not directory.is_dir():
        raise ExceptionLoadError([f"{directory}: exceptions directory does not exist"])
    list_files = _read_exception_files(directory, problems) if directory is not None else []
    value_paths = _value_list_paths(directory) if directory is not None else {}
    loaded_lists: dict[tuple[str, str], ValueList] = {}

    def value_list(reference: ListReference) -> ValueList:
        key = (reference.id, reference.type)
        if key not in loaded_lists:
            path = value_paths.get(reference.id)
            if path is None:
                raise ValueError(f"value list {reference.id!r} is not a file in the directory")
            try:
                loaded_lists[key] = read_value_list(path, reference.type)
            except (OSError, UnicodeDecodeError, ValueError) as problem:
                raise ValueError(f"value list {path}: {problem}") from None
        return loaded_lists[key]

    compiler = _EntryCompiler(fields, value_list)
    known_rules = {rule.rule_id for rule in rules}
    by_list: dict[str, list[CompiledItem]] = {}
    for listed in list_files:
        container = listed.data.container
        compiled = by_list.setdefault(container.list_id, [])
        for position, item in enumerate(listed.data.items):
            label = item.item_id or f"{container.list_id}#{position}"
            try:
                test = compiler.item(item)
            except ValueError as problem:
                problems.append(f"{listed.source}: item {item.name!r} ({label}): {problem}")
                continue
            compiled.append(
                CompiledItem(
                    container.list_id,
                    label,
                    item.name,
                    listed.source,
                    _aware(item.expire_time),
                    test,
                )
            )
        warnings.extend(
            f"{listed.source}: metadata.rule_ids names {rule_id}, which is not a loaded rule"
            for rule_id in listed.metadata.rule_ids
            if rule_id not in known_rules
        )
    attached: dict[str, list[CompiledItem]] = {}
    for rule in rules:
        list_ids = list(rule.list_ids)
        for listed in list_files:
            if rule.rule_id in listed.metadata.rule_ids:
                list_ids.append(listed.data.container.list_id)
        problems.extend(
            f"{rule.source}: rule.exceptions_list: no exception list has list_id {list_id}"
            for list_id in rule.list_ids
            if list_id not in by_list
        )
        items = attached.setdefault(rule.rule_id, [])
        for list_id in dict.fromkeys(list_ids):
            items.extend(by_list.get(list_id, ()))
        items.extend(_inline_items(rule, compiler, problems))
    if problems:
        raise ExceptionLoadError(problems)
    return ExceptionSet(
        {rule_id: RuleExceptions(tuple(items)) for rule_id, items in attached.items() if items},
        _digest(directory, rules),
        tuple(warnings),
    )


def _inline_items(
    rule: RuleLink, compiler: _EntryCompiler, problems: list[str]
) -> list[CompiledItem]:
    items: list[CompiledItem] = []
    for position, raw in enumerate(rule.inline_items):
        where = f"{rule.source}: detector.exceptions[{position}]"
        try:
            item = Item.model_validate(raw)
            test = compiler.item(item)
        except ValidationError as invalid:
            problems.extend(
                f"{where}.{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in invalid.errors()
            )
            continue
        except ValueError as problem:
            problems.append(f"{where}: {problem}")
            continue
        label = item.item_id or f"inline#{position}"
        items.append(
            CompiledItem("inline", label, item.name, rule.source, _aware(item.expire_time), test)
        )
    return items


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def rule_links(rules: Iterable[LoadedRule]) -> list[RuleLink]:
    """What `load_exceptions` needs of each loaded rule."""
    return [
        RuleLink(
            rule.rule_id,
            tuple(reference.list_id for reference in rule.definition.rule.exceptions_list),
            tuple(rule.definition.detector.exceptions),
            rule.source,
        )
        for rule in rules
    ]


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times: cheap enough to take every few seconds."""
    entries = []
    for path in sorted(directory.rglob("*")):
        try:
            status = path.stat()
        except OSError:  # removed while we looked: the next look sees the change
            continue
        entries.append((str(path), status.st_size, status.st_mtime_ns))
    return tuple(entries)


class ExceptionWatcher:
    """Reloads the exceptions when their files change or a reload is requested (SIGHUP).

    A reload is validated whole before it replaces anything: a bad file keeps the previous set,
    and the error is logged and counted by the caller.
    """

    def __init__(
        self,
        directory: Path | None,
        rules: Sequence[LoadedRule],
        every_seconds: float,
        fields: Mapping[str, EcsField] = ECS_FIELDS,
    ) -> None:
        self.directory = directory
        self.links = rule_links(rules)
        self.fields = fields
        self.every_seconds = every_seconds
        self.current = load_exceptions(directory, self.links, fields)
        self._seen = _fingerprint(directory) if directory is not None else ()
        self._next_look = time.monotonic() + every_seconds
        self._requested = False

    def request_reload(self) -> None:
        """Safe from a signal handler: the reload itself happens at the next `poll`."""
        self._requested = True

    def poll(self) -> ExceptionSet | None:
        """A new, valid set when the files changed or a reload was requested; else None.

        Raises ExceptionLoadError for a change that does not load; `current` stays as it was.
        """
        if self.directory is None:
            return None
        if not self._requested and time.monotonic() < self._next_look:
            return None
        self._next_look = time.monotonic() + self.every_seconds
        requested, self._requested = self._requested, False
        seen = _fingerprint(self.directory)
        if seen == self._seen and not requested:
            return None
        self._seen = seen
        loaded = load_exceptions(self.directory, self.links, self.fields)
        if loaded.digest == self.current.digest:
            return None
        self.current = loaded
        return loaded
