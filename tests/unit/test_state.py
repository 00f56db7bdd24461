"""The changelog-backed state store: pending changes, commit, roll-back, restore, skips."""

from __future__ import annotations

from consumer.alerts.document import Headers
from consumer.stream.state import OFFSET_HEADER, StateStore, changelog_topic
from consumer.stream.testing import InMemoryBroker, Record

P0 = ("in", 0)
P1 = ("in", 1)


def store_on(broker: InMemoryBroker, *partitions: tuple[str, int]) -> StateStore:
    store = StateStore("counts", "g", broker)
    for partition in partitions:
        store.assign(partition, broker.committed.get(partition))
    return store


def commit(broker: InMemoryBroker, store: StateStore, offsets: dict[tuple[str, int], int]
           ) -> None:
    """What the checkpoint does: flush into a transaction, commit it with the offsets."""
    sink = broker.sink()
    sink.begin()
    store.flush(sink.produce, offsets)
    assert sink.commit([], object())
    broker.committed.update(offsets)
    store.committed()


def test_the_changelog_is_named_from_the_group_and_the_store() -> None:
    assert changelog_topic("detectors", "throttle") == "detectors.throttle-changelog"


def test_the_open_batch_sees_its_own_changes_and_a_roll_back_forgets_them() -> None:
    broker = InMemoryBroker()
    store = store_on(broker, P0)
    part = store.partition(P0)
    part.put("a", 1)
    commit(broker, store, {P0: 5})
    part.put("a", 2)
    part.put("b", [1, 2])
    part.delete("a")

    assert part.get("a") is None
    assert dict(part.items()) == {"b": [1, 2]}
    store.rolled_back()
    assert dict(part.items()) == {"a": 1}


def test_a_committed_store_is_restored_on_assignment_with_deletes_applied() -> None:
    broker = InMemoryBroker()
    store = store_on(broker, P0, P1)
    store.partition(P0).put("a", {"n": 1})
    store.partition(P0).put("gone", 0)
    store.partition(P1).put("b", 2)
    commit(broker, store, {P0: 3, P1: 7})
    store.partition(P0).delete("gone")
    commit(broker, store, {P0: 4})

    restored = store_on(broker, P0, P1)

    assert dict(restored.partition(P0).items()) == {"a": {"n": 1}}
    assert dict(restored.partition(P1).items()) == {"b": 2}
    changelog = broker.records("g.counts-changelog")
    assert {record.partition for record in changelog} == {0, 1}
    assert changelog[0].key == b"in\0a"


def test_changes_of_a_batch_whose_offsets_did_not_commit_are_skipped_on_restore() -> None:
    """At-least-once: the changelog record landed, the offset commit did not."""
    broker = InMemoryBroker()
    store = store_on(broker, P0)
    store.partition(P0).put("a", 1)
    commit(broker, store, {P0: 10})
    headers: Headers = [(OFFSET_HEADER, b"12")]
    broker.append(Record("g.counts-changelog", 0, b"in\0a", b"99", headers))

    assert dict(store_on(broker, P0).partition(P0).items()) == {"a": 1}


def test_partition_p_of_another_input_topic_shares_the_changelog_partition_but_not_keys() -> None:
    broker = InMemoryBroker()
    other = ("other", 0)
    store = store_on(broker, P0, other)
    store.partition(P0).put("k", "mine")
    store.partition(other).put("k", "theirs")
    commit(broker, store, {P0: 1, other: 1})

    assert dict(store_on(broker, P0).partition(P0).items()) == {"k": "mine"}


def test_a_revoked_partition_is_dropped() -> None:
    broker = InMemoryBroker()
    store = store_on(broker, P0)
    store.revoke(P0)
    assert P0 not in store.partitions
