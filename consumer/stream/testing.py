"""In-memory stand-ins for Kafka, for unit tests of the loop, the checkpoint and state stores.

As bytewax ships `bytewax.testing`: an `InMemoryBroker` holds topics (committed records per
partition, what a `read_committed` reader sees) and one group's committed offsets, and is the
service's `Clients` (`Service(..., clients=broker)`, then `service.open(broker)` and
`service.step()` from the test):
- `open_sink()` gives an `InMemorySink`, whose open batch is a transaction: `commit` makes the
  batch's records visible and commits the offsets at once, `abort` drops them;
- `open_source(rebalance)` gives an `InMemorySource` over the broker's `inputs`, handing out real
  `confluent_kafka.Message` objects from the group's committed offsets; the test calls its
  `assign`, `revoke` and `lose`, which run the service's rebalance hooks as librdkafka's
  callbacks would (the batch lifecycle's revoke and loss);
- `changelog_reader()` is the broker itself: state stores restore from what sinks committed.

Faults a test can inject into a sink: `fail_commits` (the next commits are abandoned, as a
transaction the broker aborted), `wedge` (the next commit blocks until the next `open_sink`,
as librdkafka#5456; `wedge_commits` says whether it then commits after all), `fence(error)`
(the producer reports a fatal error, as a fenced producer does). `member_fenced` on a source
says the group membership is gone.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, Message, TopicPartition

from consumer.alerts.document import Headers
from consumer.stream.sink import FatalSinkError
from consumer.stream.source import PartitionsCallback

if TYPE_CHECKING:
    from consumer.stream.service import Rebalance
from consumer.stream.state import ChangelogRecord, Partition


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int = 0


@dataclass
class InMemoryBroker:
    """Topics and one group's offsets; also the service's `Clients` (`open_source` subscribes
    to `inputs`) and a `ChangelogReader`."""

    partitions: int = 3
    """Partitions of every topic (a record without an explicit partition goes by its key)."""
    inputs: tuple[str, ...] = ("in",)
    sinks: list[InMemorySink] = field(default_factory=list)
    """Every sink opened, the current one last."""
    sources: list[InMemorySource] = field(default_factory=list)
    topics: dict[str, dict[int, list[Record]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    committed: dict[Partition, int] = field(default_factory=dict)
    """The group's committed offsets (one group per broker: what the tests need)."""

    def append(self, record: Record) -> int:
        log = self.topics[record.topic][record.partition]
        log.append(record)
        return len(log) - 1

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                headers: Headers | None = None, *, partition: int | None = None,
                timestamp_ms: int = 0) -> None:
        """Write a committed record directly (a test's producer)."""
        chosen = self._place(key) if partition is None else partition
        self.append(Record(topic, chosen, key, value, headers or [], timestamp_ms))

    def _place(self, key: bytes | None) -> int:
        return sum(key) % self.partitions if key else 0

    def records(self, topic: str) -> list[Record]:
        """Every committed record of a topic, partition by partition."""
        return [record for number in sorted(self.topics[topic])
                for record in self.topics[topic][number]]

    def read(self, topic: str, partition: int) -> Iterator[ChangelogRecord]:
        """`ChangelogReader`: a changelog partition's committed records."""
        for record in list(self.topics[topic][partition]):
            yield ChangelogRecord(record.key or b"", record.value, record.headers)

    def sink(self) -> InMemorySink:
        return InMemorySink(self)

    # --- Clients ------------------------------------------------------------------------------

    def open_sink(self) -> InMemorySink:
        """A new producer; as init_transactions does, it settles a wedged predecessor's
        transaction (committed or aborted, per its `wedge_commits`) before returning."""
        for older in self.sinks:
            wedge = older.wedge
            if wedge is not None:
                wedge.set()
                older.settled.wait(5)
        sink = InMemorySink(self)
        self.sinks.append(sink)
        return sink

    def open_source(self, rebalance: Rebalance) -> InMemorySource:
        source = InMemorySource(self, self.inputs, rebalance.on_assign, rebalance.on_revoke,
                                rebalance.on_lost)
        self.sources.append(source)
        return source

    def changelog_reader(self) -> InMemoryBroker:
        return self

    def close(self) -> None:
        """As a `ChangelogReader`: nothing to close."""


