"""The ES|QL subset: three-valued semantics per operator, functions, syntax, load-time errors."""

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from consumer.cloudtrail.normalize import EcsField, EcsType
from consumer.cloudtrail.types import CloudTrailRecord, EcsValue
from consumer.rules import esql
from consumer.rules.esql import EsqlError, compile_query, syntax


def _reads(key: str) -> Callable[[CloudTrailRecord], EcsValue]:
    def extract(record: CloudTrailRecord) -> EcsValue:
        value: EcsValue = record.get(key)
        return value

    return extract


_TYPES: Mapping[str, EcsType] = {
    "kw": "keyword",
    "kw2": "keyword",
    "num": "long",
    "flag": "boolean",
    "flag2": "boolean",
    "ip": "ip",
    "ts": "date",
    "user.name": "keyword",
    "aws.a": "keyword",
    "aws.b": "keyword",
}
FIELDS: Mapping[str, EcsField] = {
    name: EcsField(name, kind, _reads(name)) for name, kind in _TYPES.items()
}


def verdict(condition: str, record: CloudTrailRecord) -> bool | None:
    """The condition's three-valued result, read through WHERE (true) and WHERE NOT (false)."""
    if compile_query(f"FROM x | WHERE {condition}", FIELDS).matches(record):
        return True
    if compile_query(f"FROM x | WHERE NOT ({condition})", FIELDS).matches(record):
        return False
    return None


MV = ["a", "b"]

COMPARISONS: list[tuple[str, dict[str, Any], bool | None]] = [
    ('kw == "a"', {"kw": "a"}, True),
    ('kw == "a"', {"kw": "b"}, False),
    ('kw == "a"', {}, None),
    ('kw == "a"', {"kw": MV}, None),
    ('kw == "a"', {"kw": ["a"]}, True),
    ('kw == "a"', {"kw": []}, None),
    ('kw == "a"', {"kw": "A"}, False),
    ('"a" == kw', {"kw": "a"}, True),
    ('kw != "a"', {"kw": "b"}, True),
    ('kw != "a"', {"kw": "a"}, False),
    ('kw != "a"', {}, None),
    ('kw != "a"', {"kw": MV}, None),
    ('kw != "a"', {"kw": ["b"]}, True),
    ("kw == kw2", {"kw": "a", "kw2": "a"}, True),
    ("kw == kw2", {"kw": "a", "kw2": "b"}, False),
    ("kw != kw2", {"kw": "a", "kw2": "b"}, True),
    ("kw != kw2", {"kw": "a"}, None),
    ("kw != kw2", {"kw2": "a"}, None),
    ("kw == kw2", {}, None),
    ("kw == kw2", {"kw": MV, "kw2": "a"}, None),
    ("kw != kw2", {"kw": "a", "kw2": MV}, None),
    ("kw == null", {"kw": "a"}, None),
    ("kw != null", {"kw": "a"}, None),
    ("null == null", {}, None),
    ('kw < "b"', {"kw": "a"}, True),
    ('kw < "b"', {"kw": "b"}, False),
    ('kw >= "b"', {"kw": "c"}, True),
    ('kw > "B"', {"kw": "a"}, True),
    ("num < 5", {"num": 3}, True),
    ("num < 5", {"num": 5}, False),
    ("num <= 5", {"num": 5}, True),
    ("num > 5", {"num": 5}, False),
    ("num >= 5", {"num": 5}, True),
    ("num < 5", {}, None),
    ("num < 5", {"num": [1, 2]}, None),
    ("5 > num", {"num": 3}, True),
    ("num == 5.0", {"num": 5}, True),
    ("num > -1", {"num": 0}, True),
    ("num < 2.5", {"num": 2}, True),
    ("flag == true", {"flag": True}, True),
    ("flag == true", {"flag": False}, False),
    ("flag != false", {}, None),
    ('ip == "10.0.0.1"', {"ip": "10.0.0.1"}, True),
    ('ip == "10.0.0.1"', {"ip": "::ffff:10.0.0.1"}, True),
    ('ip > "9.255.255.255"', {"ip": "10.0.0.1"}, True),
    ('ip == "10.0.0.1"', {"ip": "not-an-ip"}, None),
    ('ip != "10.0.0.1"', {"ip": "2001:db8::1"}, True),
    ('ts > "2024-01-01T00:00:00Z"', {"ts": "2024-06-01T00:00:00.000Z"}, True),
    ('ts < "2024-01-01T00:00:00Z"', {"ts": "2024-06-01T00:00:00.000Z"}, False),
    ("ts == ts", {"ts": "2024-06-01T00:00:00Z"}, True),
]

