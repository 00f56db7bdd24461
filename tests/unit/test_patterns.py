"""ES|QL's LIKE, RLIKE, GROK and DISSECT matchers: Elastic's semantics, refusals, hostile values."""

from __future__ import annotations

import functools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.rules.patterns import (
    PatternError,
    UnsupportedPatternError,
    _backtracking_reference,
    compile_dissect,
    compile_grok,
    like,
    rlike,
)

MB = 1 << 20

# ----------------------------------------------------------------------------------- LIKE


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("abc", "abc", True),
        ("abc", "abcd", False),
        ("a*", "abc", True),
        ("a*", "ba", False),
        ("*c", "abc", True),
        ("*b*", "abc", True),
        ("*b*", "ac", False),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("a?c", "a\nc", True),
        ("*", "", True),
        ("?", "", False),
        ("?", "\U0001f600", True),
        ("a*b*c", "a-x-b-y-c", True),
        ("a*b*c", "a-x-c-y-b", False),
        ("Invoke*", "InvokeModel", True),
        ("*Terraform*", "APN/1.0 HashiCorp/1.0 Terraform/1.5.7", True),
        ("", "", True),
        ("", "x", False),
    ],
)
def test_like_wildcards_match_the_whole_value(pattern: str, value: str, expected: bool) -> None:
    assert like(pattern)(value) is expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("a\\*", "a*", True),
        ("a\\*", "ab", False),
        ("a\\?", "a?", True),
        ("a\\?", "ab", False),
        ("a\\\\", "a\\", True),
        ("\\**", "*x", True),
        ("\\**", "x*", False),
    ],
)
def test_like_backslash_escapes_wildcards_and_itself(
    pattern: str, value: str, expected: bool
) -> None:
    assert like(pattern)(value) is expected


@pytest.mark.parametrize("pattern", ["a\\b", "abc\\", "\\.", "x\\y*"])
def test_like_refuses_escapes_es_ql_refuses(pattern: str) -> None:
    with pytest.raises(PatternError, match="escape character is not followed"):
        like(pattern)


def test_like_is_case_sensitive_by_default_and_folds_ascii_on_request() -> None:
    assert like("Deprecated - *")("deprecated - x") is False
    assert like("Deprecated - *", case_insensitive=True)("DEPRECATED - x") is True
    assert like("a?C", case_insensitive=True)("AbC") is True
    # Lucene's ASCII_CASE_INSENSITIVE folds ASCII letters only
    assert like("é*", case_insensitive=True)("É") is False


def test_like_on_hostile_values_answers_without_backtracking() -> None:
    almost = "a" * MB
    assert like("*a*a*a*a*b")(almost) is False
    assert like("*a?a?a?b*")(almost) is False
    assert like("*Terraform*")("Terrafor" * (MB // 8)) is False


def test_like_survives_lone_surrogates() -> None:
    assert like("a*?b")("a\ud800b") is True


# ----------------------------------------------------------------------------------- RLIKE


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("abc", "abc", True),
        ("ab", "abc", False),
        (".*b.*", "abc", True),
        (".", "\n", True),
        ("a|b", "b", True),
        ("(ab)+", "abab", True),
        ("a{2,3}", "aaaa", False),
        ("a{2,}", "aaaa", True),
        ("[a-c]+", "cab", True),
        ("[^a-c]", "d", True),
        ("[^a-c]", "\n", True),
        ("[]a]", "]", True),
        ("\\d\\s\\w", "1 x", True),
        ("\\D\\S\\W", "x-!", True),
        ("\\s", "\f", False),
        ("\\w", "é", False),
        ('"a.b"', "a.b", True),
        ('"a.b"', "axb", False),
        ("a\\.b", "a.b", True),
        ("a\\.b", "axb", False),
        ("@", "anything at all", True),
        ("a#", "a", False),
        ("()", "", True),
        ("", "", True),
        ("a~b", "a~b", True),
        ("a^b$", "a^b$", True),
        ("\\&", "&", True),
    ],
)
def test_rlike_follows_lucene_regexp(pattern: str, value: str, expected: bool) -> None:
    assert rlike(pattern)(value) is expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("<1-10>", "7", True),
        ("<1-10>", "10", True),
        ("<1-10>", "007", True),
        ("<1-10>", "11", False),
        ("<1-10>", "0", False),
        ("<01-10>", "07", True),
        ("<01-10>", "7", False),
        ("<01-10>", "007", False),
        ("<10-1>", "5", True),
        ("<0-255>", "255", True),
        ("<0-255>", "256", False),
        ("<0-255>", "000", True),
        ("<100-199>", "150", True),
        ("<100-199>", "99", False),
    ],
)
def test_rlike_numeric_interval_matches_lucene(pattern: str, value: str, expected: bool) -> None:
    assert rlike(pattern)(value) is expected


