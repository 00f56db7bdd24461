"""The input side: a consumer-group member, where new partitions start, and what lag it reports.

A partition with no committed offset starts where the rules would look in Elastic (their
lookback, now-6m for the seed rule) unless `start_from` says otherwise, found through
`offsets_for_times`. Rebalances call back into the service so it can commit or abort the open
transaction before partitions move, and restore state stores before a new partition's first
message. The service sees the consumer only through `InputSource`: consume, pause, resume,
rewind, and the group a commit goes to.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    Message,
    TopicPartition,
)

from consumer.config import StartFrom, start_timestamp_ms
from consumer.stream.metrics import Metrics
from consumer.stream.sink import GroupMetadata

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[TopicPartition]], None]


class InputSource(Protocol):
    """The input side as the loop and the checkpoint use it (`Source`, or
    `consumer.stream.testing.InMemorySource`)."""

    assignment: set[tuple[str, int]]
    committed: dict[tuple[str, int], int]
    broker_reachable: bool
    member_fenced: bool

    @property
    def group(self) -> GroupMetadata: ...

    def consume(self, count: int, timeout: float) -> list[Message]: ...

    def record_committed(self, offsets: list[TopicPartition]) -> None: ...

    def rewind_to_committed(self) -> None: ...

    def pause_at(self, partition: tuple[str, int], offset: int) -> None: ...

    def resume(self, partition: tuple[str, int]) -> None: ...

    def lag(self) -> int | None: ...

    def close(self) -> None: ...

FETCH_DEFAULTS = {
    "fetch.queue.backoff.ms": "10",
    "queued.min.messages": "20000",
}
"""Prefetching tuned for a consumer that does real work per message; `kafka_consumer` overrides.

librdkafka stops fetching a partition whose local queue holds more than `queued.min.messages`
for `fetch.queue.backoff.ms`, 1000 ms by default: a consumer a little slower than the broker
drained its queue and then sat idle for most of that second (138k events/s instead of 350k in
bench/pipeline_bench.py). A smaller queue also halves the resident memory.
"""


def offset_name(offset: int) -> str:
    """librdkafka's logical offsets by name, real ones as numbers."""
    return {OFFSET_BEGINNING: "the beginning", OFFSET_END: "the end"}.get(offset, str(offset))


