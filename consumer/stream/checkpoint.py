"""The checkpoint: one unit of delivery, committed whole or abandoned whole.

A checkpoint holds what the open batch did: the input offsets it consumed, the alerts and dead
letters it produced (through `produce`), and the state changes of its participants (state
stores, the throttle's counts among them). Its lifecycle:

- **begin**: the first message consumed or produced opens the batch (a transaction in
  exactly-once mode); `begin` is idempotent while one is open.
- **process**: the batch processor produces into the checkpoint; the loop reports each
  consumed run of offsets with `consumed`.
- **due**: `due(drained)` says when to commit: at once when the input is drained (waiting would
  only delay alerts), under a backlog after `max_messages` messages or `max_ms` milliseconds.
- **commit**: participants flush their changes into the batch, then the sink commits messages,
  changes and offsets together. The commit runs in a helper thread watched for `wedged_after_s`:
  a commit blocked that long is wedged, not slow (librdkafka#5456 after a broker restart), so
  the producer is replaced; the new one's `transactional.id` fences the old one, and the batch
  is either committed by it already or aborted, and read again.
  As the abandoned batch may have committed after all, the participants then reload their
  committed state (state stores restore from their changelogs).
- **abort** (a failed commit, or a partition lost): participants roll back to where the batch
  began and the source rewinds to the committed offsets, so the batch is judged again as if for
  the first time.
- **revoke**: before partitions move the open batch commits, while this member still owns them.
- **loss**: partitions were taken away (session timeout): committing would be fenced, so the
  batch is abandoned and their new owner reads it again.
- **timed out**: a member paused past `transaction.timeout.ms` (SIGSTOP, a VM freeze) finds its
  transaction aborted by the broker and its producer fenced, though no newer instance exists.
  When the open transaction is older than that timeout and the consumer still holds its
  assignment, the checkpoint opens a new producer and the batch is read again; a fence in a
  younger transaction, or with the group membership gone, means another instance holds the
  transactional id: fatal (`FatalSinkError`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import TopicPartition

from consumer.alerts.document import Headers
from consumer.stream.metrics import Metrics
from consumer.stream.sink import FatalSinkError, GroupMetadata, Sink
from consumer.stream.state import Partition, Produce

log = logging.getLogger(__name__)

WEDGED_COMMIT_S = 20.0
"""A commit still blocked after this long is wedged, not slow: after a broker restart librdkafka
can wait forever in send_offsets_to_transaction (confluentinc/librdkafka#5456)."""


class Participant(Protocol):
    """State that commits and rolls back with the batch (a `state.StateStore`)."""

    def flush(self, produce: Produce, offsets: Mapping[Partition, int]) -> int: ...

    def committed(self) -> None: ...

    def rolled_back(self) -> None: ...

    def reload(self, committed: Mapping[Partition, int]) -> None:
        """Read the committed state again: after a wedged commit nobody knows whether the
        batch committed until the new producer's init has settled it."""


class CommittingSource(Protocol):
    """What the checkpoint needs of the input side."""

    assignment: set[Partition]
    committed: dict[Partition, int]
    member_fenced: bool

    @property
    def group(self) -> GroupMetadata: ...

    def record_committed(self, offsets: list[TopicPartition]) -> None: ...

    def rewind_to_committed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CommitPolicy:
    max_messages: int
    """Commit a batch that has consumed this many messages (under a backlog)."""
    max_ms: int
    """Commit a batch open this long (under a backlog)."""
    transaction_timeout_s: float = float("inf")
    """The producer's transaction.timeout.ms: a transaction older than this was aborted by the
    broker (exactly-once only)."""


class Checkpoint:
    def __init__(
        self, source: CommittingSource, sink: Sink, open_sink: Callable[[], Sink],
        policy: CommitPolicy, metrics: Metrics,
        *, participants: Sequence[Participant] = (), wedged_after_s: float = WEDGED_COMMIT_S,
    ) -> None:
        """`sink` is open already; `open_sink` opens its replacement (after a wedged commit or
        a timed-out transaction)."""
        self.source = source
        self._open_sink = open_sink
        self.sink = sink
        self.policy = policy
        self._metrics = metrics
        self.participants = list(participants)
        self._wedged_after_s = wedged_after_s
        self.offsets: dict[Partition, int] = {}
        """The next offset to commit of each partition the batch consumed from."""
        self.messages = 0
        """Messages the open batch consumed or produced without consuming (summaries)."""
        self.started = 0.0
        self.open = False
        self._uncertain = False
        """Whether the abandoned batch may have committed after all (a wedged commit)."""
        self._failure: FatalSinkError | None = None
        """A fatal producer error met while the batch was open: decided at commit."""

    # --- the open batch -----------------------------------------------------------------------

    def begin(self) -> None:
        if self.open:
            return
        self.started = time.monotonic()
        self.open = True
        self._failure = None
        self._guard(self.sink.begin)

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
        *, partition: int | None = None,
    ) -> None:
        """Produce into the open batch (opening it). Raises the producer's KafkaException for a
        message it refuses (e.g. too large); a fatal error is kept for the commit to judge."""
        self.begin()
        if self._failure is None:
            self._guard(lambda: self.sink.produce(topic, key, value, headers,
                                                  partition=partition))

    def consumed(self, offsets: Mapping[Partition, int], messages: int) -> None:
        self.begin()
        self.offsets.update(offsets)
        self.messages += messages

    def produced_alone(self, messages: int) -> None:
        """Count messages produced without input (throttle summaries) toward the batch."""
        self.begin()
        self.messages += messages

    def due(self, drained: bool) -> bool:
        if not self.open:
            return False
        return (
            drained
            or self.messages >= self.policy.max_messages
            or (time.monotonic() - self.started) * 1000 >= self.policy.max_ms
        )

    def poll(self) -> None:
        """Serve the producer's reports; a fatal one while a batch is open waits for commit."""
        if self.open:
            self._guard(self.sink.poll)
        else:
            self.sink.poll()

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
        except FatalSinkError as error:
            if not self.open:
                raise
            self._failure = self._failure or error

    # --- ending it ----------------------------------------------------------------------------

    def commit(self) -> bool:
        """Commit the open batch; False when it was abandoned and must be read again."""
        if not self.open:
            return True
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.offsets.items()]
        with self._metrics.commit_duration.time():
            committed = self._commit_unless_wedged(offsets)
        self._end(committed, offsets)
        return committed

    def _commit_unless_wedged(self, offsets: list[TopicPartition]) -> bool:
        processed = {**self.source.committed, **self.offsets}
        for participant in self.participants:
            participant.flush(self.produce, processed)
        if self._failure is not None:
            return self._recover(self._failure)
        sink = self.sink
        group = self.source.group
        outcome: list[bool] = []
        failure: list[Exception] = []

        def commit() -> None:
            try:
                outcome.append(sink.commit(offsets, group))
            except Exception as error:
                failure.append(error)

        helper = threading.Thread(target=commit, name="commit", daemon=True)
        helper.start()
        helper.join(self._wedged_after_s)
        if helper.is_alive():
            sink.poll()  # serves the producer's error reports, a fatal one among them
            if sink.fatal_error is not None:
                raise FatalSinkError(f"transactional producer failed: {sink.fatal_error}")
            log.error("commit blocked for %.0fs: replacing the producer and reading the batch "
                      "again", self._wedged_after_s)
            self.sink = self._open_sink()
            self._uncertain = True
            return False
        if failure:
            if isinstance(failure[0], FatalSinkError):
                return self._recover(failure[0])
            raise failure[0]
        return outcome[0]

    def _recover(self, error: FatalSinkError) -> bool:
        """After a fatal producer error: a new producer when the broker timed our transaction
        out, else the error stands (another instance holds the transactional id)."""
        age = time.monotonic() - self.started
        if (
            age < self.policy.transaction_timeout_s
            or self.source.member_fenced
            or not self.source.assignment
        ):
            raise error
        log.warning("the transaction was open %.0fs, past transaction.timeout.ms (%.0fs): the "
                    "broker aborted it (%s); opening a new producer and reading the batch again",
                    age, self.policy.transaction_timeout_s, error)
        self._metrics.transactions.labels("timed-out").inc()
        self.sink = self._open_sink()
        return False

    def _end(self, committed: bool, offsets: list[TopicPartition], *, rewind: bool = True
             ) -> None:
        """The one end of every batch: committed, or rolled back (and read again unless the
        partitions went to another member)."""
        self.offsets.clear()
        self.messages = 0
        self.open = False
        self._failure = None
        uncertain, self._uncertain = self._uncertain, False
        if committed:
            for participant in self.participants:
                participant.committed()
            self.source.record_committed(offsets)
            return
        for participant in self.participants:
            participant.rolled_back()
        if rewind:
            self.source.rewind_to_committed()
            if uncertain:
                for participant in self.participants:
                    participant.reload(self.source.committed)

    def abort(self) -> None:
        """Abandon the open batch without reading it again (its partitions are gone)."""
        if self._failure is None:
            try:
                self.sink.abort()
            except FatalSinkError as error:
                self._recover(error)
        else:
            self._recover(self._failure)
        self._end(False, [], rewind=False)

    # --- rebalances ---------------------------------------------------------------------------

    def revoke(self, partitions: Iterable[Partition]) -> None:
        """Inside a rebalance: land the open batch while we still own its partitions."""
        if self.open:
            self.commit()

    def lose(self, partitions: Iterable[Partition]) -> None:
        """Partitions taken away: our commit would be fenced; their new owner reads it again."""
        if self.open:
            self.abort()

    def close(self, timeout: float) -> None:
        self.sink.close(timeout)