NULL_TESTS: list[tuple[str, dict[str, Any], bool | None]] = [
    ("kw IS NULL", {}, True),
    ("kw IS NULL", {"kw": "a"}, False),
    ("kw IS NULL", {"kw": MV}, False),
    ("kw IS NULL", {"kw": []}, True),
    ("kw IS NOT NULL", {}, False),
    ("kw IS NOT NULL", {"kw": MV}, True),
    ("null IS NULL", {}, True),
    ("ip IS NULL", {"ip": "10.0.0.1"}, False),
]

IN_TESTS: list[tuple[str, dict[str, Any], bool | None]] = [
    ('kw IN ("a", "b")', {"kw": "a"}, True),
    ('kw IN ("a", "b")', {"kw": "c"}, False),
    ('kw IN ("a", "b")', {}, None),
    ('kw IN ("a", "b")', {"kw": MV}, None),
    ('kw IN ("a", null)', {"kw": "a"}, True),
    ('kw IN ("a", null)', {"kw": "c"}, None),
    ("kw IN (null)", {"kw": "c"}, None),
    ('kw NOT IN ("a", "b")', {"kw": "c"}, True),
    ('kw NOT IN ("a", "b")', {"kw": "a"}, False),
    ('kw NOT IN ("a", "b")', {}, None),
    ('kw NOT IN ("a", null)', {"kw": "c"}, None),
    ('kw NOT IN ("a", null)', {"kw": "a"}, False),
    ('kw IN (kw2, "z")', {"kw": "a", "kw2": "a"}, True),
    ('kw IN (kw2, "z")', {"kw": "a", "kw2": "b"}, False),
    ('kw IN (kw2, "z")', {"kw": "c"}, None),
    ('kw IN (kw2, "z")', {"kw": "z"}, True),
    ('kw IN (kw2, "z")', {"kw": "a", "kw2": MV}, False),
    ("kw IN (kw2)", {"kw": "a", "kw2": MV}, None),
    ("num IN (1, 2, 3)", {"num": 2}, True),
    ('ip IN ("10.0.0.1", "10.0.0.2")', {"ip": "10.0.0.2"}, True),
]