class ConsumerGroup:
    """A commit's view of the consumer group (`sink.GroupMetadata`)."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    @property
    def metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def commit(self, offsets: list[TopicPartition]) -> None:
        self._consumer.commit(offsets=offsets, asynchronous=False)


class Source:
    def __init__(
        self,
        *,
        config: dict[str, str],
        subscription: list[str],
        start_from: StartFrom,
        lookback: timedelta,
        metrics: Metrics,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
    ) -> None:
        """`on_assign` runs once the new partitions' committed offsets are known (in
        `committed`), before their first message."""
        self._start_from = start_from
        self._lookback = lookback
        self._metrics = metrics
        self._on_assign_hook = on_assign
        self._on_revoke_hook = on_revoke
        self._on_lost_hook = on_lost
        self._cooperative = "cooperative" in config.get("partition.assignment.strategy", "")
        self._read_committed = config.get("isolation.level", "read_committed") == "read_committed"
        self.assignment: set[tuple[str, int]] = set()
        self.committed: dict[tuple[str, int], int] = {}
        """The group's committed offset of each assigned partition: read at assignment, then
        what this member committed itself (in a transaction or not)."""
        self.ends: dict[tuple[str, int], int] = {}
        """Where each partition ends for this reader (the last stable offset under
        read_committed, else the high watermark), from librdkafka's statistics."""
        self._positions: dict[tuple[str, int], int] = {}
        self.broker_reachable = False
        self.member_fenced = False
        """The consumer reported a fatal error (e.g. another instance took our
        group.instance.id): this member's group membership is gone."""
        self.consumer = Consumer(
            {**FETCH_DEFAULTS, **config, "stats_cb": self._on_stats, "error_cb": self._on_error}
        )
        self.consumer.subscribe(
            subscription,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    @property
    def group(self) -> ConsumerGroup:
        """The consumer group as a commit needs it."""
        return ConsumerGroup(self.consumer)

    def consume(self, count: int, timeout: float) -> list[Message]:
        """Up to `count` messages that are already fetched; when there are none, waits up to
        `timeout` for the first. (`consume(count, timeout)` alone would hold a few messages
        back until `count` arrived or the timeout passed: latency on a slow stream.)"""
        messages = self.consumer.consume(count, 0)
        if messages or timeout <= 0:
            return messages
        first = self.consumer.consume(1, timeout)
        if not first or count == 1:
            return first
        return first + self.consumer.consume(count - 1, 0)

    def _start_offsets(self, partitions: list[TopicPartition]) -> None:
        """Set the start of partitions that have no committed offset, in place."""
        committed = self.consumer.committed(partitions, timeout=30)
        resumed = [tp for tp in committed if tp.offset >= 0]
        self.record_committed(resumed, assigned_only=False)
        if resumed:
            log.info("resuming at the committed offsets: %s",
                     ", ".join(f"{tp.topic}[{tp.partition}] at {tp.offset}" for tp in resumed))
        fresh = [tp for tp in committed if tp.offset == OFFSET_INVALID]
        if not fresh:
            return
        timestamp = start_timestamp_ms(self._start_from, self._lookback, datetime.now(UTC))
        if timestamp is None:
            start = OFFSET_BEGINNING if self._start_from == "earliest" else OFFSET_END
            starts = {(tp.topic, tp.partition): start for tp in fresh}
        else:
            found = self.consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, timestamp) for tp in fresh], timeout=30
            )
            # -1 means no message at or after the time: start at the end.
            starts = {
                (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else OFFSET_END
                for tp in found
            }
        for tp in partitions:
            tp.offset = starts.get((tp.topic, tp.partition), tp.offset)
        since = (
            f"the first message since {datetime.fromtimestamp(timestamp / 1000, UTC).isoformat()}"
            if timestamp is not None else f"start_from={self._start_from}"
        )
        log.info("no committed offset for %d partition(s); starting per %s: %s", len(fresh),
                 since, ", ".join(f"{t}[{p}] at {offset_name(o)}"
                                  for (t, p), o in sorted(starts.items())))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._start_offsets(partitions)
        self._on_assign_hook(partitions)
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        self.assignment.update((tp.topic, tp.partition) for tp in partitions)
        # The group coordinator just answered: the broker is reachable, before any statistics.
        self.broker_reachable = True
        self._metrics.rebalances.labels("assigned").inc()
        self._metrics.assigned_partitions.set(len(self.assignment))
        log.info("assigned %s", sorted(self.assignment))

    def _forget(self, partitions: list[TopicPartition], kind: str) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.assignment.discard(key)
            for known in (self.committed, self.ends, self._positions):
                known.pop(key, None)
            labels = (tp.topic, str(tp.partition))
            for gauge in (self._metrics.consumer_lag, self._metrics.committed_offset):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        self._metrics.rebalances.labels(kind).inc()
        self._metrics.assigned_partitions.set(len(self.assignment))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_revoke_hook(partitions)
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        self._forget(partitions, "revoked")
        log.info("revoked %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_lost_hook(partitions)
        self._forget(partitions, "lost")
        log.warning("lost %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.member_fenced = True
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.broker_reachable = False
        log.warning("consumer: %s", error)

    def _on_stats(self, stats_json: str) -> None:
        """Partition ends from librdkafka's statistics. Its own committed_offset and
        consumer_lag are not used: they miss offsets committed inside transactions."""
        stats = json.loads(stats_json)
        self.broker_reachable = any(
            broker.get("state") == "UP" and broker.get("nodeid", -1) >= 0
            for broker in stats.get("brokers", {}).values()
        )
        end_field = "ls_offset" if self._read_committed else "hi_offset"
        for topic, topic_stats in stats.get("topics", {}).items():
            for partition, partition_stats in topic_stats.get("partitions", {}).items():
                key = (topic, int(partition))
                if key not in self.assignment:
                    continue
                end = partition_stats.get(end_field, -1)
                if end >= 0:
                    self.ends[key] = end
                # Before the first message reaches us app_offset is -1: the fetch position
                # says where reading stands (an empty partition, or one started at its end).
                position = partition_stats.get("app_offset", -1)
                if position < 0:
                    position = partition_stats.get("next_offset", -1)
                if position >= 0:
                    self._positions[key] = position
                self._report_lag(key)

    def record_committed(self, offsets: Iterable[TopicPartition], *, assigned_only: bool = True
                         ) -> None:
        """Offsets the group committed (read back, or just committed by this member)."""
        for tp in offsets:
            key = (tp.topic, tp.partition)
            if assigned_only and key not in self.assignment:
                continue
            self.committed[key] = tp.offset
            self._metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(tp.offset)
            self._report_lag(key)

    def _report_lag(self, key: tuple[str, int]) -> None:
        """Lag is the partition's end minus the group's committed offset; before this member
        first commits a partition that has none, minus how far it has read."""
        end = self.ends.get(key)
        done = self.committed.get(key, self._positions.get(key))
        if end is not None and done is not None:
            self._metrics.consumer_lag.labels(key[0], str(key[1])).set(max(end - done, 0))

    def lag(self) -> int | None:
        """Total lag over the assigned partitions whose lag is known; None when none is."""
        if not self.ends:
            return None
        total = 0
        for key, end in self.ends.items():
            done = self.committed.get(key, self._positions.get(key))
            if done is not None:
                total += max(end - done, 0)
        return total

    def rewind_to_committed(self) -> None:
        """After an abandoned batch: read every assigned partition again from its commit."""
        partitions = [TopicPartition(t, p) for t, p in sorted(self.assignment)]
        if not partitions:
            return
        committed = self.consumer.committed(partitions, timeout=30)
        self.record_committed([tp for tp in committed if tp.offset >= 0])
        to_start = [tp for tp in committed if tp.offset == OFFSET_INVALID]
        if to_start:
            self._start_offsets(to_start)
        for tp in committed:
            if tp.offset != OFFSET_INVALID:
                self.consumer.seek(tp)
        for tp in to_start:
            self.consumer.seek(tp)

    def pause_at(self, partition: tuple[str, int], offset: int) -> None:
        """Stop fetching a partition, to read it again from `offset` once resumed."""
        tp = TopicPartition(partition[0], partition[1], offset)
        self.consumer.seek(tp)
        self.consumer.pause([tp])

    def resume(self, partition: tuple[str, int]) -> None:
        if partition in self.assignment:
            self.consumer.resume([TopicPartition(*partition)])

    def close(self) -> None:
        """Leave the group. A failure here (a rebalance callback timing out on a broker that is
        gone) is logged: it must not hide the error that ended the loop."""
        try:
            self.consumer.close()
        except Exception as error:  # KafkaException, or what a rebalance callback raised
            log.warning("closing the consumer: %s", error)
