"""The `cloudtrail-detector` command: run, scan, replay and rules.

Exit codes: 0 success; 1 a runtime failure (a fatal Kafka error, or alerts found by
`scan --fail-on-alert`); 2 bad usage, configuration or rule files; 3 shutdown exceeded its
deadline; 130 a second SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from confluent_kafka import Producer

from consumer import __version__
from consumer.app import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, load_enabled_rules, registry_client
from consumer.app import run as run_service
from consumer.config import ConfigError, Settings, load_settings
from consumer.normalize import configure_enrichment
from consumer.replay import ReplayOptions, avro_encoder, json_encoder, registry_encoder, replay
from consumer.rules.loader import RuleLoadError, check_paths, list_rules
from consumer.scan import scan

_RUN_OPTIONS = {
    "bootstrap_servers": "Kafka bootstrap servers",
    "input_topics": "input topics, comma-separated",
    "input_pattern": "regex of input topics (starts with ^)",
    "group_id": "consumer group",
    "alerts_topic": "topic the alerts go to",
    "dlq_topic": "dead-letter topic (default <input>.dlq)",
    "input_format": "avro-registry, avro or json",
    "schema_registry_url": "Schema Registry URL",
    "alert_format": "json or avro-registry",
    "delivery": "exactly-once or at-least-once",
    "start_from": "earliest, latest, lookback, now-<duration> or an ISO time",
    "rules_dir": "directory of extra rule files",
    "metrics_host": "bind address of the HTTP endpoint",
    "metrics_port": "port of the HTTP endpoint",
    "workers": "member processes of the group on this machine",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file (DETECTOR_CONFIG_FILE)")
    for name, help_text in _RUN_OPTIONS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, help=f"{help_text} (DETECTOR_{name.upper()})"
        )
    parser.add_argument("--enable-rule", dest="enable_rules", action="append", metavar="RULE_ID",
                        help="run a rule that is off by default (repeatable)")
    parser.add_argument("--disable-rule", dest="disable_rules", action="append",
                        metavar="RULE_ID", help="do not run a rule (repeatable)")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name, None) for name in (*_RUN_OPTIONS, "enable_rules",
                                                               "disable_rules")}
    return load_settings(args.config, **overrides)


def _rate(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(?:/s)?", text)
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a rate like 500/s")
    return float(match[1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudtrail-detector",
        description="Detect IAM access keys created for another user, on CloudTrail in Kafka.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the detector service")
    _add_run_options(run)

    scan_cmd = commands.add_parser("scan", help="run the rules over CloudTrail files, no Kafka")
    scan_cmd.add_argument("paths", nargs="+", type=Path)
    scan_cmd.add_argument("--output", type=Path, help="JSON Lines file (default stdout)")
    scan_cmd.add_argument("--rules-dir", type=Path)
    scan_cmd.add_argument("--enable-rule", dest="enable_rules", action="append", default=[])
    scan_cmd.add_argument("--no-event-original", action="store_true")
    scan_cmd.add_argument("--fail-on-alert", action="store_true",
                          help="exit 1 when any alert was written")

    replay_cmd = commands.add_parser("replay", help="produce CloudTrail files to a topic")
    replay_cmd.add_argument("paths", nargs="+", type=Path)
    replay_cmd.add_argument("--topic", required=True)
    replay_cmd.add_argument("--format", choices=["avro", "avro-registry", "json"], default="json")
    replay_cmd.add_argument("--bootstrap-servers", default=None)
    replay_cmd.add_argument("--schema-registry-url", default=None)
    replay_cmd.add_argument("--rate", type=_rate, help="records per second, e.g. 500/s")
    replay_cmd.add_argument("--loop", action="store_true", help="replay forever, fresh eventIDs")
    replay_cmd.add_argument("--retime", action="store_true", help="set eventTime to now")

    rules = commands.add_parser("rules", help="list or validate rule files")
    rule_commands = rules.add_subparsers(dest="rules_command", required=True)
    listing = rule_commands.add_parser("list", help="list the rules and whether they run")
    listing.add_argument("--rules-dir", type=Path)
    validate = rule_commands.add_parser("validate", help="check rule files")
    validate.add_argument("paths", nargs="+", type=Path)
    validate.add_argument("--skip-unsupported", action="store_true",
                          help="accept rules the detector cannot run yet (it skips them)")
    return parser


def _scan(args: argparse.Namespace) -> int:
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        raise ConfigError(f"no such file or directory: {', '.join(missing)}")
    settings = load_settings(None, rules_dir=args.rules_dir, enable_rules=args.enable_rules,
                             input_format="json")
    configure_enrichment(
        settings.data_stream_namespace, settings.geoip_city_database, settings.geoip_asn_database
    )
    rules = load_enabled_rules(settings)
    output = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    try:
        counts = scan(args.paths, rules, output, include_event_original=not args.no_event_original)
    finally:
        if args.output:
            output.close()
    print(f"{counts.records} records, {counts.alerts} alerts, {counts.rejected} skipped",
          file=sys.stderr)
    return EXIT_FATAL if args.fail_on_alert and counts.alerts else EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    settings = load_settings(
        None,
        bootstrap_servers=args.bootstrap_servers,
        schema_registry_url=args.schema_registry_url,
        input_format="avro-registry" if args.format == "avro-registry" else "json",
    )
    producer = Producer(
        {**settings.producer_config(0), "linger.ms": "20", "enable.idempotence": "true"}
    )
    if args.format == "avro-registry":
        encode = registry_encoder(registry_client(settings), f"{args.topic}-value")
    elif args.format == "avro":
        encode = avro_encoder()
    else:
        encode = json_encoder()
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    options = ReplayOptions(rate=args.rate, loop=args.loop, retime=args.retime)
    sent = replay(args.paths, producer, args.topic, encode, options, should_stop=lambda: stop)
    print(f"sent {sent} records to {args.topic}", file=sys.stderr)
    return EXIT_OK


def _rules(args: argparse.Namespace) -> int:
    if args.rules_command == "list":
        for rule in list_rules(args.rules_dir):
            state = "skip" if rule.reason else "on" if rule.enabled else "off"
            line = f"{state:<4} {rule.rule_id}  {rule.severity:<8}  {rule.name}  [{rule.source}]"
            print(f"{line}  {rule.reason}" if rule.reason else line)
        return EXIT_OK
    validation = check_paths(args.paths)
    problems = validation.problems + ([] if args.skip_unsupported else validation.skipped)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        for skipped in validation.skipped:
            print(skipped)
        print(f"{len(args.paths)} path(s) valid")
    return EXIT_CONFIG if problems else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return run_service(_settings(args))
        if args.command == "scan":
            return _scan(args)
        if args.command == "replay":
            return _replay(args)
        return _rules(args)
    except (ConfigError, RuleLoadError) as error:
        print(f"cloudtrail-detector: configuration error:\n{error}", file=sys.stderr)
        return EXIT_CONFIG
