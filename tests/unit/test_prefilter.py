"""The byte prefilter never skips a message a rule matches, for Avro and for (escaped) JSON."""

import io
import json
import random
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer
from hypothesis import find, given, settings
from hypothesis import strategies as st

from consumer.cloudtrail.record import READER_SCHEMA, json_to_avro
from consumer.cloudtrail.types import CloudTrailRecord
from consumer.rules import CombinedPrefilter, CompiledQuery, Prefilter, compile_query, load_rules
from consumer.rules.prefilter import BatchScreen
from consumer.rules.screen import HAVE_HYPERSCAN, AhoCorasick, Hyperscan, LiteralIndex

RULES = {rule.name: rule.query for rule in load_rules()}
SEED = RULES["AWS IAM User Created Access Keys For Another User"]
HARDENED = RULES["AWS IAM Access Key Created For Another User (Hardened)"]


def query(condition: str) -> CompiledQuery:
    return compile_query(f"from logs-* | where {condition}")


QUERIES = [
    SEED,
    HARDENED,
    query('event.action IN ("CreateAccessKey", "UpdateAccessKey", null)'),
    query('event.action IN ("UpdateAccessKey") OR event.provider == "sts.amazonaws.com"'),
    query('event.action LIKE "Create*Key" AND event.provider == "iam.amazonaws.com"'),
    query('event.action == "Create/Key\\"x" OR event.provider == "é-service"'),
    query('NOT event.action == "CreateAccessKey"'),
    query('event.provider == "iam.amazonaws.com" OR user.name == "alice"'),
    query('TO_LOWER(event.action) == "createaccesskey"'),
    query('aws.cloudtrail.error_code == "alice" AND user_agent.original LIKE "*é*"'),
    compile_query(
        'from logs-* | eval event.action = "CreateAccessKey"'
        ' | where event.action == "CreateAccessKey" and event.provider == "iam.amazonaws.com"'
    ),
    compile_query(
        "from logs-* | rename event.provider AS p | where p == \"iam.amazonaws.com\""
        ' and event.action LIKE ("Create*", "Update*Key")'
    ),
    compile_query(
        'from logs-* | eval a = TO_LOWER(event.action) | where a == "createaccesskey"'
    ),
    compile_query(
        'from logs-* | eval p = event.provider | drop event.provider'
        ' | rename p AS event.provider | where event.provider == "sts.amazonaws.com"'
    ),
    query('true IN (STARTS_WITH(event.action, "Create"), event.provider == "sts.amazonaws.com")'),
    compile_query('from logs-* | sort event.action | where event.action NOT LIKE ("Get*")'),
]
PAIRS = [(compiled, Prefilter.for_query(compiled)) for compiled in QUERIES]
COMBINED = CombinedPrefilter.for_queries([SEED, HARDENED, QUERIES[4], QUERIES[5]])
SEED_ONLY = CombinedPrefilter.for_queries([SEED])
"""The detector's default: one rule, whose checker is specialised to two substring tests."""
COMBINED_QUERIES = [SEED, HARDENED, QUERIES[4], QUERIES[5]]

SOURCES = ["iam.amazonaws.com", "sts.amazonaws.com", "s3.amazonaws.com", "é-service"]
ACTIONS = ["CreateAccessKey", "UpdateAccessKey", 'Create/Key"x', "createaccesskey", "GetObject"]
NAMES = ["alice", "Alice", "bob", "IAMUser", "Root", "AssumedRole", "-", "", "none", "agent é"]
TEXT = st.one_of(
    st.sampled_from(SOURCES + ACTIONS + NAMES),
    st.text(st.characters(codec="utf-8"), max_size=8),
)
OPTIONAL_TEXT = st.none() | TEXT
NAME = st.sampled_from(NAMES[:6])
IDENTITY = st.fixed_dictionaries({"type": NAME | OPTIONAL_TEXT, "userName": NAME | OPTIONAL_TEXT})
REQUEST = st.none() | st.fixed_dictionaries({"userName": NAME | OPTIONAL_TEXT})
ANY_RECORD = st.fixed_dictionaries(
    {
        "eventVersion": st.just("1.08"),
        "eventSource": st.sampled_from(SOURCES) | TEXT,
        "eventName": st.sampled_from(ACTIONS) | TEXT,
    },
    optional={
        "errorCode": OPTIONAL_TEXT,
        "errorMessage": OPTIONAL_TEXT,
        "userAgent": OPTIONAL_TEXT,
        "userIdentity": IDENTITY,
        "requestParameters": REQUEST,
    },
)
NEAR_MATCH = st.fixed_dictionaries(
    {
        "eventVersion": st.just("1.08"),
        "eventSource": st.sampled_from([SOURCES[0]] * 4 + SOURCES[1:]),
        "eventName": st.sampled_from([ACTIONS[0]] * 4 + ACTIONS[1:]),
        "userIdentity": IDENTITY,
        "requestParameters": st.fixed_dictionaries({"userName": NAME | OPTIONAL_TEXT}),
    },
    optional={"errorCode": st.sampled_from(["-", "", "Denied"]), "userAgent": OPTIONAL_TEXT},
)
RECORDS = ANY_RECORD | NEAR_MATCH


