"""The detector service against the real broker: delivery, crashes, poison, rebalances, shutdown.

Workloads keep to at most 100 matches, the seed rule's max_signals per interval; throttling
has its own test.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumer.offline.replay import avro_encoder
from tests.conftest import Broker, TopicFactory
from tests.support.events import create_access_key, mixed_workload
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    alert_event_ids,
    committed_offsets,
    end_offsets,
    produce,
    produce_raw,
    read_all,
    wait_all_committed,
    wait_until,
)


@pytest.fixture
def topics(new_topic: TopicFactory) -> Topics:
    return Topics(
        input=new_topic("in", partitions=3),
        alerts=new_topic("alerts", partitions=3),
        dlq=new_topic("dlq"),
    )


def new_detector(
    broker: Broker, topics: Topics, run_dir: Path, started: list[DetectorProcess],
    group: str, **kwargs: object,
) -> DetectorProcess:
    detector = DetectorProcess(broker.bootstrap_servers, topics, run_dir / "detectors", group=group,
                               **kwargs)  # type: ignore[arg-type]
    started.append(detector)
    return detector


def assert_exactly_once(alert_ids: list[str], expected: list[str]) -> None:
    counts = Counter(alert_ids)
    duplicated = sorted(event_id for event_id, n in counts.items() if n > 1)
    lost = sorted(set(expected) - set(counts))
    unexpected = sorted(set(counts) - set(expected))
    assert (duplicated, lost, unexpected) == ([], [], []), (
        f"{len(duplicated)} duplicated, {len(lost)} lost, {len(unexpected)} unexpected"
    )


def assert_all_committed(bootstrap: str, group: str, topic: str, partitions: int = 3) -> None:
    """The group's committed offset is the end of every partition that holds messages."""
    ends = end_offsets(bootstrap, topic, partitions)
    committed = committed_offsets(bootstrap, group, topic, partitions)
    assert [c if e else 0 for c, e in zip(committed, ends, strict=True)] == ends


def test_ten_thousand_mixed_events_give_exactly_the_known_alerts_in_key_order(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    events, matches = mixed_workload(10_000, every=100)
    produced_from = datetime.now(UTC).replace(microsecond=0)
    produce(broker.bootstrap_servers, topics.input, events)
    new_detector(broker, topics, run_dir, detectors, group=f"g-{uuid.uuid4().hex}").start()

    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(matches), timeout=90)

    assert_exactly_once(alert_event_ids(alerts), matches)
    position = {event_id: index for index, event_id in enumerate(matches)}
    by_key: dict[bytes, list[tuple[int, int, str]]] = defaultdict(list)
    for message in alerts:
        event_id = json.loads(message.value() or b"")["event"]["id"]
        by_key[message.key() or b""].append((message.partition() or 0, message.offset() or 0,
                                             event_id))
    for key, seen in by_key.items():
        assert len({partition for partition, _, _ in seen}) == 1, key
        in_log_order = [event_id for _, _, event_id in sorted(seen)]
        assert in_log_order == sorted(in_log_order, key=position.__getitem__), key
    document = json.loads(alerts[0].value() or b"")
    assert document["kibana"]["alert"]["rule"]["rule_id"] == "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
    assert document["user"]["name"] == "mallory"
    # event.ingested is the input message's Kafka timestamp, not the event's own (older) time.
    ingested = datetime.fromisoformat(document["event"]["ingested"])
    assert produced_from <= ingested <= datetime.now(UTC)
    assert dict(alerts[0].headers() or []) == {
        "rule.id": b"696015ef-718e-40ff-ac4a-cc2ba88dbeeb",
        "rule.severity": b"medium",
    }


CRASH_ENV = {
    # Static membership: a restarted member takes its partitions back without waiting for the
    # dead one's session to time out; its transactional.id fences the dead producer.
    "DETECTOR_STATIC_MEMBERSHIP": "true",
    "DETECTOR_TRANSACTION_MAX_MESSAGES": "200",
    "DETECTOR_BATCH_SIZE": "100",
}


def run_with_kills(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess],
    events: list[dict[str, object]], *, kills: int, env: dict[str, str], seed: int,
) -> str:
    """Feed `events` while a detector is started and killed with SIGKILL `kills` times, at
    random moments of its run; then start one that is left to finish. Returns the group."""
    group = f"g-{uuid.uuid4().hex}"
    feeder = threading.Thread(
        target=produce, args=(broker.bootstrap_servers, topics.input, events), daemon=True
    )
    feeder.start()
    rng = random.Random(seed)
    for _ in range(kills):
        detector = new_detector(broker, topics, run_dir, detectors, group=group, extra_env=env)
        detector.start().wait_ready()
        threading.Event().wait(rng.uniform(0.05, 1.5))
        detector.kill()
    feeder.join(120)
    new_detector(broker, topics, run_dir, detectors, group=group, extra_env=env).start()
    return group


def test_kill_minus_nine_ten_times_loses_and_duplicates_no_alert(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    events, matches = mixed_workload(30_000, every=300)
    run_with_kills(broker, topics, run_dir, detectors, events, kills=10, env=CRASH_ENV,
                   seed=20261129)

    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(matches), timeout=180)

    assert_exactly_once(alert_event_ids(alerts), matches)


