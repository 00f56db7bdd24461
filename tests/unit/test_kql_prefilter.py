"""The byte prefilter stays sound for KQL rules: it never skips a message a KQL query matches,
and it derives literals only from exact and wildcard tests on raw keyword fields."""

import random
from typing import Any

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from consumer.cloudtrail.record import json_to_avro
from consumer.rules import CombinedPrefilter, Prefilter
from consumer.rules.kql import KqlError, compile_kql
from tests.unit.test_prefilter import (
    RECORDS,
    assert_each_prefilter_keeps_its_matches,
    encodings,
)

QUERIES = [
    compile_kql(text)
    for text in (
        "event.provider: iam.amazonaws.com and event.action: (CreateAccessKey or UpdateAccessKey)",
        "event.action: Create*Key and not user.name: alice",
        r'event.action: "Create/Key\"x" or event.provider: é-service',
        "event.provider:(iam.amazonaws.com or sts.amazonaws.com) and event.action:*Access*",
        "user_agent.original: *é* and aws.cloudtrail.error_code: alice",
        "not event.action: CreateAccessKey",
        "event.action:(CreateAccessKey and not createaccesskey)",
        "user_agent.original.text: agent or event.action: GetObject",
        "event.action:* and event.provider:iam.amazonaws.com",
        r"event.action:Create\*Key or event.action:Create?Key",
        "event.*o*: CreateAccessKey",
        "event.a*: CreateAccessKey",
        "user.name: (alice or Alice) and aws.cloudtrail.user_identity.type: IAMUser",
        "aws.cloudtrail.user_identity.type: IAMUser and user.name: BedrockAPIKey-*"
        " and not event.provider: bedrock.amazonaws.com",
        "user.name.text: alice or user.name: bob",
    )
]
PAIRS = [(query, Prefilter.for_query(query)) for query in QUERIES]
COMBINED = CombinedPrefilter.for_queries([*QUERIES[:5], *QUERIES[12:14]])


@settings(max_examples=400, deadline=None)
@given(
    record=RECORDS,
    rnd=st.randoms(use_true_random=False),
    escape_rate=st.sampled_from([0.0, 0.2, 1.0]),
    ensure_ascii=st.booleans(),
)
def test_prefilter_never_skips_a_record_a_kql_rule_matches(
    record: dict[str, Any], rnd: random.Random, escape_rate: float, ensure_ascii: bool
) -> None:
    for payload, text_format, decoded in encodings(record, rnd, escape_rate, ensure_ascii):
        assert_each_prefilter_keeps_its_matches(PAIRS, payload, text_format, decoded)
        if any(compiled.matches(decoded) for compiled in [*QUERIES[:5], *QUERIES[12:14]]):
            assert COMBINED.may_match(payload, text_format)


def test_a_field_wildcard_reaching_a_date_field_fails_as_elasticsearch_does() -> None:
    with pytest.raises(KqlError, match=r"not a valid date value for field 'event\.ingested'"):
        compile_kql("event.*: CreateAccessKey")


def test_generated_records_include_kql_matches_so_the_property_is_not_vacuous() -> None:
    found = find(RECORDS, lambda record: QUERIES[0].matches(json_to_avro(record)))
    assert QUERIES[0].matches(json_to_avro(found))


@pytest.mark.parametrize(
    ("index", "groups"),
    [
        (0, ((b"CreateAccessKey", b"UpdateAccessKey"), (b"iam.amazonaws.com",))),  # action 1st
        (1, ((b"Create",), (b"Key",))),
        (3, ((b"iam.amazonaws.com", b"sts.amazonaws.com"), (b"Access",))),
        (5, ()),  # a negation implies no literal
        (7, ()),  # a text-field match implies no literal, so neither does the OR
        (8, ((b"iam.amazonaws.com",),)),  # exists implies nothing, the provider does
        (9, ((b"Create*Key", b"Create?Key"),)),  # escaped * and KQL's ? are literal
        (10, ()),  # event.*o* also reaches event.outcome, which has no raw bytes
        (11, ((b"CreateAccessKey",),)),  # event.a* is event.action alone
        (12, ((b"Alice", b"alice"), (b"IAMUser",))),  # userIdentity strings are verbatim too
        (13, ((b"IAMUser",), (b"BedrockAPIKey-",))),
        (14, ()),  # the analysed text multi-field implies no literal
    ],
)
def test_literals_come_from_exact_and_wildcard_tests_on_raw_keywords(
    index: int, groups: tuple[tuple[bytes, ...], ...]
) -> None:
    assert Prefilter.for_query(QUERIES[index]).binary_groups == groups
