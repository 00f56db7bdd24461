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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol, cast

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.alerts.document import Alert
from consumer.alerts.stateful_rules import run_alerts
from consumer.alerts.suppression import Suppressor, alert_from_json, alert_to_json
from consumer.config import ConfigError
from consumer.rules.esql.aggregate import AggregatingQuery, AggState
from consumer.rules.loader import LoadedRule
from consumer.rules.schedule import Schedule, WindowedAggregation
from consumer.stream.metrics import Metrics
from consumer.stream.repartition import (
    MATCH,
    ROW,
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
    key_from_json,
    repartition_topic,
)
from consumer.stream.state import Produce as StoreProduce
from consumer.stream.state import StateStore, changelog_topic, ensure_changelogs

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

    def take_changes(self) -> dict[str, object | None]:
        """What changed since the last call, by the state's own store sub-key (None: gone)."""

    def load(self, subkey: str, data: object) -> None: ...

    @property
    def open_groups(self) -> int: ...

    @property
    def state_bytes(self) -> int: ...

    @property
    def suppressed(self) -> int:
        """Matches absorbed into suppression windows so far (0 without suppression)."""


class StatefulRule(Protocol):
    """A rule whose alerts need state: what it routes, and the state that receives it."""

    @property
    def rule_id(self) -> str: ...

    def route(self, record: dict[str, object], payload: object) -> list[Routed]:
        """The records an event routes: an aggregating rule's rows (`payload`, the rows the
        detector found) by group key; a suppressed rule's match (`payload`, its alert)."""

    def new_state(self) -> GroupState: ...


Emit = Callable[[str, object], None]
"""(rule id, one output of `GroupState.advance`): the service turns it into alerts."""

Produce = Callable[[str, Encoded], None]
"""(topic, record): queues the record in the open batch."""


def store_key(rule_id: str, subkey: str) -> str:
    return json.dumps([rule_id, subkey], separators=(",", ":"), ensure_ascii=False)


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
        """Late rows by rule since the last `take_counts` (for the metrics)."""
        self.suppressed: dict[str, int] = {}
        """Matches absorbed into suppression windows by rule since the last `take_counts`."""
        self.last_restore_s = 0.0

    # --- input side --------------------------------------------------------------------------

    def route(self, source: InputPartition, rule_id: str, record: dict[str, object],
              payload: object, *, wall_ms: int, produce: Produce) -> int:
        """Route what one decoded event of `source` gives a stateful rule; returns how many
        records it produced."""
        produced = 0
        for routed in self.rules[rule_id].route(record, payload):
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
            rule_id, subkey = json.loads(key)
            state = owned.states.get(rule_id)
            if state is not None:  # a rule since disabled leaves its groups behind, unread
                state.load(subkey, value)
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
                headers: Iterable[tuple[str, str | bytes | None]] | None) -> None:
        """One record of an owned repartition partition."""
        owned = self._owned[partition]
        record = decode(key, value, headers)
        if isinstance(record, Marker):
            watermark = owned.watermark.observe(record)
            owned.store.put(WATERMARK_KEY, owned.watermark.dump())
            if watermark is not None:
                for rule_id, state in owned.states.items():
                    before = state.suppressed
                    for output in state.advance(watermark):
                        self._emit(rule_id, output)
                    if state.suppressed > before:
                        self.suppressed[rule_id] = (self.suppressed.get(rule_id, 0)
                                                    + state.suppressed - before)
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
                for subkey, data in state.take_changes().items():
                    if data is None:
                        owned.store.delete(store_key(rule_id, subkey))
                    else:
                        owned.store.put(store_key(rule_id, subkey), data)

    def committed(self) -> None:
        self.tracker.committed()

    def rolled_back(self) -> None:
        """After the stores dropped the batch's changes: the groups as they were committed."""
        self.tracker.rolled_back()
        for partition, owned in list(self._owned.items()):
            self._owned[partition] = self._load(owned.store)

    def take_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Late rows and suppressed matches by rule since the last call."""
        late, self.late_events = self.late_events, {}
        suppressed, self.suppressed = self.suppressed, {}
        return late, suppressed

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


# --- the real rules: WindowedAggregation and Suppressor behind GroupState ---------------------

PROGRESS_KEY = "~progress"
"""The sub-key of a state's counters and how far its runs got (a JSON group key is a list)."""


