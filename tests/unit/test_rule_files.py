"""Rule files: the built-in rules' content, validation messages, rules directories, flags,
Elastic's rule files as they are (every key, every rule type, skipped with a reason)."""

import logging
import shutil
import tomllib
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest

from consumer.alerts.document import alert_for
from consumer.cli import main
from consumer.cloudtrail.record import json_to_avro
from consumer.rules import RuleLoadError, list_rules, load_rules, validate_paths
from consumer.rules.loader import (
    COMPILERS,
    LoadedRule,
    check_paths,
    load_rule_set,
    log_rule_set,
    parse_rule,
)
from consumer.rules.model import RuleFile
from tests.conftest import shared_path
from tests.support.events import create_access_key

SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
HARDENED_ID = "32403725-2adc-4bc1-a434-02793697b9bd"
SEED_FILE = "aws_iam_user_created_access_keys_for_another_user.toml"
SEED_TEXT = resources.files("consumer.rules").joinpath("builtin", SEED_FILE).read_text()
OTHER_ID = "0b6c3f5e-9f0e-4a57-b0f4-7a2d1c1e2f3a"
THIRD_ID = "5d0f1c2b-3a4e-4f60-8a7b-9c8d7e6f5a4b"


def custom_rule(*replacements: tuple[str, str]) -> str:
    """The seed rule's text under another rule_id, with lines replaced (each must exist)."""
    text = SEED_TEXT.replace(f'rule_id = "{SEED_ID}"', f'rule_id = "{OTHER_ID}"')
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    return text


def by_id(rules: list[LoadedRule]) -> dict[str, LoadedRule]:
    return {rule.rule_id: rule for rule in rules}


def test_seed_rule_is_builtin_enabled_and_exactly_as_specified() -> None:
    seed = by_id(load_rules())[SEED_ID]
    rule = seed.definition.rule
    assert seed.source == f"builtin:{SEED_FILE}"
    assert seed.enabled
    assert rule.name == "AWS IAM User Created Access Keys For Another User"
    assert (rule.severity, rule.risk_score, rule.version) == ("medium", 47, 2)
    assert rule.author == ["Elastic"]
    assert rule.license == "Elastic License v2"
    assert (rule.type, rule.language) == ("esql", "esql")
    assert rule.interval == timedelta(minutes=5)
    assert rule.lookback == timedelta(minutes=6)
    assert rule.max_signals == 100
    assert rule.tags == [
        "Domain: Cloud",
        "Data Source: AWS",
        "Data Source: Amazon Web Services",
        "Data Source: AWS IAM",
        "Use Case: Identity and Access Audit",
        "Tactic: Privilege Escalation",
        "Tactic: Persistence",
        "Resources: Investigation Guide",
    ]
    assert rule.query.strip() == (
        "from logs-aws.cloudtrail-*\n"
        '| where event.provider == "iam.amazonaws.com" and event.action == "CreateAccessKey"'
        ' and event.outcome == "success" and user.name != user.target.name'
    )
    assert "https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreateAccessKey.html" in (
        rule.references
    )
    assert any(ref.startswith("https://attack.mitre.org/") for ref in rule.references)
    assert rule.note is not None
    assert all(part in rule.note for part in ("Triage", "False-positive", "Response"))
    assert seed.definition.metadata.integration == ["aws"]


def test_seed_rule_maps_to_t1098_001_under_persistence_and_privilege_escalation() -> None:
    threats = by_id(load_rules())[SEED_ID].definition.rule.threat
    tactics = [(t.tactic.id, t.tactic.name, t.tactic.reference) for t in threats]
    assert tactics == [
        ("TA0003", "Persistence", "https://attack.mitre.org/tactics/TA0003/"),
        ("TA0004", "Privilege Escalation", "https://attack.mitre.org/tactics/TA0004/"),
    ]
    for threat in threats:
        assert threat.framework == "MITRE ATT&CK"
        [technique] = threat.technique
        assert (technique.id, technique.name, technique.reference) == (
            "T1098",
            "Account Manipulation",
            "https://attack.mitre.org/techniques/T1098/",
        )
        [sub] = technique.subtechnique
        assert (sub.id, sub.name, sub.reference) == (
            "T1098.001",
            "Additional Cloud Credentials",
            "https://attack.mitre.org/techniques/T1098/001/",
        )