MATCH_TESTS: list[tuple[str, dict[str, Any], bool | None]] = [
    ('kw LIKE "Create*"', {"kw": "CreateAccessKey"}, True),
    ('kw LIKE "Create*"', {"kw": "createAccessKey"}, False),
    ('kw LIKE "Create*"', {"kw": "xCreate"}, False),
    ('kw LIKE "Create*"', {}, None),
    ('kw LIKE "Create*"', {"kw": ["CreateA", "CreateB"]}, None),
    ('kw LIKE "a?c"', {"kw": "abc"}, True),
    ('kw LIKE "a?c"', {"kw": "ac"}, False),
    ('kw LIKE "a?c"', {"kw": "abbc"}, False),
    ('kw LIKE "a.c"', {"kw": "abc"}, False),
    ('kw LIKE "a\\\\*"', {"kw": "a*"}, True),
    ('kw LIKE "a\\\\*"', {"kw": "ab"}, False),
    ('kw LIKE """a\\*"""', {"kw": "a*"}, True),
    ('kw LIKE "a*"', {"kw": "a\nb"}, True),
    ('kw NOT LIKE "Create*"', {"kw": "DeleteUser"}, True),
    ('kw NOT LIKE "Create*"', {"kw": "CreateUser"}, False),
    ('kw NOT LIKE "Create*"', {}, None),
    ('kw RLIKE "Create.*Key"', {"kw": "CreateAccessKey"}, True),
    ('kw RLIKE "Access"', {"kw": "CreateAccessKey"}, False),
    ('kw RLIKE "[a-z]+"', {"kw": "abc"}, True),
    ('kw RLIKE "[a-z]+"', {"kw": "aBc"}, False),
    ('kw RLIKE ".*"', {"kw": MV}, True),  # Elasticsearch rewrites a match-all to IS NOT NULL
    ('kw NOT LIKE "*"', {}, True),
    ('kw LIKE ("a*", "b*")', {"kw": "bc"}, True),
    ('kw LIKE ("a*", "b*")', {"kw": "cc"}, False),
    ('kw LIKE ("a*", "b*")', {}, None),
    ('kw NOT LIKE ("a*", "b*")', {"kw": "cc"}, True),
    ('kw NOT LIKE ("a*", "b*")', {"kw": "ac"}, False),
    ('kw NOT RLIKE "Create.*"', {"kw": "DeleteUser"}, True),
    ('kw NOT RLIKE "Create.*"', {}, None),
]

FUNCTION_TESTS: list[tuple[str, dict[str, Any], bool | None]] = [
    ('TO_LOWER(kw) == "abc"', {"kw": "AbC"}, True),
    ('TO_LOWER(kw) == "abc"', {}, None),
    ('TO_LOWER(kw) == "a"', {"kw": ["A", "B"]}, None),
    ("TO_LOWER(kw) IS NULL", {"kw": ["A", "B"]}, False),
    ('TO_UPPER(kw) == "ABC"', {"kw": "abc"}, True),
    ("TO_LOWER(kw) == TO_LOWER(kw2)", {"kw": "Alice", "kw2": "alice"}, True),
    ("LENGTH(kw) == 3", {"kw": "abc"}, True),
    ("LENGTH(kw) == 1", {"kw": "é"}, True),
    ("LENGTH(kw) == 1", {"kw": "\N{GRINNING FACE}"}, True),
    ("LENGTH(kw) > 0", {}, None),
    ("LENGTH(kw) > 0", {"kw": MV}, None),
    ("LENGTH(kw) IS NULL", {"kw": MV}, True),
    ('STARTS_WITH(kw, "ab")', {"kw": "abc"}, True),
    ('STARTS_WITH(kw, "ab")', {"kw": "xbc"}, False),
    ('STARTS_WITH(kw, "ab")', {}, None),
    ('STARTS_WITH(kw, "ab")', {"kw": MV}, None),
    ("STARTS_WITH(kw, kw2)", {"kw": "abc"}, None),
    ('ENDS_WITH(kw, "bc")', {"kw": "abc"}, True),
    ('ENDS_WITH(kw, "bc")', {"kw": "abd"}, False),
    ('COALESCE(kw, kw2) == "b"', {"kw2": "b"}, True),
    ('COALESCE(kw, kw2) == "b"', {"kw": "a", "kw2": "b"}, False),
    ('COALESCE(kw, kw2) == "b"', {}, None),
    ('COALESCE(kw, "none") == "none"', {}, True),
    ("COALESCE(kw, kw2) IS NULL", {"kw": MV}, False),
    ('COALESCE(kw, kw2) == "a"', {"kw": MV}, None),
    ("COALESCE(null, num) == 3", {"num": 3}, True),
    ("COALESCE(flag, false)", {}, False),
    ('to_lower(kw) == "a"', {"kw": "A"}, True),
]

