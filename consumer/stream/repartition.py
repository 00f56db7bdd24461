"""The repartition topic: rows routed by group key, and the watermarks that travel with them.

An aggregating rule's rows are routed, Kafka Streams style, to `<group.id>.repartition` keyed by
(rule id, group key), so every row of one group reaches one partition, whichever input partition
and worker it came from. The same consumer group reads that topic back, and its owner keeps the
group's state. Rows, markers, alerts and offsets are produced in one transaction, so a
read_committed reader of the repartition topic sees each row exactly once.

Event time travels as *marker* records: at every checkpoint each input partition's highest event
time (and whether it is idle) is produced to every repartition partition, after that partition's
rows. A producer keeps the order of its messages to one partition, so when the reader sees input
partition P's marker H, it has seen every row P produced before it. A repartition partition's
watermark is the lowest marker over the input partitions that are not idle, minus the allowed
lateness (and 1 ms: an event at the marker's very time may follow it). An idle input partition
(caught up, no event for `idle_timeout`) counts with the wall time its marker was made at, so an
idle stream still closes the runs Elastic would have run.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from consumer.alerts.document import Headers

Row = dict[str, object]
GroupKey = tuple[object, ...]
InputPartition = tuple[str, int]

KIND_HEADER: Final = "detector.repartition"
"""Header naming the kind of a repartition record: b"row", b"match" or b"marker"."""

ROW: Final = "row"
"""A row of an aggregating rule's pre-STATS part, for the group's windowed aggregation."""

MATCH: Final = "match"
"""A match of a rule with alert suppression, for the suppression group's state."""

MARKER: Final = "marker"

FORMAT_VERSION: Final = 1


def repartition_topic(group_id: str) -> str:
    return f"{group_id}.repartition"


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""Built once: `json.dumps` with options builds an encoder per call, three per routed row."""


def _json(value: object) -> bytes:
    return _ENCODER.encode(value).encode()


def encode_key(rule_id: str, group_key: GroupKey) -> bytes:
    """Canonical bytes of (rule, group key): the same group always gives the same bytes."""
    return _json([rule_id, list(group_key)])


def key_from_json(data: list[object]) -> GroupKey:
    """A group key back from JSON: a multi-valued term was a (sorted) tuple."""
    return tuple(tuple(item) if isinstance(item, list) else item for item in data)


def partition_for(key: bytes, partitions: int) -> int:
    """Chosen here, not by the producer's partitioner, so that a setting cannot move groups."""
    return zlib.crc32(key) % partitions


@dataclass(frozen=True, slots=True)
class Routed:
    """A row (or a suppressed rule's match) on its way to its group's state."""

    kind: str
    rule_id: str
    group_key: GroupKey
    event_ms: int
    row: Row
    partition_key: GroupKey | None = field(default=None, compare=False)
    """What picks the partition when it is not the group key: a suppressed aggregating rule's
    groups that share suppression terms must meet on one partition."""


@dataclass(frozen=True, slots=True)
class Marker:
    """Where input partition `source` stood when its owner checkpointed."""

    source: InputPartition
    event_ms: int | None
    """The highest event time its rows carried so far; None before the first."""
    idle: bool
    wall_ms: int
    """The owner's clock when it made the marker: an idle partition's stand-in event time."""

    @property
    def progress_ms(self) -> int | None:
        """How far event time has certainly come on this input partition."""
        if self.idle:
            return self.wall_ms if self.event_ms is None else max(self.wall_ms, self.event_ms)
        return self.event_ms


Record = Routed | Marker


@dataclass(frozen=True, slots=True)
class Encoded:
    partition: int
    key: bytes | None
    value: bytes
    headers: Headers


def encode_routed(routed: Routed, partitions: int) -> Encoded:
    key = encode_key(routed.rule_id, routed.group_key)
    placed = key if routed.partition_key is None else encode_key(routed.rule_id,
                                                                 routed.partition_key)
    value = _json({"v": FORMAT_VERSION, "t": routed.event_ms, "r": routed.row})
    headers: Headers = [(KIND_HEADER, routed.kind.encode())]
    return Encoded(partition_for(placed, partitions), key, value, headers)


def encode_marker(marker: Marker, partition: int) -> Encoded:
    value = _json({
        "v": FORMAT_VERSION, "s": list(marker.source), "t": marker.event_ms,
        "i": marker.idle, "w": marker.wall_ms,
    })
    return Encoded(partition, None, value, [(KIND_HEADER, MARKER.encode())])


class RepartitionFormatError(ValueError):
    """A record on the repartition topic that this version did not write."""


