"""Test fixtures: one real Kafka broker per session, unique topics per test, ../shared data."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from scripts.kafka_local import LocalKafka
from tests.support.kafka import local_broker

pytest_plugins = ["tests.support.servers"]
"""The real servers' session fixtures (Schema Registry, Elasticsearch, Docker engine)."""

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"




def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a clean skip when this clone has no ../shared beside it."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared ships only beside the team's checkout)")
    return path


class Broker:
    """What a test needs to know about the broker it talks to."""

    def __init__(self, bootstrap_servers: str, local: LocalKafka | None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.local = local

    @property
    def log_path(self) -> Path | None:
        return self.local.log_path if self.local is not None else None


@pytest.fixture(scope="session")
def run_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Logs of the broker and detector processes: removed after a green run, kept otherwise."""
    path = Path(tempfile.mkdtemp(prefix="cloudtrail-detector-test-"))
    yield path
    if request.session.testsfailed == 0:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def broker(run_dir: Path) -> Iterator[Broker]:
    """A real Apache Kafka broker: $KAFKA_BOOTSTRAP_SERVERS if set, else a local KRaft one."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield Broker(external, None)
        return
    with local_broker(run_dir / "kafka") as local:
        yield Broker(local.bootstrap_servers, local)


@pytest.fixture
def admin(broker: Broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap_servers})


TopicFactory = Callable[..., str]


@pytest.fixture
def new_topic(admin: AdminClient, request: pytest.FixtureRequest) -> TopicFactory:
    """Create a uniquely named topic for this test and return its name."""

    def create(purpose: str = "t", partitions: int = 1) -> str:
        name = f"{request.node.name[:40]}-{purpose}-{uuid.uuid4().hex[:8]}"
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        futures = admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=30)
        futures[name].result(timeout=30)
        return name

    return create


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Point a failing broker test at the broker's log, which outlives the run."""
    report: pytest.TestReport = yield
    broker = getattr(item, "funcargs", {}).get("broker")
    if report.failed and isinstance(broker, Broker) and broker.log_path is not None:
        report.sections.append(("kafka broker log", f"see {broker.log_path}"))
    return report
