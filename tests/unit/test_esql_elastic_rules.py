"""Each of Elastic's 23 AWS ES|QL rule files compiles, or names the one thing it still lacks:
22 do (15 of them aggregating), and the one that reads Kibana's alerts is refused."""

import re
import tomllib
from pathlib import Path

import pytest

from consumer.cloudtrail.normalize import ECS_FIELDS
from consumer.rules.esql import UnsupportedEsqlError
from consumer.rules.esql.aggregate import AggregatingQuery, compile_esql
from tests.conftest import SHARED, shared_path

RULES = sorted((SHARED / "elastic-rules" / "aws").glob("*.toml"))
ESQL = [path for path in RULES if tomllib.loads(path.read_text())["rule"].get("type") == "esql"]
ALERTS_RULE = "credential_access_iam_long_term_access_key_correlated_with_elevated_detection_alerts"


def test_the_ruleset_holds_23_esql_rules() -> None:
    shared_path("elastic-rules", "aws")
    assert len(ESQL) == 23


def _refusal(query: str) -> str | None:
    """Why the engine refuses the query, or None when it compiles (to the right kind)."""
    try:
        compiled = compile_esql(query)
    except UnsupportedEsqlError as problem:
        return problem.reason
    aggregating = re.search(r"^\s*\|\s*stats\b", query, re.IGNORECASE | re.MULTILINE)
    assert isinstance(compiled, AggregatingQuery) == bool(aggregating)
    return None


@pytest.mark.parametrize("path", ESQL, ids=[path.stem for path in ESQL])
def test_rule_compiles_or_names_what_it_lacks(path: Path) -> None:
    query = tomllib.loads(path.read_text())["rule"]["query"]
    reason = _refusal(query)
    if path.stem == ALERTS_RULE:
        assert reason == "FROM .alerts-security.* reads Kibana's alerts, not CloudTrail events"
    elif reason is not None:  # until the field registry derives it
        missing = re.match(r"field '([^']+)' is not derived", reason)
        assert missing is not None, reason
        assert missing.group(1) not in ECS_FIELDS


def test_every_rule_over_cloudtrail_compiles_and_15_of_them_aggregate() -> None:
    shared_path("elastic-rules", "aws")
    compiled = {
        path.stem: compile_esql(tomllib.loads(path.read_text())["rule"]["query"])
        for path in ESQL
        if path.stem != ALERTS_RULE
    }
    assert len(compiled) == 22
    assert sum(isinstance(query, AggregatingQuery) for query in compiled.values()) == 15