def json_string(text: str, rnd: random.Random, escape_rate: float, ensure_ascii: bool) -> str:
    """A JSON string literal for `text`, spelling characters in the ways JSON allows."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "/" and rnd.random() < 0.5:
            out.append("\\/")
        elif ord(char) < 0x20 or (ensure_ascii and not char.isascii()):
            out.append(json.dumps(char)[1:-1])
        elif char.isascii() and char.isalpha() and rnd.random() < escape_rate:
            out.append(f"\\u{ord(char):04x}" if rnd.random() < 0.5 else f"\\u{ord(char):04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def json_text(value: Any, rnd: random.Random, escape_rate: float, ensure_ascii: bool) -> str:
    if isinstance(value, dict):
        members = (
            json_string(key, rnd, escape_rate, ensure_ascii)
            + ":"
            + json_text(item, rnd, escape_rate, ensure_ascii)
            for key, item in value.items()
        )
        return "{" + ",".join(members) + "}"
    if isinstance(value, str):
        return json_string(value, rnd, escape_rate, ensure_ascii)
    return json.dumps(value)


def avro_bytes(record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    schemaless_writer(buffer, READER_SCHEMA, json_to_avro(record))
    return buffer.getvalue()


def from_avro(payload: bytes) -> CloudTrailRecord:
    decoded = schemaless_reader(io.BytesIO(payload), READER_SCHEMA, READER_SCHEMA)
    assert isinstance(decoded, dict)
    return decoded


def from_json(payload: bytes) -> CloudTrailRecord:
    return json_to_avro(json.loads(payload.decode("utf-8")))


def encodings(
    record: dict[str, Any], rnd: random.Random, escape_rate: float, ensure_ascii: bool
) -> list[tuple[bytes, bool, CloudTrailRecord]]:
    """The record as the service receives it, Avro and JSON: (payload, text_format, decoded)."""
    binary = avro_bytes(record)
    text = json_text(record, rnd, escape_rate, ensure_ascii).encode()
    return [(binary, False, from_avro(binary)), (text, True, from_json(text))]


def assert_each_prefilter_keeps_its_matches(
    pairs: list[tuple[CompiledQuery, Prefilter]],
    payload: bytes, text_format: bool, decoded: CloudTrailRecord,
) -> None:
    for compiled, prefilter in pairs:
        if compiled.matches(decoded):
            assert prefilter.may_match(payload, text_format), compiled.query


@settings(max_examples=500, deadline=None)
@given(
    record=RECORDS,
    rnd=st.randoms(use_true_random=False),
    escape_rate=st.sampled_from([0.0, 0.2, 1.0]),
    ensure_ascii=st.booleans(),
)
def test_prefilter_never_skips_a_record_a_rule_matches(
    record: dict[str, Any], rnd: random.Random, escape_rate: float, ensure_ascii: bool
) -> None:
    for payload, text_format, decoded in encodings(record, rnd, escape_rate, ensure_ascii):
        assert_each_prefilter_keeps_its_matches(PAIRS, payload, text_format, decoded)
        if any(compiled.matches(decoded) for compiled in COMBINED_QUERIES):
            assert COMBINED.may_match(payload, text_format)
        if any(compiled.matches(decoded) for compiled in MANY_QUERIES):
            assert MANY_RULES.checker(text_format)(payload)
        for combined in (COMBINED, SEED_ONLY, MANY_RULES):
            assert combined.checker(text_format)(payload) == combined.may_match(
                payload, text_format
            )


def test_generated_records_include_matches_so_the_property_is_not_vacuous() -> None:
    found = find(RECORDS, lambda record: SEED.matches(json_to_avro(record)))
    assert SEED.matches(json_to_avro(found))


CROSS_USER_KEY = {
    "eventVersion": "1.08",
    "eventSource": "iam.amazonaws.com",
    "eventName": "CreateAccessKey",
    "userIdentity": {"type": "IAMUser", "userName": "alice"},
    "requestParameters": {"userName": "bob"},
}
S3_READ = {
    "eventVersion": "1.08",
    "eventSource": "s3.amazonaws.com",
    "eventName": "GetObject",
    "userIdentity": {"type": "IAMUser", "userName": "alice"},
    "requestParameters": {"bucketName": "logs", "key": "a/b"},
}
SEED_PREFILTER = Prefilter.for_query(SEED)


def test_seed_prefilter_requires_provider_and_action_bytes() -> None:
    assert SEED_PREFILTER.binary_groups == ((b"iam.amazonaws.com",), (b"CreateAccessKey",))
    assert SEED_PREFILTER.text_groups == SEED_PREFILTER.binary_groups


def test_avro_event_of_another_service_is_skipped_and_the_match_is_not() -> None:
    assert not SEED_PREFILTER.may_match(avro_bytes(S3_READ), text_format=False)
    assert SEED_PREFILTER.may_match(avro_bytes(CROSS_USER_KEY), text_format=False)


def test_plain_json_event_of_another_service_is_skipped() -> None:
    assert not SEED_PREFILTER.may_match(json.dumps(S3_READ).encode(), text_format=True)


def test_unicode_escaped_json_of_a_matching_event_is_not_skipped() -> None:
    payload = json.dumps(CROSS_USER_KEY).replace("CreateAccessKey", "\\u0043reateAccessKey")
    assert b"CreateAccessKey" not in payload.encode()
    assert SEED.matches(from_json(payload.encode()))
    assert SEED_PREFILTER.may_match(payload.encode(), text_format=True)


def test_any_unicode_escape_in_json_disables_skipping() -> None:
    payload = json.dumps({**S3_READ, "userAgent": "agent é"}, ensure_ascii=True).encode()
    assert b"\\u00e9" in payload
    assert SEED_PREFILTER.may_match(payload, text_format=True)


def test_literal_json_may_escape_constrains_only_binary_payloads() -> None:
    prefilter = Prefilter.for_query(query('event.action == "a/b" and event.provider == "p"'))
    assert prefilter.binary_groups == ((b"a/b",), (b"p",))
    assert prefilter.text_groups == ((b"p",),)
    assert prefilter.may_match(b'{"eventName":"a\\/b","eventSource":"p"}', text_format=True)


def test_and_unions_groups_and_or_keeps_what_each_branch_implies() -> None:
    prefilter = Prefilter.for_query(
        query('(event.action == "A" or event.action IN ("B", "C")) and event.provider == "p"')
    )
    assert prefilter.binary_groups == ((b"A", b"B", b"C"), (b"p",))


def test_or_of_two_conjunctions_keeps_pairwise_merged_groups() -> None:
    prefilter = Prefilter.for_query(
        query(
            '(event.action == "A" and event.provider == "p") or '
            '(event.action == "B" and event.provider == "q")'
        )
    )
    assert set(prefilter.binary_groups) == {
        (b"A", b"B"),
        (b"A", b"q"),
        (b"B", b"p"),
        (b"p", b"q"),
    }


def test_like_requires_each_literal_run() -> None:
    prefilter = Prefilter.for_query(query('event.action LIKE "Create*Key?\\\\*"'))
    assert prefilter.binary_groups == ((b"Create",), (b"Key",), (b"*",))


def test_conditions_that_imply_no_bytes_give_no_constraint() -> None:
    for condition in (
        'NOT event.action == "A"',
        'event.action != "A"',
        'event.action == "A" OR user.name == "bob"',
        'user.name == "bob"',
        'TO_LOWER(event.action) == "a"',
        'source.ip == "10.0.0.1"',
        'event.action RLIKE "Create.*"',
        'event.action NOT IN ("A")',
        "event.action IN (null)",
    ):
        prefilter = Prefilter.for_query(query(condition))
        assert prefilter.binary_groups == (), condition
        assert prefilter.may_match(b"", text_format=False)


def test_combined_prefilter_skips_only_when_no_rule_may_match() -> None:
    combined = CombinedPrefilter.for_queries(
        [query('event.action == "A"'), query('event.action == "B"')]
    )
    assert combined.may_match(b"..B..", text_format=False)
    assert combined.may_match(b"..A..", text_format=True)
    assert not combined.may_match(b"..C..", text_format=False)


def test_combined_prefilter_with_an_unconstrained_rule_never_skips() -> None:
    combined = CombinedPrefilter.for_queries([SEED, query('user.name == "bob"')])
    assert combined.may_match(b"nothing relevant", text_format=False)


def test_combined_prefilter_without_rules_skips_everything() -> None:
    assert not CombinedPrefilter.for_queries([]).may_match(b"anything", text_format=False)


BATCH_PREFILTERS = [COMBINED, SEED_ONLY, *(CombinedPrefilter([p]) for _, p in PAIRS)]
MULTI_PATTERNS = [AhoCorasick, *([Hyperscan] if HAVE_HYPERSCAN else [])]
"""Every multi-pattern matcher this machine has: each must be as sound as the other."""
MANY_QUERIES = [
    *COMBINED_QUERIES[:3],  # the fourth has no JSON-safe literal, which would constrain nothing
    *(query(f'event.action == "{a}"') for a in ACTIONS if '"' not in a),
    *(query(f'event.provider == "{s}" AND event.action IN ("{a}", "Key")')
      for s in SOURCES for a in ("Create", "AccessKey")),
]
MANY_RULES = CombinedPrefilter.for_queries(MANY_QUERIES)
"""More rules than `checker` tests one by one: it finds all their literals in one scan."""


@settings(max_examples=300, deadline=None)
@given(
    records=st.lists(RECORDS, max_size=8),
    rnd=st.randoms(use_true_random=False),
    escape_rate=st.sampled_from([0.0, 0.2]),
)
def test_the_batch_screen_hands_back_every_message_the_prefilter_lets_through(
    records: list[dict[str, Any]], rnd: random.Random, escape_rate: float
) -> None:
    binary = [avro_bytes(record) for record in records]
    text = [json_text(record, rnd, escape_rate, False).encode() for record in records]
    for payloads, text_format in ((binary, False), (text, True)):
        sizes = [len(payload) for payload in payloads]
        for combined in [*BATCH_PREFILTERS, MANY_RULES]:
            may_match = [i for i, p in enumerate(payloads) if combined.may_match(p, text_format)]
            if combined.batch_screen(text_format) is None:  # a rule may match any message
                assert may_match == list(range(len(payloads)))
                continue
            for screen in screens_of(combined, text_format):
                candidates = screen.candidates(payloads, sizes)
                assert candidates == sorted(set(candidates))
                assert set(may_match) <= set(candidates)


def screens_of(combined: CombinedPrefilter, text_format: bool) -> list[BatchScreen]:
    """The prefilter's batch screen once per multi-pattern matcher."""
    screens = [combined.batch_screen(text_format, matcher) for matcher in MULTI_PATTERNS]
    return [screen for screen in screens if screen is not None]