def test_hardened_rule_ships_disabled_with_its_own_id_and_guidance() -> None:
    hardened = by_id(load_rules())[HARDENED_ID]
    assert not hardened.enabled
    assert hardened.source.startswith("builtin:")
    assert hardened.definition.rule.note is not None
    assert "When to switch this rule on" in hardened.definition.rule.note


def test_compiled_seed_query_reads_the_five_rule_fields() -> None:
    seed = by_id(load_rules())[SEED_ID]
    assert seed.query.fields_read == (
        "event.provider",
        "event.action",
        "event.outcome",
        "user.name",
        "user.target.name",
    )
    assert seed.query.index_patterns == ("logs-aws.cloudtrail-*",)


def problems_of(tmp_path: Path, text: str, name: str = "custom.toml") -> str:
    (tmp_path / name).write_text(text)
    with pytest.raises(RuleLoadError) as raised:
        load_rules(tmp_path)
    return str(raised.value)


INVALID: list[tuple[str, tuple[tuple[str, str], ...], str]] = [
    ("missing field", (('severity = "medium"\n', ""),), "rule.severity: Field required"),
    (
        "wrong type",
        (("risk_score = 47", 'risk_score = "47"'),),
        "rule.risk_score: Input should be a valid integer",
    ),
    (
        "risk over 100",
        (("risk_score = 47", "risk_score = 101"),),
        "rule.risk_score: Input should be less than or equal to 100",
    ),
    (
        "bad severity",
        (('severity = "medium"', 'severity = "urgent"'),),
        "rule.severity: Input should be 'low', 'medium', 'high' or 'critical'",
    ),
    (
        "bad interval",
        (('interval = "5m"', 'interval = "5 minutes"'),),
        "rule.interval: Value error",
    ),
    ("bad lookback", (('from = "now-6m"', 'from = "6m"'),), "rule.from: Value error"),
    ("extra field", (("version = 2", 'version = 2\ncolour = "red"'),), "rule.colour: Extra inputs"),
    ("bad rule_id", ((f'rule_id = "{OTHER_ID}"', 'rule_id = "not-a-uuid"'),), "rule.rule_id"),
    ("unknown type", (('type = "esql"', 'type = "sql"'),), "rule.type: Input should be 'query'"),
    (
        "bad tactic url",
        (('reference = "https://attack.mitre.org/tactics/TA0003/"', 'reference = "TA0003"'),),
        "rule.threat[0].tactic.reference: Value error",
    ),
    (
        "bad enabled",
        (("enabled = true", 'enabled = "yes"'),),
        "detector.enabled: Input should be a valid boolean",
    ),
    (
        "bad date",
        (('creation_date = "2024/06/13"', 'creation_date = "13 June"'),),
        "metadata.creation_date",
    ),
    (
        "bad query",
        (("| where event.provider ==", "| where event.provider = ="),),
        "rule.query: line 2, column 24: ",
    ),
    (
        "unknown detector key",
        (("enabled = true", "enabled = true\nseverity = 'low'"),),
        "detector.severity: Extra inputs",
    ),
    ("bad toml", (("max_signals = 100", "max_signals = = 100"),), "TOML syntax error: "),
]


@pytest.mark.parametrize(
    ("replacements", "expected"),
    [pytest.param(r, e, id=name) for name, r, e in INVALID],
)
def test_invalid_rule_file_stops_loading_naming_file_and_field(
    tmp_path: Path, replacements: tuple[tuple[str, str], ...], expected: str
) -> None:
    message = problems_of(tmp_path, custom_rule(*replacements))
    assert f"{tmp_path / 'custom.toml'}: " in message
    assert expected in message


