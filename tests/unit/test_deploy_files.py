"""What an operator deploys: the Dockerfile, docker-compose.yml, Prometheus and Grafana files.

No Docker engine runs in CI, so the stack is checked by structure: every image pinned, services
started in dependency order, ports published, and every metric a dashboard panel or alert rule
queries is one the detector exports. `docker compose config` and `promtool` run where installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumer.cli import build_parser
from consumer.config import ENV_PREFIX, Settings
from consumer.stream.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "cloudtrail-detector.json"
DATASOURCE_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"
SAMPLE_FILE = REPO / "consumer" / "samples" / "cloudtrail-sample.jsonl"

DATASOURCE_UID = "cloudtrail-prometheus"
SCRAPE_JOB = "cloudtrail-detector"
HEALTH_CHECKED_SERVICES = ("kafka", "schema-registry", "detector", "prometheus")
PUBLISHED_PORTS = {9092, 8081, 9464, 9090, 3000}
WAIT_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "info": ("_info",),
}
"""The series names prometheus-client exposes for a metric family of each type."""

PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "inf", "nan"}
)


def load_yaml(path: Path) -> Any:
    """The parsed file; skips the test where PyYAML is not installed."""
    yaml = pytest.importorskip("yaml", reason="PyYAML parses the deploy files")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    document = load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


@cache
def exported_series() -> frozenset[str]:
    """Every series name the detector can expose, plus `up`, which Prometheus adds per target.

    Taken from the metric families, not from the samples: a labelled metric has no samples
    until a label set is first used.
    """
    registry = CollectorRegistry()
    Metrics(registry)
    names = {"up"}
    for family in registry.collect():
        assert family.type in SAMPLE_SUFFIXES, f"{family.name}: unhandled type {family.type}"
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana's $__ variables allowed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        is_function = text[match.end() :].lstrip().startswith("(")
        if not is_function and match.group() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def dashboard_panels() -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    for panel in dashboard()["panels"]:
        yield from (panel.get("panels") or []) if panel["type"] == "row" else [panel]


def alert_rules() -> list[dict[str, Any]]:
    document = load_yaml(PROMETHEUS_DIR / "alerts.yml")
    return [rule for group in document["groups"] for rule in group["rules"]]


def host_port(mapping: object) -> int:
    """The host port of a compose `ports` entry ("127.0.0.1:9092:9092", "3000:3000", long form)."""
    if isinstance(mapping, dict):
        return int(mapping["published"])
    return int(str(mapping).rsplit(":", 2)[-2])


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, each list starting with its FROM."""
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def image_is_pinned(image: str) -> bool:
    """A digest, or an explicit version-like tag (not `latest`) on the repository."""
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    repository, _, tag = image.rpartition(":")
    return bool(repository) and "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag)


# ---- docker compose ------------------------------------------------------------------------------


