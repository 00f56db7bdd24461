"""Run Elasticsearch's ES|QL csv-spec test cases against our engine.

Usage: python -m scripts.esql_spec SPEC... --data DIR
  SPEC  csv-spec files (e.g. ../shared/conformance/esql-spec/specs/*.csv-spec)
  DIR   the folder of the data csv files, or the folder holding data/ (default: the specs'
        parent folder)

Prints one line per failing case and ends with `N passed, M failed, K skipped` and the skip
reasons counted. A case is skipped when it uses a command, function, type or data set we do not
support (the engine raises UnsupportedEsqlError, or the data is not there); a failure is a
wrong result or an error on a query Elasticsearch runs.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumer.rules.esql import EsqlError, RowField, UnsupportedEsqlError
from consumer.rules.esql.aggregate import AggregatingQuery, compile_esql
from consumer.rules.esql.values import date_key, field_type, ip_key

_TYPE_ALIASES = {
    "i": "integer", "int": "integer", "integer": "integer", "short": "integer", "byte": "integer",
    "l": "long", "long": "long", "d": "double", "double": "double", "float": "double",
    "half_float": "double", "scaled_float": "double", "s": "keyword", "k": "keyword",
    "keyword": "keyword", "txt": "text", "text": "text", "b": "boolean", "bool": "boolean",
    "boolean": "boolean", "date": "date", "datetime": "date", "dt": "date", "ip": "ip",
    "null": "null", "string": "keyword", "ul": "unsigned_long",
}  # fmt: skip


@dataclass(slots=True)
class Case:
    """One csv-spec test: its query and expected table."""

    spec: str
    name: str
    line: int
    query: str
    header: list[tuple[str, str]] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    ignore_order: bool = False
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    status: str  # "passed", "failed" or "skipped"
    detail: str = ""


def _split_cells(line: str, separator: str) -> list[str]:
    """Cells split on `separator` outside brackets and double quotes, trimmed."""
    cells: list[str] = []
    depth = 0
    quoted = False
    current: list[str] = []
    for char in line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "[":
            depth += 1
        elif not quoted and char == "]":
            depth -= 1
        if char == separator and depth == 0 and not quoted:
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    cells.append("".join(current).strip())
    return cells


def _column(text: str) -> tuple[str, str]:
    name, _, kind = text.strip().rpartition(":")
    return name.strip(), kind.strip()


def parse_spec(path: Path) -> list[Case]:
    """The cases of one csv-spec file (see the format notes in the folder's PROVENANCE.md)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    cases: list[Case] = []
    index = 0
    while index < len(lines):
        raw = lines[index].strip()
        index += 1
        if not raw or raw.startswith(("//", "#")):
            continue
        name = raw.split("#", 1)[0].strip()
        disabled = name.endswith("-Ignore") or "[skip:-9.99.99" in raw  # skipped everywhere
        case = Case(path.name, name, index, "", disabled=disabled)
        query: list[str] = []
        while index < len(lines):
            text = lines[index]
            index += 1
            stripped = text.strip()
            if not query and (re.match(r"^[a-z_]+:", stripped) or stripped.startswith(("//", "#"))):
                continue
            if stripped.startswith("#"):  # the spec reader drops these doc-tag lines
                continue
            ends = stripped.endswith(";") and not stripped.endswith("\\;")
            query.append(text.rstrip()[:-1] if ends else text)
            if ends:
                break
        case.query = "\n".join(query).replace("\\;", ";")
        header_seen = False
        while index < len(lines):
            text = lines[index].strip()
            index += 1
            if text == ";":
                break
            if text.startswith("#"):  # doc tags around the expected table
                continue
            if not header_seen:
                if not text or text.startswith("//"):
                    continue
                if text.startswith("ignoreOrder:"):
                    case.ignore_order = text.split(":", 1)[1].strip() == "true"
                    continue
                if text.startswith(("warning:", "warningRegex:", "error:")) or (
                    text.startswith("required_capability:")
                ):
                    continue
                case.header = [_column(cell) for cell in _split_cells(text, "|")]
                header_seen = True
                continue
            if text and not text.startswith("//"):
                case.rows.append(_split_cells(text, "|"))
        cases.append(case)
    return cases


# --- data sets ------------------------------------------------------------------------------


def _data_value(text: str) -> Any:
    text = text.strip()
    if text == "":
        return None
    if text.startswith("[") and text.endswith("]"):
        items = [item.strip() for item in next(csv.reader([text[1:-1]])) if item.strip() != ""]
        return items or None
    return text


def load_table(path: Path) -> tuple[dict[str, RowField], list[dict[str, Any]]]:
    """A data csv as a row source: fields by name (mapping types from the header) and rows."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = [line for line in lines if not line.lstrip().startswith("//")]
    header = [_column(cell) for cell in lines[0].split(",")]
    fields = {
        name: RowField(name, kind, lambda row, name=name: row.get(name)) for name, kind in header
    }
    rows: list[dict[str, Any]] = []
    for line in lines[1:]:
        cells = _split_cells(line, ",")
        rows.append(
            {
                name: _stored(kind, _data_value(cell))
                for (name, kind), cell in zip(header, cells, strict=False)
            }
        )
    return fields, rows


def _stored(kind: str, value: Any) -> Any:
    """A csv value as Elasticsearch stores it for the mapping type (float precision included)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_stored(kind, item) for item in value]
    if kind in ("integer", "long", "short", "byte"):
        return int(value)
    if kind == "double":
        return float(value)
    if kind in ("float", "half_float"):
        return struct.unpack(
            "<f" if kind == "float" else "<e",
            struct.pack("<f" if kind == "float" else "<e", float(value)),
        )[0]
    if kind == "scaled_float":
        return round(float(value) * 100) * (1 / 100)
    if kind == "boolean":
        return value.lower() == "true"
    return value