def test_toml_syntax_error_gives_its_line(tmp_path: Path) -> None:
    message = problems_of(tmp_path, "[rule]\nname = \n")
    assert "custom.toml: TOML syntax error: " in message
    assert "line 2" in message


def test_missing_rule_table_is_named(tmp_path: Path) -> None:
    message = problems_of(tmp_path, custom_rule().split("[detector]")[0])
    assert "custom.toml: rule: Field required" in message


def test_every_invalid_file_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(custom_rule(('severity = "medium"', 'severity = "x"')))
    (tmp_path / "b.toml").write_text("not toml at all = =")
    with pytest.raises(RuleLoadError) as raised:
        load_rules(tmp_path)
    assert len(raised.value.problems) == 2
    assert str(tmp_path / "a.toml") in raised.value.problems[0]
    assert str(tmp_path / "b.toml") in raised.value.problems[1]


def test_rule_id_used_twice_in_the_rules_directory_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(custom_rule())
    message = problems_of(tmp_path, custom_rule(), name="b.toml")
    assert f"b.toml: rule.rule_id: {OTHER_ID} is already used by {tmp_path / 'a.toml'}" in message


def test_rules_directory_is_searched_recursively_after_the_builtins(tmp_path: Path) -> None:
    nested = tmp_path / "aws" / "iam"
    nested.mkdir(parents=True)
    (nested / "custom.toml").write_text(custom_rule(('name = "AWS IAM User', 'name = "Custom')))
    (tmp_path / "README.md").write_text("not a rule")
    rules = load_rules(tmp_path)
    assert [rule.rule_id for rule in rules] == [SEED_ID, HARDENED_ID, OTHER_ID]
    assert rules[-1].source == str(nested / "custom.toml")
    assert rules[-1].name.startswith("Custom")


def test_missing_rules_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuleLoadError, match="rules directory does not exist"):
        load_rules(tmp_path / "absent")


def test_detector_table_switches_a_rule_off_and_defaults_to_on(tmp_path: Path) -> None:
    (tmp_path / "off.toml").write_text(custom_rule(("enabled = true", "enabled = false")))
    without_table = custom_rule(("[detector]\nenabled = true\n", "")).replace(OTHER_ID, THIRD_ID)
    (tmp_path / "default.toml").write_text(without_table)
    rules = by_id(load_rules(tmp_path))
    assert not rules[OTHER_ID].enabled
    assert rules[THIRD_ID].enabled


def test_overrides_switch_builtin_rules_on_and_off() -> None:
    rules = by_id(load_rules(enabled_overrides={HARDENED_ID: True, SEED_ID: False}))
    assert rules[HARDENED_ID].enabled
    assert not rules[SEED_ID].enabled


def test_override_for_an_unknown_rule_id_is_an_error() -> None:
    with pytest.raises(RuleLoadError, match=f"no rule has rule_id {OTHER_ID}"):
        load_rules(enabled_overrides={OTHER_ID: True})


def test_list_rules_summarises_id_name_severity_enabled_and_source() -> None:
    summaries = list_rules()
    assert [(s.rule_id, s.severity, s.enabled) for s in summaries] == [
        (SEED_ID, "medium", True),
        (HARDENED_ID, "medium", False),
    ]
    assert summaries[0].name == "AWS IAM User Created Access Keys For Another User"
    assert summaries[0].source == f"builtin:{SEED_FILE}"


def test_validate_paths_is_empty_for_valid_files(tmp_path: Path) -> None:
    (tmp_path / "custom.toml").write_text(custom_rule())
    assert validate_paths([tmp_path]) == []
    assert validate_paths([tmp_path / "custom.toml"]) == []


