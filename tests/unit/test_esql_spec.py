"""Elasticsearch's own ES|QL csv-spec cases, run through our engine (scripts/esql_spec.py)."""

from collections import Counter

import pytest

from scripts.esql_spec import Outcome, run_specs
from tests.conftest import shared_path

AWS_RULE_FUNCTIONS = (
    "CASE", "COALESCE", "CONCAT", "TO_STRING", "TO_DOUBLE", "TO_LOWER", "TO_UPPER",
    "STARTS_WITH", "ENDS_WITH", "LIKE", "RLIKE", "MV_COUNT", "MV_FIRST", "DATE_TRUNC",
    "DATE_DIFF", "NOW", "GROK", "DISSECT",
)  # fmt: skip


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    folder = shared_path("conformance", "esql-spec")
    return list(run_specs(sorted((folder / "specs").glob("*.csv-spec")), folder / "data"))


def test_at_least_95_percent_of_applicable_cases_pass(outcomes: list[Outcome]) -> None:
    counts = Counter(outcome.status for outcome in outcomes)
    assert counts["passed"] >= 0.95 * (counts["passed"] + counts["failed"])
    assert counts["passed"] > 1000


def test_every_case_of_the_aws_rule_functions_passes(outcomes: list[Outcome]) -> None:
    failing = [
        f"{outcome.case.spec}:{outcome.case.name}: {outcome.detail}"
        for outcome in outcomes
        if outcome.status == "failed"
        and any(name in outcome.case.query.upper() for name in AWS_RULE_FUNCTIONS)
    ]
    assert failing == []


def test_unsupported_cases_are_skipped_with_a_reason(outcomes: list[Outcome]) -> None:
    skipped = [outcome for outcome in outcomes if outcome.status == "skipped"]
    assert skipped
    assert all(outcome.detail for outcome in skipped)


def test_stats_cases_run_rather_than_being_skipped(outcomes: list[Outcome]) -> None:
    stats = [outcome for outcome in outcomes if "STATS" in outcome.case.query.upper()]
    assert sum(outcome.status == "passed" for outcome in stats) > 400
    assert not any("needs stateful evaluation" in outcome.detail for outcome in stats)