def decode(key: bytes | None, value: bytes | None,
           headers: Iterable[tuple[str, str | bytes | None]] | None) -> Record:
    found = next((v for k, v in headers or () if k == KIND_HEADER), None)
    kind = found.encode() if isinstance(found, str) else found
    if kind is None or value is None:
        raise RepartitionFormatError("no kind header or no value")
    try:
        body = json.loads(value)
        if body.get("v") != FORMAT_VERSION:
            raise RepartitionFormatError(f"format version {body.get('v')!r}")
        if kind == MARKER.encode():
            topic, partition = body["s"]
            return Marker((str(topic), int(partition)), body["t"], bool(body["i"]), int(body["w"]))
        if kind in (ROW.encode(), MATCH.encode()) and key is not None:
            rule_id, group_key = json.loads(key)
            return Routed(kind.decode(), str(rule_id), key_from_json(group_key),
                          int(body["t"]), dict(body["r"]))
    except (ValueError, KeyError, TypeError) as error:
        raise RepartitionFormatError(str(error)) from error
    raise RepartitionFormatError(f"unknown kind {kind!r}")


@dataclass(slots=True)
class _InputProgress:
    event_ms: int | None = None
    last_event_wall_ms: int | None = None


@dataclass
class InputTracker:
    """The producing side's view of each assigned input partition: its highest event time, and
    when it last brought an event, for the markers made at each checkpoint."""

    idle_timeout_ms: int
    _inputs: dict[InputPartition, _InputProgress] = field(default_factory=dict)
    _committed: dict[InputPartition, _InputProgress] = field(default_factory=dict)

    def assigned(self, source: InputPartition, wall_ms: int) -> None:
        """A newly assigned partition counts as active until it has been caught up for a while:
        its backlog may hold events older than anyone's watermark."""
        self._inputs.setdefault(source, _InputProgress(last_event_wall_ms=wall_ms))

    def revoked(self, source: InputPartition) -> None:
        self._inputs.pop(source, None)

    def saw(self, source: InputPartition, event_ms: int, wall_ms: int) -> None:
        progress = self._inputs.setdefault(source, _InputProgress())
        if progress.event_ms is None or event_ms > progress.event_ms:
            progress.event_ms = event_ms
        progress.last_event_wall_ms = wall_ms

    def committed(self) -> None:
        self._committed = {source: replace(p) for source, p in self._inputs.items()}

    def rolled_back(self) -> None:
        """An abandoned batch is read again: a marker must not claim the event times its rows
        had (they are gone with the batch) before they are routed again."""
        for source, progress in self._inputs.items():
            committed = self._committed.get(source)
            progress.event_ms = None if committed is None else committed.event_ms

    def markers(self, wall_ms: int, caught_up: Callable[[InputPartition], bool]) -> list[Marker]:
        """One marker per assigned input partition. Idle means caught up with the partition's
        end and no event for `idle_timeout`: a partition still reading a backlog never is."""
        made = []
        for source, progress in sorted(self._inputs.items()):
            quiet = (progress.last_event_wall_ms is None
                     or wall_ms - progress.last_event_wall_ms >= self.idle_timeout_ms)
            made.append(Marker(source, progress.event_ms, quiet and caught_up(source), wall_ms))
        return made


@dataclass
class Watermark:
    """One repartition partition's watermark, from the latest marker of each input partition.

    `expected` are the input partitions that exist: one that never sent a marker holds the
    watermark back (its owner may not have started), so a restart never closes runs early.
    The watermark never goes back, even when a marker of an older owner arrives late.
    """

    expected: frozenset[InputPartition]
    allowed_lateness_ms: int
    latest: dict[InputPartition, Marker] = field(default_factory=dict)
    current_ms: int | None = None

    def observe(self, marker: Marker) -> int | None:
        """Take a marker in; the watermark when it advanced, else None. A partition's new owner
        starts without its event-time history: the highest time either owner saw stands."""
        previous = self.latest.get(marker.source)
        if previous is not None and previous.event_ms is not None and (
            marker.event_ms is None or marker.event_ms < previous.event_ms
        ):
            marker = Marker(marker.source, previous.event_ms, marker.idle, marker.wall_ms)
        self.latest[marker.source] = marker
        candidate = self._compute()
        if candidate is not None and (self.current_ms is None or candidate > self.current_ms):
            self.current_ms = candidate
            return candidate
        return None

    def _compute(self) -> int | None:
        lowest: int | None = None
        for source in self.expected | self.latest.keys():
            marker = self.latest.get(source)
            progress = None if marker is None else marker.progress_ms
            if progress is None:
                return None
            lowest = progress if lowest is None else min(lowest, progress)
        if lowest is None:
            return None
        # An event at exactly the lowest time may still come (equal timestamps): a run at t is
        # due once the watermark is past t, so the watermark stays one millisecond behind.
        return lowest - self.allowed_lateness_ms - 1

    def lag_ms(self, wall_ms: int) -> int | None:
        """How far behind the wall clock the watermark is, for the watermark-lag metric."""
        return None if self.current_ms is None else max(wall_ms - self.current_ms, 0)

    def dump(self) -> object:
        return {
            "c": self.current_ms,
            "m": [[m.source[0], m.source[1], m.event_ms, m.idle, m.wall_ms]
                  for m in self.latest.values()],
        }

    def load(self, data: object) -> None:
        if not isinstance(data, Mapping):
            raise RepartitionFormatError(f"watermark state {data!r}")
        self.current_ms = data["c"]
        self.latest = {
            (str(t), int(p)): Marker((str(t), int(p)), e, bool(i), int(w))
            for t, p, e, i, w in data["m"]
        }