def test_validate_paths_reports_each_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(custom_rule(('severity = "medium"', 'severity = "x"')))
    (tmp_path / "a.toml").write_text(custom_rule())
    (tmp_path / "dup.toml").write_text(custom_rule())
    problems = validate_paths([tmp_path, tmp_path / "absent.toml"])
    assert len(problems) == 3
    assert any("absent.toml: cannot read" in problem for problem in problems)
    assert any("bad.toml: rule.severity" in problem for problem in problems)
    duplicate = f"dup.toml: rule.rule_id: {OTHER_ID} is already used by {tmp_path / 'a.toml'}"
    assert any(duplicate in problem for problem in problems)


def test_parse_rule_names_the_given_source() -> None:
    with pytest.raises(RuleLoadError, match="memory:1: rule: Field required"):
        parse_rule("[metadata]\n", "memory:1")


# ---- Elastic's rule files as they are --------------------------------------------------------

ELASTIC_KEYS = '''
investigation_fields = { field_names = ["user.name", "source.ip"] }
setup = "Needs the AWS integration."
related_integrations = [{ package = "aws", version = "^2.0.0", integration = "cloudtrail" }]
required_fields = [{ name = "event.action", type = "keyword", ecs = true }]
index = ["logs-aws.cloudtrail-*"]
building_block_type = "default"
alert_suppression = { group_by = ["user.name"], missing_fields_strategy = "suppress" }
exceptions_list = [{ id = "x", list_id = "y", namespace_type = "single", type = "detection" }]
timestamp_override = "event.ingested"
filters = [{ meta = { negate = false }, query = { match_phrase = { "event.outcome" = "x" } } }]
threshold = { field = ["user.name"], value = 5 }
new_terms = { field = "new_terms_fields", value = ["user.name"] }
revision = 3
to = "now"
enabled = false
'''


def test_keys_of_elastic_schema_we_do_not_use_are_accepted_and_ignored(tmp_path: Path) -> None:
    text = custom_rule(
        ("version = 2\n", "version = 2\n" + ELASTIC_KEYS),
        ('integration = ["aws"]', 'integration = "aws"\nbypass_bbr_timing = true\n'
                                  "query_schema_validation = false\n"
                                  'deprecation_date = "2030/01/01"'),
    ) + '\n[transform]\ninvestigate = [{ label = "x", providers = [] }]\n'
    (tmp_path / "custom.toml").write_text(text)
    rule = by_id(load_rules(tmp_path))[OTHER_ID]
    assert rule.enabled, "[rule] enabled is Elastic's; our [detector] table decides"
    assert rule.definition.metadata.integration == ["aws"]
    assert rule.definition.rule.timestamp_override == "event.ingested"
    assert rule.definition.rule.setup == "Needs the AWS integration."
    suppression = rule.definition.rule.alert_suppression
    assert suppression is not None
    assert suppression.group_by == ["user.name"]


def test_absent_interval_lookback_max_signals_and_version_take_elastic_defaults(
    tmp_path: Path,
) -> None:
    text = custom_rule(('interval = "5m"\n', ""), ('from = "now-6m"\n', ""),
                       ("max_signals = 100\n", ""), ("version = 2\n", ""))
    (tmp_path / "custom.toml").write_text(text)
    rule = by_id(load_rules(tmp_path))[OTHER_ID].definition.rule
    assert (rule.interval, rule.lookback) == (timedelta(minutes=5), timedelta(minutes=6))
    assert (rule.max_signals, rule.version) == (100, 1)


def test_detector_table_sets_the_version(tmp_path: Path) -> None:
    text = custom_rule(("version = 2\n", ""), ("enabled = true", "enabled = true\nversion = 7"))
    (tmp_path / "custom.toml").write_text(text)
    assert by_id(load_rules(tmp_path))[OTHER_ID].definition.rule.version == 7


def test_esql_rule_without_a_query_is_an_error(tmp_path: Path) -> None:
    text = custom_rule()
    start = text.index("query = '''")
    end = text.index("'''", start + 11) + 3
    message = problems_of(tmp_path, text[:start] + text[end:])
    assert f"{tmp_path / 'custom.toml'}: rule.query: Field required" in message


