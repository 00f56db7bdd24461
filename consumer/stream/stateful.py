"""The stateful stage: aggregating rules and alert suppression, exactly-once across restarts.

Two halves run in every worker, inside the one consumer group and the one transaction:

- **route** (input side): each decoded event's rows for the stateful rules go to the
  repartition topic keyed by (rule, group key) (`repartition.py`), and at each checkpoint
  each assigned input partition's marker goes to every repartition partition;
- **aggregate** (repartition side): the owner of a repartition partition adds its rows to the
  groups' state, turns markers into the partition's watermark and, as the watermark passes a
  run, hands the run's output to `emit` (the service makes alerts of it).

State lives in a changelog-backed store per repartition partition (`stream/state.py`): at each
checkpoint every group that changed is written to it, in the same transaction as the alerts and
the offsets, and on assignment the groups are loaded back from it. An abandoned batch drops its
store changes and the in-memory groups are loaded again from the store, so the batch read again
starts from exactly the state its first attempt started from.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from consumer.stream.repartition import (
    Encoded,
    GroupKey,
    InputPartition,
    InputTracker,
    Marker,
    Routed,
    Row,
    Watermark,
    decode,
    encode_marker,
    encode_routed,
)

log = logging.getLogger(__name__)

WATERMARK_KEY = "~watermark"
"""The store key of the partition's watermark state (a group key is a JSON list: never this)."""


class KeyValues(Protocol):
    """One repartition partition's store (stream/state.py's PartitionStore)."""

    def get(self, key: str, default: object = None) -> object: ...

    def put(self, key: str, value: object) -> None: ...

    def delete(self, key: str) -> None: ...

    def items(self) -> Iterator[tuple[str, object]]: ...


class GroupState(Protocol):
    """One stateful rule's groups on one repartition partition."""

    def add(self, key: GroupKey, event_ms: int, row: Row) -> bool:
        """Fold a row in; False when every run that covers `event_ms` was evaluated already
        (a late event: counted, and dropped)."""

    def advance(self, watermark_ms: int) -> list[object]:
        """Evaluate what the watermark closed; evict what no open run needs."""

    def take_changes(self) -> dict[GroupKey, object | None]:
        """Each group changed since the last call, dumped (None: evicted)."""

    def load(self, key: GroupKey, data: object) -> None: ...

    @property
    def open_groups(self) -> int: ...

    @property
    def state_bytes(self) -> int: ...


class StatefulRule(Protocol):
    """A rule whose alerts need state: what it routes, and the state that receives it."""

    @property
    def rule_id(self) -> str: ...

    def route(self, record: dict[str, object]) -> list[Routed]:
        """The event's rows (or its match) with group key and event time; [] for most."""

    def new_state(self) -> GroupState: ...


Emit = Callable[[str, object], None]
"""(rule id, one output of `GroupState.advance`): the service turns it into alerts."""

Produce = Callable[[str, Encoded], None]
"""(topic, record): queues the record in the open batch."""


def store_key(rule_id: str, key: GroupKey) -> str:
    return json.dumps([rule_id, list(key)], separators=(",", ":"), ensure_ascii=False)


@dataclass
class _Partition:
    watermark: Watermark
    states: dict[str, GroupState]
    store: KeyValues
    late: int = 0


@dataclass
class StageStats:
    """What the metrics report, per rule and per repartition partition."""

    open_groups: dict[str, int] = field(default_factory=dict)
    state_bytes: dict[str, int] = field(default_factory=dict)
    watermark_lag_ms: dict[int, int] = field(default_factory=dict)


