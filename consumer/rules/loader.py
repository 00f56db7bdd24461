"""Load rule files: the built-in ones shipped in the package plus an optional rules directory.

A broken file (bad TOML, a field that fails the schema, a wrong query) stops start-up with a
message naming the file, the field as a dotted path and what is wrong. A valid rule we cannot
run yet (a rule type or an ES|QL feature not supported) is skipped, never silently: the rule set
names each one with its reason, for the log, `rules list` and the metrics. A file in the rules
directory with a built-in's rule_id replaces that built-in (how a user updates a rule from
Elastic).
"""

import logging
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from consumer.cloudtrail.normalize import ECS_FIELDS, EcsField
from consumer.rules.esql import CompiledQuery, EsqlError, UnsupportedEsqlError
from consumer.rules.esql.aggregate import AggregatingQuery, compile_esql
from consumer.rules.kql import compile_kql, with_index
from consumer.rules.model import RuleDefinition, RuleFile

BUILTIN_PREFIX = "builtin:"

log = logging.getLogger(__name__)

QueryCompiler = Callable[[str, Mapping[str, EcsField]], CompiledQuery | AggregatingQuery]

COMPILERS: dict[tuple[str, str | None], QueryCompiler] = {
    ("esql", "esql"): compile_esql,
    ("query", "kuery"): compile_kql,
}
"""How each (rule type, language) we can run compiles its query. A compiler raises
UnsupportedEsqlError for a valid query it cannot run yet (the rule is skipped) and EsqlError
for a wrong one (a load error)."""

SkipKind = Literal["rule_type", "query"]
SKIP_KINDS: tuple[SkipKind, ...] = ("rule_type", "query")
"""Why a rule is skipped, as a metric label: its type and language have no compiler, or its
query uses something the compiler does not support yet."""


class RuleLoadError(ValueError):
    """One or more rule files are invalid; the message lists every problem, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _RuleFacts:
    """What every loaded rule file tells, whether it runs or not."""

    __slots__ = ()
    definition: RuleFile

    @property
    def rule_id(self) -> str:
        return self.definition.rule.rule_id

    @property
    def name(self) -> str:
        return self.definition.rule.name

    @property
    def severity(self) -> str:
        return self.definition.rule.severity


@dataclass(frozen=True, slots=True)
class LoadedRule(_RuleFacts):
    """A validated rule file with its compiled query."""

    definition: RuleFile
    query: CompiledQuery
    """The verdict on one event; for an aggregating rule, its commands before STATS."""
    source: str
    """`builtin:<file name>` or the path of the file it came from."""
    enabled: bool
    aggregation: AggregatingQuery | None = None
    """Set for a rule with STATS: it alerts on groups of events over its schedule's window,
    never on one event, so the stateless detector leaves it to the stateful stage."""


@dataclass(frozen=True, slots=True)
class SkippedRule(_RuleFacts):
    """A valid rule file we cannot run yet, and why."""

    definition: RuleFile
    source: str
    kind: SkipKind
    reason: str


@dataclass(frozen=True, slots=True)
class Replacement:
    """A rules-directory file that took the place of a built-in rule with its rule_id."""

    rule_id: str
    builtin: str
    source: str


@dataclass(frozen=True, slots=True)
class RuleSet:
    """What loading found, in load order (built-ins first): rules that run or are switched
    off, and rules skipped with their reason."""

    entries: list[LoadedRule | SkippedRule]
    replaced: list[Replacement] = field(default_factory=list)

    @property
    def rules(self) -> list[LoadedRule]:
        return [rule for rule in self.entries if isinstance(rule, LoadedRule)]

    @property
    def skipped(self) -> list[SkippedRule]:
        return [rule for rule in self.entries if isinstance(rule, SkippedRule)]

    def skipped_by_kind(self) -> dict[SkipKind, int]:
        """Skipped rules counted by kind, every kind present (a metric starts at zero)."""
        counts = Counter(rule.kind for rule in self.skipped)
        return {kind: counts[kind] for kind in SKIP_KINDS}


@dataclass(frozen=True, slots=True)
class RuleSummary:
    """What `list_rules` reports for each rule; `reason` is set when the rule is skipped."""

    rule_id: str
    name: str
    severity: str
    enabled: bool
    source: str
    reason: str | None = None


def _dotted(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else part
    return path or "(file)"


def _compile(
    rule: RuleDefinition, source: str, fields: Mapping[str, EcsField]
) -> CompiledQuery | AggregatingQuery | tuple[SkipKind, str]:
    """The compiled query, or why the rule is skipped; raises RuleLoadError for a wrong one."""
    compiler = COMPILERS.get((rule.type, rule.language))
    if compiler is None:
        language = f" (language {rule.language})" if rule.language else ""
        return "rule_type", f"rule type {rule.type}{language} is not supported yet"
    if rule.query is None:
        raise RuleLoadError([f"{source}: rule.query: Field required"])
    try:
        compiled = compiler(rule.query, fields)
        if rule.index and isinstance(compiled, CompiledQuery):
            return with_index(compiled, rule.index)
        return compiled
    except UnsupportedEsqlError as unsupported:
        return "query", str(unsupported)
    except EsqlError as problem:
        raise RuleLoadError([f"{source}: rule.query: {problem}"]) from None


def parse_rule(
    text: str, source: str, fields: Mapping[str, EcsField] = ECS_FIELDS
) -> LoadedRule | SkippedRule:
    """Validate one rule file's text; raises RuleLoadError naming `source` and the fields."""
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as problem:
        raise RuleLoadError([f"{source}: TOML syntax error: {problem}"]) from None
    try:
        definition = RuleFile.model_validate(document)
    except ValidationError as invalid:
        raise RuleLoadError(
            [f"{source}: {_dotted(error['loc'])}: {error['msg']}" for error in invalid.errors()]
        ) from None
    override = definition.rule.timestamp_override
    if override is not None and override not in fields:
        raise RuleLoadError([f"{source}: rule.timestamp_override: {override} is not a field "
                             "of the events (the schedule reads event times from it)"])
    compiled = _compile(definition.rule, source, fields)
    if isinstance(compiled, tuple):
        return SkippedRule(definition, source, *compiled)
    enabled = definition.detector.enabled
    if isinstance(compiled, AggregatingQuery):
        return LoadedRule(definition, compiled.pre_stats, source, enabled, compiled)
    return LoadedRule(definition, compiled, source, enabled)