LITERALS = st.sampled_from(
    [b"Create", b"Key", b"AccessKey", b"\\u", b"\x00a", b"\x00", b"\xc3\xa9", b"ab", b"b", b""]
)
"""Literals as the prefilter derives them: UTF-8 (never 0xFF), NUL and the empty one included."""
GROUPS = st.lists(st.lists(LITERALS, min_size=1, max_size=3).map(tuple), min_size=1, max_size=3)
PAYLOAD = st.lists(LITERALS | st.just(b"\xff") | st.binary(max_size=6), max_size=6).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    prefilters=st.lists(GROUPS.map(tuple), min_size=1, max_size=6),
    payloads=st.lists(PAYLOAD, max_size=10),
    review=st.integers(1, 3),
)
def test_any_literal_groups_screen_soundly_with_every_matcher(
    prefilters: list[tuple[tuple[bytes, ...], ...]], payloads: list[bytes], review: int
) -> None:
    """Arbitrary payload bytes (0xFF, NUL, split UTF-8), NUL and empty literals, anchors re-chosen
    on the way: a message in which every group of some prefilter has a literal is a candidate."""
    for matcher in MULTI_PATTERNS:
        screen = BatchScreen(prefilters, multi_pattern=matcher)
        screen.REVIEW_EVERY = review
        for batch in (payloads, payloads[::-1], payloads[1:]):
            expected = {
                index for index, payload in enumerate(batch)
                if any(all(any(lit in payload for lit in group) for group in groups)
                       for groups in prefilters)
            }
            assert expected <= set(screen.candidates(batch, sizes_of(batch)))


