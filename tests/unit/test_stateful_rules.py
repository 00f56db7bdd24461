"""The stateful stage with real rules (ES|QL STATS on Elastic's schedule, alert suppression)
through the in-memory group of workers: its alerts equal `scan`'s, whatever the partitioning,
the batch splits, the crashes and the rebalances.

A stream sends a suppressed window's first alert when the watermark passes it and the final
count later as an update with the same id; scan, at the end of its input, sends each once with
the final count. An indexer keeps the last document per id, so that is what is compared.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from consumer.alerts.document import Alert, alert_for, encode_json
from consumer.cloudtrail.decode import JsonDecoder
from consumer.cloudtrail.record import json_to_avro
from consumer.rules.detector import Detector
from consumer.stream.repartition import InputPartition
from consumer.stream.stateful import stateful_rules
from tests.support.stateful_rules import (
    COUNT_AND_IPS,
    START,
    counting_rule,
    key_created_at,
    read_at,
    rules_in,
    scan_alerts,
    suppressed_seed_rule,
)
from tests.unit.test_stateful import Broker, Worker, run_group

RULES = {
    "count.toml": counting_rule(threshold=2, aggregates=COUNT_AND_IPS),
    "seed.toml": suppressed_seed_rule("user.name", minutes=12),
}


def make_event(number: int, kind: str, user: str, minute: int) -> dict[str, Any]:
    moment = START + timedelta(minutes=minute / 2)
    if kind == "read":
        return read_at(f"e-{number}", user, moment)
    return key_created_at(f"e-{number}", user, f"t{number}", moment)


def last_per_id(documents: list[dict[str, Any]]) -> dict[str, tuple[object, ...]]:
    kept: dict[str, tuple[object, ...]] = {}
    for document in documents:
        alert = document["kibana"]["alert"]
        kept[alert["uuid"]] = (
            alert["rule"]["rule_id"],
            document.get("Esql", {}).get("event_count"),
            alert.get("suppression", {}).get("docs_count"),
            document.get("detector", {}).get("run", {}).get("end"),
        )
    return kept


events_strategy = st.lists(
    st.tuples(st.sampled_from(["read", "read", "key"]), st.sampled_from(["alice", "bob", "eve"]),
              st.integers(0, 120)),
    max_size=40,
)


@given(events=events_strategy, inputs=st.integers(1, 3), repartitions=st.integers(1, 3),
       workers=st.integers(1, 3), seed=st.integers(0, 2**32), keyed=st.booleans())
@settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_the_streams_alerts_equal_scans_for_aggregating_and_suppressed_rules(
    tmp_path: Path, events: list[tuple[str, str, int]], inputs: int, repartitions: int, *,
    workers: int, seed: int, keyed: bool,
) -> None:
    rules = rules_in(tmp_path / f"rules-{seed}", RULES)
    rng = random.Random(seed)
    lateness = 20 * 60_000
    # Within a partition, events are out of order by less than the allowed lateness.
    shuffled = sorted(enumerate(events), key=lambda e: e[1][2] + rng.randrange(20))
    records = [make_event(number, kind, user, minute) for number, (kind, user, minute) in shuffled]

    scanned, _ = scan_alerts(tmp_path, records, rules, progress=None,
                             include_event_original=False)
    expected = last_per_id(scanned)

    detector = Detector(JsonDecoder(), rules, use_prefilter=False)
    stateful = stateful_rules(detector.aggregating, detector.rules)
    routed = {rule.rule_id for rule in stateful}

    def router(worker: Worker, source: InputPartition, item: dict[str, object],
               wall: int) -> None:
        record = json_to_avro(item)
        verdict = detector.judge(record)
        produce = worker.out.append

        def put(topic: str, encoded: Any) -> None:
            produce((topic, encoded))

        for rule in verdict.matched:
            alert = alert_for(rule, record, detected_at=START, original=None)
            if rule.rule_id not in routed or not worker.stage.route(
                source, rule.rule_id, record, alert, wall_ms=wall, produce=put
            ):
                worker.emitted.append(alert)
        for rule, rows in verdict.rows:
            worker.stage.route(source, rule.rule_id, record, rows, wall_ms=wall, produce=put)

    def done(broker: Broker) -> bool:
        got = last_per_id([json.loads(encode_json(a)) for a in broker.alerts
                           if isinstance(a, Alert)])
        consumed = all(broker.offsets.get(p, 0) >= len(log) for p, log in broker.inputs.items())
        return consumed and got == expected

    broker = run_group(records, inputs=inputs, repartitions=repartitions, workers=workers,
                       seed=seed, lateness=lateness, keyed=keyed, rules=stateful,
                       router=router, key=lambda r: str(r["userIdentity"]["userName"]),  # type: ignore[index]
                       done=done)
    sent = [json.loads(encode_json(a)) for a in broker.alerts if isinstance(a, Alert)]
    assert last_per_id(sent) == expected
    # Exactly once: an alert goes out once; a suppressed window's at most twice (the first
    # alert, then the update with the final count).
    times = Counter(document["kibana"]["alert"]["uuid"] for document in sent)
    for document in sent:
        suppression = document["kibana"]["alert"].get("suppression")
        assert times[document["kibana"]["alert"]["uuid"]] <= (1 if suppression is None else 2)
