"""One module, consumer/kafka_properties.py, holds every librdkafka property the detector sets:
the README lists exactly those, each client's configuration is those plus the user's own, and no
other module writes a property whose value it does not take from the settings."""

from __future__ import annotations

import ast
import os
from functools import cache
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer

from consumer import kafka_properties
from consumer.config import Settings, load_settings
from consumer.kafka_properties import (
    ALL,
    CONSUMER,
    EVERY_CLIENT,
    PRODUCER,
    TOOLS_PRODUCER,
    ClientProperties,
    KafkaProperty,
)

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "consumer"
README_TEXT = (REPO / "README.md").read_text()
HEADING = "### librdkafka properties"

NOT_LIBRDKAFKA = {PACKAGE / "stream" / "registry.py"}
"""The Schema Registry client's settings (`max.retries`, `ssl.ca.location`...) look like
librdkafka's but are not."""

PYTHON_CALLBACKS = frozenset({
    "error_cb", "stats_cb", "throttle_cb", "oauth_cb", "logger", "on_delivery", "on_commit",
})
"""confluent-kafka's callbacks travel in the configuration too, but are not properties."""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DETECTOR_"):
            monkeypatch.delenv(name)


def settings(**overrides: object) -> Settings:
    return load_settings(None, input_format="json", **overrides)


def row(group: ClientProperties, prop: KafkaProperty) -> str:
    value = f"`{prop.value}`" if prop.literal else prop.value
    return f"| {group.client} | `{prop.name}` | {value} | {prop.reason} |"


def readme_rows() -> list[str]:
    """The table rows of the README's librdkafka section, header and rule left out."""
    section = README_TEXT.split(HEADING, 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return rows[1:]


def names(group: ClientProperties) -> set[str]:
    return {prop.name for prop in group.properties}


def test_the_readme_lists_every_property_of_the_module_with_its_value_and_reason() -> None:
    expected = [row(group, prop) for group in ALL for prop in group.properties]
    assert readme_rows() == expected, "README table should read:\n" + "\n".join(expected)


def test_every_module_table_is_listed() -> None:
    tables = {
        value for value in vars(kafka_properties).values() if isinstance(value, ClientProperties)
    }
    assert tables == set(ALL)


def test_the_consumer_gets_the_shared_properties_the_group_and_the_module_s_choices() -> None:
    config = settings(group_id="detectors").consumer_config(3)
    assert config == {"bootstrap.servers": "localhost:9092", "group.id": "detectors",
                      **CONSUMER.values()}
    assert set(config) | {"sasl.password", "group.instance.id"} == names(EVERY_CLIENT) | names(
        CONSUMER)


def test_static_membership_adds_the_group_instance_id_of_member_and_worker() -> None:
    config = settings(static_membership=True, member_name="pod-1").consumer_config(3)
    assert config["group.instance.id"] == "pod-1-3"


def test_the_transactional_producer_gets_a_transactional_id_and_the_at_least_once_one_none(
) -> None:
    exactly_once = settings(group_id="g", member_name="m").producer_config(2)
    at_least_once = settings(delivery="at-least-once").producer_config(2)
    assert exactly_once == {"bootstrap.servers": "localhost:9092",
                            "transactional.id": "g-m-2", **PRODUCER.values()}
    assert at_least_once == {"bootstrap.servers": "localhost:9092", **PRODUCER.values()}


def test_the_client_s_own_table_overrides_the_module_and_the_shared_table_does_not() -> None:
    config = settings(
        kafka={"isolation.level": "read_uncommitted", "client.id": "mine"},
        kafka_consumer={"auto.offset.reset": "latest"},
        kafka_producer={"linger.ms": "0"},
    )
    consumer = config.consumer_config(0)
    assert consumer["isolation.level"] == "read_committed"
    assert consumer["auto.offset.reset"] == "latest"
    assert consumer["client.id"] == "mine"
    assert config.producer_config(0)["linger.ms"] == "0"
    assert config.plain_producer_config()["linger.ms"] == "0"


def test_the_replay_producer_never_has_a_transactional_id_even_when_given_one() -> None:
    plain = settings(kafka_producer={"transactional.id": "given"}).plain_producer_config()
    assert "transactional.id" not in plain
    assert plain == {"bootstrap.servers": "localhost:9092",
                     **{**PRODUCER.values(), **TOOLS_PRODUCER.values()}}


@cache
def librdkafka_knows(name: str) -> bool:
    """Whether librdkafka has a property of that name (a topic setting such as
    `cleanup.policy`, or an ECS field name, it has not), asked of a client without brokers."""
    if name in PYTHON_CALLBACKS or name in Settings.model_fields:
        return False  # a setting's name (cli.py's help table) may be librdkafka's too: log_level
    try:
        Producer({name: "0", "log_level": "0"})
    except KafkaException as error:
        return "No such configuration property" not in error.args[0].str()
    return True


def written_property_names(path: Path) -> set[str]:
    """librdkafka property names used as keys of dict displays, or assigned as
    `config[...] = ...`, in one file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        keys: list[ast.expr | None] = []
        if isinstance(node, ast.Dict):
            keys = list(node.keys)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            keys = [node.slice]
        found.update(
            key.value for key in keys
            if isinstance(key, ast.Constant) and isinstance(key.value, str)
            and librdkafka_knows(key.value)
        )
    return found


def imports_a_kafka_client(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            continue
        if any(module.split(".")[0] == "confluent_kafka" for module in modules):
            return True
    return False


def test_outside_the_module_only_properties_taken_from_the_settings_are_written() -> None:
    derived = {prop.name for group in ALL for prop in group.properties if not prop.literal}
    written = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "kafka_properties.py" and path not in NOT_LIBRDKAFKA
        and imports_a_kafka_client(path)
        for name in written_property_names(path) - derived
    }
    assert not written, "move these into consumer/kafka_properties.py"


def test_the_written_property_check_sees_a_literal_property(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('config = {"linger.ms": "1", "stats_cb": print, "event.action": "x"}\n'
                      'config["acks"] = "1"\ntopic = {"cleanup.policy": "compact"}\n')
    assert written_property_names(sample) == {"linger.ms", "acks"}