class _RoutedKeys:
    """The rule's query with the group chosen by the router: a row with a multi-valued BY
    reaches one partition per value, and each copy counts for its own group only."""

    def __init__(self, query: AggregatingQuery) -> None:
        self.query = query
        self.key: GroupKey = ()

    @property
    def group_by(self) -> tuple[str, ...]:
        return self.query.group_by

    def group_keys(self, row: Row) -> list[GroupKey]:
        return [self.key]

    def new_state(self) -> AggState:
        return self.query.new_state()

    def add(self, state: AggState, row: Row) -> None:
        self.query.add(state, row)

    def merge(self, into: AggState, other: AggState) -> None:
        self.query.merge(into, other)

    def dump(self, state: AggState) -> object:
        return self.query.dump(state)

    def load(self, data: object) -> AggState:
        return self.query.load(data)

    def finish(self, groups: Iterable[tuple[GroupKey, AggState]], now_ms: int) -> list[Row]:
        return self.query.finish(groups, now_ms)


def _subkey(key: GroupKey) -> str:
    return json.dumps([list(v) if isinstance(v, tuple) else v for v in key],
                      separators=(",", ":"), ensure_ascii=False, default=str)


class _Windows:
    """An aggregating rule's groups (and, when it has alert suppression, its suppression
    state: its groups sharing terms meet on one partition, see `AggregatingRule`)."""

    def __init__(self, rule: LoadedRule, query: AggregatingQuery, schedule: Schedule) -> None:
        self._rule = rule
        self._keys = _RoutedKeys(query)
        self._schedule = schedule
        self.windows: WindowedAggregation[AggState] = WindowedAggregation(self._keys, schedule)
        self.suppressor = Suppressor.for_rule(rule)
        self._progress: object = None
        """The progress as the store has it."""

    def add(self, key: GroupKey, event_ms: int, row: Row) -> bool:
        self._keys.key = key
        return self.windows.add(event_ms, row)

    def advance(self, watermark_ms: int) -> list[object]:
        out: list[object] = []
        detected_at = datetime.now(UTC)
        for run in self.windows.due(watermark_ms):
            out += run_alerts(self._rule, run, detected_at, self.suppressor,
                              self._schedule.timestamp_field)
        if self.suppressor is not None:
            out += self.suppressor.due(watermark_ms)
        return out

    def take_changes(self) -> dict[str, object | None]:
        changes: dict[str, object | None] = {
            "w" + _subkey(key): self.windows.dump_group(key)
            for key in self.windows.take_changed()
        }
        progress: dict[str, object] = {"w": self.windows.dump_progress()}
        if self.suppressor is not None:
            for terms in self.suppressor.take_changed():
                changes["s" + _subkey(terms)] = self.suppressor.dump_group(terms)
            progress["s"] = self.suppressor.dump_progress()
        if progress != self._progress:  # written when it moved, not at every checkpoint
            changes[PROGRESS_KEY] = self._progress = progress
        return changes

    def load(self, subkey: str, data: object) -> None:
        if subkey == PROGRESS_KEY:
            assert isinstance(data, dict)
            self._progress = data
            self.windows.load_progress(data["w"])
            if self.suppressor is not None and "s" in data:
                self.suppressor.load_progress(data["s"])
        elif subkey.startswith("w"):
            self.windows.load_group(key_from_json(json.loads(subkey[1:])), data)
        elif self.suppressor is not None and isinstance(data, dict):
            self.suppressor.load_group(key_from_json(json.loads(subkey[1:])), data)

    @property
    def open_groups(self) -> int:
        return self.windows.open_groups

    @property
    def state_bytes(self) -> int:
        suppressed = 0 if self.suppressor is None else self.suppressor.state_bytes
        return self.windows.state_bytes + suppressed

    @property
    def suppressed(self) -> int:
        return 0 if self.suppressor is None else self.suppressor.suppressed