def _builtin_texts() -> list[tuple[str, str]]:
    folder = resources.files("consumer.rules").joinpath("builtin")
    entries = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".toml")),
        key=lambda entry: entry.name,
    )
    return [(BUILTIN_PREFIX + entry.name, entry.read_text(encoding="utf-8")) for entry in entries]


def _rule_paths(path: Path) -> list[Path]:
    return sorted(path.rglob("*.toml")) if path.is_dir() else [path]


def _load_all(
    sources: Iterable[tuple[str, str]], fields: Mapping[str, EcsField]
) -> tuple[list[LoadedRule | SkippedRule], list[Replacement], list[str]]:
    """Every rule that parses, in order, and every problem. A rule_id used twice is a problem,
    except that a file may take a built-in's place (in the built-in's position)."""
    rules: dict[str, LoadedRule | SkippedRule] = {}
    replaced: list[Replacement] = []
    problems: list[str] = []
    for source, text in sources:
        try:
            rule = parse_rule(text, source, fields)
        except RuleLoadError as invalid:
            problems.extend(invalid.problems)
            continue
        earlier = rules.get(rule.rule_id)
        if earlier is not None:
            if not earlier.source.startswith(BUILTIN_PREFIX) or source.startswith(BUILTIN_PREFIX):
                problems.append(
                    f"{source}: rule.rule_id: {rule.rule_id} is already used by {earlier.source}"
                )
                continue
            replaced.append(Replacement(rule.rule_id, earlier.source, source))
        rules[rule.rule_id] = rule
    return list(rules.values()), replaced, problems


