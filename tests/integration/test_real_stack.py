"""scripts/stack, the compose stack without Docker, comes up and delivers alerts end to end."""

from __future__ import annotations

import subprocess

import pytest

from scripts.kafka_local import free_port
from scripts.server_local import ServerUnavailableError, java_home
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_stack_brings_up_every_service_and_alerts_reach_elasticsearch() -> None:
    try:
        java_home(21)
    except ServerUnavailableError as error:
        pytest.skip(f"Apicurio Registry cannot run on this machine: {error}")
    result = subprocess.run(
        [str(REPO / "scripts" / "stack"), "--check", "--elasticsearch",
         "--metrics-port", str(free_port())],
        capture_output=True, text=True, timeout=400, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for service in ("kafka", "registry", "detector", "replay", "prometheus", "elastic"):
        assert any(line.startswith(service) for line in result.stdout.splitlines()), service
    assert "check passed: alerts in cloudtrail-alerts" in result.stdout
