"""`cloudtrail-detector query`: any ES|QL query over CloudTrail files, without a cluster.

Elastic publishes AWS hunting queries in ES|QL; an analyst can run them on a trail export. The
records are read as `scan` reads them and go through the query in table mode (SORT and LIMIT
over the whole result, ES|QL's default LIMIT 1000; STATS over every record). Rows print as an
aligned table on a terminal and as JSON Lines otherwise (null columns left out, as Elastic's
documents do).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from consumer.cloudtrail.files import expand, read_records
from consumer.cloudtrail.record import NotCloudTrailError, json_to_avro
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.rules.esql import Table
from consumer.rules.esql.aggregate import AggregatingQuery, compile_esql

MAX_CELL = 60


def records_in(paths: Sequence[Path], errors: TextIO) -> Iterator[CloudTrailRecord]:
    """Every CloudTrail record of the files, in the record shape the rules read."""
    for path in expand(paths):
        for item in read_records(path):
            try:
                if item.error is not None:
                    raise NotCloudTrailError(item.error)
                yield json_to_avro(item.record)
            except NotCloudTrailError as error:
                print(f"skipped {item.origin}: {error}", file=errors)


def run_query(
    query: str,
    paths: Sequence[Path],
    output: TextIO,
    as_table: bool | None = None,
    errors: TextIO = sys.stderr,
) -> int:
    """Run `query` over the files and print its rows; returns how many rows were printed.

    Raises EsqlError for a query we cannot run.
    """
    compiled = compile_esql(query)
    if isinstance(compiled, AggregatingQuery):  # NOW() is now, as in a hunt on a cluster
        table = compiled.run(records_in(paths, errors), now_ms=time.time_ns() // 1_000_000)
    else:
        table = compiled.run(records_in(paths, errors))
    if as_table if as_table is not None else output.isatty():
        output.write(format_table(table))
    else:
        for row in table.rows:
            document = {
                name: value
                for (name, _), value in zip(table.columns, row, strict=True)
                if value is not None
            }
            output.write(json.dumps(document, ensure_ascii=False) + "\n")
    return len(table.rows)


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        text = "[" + ", ".join(_cell(item) for item in value) + "]"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def format_table(table: Table) -> str:
    """Rows aligned under their column names; columns null in every row are left out."""
    shown = [
        index
        for index in range(len(table.columns))
        if not table.rows or any(row[index] is not None for row in table.rows)
    ]
    header = [table.columns[index][0] for index in shown]
    cells = [[_cell(row[index]) for index in shown] for row in table.rows]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(header)]
    lines = [" | ".join(name.ljust(width) for name, width in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * width for width in widths))
    lines.extend(
        " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    )
    return "\n".join(line.rstrip() for line in lines) + f"\n({len(cells)} rows)\n"