class InMemoryGroup:
    """`GroupMetadata` of the in-memory group."""

    def __init__(self, broker: InMemoryBroker, generation: int) -> None:
        self._broker = broker
        self.metadata = generation

    def commit(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            self._broker.committed[(tp.topic, tp.partition)] = tp.offset


class InMemorySink:
    """A transactional `Sink` over an `InMemoryBroker`."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker
        self._pending: list[Record] = []
        self._open = False
        self.fatal_error: KafkaError | None = None
        self.fail_commits = 0
        """How many of the next commits are abandoned (the batch is aborted)."""
        self.wedge: threading.Event | None = None
        """When set to an Event, the next commit blocks until it is set."""
        self.wedge_commits = False
        """Whether a wedged commit, once released, commits (else it is aborted)."""
        self.settled = threading.Event()
        self.commits = 0
        self.aborts = 0
        self.closed = False

    def fence(self, error: KafkaError) -> None:
        self.fatal_error = error

    def _check(self) -> None:
        if self.fatal_error is not None:
            raise FatalSinkError(f"transactional producer failed: {self.fatal_error}")

    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
                *, partition: int | None = None) -> None:
        self._check()
        if not self._open:
            raise AssertionError("produce outside a batch: a transactional producer refuses it")
        chosen = self._broker._place(key) if partition is None else partition
        self._pending.append(Record(topic, chosen, key, value, list(headers)))

    def begin(self) -> None:
        self._check()
        self._open = True

    @property
    def in_batch(self) -> bool:
        return self._open

    @property
    def pending(self) -> list[Record]:
        return list(self._pending)

    def commit(self, offsets: Sequence[TopicPartition], group: object) -> bool:
        wedge = self.wedge
        if wedge is not None:
            wedge.wait()
            outcome = self.wedge_commits and self._commit(offsets)
            if not outcome:
                self.abort()
            self.settled.set()
            return outcome
        self._check()
        if not self._open:
            return True
        if self.fail_commits:
            self.fail_commits -= 1
            self.abort()
            return False
        return self._commit(offsets)

    def _commit(self, offsets: Sequence[TopicPartition]) -> bool:
        for record in self._pending:
            self._broker.append(record)
        for tp in offsets:
            self._broker.committed[(tp.topic, tp.partition)] = tp.offset
        self._pending.clear()
        self._open = False
        self.commits += 1
        return True

    def abort(self) -> None:
        self._check()
        if self._open:
            self.aborts += 1
        self._pending.clear()
        self._open = False

    def poll(self) -> None:
        self._check()

    def close(self, timeout: float) -> None:
        self.closed = True


class InMemorySource:
    """A consumer-group member over an `InMemoryBroker`; the test decides the assignment."""

    def __init__(self, broker: InMemoryBroker, topics: Sequence[str],
                 on_assign: PartitionsCallback, on_revoke: PartitionsCallback,
                 on_lost: PartitionsCallback) -> None:
        self._broker = broker
        self._topics = list(topics)
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self.assignment: set[Partition] = set()
        self.committed: dict[Partition, int] = {}
        self.broker_reachable = True
        self.member_fenced = False
        self.generation = 1
        self._positions: dict[Partition, int] = {}
        self.paused: set[Partition] = set()
        self.closed = False

    @property
    def group(self) -> InMemoryGroup:
        return InMemoryGroup(self._broker, self.generation)

    # --- what a test drives -------------------------------------------------------------------

    def assign(self, partitions: Iterable[Partition] | None = None) -> None:
        """Assign partitions (default: every partition of the input topics)."""
        chosen = list(partitions) if partitions is not None else [
            (topic, number) for topic in self._topics for number in range(self._broker.partitions)
        ]
        for key in chosen:
            offset = self._broker.committed.get(key)
            if offset is not None:
                self.committed[key] = offset
            self._positions[key] = offset if offset is not None else 0
        self.assignment.update(chosen)
        self._on_assign([TopicPartition(t, p) for t, p in chosen])

    def revoke(self, partitions: Iterable[Partition]) -> None:
        chosen = list(partitions)
        self._on_revoke([TopicPartition(t, p) for t, p in chosen])
        self._forget(chosen)

    def lose(self, partitions: Iterable[Partition]) -> None:
        chosen = list(partitions)
        self.generation += 1
        self._on_lost([TopicPartition(t, p) for t, p in chosen])
        self._forget(chosen)

    def _forget(self, partitions: list[Partition]) -> None:
        for key in partitions:
            self.assignment.discard(key)
            self.committed.pop(key, None)
            self._positions.pop(key, None)
            self.paused.discard(key)

    # --- the Source protocol ------------------------------------------------------------------

    def consume(self, count: int, timeout: float) -> list[Message]:
        """Up to `count` messages, partition after partition; never waits."""
        messages: list[Message] = []
        for key in sorted(self.assignment - self.paused):
            log = self._broker.topics[key[0]][key[1]]
            position = self._positions[key]
            end = min(len(log), position + count - len(messages))
            for offset in range(position, end):
                record = log[offset]
                messages.append(Message(
                    topic=record.topic, partition=record.partition, offset=offset,
                    key=record.key, value=record.value, headers=record.headers or None,
                    timestamp=(1, record.timestamp_ms),
                ))
            self._positions[key] = max(position, end)
            if len(messages) >= count:
                break
        return messages

    def record_committed(self, offsets: Iterable[TopicPartition]) -> None:
        for tp in offsets:
            key = (tp.topic, tp.partition)
            if key in self.assignment:
                self.committed[key] = tp.offset

    def rewind_to_committed(self) -> None:
        for key in self.assignment:
            self._positions[key] = self._broker.committed.get(key, 0)
            if key in self._broker.committed:
                self.committed[key] = self._broker.committed[key]

    def pause_at(self, partition: Partition, offset: int) -> None:
        self._positions[partition] = offset
        self.paused.add(partition)

    def resume(self, partition: Partition) -> None:
        self.paused.discard(partition)

    def lag(self) -> int | None:
        return sum(len(self._broker.topics[t][p]) - self.committed.get((t, p), 0)
                   for t, p in self.assignment)

    def close(self) -> None:
        self.closed = True
