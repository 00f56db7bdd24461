"""`--workers N`: one supervisor, N group members on one machine, each with its own metrics."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from consumer.offline.replay import account_of, avro_encoder
from tests.conftest import Broker, TopicFactory
from tests.support.events import mixed_workload
from tests.support.kafka import (
    REPO,
    DetectorProcess,
    Topics,
    alert_event_ids,
    read_all,
    wait_all_committed,
    wait_until,
)
from tests.support.metrics import Scrape, scrape

PARTITIONS = 4


def produce_spread(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    """Every partition gets events, whichever partitions the account keys would hash to."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "10"})
    encode = avro_encoder()
    for index, record in enumerate(events):
        producer.produce(topic, value=encode(record), key=account_of(record),
                         partition=index % PARTITIONS)
    assert producer.flush(60) == 0


def http_status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's children that run a worker (multiprocessing's spawn entry point)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == supervisor and b"spawn_main" in command:
            pids.append(int(entry.name))
    return sorted(pids)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def topics(new_topic: TopicFactory) -> Topics:
    return Topics(input=new_topic("in", partitions=PARTITIONS), alerts=new_topic("alerts"),
                  dlq=new_topic("dlq"))


@pytest.fixture
def detectors() -> Iterator[list[DetectorProcess]]:
    """Supervisors a test starts; killed at the end together with their workers, which would
    otherwise outlive a killed supervisor."""
    started: list[DetectorProcess] = []
    yield started
    for detector in started:
        workers = worker_pids(detector.process.pid) if detector.process is not None else []
        detector.stop()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_two_workers_share_the_partitions_serve_own_metrics_alert_once_and_stop_on_sigterm(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    bootstrap = broker.bootstrap_servers
    group = f"g-{uuid.uuid4().hex}"
    supervisor = DetectorProcess(bootstrap, topics, run_dir / "detectors", group=group,
                                 extra_env={"DETECTOR_WORKERS": "2"})
    detectors.append(supervisor.start())
    ports = [supervisor.port, supervisor.port + 1]
    supervisor.wait_ready()
    wait_until(lambda: http_status(ports[1], "/readyz") == 200, 60, "worker 1 ready")

    def assigned() -> list[float]:
        return [scrape(port).value("assigned_partitions") for port in ports]

    wait_until(lambda: sum(assigned()) == PARTITIONS and min(assigned()) > 0, 60,
               "both workers to own partitions")
    events, matches = mixed_workload(2_000, every=40)
    produce_spread(bootstrap, topics.input, events)

    alerts = read_all(bootstrap, topics.alerts, wanted=len(matches))
    wait_all_committed(bootstrap, group, topics.input, PARTITIONS)

    counts = Counter(alert_event_ids(alerts))
    assert sorted(counts) == sorted(matches)
    assert set(counts.values()) == {1}
    scrapes: list[Scrape] = [scrape(port) for port in ports]
    assert [[s.labels["worker"] for s in page.matching("build_info")] for page in scrapes] == [
        ["0"], ["1"]
    ]
    owned = [set(page.by_label("messages_consumed_total", "partition")) for page in scrapes]
    assert all(owned)
    assert owned[0].isdisjoint(owned[1])
    assert owned[0] | owned[1] == {str(p) for p in range(PARTITIONS)}
    assert sum(page.total("messages_consumed_total") for page in scrapes) == len(events)
    assert sum(page.total("alerts_total") for page in scrapes) == len(matches)
    assert all(page.value("transactions_total", outcome="aborted") == 0 for page in scrapes)

    assert supervisor.process is not None
    workers = worker_pids(supervisor.process.pid)
    assert len(workers) == 2
    exit_code = supervisor.terminate(timeout=30)

    log = supervisor.log()
    assert exit_code == 0, log[-3000:]
    assert not any(running(pid) for pid in workers)
    assert [http_status(port, "/healthz") for port in ports] == [None, None]
    for worker in ("worker-0", "worker-1"):
        assert any(worker in line and "leaving the group" in line for line in log.splitlines()), (
            worker
        )
    assert "Traceback" not in log
    assert "restarting" not in log


def test_a_configuration_error_with_two_workers_exits_2_like_one_process(tmp_path: Path) -> None:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")},
        "DETECTOR_WORKERS": "2",
        "DETECTOR_RULES_DIR": str(tmp_path / "missing"),
        "DETECTOR_INPUT_FORMAT": "json",
        "DETECTOR_METRICS_PORT": "0",
        "DETECTOR_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    }

    finished = subprocess.run(
        [sys.executable, "-m", "consumer", "run"], cwd=REPO, env=environment,
        capture_output=True, text=True, timeout=10, check=False,
    )

    assert finished.returncode == 2
    assert "rules directory does not exist" in finished.stderr
