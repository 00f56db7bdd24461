"""Load rule files: the built-in ones shipped in the package plus an optional rules directory.

Every problem stops start-up with a message naming the file, the field as a dotted path and
what is wrong, so a broken rule is never silently skipped.
"""

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from consumer.normalize import ECS_FIELDS, EcsField
from consumer.rules.esql import CompiledQuery, EsqlError, compile_query
from consumer.rules.model import RuleFile

BUILTIN_PREFIX = "builtin:"


class RuleLoadError(ValueError):
    """One or more rule files are invalid; the message lists every problem, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class LoadedRule:
    """A validated rule file with its compiled query."""

    definition: RuleFile
    query: CompiledQuery
    source: str
    """`builtin:<file name>` or the path of the file it came from."""
    enabled: bool

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
class RuleSummary:
    """What `list_rules` reports for each rule."""

    rule_id: str
    name: str
    severity: str
    enabled: bool
    source: str


def _dotted(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else part
    return path or "(file)"


def parse_rule(text: str, source: str, fields: Mapping[str, EcsField] = ECS_FIELDS) -> LoadedRule:
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
    try:
        query = compile_query(definition.rule.query, fields)
    except EsqlError as problem:
        raise RuleLoadError([f"{source}: rule.query: {problem}"]) from None
    return LoadedRule(definition, query, source, definition.detector.enabled)


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
) -> tuple[list[LoadedRule], list[str]]:
    """Every rule that loads, and every problem, including rule_ids used twice."""
    rules: list[LoadedRule] = []
    problems: list[str] = []
    first_source: dict[str, str] = {}
    for source, text in sources:
        try:
            rule = parse_rule(text, source, fields)
        except RuleLoadError as invalid:
            problems.extend(invalid.problems)
            continue
        earlier = first_source.setdefault(rule.rule_id, source)
        if earlier != source:
            problems.append(f"{source}: rule.rule_id: {rule.rule_id} is already used by {earlier}")
            continue
        rules.append(rule)
    return rules, problems


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


def load_rules(
    rules_dir: Path | None = None,
    enabled_overrides: Mapping[str, bool] | None = None,
    fields: Mapping[str, EcsField] = ECS_FIELDS,
) -> list[LoadedRule]:
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
    rules, load_problems = _load_all(texts, fields)
    problems += load_problems
    overrides = dict(enabled_overrides or {})
    known = {rule.rule_id for rule in rules}
    problems += [
        f"enabled override: no rule has rule_id {rule_id}"
        for rule_id in overrides
        if rule_id not in known
    ]
    if problems:
        raise RuleLoadError(problems)
    return [
        LoadedRule(
            rule.definition, rule.query, rule.source, overrides.get(rule.rule_id, rule.enabled)
        )
        for rule in rules
    ]


def list_rules(
    rules_dir: Path | None = None, enabled_overrides: Mapping[str, bool] | None = None
) -> list[RuleSummary]:
    """One summary per rule, built-in first; raises RuleLoadError like `load_rules`."""
    return [
        RuleSummary(rule.rule_id, rule.name, rule.severity, rule.enabled, rule.source)
        for rule in load_rules(rules_dir, enabled_overrides)
    ]


def validate_paths(paths: Iterable[Path], fields: Mapping[str, EcsField] = ECS_FIELDS) -> list[str]:
    """Problems in the given rule files or directories, checked together with the built-ins
    (a rule_id clashing with a built-in would stop start-up). Empty when all are valid."""
    texts, problems = _read_files(paths)
    given = {(Path(source).name, text) for source, text in texts}
    builtins = [
        (source, text)
        for source, text in _builtin_texts()
        if (source.removeprefix(BUILTIN_PREFIX), text) not in given  # the built-in file itself
    ]
    _, load_problems = _load_all([*builtins, *texts], fields)
    return problems + load_problems
