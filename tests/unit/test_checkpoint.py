"""The checkpoint and the loop around it, on the in-memory broker: commit, abort, revoke in the
middle of a batch, partition loss, a wedged commit, a timed-out transaction, throttle roll-back."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from consumer.config import Settings
from consumer.offline.replay import json_encoder
from consumer.rules.detector import Detector
from consumer.stream.app import load_enabled_rules, make_decoder
from consumer.stream.metrics import Metrics
from consumer.stream.service import Health, Service
from consumer.stream.sink import FatalSinkError
from consumer.stream.testing import InMemoryBroker, InMemorySink, InMemorySource
from tests.support.events import create_access_key, event

SEED_ID = "696015ef-718e-40ff-ac4a-cc2ba88dbeeb"
THROTTLED_ID = "7d3c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09"
ENCODE = json_encoder()


def match(n: int) -> bytes:
    return ENCODE(create_access_key(event_id=f"m-{n:03d}", caller="mallory", target=f"t{n}"))


def miss(n: int) -> bytes:
    return ENCODE(event(event_id=f"x-{n:03d}", request_parameters={"bucketName": "b"}))


def throttled_rules(folder: Path, *, max_signals: int, interval: str) -> Path:
    text = (resources.files("consumer.rules")
            .joinpath("builtin", "aws_iam_user_created_access_keys_for_another_user.toml")
            .read_text())
    text = text.replace(SEED_ID, THROTTLED_ID)
    text = text.replace('interval = "5m"', f'interval = "{interval}"')
    text = text.replace("max_signals = 100", f"max_signals = {max_signals}")
    folder.mkdir()
    (folder / "throttled.toml").write_text(text)
    return folder


class Harness:
    """A service on an in-memory broker, stepped by the test."""

    def __init__(self, broker: InMemoryBroker, settings: Settings) -> None:
        self.broker = broker
        detector = Detector(make_decoder(settings), load_enabled_rules(settings))
        self.service = Service(settings, detector, Metrics(CollectorRegistry()), Health(),
                               clients=broker)
        self.service.open(broker)

    @property
    def source(self) -> InMemorySource:
        return self.broker.sources[-1]

    @property
    def sink(self) -> InMemorySink:
        return self.broker.sinks[-1]

    def step(self, times: int = 1) -> None:
        for _ in range(times):
            self.service.step()

    def wedge(self, matches: int, watchdog_s: float) -> InMemorySink:
        """`matches` matches on partition 0, the wedged-commit watchdog at `watchdog_s`, and
        the producer whose next commit blocks (as librdkafka#5456), returned."""
        self.service.checkpoint._wedged_after_s = watchdog_s
        self.source.assign([("in", 0)])
        for n in range(matches):
            self.broker.produce("in", match(n), partition=0)
        stuck = self.sink
        stuck.wedge = threading.Event()
        return stuck

    def alert_ids(self) -> list[str]:
        """The committed alerts' event ids, sorted (alerts spread over partitions by key)."""
        return sorted(json.loads(r.value or b"")["event"]["id"]
                      for r in self.broker.records("cloudtrail-alerts"))

    def summaries(self) -> list[dict[str, object]]:
        documents = [json.loads(r.value or b"") for r in self.broker.records("cloudtrail-alerts")]
        return [d for d in documents if d["event"]["action"] == "throttled-matches"]


def settings_for(**overrides: object) -> Settings:
    return Settings.model_validate({
        "input_topics": ["in"], "input_format": "json", "batch_size": 10,
        "disable_rules": [], **overrides,
    })


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker(partitions=2)


@pytest.fixture
def harness(broker: InMemoryBroker) -> Harness:
    running = Harness(broker, settings_for())
    running.source.assign()
    return running


def test_a_drained_batch_commits_its_alerts_with_its_offsets(
    broker: InMemoryBroker, harness: Harness
) -> None:
    for n in range(3):
        broker.produce("in", match(n), partition=0)
    broker.produce("in", miss(0), partition=1)

    harness.step()

    assert harness.alert_ids() == ["m-000", "m-001", "m-002"]
    assert broker.committed == {("in", 0): 3, ("in", 1): 1}
    assert not harness.service.checkpoint.open


def test_under_a_backlog_the_batch_stays_open_until_it_is_due(broker: InMemoryBroker) -> None:
    harness = Harness(broker, settings_for(transaction_max_messages=25, transaction_max_ms=60_000))
    harness.source.assign([("in", 0)])
    for n in range(40):
        broker.produce("in", miss(n), partition=0)

    harness.step(2)
    after_twenty = (harness.service.checkpoint.open, dict(broker.committed))
    harness.step()

    assert after_twenty == (True, {})
    assert broker.committed == {("in", 0): 30}


def test_an_abandoned_commit_reads_the_batch_again_and_alerts_once(
    broker: InMemoryBroker, harness: Harness
) -> None:
    for n in range(3):
        broker.produce("in", match(n), partition=0)
    harness.sink.fail_commits = 1

    harness.step()
    after_abort = harness.alert_ids()
    harness.step()

    assert after_abort == []
    assert harness.alert_ids() == ["m-000", "m-001", "m-002"]
    assert broker.committed == {("in", 0): 3}


def test_a_revoke_in_the_middle_of_a_batch_commits_it_first(broker: InMemoryBroker) -> None:
    harness = Harness(broker, settings_for(transaction_max_messages=1000,
                                           transaction_max_ms=60_000))
    harness.source.assign([("in", 0)])
    for n in range(15):
        broker.produce("in", match(n), partition=0)
    harness.step()
    assert harness.service.checkpoint.open

    harness.source.revoke([("in", 0)])

    assert broker.committed == {("in", 0): 10}
    assert harness.alert_ids() == [f"m-{n:03d}" for n in range(10)]
    assert ("in", 0) not in harness.service.stores["throttle"].partitions


def test_a_lost_partition_abandons_the_batch_for_its_next_owner(broker: InMemoryBroker) -> None:
    harness = Harness(broker, settings_for(transaction_max_messages=1000,
                                           transaction_max_ms=60_000))
    harness.source.assign([("in", 0)])
    for n in range(15):
        broker.produce("in", match(n), partition=0)
    harness.step()
    abandoned = harness.sink

    harness.source.lose([("in", 0)])
    successor = Harness(broker, settings_for())
    successor.source.assign([("in", 0)])
    successor.step(2)

    assert abandoned.aborts == 1
    assert harness.alert_ids() == [f"m-{n:03d}" for n in range(15)]
    assert broker.committed == {("in", 0): 15}


def test_a_wedged_commit_replaces_the_producer_and_the_batch_is_read_again(
    broker: InMemoryBroker,
) -> None:
    harness = Harness(broker, settings_for())
    stuck = harness.wedge(1, watchdog_s=0.05)

    harness.step()
    replaced = harness.sink is not stuck
    harness.step()

    assert replaced
    assert harness.alert_ids() == ["m-000"]
    assert broker.committed == {("in", 0): 1}


def test_the_sinks_wedge_signal_replaces_the_producer_before_the_watchdog_deadline(
    broker: InMemoryBroker,
) -> None:
    """After a broker restart the sink says at once what the 20 s watchdog would find out."""
    harness = Harness(broker, settings_for())
    stuck = harness.wedge(1, watchdog_s=30)
    stuck.signals_wedge = True

    started = time.monotonic()
    harness.step()
    replaced_before_the_deadline = harness.sink is not stuck and time.monotonic() - started < 20
    harness.step()

    assert replaced_before_the_deadline
    assert harness.alert_ids() == ["m-000"]
    assert broker.committed == {("in", 0): 1}


def test_a_wedged_commit_that_committed_after_all_reloads_the_state_it_committed(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    rules = throttled_rules(tmp_path / "rules", max_signals=2, interval="1h")
    harness = Harness(broker, settings_for(rules_dir=rules, disable_rules=[SEED_ID]))
    stuck = harness.wedge(5, watchdog_s=0.05)
    stuck.wedge_commits = True

    harness.step(2)

    assert harness.alert_ids() == ["m-000", "m-001"]
    assert broker.committed == {("in", 0): 5}
    counts = dict(harness.service.stores["throttle"].partition(("in", 0)).items())
    assert [value[:2] for value in counts.values()] == [[2, 3]]  # type: ignore[index]


def test_a_transaction_older_than_its_timeout_recovers_with_a_new_producer(
    broker: InMemoryBroker,
) -> None:
    """A paused member: the broker aborted the transaction and fenced the producer."""
    harness = Harness(broker, settings_for(kafka_producer={"transaction.timeout.ms": "1000"}))
    harness.source.assign([("in", 0)])
    broker.produce("in", match(0), partition=0)
    checkpoint = harness.service.checkpoint
    checkpoint.begin()
    checkpoint.started -= 2.0  # open for 2 s: past the 1 s timeout
    fenced = harness.sink
    fenced.fence(KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True))

    harness.step()
    harness.step()

    assert harness.sink is not fenced
    assert harness.alert_ids() == ["m-000"]
    assert broker.committed == {("in", 0): 1}


def test_a_fence_in_a_young_transaction_is_another_instance_and_fatal(
    broker: InMemoryBroker, harness: Harness
) -> None:
    broker.produce("in", match(0), partition=0)
    harness.sink.fence(KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True))

    with pytest.raises(FatalSinkError):
        harness.step()
    assert harness.alert_ids() == []


