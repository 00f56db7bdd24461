"""Exceptions change under a running detector: nothing lost or doubled, a bad change kept out."""

from __future__ import annotations

import signal
import threading
import uuid
from pathlib import Path

from tests.conftest import Broker, TopicFactory
from tests.support.events import create_access_key, event
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    alert_event_ids,
    produce,
    read_all,
    wait_until,
)
from tests.support.metrics import scrape

SEED = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"

ROTATION_BOT_EXCEPTION = f"""\
[metadata]
creation_date = "2026/12/01"
list_name = "Key rotation"
rule_ids = ["{SEED}"]
rule_names = ["AWS IAM User Created Access Keys For Another User"]
updated_date = "2026/12/01"

[[exceptions]]
[exceptions.container]
description = "Automation that rotates other users' keys"
list_id = "key-rotation"
name = "Key rotation"
namespace_type = "single"
type = "detection"

[[exceptions.items]]
name = "rotation-bot"
item_id = "rotation-bot"
description = ""
type = "simple"
[[exceptions.items.entries]]
field = "user.name"
operator = "included"
type = "match"
value = "rotation-bot"
"""


def keys_created(prefix: str, caller: str, count: int) -> list[dict[str, object]]:
    return [
        create_access_key(event_id=f"{prefix}-{index}", caller=caller, target=f"user-{index}")
        for index in range(count)
    ]


def noise(prefix: str, count: int) -> list[dict[str, object]]:
    return [event(event_id=f"{prefix}-{index}") for index in range(count)]


def test_a_reload_under_load_applies_from_a_batch_and_a_bad_file_keeps_the_old_set(
    broker: Broker, new_topic: TopicFactory, run_dir: Path, detectors: list[DetectorProcess],
    tmp_path: Path,
) -> None:
    topics = Topics(input=new_topic("in", partitions=3), alerts=new_topic("alerts", partitions=3),
                    dlq=new_topic("dlq"))
    folder = tmp_path / "exceptions"
    folder.mkdir()
    detector = DetectorProcess(
        broker.bootstrap_servers, topics, run_dir / "detectors", group=f"g-{uuid.uuid4().hex}",
        extra_env={"DETECTOR_EXCEPTIONS_DIR": str(folder), "DETECTOR_EXCEPTIONS_RELOAD_S": "3600"},
    ).start()
    detectors.append(detector)

    before = keys_created("before", "rotation-bot", 20) + keys_created("before-m", "mallory", 10)
    produce(broker.bootstrap_servers, topics.input, before)
    read_all(broker.bootstrap_servers, topics.alerts, wanted=30, timeout=60)

    # Load keeps flowing while the exceptions change: mallory's keys must alert exactly once
    # whichever batch the reload lands between.
    during = keys_created("during-m", "mallory", 30)
    feeding = threading.Thread(target=lambda: produce(
        broker.bootstrap_servers, topics.input, [*noise("noise", 3000), *during]
    ))
    feeding.start()
    (folder / "rotation.toml").write_text(ROTATION_BOT_EXCEPTION, encoding="utf-8")
    assert detector.process is not None
    detector.process.send_signal(signal.SIGHUP)
    wait_until(lambda: scrape(detector.port).value("exception_items") == 1, 30,
               "the reloaded exception item")
    feeding.join()

    (folder / "broken.toml").write_text("[metadata]\nlist_name = 1\n", encoding="utf-8")
    detector.process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: scrape(detector.port).value("exception_reloads_total", outcome="failed") == 1,
        30, "the failed reload",
    )

    after = keys_created("after", "rotation-bot", 25) + keys_created("after-m", "mallory", 5)
    produce(broker.bootstrap_servers, topics.input, after)
    expected = [str(record["eventID"]) for record in [*before, *during, *after[25:]]]
    alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(expected), timeout=60)

    assert sorted(alert_event_ids(alerts)) == sorted(expected)
    wait_until(lambda: scrape(detector.port).value(
        "exception_removals_total", rule_id=SEED, list_id="key-rotation", item_id="rotation-bot"
    ) == 25, 30, "25 removals counted")
    metrics = scrape(detector.port)
    assert metrics.value("exception_reloads_total", outcome="applied") == 1
    assert metrics.value("exception_items") == 1
    assert "apply from the next batch" in detector.log()
    assert "previous set stays" in detector.log()
