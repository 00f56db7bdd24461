"""Each of Elastic's 23 AWS ES|QL rule files compiles, or names the one thing it still lacks."""

import re
import tomllib
from pathlib import Path

import pytest

from consumer.cloudtrail.normalize import ECS_FIELDS
from consumer.rules.esql import UnsupportedEsqlError, compile_query
from tests.conftest import SHARED, shared_path

RULES = sorted((SHARED / "elastic-rules" / "aws").glob("*.toml"))
ESQL = [path for path in RULES if tomllib.loads(path.read_text())["rule"].get("type") == "esql"]
KQL_RULE = "credential_access_iam_long_term_access_key_correlated_with_elevated_detection_alerts"


def test_the_ruleset_holds_23_esql_rules() -> None:
    shared_path("elastic-rules", "aws")
    assert len(ESQL) == 23


def _refusal(query: str) -> str | None:
    """Why the engine refuses the query, or None when it compiles."""
    try:
        compile_query(query)
    except UnsupportedEsqlError as problem:
        return problem.reason
    return None


@pytest.mark.parametrize("path", ESQL, ids=[path.stem for path in ESQL])
def test_rule_compiles_or_names_what_it_lacks(path: Path) -> None:
    query = tomllib.loads(path.read_text())["rule"]["query"]
    aggregating = re.search(r"^\s*\|\s*stats\b", query, re.IGNORECASE | re.MULTILINE)
    reason = _refusal(query)
    if path.stem == KQL_RULE:
        assert reason == "the KQL() function is not supported"
    elif aggregating:
        assert reason == "aggregating rule: needs stateful evaluation"
    elif reason is not None:  # until the field registry derives it
        missing = re.match(r"field '([^']+)' is not derived", reason)
        assert missing is not None, reason
        assert missing.group(1) not in ECS_FIELDS
