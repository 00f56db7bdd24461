"""The repartition topic's records and the watermark each repartition partition derives."""

from __future__ import annotations

import pytest

from consumer.stream.repartition import (
    KIND_HEADER,
    InputTracker,
    Marker,
    RepartitionFormatError,
    Routed,
    Watermark,
    decode,
    encode_key,
    encode_marker,
    encode_routed,
    partition_for,
)

P0, P1 = ("events", 0), ("events", 1)


def test_a_row_survives_the_topic_and_lands_on_its_groups_partition() -> None:
    routed = Routed("row", "rule-a", ("alice", None, 3), 1_700_000_000_123,
                    {"source.ip": ["10.0.0.1", "10.0.0.2"], "n": 1.5, "flag": True})
    encoded = encode_routed(routed, 12)
    assert decode(encoded.key, encoded.value, encoded.headers) == routed
    again = encode_routed(Routed("row", "rule-a", ("alice", None, 3), 5, {}), 12)
    assert (again.key, again.partition) == (encoded.key, encoded.partition)


def test_groups_spread_over_the_partitions() -> None:
    used = {partition_for(encode_key("rule", (f"user-{n}",)), 8) for n in range(200)}
    assert used == set(range(8))


def test_a_marker_survives_the_topic() -> None:
    marker = Marker(P1, 42, True, 99)
    encoded = encode_marker(marker, 3)
    assert encoded.partition == 3
    assert encoded.key is None
    assert decode(encoded.key, encoded.value, encoded.headers) == marker


@pytest.mark.parametrize(("headers", "value"), [
    (None, b"{}"),
    ([(KIND_HEADER, b"row")], b"not json"),
    ([(KIND_HEADER, b"marker")], b'{"v":2,"s":["t",0],"t":1,"i":false,"w":1}'),
    ([(KIND_HEADER, b"gossip")], b'{"v":1}'),
])
def test_a_record_this_version_did_not_write_is_refused(
    headers: list[tuple[str, bytes]] | None, value: bytes
) -> None:
    with pytest.raises(RepartitionFormatError):
        decode(b'["r",[]]', value, headers)


def test_an_input_partition_is_idle_only_when_caught_up_and_quiet() -> None:
    tracker = InputTracker(idle_timeout_ms=1000)
    tracker.assigned(P0, wall_ms=0)
    tracker.saw(P0, event_ms=500, wall_ms=100)
    assert tracker.markers(900, lambda p: True) == [Marker(P0, 500, False, 900)]
    assert tracker.markers(1100, lambda p: False) == [Marker(P0, 500, False, 1100)]
    assert tracker.markers(1100, lambda p: True) == [Marker(P0, 500, True, 1100)]


def test_an_abandoned_batch_takes_its_event_times_back() -> None:
    tracker = InputTracker(idle_timeout_ms=1000)
    tracker.saw(P0, event_ms=500, wall_ms=0)
    tracker.committed()
    tracker.saw(P0, event_ms=900, wall_ms=0)
    tracker.rolled_back()
    assert tracker.markers(10, lambda p: False)[0].event_ms == 500


def test_the_watermark_is_the_slowest_active_input_minus_the_lateness() -> None:
    watermark = Watermark(frozenset({P0, P1}), allowed_lateness_ms=10)
    assert watermark.observe(Marker(P0, 1000, False, 5000)) is None  # P1 unheard of
    assert watermark.observe(Marker(P1, 400, False, 5000)) == 389
    assert watermark.observe(Marker(P1, 2000, False, 5001)) == 989
    # An idle input no longer holds the others back: it counts with its wall time.
    assert watermark.observe(Marker(P0, 1000, True, 6000)) == 1989


def test_the_watermark_never_goes_back() -> None:
    watermark = Watermark(frozenset({P0}), allowed_lateness_ms=0)
    assert watermark.observe(Marker(P0, 1000, True, 9000)) == 8999
    assert watermark.observe(Marker(P0, 1200, False, 9100)) is None
    assert watermark.current_ms == 8999


def test_a_new_owner_without_the_partitions_history_does_not_stall_it() -> None:
    watermark = Watermark(frozenset({P0}), allowed_lateness_ms=0)
    watermark.observe(Marker(P0, 1000, False, 1))
    assert watermark.observe(Marker(P0, None, False, 2)) is None
    assert watermark.latest[P0].event_ms == 1000
    assert watermark.observe(Marker(P0, 1500, False, 3)) == 1499


def test_the_watermark_state_is_restored_from_its_dump() -> None:
    watermark = Watermark(frozenset({P0, P1}), allowed_lateness_ms=5)
    watermark.observe(Marker(P0, 100, False, 1))
    watermark.observe(Marker(P1, 300, True, 700))
    restored = Watermark(frozenset({P0, P1}), allowed_lateness_ms=5)
    restored.load(watermark.dump())
    assert (restored.latest, restored.current_ms) == (watermark.latest, watermark.current_ms)
    assert restored.observe(Marker(P0, 200, False, 2)) == 194
