"""Every PromQL expression in deploy/ evaluated by a real Prometheus scraping a live detector.

Each alert rule's expression and each Grafana panel's query must return series against a
detector that consumed events, raised alerts (some throttled) and dead-lettered garbage: a wrong
metric or label name returns nothing and fails here, where `promtool check` cannot see it. Alert
rules are conditions that are false on a healthy detector, so their comparisons are evaluated
with `bool` (every series, 0 or 1) and `absent(x)` as `x`.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import yaml

from scripts.prometheus_local import JOB, LocalPrometheus
from scripts.server_local import ServerUnavailableError
from tests.conftest import REPO, Broker, TopicFactory
from tests.support.events import mixed_workload
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    produce,
    produce_raw,
    wait_all_committed,
    wait_until,
)

pytestmark = pytest.mark.slow

ALERTS_FILE = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD_FILE = REPO / "deploy" / "grafana" / "dashboards" / "cloudtrail-detector.json"
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__range": "1m", "$__interval": "1s"}
COMPANION_RULE_ID = "5b0f0c87-35b5-4c1e-9a55-6f0e3a7a8d21"
"""Our aggregating companion of the seed rule, off by default."""

FAULT_ONLY_METRICS = {
    "cloudtrail_detector_produce_errors_total":
        "a failed delivery to the broker, which this healthy run does not cause",
    "cloudtrail_detector_exception_removals_total":
        "a match an exception item removes; this run has no exceptions",
    "cloudtrail_detector_exception_reloads_total":
        "a reload of changed exception files; this run has none",
    "cloudtrail_detector_messages_without_cloudtrail_total":
        "a message holding no CloudTrail (a digest, a GuardDuty event); this run sends none",
    "cloudtrail_detector_rules_skipped":
        "a rule the detector cannot run; this run loads only the built-in rules",
    "cloudtrail_detector_messages_too_large_total":
        "an alert or dead letter above its topic's max.message.bytes; this run has none",
}
FAULT_ONLY_EXPRESSIONS = {
    "alert CloudTrailDetectorTransactionsAborting":
        "an aborted transaction, which this healthy run does not cause",
}
"""What only a fault creates: these expressions must parse and name exported metrics, but may
return no series."""

COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool)(?=\s)")


def expressions() -> dict[str, str]:
    """'alert <name>' and 'panel <title> #<n>' -> PromQL, Grafana's variables filled in."""
    found: dict[str, str] = {}
    for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"]:
        for rule in group["rules"]:
            found[f"alert {rule['alert']}"] = rule["expr"]
    for panel in json.loads(DASHBOARD_FILE.read_text())["panels"]:
        for index, target in enumerate(panel.get("targets", [])):
            found[f"panel {panel['title']} #{index}"] = target["expr"]
    for variable, value in GRAFANA_VARIABLES.items():
        found = {name: expr.replace(variable, value) for name, expr in found.items()}
    return found


def as_series(expr: str) -> str:
    """The expression with every comparison made a 0/1 filter-free `bool`, absent(x) as x."""
    expr = re.sub(r"absent\((.*)\)", r"(\1)", expr)
    return COMPARISON.sub(r"\1 bool", expr)


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(cloudtrail_detector_\w+|up)\b", expr))


def test_as_series_keeps_the_rule_but_drops_its_filter() -> None:
    assert as_series("up{job=\"x\"} == 0") == "up{job=\"x\"} == bool 0"
    assert as_series("absent(up{job=\"x\"})") == "(up{job=\"x\"})"
    assert as_series("rate(a[5m]) > 0 and b > bool 1") == "rate(a[5m]) > bool 0 and b > bool 1"


def test_every_alert_rule_and_dashboard_query_returns_series_from_a_live_detector(
    broker: Broker, new_topic: TopicFactory, run_dir: Path, detectors: list[DetectorProcess],
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = Topics(input=new_topic("in", partitions=2), alerts=new_topic("alerts"),
                    dlq=new_topic("dlq"))
    events, matches = mixed_workload(3000, every=20)
    assert len(matches) == 150  # above max_signals (100): the throttle panel gets series
    produce(bootstrap, topics.input, events)
    produce_raw(bootstrap, topics.input, [(b"k", b"\x00not avro"), (b"k", b"")])
    group = f"g-{uuid.uuid4().hex}"
    detector = DetectorProcess(bootstrap, topics, run_dir / "detectors", group=group,
                               extra_env={"DETECTOR_PREFILTER": "false",
                                          # the companion aggregates: the stateful panels
                                          "DETECTOR_ENABLE_RULES": COMPANION_RULE_ID})
    detectors.append(detector.start())
    detector.wait_ready()

    prometheus = LocalPrometheus([f"127.0.0.1:{detector.port}"], run_dir / "prometheus",
                                 rule_files=[ALERTS_FILE])
    try:
        prometheus.start()
    except ServerUnavailableError as error:
        pytest.skip(f"Prometheus cannot run on this machine: {error}")
    try:
        wait_all_committed(bootstrap, group, topics.input, 2)
        wait_until(lambda: bool(prometheus.query(f'up{{job="{JOB}"}} == 1')), 30,
                   f"Prometheus scraping the detector (log {prometheus.log_path})")
        pending = {name: as_series(expr) for name, expr in expressions().items()
                   if name not in FAULT_ONLY_EXPRESSIONS
                   and not metric_names(expr) & FAULT_ONLY_METRICS.keys()}

        def all_return_series() -> bool:
            for name, expr in list(pending.items()):
                if prometheus.query(expr):
                    del pending[name]
            return not pending

        try:
            wait_until(all_return_series, 60, "every expression to return series")
        except AssertionError:
            raise AssertionError(f"no series from: {json.dumps(pending, indent=1)}") from None
        exported = prometheus.target_metadata()
        for name, expr in expressions().items():
            prometheus.query(as_series(expr))  # every expression parses, fault-only ones too
            for metric in metric_names(expr) - {"up"}:
                family = re.sub(r"_(total|bucket|sum|count)$", "", metric)
                assert exported.keys() & {metric, family}, (
                    f"{name} queries {metric}, which the detector does not export"
                )
        rule_names = {series["metric"]["rule_name"]
                      for series in prometheus.query("cloudtrail_detector_rule_info")}
        assert "AWS IAM User Created Access Keys For Another User" in rule_names
    finally:
        prometheus.close()
