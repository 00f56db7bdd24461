"""State that commits with the alerts: a changelog-backed key/value store per input partition.

Kafka Streams' design, kept small. A `StateStore` named `name` holds one `PartitionStore` per
assigned input partition. Inside the open batch, `put`/`delete` are pending changes that `get`
and `items` already see. When the checkpoint commits, every pending change is produced to the
store's changelog topic, `<group.id>.<name>-changelog` (compacted, one partition per input
partition number), in the same transaction as the batch's alerts and offsets; once the commit
succeeded the changes join the committed state. When the batch is abandoned they are dropped, so
the batch read again starts from the state its first attempt started from.

Lifecycle of a partition's store:
- **assign**: restored by reading its changelog partition from the beginning to its end with
  `read_committed` (aborted transactions never come back), before the partition's first message
  is handed to the loop (the restore runs inside the rebalance callback);
- **revoke**: the open batch commits first (the loop does that while it still owns the
  partition), then the store is dropped: the partition's next owner restores it;
- **loss**: the open batch is abandoned (its changes dropped), then the store is dropped.

Each changelog record carries, in the `detector.offset` header, the input partition's offset the
batch committed with it (the next offset to read; the committed offset when the batch consumed
nothing from that partition). A restore applies only records whose offset is at or below the
group's committed offset (Quix Streams' rule): in exactly-once mode every record read passes,
since its offsets committed in its transaction; in at-least-once mode a batch can reach the
changelog and still fail to commit its offsets, and its changes are then skipped, because the
batch will be judged again.

One changelog partition serves partition p of every input topic: a record's key is the input
topic, a NUL byte, then the store key, so compaction keeps one value per (topic, key).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Protocol, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewPartitions, NewTopic

from consumer.alerts.document import Headers
from consumer.kafka_properties import CHANGELOG_READER
from consumer.stream.kafka_log import client_errors, librdkafka_logger

log = logging.getLogger(__name__)

Partition = tuple[str, int]
"""An input partition: (topic, partition)."""

OFFSET_HEADER: Final = "detector.offset"
"""The input offset a changelog record was committed with (see the module docstring)."""

CHANGELOG_CONFIG: Final = {"cleanup.policy": "compact"}
"""A changelog keeps the last value of each key: restoring reads the state, not its history."""

RESTORE_TIMEOUT_S = 120.0
"""A changelog partition that does not reach its end within this long fails the restore."""


class _Deleted:
    """The pending change "this key was deleted"."""


DELETED: Final = _Deleted()


def changelog_topic(group_id: str, store: str) -> str:
    """The internal topic of a store, named from the consumer group as Kafka Streams does."""
    return f"{group_id}.{store}-changelog"


@dataclass(frozen=True, slots=True)
class ChangelogRecord:
    key: bytes
    value: bytes | None
    headers: Headers


class Produce(Protocol):
    """How a store's changes join the open batch: the checkpoint's produce."""

    def __call__(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
        *, partition: int | None = None,
    ) -> None: ...


class ChangelogReader(Protocol):
    """Reads one changelog partition from its beginning to its (committed) end."""

    def read(self, topic: str, partition: int) -> Iterable[ChangelogRecord]: ...

    def close(self) -> None: ...


class PartitionStore:
    """One store's keys for one input partition. Values are anything JSON can carry."""

    def __init__(self, partition: Partition, data: dict[str, object] | None = None) -> None:
        self.partition = partition
        self._data: dict[str, object] = data if data is not None else {}
        self._pending: dict[str, object] = {}

    def get(self, key: str, default: object = None) -> object:
        value = self._pending.get(key, self._data.get(key, default))
        return default if value is DELETED else value

    def put(self, key: str, value: object) -> None:
        self._pending[key] = value

    def delete(self, key: str) -> None:
        if key in self._data:
            self._pending[key] = DELETED
        else:
            self._pending.pop(key, None)

    def items(self) -> Iterator[tuple[str, object]]:
        """Every key with its value as the open batch sees it (snapshot: safe to change)."""
        merged = {**self._data, **self._pending}
        return ((key, value) for key, value in merged.items() if value is not DELETED)

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    @property
    def changes(self) -> Mapping[str, object]:
        """The open batch's changes: key -> new value, or DELETED."""
        return self._pending

    def committed(self) -> None:
        for key, value in self._pending.items():
            if value is DELETED:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        self._pending.clear()

    def rolled_back(self) -> None:
        self._pending.clear()


