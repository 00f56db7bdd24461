"""Cost of Elastic's stateless KQL `query` rules per event, all loaded at once, on one core.

Run: .venv/bin/python -m bench.kql_bench [--rules-dir DIR] [--events N] [--repeats N]

Rules: every `query`/`kuery` rule in DIR (default ../shared/elastic-rules/aws) that loads, plus
the built-ins. Data: the realistic mix of bench/rules_bench.py (real CloudTrail records from
../shared/datasets, CreateAccessKey at 0.1%), Avro-encoded as the service receives them.
Prints a markdown table: µs per event and events per second per core, best of `--repeats`.
"""

import argparse
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import SHARED
from bench.rules_bench import avro_payload, best_per_event, decode, realistic_mix
from consumer.cloudtrail.record import NotCloudTrailError, json_to_avro
from consumer.rules import CombinedPrefilter
from consumer.rules.loader import load_rule_set

RULES_DIR = SHARED / "elastic-rules" / "aws"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules-dir", type=Path, default=RULES_DIR)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    rule_dir = Path("/tmp") / "kql-bench-rules"
    rule_dir.mkdir(exist_ok=True)
    for stale in rule_dir.glob("*.toml"):
        stale.unlink()
    for path in sorted(args.rules_dir.glob("*.toml")):
        text = path.read_text(encoding="utf-8")
        if 'type = "query"' in text and 'language = "kuery"' in text:
            (rule_dir / path.name).write_text(text, encoding="utf-8")
    started = time.perf_counter()
    rule_set = load_rule_set(rule_dir)
    load_ms = (time.perf_counter() - started) * 1000
    kql = [rule.query for rule in rule_set.rules if rule.definition.rule.language == "kuery"]

    rng = random.Random(20250115)
    records = []
    for original in realistic_mix(args.events, rng, SHARED / "datasets"):
        try:
            records.append(json_to_avro(original))
        except NotCloudTrailError:
            continue
    payloads = [avro_payload(record) for record in records]
    decoded = [decode(payload) for payload in payloads]
    count = len(records)
    prefilter = CombinedPrefilter.for_queries(kql)
    screen = prefilter.batch_screen(text_format=False)
    batches = [payloads[start : start + 1000] for start in range(0, count, 1000)]

    def rules_only() -> int:
        return sum(query.matches(record) for record in decoded for query in kql)

    def naive() -> int:
        alerts = 0
        for payload in payloads:
            record = decode(payload)
            alerts += sum(query.matches(record) for query in kql)
        return alerts

    def screened() -> int:
        alerts = 0
        for batch in batches:
            candidates = (
                range(len(batch)) if screen is None
                else screen.candidates(batch, list(map(len, batch)))
            )
            for index in candidates:
                if prefilter.may_match(batch[index], False):
                    record = decode(batch[index])
                    alerts += sum(query.matches(record) for query in kql)
        return alerts

    def screen_only() -> int:
        if screen is None:
            return 0
        return sum(len(screen.candidates(batch, list(map(len, batch)))) for batch in batches)

    def decode_only() -> None:
        for payload in payloads:
            decode(payload)

    alerts = naive()
    assert screened() == alerts, "the prefilter dropped an alert"
    kept = sum(prefilter.may_match(payload, False) for payload in payloads)
    print(
        f"{count} events, {len(kql)} KQL rules loaded in {load_ms:.0f} ms "
        f"({len(rule_set.skipped)} skipped), {alerts} alerts, prefilter keeps {kept} "
        f"({kept / count:.2%}), batch screen {'off' if screen is None else 'on'}\n"
    )
    measure: dict[str, Callable[[], object]] = {
        f"all {len(kql)} KQL rules `matches` (decoded record)": rules_only,
        "Avro decode alone (fastavro)": decode_only,
        "batch screen alone (1,000 per batch)": screen_only,
        "naive: decode + every rule on every event": naive,
        "batch screen + prefilter + decode + rules": screened,
    }
    print("| measurement | µs / event | events / s / core |")
    print("|---|---:|---:|")
    for name, run in measure.items():
        micros = best_per_event(run, count, args.repeats)
        print(f"| {name} | {micros:.3f} | {1e6 / micros:,.0f} |")


if __name__ == "__main__":
    main()
