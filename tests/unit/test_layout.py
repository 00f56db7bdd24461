"""The package layout is the pipeline: each stage imports only the stages before it, and only the
stream and the offline tools talk to Kafka."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "consumer"

MAY_IMPORT = {
    "cloudtrail": {"times"},
    "rules": {"times", "cloudtrail"},
    "alerts": {"times", "cloudtrail", "rules"},
    "stream": {"times", "cloudtrail", "rules", "alerts", "config", "kafka_properties"},
    "offline": {"times", "cloudtrail", "rules", "alerts", "config", "kafka_properties"},
}
"""Sub-package -> the other parts of `consumer` it may import."""

KAFKA_FREE = ("cloudtrail", "rules", "alerts")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
    return names


def files_of(package: str) -> list[Path]:
    return sorted((PACKAGE / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_each_stage_imports_only_the_stages_before_it(package: str) -> None:
    wrong = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in files_of(package)
        for name in imported_modules(path)
        if name.startswith("consumer.")
        and name.split(".")[1] not in MAY_IMPORT[package] | {package}
    }
    assert not wrong


@pytest.mark.parametrize("package", KAFKA_FREE)
def test_only_the_stream_and_offline_tools_import_a_kafka_client(package: str) -> None:
    wrong = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in files_of(package)
        for name in imported_modules(path)
        if name == "confluent_kafka" or name.startswith("confluent_kafka.")
    }
    assert not wrong


def test_the_layout_checks_cover_every_sub_package() -> None:
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages - {"schemas"} == set(MAY_IMPORT)
