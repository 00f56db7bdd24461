"""The quick start's broker command, as a user runs it: executable, with a port and topics."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from confluent_kafka.admin import AdminClient

from scripts.kafka_local import free_port
from tests.support.kafka import REPO, wait_until


def test_scripts_kafka_local_runs_on_the_given_port_with_the_given_topics(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "out.log"
    command = [str(REPO / "scripts" / "kafka-local"), "run", "--port", str(port),
               "--topic", "events:3", "--topic", "alerts", "--data-dir", str(tmp_path / "data")]
    assert os.access(command[0], os.X_OK)
    with log.open("wb") as out:
        broker = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "ready at" in log.read_text() or broker.poll() is not None, 90,
                   "the broker's ready line")
        assert f"ready at 127.0.0.1:{port}" in log.read_text(), log.read_text()
        topics = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(
            timeout=10).topics
        assert len(topics["events"].partitions) == 3
        assert len(topics["alerts"].partitions) == 1
    finally:
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(60) == 0
