"""State of aggregating rules at scale: memory per group, changelog bytes, restore time.

    .venv/bin/python -m bench.stateful_bench --groups 1000000

One repartition partition's stage holds `--groups` open groups of a COUNT + VALUES BY user rule
(one row each, in one open run: the worst case, nothing evicted yet). It measures:
- routing + consuming a row (encode, decode, fold into WindowedAggregation) per second;
- resident memory per group (RSS growth over the groups);
- the changelog's size per group (what `flush` writes to the store);
- restore: loading every group back from the store into a new stage, as assignment does after
  the changelog was read; with `--kafka`, also the whole restore on assignment from a real
  local broker: the compacted changelog read back by `StateStore.assign`, then loaded.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from consumer.stream.repartition import Encoded, encode_routed
from consumer.stream.state import (
    OFFSET_HEADER,
    KafkaChangelogReader,
    PartitionStore,
    StateStore,
    changelog_topic,
    ensure_changelogs,
)
from consumer.stream.stateful import STORE, AggregatingRule, StatefulStage
from scripts.kafka_local import running_broker
from tests.support.stateful_rules import COUNT_AND_IPS, counting_rule, rules_in

RULE_ID = "00000000-0000-4000-8000-00000000be0c"
RULE = counting_rule(rule_id=RULE_ID, name="Bench: reads by user", aggregates=COUNT_AND_IPS)
TOPIC = "bench.repartition"
START_MS = 1_764_410_400_000  # 2025-11-29T10:00:00Z, a run time


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def stage_for(rule: AggregatingRule) -> StatefulStage:
    return StatefulStage([rule], topic=TOPIC, partitions=1, inputs=frozenset({("in", 0)}),
                         allowed_lateness_ms=0, idle_timeout_ms=1000,
                         emit=lambda rule_id, output: None)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=1_000_000)
    parser.add_argument("--kafka", action="store_true",
                        help="also restore through a changelog on a local broker")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        # By id: the built-in rules, loaded too, include an aggregating one.
        loaded = next(r for r in rules_in(Path(folder), {"bench.toml": RULE})
                      if r.rule_id == RULE_ID)
    rule = AggregatingRule(loaded)
    stage = stage_for(rule)
    store = PartitionStore((TOPIC, 0))
    stage.assign(0, store)
    row_template = {"event.action": "GetObject", "source.ip": "198.51.100.7"}

    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    out: list[Encoded] = []
    for number in range(args.groups):
        row = {**row_template, "user.name": f"user-{number:07d}"}
        out += [encode_routed(routed, 1)
                for routed in rule.route({"eventTime": "2025-11-29T10:01:00Z"}, [row])]
        if len(out) >= 10_000:
            for record in out:
                stage.consume(0, record.key, record.value, record.headers)
            out.clear()
    for record in out:
        stage.consume(0, record.key, record.value, record.headers)
    added_s = time.perf_counter() - started
    gc.collect()
    grown = rss_bytes() - before

    started = time.perf_counter()
    stage.flush()
    store.committed()
    flush_s = time.perf_counter() - started
    changelog = sum(len(key) + len(json.dumps(value, separators=(",", ":")))
                    for key, value in store.items())
    open_groups = stage.owned[0].states[rule.rule_id].open_groups

    started = time.perf_counter()
    restored = stage_for(rule)
    restored.assign(0, store)
    restore_s = time.perf_counter() - started
    assert restored.owned[0].states[rule.rule_id].open_groups == open_groups == args.groups

    kafka = restore_from_kafka(rule, store, args.groups) if args.kafka else {}
    print(json.dumps({
        **kafka,
        "groups": args.groups,
        "rows_per_s": round(args.groups / added_s),
        "rss_bytes_per_group": round(grown / args.groups),
        "changelog_bytes_per_group": round(changelog / args.groups),
        "flush_s": round(flush_s, 2),
        "restore_load_s": round(restore_s, 2),
        "restore_groups_per_s": round(args.groups / restore_s),
    }, indent=2))


def write_changelog(config: dict[str, str], topic: str, store: PartitionStore) -> None:
    """The store's records as its flush writes them (key: repartition topic, NUL, store key)."""
    producer = Producer({**config, "linger.ms": "20", "compression.type": "lz4"})
    prefix = TOPIC.encode() + b"\0"
    headers: list[tuple[str, str | bytes | None]] = [(OFFSET_HEADER, b"1")]
    for key, value in store.items():
        while True:
            try:
                producer.produce(topic, key=prefix + key.encode(), partition=0, headers=headers,
                                 value=json.dumps(value, separators=(",", ":")).encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def restore_from_kafka(rule: AggregatingRule, store: PartitionStore, groups: int
                       ) -> dict[str, float]:
    """Write the store's records to a compacted changelog on a local broker, as the stage's
    flush does, then time the restore a newly assigned partition goes through."""
    group = "bench"
    with tempfile.TemporaryDirectory() as workdir, running_broker(workdir=Path(workdir)) as kafka:
        config = {"bootstrap.servers": kafka.bootstrap_servers}
        ensure_changelogs(AdminClient({**config}), [changelog_topic(group, STORE)], 1)
        write_changelog(config, changelog_topic(group, STORE), store)
        reader = KafkaChangelogReader(config, group)
        try:
            states = StateStore(STORE, group, reader)
            started = time.perf_counter()
            states.assign((TOPIC, 0), 1)
            read_s = time.perf_counter() - started
            restored = stage_for(rule)
            restored.assign(0, states.partition((TOPIC, 0)))
            total_s = time.perf_counter() - started
        finally:
            reader.close()
        assert restored.owned[0].states[rule.rule_id].open_groups == groups
    return {"kafka_changelog_read_s": round(read_s, 2), "kafka_restore_total_s": round(total_s, 2)}


if __name__ == "__main__":
    main()
