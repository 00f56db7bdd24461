"""Session fixtures for the real servers around the detector (tests/integration/test_real_*.py).

Each server starts once per session, on loopback, with its work directory under the run's log
directory. A server that cannot run on this machine (a missing package, JDK or download) skips
its tests with the reason; any other failure to start fails them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from scripts.docker_local import LocalDocker
from scripts.elasticsearch_local import LocalElasticsearch
from scripts.registry_local import LocalRegistry
from scripts.server_local import ServerProcess, ServerUnavailableError

REGISTRY_USER = ("detector", "registry-secret")
"""The one account of the test registry: every API call needs it (HTTP basic auth)."""

Server = TypeVar("Server", bound=ServerProcess)


def started(server: Server, start: Callable[[Server], None]) -> Iterator[Server]:
    """Start a server, yield it, stop it; skip (naming why) when it cannot run here."""
    began = time.monotonic()
    try:
        start(server)
    except ServerUnavailableError as error:
        server.stop()
        pytest.skip(f"{server.name} cannot run on this machine: {error}")
    print(f"\n[{server.name}] started in {time.monotonic() - began:.1f}s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def registry_server(run_dir: Path) -> Iterator[LocalRegistry]:
    """Apicurio Registry with basic auth enforced."""
    yield from started(LocalRegistry(run_dir / "apicurio", users=dict([REGISTRY_USER])),
                       LocalRegistry.start)


@pytest.fixture(scope="session")
def elasticsearch(run_dir: Path) -> Iterator[LocalElasticsearch]:
    yield from started(LocalElasticsearch(run_dir / "elasticsearch"), LocalElasticsearch.start)


@pytest.fixture(scope="session")
def docker_engine(run_dir: Path) -> Iterator[LocalDocker]:
    yield from started(LocalDocker(run_dir / "docker"), LocalDocker.start)


_real_server_reports: list[pytest.TestReport] = []
_setup_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the outcome of each test against a real server (tests/integration/test_real_*),
    and its set-up time, which includes starting a session's server for its first test."""
    if "/test_real_" not in report.nodeid.replace("\\", "/"):
        return
    if report.when == "setup":
        _setup_seconds[report.nodeid] = report.duration
    if report.when == "call" or report.outcome == "skipped":
        _real_server_reports.append(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A closing list of what ran against real servers, what skipped and why, with times
    (set-up, which starts the servers, plus the test itself)."""
    if not _real_server_reports:
        return
    terminalreporter.section("real servers")
    for report in _real_server_reports:
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        reason = ""
        if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
            reason = f": {report.longrepr[2]}"
        elif hasattr(report, "wasxfail"):
            reason = f": {report.wasxfail}"
        seconds = report.duration + (
            _setup_seconds.get(report.nodeid, 0.0) if report.when == "call" else 0.0
        )
        terminalreporter.write_line(
            f"{outcome:8} {seconds:6.1f}s  {report.nodeid.split('::')[-1]}{reason}"
        )