def test_a_fence_after_the_group_membership_is_gone_is_fatal(broker: InMemoryBroker) -> None:
    harness = Harness(broker, settings_for(kafka_producer={"transaction.timeout.ms": "1000"}))
    harness.source.assign([("in", 0)])
    broker.produce("in", match(0), partition=0)
    harness.service.checkpoint.begin()
    harness.service.checkpoint.started -= 2.0
    harness.source.member_fenced = True
    harness.sink.fence(KafkaError(KafkaError._FENCED, "fenced", fatal=True))

    with pytest.raises(FatalSinkError):
        harness.step()


def test_throttle_counts_of_an_aborted_batch_roll_back(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    rules = throttled_rules(tmp_path / "rules", max_signals=2, interval="1h")
    harness = Harness(broker, settings_for(rules_dir=rules, disable_rules=[SEED_ID]))
    harness.source.assign([("in", 0)])
    for n in range(5):
        broker.produce("in", match(n), partition=0)
    harness.sink.fail_commits = 1

    harness.step(2)

    assert harness.alert_ids() == ["m-000", "m-001"]
    counts = dict(harness.service.stores["throttle"].partition(("in", 0)).items())
    assert [value[:2] for value in counts.values()] == [[2, 3]]  # type: ignore[index]


def test_throttled_matches_survive_a_restart_and_are_summarised_once(
    broker: InMemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = throttled_rules(tmp_path / "rules", max_signals=2, interval="1h")
    settings = settings_for(rules_dir=rules, disable_rules=[SEED_ID])
    first = Harness(broker, settings)
    first.source.assign()
    for n in range(6):
        broker.produce("in", match(n), partition=n % 2)
    first.step(2)
    assert len(first.alert_ids()) == 2

    second = Harness(broker, settings)  # the first died: a new process restores the counts
    second.source.assign()
    later = datetime.now(UTC) + timedelta(hours=1)
    monkeypatch.setattr("consumer.stream.service.datetime", _FrozenAt(later))
    second.step(2)
    third = Harness(broker, settings)
    third.source.assign()
    third.step(2)

    summaries = second.summaries()
    assert [s["detector"]["throttle"]["suppressed"] for s in summaries] == [4]  # type: ignore[index]
    assert len(broker.records("cloudtrail-alerts")) == 3


class _FrozenAt:
    """`datetime` with `now()` at a fixed moment."""

    def __init__(self, moment: datetime) -> None:
        self._moment = moment

    def now(self, tz: object = None) -> datetime:
        return self._moment
