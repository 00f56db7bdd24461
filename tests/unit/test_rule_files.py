"""Rule files: the built-in rules' content, validation messages, rules directories, flags."""

from datetime import timedelta
from importlib import resources
from pathlib import Path

import pytest

from consumer.rules import RuleLoadError, list_rules, load_rules, validate_paths
from consumer.rules.loader import LoadedRule, parse_rule

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
    ("not esql", (('type = "esql"', 'type = "eql"'),), "rule.type: Input should be 'esql'"),
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
        (("| where event.provider ==", "| where event.provder =="),),
        "rule.query: line 2, column 9: field 'event.provder' is not derived",
    ),
    (
        "unsupported command",
        (("user.target.name\n", "user.target.name\n| stats n = count()\n"),),
        "rule.query: line 3, column 3: aggregating rule: needs stateful evaluation",
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


def test_rule_id_duplicating_a_builtin_is_rejected(tmp_path: Path) -> None:
    message = problems_of(tmp_path, SEED_TEXT, name="copy.toml")
    assert f"copy.toml: rule.rule_id: {SEED_ID} is already used by builtin:{SEED_FILE}" in message


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
    (tmp_path / "dup.toml").write_text(SEED_TEXT)
    problems = validate_paths([tmp_path, tmp_path / "absent.toml"])
    assert len(problems) == 3
    assert any("absent.toml: cannot read" in problem for problem in problems)
    assert any("bad.toml: rule.severity" in problem for problem in problems)
    duplicate = f"dup.toml: rule.rule_id: {SEED_ID} is already used"
    assert any(duplicate in problem for problem in problems)


def test_parse_rule_names_the_given_source() -> None:
    with pytest.raises(RuleLoadError, match="memory:1: rule: Field required"):
        parse_rule("[metadata]\n", "memory:1")