@settings(max_examples=300, deadline=None)
@given(
    prefilters=st.lists(GROUPS.map(tuple), min_size=1, max_size=12),
    payload=PAYLOAD,
    text_format=st.booleans(),
)
def test_the_literal_index_judges_a_message_as_the_prefilters_do(
    prefilters: list[tuple[tuple[bytes, ...], ...]], payload: bytes, text_format: bool
) -> None:
    always = (b"\\u",) if text_format else ()
    expected = any(literal in payload for literal in always) or any(
        all(any(literal in payload for literal in group) for group in groups)
        for groups in prefilters
    )
    for matcher in MULTI_PATTERNS:
        assert LiteralIndex(prefilters, always, matcher).may_match(payload) is expected


def test_the_checker_properties_cover_the_literal_index() -> None:
    """MANY_RULES has more than INDEX_FROM prefilters, so the properties above test the index."""
    for text_format in (False, True):
        checker = MANY_RULES.checker(text_format)
        assert isinstance(getattr(checker, "__self__", None), LiteralIndex)


def test_every_matcher_finds_the_same_candidates_on_many_rules() -> None:
    payloads = [f"iam.amazonaws.com {action} {n}".encode() for n in range(30) for action in ACTIONS]
    screens = [MANY_RULES.batch_screen(False, matcher) for matcher in MULTI_PATTERNS]
    found = [screen.candidates(payloads, sizes_of(payloads)) for screen in screens if screen]
    expected = [i for i, p in enumerate(payloads) if MANY_RULES.may_match(p, text_format=False)]
    assert found == [expected] * len(MULTI_PATTERNS)
    assert expected, "the workload holds matches"


