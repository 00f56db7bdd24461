"""Bad configuration stops the detector before it touches Kafka, with a message naming the
setting; secrets stay out of every dump. A few runs of the real CLI check the exit code (2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumer.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]
EXIT_CONFIG = 2
SECRET = "s3cr3t-Passw0rd-never-logged"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the DETECTOR_* variables a test sets itself."""
    for name in list(os.environ):
        if name.startswith("DETECTOR_"):
            monkeypatch.delenv(name)


def config_error(config_file: Path | None = None, **overrides: object) -> str:
    with pytest.raises(ConfigError) as raised:
        load_settings(config_file, **overrides)
    return str(raised.value)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "detector.toml"
    path.write_text(text)
    return path


def test_an_unknown_detector_environment_variable_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DETECTOR_BOOTSTRAP_SERVER", "kafka:9092")  # missing the final S

    message = config_error()

    assert "DETECTOR_BOOTSTRAP_SERVER" in message
    assert "unknown" in message


def test_an_unknown_key_in_the_config_file_is_refused_by_name(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'bootstrap_servers = "kafka:9092"\nbatch_sise = 10\n')

    message = config_error(config)

    assert "batch_sise" in message
    assert "not permitted" in message


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        ("DETECTOR_BATCH_SIZE", "lots", "batch_size"),
        ("DETECTOR_BATCH_SIZE", "0", "batch_size"),
        ("DETECTOR_METRICS_PORT", "70000", "metrics_port"),
        ("DETECTOR_INPUT_FORMAT", "xml", "input_format"),
        ("DETECTOR_DELIVERY", "maybe-once", "delivery"),
        ("DETECTOR_PREFILTER", "perhaps", "prefilter"),
        ("DETECTOR_SHUTDOWN_TIMEOUT_S", "-1", "shutdown_timeout_s"),
        ("DETECTOR_START_FROM", "yesterday", "start_from"),
        ("DETECTOR_INPUT_PATTERN", "cloudtrail-.*", "input_pattern"),
        ("DETECTOR_KAFKA", "security.protocol=SSL", "kafka"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_setting_and_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, setting: str
) -> None:
    monkeypatch.setenv("DETECTOR_INPUT_FORMAT", "json")
    monkeypatch.setenv(variable, value)

    message = config_error()

    assert f"setting {setting}" in message
    assert variable in message


def test_a_wrong_type_in_the_config_file_names_the_setting(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'input_format = "json"\nworkers = "two"\n')

    assert "setting workers (DETECTOR_WORKERS)" in config_error(config)


def test_a_config_file_that_is_not_toml_names_the_file(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "bootstrap_servers = kafka:9092\n")

    assert str(config) in config_error(config)


def test_a_missing_config_file_names_the_file_and_its_variable(tmp_path: Path) -> None:
    message = config_error(tmp_path / "absent.toml")

    assert "absent.toml" in message
    assert "DETECTOR_CONFIG_FILE" in message


def test_the_registry_format_without_a_registry_url_says_which_setting_is_needed() -> None:
    assert "schema_registry_url" in config_error(input_format="avro-registry")


def test_the_environment_wins_over_the_config_file_and_cli_options_over_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_toml(
        tmp_path, 'input_format = "json"\nbatch_size = 10\ngroup_id = "from-file"\n'
        'alerts_topic = "file-alerts"\n',
    )
    monkeypatch.setenv("DETECTOR_BATCH_SIZE", "20")
    monkeypatch.setenv("DETECTOR_GROUP_ID", "from-env")

    settings = load_settings(config, group_id="from-cli")

    assert (settings.alerts_topic, settings.batch_size, settings.group_id) == (
        "file-alerts", 20, "from-cli"
    )


# --- secrets -----------------------------------------------------------------------------------


def test_the_sasl_password_file_becomes_sasl_password_without_its_trailing_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.setenv("DETECTOR_KAFKA_SASL_PASSWORD_FILE", str(secret_file))

    settings = load_settings(None, input_format="json")

    assert settings.consumer_config(0)["sasl.password"] == SECRET
    assert settings.producer_config(0)["sasl.password"] == SECRET