def test_rlike_rules_of_elastics_aws_ruleset() -> None:
    effect = rlike('.*\\"Effect\\": *\\"Allow\\".*')
    assert effect('{"Statement": [{"Effect": "Allow", "Principal": "*"}]}') is True
    assert effect('{"Effect": "Deny"}') is False
    principal = rlike('.*\\"Principal\\": *\\{ *\\"AWS\\": *\\"\\*\\".*')
    assert principal('{"Principal": {"AWS": "*"}}') is True
    assert principal('{"Principal": {"AWS": "arn:aws:iam::1:root"}}') is False
    image = rlike(".*image=[-a-zA-Z0-9_]+(/|[,} :]).*")
    assert image("{image=nginx:latest, cpu=256}") is True
    assert image("{image=, cpu=256}") is False
    script = rlike(".*(/dev/tcp/|bash -i|\\| ?sh|169\\.254\\.169\\.254|stratum\\+).*")
    assert script("curl x | sh") is True
    assert script("curl 169.254.169.254") is True
    assert script("curl 169x254.169.254") is False


def test_rlike_case_insensitive_folds_ascii_chars_not_ranges() -> None:
    assert rlike("abc", case_insensitive=True)("ABC") is True
    assert rlike('"abc"', case_insensitive=True)("AbC") is True
    assert rlike("[a-c]", case_insensitive=True)("B") is False  # Lucene folds chars, not ranges
    assert rlike("[ab]", case_insensitive=True)("B") is True
    assert rlike("[^a]", case_insensitive=True)("A") is False


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("a(b", "expected ')'"),
        ("[ab", "expected ']'"),
        ('"ab', "expected '\"'"),
        ("a{,3}", "integer expected"),
        ("a{3,1}", "out of order"),
        ("a)", "end-of-string expected"),
        ("\\n", "invalid character class"),
        ("ab\\", "unexpected end-of-string"),
        ("<foo>", "named automaton"),
        ("<1-a>", "interval syntax error"),
        ("[z-a]", "invalid range"),
    ],
)
def test_rlike_refuses_what_lucene_refuses(pattern: str, message: str) -> None:
    with pytest.raises(PatternError, match=re.escape(message)):
        rlike(pattern)


def test_rlike_refuses_intersection_rather_than_approximating() -> None:
    with pytest.raises(UnsupportedPatternError, match="intersection"):
        rlike("a.*&.*b")