SYNTAX_TESTS: list[tuple[str, dict[str, Any], bool | None]] = [
    ('`user.name` == "a"', {"user.name": "a"}, True),
    ('`user`.`name` == "a"', {"user.name": "a"}, True),
    ('user.name == "a"', {"user.name": "a"}, True),
    ('kw == "a\\"b"', {"kw": 'a"b'}, True),
    ('kw == "tab\\there"', {"kw": "tab\there"}, True),
    ('kw == "back\\\\slash"', {"kw": "back\\slash"}, True),
    ('kw == """raw \\n"""', {"kw": "raw \\n"}, True),
    ("flag", {"flag": True}, True),
    ("flag", {"flag": False}, False),
    ("flag", {}, None),
    ("NOT flag", {"flag": True}, False),
    ('kw == "a" and not kw is null', {"kw": "a"}, True),
    ('kw == "a" // a trailing comment', {"kw": "a"}, True),
    ('kw /* inline */ == "a"', {"kw": "a"}, True),
    ('(kw == "a" OR kw == "b") AND num > 1', {"kw": "b", "num": 2}, True),
    ('kw == "a" OR kw == "b" AND num > 1', {"kw": "a", "num": 0}, True),
    ('NOT kw == "a"', {"kw": "b"}, True),
    ('NOT NOT kw == "a"', {"kw": "a"}, True),
    ("(kw == kw2) == true", {"kw": "a", "kw2": "a"}, True),
]


@pytest.mark.parametrize(
    ("condition", "record", "expected"),
    COMPARISONS + NULL_TESTS + IN_TESTS + MATCH_TESTS + FUNCTION_TESTS + SYNTAX_TESTS,
)
def test_condition_has_esql_three_valued_result(
    condition: str, record: dict[str, Any], expected: bool | None
) -> None:
    assert verdict(condition, record) is expected


KLEENE = [True, False, None]
AND_TABLE = {
    (True, True): True, (True, False): False, (True, None): None,
    (False, True): False, (False, False): False, (False, None): False,
    (None, True): None, (None, False): False, (None, None): None,
}  # fmt: skip
OR_TABLE = {
    (True, True): True, (True, False): True, (True, None): True,
    (False, True): True, (False, False): False, (False, None): None,
    (None, True): True, (None, False): None, (None, None): None,
}  # fmt: skip


@pytest.mark.parametrize("left", KLEENE)
@pytest.mark.parametrize("right", KLEENE)
def test_and_follows_kleene_truth_table(left: bool | None, right: bool | None) -> None:
    assert verdict("flag AND flag2", {"flag": left, "flag2": right}) is AND_TABLE[(left, right)]


@pytest.mark.parametrize("left", KLEENE)
@pytest.mark.parametrize("right", KLEENE)
def test_or_follows_kleene_truth_table(left: bool | None, right: bool | None) -> None:
    assert verdict("flag OR flag2", {"flag": left, "flag2": right}) is OR_TABLE[(left, right)]


@pytest.mark.parametrize(("value", "expected"), [(True, False), (False, True), (None, None)])
def test_not_follows_kleene_truth_table(value: bool | None, expected: bool | None) -> None:
    assert verdict("NOT flag", {"flag": value}) is expected


def test_three_way_and_or_nest_with_kleene_semantics() -> None:
    assert verdict("flag AND flag2 AND num > 1", {"flag": True, "flag2": None, "num": 0}) is False
    assert verdict("flag OR flag2 OR num > 1", {"flag": False, "flag2": None, "num": 0}) is None


def test_keywords_and_function_names_are_case_insensitive() -> None:
    query = 'FrOm x | WhErE kw Is NoT nUlL aNd To_LoWeR(kw) In ("a") Or kw LiKe "z*"'
    assert compile_query(query, FIELDS).matches({"kw": "A"})


def test_several_where_commands_must_all_hold() -> None:
    compiled = compile_query('from x | where kw == "a" | where num > 1', FIELDS)
    assert compiled.matches({"kw": "a", "num": 2})
    assert not compiled.matches({"kw": "a", "num": 1})