def test_an_unreadable_sasl_password_file_names_the_setting(tmp_path: Path) -> None:
    message = config_error(input_format="json", kafka_sasl_password_file=tmp_path / "nope")

    assert "setting kafka_sasl_password_file (DETECTOR_KAFKA_SASL_PASSWORD_FILE)" in message
    assert "nope" in message


def test_an_empty_sasl_password_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")

    message = config_error(input_format="json", kafka_sasl_password_file=empty)

    assert "kafka_sasl_password_file" in message
    assert "empty" in message


def test_a_sasl_password_given_twice_is_refused(tmp_path: Path) -> None:
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(SECRET)

    message = config_error(input_format="json", kafka_sasl_password="other",
                           kafka_sasl_password_file=secret_file)

    assert "kafka_sasl_password or kafka_sasl_password_file" in message


def test_every_secret_shows_as_stars_in_the_redacted_dump_and_the_repr(tmp_path: Path) -> None:
    secret_file = tmp_path / "registry-auth"
    secret_file.write_text(SECRET + "-file")
    settings = load_settings(
        None,
        input_format="json",
        kafka_sasl_password_file=secret_file,
        schema_registry_basic_auth=f"user:{SECRET}-registry",
        kafka={"sasl.username": "detector", "ssl.key.password": SECRET + "-key"},
        kafka_producer={"sasl.password": SECRET + "-producer"},
    )

    dump = settings.redacted()
    text = json.dumps(dump) + repr(settings) + str(settings)

    assert SECRET not in text
    assert dump["kafka_sasl_password_file"] == "***"
    assert dump["schema_registry_basic_auth"] == "***"
    assert dump["kafka"] == {"sasl.username": "detector", "ssl.key.password": "***"}
    assert dump["kafka_producer"] == {"sasl.password": "***"}


# --- the real command line ---------------------------------------------------------------------


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    return subprocess.run(
        [sys.executable, "-m", "consumer", "run", *args],
        env={**environment, **env}, cwd=REPO, capture_output=True, text=True, timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DETECTOR_INPUT_FORMAT": "json", "DETECTOR_GROUPID": "g"}, "DETECTOR_GROUPID"),
        ({"DETECTOR_INPUT_FORMAT": "json", "DETECTOR_BATCH_SIZE": "x"}, "DETECTOR_BATCH_SIZE"),
        ({"DETECTOR_INPUT_FORMAT": "json", "DETECTOR_KAFKA_SASL_PASSWORD_FILE": "/nonexistent"},
         "DETECTOR_KAFKA_SASL_PASSWORD_FILE"),
    ],
    ids=["unknown-variable", "wrong-type", "missing-secret-file"],
)
def test_the_cli_exits_2_naming_the_bad_setting_before_touching_kafka(
    env: dict[str, str], named: str
) -> None:
    result = run_cli({"DETECTOR_BOOTSTRAP_SERVERS": "127.0.0.1:1", **env})

    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "configuration error" in result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_the_cli_exits_2_for_an_unknown_key_in_the_config_file(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'input_format = "json"\nalert_topic = "typo"\n')

    result = run_cli({}, "--config", str(config))

    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "alert_topic" in result.stderr


def test_the_cli_refuses_a_bad_option_value_with_exit_2() -> None:
    result = run_cli({}, "--input-format", "yaml")

    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "input_format" in result.stderr


def test_the_data_stream_namespace_follows_elastics_naming_rules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DETECTOR_INPUT_FORMAT", "json")
    assert load_settings().data_stream_namespace == "default"
    monkeypatch.setenv("DETECTOR_DATA_STREAM_NAMESPACE", "Prod-EU")

    message = config_error()

    assert "DETECTOR_DATA_STREAM_NAMESPACE" in message


def test_a_geoip_database_that_does_not_exist_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DETECTOR_INPUT_FORMAT", "json")
    monkeypatch.setenv("DETECTOR_GEOIP_CITY_DATABASE", str(tmp_path / "GeoLite2-City.mmdb"))

    message = config_error()

    assert "DETECTOR_GEOIP_CITY_DATABASE" in message
