"""State that commits with the alerts, against the real broker: the throttle's counts survive a
restart and a crash, and a member paused past transaction.timeout.ms recovers."""

from __future__ import annotations

import json
import signal
import time
import uuid
from importlib import resources
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType

from tests.conftest import Broker, TopicFactory
from tests.support.events import create_access_key, mixed_workload
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    alert_event_ids,
    produce,
    read_all,
    wait_all_committed,
    wait_until,
)
from tests.support.metrics import scrape

SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
THROTTLED_ID = "7d3c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09"
WINDOW_S = 30


def throttled_rule_dir(tmp_path: Path) -> Path:
    """The seed rule under another rule_id, allowed 5 alerts per 30-second interval."""
    text = (resources.files("consumer.rules")
            .joinpath("builtin", "aws_iam_user_created_access_keys_for_another_user.toml")
            .read_text())
    for old, new in ((SEED_ID, THROTTLED_ID), ('interval = "5m"', f'interval = "{WINDOW_S}s"'),
                     ("max_signals = 100", "max_signals = 5")):
        assert old in text
        text = text.replace(old, new)
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "throttled.toml").write_text(text)
    return folder


@pytest.mark.parametrize("stop", ["sigterm", "kill-9"])
def test_throttled_matches_are_summarised_once_though_the_detector_stopped_mid_window(
    broker: Broker, new_topic: TopicFactory, run_dir: Path, detectors: list[DetectorProcess],
    tmp_path: Path, *, admin: AdminClient, stop: str,
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = Topics(input=new_topic("in", partitions=3), alerts=new_topic("alerts"),
                    dlq=new_topic("dlq"))
    group = f"g-{uuid.uuid4().hex}"
    env = {"DETECTOR_RULES_DIR": str(throttled_rule_dir(tmp_path)),
           "DETECTOR_DISABLE_RULES": SEED_ID}

    def detector() -> DetectorProcess:
        started = DetectorProcess(bootstrap, topics, run_dir / "detectors", group=group,
                                  extra_env=env)
        detectors.append(started.start())
        started.wait_ready()
        return started

    first = detector()
    # Start the burst early in a window, so all 12 matches fall into it and the detector is
    # stopped long before it ends.
    wait_until(lambda: time.time() % WINDOW_S < 3, WINDOW_S + 5, "the start of a window")
    window_end = (time.time() // WINDOW_S + 1) * WINDOW_S
    produce(bootstrap, topics.input, [
        create_access_key(event_id=f"burst-{n:02d}", caller="mallory", target=f"t{n}")
        for n in range(12)
    ])
    wait_all_committed(bootstrap, group, topics.input, 3, timeout=30)
    if stop == "sigterm":
        assert first.terminate(30) == 0
    else:
        first.kill()
    assert time.time() < window_end, "the burst was not committed before its window ended"
    second = detector()

    alerts = read_all(bootstrap, topics.alerts, wanted=6, timeout=WINDOW_S + 30)

    documents = [json.loads(m.value() or b"") for m in alerts]
    summaries = [d for d in documents if d["event"]["action"] == "throttled-matches"]
    assert len(documents) - len(summaries) == 5
    assert [s["detector"]["throttle"]["suppressed"] for s in summaries] == [7]
    assert "restored throttle" in second.log()
    changelog = f"{group}.throttle-changelog"
    resource = ConfigResource(ResourceType.TOPIC, changelog)
    described = admin.describe_configs([resource], request_timeout=10)[resource].result()
    assert described["cleanup.policy"].value == "compact"
    assert len(admin.list_topics(changelog, timeout=10).topics[changelog].partitions) == 3


def test_a_member_paused_past_the_transaction_timeout_recovers_and_alerts_exactly_once(
    broker: Broker, new_topic: TopicFactory, run_dir: Path, detectors: list[DetectorProcess],
) -> None:
    """SIGSTOP in the middle of a transaction: the broker aborts it and fences the producer;
    no newer instance exists, so the member opens a new producer and reads the batch again."""
    bootstrap = broker.bootstrap_servers
    topics = Topics(input=new_topic("in", partitions=3), alerts=new_topic("alerts"),
                    dlq=new_topic("dlq"))
    group = f"g-{uuid.uuid4().hex}"
    events, matches = mixed_workload(40_000, every=500)
    produce(bootstrap, topics.input, events)
    detector = DetectorProcess(
        bootstrap, topics, run_dir / "detectors", group=group, member=f"m-{uuid.uuid4().hex}",
        extra_env={
            # One message per consume: the input never looks drained while there is a backlog,
            # so the transaction stays open until it is paused.
            "DETECTOR_BATCH_SIZE": "1",
            "DETECTOR_TRANSACTION_MAX_MS": "600000",
            "DETECTOR_TRANSACTION_MAX_MESSAGES": "1000000",
            "DETECTOR_KAFKA_PRODUCER": json.dumps({"transaction.timeout.ms": "3000"}),
        },
    )
    detectors.append(detector.start())
    detector.wait_ready()
    assert detector.process is not None
    wait_until(lambda: scrape(detector.port).total("messages_consumed_total") > 0, 30,
               "the detector to consume")

    detector.process.send_signal(signal.SIGSTOP)
    # Past the 3 s timeout, and past the broker's check for timed-out transactions (1 s).
    time.sleep(8)  # the pause itself is the scenario, not a synchronisation
    detector.process.send_signal(signal.SIGCONT)

    wait_all_committed(bootstrap, group, topics.input, 3, timeout=120)
    alerts = read_all(bootstrap, topics.alerts, wanted=len(matches), timeout=60)
    assert sorted(alert_event_ids(alerts)) == sorted(matches)
    assert detector.process.poll() is None, detector.log()[-3000:]
    assert "past transaction.timeout.ms" in detector.log()