class AggregatingRule:
    """A rule with STATS: each event's pre-STATS rows (the detector found them) go to their
    group's partition, where `WindowedAggregation` counts them over Elastic's schedule.

    With alert suppression, a run's alerts are suppressed where they are made, so every group
    whose alerts can share terms must be on one partition: the partition is picked by the BY
    columns that are suppression fields, or by the rule alone when a suppression field is not
    a BY column (then the rule's groups all live on one partition)."""

    def __init__(self, rule: LoadedRule) -> None:
        if rule.aggregation is None:
            raise ValueError(f"rule {rule.rule_id} has no STATS")
        self.rule = rule
        self.query = rule.aggregation
        self.schedule = Schedule.for_rule(rule)
        self._placing: tuple[int, ...] | None = None
        suppression = rule.definition.rule.alert_suppression
        if suppression is not None:
            by = self.query.group_by
            fields = list(suppression.group_by)
            self._placing = (tuple(by.index(name) for name in fields)
                             if all(name in by for name in fields) else ())

    @property
    def rule_id(self) -> str:
        return self.rule.rule_id

    def route(self, record: dict[str, object], payload: object) -> list[Routed]:
        event_ms = self.schedule.event_time(record)
        if event_ms is None or not isinstance(payload, (list, tuple)):
            return []
        routed = []
        for row in payload:
            for key in self.query.group_keys(row):
                placed = (None if self._placing is None
                          else tuple(key[index] for index in self._placing))
                routed.append(Routed(ROW, self.rule_id, key, event_ms, row, placed))
        return routed

    def new_state(self) -> GroupState:
        return _Windows(self.rule, self.query, self.schedule)


class _Suppression:
    """A row-at-a-time rule's suppression state on one partition."""

    def __init__(self, suppressor: Suppressor) -> None:
        self.suppressor = suppressor
        self._progress: object = None

    def add(self, key: GroupKey, event_ms: int, row: Row) -> bool:
        """A late match is folded in at the next watermark, never dropped (suppression.py)."""
        passed = self.suppressor.offer(alert_from_json(row), event_ms)
        assert passed is None  # routed only when it has terms
        return True

    def advance(self, watermark_ms: int) -> list[object]:
        return list(self.suppressor.due(watermark_ms))

    def take_changes(self) -> dict[str, object | None]:
        changes: dict[str, object | None] = {
            "s" + _subkey(terms): self.suppressor.dump_group(terms)
            for terms in self.suppressor.take_changed()
        }
        progress = {"s": self.suppressor.dump_progress()}
        if progress != self._progress:
            changes[PROGRESS_KEY] = self._progress = progress
        return changes

    def load(self, subkey: str, data: object) -> None:
        assert isinstance(data, dict)
        if subkey == PROGRESS_KEY:
            self._progress = data
            self.suppressor.load_progress(data["s"])
        else:
            self.suppressor.load_group(key_from_json(json.loads(subkey[1:])), data)

    @property
    def open_groups(self) -> int:
        return self.suppressor.open_groups

    @property
    def state_bytes(self) -> int:
        return self.suppressor.state_bytes

    @property
    def suppressed(self) -> int:
        return self.suppressor.suppressed