class StateStore:
    """A named store over the member's assigned partitions; a participant of the checkpoint."""

    def __init__(self, name: str, group_id: str, reader: ChangelogReader) -> None:
        self.name = name
        self.changelog = changelog_topic(group_id, name)
        self._reader = reader
        self._partitions: dict[Partition, PartitionStore] = {}

    def partition(self, partition: Partition) -> PartitionStore:
        """The store of an assigned partition (KeyError for one not assigned)."""
        return self._partitions[partition]

    @property
    def partitions(self) -> Mapping[Partition, PartitionStore]:
        return self._partitions

    # --- rebalances ---------------------------------------------------------------------------

    def assign(self, partition: Partition, committed: int | None) -> None:
        """Restore a newly assigned partition from the changelog; `committed` is the group's
        committed offset of the input partition (None when it has none)."""
        topic, number = partition
        prefix = topic.encode() + b"\0"
        limit = committed if committed is not None and committed >= 0 else 0
        data: dict[str, object] = {}
        applied = skipped = 0
        started = time.monotonic()
        for record in self._reader.read(self.changelog, number):
            if not record.key.startswith(prefix):
                continue  # partition `number` of another input topic
            if _record_offset(record) > limit:
                skipped += 1
                continue
            key = record.key[len(prefix):].decode()
            if record.value is None:
                data.pop(key, None)
            else:
                data[key] = json.loads(record.value)
            applied += 1
        self._partitions[partition] = PartitionStore(partition, data)
        if applied or skipped:
            log.info("restored %s for %s[%d]: %d keys from %d changes (%d of uncommitted "
                     "batches skipped) in %.3fs", self.name, topic, number, len(data), applied,
                     skipped, time.monotonic() - started)

    def reload(self, committed: Mapping[Partition, int]) -> None:
        """Restore every assigned partition again (the outcome of a batch was unknown)."""
        for partition in list(self._partitions):
            self.assign(partition, committed.get(partition))

    def revoke(self, partition: Partition) -> None:
        """Drop a partition's store; its next owner restores it from the changelog."""
        self._partitions.pop(partition, None)

    # --- the checkpoint -----------------------------------------------------------------------

    def flush(self, produce: Produce, offsets: Mapping[Partition, int]) -> int:
        """Produce the open batch's changes into it; `offsets` are the input offsets the batch
        commits (or has committed) per partition. Returns how many records were produced."""
        produced = 0
        for partition, store in self._partitions.items():
            if not store.changes:
                continue
            topic, number = partition
            headers: Headers = [(OFFSET_HEADER, str(offsets.get(partition, 0)).encode())]
            prefix = topic.encode() + b"\0"
            for key, value in store.changes.items():
                encoded = None if value is DELETED else _encode(value)
                produce(self.changelog, prefix + key.encode(), encoded, headers, partition=number)
                produced += 1
        return produced

    def committed(self) -> None:
        for store in self._partitions.values():
            store.committed()

    def rolled_back(self) -> None:
        for store in self._partitions.values():
            store.rolled_back()


def _encode(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _record_offset(record: ChangelogRecord) -> int:
    for name, value in record.headers:
        if name == OFFSET_HEADER and value is not None:
            return int(value)
    return 0  # written without offsets: applies as soon as anything committed


class KafkaChangelogReader:
    """Reads changelog partitions with one assign-only read_committed consumer."""

    def __init__(self, client_config: Mapping[str, str], group_id: str) -> None:
        self._consumer = Consumer({
            **client_config, **CHANGELOG_READER.values(), "group.id": f"{group_id}.restore",
            # An outage's connection errors are counted with the other clients', not logged
            # by librdkafka line by line.
            "error_cb": lambda error: client_errors.report("changelog reader", error),
            "logger": librdkafka_logger,
        })

    def read(self, topic: str, partition: int) -> Iterator[ChangelogRecord]:
        """A transient error (a broker restarting) is retried until RESTORE_TIMEOUT_S."""
        deadline = time.monotonic() + RESTORE_TIMEOUT_S
        tp = TopicPartition(topic, partition)
        while True:
            try:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
                break
            except KafkaException as exception:
                if exception.args[0].fatal() or time.monotonic() >= deadline:
                    raise
                log.warning("restoring %s[%d]: %s; retrying", topic, partition, exception)
        if high <= low:
            return
        self._consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        try:
            while time.monotonic() < deadline:
                for message in self._consumer.consume(10_000, 1.0):
                    error = message.error()
                    if error is None:
                        yield ChangelogRecord(
                            message.key() or b"", message.value(),
                            cast("Headers", message.headers() or []),
                        )
                    elif error.code() == KafkaError._PARTITION_EOF:
                        return
                    elif error.fatal():
                        raise KafkaException(error)
                    else:
                        log.warning("restoring %s[%d]: %s", topic, partition, error)
            raise TimeoutError(f"restoring {topic}[{partition}] took over {RESTORE_TIMEOUT_S}s")
        finally:
            self._consumer.unassign()

    def close(self) -> None:
        self._consumer.close()


def ensure_changelogs(admin: AdminClient, topics: Iterable[str], partitions: int) -> None:
    """Create each changelog (compacted) with at least `partitions` partitions, or grow it:
    records go to an explicit partition, so adding partitions moves nothing."""
    wanted = sorted(set(topics))
    if not wanted:
        return
    existing = admin.list_topics(timeout=10).topics
    missing = [name for name in wanted if name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, config=dict(CHANGELOG_CONFIG))
             for name in missing], request_timeout=30,
        )
        for name, future in futures.items():
            try:
                future.result()
                log.info("created changelog topic %s (%d partitions)", name, partitions)
            except KafkaException as error:
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    small = [name for name in wanted if name in existing
             and len(existing[name].partitions) < partitions]
    if small:
        for name, future in admin.create_partitions(
            [NewPartitions(name, partitions) for name in small], request_timeout=30
        ).items():
            future.result()
            log.info("changelog topic %s grown to %d partitions", name, partitions)