def test_compiled_query_exposes_patterns_fields_read_and_keep() -> None:
    compiled = compile_query(
        'from logs-aws.cloudtrail-*, -logs-aws.other, "quoted-*"\n'
        "| where num > 1 and kw == kw2 and num < 5\n| keep user.name, aws.*, kw",
        FIELDS,
    )
    assert compiled.index_patterns == ("logs-aws.cloudtrail-*", "-logs-aws.other", "quoted-*")
    assert compiled.fields_read == ("num", "kw", "kw2")
    assert compiled.keep_fields == ("user.name", "aws.a", "aws.b", "kw")


def test_and_stops_at_first_false_conjunct() -> None:
    calls: list[str] = []

    def counting(name: str) -> EcsField:
        def extract(record: CloudTrailRecord) -> EcsValue:
            calls.append(name)
            value: EcsValue = record.get(name)
            return value

        return EcsField(name, "keyword", extract)

    fields = {"first": counting("first"), "second": counting("second")}
    compiled = compile_query('from x | where first == "a" and second == "b"', fields)
    assert not compiled.matches({"first": "z", "second": "b"})
    assert calls == ["first"]


def test_evaluation_never_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = compile_query('from x | where kw like "a*" and TO_LOWER(kw2) IN ("b")', FIELDS)

    def refuse(*_args: object) -> None:
        raise AssertionError("parsed during evaluation")

    monkeypatch.setattr(syntax, "Parser", refuse)
    monkeypatch.setattr(syntax.Source, "tokens", refuse)
    assert compiled.matches({"kw": "abc", "kw2": "B"})


REJECTED: list[tuple[str, int, int, str]] = [
    ("from x | stats count() by kw", 1, 10, "aggregating rule: needs stateful evaluation"),
    ("from x\n| fork (where true)", 2, 3, "unsupported command FORK"),
    ("from x | enrich policy", 1, 10, "unsupported command ENRICH"),
    ("from x | lookup join y on kw", 1, 10, "unsupported command LOOKUP"),
    ("from x | stats count(*)\n| where kw == 1 ~ 2", 2, 17, "unexpected character '~'"),
    ('from x | where KQL("a: b")', 1, 16, "KQL() function is not supported"),
    ("from x | frobnicate", 1, 10, "unknown command FROBNICATE"),
    ("from x\n| where frob(kw)", 2, 9, "function FROB is not supported"),
    ("from x | where nope == 1", 1, 16, "field 'nope' is not derived"),
    ("from x | where user.nam == 1", 1, 16, "did you mean 'user.name'"),
    ("from x | where kw == 5", 1, 19, "cannot compare field 'kw' (keyword) with 5 (integer)"),
    ('from x | where num == "5"', 1, 20, "cannot compare field 'num' (long)"),
    ("from x | where LENGTH(num) > 1", 1, 23, "LENGTH needs a string"),
    ("from x | where STARTS_WITH(kw)", 1, 16, "STARTS_WITH takes 2 arguments, got 1"),
    ("from x | where TO_LOWER(kw, kw2) == kw", 1, 16, "TO_LOWER takes 1 argument, got 2"),
    ("from x | where COALESCE(kw, num) == kw", 1, 29, "COALESCE arguments must share one type"),
    ('from x | where num LIKE "1*"', 1, 20, "LIKE needs a string"),
    ("from x | where kw and flag", 1, 16, "expected a condition, found field 'kw'"),
    ("from x | where kw", 1, 16, "expected a condition"),
    ('from x | where ip == "not-an-ip"', 1, 22, "not a valid ip literal"),
    ("from x | where flag < true", 1, 21, "'<' does not apply to boolean"),
    ('from x | where kw IN ("a", 1)', 1, 19, "field 'kw' (keyword) with 1 (integer)"),
    ('from x | where kw = "a"', 1, 19, "compare with '=='"),
    ('from x | where (kw == "a"', 1, 26, "expected ')'"),
    ('from x | where kw == "a" kw2', 1, 26, "expected AND, OR or the end"),
    ("from x | where kw == kw2 == kw", 1, 26, "cannot be chained"),
    ('from x | where kw == "abc', 1, 22, "unterminated string"),
    ('from x | where kw == "a\\q"', 1, 24, "unknown escape sequence"),
    ("from x | where", 1, 15, "expected a condition"),
    ("from x | where kw == ", 1, 22, "expected a field, literal, function or '('"),
    ('where kw == "a"', 1, 1, "a query starts with FROM"),
    ("from x | limit 1.5", 1, 16, "expected a whole number"),
    ('from x | where kw == "a" |', 1, 27, "expected a command"),
    ('from x | where kw RLIKE "("', 1, 19, "invalid RLIKE pattern"),
    ('from x | where kw LIKE "a\\\\"', 1, 19, "escape character is not followed"),
    ("from x | where kw NOT kw2", 1, 19, "expected AND, OR or the end"),
    ("from x | where kw NOT NULL", 1, 23, "expected IN, LIKE or RLIKE after NOT"),
    ("from x | where kw == `unterminated", 1, 22, "unterminated backquoted name"),
    ("from x | where kw == 1 ~ 2", 1, 24, "unexpected character '~'"),
    ("from x metadata _nope | where kw == kw", 1, 17, "unknown metadata field '_nope'"),
    ("from x | where _id == kw", 1, 16, "not in METADATA"),
    ('from "logs-* | where kw == kw', 1, 6, "unterminated string literal"),
    ("from x, | where kw == kw", 1, 9, "expected a name"),
    ("from x | where kw == kw | keep `kw", 1, 32, "unterminated backquoted name"),
    ('from x | keep kw | where kw2 == "a"', 1, 26, "unknown column 'kw2'"),
    ('from x | where kw == "a" | keep nope', 1, 33, "field 'nope' is not derived"),
    ('from x | where kw == "a" | keep zz.*', 1, 33, "no field matches the pattern 'zz.*'"),
    ('from x | where kw == "a"\n  and nope == 1', 2, 7, "field 'nope' is not derived"),
]


