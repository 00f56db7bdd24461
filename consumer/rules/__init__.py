"""Detection rules as data: Elastic-style TOML rule files whose ES|QL queries compile to closures.

Start-up: `load_rules(rules_dir)` returns every rule (built-in plus the directory) or raises
RuleLoadError; for each enabled rule, `rule.query.matches(record)` is the verdict,
`rule.query.fields_read` the ECS fields to copy into an alert, and
`CombinedPrefilter.for_queries(...)` skips raw messages no enabled rule can match.
"""

from consumer.rules.esql import CompiledQuery, EsqlError, UnsupportedEsqlError, compile_query
from consumer.rules.loader import (
    LoadedRule,
    RuleLoadError,
    RuleSummary,
    list_rules,
    load_rules,
    validate_paths,
)
from consumer.rules.prefilter import CombinedPrefilter, Prefilter

__all__ = [
    "CombinedPrefilter",
    "CompiledQuery",
    "EsqlError",
    "LoadedRule",
    "Prefilter",
    "RuleLoadError",
    "RuleSummary",
    "UnsupportedEsqlError",
    "compile_query",
    "list_rules",
    "load_rules",
    "validate_paths",
]
