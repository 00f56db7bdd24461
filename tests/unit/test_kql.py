"""KQL: Kibana's grammar (cases after kbn-es-query's parser behaviour) and Elasticsearch's
matching semantics for each field type, on a small registry written for these tests."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.cloudtrail.normalize import EcsField, EcsType, configure_enrichment
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.rules.kql import (
    KqlAnd,
    KqlError,
    KqlIs,
    KqlLiteral,
    KqlMatchAll,
    KqlNested,
    KqlNode,
    KqlNot,
    KqlOr,
    KqlRange,
    UnsupportedKqlError,
    analyze,
    compile_kql,
    parse_kql,
    with_index,
)

# --- parsing -------------------------------------------------------------------------------


def shape(node: KqlNode) -> Any:
    """A position-free rendering of a syntax tree, to compare with expected shapes."""
    if isinstance(node, KqlAnd | KqlOr):
        return (type(node).__name__[3:].lower(), *(shape(item) for item in node.items))
    if isinstance(node, KqlNot):
        return ("not", shape(node.item))
    if isinstance(node, KqlNested):
        return ("nested", lit(node.path), shape(node.query))
    if isinstance(node, KqlRange):
        return ("range", lit(node.field), node.op, lit(node.value))
    if isinstance(node, KqlIs):
        return ("is", None if node.field is None else lit(node.field), lit(node.value))
    assert isinstance(node, KqlMatchAll)
    return ("all",)


def lit(literal: KqlLiteral) -> Any:
    if literal.segments is not None:
        return ("wildcard", *literal.segments)
    if literal.quoted:
        return ("quoted", literal.value)
    return literal.value


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("  ", ("all",)),
        ("foo", ("is", None, "foo")),
        ("  foo ", ("is", None, "foo")),
        ("foo bar", ("is", None, "foo bar")),
        ("foo and bar", ("and", ("is", None, "foo"), ("is", None, "bar"))),
        ("foo and\u00a0bar", ("and", ("is", None, "foo"), ("is", None, "bar"))),
        ("foo or bar or baz",
         ("or", ("is", None, "foo"), ("is", None, "bar"), ("is", None, "baz"))),
        ("not (foo or bar)", ("not", ("or", ("is", None, "foo"), ("is", None, "bar")))),
        (
            "foo or bar and baz or qux",
            ("or", ("is", None, "foo"), ("and", ("is", None, "bar"), ("is", None, "baz")),
             ("is", None, "qux")),
        ),
        ("(foo or bar) and baz", ("and", ("or", ("is", None, "foo"), ("is", None, "bar")),
                                  ("is", None, "baz"))),
        ("foo:bar", ("is", "foo", "bar")),
        ("foo : bar baz ", ("is", "foo", "bar baz")),
        ("foo:bar and", ("is", "foo", "bar and")),
        ('foo:"bar baz"', ("is", "foo", ("quoted", "bar baz"))),
        ("foo:(bar or baz)", ("or", ("is", "foo", "bar"), ("is", "foo", "baz"))),
        (
            "foo:((bar or baz) and not qux)",
            ("and", ("or", ("is", "foo", "bar"), ("is", "foo", "baz")),
             ("not", ("is", "foo", "qux"))),
        ),
        ("bytes > 1000 and bytes < 8000",
         ("and", ("range", "bytes", "gt", "1000"), ("range", "bytes", "lt", "8000"))),
        ("bytes>=1000 and bytes<=8000",
         ("and", ("range", "bytes", "gte", "1000"), ("range", "bytes", "lte", "8000"))),
        ("machine*:osx", ("is", ("wildcard", "machine", ""), "osx")),
        ("foo:ba*", ("is", "foo", ("wildcard", "ba", ""))),
        ("foo:*", ("is", "foo", ("wildcard", "", ""))),
        ("foo:**", ("is", "foo", ("wildcard", "", "", ""))),
        ("nestedField:{ childOfNested: foo }",
         ("nested", "nestedField", ("is", "childOfNested", "foo"))),
        ("a:{ b:{ c:foo } }", ("nested", "a", ("nested", "b", ("is", "c", "foo")))),
        ("response:200 and n:{ c:foo or c:bar }",
         ("and", ("is", "response", "200"), ("nested", "n", ("or", ("is", "c", "foo"),
                                                             ("is", "c", "bar"))))),
        ("a:1 AND b:2 Or NOT c:3",
         ("or", ("and", ("is", "a", "1"), ("is", "b", "2")), ("not", ("is", "c", "3")))),
        ("a:true or a:false or a:null or a:\"true\"",
         ("or", ("is", "a", True), ("is", "a", False), ("is", "a", None),
          ("is", "a", ("quoted", "true")))),
        (r"user.name:system\:serviceaccount\:*",
         ("is", "user.name", ("wildcard", "system:serviceaccount:", ""))),
        (r"a:\*b", ("is", "a", "*b")),
        (r"a:\(x\) or a:\\", ("or", ("is", "a", "(x)"), ("is", "a", "\\"))),
        (r"a:\or and a:x\ANDy", ("and", ("is", "a", "or"), ("is", "a", "xANDy"))),
        (r"a:\u0041\t", ("is", "a", "A")),
        (r'a:"q\"uote\\d \u0041\n\b*"', ("is", "a", ("quoted", 'q"uote\\d A\n\\b*'))),
        ('"quoted field":x', ("is", ("quoted", "quoted field"), "x")),
        ("a:arn*/terraform", ("is", "a", ("wildcard", "arn", "/terraform"))),
        ("a: android or a:nothing", ("or", ("is", "a", "android"), ("is", "a", "nothing"))),
        ("a:(* and not (Amazon* or AMAZON*))",
         ("and", ("is", "a", ("wildcard", "", "")),
          ("not", ("or", ("is", "a", ("wildcard", "Amazon", "")),
                   ("is", "a", ("wildcard", "AMAZON", "")))))),
    ],
)
def test_parses_as_kibanas_grammar_does(query: str, expected: Any) -> None:
    assert shape(parse_kql(query)) == expected


@pytest.mark.parametrize(
    ("query", "column"),
    [
        ("a:b and ", 9),  # a dangling keyword (without the space, "b and" is the value)
        ("a:(b or c", 10),
        ("a:b)", 4),
        ('a:"unterminated', 16),
        (r"a:b\d", 4),  # a backslash escapes only special characters and keywords
        ("a:cannot be", 6),  # 'not ' is a keyword even inside a word, as in Kibana
        ("a:{b:c", 7),
        ("a:", 3),
    ],
)
def test_invalid_queries_fail_at_the_furthest_point_reached(query: str, column: int) -> None:
    with pytest.raises(KqlError) as raised:
        parse_kql(query)
    assert (raised.value.line, raised.value.column) == (1, column)


def test_errors_name_the_line_of_a_multi_line_query() -> None:
    with pytest.raises(KqlError) as raised:
        parse_kql("a:b\n  and (c:d")
    assert (raised.value.line, raised.value.column) == (2, 11)


def test_deep_grouping_parses_and_too_deep_a_nesting_is_an_error() -> None:
    assert shape(parse_kql("(" * 40 + "a:b" + ")" * 40)) == ("is", "a", "b")
    with pytest.raises(KqlError):
        parse_kql("(" * 40 + "a:b")
    with pytest.raises(KqlError) as raised:
        parse_kql("(" * 5000 + "a:b" + ")" * 5000)
    assert "nests too deeply" in raised.value.reason


# --- matching ------------------------------------------------------------------------------


def field(name: str, es_type: EcsType = "keyword", raw: bool = False) -> EcsField:
    def extract(record: CloudTrailRecord) -> Any:
        return record.get(name)

    return EcsField(name, es_type, extract, raw_source=name if raw else None)


FIELDS = {
    spec.name: spec
    for spec in (
        field("event.action", raw=True),
        field("user.name"),
        field("user.id"),
        field("tags"),
        field("message"),
        field("user_agent.original", raw=True),
        field("aws.cloudtrail.request_parameters"),
        field("aws.cloudtrail.flattened.request_parameters.fromPort"),
        field("data_stream.dataset"),
        field("source.ip", "ip"),
        field("bytes", "long"),
        field("@timestamp", "date"),
        field("flag", "boolean"),
    )
}


def matches(query: str, **record: Any) -> bool:
    document = {name.replace("__", "."): value for name, value in record.items()}
    return compile_kql(query, FIELDS).matches(document)


def test_keyword_values_match_exactly_and_case_sensitively() -> None:
    assert matches("event.action:CreateUser", event__action="CreateUser")
    assert matches('event.action:"CreateUser"', event__action="CreateUser")
    assert not matches("event.action:createuser", event__action="CreateUser")
    assert not matches("event.action:Create", event__action="CreateUser")


def test_keyword_wildcards_match_any_run_and_question_marks_are_literal() -> None:
    assert matches("event.action:Create*Key", event__action="CreateAccessKey")
    assert matches("event.action:*Key", event__action="CreateAccessKey")
    assert not matches("event.action:create*", event__action="CreateAccessKey")
    assert not matches("event.action:Create?", event__action="CreateX")
    assert matches("event.action:Create?", event__action="Create?")
    assert matches(r"event.action:a\*b", event__action="a*b")
    assert not matches(r"event.action:a\*b", event__action="axxb")
    assert matches('event.action:"a*b"', event__action="a*b")
    assert not matches('event.action:"a*b"', event__action="axb")


def test_any_value_of_a_multi_valued_field_may_match() -> None:
    assert matches("tags:b", tags=["a", "b"])
    assert matches("tags:(x or a)", tags=["a", "b"])
    assert matches("tags:a and tags:b", tags=["a", "b"])
    assert not matches("not tags:b", tags=["a", "b"])
    assert matches("tags:b*", tags=["a", "bc"])


def test_not_holds_when_the_field_is_absent_and_exists_needs_a_value() -> None:
    assert matches("not user.name:alice")
    assert not matches("user.name:*")
    assert matches("user.name:*", user__name="alice")
    assert matches("not user.name:*", tags=[])
    assert not matches("tags:*", tags=[])


def test_values_longer_than_ignore_above_are_not_indexed() -> None:
    long_name = "a" * 1025
    assert not matches(f"user.name:{long_name}", user__name=long_name)
    assert not matches("user.name:*", user__name=long_name)
    assert not matches("user.name:a*", user__name=long_name)
    assert matches("user.name:a*", user__name="a" * 1024)
    astral = "\U0001f600" * 513  # 1026 UTF-16 code units: Java's length, not Python's
    assert not matches("user.name:*", user__name=astral)
    payload = "{" + "x" * 5000 + "AdministratorAccess}"
    assert matches("aws.cloudtrail.request_parameters:*AdministratorAccess*",
                   aws__cloudtrail__request_parameters=payload)
    assert not matches("aws.cloudtrail.request_parameters:*AdministratorAccess*",
                       aws__cloudtrail__request_parameters="x" * 8191 + "AdministratorAccess")
    assert matches("data_stream.dataset:*", data_stream__dataset="d" * 5000)


def test_flattened_leaves_are_keywords_whatever_their_json_type() -> None:
    port = "aws.cloudtrail.flattened.request_parameters.fromPort"
    assert matches(f"{port}:(21 or 22)", **{port.replace(".", "__"): [22, 443]})
    assert not matches(f"{port}:2*", **{port.replace(".", "__"): [3389]})
    assert matches(f"{port}:true", **{port.replace(".", "__"): True})


def test_text_fields_match_analysed_tokens() -> None:
    message = "User: arn:aws:iam::1:user/x is not authorized to perform: iam:ListUsers"
    assert matches('message:"NOT AUTHORIZED"', message=message)
    assert not matches('message:"authorized not"', message=message)
    assert matches("message:authorized", message=message)
    assert matches("message:(denied or authorized)", message=message)
    assert matches("message:Denied Authorized", message=message)  # match: any token
    assert matches("message:AUTHOR*", message=message)  # query_string: lower-cased term
    assert matches("message:*THORIZ* xyz", message=message)  # whitespace splits terms
    assert not matches("message:*thoriz* xyz", message="nothing here")
    assert not matches("message:-", message="-")


def test_text_multi_fields_search_the_keyword_parent_analysed() -> None:
    agent = "Terraform/1.5.7 (+https://www.terraform.io) aws-sdk-go-v2/1.21"
    assert matches("user_agent.original.text:terraform", user_agent__original=agent)
    assert not matches("user_agent.original:terraform", user_agent__original=agent)
    assert matches("user_agent.original:*terraform*", user_agent__original=agent)
    assert not matches("user_agent.original:*TERRAFORM*", user_agent__original=agent)


def test_standard_analyzer_keeps_words_joined_by_mid_letter_and_mid_number_marks() -> None:
    assert analyze("Don't stop: e.g. 1,000.5 api_key-ID") == [
        "don't", "stop", "e.g", "1,000.5", "api_key", "id"
    ]
    assert analyze("x" * 300) == ["x" * 255, "x" * 45]


def test_ip_fields_take_addresses_and_cidr_blocks() -> None:
    assert matches("source.ip:10.0.0.0/8", source__ip="10.1.2.3")
    assert not matches("source.ip:10.0.0.0/8", source__ip="11.1.2.3")
    assert matches("source.ip:192.0.2.1", source__ip="::ffff:192.0.2.1")
    assert matches('source.ip:"2001:db8::/32"', source__ip="2001:db8::1")
    assert matches("source.ip >= 10.0.0.5 and source.ip < 10.0.0.9", source__ip="10.0.0.8")
    assert not matches("source.ip > 10.0.0.5", source__ip="9.255.255.255")


def test_numbers_compare_as_numbers_and_keywords_as_strings() -> None:
    assert matches("bytes > 900", bytes=1000)
    assert matches("bytes:1000", bytes=1000)
    assert not matches("bytes < 1000", bytes=1000)
    assert matches("bytes <= 1000.5", bytes=1000)
    assert matches("event.action < 9", event__action="10")  # "10" < "9" in code point order
    assert not matches("event.action > b", event__action="B")


def test_dates_compare_as_times_rounding_a_partial_date_like_elasticsearch() -> None:
    moment = "2026-11-29T10:00:00.000Z"
    assert matches("@timestamp:2026-11-29", **{"@timestamp": moment})
    assert not matches("@timestamp:2026-11-28", **{"@timestamp": moment})
    assert not matches("@timestamp > 2026-11-29", **{"@timestamp": moment})
    assert matches("@timestamp >= 2026-11-29", **{"@timestamp": moment})
    assert matches("@timestamp <= 2026-11", **{"@timestamp": moment})
    assert matches('@timestamp < "2026-11-29T11:00:00+01:00"',
                   **{"@timestamp": "2026-11-29T09:59:59.999Z"})
    assert matches("@timestamp:1795946400000", **{"@timestamp": moment})


def test_booleans_take_true_and_false() -> None:
    assert matches("flag:true", flag=True)
    assert matches('flag:"false"', flag=False)
    assert not matches("flag:true", flag=False)


def test_field_name_wildcards_expand_over_the_registry() -> None:
    assert matches("user.*:alice", user__id="alice")
    assert matches("user.*:alice", user__name="alice")
    assert not matches("user.*:alice", tags=["alice"])
    assert matches("*:*")
    assert matches("")


@pytest.mark.parametrize(
    ("query", "error", "reason"),
    [
        ("source.ip:not-an-ip", KqlError, "is not an IP address"),
        ("bytes:many", KqlError, "is not a valid number"),
        ("source.ip:10.*", KqlError, "wildcard value on ip field"),
        ("user.name:null", KqlError, "null"),
        ("n:{ user.name:x }", KqlError, "nested query"),
        ("nosuch.field:x", UnsupportedKqlError, "is not derived"),
        ("nosuch*:x", UnsupportedKqlError, "no field derived"),
        ("alice", UnsupportedKqlError, "no field name"),
        ("@timestamp > now-1d", UnsupportedKqlError, "date math"),
    ],
)
def test_queries_elasticsearch_or_we_cannot_run_are_refused_at_load(
    query: str, error: type[KqlError], reason: str
) -> None:
    with pytest.raises(error) as raised:
        compile_kql(query, FIELDS)
    assert type(raised.value) is error
    assert reason in raised.value.reason


def test_a_rule_must_search_the_cloudtrail_data_stream() -> None:
    compiled = compile_kql("event.action:x", FIELDS, index=["filebeat-*", "logs-aws.cloudtrail-*"])
    assert compiled.index_patterns == ("filebeat-*", "logs-aws.cloudtrail-*")
    assert with_index(compiled, ["logs-aws.cloudtrail*"]).index_patterns == (
        "logs-aws.cloudtrail*",
    )
    with pytest.raises(UnsupportedKqlError):
        with_index(compiled, ["winlogbeat-*"])
    with pytest.raises(UnsupportedKqlError):
        with_index(compiled, ["logs-*", "-logs-aws.*"])


def test_compiled_query_reads_each_field_once_in_order() -> None:
    compiled = compile_kql("user.name:a and (event.action:b or user.name:c) and not tags:*", FIELDS)
    assert compiled.fields_read == ("user.name", "event.action", "tags")
    assert set(compiled.field_specs) == set(compiled.fields_read)
    assert compiled.keep_fields == ()


def test_the_data_stream_a_rule_must_cover_follows_the_configured_namespace() -> None:
    compiled = compile_kql("event.action:x", FIELDS)
    configure_enrichment("prod", None, None)
    try:
        assert with_index(compiled, ["logs-aws.cloudtrail-prod"]).index_patterns
        with pytest.raises(UnsupportedKqlError, match=r"logs-aws\.cloudtrail-prod"):
            with_index(compiled, ["logs-aws.cloudtrail-default"])
    finally:
        configure_enrichment("default", None, None)