@pytest.mark.parametrize(("query", "line", "column", "message"), REJECTED)
def test_rejected_query_names_line_column_and_reason(
    query: str, line: int, column: int, message: str
) -> None:
    with pytest.raises(EsqlError) as raised:
        compile_query(query, FIELDS)
    assert message in str(raised.value)
    assert (raised.value.line, raised.value.column) == (line, column)
    assert str(raised.value).startswith(f"line {line}, column {column}: ")


def test_default_registry_is_the_ecs_field_set() -> None:
    compiled = compile_query('from logs-* | where event.action == "CreateAccessKey"')
    assert compiled.matches({"eventName": "CreateAccessKey"})
    assert not compiled.matches({"eventName": "-"})


def _row(query: str, record: dict[str, Any]) -> dict[str, Any] | None:
    return compile_query(query, FIELDS, metadata={}).evaluate(record)


def test_eval_reassignment_sees_the_old_value_and_moves_the_column_last() -> None:
    compiled = compile_query("from x | eval kw = CONCAT(kw, kw2), n = LENGTH(kw) | keep *", FIELDS)
    out = compiled.evaluate({"kw": "ab", "kw2": "c"})
    assert out is not None
    assert (out["kw"], out["n"]) == ("abc", 3)
    assert [name for name, _ in compiled.columns][-2:] == ["kw", "n"]


def test_keep_drop_rename_shape_the_output_row() -> None:
    query = "from x | rename kw AS k | drop aws.* | keep k, num, flag*"
    assert _row(query, {"kw": "a", "num": 1}) == {"k": "a", "num": 1, "flag": None, "flag2": None}


def test_a_where_after_eval_filters_on_the_computed_value() -> None:
    compiled = compile_query('from x | eval low = TO_LOWER(kw) | where low == "abc"', FIELDS)
    assert compiled.matches({"kw": "ABC"})
    assert not compiled.matches({"kw": "abd"})


def test_sort_and_limit_never_change_a_streaming_verdict_but_limit_0_drops_all() -> None:
    assert compile_query("from x | sort kw desc | limit 1", FIELDS).matches({"kw": "a"})
    assert not compile_query("from x | limit 0", FIELDS).matches({"kw": "a"})