def _read_files(paths: Iterable[Path]) -> tuple[list[tuple[str, str]], list[str]]:
    texts: list[tuple[str, str]] = []
    problems: list[str] = []
    for path in paths:
        for file in _rule_paths(path):
            try:
                texts.append((str(file), file.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as problem:
                problems.append(f"{file}: cannot read: {problem}")
    return texts, problems


def load_rule_set(
    rules_dir: Path | None = None,
    enabled_overrides: Mapping[str, bool] | None = None,
    fields: Mapping[str, EcsField] = ECS_FIELDS,
) -> RuleSet:
    """The built-in rules, then every `*.toml` under `rules_dir`; raises RuleLoadError.

    `enabled_overrides` maps rule_id to enabled, overriding the files' `[detector] enabled`
    (the way to switch a built-in rule on or off without editing the package).
    """
    texts = _builtin_texts()
    problems: list[str] = []
    if rules_dir is not None:
        if not rules_dir.is_dir():
            raise RuleLoadError([f"{rules_dir}: rules directory does not exist"])
        files, problems = _read_files([rules_dir])
        texts += files
    parsed, replaced, load_problems = _load_all(texts, fields)
    problems += load_problems
    overrides = dict(enabled_overrides or {})
    known = {rule.rule_id for rule in parsed}
    problems += [
        f"enabled override: no rule has rule_id {rule_id}"
        for rule_id in overrides
        if rule_id not in known
    ]
    if problems:
        raise RuleLoadError(problems)
    return RuleSet(
        [
            LoadedRule(rule.definition, rule.query, rule.source,
                       overrides.get(rule.rule_id, rule.enabled), rule.aggregation)
            if isinstance(rule, LoadedRule) else rule
            for rule in parsed
        ],
        replaced,
    )


def load_rules(
    rules_dir: Path | None = None,
    enabled_overrides: Mapping[str, bool] | None = None,
    fields: Mapping[str, EcsField] = ECS_FIELDS,
) -> list[LoadedRule]:
    """The rules of `load_rule_set` that can run (enabled or not); raises RuleLoadError."""
    return load_rule_set(rules_dir, enabled_overrides, fields).rules


def log_rule_set(rule_set: RuleSet, logger: logging.Logger = log) -> None:
    """At start-up: each replaced built-in and each skipped rule on a line, then a count."""
    for replacement in rule_set.replaced:
        logger.info(
            "rule %s: %s replaces %s",
            replacement.rule_id, replacement.source, replacement.builtin,
        )
    for rule in rule_set.skipped:
        logger.warning(
            "rule %s (%s) skipped: %s [%s]", rule.rule_id, rule.name, rule.reason, rule.source
        )
    enabled = sum(rule.enabled for rule in rule_set.rules)
    summary = (
        "rules: %d enabled, %d switched off, %d skipped as not supported yet",
        enabled, len(rule_set.rules) - enabled, len(rule_set.skipped),
    )
    logger.log(logging.WARNING if rule_set.skipped else logging.INFO, *summary)


def list_rules(
    rules_dir: Path | None = None, enabled_overrides: Mapping[str, bool] | None = None
) -> list[RuleSummary]:
    """One summary per rule, built-in first, skipped ones with their reason; raises
    RuleLoadError like `load_rules`."""
    return [
        RuleSummary(rule.rule_id, rule.name, rule.severity, rule.enabled, rule.source)
        if isinstance(rule, LoadedRule)
        else RuleSummary(rule.rule_id, rule.name, rule.severity, False, rule.source, rule.reason)
        for rule in load_rule_set(rules_dir, enabled_overrides).entries
    ]


@dataclass(frozen=True, slots=True)
class Validation:
    """What `check_paths` found: problems that stop start-up, and rules that would be
    skipped as `file: skipped: reason` lines."""

    problems: list[str]
    skipped: list[str]


def check_paths(
    paths: Iterable[Path], fields: Mapping[str, EcsField] = ECS_FIELDS
) -> Validation:
    """Check the given rule files or directories as one rules directory would be loaded (a
    rule_id used twice among them is a problem; one of a built-in's replaces it)."""
    texts, problems = _read_files(paths)
    parsed, _, load_problems = _load_all(texts, fields)
    skipped = [
        f"{rule.source}: skipped: {rule.reason}"
        for rule in parsed
        if isinstance(rule, SkippedRule)
    ]
    return Validation(problems + load_problems, skipped)


def validate_paths(
    paths: Iterable[Path],
    fields: Mapping[str, EcsField] = ECS_FIELDS,
    skip_unsupported: bool = False,
) -> list[str]:
    """Problems in the given rule files or directories; empty when all are valid. A rule we
    cannot run yet is a problem too unless `skip_unsupported`."""
    validation = check_paths(paths, fields)
    return validation.problems + ([] if skip_unsupported else validation.skipped)
