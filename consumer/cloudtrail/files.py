"""CloudTrail records from files, in every shape they are delivered or exported in.

AWS delivers `{"Records": [...]}` objects to S3, usually gzipped; Firehose writes JSON documents
back to back; tools export JSON arrays, JSON Lines or `aws cloudtrail lookup-events` output; and
any envelope of `consumer.cloudtrail.envelopes` may sit in a file too. The format is found from the
content, not the file name. Files are streamed: JSON Lines and concatenated documents are read one
line at a time, so memory follows the largest document, not the file. Only a file whose first line
is not a whole document (pretty-printed JSON) is read whole. The offline scanner and the replay
tool both read files through here.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from consumer.cloudtrail.envelopes import EnvelopeError, is_record, unwrap

_JSON_STARTS = frozenset(b"{[")
_WHITESPACE = b" \t\r\n"
_RECORD_KEYS = ("eventVersion", "eventSource", "eventName")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One record and where it came from; `error` says why a line or file held no record, and
    `skipped` why a document holds no CloudTrail at all (a digest, `labels.json`, a finding)."""

    record: Any
    origin: str
    error: str | None = None
    skipped: str | None = None


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else path.open("rb")  # type: ignore[return-value]


def _records_of(document: Any, origin: str) -> Iterator[FileRecord]:
    """The records of one parsed document, whatever envelope it is in."""
    if isinstance(document, dict) and not any(key in document for key in _RECORD_KEYS):
        try:
            unwrapped = unwrap(document)
        except EnvelopeError as error:
            yield FileRecord(None, origin, str(error))
            return
        if unwrapped.skipped is not None:
            yield FileRecord(None, origin, skipped=unwrapped.skipped)
            return
        if unwrapped.shape == "record":
            yield FileRecord(None, origin, skipped="a JSON object that is not a CloudTrail record")
            return
        events: list[Any] = unwrapped.events
        single = unwrapped.shape in ("eventbridge", "filebeat", "cribl")
    elif isinstance(document, list):
        events, single = document, False
    else:
        yield FileRecord(document, origin)
        return
    for index, held in enumerate(events):
        where = origin if single else f"{origin}#{index}"
        try:
            event = json.loads(held) if isinstance(held, str) else held
        except ValueError as error:
            yield FileRecord(None, where, f"invalid JSON in the event's text: {error}")
            continue
        if isinstance(event, dict) and not is_record(event) and not any(
            key in event for key in _RECORD_KEYS
        ):
            yield FileRecord(None, where, skipped="a JSON object that is not a CloudTrail record")
        else:
            yield FileRecord(event, where)


def _documents(line: bytes) -> list[Any]:
    """The JSON documents of one line: one, or several written back to back (Firehose).
    Raises ValueError for text that is not JSON."""
    try:
        return [json.loads(line)]
    except json.JSONDecodeError as error:
        if not error.msg.startswith("Extra data"):
            raise
    text = line.decode("utf-8")
    found: list[Any] = []
    position, end = 0, len(text.rstrip())
    while position < end:
        document, position = _DECODER.raw_decode(text, position)
        found.append(document)
        while position < end and text[position] in " \t\r\n":
            position += 1
    return found


def read_records(path: Path) -> Iterator[FileRecord]:
    """Records of one file: an S3 delivery object, a JSON array, JSON Lines, concatenated JSON,
    lookup-events output or an envelope, gzipped or not.

    Works on bytes: a line that is not UTF-8 is one bad line, and only CR/LF end a line (a JSON
    string may hold U+2028 or U+0085 literally, which `str.splitlines` would cut at). A file
    that does not start with `{` or `[` is not JSON and is skipped as a whole.
    """
    try:
        with _open(path) as stream:
            yield from _read_stream(stream, str(path))
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        yield FileRecord(None, str(path), f"corrupt gzip: {error}")


def _read_stream(stream: BinaryIO, name: str) -> Iterator[FileRecord]:
    numbered = enumerate(stream, start=1)
    start, first = next(((n, line) for n, line in numbered if line.strip(_WHITESPACE)), (0, b""))
    if not start:
        return
    if first.lstrip(_WHITESPACE)[0] not in _JSON_STARTS:
        yield FileRecord(None, name, skipped="not JSON")
        return
    try:
        documents = _documents(first)
    except ValueError:
        yield from _read_whole(first + stream.read(), name, start)
        return
    pending = [(f"{name}:{start}", documents)]
    for number, line in numbered:
        if not line.strip(_WHITESPACE):
            continue
        for origin, held in pending:
            yield from _each(held, origin)
        pending.clear()
        try:
            yield from _each(_documents(line), f"{name}:{number}")
        except ValueError as error:
            yield FileRecord(None, f"{name}:{number}", f"invalid JSON: {error}")
    for origin, held in pending:  # the file's only line: named by the file alone
        yield from _each(held, name if len(held) == 1 else origin)


def _each(documents: list[Any], origin: str) -> Iterator[FileRecord]:
    if len(documents) == 1:
        yield from _records_of(documents[0], origin)
        return
    for index, document in enumerate(documents):
        yield from _records_of(document, f"{origin}@{index}")


def _read_whole(data: bytes, name: str, first_line: int) -> Iterator[FileRecord]:
    """A file whose first line is not a document: pretty-printed JSON, one document or more;
    failing that, JSON Lines with a bad first line."""
    try:
        documents = _documents(data)
    except ValueError:
        lines = data.splitlines()
        for number, line in enumerate(lines, start=first_line):
            if not line.strip(_WHITESPACE):
                continue
            try:
                yield from _each(_documents(line), f"{name}:{number}")
            except ValueError as error:
                yield FileRecord(None, f"{name}:{number}", f"invalid JSON: {error}")
        return
    yield from _each(documents, name)


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and every file below a directory (hidden ones aside), in order: which
    of them hold CloudTrail is found from their content."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".")
                                           for part in p.relative_to(path).parts)
            )
        else:
            files.append(path)
    return files
