"""CloudTrail records from files, in every shape they are delivered or exported in.

AWS delivers `{"Records": [...]}` objects to S3, usually gzipped; tools export JSON arrays or
JSON Lines. Both the offline scanner and the replay tool read them through here.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One record and where it came from; `error` says why a line or file held no record."""

    record: Any
    origin: str
    error: str | None = None


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else path.open("rb")  # type: ignore[return-value]


def _records_of(document: Any, origin: str) -> Iterator[FileRecord]:
    if isinstance(document, dict) and isinstance(document.get("Records"), list):
        for index, record in enumerate(document["Records"]):
            yield FileRecord(record, f"{origin}#{index}")
    elif isinstance(document, list):
        for index, record in enumerate(document):
            yield FileRecord(record, f"{origin}#{index}")
    else:
        yield FileRecord(document, origin)


def read_records(path: Path) -> Iterator[FileRecord]:
    """Records of one file: an S3 delivery object, a JSON array, or JSON Lines.

    Works on bytes: a line that is not UTF-8 is one bad line, and only CR/LF end a line (a JSON
    string may hold U+2028 or U+0085 literally, which `str.splitlines` would cut at).
    """
    try:
        with _open(path) as stream:
            data = stream.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        yield FileRecord(None, str(path), f"corrupt gzip: {error}")
        return
    try:
        document = json.loads(data)
    except ValueError:  # JSONDecodeError, or UnicodeDecodeError somewhere in the file
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            origin = f"{path}:{number}"
            try:
                document = json.loads(line)
            except ValueError as error:
                yield FileRecord(None, origin, f"invalid JSON: {error}")
                continue
            yield from _records_of(document, origin)
        return
    yield from _records_of(document, str(path))


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and every .json, .jsonl and .gz file below a directory, in order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".gz")
            )
        else:
            files.append(path)
    return files