def test_rlike_on_hostile_values_is_linear() -> None:
    hostile = "a" * MB
    assert rlike("(a|a)*b")(hostile) is False
    assert rlike("(a*)*b")(hostile) is False
    assert rlike('.*\\"Effect\\": *\\"Allow\\".*')('"Effect": ' * (MB // 10)) is False


# ----------------------------------------------------------------------------------- GROK


def test_grok_named_captures_with_dotted_names_search_unanchored() -> None:
    grok = compile_grok("modelId=(?<Esql.model_id>[^,}\\]]+)")
    assert grok.columns == (("Esql.model_id", "keyword"),)
    assert grok("{modelId=anthropic.claude-v2, accept=*/*}") == {
        "Esql.model_id": "anthropic.claude-v2"
    }
    assert grok("{other=1}") is None


def test_grok_patterns_of_elastics_aws_ruleset_run_on_re2() -> None:
    access_key = compile_grok(
        ".*accessKeyId=(?<Esql_priv.aws_cloudtrail_response_elements_access_key_access_key_id>"
        "AKIA[A-Z0-9]{16}).*"
    )
    got = access_key("{accessKey={accessKeyId=AKIAIOSFODNN7EXAMPLE, status=Active}}")
    assert got == {
        "Esql_priv.aws_cloudtrail_response_elements_access_key_access_key_id": (
            "AKIAIOSFODNN7EXAMPLE"
        )
    }
    issued = compile_grok("accessKeyId=%{NOTSPACE:issued_key_id},")
    assert issued("{accessKeyId=ASIAXYZ, x=1}") == {"issued_key_id": "ASIAXYZ"}
    account = compile_grok(":(?<Esql.caller_account>[0-9]{12}):")
    assert account("arn:aws:iam::123456789012:user/x") == {"Esql.caller_account": "123456789012"}


def test_grok_columns_are_sorted_by_name_with_es_ql_types() -> None:
    grok = compile_grok(
        "%{NUMBER:z:int} %{NUMBER:c:float} %{NUMBER:d:double} %{WORD:e:boolean} %{NUMBER:a:long}"
    )
    assert grok.columns == (
        ("a", "long"),
        ("c", "double"),
        ("d", "double"),
        ("e", "boolean"),
        ("z", "integer"),
    )
    assert grok("12 15.5 15.6 true 9000000000") == {
        "a": 9000000000,
        "c": 15.5,
        "d": 15.6,
        "e": True,
        "z": 12,
    }


def test_grok_float_is_parsed_as_java_float_then_widened() -> None:
    assert compile_grok("%{NUMBER:c:float}")("15.6") == {"c": pytest.approx(15.600000381469727)}
    assert compile_grok("%{NUMBER:c:float}")("15.6")["c"] != 15.6


def test_grok_unknown_type_suffix_is_a_string() -> None:
    assert compile_grok("%{WORD:a:text}").columns == (("a", "keyword"),)


def test_grok_repeated_name_gives_a_multi_value() -> None:
    grok = compile_grok("%{WORD:b} %{WORD:b}")
    assert grok.columns == (("b", "keyword"),)
    assert grok("foo bar") == {"b": ["foo", "bar"]}


def test_grok_optional_group_that_did_not_take_part_is_null() -> None:
    grok = compile_grok("(?<a>x)?(?<b>y)")
    assert grok("y") == {"a": None, "b": "y"}


def test_grok_csv_spec_complex_pattern() -> None:
    grok = compile_grok(
        "%{TIMESTAMP_ISO8601:date} %{IP:ip} %{EMAILADDRESS:email} %{NUMBER:num:int}"
    )
    assert grok("1953-01-23T12:15:00Z 127.0.0.1 some.email@foo.com 42") == {
        "date": "1953-01-23T12:15:00Z",
        "email": "some.email@foo.com",
        "ip": "127.0.0.1",
        "num": 42,
    }


def test_grok_no_match_is_none() -> None:
    assert compile_grok("%{NUMBER:b:int} .*")("foo bar") is None


def test_grok_word_is_bounded_by_non_word_characters() -> None:
    assert compile_grok("%{WORD:a}x")("abcx") is None
    assert compile_grok("%{WORD:a}-x")("abc-x") == {"a": "abc"}
    assert compile_grok("c%{WORD:a}")("abc d") is None


def test_grok_number_is_not_taken_from_inside_another_number() -> None:
    assert compile_grok("x%{NUMBER:n}")("x-1.5") == {"n": "-1.5"}
    assert compile_grok("%{NUMBER:n}")("ab1.5.6") == {"n": "1.5"}
    assert compile_grok("a%{NUMBER:n}")("a.5") == {"n": ".5"}


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("%{NOSUCHPATTERN:x}", "Unable to find pattern \\[NOSUCHPATTERN\\]"),
        ("(?<a>x", "unmatched parenthesis"),
        ("(?<a>x)\\1", "backreference"),
        ("%{WORD:a} %{NUMBER:a:int}", "two types"),
    ],
)
def test_grok_refuses_invalid_patterns_with_reasons(pattern: str, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        compile_grok(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        "%{NUMBER:n}5",  # the atomic number group decides whether the 5 is left over
        "%{GREEDYDATA:a}%{WORD:b}x",  # the word boundary depends on where .* stops
        "%{DATA:a}%{NUMBER:n}",
        "(?<a>(?>(?:x+)+))y",
    ],
)
def test_grok_refuses_what_needs_a_backtracking_engine(pattern: str) -> None:
    with pytest.raises(UnsupportedPatternError, match="RE2 cannot run it exactly"):
        compile_grok(pattern)