class SuppressedRule:
    """A row-at-a-time rule with alert suppression: its matches go to their terms' partition,
    where `Suppressor` sends the first alert and counts the rest in event time."""

    def __init__(self, rule: LoadedRule) -> None:
        suppressor = Suppressor.for_rule(rule)
        if suppressor is None:
            raise ValueError(f"rule {rule.rule_id} has no alert suppression")
        self.rule = rule
        self._terms = suppressor
        self.schedule = Schedule.for_rule(rule)

    @property
    def rule_id(self) -> str:
        return self.rule.rule_id

    def route(self, record: dict[str, object], payload: object) -> list[Routed]:
        """[] when the alert cannot be suppressed (a missing term under doNotSuppress, or no
        event time): the caller sends it at once."""
        assert isinstance(payload, Alert)
        terms = self._terms.terms(payload)
        event_ms = self.schedule.event_time(record)
        if terms is None or event_ms is None:
            return []
        return [Routed(MATCH, self.rule_id, terms, event_ms, alert_to_json(payload))]

    def new_state(self) -> GroupState:
        suppressor = Suppressor.for_rule(self.rule)
        assert suppressor is not None
        return _Suppression(suppressor)


def stateful_rules(aggregating: Iterable[LoadedRule], row_at_a_time: Iterable[LoadedRule]
                   ) -> list[AggregatingRule | SuppressedRule]:
    """Every enabled rule that needs the stage: all aggregating ones, and the others that have
    alert suppression."""
    found: list[AggregatingRule | SuppressedRule] = [AggregatingRule(r) for r in aggregating]
    found += [SuppressedRule(rule) for rule in row_at_a_time
              if rule.definition.rule.alert_suppression is not None]
    return found


# --- in the service: one participant of the checkpoint ----------------------------------------

STORE: Final = "aggregations"
"""The stage's state store: changelog `<group.id>.aggregations-changelog`, one partition per
repartition partition."""

REPORT_S: Final = 5.0
"""How often the state's size is measured for the metrics."""

HEARTBEAT_S: Final = 1.0
"""With no batch for this long, one is opened for the markers alone: an idle input still
moves the watermark (and closes runs) as the wall clock goes on."""


