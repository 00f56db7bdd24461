"""How each variant is started: its command line and environment."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.pipeline.processes import free_port_pair
from bench.pipeline.workload import OTHER_BUILTINS, SEED_RULE_ID

DEFAULT_QUIX_PYTHON = (
    Path.home() / ".cache" / "cloudtrail-detector" / "quix-venv" / "bin" / "python"
)


@dataclass
class Setup:
    bootstrap: str
    topic: str
    partitions: int
    events: int
    rules_dir: Path
    aws_rules_dir: Path | None
    """The copy of ../shared/elastic-rules/aws that h and i run; None when it is absent."""
    esql_rules_dir: Path | None
    """The copy of its ES|QL rule files only, that j runs; None when it is absent."""
    input_format: str
    registry_url: str | None
    quix_python: Path | None
    workers: int
    run_id: str
    broker_pid: int | None
    """The local broker's process, whose CPU is reported too; None for an external one."""
    detector_env: dict[str, str] = field(default_factory=dict)
    """Settings every detector variant gets on top of the benchmark's (--detector-env)."""


def detector_variant(
    setup: Setup, key: str, label: str, *, delivery: str, workers: int,
    topics: tuple[str, str, str], group: str, aws_rules: bool = False, esql_rules: bool = False,
) -> Variant:
    """`aws_rules`: the copy of ../shared/elastic-rules/aws as the rules directory, with its
    seed file in the built-in's place; `esql_rules`: the copy of its ES|QL files, the other
    built-ins switched off; else the seed rule's copy, the built-in switched off."""
    input_topic, alerts_topic, dlq_topic = topics
    rules_dir: Path | None = setup.rules_dir
    disabled = SEED_RULE_ID
    if aws_rules:
        rules_dir, disabled = setup.aws_rules_dir, ""
    elif esql_rules:
        rules_dir, disabled = setup.esql_rules_dir, ",".join(OTHER_BUILTINS)
    assert rules_dir is not None, "the AWS-rule variants are skipped when ../shared is absent"
    port = free_port_pair()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")},
        "DETECTOR_BOOTSTRAP_SERVERS": setup.bootstrap,
        "DETECTOR_INPUT_TOPICS": input_topic,
        "DETECTOR_ALERTS_TOPIC": alerts_topic,
        "DETECTOR_DLQ_TOPIC": dlq_topic,
        "DETECTOR_GROUP_ID": group,
        "DETECTOR_MEMBER_NAME": f"bench-{key}-{setup.run_id}",
        "DETECTOR_INPUT_FORMAT": setup.input_format,
        "DETECTOR_START_FROM": "earliest",
        "DETECTOR_DELIVERY": delivery,
        "DETECTOR_WORKERS": str(workers),
        "DETECTOR_RULES_DIR": str(rules_dir),
        "DETECTOR_DISABLE_RULES": disabled,
        "DETECTOR_METRICS_HOST": "127.0.0.1",
        "DETECTOR_METRICS_PORT": str(port),
        "DETECTOR_LOG_LEVEL": "WARNING",
    }
    if setup.registry_url:
        env["DETECTOR_SCHEMA_REGISTRY_URL"] = setup.registry_url
    env.update(setup.detector_env)
    return Variant(key, label, [sys.executable, "-m", "consumer", "run"], env,
                   metrics_ports=[port + worker for worker in range(workers)],
                   by_rule=aws_rules or esql_rules)


def reference_variant(setup: Setup, key: str, label: str, group: str, alerts_topic: str) -> Variant:
    kind = {"a": "raw", "b": "naive", "g": "raw-split", "i": "naive"}[key]
    rules_dir = setup.aws_rules_dir if key == "i" else setup.rules_dir
    argv = [sys.executable, "-m", "bench.pipeline.reference", kind,
            "--bootstrap", setup.bootstrap, "--topic", setup.topic, "--group", group,
            "--messages", str(setup.events), "--alerts-topic", alerts_topic,
            "--rules-dir", str(rules_dir), "--partitions", str(setup.partitions),
            "--processes", str(setup.workers)]
    if setup.input_format == "avro-registry":
        argv.append("--framed")
    if key == "i":
        argv.append("--all-rules")
    return Variant(key, label, argv, dict(os.environ), reads_only=kind != "naive",
                   by_rule=key == "i")


def quix_variant(setup: Setup, group: str, alerts_topic: str) -> Variant | None:
    if setup.quix_python is None:
        return None
    argv = [str(setup.quix_python), "-m", "bench.pipeline.quix",
            "--bootstrap", setup.bootstrap, "--topic", setup.topic, "--group", group,
            "--alerts-topic", alerts_topic, "--rules-dir", str(setup.rules_dir)]
    if setup.input_format == "avro-registry":
        argv.append("--framed")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return Variant("c", "Quix Streams, exactly-once", argv, env)


def find_quix_python(requested: str | None) -> tuple[Path | None, str]:
    """An interpreter that imports quixstreams, and its version (or why there is none)."""
    candidates = [Path(requested)] if requested else [Path(sys.executable), DEFAULT_QUIX_PYTHON]
    for candidate in candidates:
        if not candidate.exists():
            continue
        probe = subprocess.run(
            [str(candidate), "-c", "import quixstreams; print(quixstreams.__version__)"],
            capture_output=True, text=True, check=False,
        )
        if probe.returncode == 0:
            return candidate, probe.stdout.strip()
    return None, "quixstreams is not importable by " + ", ".join(map(str, candidates))



@dataclass
class Variant:
    key: str
    label: str
    argv: list[str]
    env: dict[str, str]
    metrics_ports: list[int] = field(default_factory=list)
    """The detector's /metrics ports; empty for variants that report on stdout."""
    reads_only: bool = False
    """True for the raw ceiling: it reports when it has read everything and commits nothing."""
    by_rule: bool = False
    """True when it runs several rules: its alerts are told apart by (rule, event)."""

