"""ES|QL STATS ... BY as mergeable partial states (consumer/rules/esql/aggregate.py)."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.cloudtrail.decode import JsonDecoder
from consumer.cloudtrail.record import json_to_avro
from consumer.rules.detector import Detector
from consumer.rules.esql import (
    Call,
    Compare,
    Const,
    EsqlError,
    RowField,
    UnsupportedEsqlError,
    compile_query,
)
from consumer.rules.esql.aggregate import (
    AggregatingQuery,
    AggState,
    GroupKey,
    compile_aggregating_query,
    compile_esql,
)
from consumer.rules.loader import LoadedRule, parse_rule
from tests.conftest import shared_path
from tests.support.events import create_access_key, event

FIELDS = {
    name: RowField(name, kind, lambda row, name=name: row.get(name))
    for name, kind in (
        ("user", "keyword"), ("action", "keyword"), ("n", "integer"), ("big", "long"),
        ("x", "double"), ("ts", "date"), ("ip", "ip"), ("ok", "boolean"), ("tags", "keyword"),
    )
}  # fmt: skip
T0 = 1_700_000_000_000


def table(query: str, rows: list[dict[str, Any]], now_ms: int = T0) -> list[dict[str, Any]]:
    compiled = compile_aggregating_query(query, FIELDS, metadata={})
    result = compiled.run(rows, now_ms)
    return [dict(zip(compiled.columns, row, strict=True)) for row in result.rows]


ROWS = [
    {"user": "alice", "action": "Get", "n": 1, "x": 0.5, "ts": "2023-11-14T22:13:20Z",
     "ip": "10.0.0.2", "ok": True, "tags": ["b", "a"]},
    {"user": "alice", "action": "Put", "n": 3, "x": 1.5, "ts": "2023-11-14T22:20:00Z",
     "ip": "10.0.0.1", "ok": False, "tags": "a"},
    {"user": "bob", "action": "Get", "n": 5, "ts": "2023-11-14T23:00:00Z", "ip": "::1"},
    {"action": "List", "n": 7},
]  # fmt: skip


def test_aggregates_come_first_then_the_by_columns_with_a_null_group_of_their_own() -> None:
    rows = table(
        "FROM t | STATS c = COUNT(*), cn = COUNT(n), v = VALUES(action), lo = MIN(ts), "
        "hi = MAX(ip), s = SUM(n), d = COUNT_DISTINCT(action) BY user | SORT user",
        ROWS,
    )
    assert rows == [
        {"c": 2, "cn": 2, "v": ["Get", "Put"], "lo": "2023-11-14T22:13:20.000Z",
         "hi": "10.0.0.2", "s": 4, "d": 2, "user": "alice"},
        {"c": 1, "cn": 1, "v": "Get", "lo": "2023-11-14T23:00:00.000Z", "hi": "::1", "s": 5,
         "d": 1, "user": "bob"},
        {"c": 1, "cn": 1, "v": "List", "lo": None, "hi": None, "s": 7, "d": 1, "user": None},
    ]  # fmt: skip


def test_a_multi_valued_by_column_puts_the_row_in_one_group_per_value() -> None:
    rows = table("FROM t | STATS c = COUNT(*), users = VALUES(user) BY tags | SORT tags", ROWS)
    assert rows == [
        {"c": 2, "users": "alice", "tags": "a"},
        {"c": 1, "users": "alice", "tags": "b"},
        {"c": 2, "users": "bob", "tags": None},
    ]


def test_count_of_a_multi_valued_column_counts_its_values() -> None:
    assert table("FROM t | STATS c = COUNT(tags), d = COUNT_DISTINCT(tags)", ROWS) == [
        {"c": 3, "d": 2}
    ]


def test_each_aggregate_sees_only_the_rows_its_where_clause_keeps() -> None:
    rows = table(
        'FROM t | STATS gets = COUNT(*) WHERE action == "Get", '
        'first_put = MIN(ts) WHERE action == "Put", none = MAX(n) WHERE n > 100, '
        "avg = AVG(n)::LONG WHERE user IS NOT NULL",
        ROWS,
    )
    assert rows == [
        {"gets": 2, "first_put": "2023-11-14T22:20:00.000Z", "none": None, "avg": 3}
    ]


def test_stats_without_by_gives_one_row_even_over_no_rows() -> None:
    rows = table("FROM t | STATS c = COUNT(*), s = SUM(n), v = VALUES(user)", [])
    assert rows == [{"c": 0, "s": None, "v": None}]
    assert table("FROM t | STATS c = COUNT(*) BY user", []) == []


def test_expressions_over_aggregates_and_by_expressions() -> None:
    rows = table(
        "FROM t | WHERE n IS NOT NULL | STATS spread = MAX(n) - MIN(n), "
        "share = SUM(n) / TO_DOUBLE(COUNT(*)), calls = MV_COUNT(VALUES(action)) "
        "BY hour = DATE_TRUNC(1 hour, ts) | SORT hour NULLS LAST",
        ROWS,
    )
    assert rows == [
        {"spread": 2, "share": 2.0, "calls": 2, "hour": "2023-11-14T22:00:00.000Z"},
        {"spread": 0, "share": 5.0, "calls": 1, "hour": "2023-11-14T23:00:00.000Z"},
        {"spread": 0, "share": 7.0, "calls": 1, "hour": None},
    ]


def test_post_stats_commands_run_on_the_aggregated_rows() -> None:
    rows = table(
        "FROM t | STATS c = COUNT(*), s = SUM(x) BY user | WHERE c >= 1 AND user IS NOT NULL "
        "| EVAL heavy = c > 1 | RENAME user AS who | KEEP who, heavy, s | SORT who DESC "
        "| LIMIT 1",
        ROWS,
    )
    assert rows == [{"who": "bob", "heavy": False, "s": None}]


def test_now_is_the_run_time() -> None:
    query = "FROM t | STATS last = MAX(ts) | WHERE last >= NOW() - 1 hour"
    last = 1_700_002_800_000  # 2023-11-14T23:00:00Z
    assert table(query, ROWS, now_ms=last + 3_600_000) == [{"last": "2023-11-14T23:00:00.000Z"}]
    assert table(query, ROWS, now_ms=last + 3_600_001) == []


def test_a_second_stats_aggregates_the_rows_of_the_first() -> None:
    rows = table(
        "FROM t | STATS c = COUNT(*) BY user | EVAL many = c > 1 "
        "| STATS users = COUNT(user), total = SUM(c) BY many | SORT many",
        ROWS,
    )
    assert rows == [{"users": 1, "total": 2, "many": False}, {"users": 1, "total": 2, "many": True}]


def test_now_before_stats_is_the_time_rows_are_taken_at() -> None:
    query = compile_aggregating_query(
        "FROM t | WHERE ts >= NOW() - 1 hour | STATS c = COUNT(*)", FIELDS, metadata={}
    )
    assert query.reads_now_before_stats
    at = 1_699_999_200_000  # 2023-11-14T22:00:00Z, 13m20s before ROWS[0]
    assert query.rows(ROWS[0], now_ms=at + 3_600_000) == [{}]
    assert query.rows(ROWS[0], now_ms=at + 2 * 3_600_000) == []
    assert not compile_aggregating_query(
        "FROM t | STATS c = MAX(ts) | WHERE c < NOW()", FIELDS, metadata={}
    ).reads_now_before_stats


def test_median_percentile_and_top() -> None:
    rows = table(
        "FROM t | STATS m = MEDIAN(n), p = PERCENTILE(n, 25), top = TOP(n, 2, \"desc\"), "
        "low = TOP(user, 1, \"asc\")",
        ROWS,
    )
    assert rows == [{"m": 4.0, "p": 2.5, "top": [7, 5], "low": "alice"}]
    spread = table("FROM t | STATS v = VARIANCE(n), sd = STD_DEV(n), p = PRESENT(x)", ROWS)
    assert spread == [{"v": 5.0, "sd": 5.0**0.5, "p": True}]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("FROM t | LIMIT 5 | STATS c = COUNT(*)", "LIMIT before STATS"),
        ("FROM t | STATS s = WEIGHTED_AVG(n, x)", "aggregate function WEIGHTED_AVG is not"),
        ("FROM .alerts-security.* | STATS c = COUNT(*)", "reads Kibana's alerts"),
        ("FROM t | STATS v = VALUES(nope)", "field 'nope' is not derived"),
    ],
)
def test_what_we_cannot_run_is_refused_with_its_reason(query: str, reason: str) -> None:
    with pytest.raises(UnsupportedEsqlError, match=reason):
        compile_aggregating_query(query, FIELDS, metadata={})


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("FROM t | STATS c = n + 1", "must be an aggregate function or use one"),
        ("FROM t | STATS c = MAX(COUNT(*))", "inside aggregate function MAX"),
        ("FROM t | STATS c = COUNT(*) + n BY user", "must be a BY group"),
        ("FROM t | STATS s = SUM(user)", "SUM needs numbers, found keyword"),
        ("FROM t | STATS c = COUNT(*) BY user | KEEP action", "unknown column 'action'"),
    ],
)
def test_wrong_stats_are_errors(query: str, message: str) -> None:
    with pytest.raises(EsqlError, match=message) as raised:
        compile_aggregating_query(query, FIELDS, metadata={})
    assert not isinstance(raised.value, UnsupportedEsqlError)


def test_rows_carry_only_the_columns_stats_reads() -> None:
    query = compile_aggregating_query(
        'FROM t | WHERE action != "List" | EVAL u = TO_UPPER(user) '
        "| STATS c = COUNT(*) WHERE ok, v = VALUES(u) BY ip",
        FIELDS,
        metadata={},
    )
    assert query.rows(ROWS[0]) == [{"ok": True, "u": "ALICE", "ip": 0xFFFF_0A00_0002}]
    assert query.rows(ROWS[3]) == []
    assert query.fields_read == {"action", "user", "ok", "ip"}
    assert query.group_by == ("ip",)
    assert query.columns == ("c", "v", "ip")


def test_mv_expand_gives_a_row_per_value_before_and_after_stats() -> None:
    rows = table(
        "FROM t | MV_EXPAND tags | STATS c = COUNT(*) BY tags, user | MV_EXPAND user "
        "| SORT tags NULLS LAST, user NULLS LAST",
        ROWS,
    )
    assert rows == [
        {"c": 2, "tags": "a", "user": "alice"},
        {"c": 1, "tags": "b", "user": "alice"},
        {"c": 1, "tags": None, "user": "bob"},
        {"c": 1, "tags": None, "user": None},
    ]


def test_a_stateless_rule_with_mv_expand_matches_when_any_row_passes() -> None:
    query = compile_query('FROM t | MV_EXPAND tags | WHERE tags == "b"', FIELDS, metadata={})
    assert query.matches(ROWS[0])
    assert query.evaluate(ROWS[0]) is not None
    assert not query.matches(ROWS[1])
    assert isinstance(query.condition, Compare)
    assert query.condition.left == Call("<computed>", (), 32), "the prefilter must not read tags"
    assert query.condition.right == Const("b", 40)


# --- partial states --------------------------------------------------------------------------

MERGE_QUERY = (
    "FROM t | STATS c = COUNT(*), cn = COUNT(tags), d = COUNT_DISTINCT(tags), v = VALUES(ip), "
    "lo = MIN(ts), hi = MAX(ok), s = SUM(n), sb = SUM(big), sx = SUM(x), a = AVG(x), "
    "m = MEDIAN(n), p = PERCENTILE(x, 90), top = TOP(n, 3, \"asc\"), "
    "w = COUNT(*) WHERE ok, wv = VALUES(user) WHERE n > 0, sd = STD_DEV(x), "
    "var = VARIANCE(n), seen = PRESENT(ip), none = ABSENT(tags) BY user"
)
MERGING = compile_aggregating_query(MERGE_QUERY, FIELDS, metadata={})

row_strategy = st.fixed_dictionaries(
    {},
    optional={
        "user": st.sampled_from(["alice", "bob", "carol"]),
        "n": st.integers(-5, 5),
        "big": st.integers(-(2**62), 2**62),
        "x": st.floats(-1e6, 1e6, allow_nan=False),
        "ts": st.integers(0, 10**13),
        "ip": st.sampled_from(["10.0.0.1", "10.0.0.2", "::1", "2001:db8::1"]),
        "ok": st.booleans(),
        "tags": st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
    },
)


def _states(query: AggregatingQuery, rows: list[dict[str, Any]]) -> dict[GroupKey, AggState]:
    states: dict[GroupKey, AggState] = {}
    for record in rows:
        for row in query.rows(record):
            for key in query.group_keys(row):
                query.add(states.setdefault(key, query.new_state()), row)
    return states


@settings(max_examples=150, deadline=None)
@given(st.lists(row_strategy, max_size=12), st.lists(st.integers(0, 3), max_size=12))
def test_merging_the_states_of_any_split_equals_adding_everything(
    rows: list[dict[str, Any]], parts: list[int]
) -> None:
    whole = _states(MERGING, rows)
    pieces: list[list[dict[str, Any]]] = [[], [], [], []]
    for index, row in enumerate(rows):
        pieces[parts[index] if index < len(parts) else 0].append(row)
    merged: dict[GroupKey, AggState] = {}
    for piece in pieces:
        for key, state in _states(MERGING, piece).items():
            if key in merged:
                MERGING.merge(merged[key], state)
            else:
                merged[key] = state
    assert merged == whole
    assert MERGING.finish(merged.items(), T0) == MERGING.finish(whole.items(), T0)


@settings(max_examples=100, deadline=None)
@given(st.lists(row_strategy, max_size=12))
def test_a_state_survives_json(rows: list[dict[str, Any]]) -> None:
    for state in _states(MERGING, rows).values():
        text = json.dumps(MERGING.dump(state))
        assert MERGING.load(json.loads(text)) == state


def test_merge_leaves_the_other_state_as_it_was() -> None:
    states = _states(MERGING, ROWS[:2])
    (alice,) = states.values()
    other = MERGING.load(MERGING.dump(alice))
    before = MERGING.dump(other)
    MERGING.merge(alice, other)
    assert MERGING.dump(other) == before
    assert MERGING.finish([(("alice",), alice)], T0)[0]["c"] == 4


# --- Elastic's rules and the loader ---------------------------------------------------------

COMPANION = "persistence_iam_user_self_created_access_key_subsequently_used.toml"
NEW_KEY = "AKIAZZZZZZZZZZZZZZZZ"


def _self_created_key(event_id: str, at: str) -> dict[str, Any]:
    record = create_access_key(event_id=event_id, caller="alice", target=None)
    record["eventTime"] = at
    record["responseElements"] = {
        "accessKey": {"accessKeyId": NEW_KEY, "status": "Active", "userName": "alice"}
    }
    return record


def _key_used(event_id: str, at: str) -> dict[str, Any]:
    record = event(event_id=event_id, event_name="ListBuckets", caller="alice", event_time=at)
    record["userIdentity"]["accessKeyId"] = NEW_KEY
    return record


def test_elastics_self_created_key_rule_correlates_creation_and_use() -> None:
    text = shared_path("elastic-rules", "aws", COMPANION).read_text(encoding="utf-8")
    query = compile_esql(tomllib.loads(text)["rule"]["query"])
    assert isinstance(query, AggregatingQuery)
    created = json_to_avro(_self_created_key("e-1", "2026-11-29T10:00:00Z"))
    used = json_to_avro(_key_used("e-2", "2026-11-29T10:20:00Z"))
    [row] = query.run([created, used], now_ms=T0).rows
    found = dict(zip(query.columns, row, strict=True))
    assert found["Esql.aws_cloudtrail_self_access_key_creation_count"] == 1
    assert found["Esql.aws_cloudtrail_created_access_key_use_count"] == 1
    assert found["Esql_priv.aws_cloudtrail_access_key_id_correlation"] == NEW_KEY
    assert found["Esql.event_action_created_access_key_use_values"] == "ListBuckets"
    too_late = json_to_avro(_key_used("e-3", "2026-11-29T11:00:01Z"))
    assert query.run([created, too_late], now_ms=T0).rows == []
    assert query.run([used], now_ms=T0).rows == []


def test_an_aggregating_rule_loads_with_its_stats_and_the_detector_leaves_it_alone() -> None:
    text = shared_path("elastic-rules", "aws", COMPANION).read_text(encoding="utf-8")
    rule = parse_rule(text, "companion.toml")
    assert isinstance(rule, LoadedRule)
    assert rule.aggregation is not None
    assert rule.aggregation.group_by[-1] == "Esql_priv.aws_cloudtrail_access_key_id_correlation"
    assert rule.query.matches(json_to_avro(_key_used("e-2", "2026-11-29T10:20:00Z")))
    assert Detector(JsonDecoder(), [rule], use_prefilter=False).rules == ()
