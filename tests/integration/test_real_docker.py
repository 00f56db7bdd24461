"""The Dockerfile built on a real Docker engine, and the compose file checked by a real tool.

Images cannot be pulled here, so the build's base is a Debian-with-Python image made locally
(scripts/docker_local.py) and passed as the PYTHON_IMAGE build argument; the Dockerfile itself,
and its default base for users, are unchanged. The container runs on the host network against
the test broker: it runs as a non-root user, its HEALTHCHECK turns healthy, it writes alerts.

The compose file is checked by Debian's docker-compose (v1.29, which validates against the
Compose Specification's schema of its time): that predates the top-level `name` key, so the
file is checked with that one key left out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from scripts.docker_local import LocalDocker
from scripts.kafka_local import free_port
from tests.conftest import REPO, Broker, TopicFactory
from tests.support.events import mixed_workload
from tests.support.kafka import Topics, alert_event_ids, produce, read_all, wait_until

COMPOSE_FILE = REPO / "docker-compose.yml"
IMAGE = "cloudtrail-detector:test"


def test_compose_file_passes_docker_compose_v1_config_without_the_name_key(
    tmp_path: Path,
) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert document.pop("name") == "cloudtrail-detector"
    stripped = tmp_path / "docker-compose.yml"
    stripped.write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run(
        [compose, "--project-directory", str(REPO), "--file", str(stripped), "config", "--quiet"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    broken = {**document, "services": {**document["services"], "detector": {
        **document["services"]["detector"], "restart": ["not", "a", "string"]}}}
    stripped.write_text(yaml.safe_dump(broken, sort_keys=False))
    result = subprocess.run(
        [compose, "--project-directory", str(REPO), "--file", str(stripped), "config", "--quiet"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode != 0, "docker-compose accepted an invalid file: it checks nothing"


def health(engine: LocalDocker, container: str) -> str:
    state = json.loads(engine.docker("inspect", container, capture=True).stdout)[0]["State"]
    if not state["Running"]:
        logs = engine.docker("logs", container, check=False, capture=True)
        raise AssertionError(f"container exited with {state['ExitCode']}: {logs.stderr[-2000:]}")
    return str(state.get("Health", {}).get("Status", "none"))


@pytest.mark.slow
def test_image_builds_runs_as_non_root_turns_healthy_and_writes_alerts(
    broker: Broker, new_topic: TopicFactory, docker_engine: LocalDocker,
) -> None:
    started = time.monotonic()
    base = docker_engine.base_image()
    docker_engine.docker("build", "--network", "host", "--build-arg", f"PYTHON_IMAGE={base}",
                         "--tag", IMAGE, str(REPO), capture=True)
    built_s = time.monotonic() - started
    config = json.loads(docker_engine.docker("image", "inspect", IMAGE, capture=True).stdout)
    assert config[0]["Config"]["User"] == "10001:10001"
    assert config[0]["Config"]["Healthcheck"]["Test"][0] == "CMD"

    topics = Topics(input=new_topic("in"), alerts=new_topic("alerts"), dlq=new_topic("dlq"))
    events, matches = mixed_workload(500, every=25)
    produce(broker.bootstrap_servers, topics.input, events)
    container = f"detector-{uuid.uuid4().hex[:8]}"
    docker_engine.docker(
        "run", "--detach", "--network", "host", "--name", container,
        "--health-interval", "2s", "--health-start-period", "30s",
        "--env", f"DETECTOR_BOOTSTRAP_SERVERS={broker.bootstrap_servers}",
        "--env", f"DETECTOR_INPUT_TOPICS={topics.input}",
        "--env", f"DETECTOR_ALERTS_TOPIC={topics.alerts}",
        "--env", f"DETECTOR_DLQ_TOPIC={topics.dlq}",
        "--env", f"DETECTOR_GROUP_ID=g-{uuid.uuid4().hex}",
        "--env", "DETECTOR_INPUT_FORMAT=avro",
        "--env", "DETECTOR_START_FROM=earliest",
        "--env", f"DETECTOR_METRICS_PORT={free_port()}",
        IMAGE, capture=True,
    )
    try:
        assert docker_engine.docker("exec", container, "id", "-u",
                                    capture=True).stdout.strip() == "10001"
        wait_until(lambda: health(docker_engine, container) == "healthy", 90,
                   "the container's HEALTHCHECK to report healthy")
        alerts = read_all(broker.bootstrap_servers, topics.alerts, wanted=len(matches))
        assert sorted(alert_event_ids(alerts)) == sorted(matches)
    finally:
        docker_engine.docker("rm", "--force", container, check=False, capture=True)
    print(f"\n[docker] image built in {built_s:.0f}s (base {base}); healthy; "
          f"{len(matches)} alerts")