def test_table_mode_sorts_nulls_last_and_applies_limit() -> None:
    compiled = compile_query("from x | sort num desc nulls last | keep num | limit 3", FIELDS)
    table = compiled.run([{"num": 1}, {}, {"num": 3}, {"num": 2}])
    assert table.rows == [[3], [2], [1]]


def test_table_mode_defaults_to_1000_rows() -> None:
    assert (
        len(compile_query("from x | keep num", FIELDS).run({"num": n} for n in range(1500)).rows)
        == 1000
    )


ROW_CASES: list[tuple[str, Any]] = [
    ("ROW x = CASE(false, 1, null, 2, 3)", 3),
    ("ROW x = CASE(true, 1)", 1),
    ("ROW x = CASE(false, 1)", None),
    ('ROW x = COALESCE(null, "a")', "a"),
    ('ROW x = CONCAT("a", null)', None),
    ("ROW x = TO_STRING(1.0)", "1.0"),
    ("ROW x = TO_STRING(true)", "true"),
    ('ROW x = TO_DOUBLE("1.5")', 1.5),
    ('ROW x = TO_DOUBLE("x")', None),
    ("ROW x = 7 / 2", 3),
    ("ROW x = -7 / 2", -3),
    ("ROW x = -7 % 2", -1),
    ("ROW x = 1 / 0", None),
    ("ROW x = 2147483647 + 1", None),
    ("ROW x = 7.0 / 2", 3.5),
    ('ROW x = DATE_TRUNC(1 day, "2024-05-01T10:11:12Z")', "2024-05-01T00:00:00.000Z"),
    ('ROW x = DATE_TRUNC(1 month, "2024-05-17T10:11:12Z")', "2024-05-01T00:00:00.000Z"),
    ('ROW x = DATE_TRUNC(10 seconds, "2024-05-01T10:11:17.5Z")', "2024-05-01T10:11:10.000Z"),
    ('ROW x = DATE_DIFF("day", "2024-05-01T00:00:00Z", "2024-05-03T12:00:00Z")', 2),
    ('ROW x = DATE_DIFF("month", "2024-01-31T00:00:00Z", "2024-02-29T00:00:00Z")', 0),
    ('ROW x = TO_STRING("2024-01-31T00:00:00Z"::date)', "2024-01-31T00:00:00.000Z"),
    ('ROW x = "2024-01-31T00:00:00Z" < NOW()', True),
    ('ROW x = true IN (STARTS_WITH("GetUser", "List"), STARTS_WITH("GetUser", "Get"))', True),
    ('ROW x = SUBSTRING("abcdef", 0, 2)', "ab"),
    ('ROW x = SUBSTRING("abcdef", -2)', "ef"),
    ('ROW x = LEFT("abc", 5)', "abc"),
    ('ROW x = RIGHT("abc", 2)', "bc"),
    ("ROW x = GREATEST([10, 4], 1)", 10),
    ("ROW x = LEAST(10, 5, null)", None),
    ('ROW x = TO_LONG("2147483648.4")', 2147483648),
    ('ROW x = TO_INTEGER("2147483647.2")', None),
    ('ROW x = TO_DATETIME("2024-05-01")', "2024-05-01T00:00:00.000Z"),
    ('ROW x = TO_IP("10.0.0.01")', None),
    ('ROW x = MV_CONCAT(["a", "b"], "-")', "a-b"),
    ("ROW x = MV_SUM([2147483647, 1])", None),
    ('ROW x = TRIM("\u00a0 a \t")', "\u00a0 a"),  # Java's isWhitespace: no-break space stays
    ('ROW x = LTRIM("  b ")', "b "),
]


@pytest.mark.parametrize(("query", "expected"), ROW_CASES)
def test_row_expressions_follow_esql(query: str, expected: Any) -> None:
    assert compile_query(query, {}, metadata={}).run([]).rows == [[expected]]


