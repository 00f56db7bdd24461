"""The `cloudtrail-detector` command line: output and exit codes of rules, scan and bad usage."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from consumer import __version__
from consumer.cli import NO_FLAG, RUN_SETTINGS, SETTING_HELP, build_parser, main
from consumer.config import Settings
from tests.support.events import create_access_key, event

REPO = Path(__file__).resolve().parents[2]
SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
HARDENED_ID = "32403725-2adc-4bc1-a434-02793697b9bd"
CUSTOM_ID = "0e4f7c55-2b8e-4d1f-9a3c-5b6d7e8f9a01"
SEED_TEXT = (
    resources.files("consumer.rules")
    .joinpath("builtin", "aws_iam_user_created_access_keys_for_another_user.toml")
    .read_text()
)


@pytest.fixture(autouse=True)
def no_detector_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """DETECTOR_* variables of the calling shell must not change what the commands do."""
    for name in list(os.environ):
        if name.startswith("DETECTOR_"):
            monkeypatch.delenv(name)


def custom_rule(tmp_path: Path, *replacements: tuple[str, str]) -> Path:
    text = SEED_TEXT.replace(SEED_ID, CUSTOM_ID).replace(
        'name = "AWS IAM User Created Access Keys For Another User"', 'name = "Custom copy"'
    )
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    path = folder / "custom.toml"
    path.write_text(text)
    return path


def cloudtrail_file(tmp_path: Path, *records: dict[str, Any]) -> Path:
    path = tmp_path / "events.json"
    path.write_text(json.dumps({"Records": list(records)}))
    return path


CROSS_USER = create_access_key(event_id="cross-1", caller="mallory", target="bob")
HARMLESS = event(event_id="read-1")
ROOT_CALLER = {
    **create_access_key(event_id="root-1", caller="root", target="bob"),
    "userIdentity": {"type": "Root", "arn": "arn:aws:iam::111122223333:root",
                     "accountId": "111122223333", "principalId": "111122223333"},
}


def alert_ids(text: str) -> list[str]:
    return [json.loads(line)["event"]["id"] for line in text.splitlines()]


def test_rules_list_shows_each_rule_its_state_severity_and_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["rules", "list"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"on   {SEED_ID}  medium    AWS IAM User Created Access Keys For Another User  "
        "[builtin:aws_iam_user_created_access_keys_for_another_user.toml]",
        f"off  {HARDENED_ID}  medium    AWS IAM Access Key Created For Another User (Hardened)  "
        "[builtin:aws_iam_user_created_access_keys_for_another_user_hardened.toml]",
        "off  5b0f0c87-35b5-4c1e-9a55-6f0e3a7a8d21  high      AWS IAM Access Key Created For "
        "Another User Then Used  "
        "[builtin:aws_iam_user_created_access_keys_for_another_user_then_used.toml]",
    ]


def test_rules_list_includes_a_rules_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = custom_rule(tmp_path, ('severity = "medium"', 'severity = "high"'))

    assert main(["rules", "list", "--rules-dir", str(path.parent)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[3] == f"on   {CUSTOM_ID}  high      Custom copy  [{path}]"


def test_rules_validate_accepts_a_valid_rule_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = custom_rule(tmp_path)

    assert main(["rules", "validate", str(path)]) == 0

    captured = capsys.readouterr()
    assert captured.out == "1 path(s) valid\n"
    assert captured.err == ""


@pytest.mark.parametrize(
    ("replacement", "field"),
    [
        (('severity = "medium"', 'severity = "extreme"'), "rule.severity"),
        (('interval = "5m"', 'interval = "often"'), "rule.interval"),
        (("risk_score = 47", "risk_score = 470"), "rule.risk_score"),
        (('user.name != user.target.name', 'user.name !=! user.target.name'), "rule.query"),
        (('user.name != user.target.name', 'user.nickname != user.target.name'), "skipped"),
    ],
    ids=["severity", "interval", "risk-score", "syntax-error", "underived-field"],
)
def test_rules_validate_exits_2_naming_the_file_and_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], replacement: tuple[str, str], field: str
) -> None:
    path = custom_rule(tmp_path, replacement)

    assert main(["rules", "validate", str(path)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{path}: {field}: ")


def test_rules_validate_accepts_a_file_replacing_a_builtin_and_reports_a_duplicate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = custom_rule(tmp_path, (f'rule_id = "{CUSTOM_ID}"', f'rule_id = "{SEED_ID}"'))

    assert main(["rules", "validate", str(path.parent)]) == 0
    (path.parent / "copy.toml").write_text(path.read_text())
    assert main(["rules", "validate", str(path.parent)]) == 2

    assert capsys.readouterr().err.startswith(
        f"{path}: rule.rule_id: {SEED_ID} is already used by {path.parent / 'copy.toml'}"
    )


def unsupported_rule(tmp_path: Path) -> Path:
    return custom_rule(tmp_path, ('type = "esql"\nlanguage = "esql"\n',
                                  'type = "eql"\nlanguage = "eql"\n'))


def test_rules_validate_reports_an_unsupported_rule_unless_told_to_skip_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = unsupported_rule(tmp_path)
    line = f"{path}: skipped: rule type eql (language eql) is not supported yet\n"

    assert main(["rules", "validate", str(path)]) == 2
    assert capsys.readouterr().err == line
    assert main(["rules", "validate", "--skip-unsupported", str(path)]) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (line + "1 path(s) valid\n", "")


def test_rules_list_marks_a_skipped_rule_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = unsupported_rule(tmp_path)

    assert main(["rules", "list", "--rules-dir", str(path.parent)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[3] == (f"skip {CUSTOM_ID}  medium    Custom copy  [{path}]  "
                        "rule type eql (language eql) is not supported yet")


def test_an_invalid_rules_directory_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = custom_rule(tmp_path, ("max_signals = 100", "max_signals = 0"))
    cloudtrail = cloudtrail_file(tmp_path, CROSS_USER)

    assert main(["rules", "list", "--rules-dir", str(path.parent)]) == 2
    assert main(["scan", str(cloudtrail), "--rules-dir", str(path.parent)]) == 2
    assert main(["scan", str(cloudtrail), "--rules-dir", str(tmp_path / "missing")]) == 2

    err = capsys.readouterr().err
    assert f"{path}: rule.max_signals:" in err
    assert f"{tmp_path / 'missing'}: rules directory does not exist" in err


def test_scan_writes_alerts_to_stdout_and_a_summary_to_stderr_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cloudtrail_file(tmp_path, CROSS_USER, HARMLESS)

    assert main(["scan", str(path)]) == 0

    captured = capsys.readouterr()
    assert alert_ids(captured.out) == ["cross-1"]
    assert re.fullmatch(
        r"scanned 1 file\(s\), [\d.]+ kB: 2 records, 1 alerts from 1 rule\(s\), 0 skipped, "
        r"in \d+\.\ds", captured.err.splitlines()[-1])


def test_scan_fail_on_alert_exits_1_only_when_something_alerted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alerting = cloudtrail_file(tmp_path, CROSS_USER)
    quiet = tmp_path / "quiet.json"
    quiet.write_text(json.dumps([HARMLESS]))

    assert main(["scan", str(alerting), "--fail-on-alert"]) == 1
    assert main(["scan", str(quiet), "--fail-on-alert"]) == 0


def test_scan_output_file_and_no_event_original(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cloudtrail_file(tmp_path, CROSS_USER)
    output = tmp_path / "alerts.jsonl"

    assert main(["scan", str(path), "--output", str(output), "--no-event-original"]) == 0

    assert capsys.readouterr().out == ""
    documents = [json.loads(line) for line in output.read_text().splitlines()]
    assert [document["event"]["id"] for document in documents] == ["cross-1"]
    assert "original" not in documents[0]["event"]


def test_scan_runs_the_hardened_rule_only_with_enable_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cloudtrail_file(tmp_path, ROOT_CALLER)

    assert main(["scan", str(path), "--fail-on-alert"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["scan", str(path), "--fail-on-alert", "--enable-rule", HARDENED_ID]) == 1
    out = capsys.readouterr().out
    assert alert_ids(out) == ["root-1"]
    assert json.loads(out)["rule"]["id"] == HARDENED_ID


def test_scan_enable_rule_with_an_unknown_id_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cloudtrail_file(tmp_path, CROSS_USER)

    assert main(["scan", str(path), "--enable-rule", CUSTOM_ID]) == 2
    assert f"no rule has rule_id {CUSTOM_ID}" in capsys.readouterr().err


def test_scan_of_a_path_that_does_not_exist_is_bad_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", str(tmp_path / "typo.json")]) == 2


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["scan"],
        ["rules"],
        ["rules", "validate"],
        ["replay", "events.json"],
        ["replay", "events.json", "--topic", "t", "--rate", "0/s"],
        ["replay", "events.json", "--topic", "t", "--format", "xml"],
        ["scan", "events.json", "--no-such-option"],
    ],
    ids=["nothing", "unknown-command", "scan-no-path", "rules-no-subcommand",
         "validate-no-path", "replay-no-topic", "replay-zero-rate", "replay-bad-format",
         "unknown-option"],
)
def test_bad_usage_exits_2_with_a_usage_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)

    assert exited.value.code == 2
    assert "usage: cloudtrail-detector" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--input-format", "avro-registry"],
        ["run", "--start-from", "yesterday"],
        ["run", "--input-pattern", "cloudtrail-.*"],
    ],
    ids=["registry-without-url", "bad-start", "pattern-without-caret"],
)
def test_run_with_invalid_settings_exits_2_before_touching_kafka(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2

    assert capsys.readouterr().err.startswith("cloudtrail-detector: configuration error:")


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])

    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == __version__


def test_python_dash_m_consumer_scans_and_fails_on_alert(tmp_path: Path) -> None:
    path = cloudtrail_file(tmp_path, HARMLESS, CROSS_USER)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}

    finished = subprocess.run(
        [sys.executable, "-m", "consumer", "scan", str(path), "--fail-on-alert"],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=60, check=False,
    )

    assert finished.returncode == 1, finished.stderr
    assert alert_ids(finished.stdout) == ["cross-1"]
    assert ": 2 records, 1 alerts from 1 rule(s), 0 skipped, in " in finished.stderr


def test_scan_disable_rule_leaves_a_rule_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cloudtrail_file(tmp_path, CROSS_USER)

    assert main(["scan", str(path), "--disable-rule", SEED_ID]) == 0

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "0 alerts from 0 rule(s)" in captured.err


def test_scan_table_format_writes_one_row_per_alert_with_actor_and_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cloudtrail_file(tmp_path, CROSS_USER, HARMLESS)

    assert main(["scan", str(path), "--format", "table"]) == 0

    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["time", "severity", "rule", "actor", "target", "account", "source"]
    assert row.split()[1] == "medium"
    assert "mallory" in row.split()
    assert "bob" in row.split()


def test_every_setting_but_the_two_secrets_has_a_run_flag_with_help_and_default() -> None:
    run = next(action for action in build_parser()._subparsers._group_actions  # type: ignore[union-attr]
               if isinstance(action, argparse._SubParsersAction)).choices["run"]
    flags = {action.dest: action for action in run._actions}

    assert set(RUN_SETTINGS) | NO_FLAG == set(Settings.model_fields)
    for name in RUN_SETTINGS:
        assert name in flags, name
        assert SETTING_HELP[name] in (flags[name].help or "")
        assert "default: " in (flags[name].help or ""), name