def seed_screen() -> BatchScreen:
    screen = SEED_ONLY.batch_screen(text_format=False)
    assert screen is not None
    return screen


def sizes_of(payloads: list[bytes]) -> list[int]:
    return [len(payload) for payload in payloads]


def test_a_literal_split_across_two_messages_is_no_candidate_and_hides_none() -> None:
    payloads = [
        b"..iam.amazonaws.com..CreateAcc", b"essKey..", b"iam.amazonaws.com CreateAccessKey"
    ]
    assert seed_screen().candidates(payloads, sizes_of(payloads)) == [2]
    assert [SEED_ONLY.may_match(p, text_format=False) for p in payloads] == [False, False, True]


def test_the_screen_anchors_on_the_literal_that_is_rarer_in_the_traffic() -> None:
    """Every message is an IAM call, one is CreateAccessKey: one candidate, not a hundred."""
    payloads = [b"iam.amazonaws.com ListUsers"] * 99 + [b"iam.amazonaws.com CreateAccessKey"]
    assert seed_screen().candidates(payloads, sizes_of(payloads)) == [99]
    payloads = [b"CreateAccessKey s3.amazonaws.com"] * 99 + [b"iam.amazonaws.com CreateAccessKey"]
    assert seed_screen().candidates(payloads, sizes_of(payloads)) == [99]


def test_a_json_message_with_a_unicode_escape_is_always_a_candidate() -> None:
    screen = SEED_ONLY.batch_screen(text_format=True)
    assert screen is not None
    payloads = [b'{"a":"b"}', b'{"eventName":"\\u0043reateAccessKey"}', b'{"c":"d"}']
    assert screen.candidates(payloads, sizes_of(payloads)) == [1]


def test_no_batch_screen_when_a_rule_may_match_any_message() -> None:
    assert CombinedPrefilter.for_queries([SEED, query('user.name == "bob"')]).batch_screen(
        text_format=False
    ) is None


def test_a_where_on_a_computed_column_derives_no_literal_for_the_field_it_shadows() -> None:
    shadowed = QUERIES[10]
    groups = Prefilter.for_query(shadowed).binary_groups
    assert groups == ((b"iam.amazonaws.com",),)
    record = json_to_avro({**CROSS_USER_KEY, "eventName": "DeleteUser"})
    assert shadowed.matches(record)


def test_a_renamed_source_column_still_derives_its_literals() -> None:
    groups = Prefilter.for_query(QUERIES[11]).binary_groups
    assert set(groups) == {(b"iam.amazonaws.com",), (b"Create", b"Update"), (b"Create", b"Key")}


def test_a_column_copied_from_a_field_derives_nothing() -> None:
    assert Prefilter.for_query(QUERIES[13]).binary_groups == ()
    assert Prefilter.for_query(QUERIES[12]).binary_groups == ()
def test_a_literal_holding_the_separator_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="0xFF"):
        BatchScreen([((b"a\xffb",),)])