def rule_of_type(rule_type: str, language: str | None) -> str:
    language_line = f'language = "{language}"\n' if language else ""
    return custom_rule(('type = "esql"\nlanguage = "esql"\n', f'type = "{rule_type}"\n'
                        + language_line))


@pytest.mark.parametrize(
    ("rule_type", "language", "reason"),
    [
        ("query", "lucene", "rule type query (language lucene) is not supported yet"),
        ("eql", "eql", "rule type eql (language eql) is not supported yet"),
        ("threshold", "kuery", "rule type threshold (language kuery) is not supported yet"),
        ("new_terms", "kuery", "rule type new_terms (language kuery) is not supported yet"),
        ("threat_match", "kuery", "rule type threat_match (language kuery) is not supported yet"),
        ("machine_learning", None, "rule type machine_learning is not supported yet"),
    ],
)
def test_rule_type_without_a_compiler_is_skipped_with_its_reason(
    tmp_path: Path, rule_type: str, language: str | None, reason: str
) -> None:
    (tmp_path / "other.toml").write_text(rule_of_type(rule_type, language))
    rule_set = load_rule_set(tmp_path)
    assert OTHER_ID not in by_id(rule_set.rules)
    [skipped] = rule_set.skipped
    assert (skipped.rule_id, skipped.kind, skipped.reason) == (OTHER_ID, "rule_type", reason)
    assert skipped.source == str(tmp_path / "other.toml")
    assert rule_set.skipped_by_kind() == {"rule_type": 1, "query": 0}


def test_valid_esql_the_engine_cannot_run_is_skipped_and_a_wrong_query_is_an_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "enrich.toml").write_text(
        custom_rule(("user.target.name\n", "user.target.name\n| enrich hosts\n"))
    )
    [skipped] = load_rule_set(tmp_path).skipped
    assert skipped.kind == "query"
    assert "line 3, column 3: unsupported command ENRICH" in skipped.reason
    (tmp_path / "enrich.toml").write_text(
        custom_rule(("user.target.name\n", "user.target.name\n| frobnicate\n"))
    )
    assert "rule.query: line 3, column 3: unknown command FROBNICATE" in problems_of(
        tmp_path, custom_rule(("user.target.name\n", "user.target.name\n| frobnicate\n")),
        name="enrich.toml",
    )


def test_a_file_with_a_builtin_rule_id_replaces_it_and_the_log_names_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    replacement = SEED_TEXT.replace('severity = "medium"', 'severity = "high"')
    (tmp_path / "seed.toml").write_text(replacement)
    rule_set = load_rule_set(tmp_path)
    seed = by_id(rule_set.rules)[SEED_ID]
    assert (seed.source, seed.severity) == (str(tmp_path / "seed.toml"), "high")
    assert [rule.rule_id for rule in rule_set.rules] == [SEED_ID, HARDENED_ID]
    with caplog.at_level(logging.INFO, logger="consumer.rules.loader"):
        log_rule_set(rule_set)
    assert (f"rule {SEED_ID}: {tmp_path / 'seed.toml'} replaces builtin:{SEED_FILE}"
            in caplog.messages)


def test_skipped_rules_are_logged_one_line_each_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "eql.toml").write_text(rule_of_type("eql", "eql"))
    (tmp_path / "ml.toml").write_text(rule_of_type("machine_learning", None).replace(
        OTHER_ID, THIRD_ID))
    with caplog.at_level(logging.INFO, logger="consumer.rules.loader"):
        log_rule_set(load_rule_set(tmp_path))
    assert caplog.messages == [
        f"rule {OTHER_ID} (AWS IAM User Created Access Keys For Another User) skipped: "
        f"rule type eql (language eql) is not supported yet [{tmp_path / 'eql.toml'}]",
        f"rule {THIRD_ID} (AWS IAM User Created Access Keys For Another User) skipped: "
        f"rule type machine_learning is not supported yet [{tmp_path / 'ml.toml'}]",
        "rules: 1 enabled, 1 switched off, 2 skipped as not supported yet",
    ]
    assert [record.levelno for record in caplog.records] == [logging.WARNING] * 3


