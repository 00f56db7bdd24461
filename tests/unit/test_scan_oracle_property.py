"""The oracle property without Kafka: events split over partitions, delivered in any order within
the allowed lateness, evaluated batch by batch as the watermark moves, with restarts from the
state's JSON dump, give the alerts `scan`'s end-of-input evaluation gives."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumer.alerts.document import Alert, alert_for
from consumer.alerts.stateful_rules import StatefulRules
from consumer.cloudtrail.decode import JsonDecoder
from consumer.cloudtrail.record import json_to_avro
from consumer.rules.detector import Detector
from consumer.rules.loader import LoadedRule
from tests.support.events import ACCOUNTS
from tests.support.stateful_rules import (
    START,
    counting_rule,
    key_created_at,
    read_at,
    rules_in,
    suppressed_seed_rule,
)

DETECTED_AT = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LATENESS_MS = 3 * 60_000
SUPPRESSION_BY_USER = """
[detector.alert_suppression]
group_by = ["user.name"]
duration = { value = 10, unit = "m" }
"""


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> list[LoadedRule]:
    return rules_in(tmp_path_factory.mktemp("rules"), {
        "counting.toml": counting_rule(
            lookback="8m", threshold=2, name="Reads per user", extra=SUPPRESSION_BY_USER,
            aggregates="Esql.event_count = COUNT(*), Esql.accounts = VALUES(cloud.account.id)"),
        "seed.toml": suppressed_seed_rule("cloud.account.id"),
    })


def random_events(chance: random.Random, count: int) -> list[tuple[int, dict[str, Any]]]:
    events = []
    for number in range(count):
        moment = START + timedelta(seconds=chance.randrange(0, 90 * 60))
        account = chance.choice(ACCOUNTS[:2])
        if chance.random() < 0.3:
            record = key_created_at(f"key-{number}", "mallory", chance.choice(["bob", "carol"]),
                                    moment, account=account)
        else:
            record = read_at(f"read-{number}", chance.choice(["alice", "bob", "dave"]), moment,
                             account=account)
        events.append((int(moment.timestamp() * 1000), record))
    return events


def judge(detector: Detector, stateful: StatefulRules, record: dict[str, Any]) -> list[Alert]:
    avro = json_to_avro(record)
    verdict = detector.judge(avro)
    out = []
    for rule in verdict.matched:
        passed = stateful.match(rule, avro, alert_for(rule, avro, detected_at=DETECTED_AT,
                                                      original=json.dumps(record)))
        if passed is not None:
            out.append(passed)
    for rule, rows in verdict.rows:
        stateful.count(rule, avro, rows)
    return out


def final_documents(sent: list[Alert]) -> dict[str, Any]:
    """What an index written by alert id holds in the end."""
    return {alert.alert_id: alert.document for alert in sent}


def stream(rules: list[LoadedRule], events: list[tuple[int, dict[str, Any]]],
           chance: random.Random) -> tuple[list[Alert], StatefulRules]:
    """Partitions, each in its own order within half the lateness; batches; a watermark at the
    lowest partition's highest time minus the lateness; restarts from JSON dumps."""
    detector = Detector(JsonDecoder(), rules, use_prefilter=False)
    partitions: list[list[tuple[int, dict[str, Any]]]] = [[] for _ in range(chance.randint(1, 3))]
    for item in events:
        chance.choice(partitions).append(item)
    partitions = [sorted(part, key=lambda item: item[0] + chance.randrange(LATENESS_MS // 2))
                  for part in partitions if part]
    highest: list[int | None] = [None] * len(partitions)
    stateful = StatefulRules(rules)
    sent: list[Alert] = []
    while any(partitions):
        for _ in range(chance.randint(1, 15)):
            live = [index for index, part in enumerate(partitions) if part]
            if not live:
                break
            index = chance.choice(live)
            ts, record = partitions[index].pop(0)
            highest[index] = max(ts, highest[index] or ts)
            sent += judge(detector, stateful, record)
        if all(high is not None for high in highest):
            watermark = min(high for high in highest if high is not None) - LATENESS_MS
            sent += stateful.advance(watermark, DETECTED_AT)
        if chance.random() < 0.3:
            state = json.loads(json.dumps(stateful.dump()))
            stateful = StatefulRules(rules)
            stateful.load(state)
    return sent + stateful.advance(None, DETECTED_AT), stateful


@pytest.mark.parametrize("seed", range(12))
def test_the_stream_gives_the_alerts_the_scan_gives(rules: list[LoadedRule], seed: int) -> None:
    chance = random.Random(seed)
    events = random_events(chance, 160)
    scan_detector = Detector(JsonDecoder(), rules, use_prefilter=False)
    oracle = StatefulRules(rules)
    expected: list[Alert] = []
    for _, record in events:
        expected += judge(scan_detector, oracle, record)
    expected += oracle.advance(None, DETECTED_AT)

    got, stateful = stream(rules, events, chance)

    assert final_documents(got) == final_documents(expected)
    assert stateful.late_events == 0
    assert stateful.suppressed == oracle.suppressed > 0
    assert {alert.document["kibana"]["alert"]["rule"]["name"] for alert in expected} == {
        rule.name for rule in rules if rule.enabled}
