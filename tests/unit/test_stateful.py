"""The stateful stage through an in-memory group of workers with transactions and crashes.

The harness plays the broker: input partitions, a repartition topic, a changelog and committed
offsets, all changed only when a batch commits. Workers read batches, crash (everything of the
open batch is lost, the worker is replaced and restores from the changelog), and partitions move
between them. Whatever happens, the alerts that committed must equal an offline count over all
events: each run's count per group, once.
"""

from __future__ import annotations

import json
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from consumer.stream.repartition import (
    Encoded,
    GroupKey,
    InputPartition,
    Marker,
    Routed,
    Row,
    decode,
)
from consumer.stream.stateful import WATERMARK_KEY, GroupState, StatefulRule, StatefulStage

INTERVAL = 300_000
LOOKBACK = 360_000
TOPIC = "group.repartition"
RULE = "count-by-user"


def runs_covering(ts: int) -> range:
    """Elastic's runs t (multiples of the interval) with t - lookback < ts <= t."""
    first = -(-ts // INTERVAL) * INTERVAL
    return range(first, ts + LOOKBACK, INTERVAL)


class CountByUser:
    """A toy windowed COUNT(*) BY user: what WindowedAggregation does, small enough to trust."""

    def __init__(self) -> None:
        self.groups: dict[GroupKey, dict[int, int]] = {}
        self.evaluated: int | None = None
        self.changed: set[GroupKey] = set()

    def add(self, key: GroupKey, event_ms: int, row: Row) -> bool:
        runs = [t for t in runs_covering(event_ms) if self.evaluated is None or t > self.evaluated]
        if not runs:
            return False
        buckets = self.groups.setdefault(key, {})
        for run in runs:
            buckets[run] = buckets.get(run, 0) + 1
        self.changed.add(key)
        return True

    def advance(self, watermark_ms: int) -> list[object]:
        outputs: list[object] = []
        for key, buckets in list(self.groups.items()):
            for run in sorted(t for t in buckets if t <= watermark_ms):
                outputs.append((run, key, buckets.pop(run)))
                self.changed.add(key)
            if not buckets:
                del self.groups[key]
        self.evaluated = max(self.evaluated or watermark_ms, watermark_ms)
        return outputs

    def take_changes(self) -> dict[str, object | None]:
        changes: dict[str, object | None] = {
            json.dumps(key): sorted(self.groups[key].items()) if key in self.groups else None
            for key in self.changed
        }
        self.changed.clear()
        return changes

    def load(self, subkey: str, data: object) -> None:
        assert isinstance(data, list)
        self.groups[tuple(json.loads(subkey))] = {int(t): int(c) for t, c in data}

    @property
    def open_groups(self) -> int:
        return len(self.groups)

    @property
    def state_bytes(self) -> int:
        return sum(len(json.dumps(sorted(b.items()))) for b in self.groups.values())

    suppressed = 0


class CountRule:
    rule_id = RULE

    def route(self, record: dict[str, object], payload: object) -> list[Routed]:
        ts = record["ts"]
        assert isinstance(ts, int)
        return [Routed("row", RULE, (record["user"],), ts, {})]

    def new_state(self) -> GroupState:
        return CountByUser()


def offline(events: list[dict[str, object]]) -> Counter[tuple[int, GroupKey, int]]:
    """The oracle: every run's count per user over all events (watermark = end of input)."""
    counts: Counter[tuple[int, GroupKey]] = Counter()
    for event in events:
        ts = event["ts"]
        assert isinstance(ts, int)
        for run in runs_covering(ts):
            counts[(run, (event["user"],))] += 1
    return Counter((run, key, count) for (run, key), count in counts.items())


class Store:
    """stream/state.py's PartitionStore semantics: pending changes until the batch commits."""

    def __init__(self, committed: dict[str, object]) -> None:
        self.data = dict(committed)
        self.pending: dict[str, object | None] = {}

    def get(self, key: str, default: object = None) -> object:
        value = self.pending[key] if key in self.pending else self.data.get(key, default)
        return default if value is None else value

    def put(self, key: str, value: object) -> None:
        self.pending[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.pending[key] = None

    def items(self) -> Iterator[tuple[str, object]]:
        merged = {**self.data, **self.pending}
        return iter([(k, v) for k, v in merged.items() if v is not None])


@dataclass
class Broker:
    inputs: dict[InputPartition, list[dict[str, object]]]
    repartitions: int
    log: dict[int, list[Encoded]] = field(default_factory=dict)
    changelog: dict[int, dict[str, object]] = field(default_factory=dict)
    offsets: dict[object, int] = field(default_factory=dict)
    alerts: list[object] = field(default_factory=list)


Router = Callable[["Worker", InputPartition, dict[str, object], int], None]
"""Routes one input event through a worker's stage (the batch processor's part)."""


def count_router(worker: Worker, source: InputPartition, event: dict[str, object],
                 wall: int) -> None:
    worker.stage.route(source, RULE, event, None, wall_ms=wall,
                       produce=lambda t, e: worker.out.append((t, e)))


class Worker:
    """One member: a stage, its stores, its open batch."""

    def __init__(self, broker: Broker, lateness: int, idle: int,
                 rules: Sequence[StatefulRule] = (), router: Router = count_router) -> None:
        self.broker = broker
        self.out: list[tuple[str, Encoded]] = []
        self.emitted: list[object] = []
        self.router = router
        self.stage = StatefulStage(
            list(rules) or [CountRule()], topic=TOPIC, partitions=broker.repartitions,
            inputs=frozenset(broker.inputs), allowed_lateness_ms=lateness,
            idle_timeout_ms=idle, emit=lambda rule, output: self.emitted.append(output),
        )
        self.stores: dict[int, Store] = {}
        self.positions: dict[object, int] = {}

    def own(self, partition: object, wall: int) -> None:
        self.positions[partition] = self.broker.offsets.get(partition, 0)
        if isinstance(partition, int):
            self.stores[partition] = Store(self.broker.changelog.get(partition, {}))
            self.stage.assign(partition, self.stores[partition])
        else:
            assert isinstance(partition, tuple)
            self.stage.tracker.assigned(partition, wall)

    def disown(self, partition: object) -> None:
        self.positions.pop(partition)
        if isinstance(partition, int):
            self.stage.revoke(partition)
            del self.stores[partition]
        else:
            assert isinstance(partition, tuple)
            self.stage.tracker.revoked(partition)

    def read(self, partition: object, count: int, wall: int) -> None:
        start = self.positions[partition]
        if isinstance(partition, int):
            for record in self.broker.log.get(partition, [])[start:start + count]:
                self.stage.consume(partition, record.key, record.value, record.headers)
                self.positions[partition] += 1
        else:
            assert isinstance(partition, tuple)
            for event in self.broker.inputs[partition][start:start + count]:
                self.router(self, partition, event, wall)
                self.positions[partition] += 1

    def commit(self, wall: int) -> None:
        def caught_up(source: InputPartition) -> bool:
            return self.positions[source] >= len(self.broker.inputs[source])

        self.stage.markers(wall, caught_up, lambda t, e: self.out.append((t, e)))
        self.stage.flush()
        for _, record in self.out:
            self.broker.log.setdefault(record.partition, []).append(record)
        for partition, store in self.stores.items():
            committed = self.broker.changelog.setdefault(partition, {})
            for key, value in store.pending.items():
                if value is None:
                    committed.pop(key, None)
                else:
                    committed[key] = value
            store.data = dict(committed)
            store.pending.clear()
        self.broker.offsets.update(self.positions)
        self.broker.alerts.extend(self.emitted)
        self.out.clear()
        self.emitted.clear()
        self.stage.committed()

    def abort(self) -> None:
        for store in self.stores.values():
            store.pending.clear()
        self.out.clear()
        self.emitted.clear()
        self.positions = {p: self.broker.offsets.get(p, 0) for p in self.positions}
        self.stage.rolled_back()


def run_group(events: list[dict[str, object]], *, inputs: int, repartitions: int,
              workers: int, seed: int, lateness: int, keyed: bool,
              rules: Sequence[StatefulRule] = (), router: Router = count_router,
              key: Callable[[dict[str, object]], str] = lambda e: str(e["user"]),
              done: Callable[[Broker], bool] | None = None) -> Broker:
    rng = random.Random(seed)
    parts: dict[InputPartition, list[dict[str, object]]] = {("in", p): [] for p in range(inputs)}
    for event in events:
        p = zlib.crc32(key(event).encode()) % inputs if keyed else rng.randrange(inputs)
        parts[("in", p)].append(event)
    broker = Broker(parts, repartitions)
    everything: list[object] = [*parts, *range(repartitions)]
    wall = 10**13  # far past every event: once idle, the watermark passes every run
    def worker() -> Worker:
        return Worker(broker, lateness, 50, rules, router)

    members = [worker() for _ in range(workers)]
    owner: dict[object, int] = {}

    def rebalance() -> None:
        for index, member in enumerate(members):
            for partition in [p for p, o in owner.items() if o == index]:
                member.disown(partition)
        owner.clear()
        for partition in everything:
            owner[partition] = rng.randrange(len(members))
            members[owner[partition]].own(partition, wall)

    rebalance()
    for _ in range(20_000):
        wall += rng.randrange(1, 40)
        index = rng.randrange(len(members))
        member = members[index]
        owned = [p for p, o in owner.items() if o == index]
        for partition in rng.sample(owned, min(len(owned), rng.randrange(1, 4))):
            member.read(partition, rng.randrange(1, 6), wall)
        roll = rng.random()
        if roll < 0.07:  # kill -9: the open batch is gone, a new process restores
            members[index] = worker()
            for partition in owned:
                members[index].own(partition, wall)
        elif roll < 0.1:
            member.abort()
        elif roll < 0.13:
            member.commit(wall)
            for other in members:
                other.commit(wall)
            rebalance()
        else:
            member.commit(wall)
        if (done or (lambda b: _drained(b, events)))(broker):
            return broker
    raise AssertionError("not drained after 20000 steps")


def _drained(broker: Broker, events: list[dict[str, object]]) -> bool:
    """Every input record and every row committed, and no group left open anywhere (markers
    keep coming: each commit makes some)."""
    if any(broker.offsets.get(p, 0) < len(log) for p, log in broker.inputs.items()):
        return False
    for partition, log in broker.log.items():
        rows = [i for i, record in enumerate(log) if record.key is not None]
        if rows and broker.offsets.get(partition, 0) <= rows[-1]:
            return False
    last_run = max((max(runs_covering(int(str(e["ts"])))) for e in events), default=0)
    for partition in range(broker.repartitions):
        state = broker.changelog.get(partition, {})
        watermark = state.get(WATERMARK_KEY)
        if set(state) - {WATERMARK_KEY} or not isinstance(watermark, dict):
            return False
        if watermark["c"] is None or watermark["c"] < last_run:
            return False
    return True


events_strategy = st.lists(
    st.tuples(st.sampled_from(["alice", "bob", "carol", "dave", "erin"]),
              st.integers(0, 3_000_000)),
    max_size=60,
)


@given(events=events_strategy, inputs=st.integers(1, 4), repartitions=st.integers(1, 4),
       workers=st.integers(1, 3), seed=st.integers(0, 2**32), keyed=st.booleans())
@settings(max_examples=60, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
def test_committed_alerts_equal_the_offline_count_whatever_crashes_and_rebalances(
    events: list[tuple[str, int]], inputs: int, repartitions: int, *, workers: int, seed: int,
    keyed: bool,
) -> None:
    # Within a partition events may be out of order by up to the allowed lateness.
    lateness = 600_000
    rng = random.Random(seed)
    ordered = sorted(events, key=lambda e: e[1] + rng.randrange(lateness // 2))
    records: list[dict[str, object]] = [{"user": u, "ts": ts} for u, ts in ordered]
    broker = run_group(records, inputs=inputs, repartitions=repartitions, workers=workers,
                       seed=seed, lateness=lateness, keyed=keyed)
    assert Counter(broker.alerts) == offline(records)


def lone_stage(emitted: list[object]) -> StatefulStage:
    """A stage of CountRule alone: one input partition, one repartition partition, no
    lateness; its outputs go to `emitted`."""
    return StatefulStage([CountRule()], topic=TOPIC, partitions=1, inputs=frozenset({("in", 0)}),
                         allowed_lateness_ms=0, idle_timeout_ms=10,
                         emit=lambda rule, output: emitted.append(output))


MARK = None
"""In a `feed` script: the markers, as at a checkpoint."""


def feed(stage: StatefulStage, script: list[int | None]) -> list[Encoded]:
    """Route user a's events at the script's times and the markers where it says `MARK`, then
    consume all of it in order, as the owner of the one repartition partition; returns what
    was produced."""
    produced: list[Encoded] = []
    for ts in script:
        if ts is MARK:
            stage.markers(0, lambda p: False, lambda t, e: produced.append(e))
        else:
            stage.route(("in", 0), RULE, {"user": "a", "ts": ts}, None, wall_ms=0,
                        produce=lambda t, e: produced.append(e))
    for record in produced:
        stage.consume(0, record.key, record.value, record.headers)
    return produced


def test_a_late_event_is_counted_and_dropped() -> None:
    emitted: list[object] = []
    stage = lone_stage(emitted)
    stage.assign(0, Store({}))
    feed(stage, [1_000_000, MARK, 100])
    assert emitted == []  # the event at 100 belonged to the run at 300000, long closed
    assert stage.late_events == {RULE: 1}


def test_an_event_at_the_markers_very_time_on_a_run_boundary_still_counts() -> None:
    emitted: list[object] = []
    stage = lone_stage(emitted)
    stage.assign(0, Store({}))
    feed(stage, [300_000, MARK, 300_000, 300_001, MARK])
    assert emitted == [(300_000, ("a",), 2)]
    assert stage.late_events == {}


def test_restore_reproduces_the_groups_and_the_watermark() -> None:
    emitted: list[object] = []
    first, store = lone_stage(emitted), Store({})
    first.assign(0, store)
    produced = feed(first, [100, 200_000, 300_000, 400_000, MARK])
    first.flush()
    assert emitted == [(300_000, ("a",), 3)]
    restored = lone_stage(emitted)
    restored.assign(0, Store(dict(store.items())))
    assert restored.owned[0].states[RULE].open_groups == 1
    assert restored.owned[0].watermark.current_ms == 399_999
    marker = decode(produced[-1].key, produced[-1].value, produced[-1].headers)
    assert isinstance(marker, Marker)
    assert marker.event_ms == 400_000
