"""Clients other than librdkafka read the alerts topic as an exactly-once topic must be read.

kcat (Debian's, librdkafka's CLI) and Kafka's own Java console consumer, both with
read_committed, see exactly the alerts the detector committed: each once, none from the
transaction aborted beside them, which a read_uncommitted reader does see.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from scripts.kafka_tools_local import CONSOLE_CONSUMER, tool_command
from scripts.server_local import ServerUnavailableError
from tests.conftest import Broker, TopicFactory
from tests.support.events import mixed_workload
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    alert_event_ids,
    produce,
    read_all,
    wait_all_committed,
)

pytestmark = pytest.mark.slow

ABORTED = b'{"aborted": "an alert of a transaction that never committed"}'


def abort_one_transaction(bootstrap: str, topic: str) -> None:
    """Write ABORTED to `topic` inside a transaction, then abort it."""
    producer = Producer({"bootstrap.servers": bootstrap,
                         "transactional.id": f"aborter-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value=ABORTED)
    assert producer.flush(30) == 0
    producer.abort_transaction(30)


def kcat(bootstrap: str, topic: str, isolation: str) -> list[bytes]:
    path = shutil.which("kcat")
    if path is None:
        pytest.skip("kcat is not installed (Debian: apt-get install kcat)")
    result = subprocess.run(
        [path, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q",
         "-X", f"isolation.level={isolation}", "-f", "%s\\n"],
        capture_output=True, check=True, timeout=60,
    )
    return result.stdout.splitlines()


def console_consumer(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    try:
        command = tool_command(
            CONSOLE_CONSUMER, "--bootstrap-server", bootstrap, "--topic", topic,
            "--from-beginning", "--isolation-level", "read_committed",
            "--max-messages", str(expected + 1), "--timeout-ms", "10000",
        )
    except ServerUnavailableError as error:
        pytest.skip(f"Kafka's console consumer cannot run on this machine: {error}")
    # It stops after --timeout-ms without a message (exit 0 or 1 depending on the release):
    # asking for one message more than expected makes it read to the end.
    result = subprocess.run(command, capture_output=True, check=False, timeout=120)
    assert b"Exception" not in result.stderr.replace(b"TimeoutException", b""), result.stderr
    return result.stdout.splitlines()


def test_kcat_and_the_console_consumer_see_exactly_the_committed_alerts(
    broker: Broker, new_topic: TopicFactory, run_dir: Path, detectors: list[DetectorProcess],
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = Topics(input=new_topic("in", partitions=2), alerts=new_topic("alerts"),
                    dlq=new_topic("dlq"))
    events, matches = mixed_workload(1000, every=25)
    produce(bootstrap, topics.input, events)
    group = f"g-{uuid.uuid4().hex}"
    detector = DetectorProcess(bootstrap, topics, run_dir / "detectors", group=group)
    detectors.append(detector.start())
    wait_all_committed(bootstrap, group, topics.input, 2)
    abort_one_transaction(bootstrap, topics.alerts)
    messages = read_all(bootstrap, topics.alerts, wanted=len(matches), timeout=30)
    assert sorted(alert_event_ids(messages)) == sorted(matches)
    committed = [message.value() for message in messages]

    assert ABORTED in kcat(bootstrap, topics.alerts, "read_uncommitted"), (
        "the aborted transaction is not in the log: this test would prove nothing"
    )
    seen_by_kcat = kcat(bootstrap, topics.alerts, "read_committed")
    seen_by_console = console_consumer(bootstrap, topics.alerts, len(committed))
    assert Counter(seen_by_kcat) == Counter(committed)
    assert Counter(seen_by_console) == Counter(committed)

