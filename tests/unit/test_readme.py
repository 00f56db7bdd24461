"""The README and the operations manual stay true: the settings and metrics tables name exactly
the settings and metrics that exist, the set-up commands exist, and every relative link finds
its file and heading."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from consumer.config import Settings
from consumer.stream.metrics import PREFIX, Metrics

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
OPERATIONS = REPO / "docs" / "operations.md"
MANUALS = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "deploy" / "README.md"]

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_settings_table_lists_every_setting_and_no_other() -> None:
    documented = set(re.findall(r"^\| `(DETECTOR_[A-Z0-9_]+)` \|", OPERATIONS.read_text(), re.M))
    existing = {f"DETECTOR_{name.upper()}" for name in Settings.model_fields}
    assert documented == existing


def test_the_metrics_table_lists_every_metric_and_no_other() -> None:
    """Named as Prometheus shows them (counters with `_total`, info metrics with `_info`);
    a name in parentheses is a remark, not a metric."""
    registry = CollectorRegistry()
    Metrics(registry)
    suffix = {"counter": "_total", "info": "_info"}
    exported = {
        family.name.removeprefix(f"{PREFIX}_") + suffix.get(family.type, "")
        for family in registry.collect()
    }
    table = OPERATIONS.read_text().split("## Metrics and health", 1)[1].split("\n## ", 1)[0]
    documented = {
        name
        for row in re.findall(r"^\| (.+?) \| \w+ \|", table, re.M)
        for name in re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", row))
    }
    assert documented == exported


def test_readme_gives_the_two_set_up_commands_that_exist() -> None:
    text = README.read_text()
    for command in ("scripts/demo", "scripts/test"):
        assert f"```\n{command}\n```" in text
        assert (README.parent / command).is_file()


def test_the_quick_start_commands_exist_and_the_broker_command_is_executable() -> None:
    text = README.read_text()
    assert "```\nscripts/kafka-local run --port 9092\n" in text
    wrapper = README.parent / "scripts" / "kafka-local"
    assert os.access(wrapper, os.X_OK)
    assert wrapper.read_text().startswith("#!/usr/bin/env bash\n")
    commands = set(re.findall(r"^\.venv/bin/cloudtrail-detector (\w+)", text, re.M))
    assert commands == {"topics", "run", "replay"}
    assert "cloudtrail-detector topics create" in text
    for command in ("dlq show", "dlq replay"):
        assert f"cloudtrail-detector {command}" in OPERATIONS.read_text()


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (lower case, punctuation dropped)."""
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text())
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", text, re.M)
    }


@pytest.mark.parametrize("manual", MANUALS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_finds_its_file_and_heading(manual: Path) -> None:
    broken = []
    for target in LINK.findall(manual.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (manual.parent / file_part).resolve() if file_part else manual
        if not linked.exists() or (anchor and anchor not in anchors(linked)):
            broken.append(target)
    assert not broken