def test_at_least_once_killed_four_times_loses_no_alert_and_repeats_one_only_under_its_own_id(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    events, matches = mixed_workload(20_000, every=250)
    env = {
        **CRASH_ENV,
        "DETECTOR_DELIVERY": "at-least-once",
        # Alerts wait in the producer's queue: a commit that did not flush them first would
        # lose them to a kill.
        "DETECTOR_KAFKA_PRODUCER": json.dumps({"linger.ms": "500"}),
    }
    group = run_with_kills(broker, topics, run_dir, detectors, events, kills=4, env=env,
                           seed=20261130)
    # Offsets are committed only after the batch's alerts were acknowledged: once the group
    # has committed the end, every alert is in the topic.
    wait_all_committed(broker.bootstrap_servers, group, topics.input, 3, timeout=180)

    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(matches), timeout=60)

    event_ids = alert_event_ids(alerts)
    assert sorted(set(event_ids)) == sorted(matches)
    alert_uuids: dict[str, set[str]] = defaultdict(set)
    for message, event_id in zip(alerts, event_ids, strict=True):
        alert_uuids[event_id].add(json.loads(message.value() or b"")["kibana"]["alert"]["uuid"])
    assert [event_id for event_id, uuids in alert_uuids.items() if len(uuids) != 1] == []


def poison_messages(prefilter: bool) -> list[tuple[bytes | None, bytes | None]]:
    """Corrupt messages the detector must dead-letter. With the prefilter on, a message no rule
    can match is only framing-checked, so its poison must show in the framing."""
    valid = avro_encoder()(create_access_key(event_id="poison", caller="a", target="b"))
    poison: list[tuple[bytes | None, bytes | None]] = [
        (b"k-empty", b""),
        (b"k-garbage", b"\xff\xfe not avro at all"),
        (b"k-json", json.dumps({"eventName": "CreateAccessKey"}).encode()),
        (b"k-cut-candidate", valid[: len(valid) * 2 // 3]),
    ]
    if not prefilter:
        poison.append((b"k-cut-head-intact", valid[:40]))
    return poison * 5


@pytest.mark.parametrize("prefilter", [True, False], ids=["prefilter", "decode-all"])
def test_poison_messages_reach_the_dead_letter_topic_with_reasons_and_good_events_still_alert(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess],
    prefilter: bool,
) -> None:
    events, matches = mixed_workload(2_000, every=40)
    poison = poison_messages(prefilter)
    produce(broker.bootstrap_servers, topics.input, events[:1000])
    produce_raw(broker.bootstrap_servers, topics.input, poison)
    produce(broker.bootstrap_servers, topics.input, events[1000:])
    new_detector(broker, topics, run_dir, detectors, group=f"g-{uuid.uuid4().hex}",
                 extra_env={"DETECTOR_PREFILTER": str(prefilter).lower()}).start()

    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(matches))
    dead = read_all(broker.bootstrap_servers, topics.dlq, wanted=len(poison))

    assert_exactly_once(alert_event_ids(alerts), matches)
    assert sorted((m.key(), m.value()) for m in dead) == sorted(poison)
    for message in dead:
        headers = dict(message.headers() or [])
        assert headers["dlq.reason"] in {b"empty", b"avro-corrupt", b"avro-truncated"}, headers
        assert headers["dlq.source.topic"] == topics.input.encode()
        assert int(headers["dlq.source.partition"]) in range(3)
        assert int(headers["dlq.source.offset"]) >= 0
        assert headers["dlq.error"]


def test_a_killed_worker_hands_its_partitions_over_without_losing_or_doubling_alerts(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    events, matches = mixed_workload(20_000, every=200)
    group = f"g-{uuid.uuid4().hex}"
    env = {
        "DETECTOR_KAFKA_CONSUMER": json.dumps({"session.timeout.ms": "6000"}),
        "DETECTOR_KAFKA_PRODUCER": json.dumps({"transaction.timeout.ms": "10000"}),
        "DETECTOR_TRANSACTION_MAX_MESSAGES": "200",
        "DETECTOR_BATCH_SIZE": "100",
    }
    survivor = new_detector(broker, topics, run_dir, detectors, group=group, member="a",
                            extra_env=env).start()
    victim = new_detector(broker, topics, run_dir, detectors, group=group, member="b",
                          extra_env=env).start()
    survivor.wait_ready()
    victim.wait_ready()
    produce(broker.bootstrap_servers, topics.input, events[:10_000])
    wait_until(lambda: "cloudtrail_detector_alerts_total{" in victim.metrics_text(), 60,
               "the victim to produce alerts")
    victim.kill()
    produce(broker.bootstrap_servers, topics.input, events[10_000:])

    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(matches), timeout=120)

    assert_exactly_once(alert_event_ids(alerts), matches)
    assert_all_committed(broker.bootstrap_servers, group, topics.input)


def test_sigterm_exits_cleanly_within_the_deadline_with_offsets_committed(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    events, matches = mixed_workload(3_000, every=30)
    produce(broker.bootstrap_servers, topics.input, events)
    group = f"g-{uuid.uuid4().hex}"
    detector = new_detector(broker, topics, run_dir, detectors, group=group,
                            extra_env={"DETECTOR_SHUTDOWN_TIMEOUT_S": "10"}).start()
    detector.wait_ready()
    read_all(broker.bootstrap_servers, topics.alerts, wanted=len(matches))

    exit_code = detector.terminate(timeout=10)

    assert exit_code == 0, detector.log()[-2000:]
    assert_all_committed(broker.bootstrap_servers, group, topics.input)
    assert "leaving the group" in detector.log()
