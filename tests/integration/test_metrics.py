"""What a running detector reports over HTTP, checked against a workload whose outcome is known.

Counters must be exact: an operator sizes, alerts and debugs from them.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from importlib import resources
from pathlib import Path

import pytest

from consumer import __version__
from consumer.offline.replay import avro_encoder
from tests.conftest import Broker, TopicFactory
from tests.support.events import ACCOUNTS, create_access_key, mixed_workload
from tests.support.kafka import (
    DetectorProcess,
    Topics,
    alert_event_ids,
    produce,
    produce_raw,
    read_all,
    wait_all_committed,
    wait_until,
)
from tests.support.metrics import scrape

SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
THROTTLED_ID = "7d3c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09"
SKIPPED_ID = "2b1a0f9e-7d3c-4d8c-b7a6-5e4d3c2b1a10"
ALLOWED_LABELS = {
    "topic", "partition", "rule_id", "severity", "reason", "outcome", "kind", "error", "le",
    "version", "worker", "rules", "reason_kind", "rule_name", "shape", "list_id", "item_id",
}
"""Every label name the detector may export: none of them carries a per-event value."""


@pytest.fixture
def topics(new_topic: TopicFactory) -> Topics:
    return Topics(input=new_topic("in", partitions=3), alerts=new_topic("alerts"),
                  dlq=new_topic("dlq"))




def test_metrics_count_exactly_what_a_known_workload_did(
    broker: Broker, topics: Topics, run_dir: Path, detectors: list[DetectorProcess]
) -> None:
    bootstrap = broker.bootstrap_servers
    events, matches = mixed_workload(600, every=20)
    candidates = [e for e in events if e["eventName"] == "CreateAccessKey"]
    valid = avro_encoder()(create_access_key(event_id="cut", caller="a", target="b"))
    poison: list[tuple[bytes | None, bytes | None]] = [
        (b"empty-1", b""), (b"empty-2", b""),
        (b"garbage-1", b"\xff\xfe not avro"), (b"garbage-2", b"\xff\xfe not avro either"),
        (b"cut-1", valid[: len(valid) * 2 // 3]), (b"cut-2", valid[: len(valid) * 3 // 4]),
    ]
    produce(bootstrap, topics.input, events)
    produce_raw(bootstrap, topics.input, poison)
    produced_bytes = sum(len(avro_encoder()(e)) for e in events) + sum(
        len(value or b"") for _, value in poison
    )
    group = f"g-{uuid.uuid4().hex}"
    detector = DetectorProcess(bootstrap, topics, run_dir / "detectors", group=group)
    detectors.append(detector.start())
    detector.wait_ready()

    ends = wait_all_committed(bootstrap, group, topics.input, 3)
    alerts = read_all(bootstrap, topics.alerts, wanted=len(matches))
    wait_until(lambda: scrape(detector.port).value("transactions_total", outcome="committed") > 0,
               10, "a committed transaction in the metrics")
    metrics = scrape(detector.port)

    assert sorted(alert_event_ids(alerts)) == sorted(matches)
    consumed = len(events) + len(poison)
    assert sum(ends) == consumed
    assert metrics.total("messages_consumed_total") == consumed
    assert {
        int(partition): count
        for partition, count in metrics.by_label("messages_consumed_total", "partition").items()
    } == {partition: end for partition, end in enumerate(ends) if end}
    assert {s.labels["topic"] for s in metrics.matching("messages_consumed_total")} == {
        topics.input
    }
    assert metrics.total("consumed_bytes_total") == produced_bytes
    assert metrics.value("batch_size_messages_sum") == consumed
    assert metrics.value("events_decoded_total") == len(candidates) == 90
    assert metrics.value("prefilter_skipped_total") == len(events) - len(candidates) == 510
    assert metrics.by_label("decode_errors_total", "reason") == {
        "empty": 2, "avro-corrupt": 2, "avro-truncated": 2,
    }
    assert metrics.by_label("dead_letters_total", "reason") == {
        "empty": 2, "avro-corrupt": 2, "avro-truncated": 2,
    }
    assert (
        metrics.value("events_decoded_total") + metrics.value("prefilter_skipped_total")
        + metrics.total("decode_errors_total")
    ) == consumed
    assert metrics.value("rule_evaluations_total", rule_id=SEED_ID) == 90
    assert metrics.value("rule_matches_total", rule_id=SEED_ID) == len(matches) == 30
    assert metrics.by_label("alerts_total", "rule_id") == {SEED_ID: 30}
    assert metrics.value("alerts_total", rule_id=SEED_ID, severity="medium") == 30
    assert metrics.total("alerts_throttled_total") == 0
    assert metrics.value("transactions_total", outcome="committed") > 0
    assert metrics.value("transactions_total", outcome="aborted") == 0
    assert metrics.total("produce_errors_total") == 0
    assert metrics.value("assigned_partitions") == 3
    assert metrics.value("ready") == 1
    assert [s.labels for s in metrics.matching("build_info")] == [
        {"version": __version__, "worker": "0", "rules": SEED_ID}
    ]
    assert metrics.value("rules_loaded") == 1
    assert metrics.by_label("rules_skipped", "reason_kind") == {"rule_type": 0, "query": 0}

    latency = metrics.bucket_bounds("processing_latency_seconds")
    assert latency[0] <= 0.0001
    assert latency == sorted(latency)
    assert latency[-1] == math.inf
    assert metrics.value("processing_latency_seconds_count") == 30
    assert metrics.bucket_bounds("event_to_alert_latency_seconds") == [
        1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, math.inf
    ]
    assert metrics.value("event_to_alert_latency_seconds_count") == 30

    per_event = {"mallory", "bob", "eve", "carol", *ACCOUNTS} | {e["eventID"] for e in events}
    for sample in metrics.samples:
        assert set(sample.labels) <= ALLOWED_LABELS, sample
        for value in sample.labels.values():
            assert value not in per_event, sample
            assert not any(part in value for part in ("mallory", "target-", "-4000-8000-")), (
                sample
            )
        if "partition" in sample.labels:
            assert sample.labels["partition"] in {"0", "1", "2"}, sample

    assert detector.http_status("/healthz") == 200
    assert detector.http_status("/readyz") == 200
    assert detector.http_status("/metrics?name[]=x") == 200
    assert detector.http_status("/admin") == 404


RULE_TEXT = (
    resources.files("consumer.rules")
    .joinpath("builtin", "aws_iam_user_created_access_keys_for_another_user.toml")
    .read_text()
)


def throttled_rule_dir(tmp_path: Path) -> Path:
    """The seed rule under another rule_id, allowed 5 alerts per 2-second interval, and a rule
    of a type the detector skips."""
    text = RULE_TEXT.replace(SEED_ID, THROTTLED_ID)
    for old, new in (('interval = "5m"', 'interval = "2s"'), ("max_signals = 100",
                                                               "max_signals = 5")):
        assert old in text
        text = text.replace(old, new)
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "throttled.toml").write_text(text)
    eql = RULE_TEXT.replace(SEED_ID, SKIPPED_ID).replace('language = "esql"', 'language = "eql"')
    (folder / "eql.toml").write_text(eql.replace('type = "esql"', 'type = "eql"'))
    return folder


def test_matches_above_max_signals_become_one_summary_alert_after_the_window(
    broker: Broker, new_topic: TopicFactory, run_dir: Path, detectors: list[DetectorProcess],
    tmp_path: Path,
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = Topics(input=new_topic("in"), alerts=new_topic("alerts"), dlq=new_topic("dlq"))
    detector = DetectorProcess(
        bootstrap, topics, run_dir / "detectors", group=f"g-{uuid.uuid4().hex}",
        extra_env={
            "DETECTOR_RULES_DIR": str(throttled_rule_dir(tmp_path)),
            "DETECTOR_DISABLE_RULES": SEED_ID,
        },
    )
    detectors.append(detector.start())
    detector.wait_ready()
    keys = [create_access_key(event_id=f"burst-{n:02d}", caller="mallory", target=f"t{n}")
            for n in range(12)]
    # The 2-second windows are aligned to the epoch: start the burst early in one, so all 12
    # matches (handled within milliseconds) fall into the same window.
    wait_until(lambda: time.time() % 2 < 0.3, 5, "the start of a 2-second window")
    produce(bootstrap, topics.input, keys)

    alerts = read_all(bootstrap, topics.alerts, wanted=6, timeout=10)

    documents = [json.loads(m.value() or b"") for m in alerts]
    assert [d["event"]["id"] for d in documents[:5]] == [f"burst-{n:02d}" for n in range(5)]
    metrics = scrape(detector.port)
    assert metrics.value("rule_matches_total", rule_id=THROTTLED_ID) == 12
    assert metrics.value("alerts_total", rule_id=THROTTLED_ID, severity="medium") == 5
    assert metrics.value("alerts_throttled_total", rule_id=THROTTLED_ID) == 7
    assert metrics.value("rule_evaluations_total", rule_id=SEED_ID) == 0
    assert [s.labels["rules"] for s in metrics.matching("build_info")] == [THROTTLED_ID]
    assert metrics.value("rules_loaded") == 1
    assert metrics.by_label("rules_skipped", "reason_kind") == {"rule_type": 1, "query": 0}
    assert len(documents) == 6, "no summary alert was committed after the window ended"
    summary = documents[5]
    assert summary["event"]["action"] == "throttled-matches"
    assert summary["detector"]["throttle"]["suppressed"] == 7
    assert summary["kibana"]["alert"]["rule"]["rule_id"] == THROTTLED_ID
    assert summary["message"].startswith("7 further matches of ")
    assert alerts[5].key() == THROTTLED_ID.encode()