# --- comparison -----------------------------------------------------------------------------


def _expected_value(kind: str, text: str) -> Any:
    text = text.strip()
    if text == "null":
        return None
    if text.startswith("[") and text.endswith("]"):
        return [_expected_value(kind, item) for item in _split_cells(text[1:-1], ",")]
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return _canonical(kind, text)


def _canonical(kind: str, value: Any) -> Any:
    """One value in a form where ours and the expected one compare equal when they agree."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_canonical(kind, item) for item in value]
    if kind in ("integer", "long"):
        return int(value)
    if kind == "double":
        number = float(value)
        return round(number, 9) if math.isfinite(number) and abs(number) < 1e15 else number
    if kind == "boolean":
        return value if isinstance(value, bool) else str(value).lower() == "true"
    if kind == "date":
        return date_key(value)
    if kind == "ip":
        return ip_key(value)
    return str(value)


def _sort_key(row: list[Any]) -> str:
    return repr(row)


def run_case(case: Case, data_dir: Path) -> Outcome:
    if case.disabled:
        return Outcome(case, "skipped", "disabled in the spec (-Ignore)")
    fields: Mapping[str, RowField] = {}
    rows: list[dict[str, Any]] = []
    source = re.match(r"\s*from\s+([^\s|,]+)(\s*,)?", case.query, re.IGNORECASE)
    if source is not None:
        index = source.group(1)
        if source.group(2) or "*" in index or ":" in index:
            return Outcome(case, "skipped", "several indices or index patterns")
        path = data_dir / f"{index}.csv"
        if not path.exists():
            return Outcome(case, "skipped", f"data set {index} is not available")
        fields, rows = load_table(path)
    try:
        compiled = compile_esql(case.query, fields, metadata={})
        if isinstance(compiled, AggregatingQuery):
            table = compiled.run(rows, now_ms=int(time.time() * 1000))
        else:
            table = compiled.run(rows)
    except UnsupportedEsqlError as problem:
        return Outcome(case, "skipped", _reason(problem.reason))
    except EsqlError as problem:
        return Outcome(case, "failed", f"error: {problem}")
    except Exception as problem:
        return Outcome(case, "failed", f"crash: {type(problem).__name__}: {problem}")
    return _compare(case, table.columns, table.rows)


def _reason(reason: str) -> str:
    """A skip reason without the names of the case's own columns, so reasons count well."""
    reason = re.sub(r"field '[^']*' has type", "a field has type", reason)
    reason = re.sub(r"column '[^']*' has type", "a column has type", reason)
    return re.sub(r"field '[^']*' is not derived.*", "a field the data set lacks", reason)


def _compare(case: Case, columns: Sequence[tuple[str, str]], rows: list[list[Any]]) -> Outcome:
    names = [name for name, _ in columns]
    expected_names = [name for name, _ in case.header]
    if names != expected_names:
        return Outcome(case, "failed", f"columns {names} != expected {expected_names}")
    for (name, ours), (_, theirs) in zip(columns, case.header, strict=True):
        wanted = _TYPE_ALIASES.get(theirs.lower(), theirs.lower())
        if ours != wanted and not (wanted == "null" or ours == "null"):
            return Outcome(case, "failed", f"column {name} is {ours}, expected {theirs}")
    kinds = [_TYPE_ALIASES.get(kind.lower(), field_type(kind.lower())) for _, kind in case.header]
    try:
        expected = [
            [_expected_value(kind, cell) for kind, cell in zip(kinds, row, strict=True)]
            for row in case.rows
        ]
    except (ValueError, TypeError) as problem:
        return Outcome(case, "skipped", f"expected cells we cannot read ({problem})")
    actual = [
        [_canonical(kind, value) for kind, value in zip(kinds, row, strict=True)] for row in rows
    ]
    if case.ignore_order:
        expected.sort(key=_sort_key)
        actual.sort(key=_sort_key)
    if actual != expected:
        for number, (ours, theirs) in enumerate(zip(actual, expected, strict=False)):
            if ours != theirs:
                return Outcome(case, "failed", f"row {number}: {ours} != expected {theirs}")
        return Outcome(case, "failed", f"{len(actual)} rows, expected {len(expected)}")
    return Outcome(case, "passed")


def run_specs(paths: Iterable[Path], data_dir: Path) -> Iterator[Outcome]:
    for path in paths:
        for case in parse_spec(path):
            yield run_case(case, data_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args(argv)
    data_dir = args.data or args.specs[0].resolve().parent.parent
    if (data_dir / "data").is_dir():  # the esql-spec folder rather than its data folder
        data_dir = data_dir / "data"
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    out = io.StringIO()
    for outcome in run_specs(args.specs, data_dir):
        counts[outcome.status] += 1
        if outcome.status == "failed":
            case = outcome.case
            print(f"FAIL {case.spec}:{case.line} {case.name}: {outcome.detail}", file=out)
        elif outcome.status == "skipped":
            reasons[outcome.detail] += 1
    sys.stdout.write(out.getvalue())
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    for reason, count in reasons.most_common():
        print(f"  skipped {count:4d}: {reason}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