def test_multi_valued_input_to_functions() -> None:
    record = {"kw": ["b", "a", "b"]}
    out = _row(
        "from x | eval c = MV_COUNT(kw), f = MV_FIRST(kw), u = TO_UPPER(kw), l = LENGTH(kw)"
        " | keep c, f, u, l",
        record,
    )
    assert out == {"c": 2, "f": "a", "u": ["A", "B"], "l": None}


def test_grok_and_dissect_add_columns_null_when_no_match() -> None:
    query = (
        'from x | grok kw "%{WORD:w} %{NUMBER:n:int}" | dissect kw2 "%{a}-%{b}" | keep w, n, a, b'
    )
    assert _row(query, {"kw": "abc 12", "kw2": "x-y"}) == {"w": "abc", "n": 12, "a": "x", "b": "y"}
    assert _row(query, {"kw": "abc", "kw2": None}) == {"w": None, "n": None, "a": None, "b": None}


def test_metadata_fields_come_from_the_record() -> None:
    compiled = compile_query("from logs-* metadata _id, _version | keep _id, _version")
    assert compiled.evaluate({"eventID": "e-1"}) == {"_id": "e-1", "_version": 1}


def test_comments_inside_a_keep_list_and_backquoted_eval_names() -> None:
    compiled = compile_query(
        "from x // a comment\n| eval `a.b` = kw /* why */\n| keep\n    kw, // the key\n    `a.b`",
        FIELDS,
    )
    assert compiled.evaluate({"kw": "v"}) == {"kw": "v", "a.b": "v"}


def test_field_types_we_do_not_know_read_as_keyword_and_unsupported_ones_as_null() -> None:
    fields = {
        "odd": EcsField("odd", "flattened", _reads("odd")),  # type: ignore[arg-type]
        "geo": EcsField("geo", "geo_point", _reads("geo")),  # type: ignore[arg-type]
    }
    compiled = compile_query('from x | where odd == "a=1"', fields, metadata={})
    assert compiled.evaluate({"odd": "a=1", "geo": "POINT (1 2)"}) == {"geo": None, "odd": "a=1"}
    assert ("geo", "unsupported") in compiled.columns
    with pytest.raises(esql.UnsupportedEsqlError, match="type geo_point"):
        compile_query("from x | where geo IS NULL", fields, metadata={})


def test_a_query_built_without_a_pipeline_still_evaluates_and_runs() -> None:
    built = esql.CompiledQuery(
        query="kw: a",
        index_patterns=(),
        condition=esql.Const(True, 0),
        fields_read=(),
        field_specs={},
        keep_fields=(),
        matches=lambda record: record.get("kw") == "a",
    )
    assert built.evaluate({"kw": "a"}) == {}
    assert built.evaluate({"kw": "b"}) is None
    assert built.run([{"kw": "a"}, {"kw": "b"}]).rows == [[]]


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("ZWxhc3RpYw==", "elastic"),
        ("ZWxhc3RpYw", "elastic"),  # padding is optional
        ("ZWxhc3RpYw=", None),  # but exact when present
        ("Z", None),
        ("ZW$x", None),
        ("/w==", None),  # not UTF-8
        ("", ""),
    ],
)
def test_from_base64_decodes_as_java_does(encoded: str, decoded: str | None) -> None:
    query = f'ROW x = FROM_BASE64("{encoded}"), y = TO_BASE64("elastic")'
    assert compile_query(query, {}, metadata={}).run([]).rows == [[decoded, "ZWxhc3RpYw=="]]


def test_a_row_query_judges_and_evaluates_its_one_row() -> None:
    compiled = compile_query("ROW a = 1 | WHERE a > 0 | EVAL b = a + 1", {}, metadata={})
    assert compiled.matches({})
    assert compiled.evaluate({}) == {"a": 1, "b": 2}
    assert not compile_query("ROW a = 1 | WHERE a > 1", {}, metadata={}).matches({})
