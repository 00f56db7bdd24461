"""The README stays true: its configuration table names exactly the settings that exist."""

from __future__ import annotations

import os
import re
from pathlib import Path

from consumer.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_table_lists_every_setting_and_no_other() -> None:
    documented = set(re.findall(r"^\| `(DETECTOR_[A-Z0-9_]+)` \|", README.read_text(), re.M))
    existing = {f"DETECTOR_{name.upper()}" for name in Settings.model_fields}
    assert documented == existing


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
    for command in ("topics create", "dlq show", "dlq replay"):
        assert f"cloudtrail-detector {command}" in text