class Stateful:
    """The stage as the service runs it: a checkpoint participant that routes, consumes the
    repartition topic, and flushes markers, groups and its store with each batch."""

    def __init__(self, stage: StatefulStage, store: StateStore,
                 ends: Mapping[InputPartition, int]) -> None:
        """`ends` is the source's live view of where each input partition ends (for idle)."""
        self.stage = stage
        self.store = store
        self._ends = ends
        self.last_flush = time.monotonic()
        self.restores: list[float] = []
        """Restore times not yet reported."""
        self._reported = 0.0
        self._lag_labels: set[int] = set()

    @property
    def topic(self) -> str:
        return self.stage.topic

    def assigned(self, partitions: Iterable[TopicPartition],
                 committed: Mapping[InputPartition, int]) -> None:
        """Inside the assign callback, before the partitions' first message: restore the
        repartition partitions' state, and read one that the group never committed from its
        beginning (not from the input's start position: every row counts)."""
        now_ms = int(time.time() * 1000)
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if tp.topic != self.topic:
                self.stage.tracker.assigned(key, now_ms)
                continue
            if key not in committed:
                tp.offset = OFFSET_BEGINNING
            started = time.monotonic()
            self.store.assign(key, committed.get(key))
            self.stage.assign(tp.partition, self.store.partition(key))
            self.restores.append(time.monotonic() - started)

    def revoked(self, partitions: Iterable[InputPartition]) -> None:
        for topic, number in partitions:
            if topic == self.topic:
                self.stage.revoke(number)
                self.store.revoke((topic, number))
            else:
                self.stage.tracker.revoked((topic, number))

    def consume(self, messages: Sequence[Message]) -> dict[InputPartition, int]:
        """The repartition topic's messages of a batch; the next offset of each partition."""
        offsets: dict[InputPartition, int] = {}
        for message in messages:
            if message.error() is not None:
                continue
            number, offset = message.partition(), message.offset()
            assert number is not None
            assert offset is not None
            if number in self.stage.owned:
                headers = cast("list[tuple[str, bytes | None]] | None", message.headers())
                self.stage.consume(number, message.key(), message.value(), headers)
            offsets[(self.topic, number)] = offset + 1
        return offsets

    def heartbeat_due(self) -> bool:
        return time.monotonic() - self.last_flush >= HEARTBEAT_S

    def report(self, metrics: Metrics) -> None:
        """The stage's metrics; the state's size walks all of it, so every REPORT_S only."""
        late, suppressed = self.stage.take_counts()
        for rule_id, count in late.items():
            metrics.late_events.labels(rule_id).inc(count)
        for rule_id, count in suppressed.items():
            metrics.suppressed_matches.labels(rule_id).inc(count)
        for seconds in self.restores:
            metrics.state_restore.observe(seconds)
        self.restores.clear()
        now = time.monotonic()
        if now - self._reported < REPORT_S:
            return
        self._reported = now
        stats = self.stage.stats(int(time.time() * 1000))
        for rule_id in self.stage.rules:
            metrics.late_events.labels(rule_id)  # a series at 0 from the start, for rate()
            metrics.suppressed_matches.labels(rule_id)
            metrics.stateful_open_groups.labels(rule_id).set(stats.open_groups.get(rule_id, 0))
            metrics.stateful_state_bytes.labels(rule_id).set(stats.state_bytes.get(rule_id, 0))
        for partition in list(self._lag_labels - stats.watermark_lag_ms.keys()):
            metrics.watermark_lag.remove(str(partition))
            self._lag_labels.discard(partition)
        for partition, lag_ms in stats.watermark_lag_ms.items():
            metrics.watermark_lag.labels(str(partition)).set(lag_ms / 1000)
            self._lag_labels.add(partition)

    # --- checkpoint participant ---------------------------------------------------------------

    def flush(self, produce: StoreProduce, offsets: Mapping[InputPartition, int]) -> int:
        """Markers (after the batch's rows: the last records of the batch to each repartition
        partition), then the changed groups, then the store's changelog records."""

        def caught_up(source: InputPartition) -> bool:
            """Read to the end (an empty partition, never committed, is read to its end)."""
            end = self._ends.get(source)
            return end is not None and offsets.get(source, 0) >= end

        def put(topic: str, record: Encoded) -> None:
            produce(topic, record.key, record.value, record.headers, partition=record.partition)

        self.last_flush = time.monotonic()
        produced = self.stage.markers(int(time.time() * 1000), caught_up, put)
        self.stage.flush()
        return produced + self.store.flush(produce, offsets)

    def committed(self) -> None:
        self.store.committed()
        self.stage.committed()

    def rolled_back(self) -> None:
        self.store.rolled_back()
        self.stage.rolled_back()

    def reload(self, committed: Mapping[InputPartition, int]) -> None:
        """After a commit of unknown outcome: the groups as the changelog has them. The
        markers fall back to the event times last known committed, which only delays runs."""
        self.store.reload(committed)
        for partition in list(self.stage.owned):
            self.stage.assign(partition, self.store.partition((self.topic, partition)))
        self.stage.tracker.rolled_back()


def ensure_internal_topics(admin: AdminClient, group_id: str, input_partitions: int,
                           repartition_partitions: int | None) -> int:
    """The repartition topic (as many partitions as the largest input topic unless set; plain
    retention: a row is read once by its partition's owner) and the stage's compacted
    changelog, one partition per repartition partition. Returns the repartition partitions."""
    topic = repartition_topic(group_id)
    existing = admin.list_topics(timeout=10).topics
    if topic in existing:
        partitions = len(existing[topic].partitions)
        if repartition_partitions is not None and partitions != repartition_partitions:
            raise ConfigError(
                f"setting repartition_partitions: {repartition_partitions}, but {topic} has "
                f"{partitions} partitions (groups are placed by partition count: delete the "
                "internal topics, or the consumer group, to change it)")
    else:
        partitions = repartition_partitions or input_partitions
        future = admin.create_topics([NewTopic(topic, num_partitions=partitions)],
                                     request_timeout=30)[topic]
        try:
            future.result()
            log.info("created repartition topic %s (%d partitions)", topic, partitions)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    ensure_changelogs(admin, [changelog_topic(group_id, STORE)], partitions)
    return partitions