def test_grok_on_hostile_values_returns_promptly() -> None:
    hostile = "instanceId=" + "i" * MB
    assert compile_grok("instanceId=(?<id>[^,}\\]]+),")(hostile) is None
    roles = compile_grok(".*roleArn=(?<arn>arn:aws[a-z-]*:iam::[0-9]{12}:role/[^,}]+).*")
    assert roles("roleArn=arn:aws:iam::" * (MB // 21)) is None


def test_grok_library_patterns_on_hostile_values_return_promptly() -> None:
    grok = compile_grok("%{TIMESTAMP_ISO8601:t} %{IP:ip} %{EMAILADDRESS:e} %{NUMBER:n:int}")
    assert grok("a" * MB) is None
    assert grok("1953-01-23T12:15:00Z 127.0.0.1 a" * (MB // 32)) is None
    assert compile_grok("%{EMAILADDRESS:e}")("a" * 64 + ".a" * (MB // 2)) is None


# ----------------------------------------------------------------------------------- DISSECT


def test_dissect_keys_and_delimiters() -> None:
    dissect = compile_dissect("%{a} %{b},%{c}")
    assert dissect.columns == (("a", "keyword"), ("b", "keyword"), ("c", "keyword"))
    assert dissect("foo bar,baz") == {"a": "foo", "b": "bar", "c": "baz"}
    assert dissect("foo bar baz") is None


def test_dissect_skip_and_empty_keys() -> None:
    assert compile_dissect("%{b} %{?c} %{d}")("foo bar baz") == {"b": "foo", "d": "baz"}
    assert compile_dissect("%{} %{b} %{} %{d}")("x b c d") == {"b": "b", "d": "d"}


def test_dissect_append_with_order_and_separator() -> None:
    assert compile_dissect("%{+b} %{c} %{+b} %{d} %{+b}")("foo 1 bar 2 baz") == {
        "b": "foobarbaz",
        "c": "1",
        "d": "2",
    }
    assert compile_dissect("%{+b/3} %{c} %{+b/2} %{d} %{+b/1}")("foo 1 bar 2 baz")["b"] == (
        "bazbarfoo"
    )
    assert compile_dissect("%{+b} %{c} %{+b} %{d} %{+b}", ",")("foo 1 bar 2 baz")["b"] == (
        "foo,bar,baz"
    )
    assert compile_dissect("%{a} %{+a}")("x y") == {"a": "xy"}


def test_dissect_right_padding_skips_repeated_delimiters() -> None:
    assert compile_dissect("%{b->} %{c}")("foo           bar") == {"b": "foo", "c": "bar"}


def test_dissect_consecutive_delimiters_give_empty_values() -> None:
    assert compile_dissect("%{a},%{b},%{c},%{d}")("foo,,,") == {
        "a": "foo",
        "b": "",
        "c": "",
        "d": "",
    }


def test_dissect_leading_and_trailing_delimiters_must_match() -> None:
    dissect = compile_dissect("Connected to %{server_ip}")
    assert dissect("Connected to 10.1.0.1") == {"server_ip": "10.1.0.1"}
    assert dissect("connected to 10.1.0.1") is None
    assert dissect("Connected to ") is None
    assert compile_dissect("%{b} %{c} baz")("foo bar") is None


def test_dissect_repeated_plain_key_keeps_the_last_value() -> None:
    assert compile_dissect("%{foo} %{foo}")("Georgi1 Facello") == {"foo": "Facello"}


def test_dissect_of_elastics_aws_rules() -> None:
    dissect = compile_dissect(
        "{%{?Esql.aws_cloudtrail_request_parameters_service_code_key}="
        "%{Esql.aws_cloudtrail_request_parameters_service_code}, %{?quota_code_key}="
        "%{Esql.aws_cloudtrail_request_parameters_quota_code}}"
    )
    assert dissect("{serviceCode=ec2, quotaCode=L-1216C47A}") == {
        "Esql.aws_cloudtrail_request_parameters_service_code": "ec2",
        "Esql.aws_cloudtrail_request_parameters_quota_code": "L-1216C47A",
    }
    key = compile_dissect("%{}static/js/%{Esql.aws_cloudtrail_request_parameters_object_key}")
    assert key("bucket/static/js/app.js") == {
        "Esql.aws_cloudtrail_request_parameters_object_key": "app.js"
    }


@pytest.mark.parametrize("pattern", ["", " ", "no fields", "%{}", "%{?a}"])
def test_dissect_refuses_patterns_without_keys(pattern: str) -> None:
    with pytest.raises(PatternError, match="Invalid pattern for dissect"):
        compile_dissect(pattern)


def test_dissect_refuses_reference_keys_as_es_ql_does() -> None:
    with pytest.raises(PatternError, match="Reference keys not supported"):
        compile_dissect("%{*a}:%{&a}")


@pytest.mark.parametrize("pattern", ["%{+?a}", "%{a/2}", "%{+}"])
def test_dissect_refuses_bad_keys(pattern: str) -> None:
    with pytest.raises(PatternError, match="key"):
        compile_dissect(pattern)


def test_dissect_on_hostile_values_is_linear() -> None:
    dissect = compile_dissect("%{a}, %{b}, %{c}}")
    assert dissect("x, y, " + "z," * (MB // 2)) is None
    assert dissect("," * MB) is None


def test_dissect_consecutive_delimiters_can_fill_the_last_keys_as_elastic_does() -> None:
    # Elastic's scan keeps matching the repeated delimiter and hands out the following keys
    # empty values, so the last key's own delimiter is never looked for.
    assert compile_dissect("%{a}, %{b}, %{c}}")(", , , , ") == {"a": "", "b": "", "c": ""}


# -------------------------------------------------------- RE2 translation vs backtracking engine

_ours = functools.cache(compile_grok)
_reference = functools.cache(_backtracking_reference)

_RE2_GROK_PATTERNS = [
    "%{WORD:a} %{WORD:b}",
    "%{WORD:a}",
    "%{WORD:a}-%{WORD:b}",
    "x%{WORD:a}",
    "%{NUMBER:n}",
    "%{NUMBER:n} %{WORD:w}",
    "a%{NUMBER:n}",
    "%{INT:i}:%{NUMBER:n}",
    "%{INT:i}\\.%{NUMBER:n}",
    "%{IPV4:ip}",
    "%{IPV4:ip} %{WORD:w}",
    "%{POSINT:p}",
    "%{NONNEGINT:p}x",
    "%{BASE16NUM:h}",
    "%{TIMESTAMP_ISO8601:t}",
    "%{YEAR:y}-%{MONTHNUM:m}",
    "%{TIME:t}",
    "%{IP:ip}",
    "%{IPORHOST:h}",
    "%{HOSTNAME:h}",
    "%{EMAILADDRESS:e}",
    "%{IP:ip} %{WORD:w}",
    "%{HOSTPORT:hp}",
    "%{WORD:w}|%{NUMBER:n}",
    "(?<a>%{WORD}|x)",
    "%{WORD:a}?x",
]


@pytest.mark.parametrize("pattern", _RE2_GROK_PATTERNS)
def test_grok_patterns_with_lookarounds_translate_to_re2(pattern: str) -> None:
    assert compile_grok(pattern).columns


@pytest.mark.parametrize("pattern", _RE2_GROK_PATTERNS)
@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet="ab1209.+-: xé_\nT@%f", max_size=24))
def test_grok_re2_translation_agrees_with_the_backtracking_engine(pattern: str, text: str) -> None:
    assert _ours(pattern)(text) == _reference(pattern)(text)


# ----------------------------------------------------------------------------------- edge cases


def test_rlike_characters_special_elsewhere_are_literal_in_lucene() -> None:
    assert rlike("(?:a)")("?:a") is True
    assert rlike("*a")("*a") is True
    assert rlike("{x")("{x") is True


def test_grok_word_uses_unicode_word_characters_like_joni() -> None:
    assert compile_grok("%{WORD:w}")("Zürich city") == {"w": "Zürich"}


def test_grok_dot_stops_at_newline_and_anchors_are_per_line() -> None:
    assert compile_grok("(?<a>.+)")("ab\ncd") == {"a": "ab"}
    assert compile_grok("^%{WORD:a}$")("x y\nfoo") == {"a": "foo"}


def test_grok_without_semantic_captures_nothing() -> None:
    grok = compile_grok("%{WORD} %{WORD:last}")
    assert grok.columns == (("last", "keyword"),)
    assert grok("Georgi Facello") == {"last": "Facello"}


def test_grok_number_too_large_for_its_type_is_null() -> None:
    assert compile_grok("%{NUMBER:n:int}")("99999999999") == {"n": None}
    assert compile_grok("%{NUMBER:n:long}")("99999999999") == {"n": 99999999999}


def test_grok_refuses_a_word_boundary_that_depends_on_the_path_taken() -> None:
    # whether the second WORD may start depends on whether \s* matched anything: only a
    # backtracking engine can answer that (Elastic's grok.csv-spec optionalMatchMv)
    with pytest.raises(UnsupportedPatternError, match="RE2 cannot run it exactly"):
        compile_grok("%{WORD:a}?\\s*%{WORD:b}?\\s*%{WORD:c}?")


def test_dissect_adjacent_keys_read_the_second_as_a_delimiter_as_elastic_does() -> None:
    # Elastic's key/delimiter split needs at least one character between keys, so the text
    # "%{b}" becomes the delimiter of key a.
    dissect = compile_dissect("%{a}%{b}")
    assert dissect.columns == (("a", "keyword"),)
    assert dissect("x%{b}") == {"a": "x"}


def test_dissect_trailing_delimiter_must_be_found() -> None:
    dissect = compile_dissect("%{a}.")
    assert dissect("x.") == {"a": "x"}
    assert dissect("x") is None


def test_dissect_leading_delimiter_needs_more_text_after_it() -> None:
    dissect = compile_dissect("foo %{a}")
    assert dissect("foo ") is None
    assert dissect("foo bar") == {"a": "bar"}


def test_dissect_non_ascii_delimiters_and_values() -> None:
    assert compile_dissect("%{a} ü %{b}")("x ü ÿ") == {"a": "x", "b": "ÿ"}


def test_dissect_right_padding_on_the_last_key() -> None:
    assert compile_dissect("%{a} %{b->}")("x y") == {"a": "x", "b": "y"}


@pytest.mark.parametrize(
    "pattern", ["^%{WORD:a}$", "^%{NUMBER:n}", "%{IPV4:ip}$", "\\A%{WORD:a}", "%{WORD:a}\\z"]
)
@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet="ab1.9 \n", max_size=16))
def test_grok_anchored_patterns_agree_with_the_backtracking_engine(pattern: str, text: str) -> None:
    assert _ours(pattern)(text) == _reference(pattern)(text)


@pytest.mark.parametrize(
    ("pattern", "separator", "text", "expected"),
    [
        ("%{x->} %{y} %{z}", "", "one      two three", {"x": "one", "y": "two", "z": "three"}),
        ("%{x->},%{y}", "", "one,,,,two", {"x": "one", "y": "two"}),
        ("%{x} %{y}%{z} %{w}", "", "one two three", None),
        ("%{x} %{y} %{+y} %{z}", " ", "a b c d", {"x": "a", "y": "b c", "z": "d"}),
        ("%{x}====>%{y}", "", "a====>b c", {"x": "a", "y": "b c"}),
        ("%{x} ¶ %{y}¶%{z}€%{w}", "", "a ¶ b¶c€d", {"x": "a", "y": "b", "z": "c", "w": "d"}),
        ("%{+x} %{x} %{+x} %{y}", " ", "May 5 2020 z", {"x": "May 5 2020", "y": "z"}),
        ("%{+x/1} %{x} %{+x/2} %{y}", " ", "May 5 2020 z", {"x": "5 May 2020", "y": "z"}),
        ("%{+x/2} %{+x/4} %{+x/1} %{+x/3}", "-", "b d a c", {"x": "a-b-c-d"}),
        ("%{x->}  %{y->}--%{z}", "", "a      b------c", {"x": "a", "y": "b", "z": "c"}),
        ("%{->}-%{x}", "", "----7", {"x": "7"}),
        ("%{?pad->}-%{x}", "", "----7", {"x": "7"}),
        ("%{a},%{b},%{c},%{d}", "", "1,,3,", {"a": "1", "b": "", "c": "3", "d": ""}),
        ("%{x}{\n}%{y}", "", "a{\n}b", {"x": "a", "y": "b"}),
        ("HOST[%{x}] %{y}", "", "99 HOST[a] b", None),
        ("%{x} %{y} %{z}", "", "a:b:c", None),
        ("%{x} %%{y},%{z}", "", "a %b,c", {"x": "a", "y": "b", "z": "c"}),
        ("%tag %{x}", "", "%tag v", {"x": "v"}),
        ("%{x} %{->}", "", "a  b      ", {"x": "a"}),
        ("%{x} %{->?skip}", "", "a  b      ", {"x": "a"}),
        ("%{x} %{?s} %{?s}", "", "a  b  c", {"x": "a"}),
    ],
)
def test_dissect_follows_elastics_scan(
    pattern: str, separator: str, text: str, expected: dict[str, str] | None
) -> None:
    assert compile_dissect(pattern, separator)(text) == expected


def test_dissect_refuses_unpaired_reference_keys_as_elastic_does() -> None:
    with pytest.raises(PatternError, match="invalid key/reference associations"):
        compile_dissect("%{a} %{&a}")