def test_list_rules_gives_skipped_rules_their_reason(tmp_path: Path) -> None:
    (tmp_path / "eql.toml").write_text(rule_of_type("eql", "eql"))
    summaries = list_rules(tmp_path)
    assert [(s.rule_id, s.reason) for s in summaries] == [
        (SEED_ID, None), (HARDENED_ID, None),
        (OTHER_ID, "rule type eql (language eql) is not supported yet"),
    ]
    assert not summaries[2].enabled


def test_validate_reports_unsupported_rules_unless_told_to_skip_them(tmp_path: Path) -> None:
    (tmp_path / "eql.toml").write_text(rule_of_type("eql", "eql"))
    expected = (f"{tmp_path / 'eql.toml'}: skipped: "
                "rule type eql (language eql) is not supported yet")
    assert validate_paths([tmp_path]) == [expected]
    assert validate_paths([tmp_path], skip_unsupported=True) == []
    assert check_paths([tmp_path]).skipped == [expected]


ELASTIC_AWS = ("elastic-rules", "aws")
SEED_FROM_ELASTIC = "persistence_iam_user_created_access_keys_for_another_user.toml"
def elastic_files() -> list[Path]:
    return sorted(shared_path(*ELASTIC_AWS).glob("*.toml"))


def test_every_elastic_aws_rule_file_is_a_valid_rule_file() -> None:
    files = elastic_files()
    assert len(files) == 194
    for file in files:
        RuleFile.model_validate(tomllib.loads(file.read_text(encoding="utf-8")))


def test_a_folder_of_elastic_rules_runs_what_it_supports_and_names_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    rule_set = load_rule_set(shared_path(*ELASTIC_AWS))

    assert len(rule_set.entries) == 2 + 194 - 1, "Elastic's seed rule replaces the builtin"
    for rule in rule_set.skipped:
        kind = (rule.definition.rule.type, rule.definition.rule.language)
        assert rule.kind == ("query" if kind in COMPILERS else "rule_type"), rule.source
    assert sum(rule.kind == "rule_type" for rule in rule_set.skipped) == 171 - 85
    with caplog.at_level(logging.INFO, logger="consumer.rules.loader"):
        log_rule_set(rule_set)
    skipped_lines = [message for message in caplog.messages if " skipped: " in message]
    assert len(skipped_lines) == len(rule_set.skipped)
    assert caplog.messages[-1].endswith(f"{len(rule_set.skipped)} skipped as not supported yet")
    assert main(["rules", "list", "--rules-dir", str(shared_path(*ELASTIC_AWS))]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(rule_set.entries)
    assert sum(line.startswith("skip ") for line in listed) == len(rule_set.skipped)


def test_elastic_seed_rule_file_replaces_the_builtin_and_alerts_with_its_own_severity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copy(shared_path(*ELASTIC_AWS, SEED_FROM_ELASTIC), tmp_path)
    rule_set = load_rule_set(tmp_path)
    with caplog.at_level(logging.INFO, logger="consumer.rules.loader"):
        log_rule_set(rule_set)
    source = str(tmp_path / SEED_FROM_ELASTIC)
    assert f"rule {SEED_ID}: {source} replaces builtin:{SEED_FILE}" in caplog.messages
    assert rule_set.skipped == []
    seed = by_id(rule_set.rules)[SEED_ID]
    assert seed.source == source
    record = json_to_avro(create_access_key(event_id="e-1", caller="alice", target="bob"))
    assert seed.query.matches(record)
    own = json_to_avro(create_access_key(event_id="e-2", caller="alice", target="alice"))
    assert not seed.query.matches(own)
    alert = alert_for(seed, record, detected_at=datetime.now(UTC), original=None)
    assert alert.document["kibana"]["alert"]["severity"] == "high"
    assert alert.document["kibana"]["alert"]["risk_score"] == 73