class StatefulStage:
    """Both halves of the stage for one worker; the service drives it from its loop."""

    def __init__(
        self,
        rules: Sequence[StatefulRule],
        *,
        topic: str,
        partitions: int,
        inputs: frozenset[InputPartition],
        allowed_lateness_ms: int,
        idle_timeout_ms: int,
        emit: Emit,
    ) -> None:
        self.rules = {rule.rule_id: rule for rule in rules}
        self.topic = topic
        self.partitions = partitions
        self._inputs = inputs
        self._lateness_ms = allowed_lateness_ms
        self._emit = emit
        self.tracker = InputTracker(idle_timeout_ms)
        self._owned: dict[int, _Partition] = {}
        self.late_events: dict[str, int] = {}
        self.last_restore_s = 0.0

    # --- input side --------------------------------------------------------------------------

    def route(self, source: InputPartition, record: dict[str, object], wall_ms: int,
              produce: Produce) -> int:
        """Route one decoded event of `source`; returns how many records it produced."""
        produced = 0
        for rule in self.rules.values():
            for routed in rule.route(record):
                produce(self.topic, encode_routed(routed, self.partitions))
                self.tracker.saw(source, routed.event_ms, wall_ms)
                produced += 1
        return produced

    def markers(self, wall_ms: int, caught_up: Callable[[InputPartition], bool],
                produce: Produce) -> int:
        """Each assigned input partition's marker to every repartition partition: called last
        before a commit, so that the markers follow the batch's rows."""
        made = self.tracker.markers(wall_ms, caught_up)
        for marker in made:
            for partition in range(self.partitions):
                produce(self.topic, encode_marker(marker, partition))
        return len(made) * self.partitions

    # --- repartition side --------------------------------------------------------------------

    def assign(self, partition: int, store: KeyValues) -> None:
        """Load a newly assigned repartition partition's groups from its (restored) store."""
        started = time.monotonic()
        self._owned[partition] = self._load(store)
        self.last_restore_s = time.monotonic() - started
        log.info("repartition partition %d: %d groups loaded in %.3fs", partition,
                 sum(s.open_groups for s in self._owned[partition].states.values()),
                 self.last_restore_s)

    def revoke(self, partition: int) -> None:
        self._owned.pop(partition, None)

    @property
    def owned(self) -> Mapping[int, _Partition]:
        return self._owned

    def _load(self, store: KeyValues) -> _Partition:
        owned = _Partition(Watermark(self._inputs, self._lateness_ms),
                           {rule_id: rule.new_state() for rule_id, rule in self.rules.items()},
                           store)
        for key, value in store.items():
            if key == WATERMARK_KEY:
                owned.watermark.load(value)
                continue
            rule_id, group = json.loads(key)
            state = owned.states.get(rule_id)
            if state is not None:  # a rule since disabled leaves its groups behind, unread
                state.load(tuple(group), value)
        for rule_id, state in owned.states.items():
            if owned.watermark.current_ms is not None:
                # Runs up to the watermark were evaluated (and their groups evicted) before:
                # the state learns where it stands, so a late row is known as late.
                for output in state.advance(owned.watermark.current_ms):
                    log.error("rule %s: a restored group had an output already due: %r",
                              rule_id, output)
            state.take_changes()  # what was just loaded is no change
        return owned

    def consume(self, partition: int, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes]] | None) -> None:
        """One record of an owned repartition partition."""
        owned = self._owned[partition]
        record = decode(key, value, headers)
        if isinstance(record, Marker):
            watermark = owned.watermark.observe(record)
            owned.store.put(WATERMARK_KEY, owned.watermark.dump())
            if watermark is not None:
                for rule_id, state in owned.states.items():
                    for output in state.advance(watermark):
                        self._emit(rule_id, output)
            return
        target = owned.states.get(record.rule_id)
        if target is None:
            return  # routed by a worker that runs a rule this one does not
        if not target.add(record.group_key, record.event_ms, record.row):
            owned.late += 1
            self.late_events[record.rule_id] = self.late_events.get(record.rule_id, 0) + 1

    # --- the checkpoint ----------------------------------------------------------------------

    def flush(self) -> None:
        """Write every changed group into its store: before the store's own flush."""
        for owned in self._owned.values():
            for rule_id, state in owned.states.items():
                for group, data in state.take_changes().items():
                    if data is None:
                        owned.store.delete(store_key(rule_id, group))
                    else:
                        owned.store.put(store_key(rule_id, group), data)

    def committed(self) -> None:
        self.tracker.committed()

    def rolled_back(self) -> None:
        """After the stores dropped the batch's changes: the groups as they were committed."""
        self.tracker.rolled_back()
        for partition, owned in list(self._owned.items()):
            self._owned[partition] = self._load(owned.store)

    def stats(self, wall_ms: int) -> StageStats:
        stats = StageStats()
        for partition, owned in self._owned.items():
            for rule_id, state in owned.states.items():
                stats.open_groups[rule_id] = stats.open_groups.get(rule_id, 0) + state.open_groups
                stats.state_bytes[rule_id] = stats.state_bytes.get(rule_id, 0) + state.state_bytes
            lag = owned.watermark.lag_ms(wall_ms)
            if lag is not None:
                stats.watermark_lag_ms[partition] = lag
        return stats