def test_compose_file_passes_docker_compose_config() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, check=False
    )
    if version.returncode != 0:
        reason = (version.stderr.strip().splitlines() or ["no output"])[0]
        pytest.skip(f"the docker compose plugin is not available ({reason})")
    result = subprocess.run(
        [docker, "compose", "--file", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr


def test_compose_runs_broker_registry_detector_replayer_and_monitoring() -> None:
    assert set(services()) == {
        "kafka",
        "schema-registry",
        "topics",
        "detector",
        "replay",
        "prometheus",
        "grafana",
    }


def test_every_compose_image_is_pinned_to_a_version() -> None:
    built_images = {service["image"] for service in services().values() if "build" in service}
    for name, service in services().items():
        image = service.get("image")
        assert isinstance(image, str), f"{name} names no image"
        if image in built_images:
            assert not image.endswith(":latest"), f"{name}: {image}"
        else:
            assert image_is_pinned(image), f"{name}: {image} is not pinned to a version"


def test_only_one_service_builds_the_detector_image() -> None:
    builders = [name for name, service in services().items() if "build" in service]
    assert builders == ["detector"]
    assert services()["replay"]["image"] == services()["detector"]["image"]
    assert services()["replay"].get("pull_policy") == "never"


@pytest.mark.parametrize("name", HEALTH_CHECKED_SERVICES)
def test_long_running_service_has_a_healthcheck(name: str) -> None:
    healthcheck = services()[name].get("healthcheck") or {}
    assert not healthcheck.get("disable", False)
    test = healthcheck.get("test")
    assert isinstance(test, list)
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert len(test) > 1


def test_services_wait_for_what_they_need_to_be_ready() -> None:
    expected = {
        "schema-registry": {"kafka": "service_healthy"},
        "topics": {"kafka": "service_healthy"},
        "detector": {
            "kafka": "service_healthy",
            "schema-registry": "service_healthy",
            "topics": "service_completed_successfully",
        },
        "replay": {
            "schema-registry": "service_healthy",
            "topics": "service_completed_successfully",
            "detector": "service_healthy",
        },
        "grafana": {"prometheus": "service_healthy"},
    }
    for name, dependencies in expected.items():
        declared = services()[name]["depends_on"]
        assert {dependency: declared[dependency]["condition"] for dependency in declared} == (
            dependencies
        ), name


def test_every_dependency_condition_can_be_met() -> None:
    """service_healthy needs a healthcheck on the other side, or compose waits forever."""
    for name, service in services().items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert isinstance(spec, dict), f"{name}: depends_on {dependency} has no condition"
            condition = spec["condition"]
            assert condition in WAIT_CONDITIONS, f"{name}: {condition}"
            if condition == "service_healthy":
                healthcheck = services()[dependency].get("healthcheck") or {}
                assert healthcheck.get("test"), f"{name} waits on unchecked {dependency}"


def test_published_ports_reach_every_interface_an_operator_uses_on_localhost_only() -> None:
    ports = [port for service in services().values() for port in service.get("ports", [])]
    assert {host_port(port) for port in ports} == PUBLISHED_PORTS
    for port in ports:
        assert str(port).startswith("127.0.0.1:"), f"{port} listens beyond localhost"


def test_kafka_is_a_single_kraft_node_that_supports_transactions() -> None:
    environment = services()["kafka"]["environment"]
    assert set(environment["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert environment["KAFKA_NODE_ID"] == "1"
    assert environment["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith("1@kafka:")
    assert "PLAINTEXT_HOST://localhost:9092" in environment["KAFKA_ADVERTISED_LISTENERS"]
    for setting in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert environment[setting] == "1", setting
    assert environment["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_topics_service_creates_every_topic_the_detector_uses() -> None:
    script = "\n".join(services()["topics"]["command"])
    created = dict(re.findall(r"^\s*create (\S+) (\d+)\s*$", script, re.MULTILINE))
    assert created.get("cloudtrail-events") == "4"
    environment = services()["detector"]["environment"]
    used = {
        environment["DETECTOR_INPUT_TOPICS"],
        environment["DETECTOR_ALERTS_TOPIC"],
        environment["DETECTOR_DLQ_TOPIC"],
    }
    assert used == set(created)
    assert "kafka-topics.sh" in script


@pytest.mark.parametrize("name", ["detector", "replay"])
def test_compose_sets_only_settings_the_detector_knows(name: str) -> None:
    """An unknown DETECTOR_* variable stops the detector at start-up."""
    environment = services()[name]["environment"]
    assert environment
    for variable in environment:
        assert variable.startswith(ENV_PREFIX), variable
        assert variable.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, variable


def test_detector_reads_avro_through_the_schema_registry_on_the_internal_listener() -> None:
    environment = services()["detector"]["environment"]
    advertised = services()["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT://{environment['DETECTOR_BOOTSTRAP_SERVERS']}" in advertised.split(",")
    assert environment["DETECTOR_INPUT_FORMAT"] == "avro-registry"
    registry_listener = services()["schema-registry"]["environment"]["SCHEMA_REGISTRY_LISTENERS"]
    assert environment["DETECTOR_SCHEMA_REGISTRY_URL"] == "http://schema-registry:8081"
    assert registry_listener.endswith(":8081")
    assert environment["DETECTOR_DELIVERY"] == "exactly-once"


@pytest.mark.parametrize("name", ["detector", "replay"])
def test_compose_commands_are_ones_the_cli_accepts(name: str) -> None:
    arguments = build_parser().parse_args(services()[name]["command"])
    assert arguments.command == services()[name]["command"][0]


def test_replay_feeds_the_bundled_sample_that_the_image_carries() -> None:
    replay = services()["replay"]
    command = replay["command"]
    assert command[:2] == ["replay", "/app/samples/cloudtrail-sample.jsonl"]
    assert command[command.index("--topic") + 1] == "cloudtrail-events"
    assert command[command.index("--format") + 1] == "avro-registry"
    assert "--loop" in command
    detector_environment = services()["detector"]["environment"]
    for setting in ("DETECTOR_BOOTSTRAP_SERVERS", "DETECTOR_SCHEMA_REGISTRY_URL"):
        assert replay["environment"][setting] == detector_environment[setting], setting
    copies = [args for keyword, args in dockerfile_stages()[-1] if keyword == "COPY"]
    assert "consumer/samples/ /app/samples/" in copies
    assert SAMPLE_FILE.is_file()


def test_every_mounted_file_exists_in_the_repository() -> None:
    mounts = [
        volume.split(":")[0]
        for service in services().values()
        for volume in service.get("volumes", [])
        if volume.startswith("./")
    ]
    assert mounts
    for source in mounts:
        assert (REPO / source).exists(), source


# ---- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_builds_in_a_separate_stage_from_a_pinned_base() -> None:
    arguments = {
        name: default
        for keyword, args in dockerfile_instructions()
        if keyword == "ARG" and "=" in args
        for name, _, default in [args.partition("=")]
    }
    bases = [stage[0][1].split()[0] for stage in dockerfile_stages()]
    assert len(bases) >= 2
    for base in bases:
        resolved = re.sub(r"\$\{(\w+)\}", lambda match: arguments[match.group(1)], base)
        assert image_is_pinned(resolved), resolved
    final_stage = " ".join(args for _, args in dockerfile_stages()[-1])
    assert "--from=builder" in final_stage
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", final_stage)


def test_dockerfile_runs_the_detector_as_an_unprivileged_user() -> None:
    users = [args for keyword, args in dockerfile_stages()[-1] if keyword == "USER"]
    assert users
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_checks_health_exposes_metrics_and_runs_the_detector() -> None:
    final = dict(dockerfile_stages()[-1])
    assert "/healthz" in final["HEALTHCHECK"]
    assert final["HEALTHCHECK"].split("CMD", 1)[1].strip().startswith('["python"')
    assert final["EXPOSE"] == "9464"
    assert json.loads(final["ENTRYPOINT"]) == ["cloudtrail-detector"]
    assert json.loads(final["CMD"]) == ["run"]


def test_build_context_holds_the_package_and_everything_it_links_to() -> None:
    """A symlink in consumer/ to a folder left out of the context installs a package without it."""
    patterns = [
        line
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore should be an allow-list"
    allowed = {pattern.removeprefix("!").rstrip("/") for pattern in patterns[1:]}
    assert {"pyproject.toml", "README.md", "consumer"} <= allowed
    copied = {
        args.split()[0].rstrip("/")
        for keyword, args in dockerfile_stages()[0]
        if keyword == "COPY" and not args.startswith("--")
    } | {"pyproject.toml", "README.md"}
    linked = {
        path.resolve().relative_to(REPO).parts[0]
        for path in (REPO / "consumer").rglob("*")
        if path.is_symlink()
    }
    for top_level in linked | {"consumer"}:
        assert top_level in allowed, f"{top_level} is not in the build context"
        assert top_level in copied, f"the builder stage does not copy {top_level}"


# ---- metrics in dashboards and rules -------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{job="x"}[$__rate_interval]))', {"a_bucket"}),
        ("histogram_quantile(0.99, sum by (le) (rate(b_bucket[5m])))", {"b_bucket"}),
        ("deriv(lag[10m]) > 0 and lag > 1e3", {"lag"}),
        ("(sum(rate(c_total[5m])) or max by (job) (up == 1) * 0) == 0", {"c_total", "up"}),
        (
            'rate(d_total{outcome="aborted"}[5m]) > 0 unless on (instance) e offset 5m',
            {"d_total", "e"},
        ),
        ('label_replace(f, "dst", "$1", "src", "(.*)")', {"f"}),
    ],
)
def test_metric_name_extraction_ignores_functions_labels_and_keywords(
    expr: str, names: set[str]
) -> None:
    assert metric_names(expr) == names


def test_dashboard_queries_only_metrics_the_detector_exports() -> None:
    panels = list(dashboard_panels())
    assert len(panels) >= 20
    for panel in panels:
        exprs = [target["expr"] for target in panel.get("targets", [])]
        assert exprs, f"panel {panel['title']!r} has no query"
        queried = set().union(*(metric_names(expr) for expr in exprs))
        assert queried, f"panel {panel['title']!r} queries no metric"
        unknown = queried - exported_series()
        assert not unknown, f"panel {panel['title']!r} queries {sorted(unknown)}"


def test_dashboard_graphs_every_metric_family_the_detector_exports() -> None:
    queried = set().union(
        *(
            metric_names(target["expr"])
            for panel in dashboard_panels()
            for target in panel["targets"]
        )
    )
    registry = CollectorRegistry()
    Metrics(registry)
    for family in registry.collect():
        series = {family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type]}
        assert series & queried, f"no panel shows {family.name}"


def test_dashboard_uses_the_provisioned_datasource_everywhere() -> None:
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID
    assert "${DS_" not in DASHBOARD_FILE.read_text(encoding="utf-8")


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    occupied: dict[tuple[int, int], str] = {}
    ids = []
    for panel in dashboard()["panels"]:
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for row in range(grid["y"], grid["y"] + grid["h"]):
            for column in range(grid["x"], grid["x"] + grid["w"]):
                assert (row, column) not in occupied, (panel["title"], occupied[(row, column)])
                occupied[(row, column)] = panel["title"]
    assert len(ids) == len(set(ids))


def test_dashboard_shows_latency_quantiles_and_heatmaps() -> None:
    panels = list(dashboard_panels())
    heatmaps = {
        metric
        for panel in panels
        if panel["type"] == "heatmap"
        for target in panel["targets"]
        for metric in metric_names(target["expr"])
    }
    assert heatmaps == {
        "cloudtrail_detector_processing_latency_seconds_bucket",
        "cloudtrail_detector_event_to_alert_latency_seconds_bucket",
    }
    quantile_exprs = [
        target["expr"]
        for panel in panels
        for target in panel["targets"]
        if target["expr"].startswith("histogram_quantile(0.99,")
    ]
    assert any("processing_latency" in expr for expr in quantile_exprs)
    assert any("event_to_alert_latency" in expr for expr in quantile_exprs)


def test_alert_rules_query_only_metrics_the_detector_exports() -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        queried = metric_names(rule["expr"])
        assert queried, rule["alert"]
        assert queried <= exported_series(), (rule["alert"], sorted(queried - exported_series()))


def test_alert_rules_carry_severity_and_operator_guidance() -> None:
    names = []
    for rule in alert_rules():
        names.append(rule["alert"])
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        if "up{" in rule["expr"]:
            assert f'job="{SCRAPE_JOB}"' in rule["expr"], rule["alert"]
    assert len(names) == len(set(names))


def test_alert_rules_cover_the_failures_an_operator_must_hear_about() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    durations = {rule["alert"]: rule.get("for") for rule in alert_rules()}
    assert "up{" in exprs["CloudTrailDetectorDown"]
    assert "absent(up{" in exprs["CloudTrailDetectorTargetMissing"]
    assert (
        "deriv(cloudtrail_detector_consumer_lag_messages[10m])"
        in exprs["CloudTrailDetectorLagGrowing"]
    )
    assert durations["CloudTrailDetectorLagGrowing"] == "10m"
    assert "cloudtrail_detector_dead_letters_total" in exprs["CloudTrailDetectorDeadLetters"]
    assert "cloudtrail_detector_messages_consumed_total" in exprs["CloudTrailDetectorNoEvents"]
    assert durations["CloudTrailDetectorNoEvents"] == "15m"
    assert 'outcome="aborted"' in exprs["CloudTrailDetectorTransactionsAborting"]


# ---- Prometheus and Grafana wiring ---------------------------------------------------------------


def test_prometheus_scrapes_the_detector_and_loads_the_rules_beside_it() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == SCRAPE_JOB
    targets = [target for static in job["static_configs"] for target in static["targets"]]
    detector_port = services()["detector"]["environment"]["DETECTOR_METRICS_PORT"]
    assert targets == [f"detector:{detector_port}"]
    assert config["rule_files"] == ["alerts.yml"]
    volumes = services()["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes


def test_grafana_datasource_and_dashboard_provisioning_match_the_stack() -> None:
    (datasource,) = load_yaml(DATASOURCE_FILE)["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(DASHBOARD_PROVIDER_FILE)["providers"]
    dashboards_path = provider["options"]["path"]
    grafana = services()["grafana"]
    assert f"./deploy/grafana/dashboards:{dashboards_path}:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_path}/{DASHBOARD_FILE.name}"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


# ---- promtool ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param(["check", "rules", "alerts.yml"], id="check-rules"),
        pytest.param(["check", "config", "prometheus.yml"], id="check-config"),
        pytest.param(["test", "rules", "alerts.test.yml"], id="rule-unit-tests"),
    ],
)
def test_promtool_accepts_the_prometheus_files(arguments: list[str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    result = subprocess.run(
        [promtool, *arguments],
        capture_output=True,
        text=True,
        check=False,
        cwd=PROMETHEUS_DIR,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
