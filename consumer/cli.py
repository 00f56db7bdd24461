"""The `cloudtrail-detector` command: run, scan, query, replay, topics, dlq, rules and exceptions.

Exit codes: 0 success; 1 a runtime failure (a fatal Kafka error, or alerts found by
`scan --fail-on-alert`); 2 bad usage, configuration or rule files; 3 shutdown exceeded its
deadline; 130 a second SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal, get_args, get_origin

from confluent_kafka import Producer

from consumer import __version__
from consumer.cloudtrail.envelopes import SHAPES
from consumer.cloudtrail.files import FileRecord
from consumer.cloudtrail.normalize import configure_enrichment
from consumer.config import ConfigError, Settings, env_name, load_settings, option_name
from consumer.offline import kafka_tools
from consumer.offline.query import run_query
from consumer.offline.replay import (
    ReplayError,
    ReplayOptions,
    avro_encoder,
    check_topic,
    envelope_encoder,
    json_encoder,
    producer_settings,
    registry_encoder,
    replay,
)
from consumer.offline.scan import scan
from consumer.rules.detector import Verdict
from consumer.rules.esql import EsqlError
from consumer.rules.exceptions import (
    ExceptionLoadError,
    ExceptionSet,
    load_exceptions,
    rule_links,
)
from consumer.rules.loader import LoadedRule, RuleLoadError, check_paths, list_rules
from consumer.stream.app import (
    EXIT_CONFIG,
    EXIT_FATAL,
    EXIT_OK,
    load_enabled_rules,
)
from consumer.stream.app import run as run_service
from consumer.stream.registry import registry_client

SETTING_HELP = {
    "bootstrap_servers": "Kafka bootstrap servers, host:port,...",
    "input_topics": "topics to read, comma-separated",
    "input_pattern": "regex of topics to read instead (starts with ^)",
    "group_id": "consumer group",
    "alerts_topic": "topic the alerts go to",
    "dlq_topic": "dead-letter topic",
    "input_format": "avro-registry, avro (schemaless) or json",
    "input_envelope": "JSON shape to read only (default: detected per message)",
    "writer_schema": "writer schema file for schemaless Avro",
    "schema_registry_url": "Schema Registry URL (needed by the avro-registry formats)",
    "schema_registry_timeout_s": "seconds to wait for one Schema Registry answer",
    "schema_registry_ca_location": "CA file for the registry's TLS",
    "schema_registry_certificate_location": "client certificate for the registry",
    "schema_registry_key_location": "client key for the registry",
    "alert_format": "json or avro-registry",
    "include_event_original": "put the source record in the alert's event.original",
    "delivery": "exactly-once or at-least-once",
    "prefilter": "skip decoding messages no rule can match",
    "batch_size": "messages per consume call",
    "transaction_max_messages": "commit a batch after this many messages",
    "transaction_max_ms": "... or after this many milliseconds",
    "start_from": "where a partition without committed offset starts: earliest, latest, "
    "lookback, now-<duration> or an ISO-8601 time",
    "rules_dir": "directory of extra rule files",
    "exceptions_dir": "directory of exception lists and value lists",
    "data_stream_namespace": "data_stream.namespace of the events, as in logs-aws.cloudtrail-<ns>",
    "geoip_city_database": "MaxMind-format City database for source.geo.*",
    "geoip_asn_database": "MaxMind-format ASN database for source.as.*",
    "exceptions_reload_s": "how often the exceptions directory is checked for changes",
    "enable_rules": "run a rule that is off by default (repeatable)",
    "disable_rules": "do not run a rule (repeatable)",
    "metrics_host": "bind address of /metrics, /healthz and /readyz",
    "metrics_port": "port of the HTTP endpoint (worker i uses port + i; 0 picks a free one)",
    "shutdown_timeout_s": "deadline in seconds for a clean shutdown",
    "workers": "member processes of the group on this machine",
    "member_name": "stable replica name; transactional.id is <group>-<member>-<worker>",
    "static_membership": "set group.instance.id to <member>-<worker>",
    "kafka": "librdkafka property for every client, KEY=VALUE (repeatable)",
    "kafka_consumer": "librdkafka property for the consumer only, KEY=VALUE (repeatable)",
    "kafka_producer": "librdkafka property for the producer only, KEY=VALUE (repeatable)",
    "kafka_sasl_password_file": "file holding the SASL password",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "allowed_lateness": "how far the watermark of aggregating rules trails event time (2m)",
    "idle_timeout": "an input partition caught up and quiet this long no longer holds the "
    "watermark",
    "repartition_partitions": "partitions of <group_id>.repartition (default: largest input's)",
}
"""Every setting with a flag. The two secrets themselves (kafka_sasl_password,
schema_registry_basic_auth) have none: a command line is visible to every user of the host."""

NO_FLAG = frozenset({"kafka_sasl_password", "schema_registry_basic_auth"})

_DEFAULT_SHOWN = {
    "member_name": "the host name",
    "dlq_topic": "<first input topic>.dlq",
    "writer_schema": "the bundled schema",
}


def _default_text(name: str) -> str:
    if name in _DEFAULT_SHOWN:
        return _DEFAULT_SHOWN[name]
    default = Settings.model_fields[name].get_default(call_default_factory=True)
    if default is None or default in ({}, []):
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list):
        return ",".join(default)
    return str(default)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: give a librdkafka property as KEY=VALUE")
    return key.strip(), value


def _add_settings_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """One flag per setting, with its help, its variable and its default."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML config file of settings (DETECTOR_CONFIG_FILE)")
    for name in names:
        annotation = Settings.model_fields[name].annotation
        help_text = f"{SETTING_HELP[name]} ({env_name(name)}; default: {_default_text(name)})"
        flag = option_name(name)
        if name in ("enable_rules", "disable_rules"):
            parser.add_argument(flag.removesuffix("s"), dest=name, action="append",
                                metavar="RULE_ID", help=help_text)
        elif name.startswith("kafka") and name != "kafka_sasl_password_file":
            parser.add_argument(flag, dest=name, action="append", type=_key_value,
                                metavar="KEY=VALUE", help=help_text)
        elif annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif get_origin(annotation) is Literal:
            parser.add_argument(flag, dest=name, choices=get_args(annotation), help=help_text)
        else:
            parser.add_argument(flag, dest=name, metavar=name.split("_")[-1].upper(),
                                help=help_text)


RUN_SETTINGS = [name for name in Settings.model_fields if name not in NO_FLAG]
TOOL_SETTINGS = [
    "bootstrap_servers", "schema_registry_url", "schema_registry_timeout_s",
    "schema_registry_ca_location",
    "schema_registry_certificate_location", "schema_registry_key_location", "kafka",
    "kafka_producer", "kafka_sasl_password_file",
]
"""The settings of the tools that talk to Kafka (replay, topics, dlq)."""


def _settings(args: argparse.Namespace, names: Sequence[str], **fixed: Any) -> Settings:
    """Settings from the flags in `names` (those given), the environment and the config file."""
    overrides: dict[str, Any] = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None and name.startswith("kafka") and isinstance(value, list):
            value = dict(value)
        overrides[name] = value
    return load_settings(args.config, **overrides, **fixed)


def _rate(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(?:/s)?", text)
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a rate like 500/s")
    return float(match[1])


class DefaultsHelp(argparse.HelpFormatter):
    """Help that shows an option's default where it has one and its text does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default:" in text:
            return text
        if not action.option_strings and action.nargs != "?":
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudtrail-detector",
        description="Run Elastic's AWS detection rules on CloudTrail in Kafka, as events arrive.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the detector service", formatter_class=DefaultsHelp)
    _add_settings_options(run, RUN_SETTINGS)

    scan_cmd = commands.add_parser("scan", help="run the rules over CloudTrail files, no Kafka",
                                   formatter_class=DefaultsHelp)
    scan_cmd.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                          help="CloudTrail files or directories")
    scan_cmd.add_argument("--output", type=Path, metavar="FILE",
                          help="write the alerts as JSON Lines to FILE (default: stdout)")
    scan_cmd.add_argument("--format", dest="output_format", choices=["auto", "jsonl", "table"],
                          default="auto",
                          help="alerts as JSON Lines, or a table for reading; auto is a table "
                          "on a terminal, JSON Lines otherwise")
    _add_rule_options(scan_cmd)
    scan_cmd.add_argument("--exceptions-dir", type=Path, metavar="DIR",
                          help="exception lists and value lists to apply, as `run` would "
                          "(DETECTOR_EXCEPTIONS_DIR)")
    scan_cmd.add_argument("--no-event-original", action="store_true",
                          help="leave event.original out of the alerts")
    scan_cmd.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                          help="show a progress bar on stderr (default: when it is a terminal)")
    scan_cmd.add_argument("--fail-on-alert", action="store_true",
                          help="exit 1 when any alert was written")

    replay_cmd = commands.add_parser("replay", help="produce CloudTrail files to a topic",
                                     formatter_class=DefaultsHelp)
    replay_cmd.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                            help="CloudTrail files or directories")
    replay_cmd.add_argument("--topic", required=True, help="topic to produce to")
    replay_cmd.add_argument("--format", choices=["avro", "avro-registry", "json"], default="json",
                            help="encoding of the messages")
    replay_cmd.add_argument(
        "--envelope", choices=SHAPES, default=None,
        help="with --format json: wrap each record as it arrives from that source "
             "(records: an S3 log file object; cloudwatch: a gzipped subscription payload)")
    _add_settings_options(replay_cmd, TOOL_SETTINGS)
    replay_cmd.add_argument("--rate", type=_rate, help="records per second, e.g. 500/s "
                            "(default: as fast as the broker takes them)")
    replay_cmd.add_argument("--loop", action="store_true", help="replay forever, fresh eventIDs")
    replay_cmd.add_argument("--retime", action="store_true", help="set eventTime to now")

    query_cmd = commands.add_parser("query", help="run an ES|QL query over CloudTrail files")
    query_cmd.add_argument("esql", help="the query, e.g. 'FROM logs-aws.cloudtrail-* | LIMIT 5'")
    query_cmd.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                           help="CloudTrail files or directories, as `scan` reads them")

    _add_kafka_tools(commands)

    rules = commands.add_parser("rules", help="list or validate rule files")
    rule_commands = rules.add_subparsers(dest="rules_command", required=True)
    listing = rule_commands.add_parser("list", help="list the rules and whether they run")
    listing.add_argument("--rules-dir", type=Path, metavar="DIR",
                         help="also list the rule files of this directory (DETECTOR_RULES_DIR)")
    validate = rule_commands.add_parser("validate", help="check rule files")
    validate.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                          help="rule files, or directories of them")
    validate.add_argument("--skip-unsupported", action="store_true",
                          help="accept rules the detector cannot run yet (it skips them)")
    exceptions = commands.add_parser("exceptions", help="check exception lists on events")
    exception_commands = exceptions.add_subparsers(dest="exceptions_command", required=True)
    test = exception_commands.add_parser(
        "test", help="show which exception item removes which rule match, event by event"
    )
    test.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                      help="CloudTrail files or directories, as `scan` reads them")
    test.add_argument("--exceptions-dir", type=Path, required=True, metavar="DIR",
                      help="exception lists and value lists (DETECTOR_EXCEPTIONS_DIR)")
    _add_rule_options(test)
    return parser


def _add_rule_options(parser: argparse.ArgumentParser) -> None:
    """The rule choices of the offline commands, as `run` makes them."""
    parser.add_argument("--rules-dir", type=Path, metavar="DIR",
                        help="directory of extra rule files (DETECTOR_RULES_DIR)")
    parser.add_argument("--enable-rule", dest="enable_rules", action="append", default=[],
                        metavar="RULE_ID", help="run a rule that is off by default (repeatable)")
    parser.add_argument("--disable-rule", dest="disable_rules", action="append", default=[],
                        metavar="RULE_ID", help="do not run a rule (repeatable)")


def _add_kafka_tools(commands: Any) -> None:
    """`topics create` and `dlq show|replay`."""
    topics = commands.add_parser("topics", help="create the detector's topics")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True)
    create = topic_commands.add_parser(
        "create", formatter_class=DefaultsHelp,
        help="create the input, alerts and dead-letter topics (those that do not exist yet)",
    )
    create.add_argument("names", nargs="*", metavar="TOPIC",
                        help="topics to create (default: the input, alerts and dead-letter "
                        "topics of the settings)")
    create.add_argument("--partitions", type=int, default=6,
                        help="partitions of each topic: at least as many as detector processes")
    create.add_argument("--replication-factor", type=int, default=-1,
                        help="replicas of each partition (-1: the broker's default)")
    _add_settings_options(create, [*TOOL_SETTINGS, "input_topics", "alerts_topic", "dlq_topic"])

    dlq = commands.add_parser("dlq", help="read dead letters, send fixed ones back")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    show = dlq_commands.add_parser(
        "show", formatter_class=DefaultsHelp,
        help="print dead letters as JSON Lines with their headers, key and value",
    )
    again = dlq_commands.add_parser(
        "replay", formatter_class=DefaultsHelp,
        help="send dead letters (from the topic, or a fixed dlq show file) to their input topic",
    )
    for command in (show, again):
        command.add_argument("--reason", help="only dead letters with this dlq.reason")
        _add_settings_options(command, [*TOOL_SETTINGS, "input_topics", "dlq_topic"])
    show.add_argument("--limit", type=int, help="show at most this many")
    again.add_argument("--file", type=Path, metavar="FILE",
                       help="JSON Lines as dlq show writes them (edited), instead of the topic")
    again.add_argument("--topic", help="produce here instead of each letter's dlq.source.topic")


def _topics(args: argparse.Namespace) -> int:
    settings = _settings(args, [*TOOL_SETTINGS, "input_topics", "alerts_topic", "dlq_topic"],
                         input_format="json")
    names = args.names or [*settings.input_topics, settings.alerts_topic,
                           settings.dead_letter_topic]
    for name, outcome in kafka_tools.create_topics(
        settings.client_config(), names, args.partitions, args.replication_factor
    ):
        print(f"{outcome}: {name}")
    return EXIT_OK


def _dlq(args: argparse.Namespace) -> int:
    settings = _settings(args, [*TOOL_SETTINGS, "input_topics", "dlq_topic"],
                         input_format="json")
    topic = settings.dead_letter_topic
    if args.dlq_command == "show":
        shown = kafka_tools.show(kafka_tools.read_dead_letters(settings.client_config(), topic),
                                 sys.stdout, args.reason, args.limit)
        print(f"{shown} dead letter(s) in {topic}", file=sys.stderr)
        return EXIT_OK
    if args.file is not None:
        with args.file.open(encoding="utf-8") as lines:
            letters: list[kafka_tools.DeadLetter] = list(kafka_tools.letters_from_file(lines))
    else:
        letters = list(kafka_tools.read_dead_letters(settings.client_config(), topic))
    producer = Producer(producer_settings(settings.plain_producer_config()))
    result = kafka_tools.send_back(producer, letters, args.topic, args.reason)
    print(result.summary(args.topic or "their source topics"), file=sys.stderr)
    return EXIT_OK if result.complete else EXIT_FATAL


def _scan_rules(args: argparse.Namespace) -> tuple[list[LoadedRule], ExceptionSet]:
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        raise ConfigError(f"no such file or directory: {', '.join(missing)}")
    settings = load_settings(None, rules_dir=args.rules_dir, enable_rules=args.enable_rules,
                             disable_rules=args.disable_rules, input_format="json")
    configure_enrichment(
        settings.data_stream_namespace, settings.geoip_city_database, settings.geoip_asn_database
    )
    rules = load_enabled_rules(settings)
    links = rule_links(rule for rule in rules if rule.enabled)
    return rules, load_exceptions(args.exceptions_dir, links)


def _exceptions(args: argparse.Namespace) -> int:
    rules, exceptions = _scan_rules(args)

    def explain(item: FileRecord, verdict: Verdict) -> None:
        event_id = verdict.record.get("eventID")
        for rule in verdict.matched:
            print(f"alert     {item.origin}  {event_id}  {rule.name}")
        for rule, excepted in verdict.excepted:
            print(f"excluded  {item.origin}  {event_id}  {rule.name}  by {excepted.name!r} "
                  f"[{excepted.list_id}/{excepted.item_id}] ({excepted.source})")

    counts = scan(args.paths, rules, io.StringIO(), progress=None, exceptions=exceptions,
                  on_verdict=explain)
    print(f"{counts.records} records, {counts.alerts} alerts, {counts.excepted} matches "
          f"removed by {exceptions.item_count} exception items", file=sys.stderr)
    return EXIT_OK


def _scan(args: argparse.Namespace) -> int:
    rules, exceptions = _scan_rules(args)
    output = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    table = args.output_format == "table" or (
        args.output_format == "auto" and args.output is None and sys.stdout.isatty()
    )
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        counts = scan(args.paths, rules, output, progress=sys.stderr if show_progress else None,
                      include_event_original=not args.no_event_original, table=table,
                      exceptions=exceptions)
    finally:
        if args.output:
            output.close()
    removed = f"; {counts.excepted} matches removed by exceptions" if exceptions.item_count else ""
    print(counts.summary() + removed, file=sys.stderr)
    return EXIT_FATAL if args.fail_on_alert and counts.alerts else EXIT_OK


def _query(args: argparse.Namespace) -> int:
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        raise ConfigError(f"no such file or directory: {', '.join(missing)}")
    try:
        run_query(args.esql, args.paths, sys.stdout)
    except EsqlError as error:
        print(f"cloudtrail-detector: query error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:  # the reader (`| head`) has seen enough
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed stdout for exit
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    if args.envelope and args.format != "json":
        raise ConfigError("--envelope wraps JSON records: use it with --format json")
    settings = _settings(
        args, TOOL_SETTINGS,
        input_format="avro-registry" if args.format == "avro-registry" else "json",
    )
    producer = Producer(producer_settings(settings.plain_producer_config()))
    check_topic(producer, args.topic, settings.bootstrap_servers)
    if args.format == "avro-registry":
        encode = registry_encoder(registry_client(settings), f"{args.topic}-value")
    elif args.format == "avro":
        encode = avro_encoder()
    elif args.envelope:
        encode = envelope_encoder(args.envelope)
    else:
        encode = json_encoder()
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    options = ReplayOptions(rate=args.rate, loop=args.loop, retime=args.retime)
    result = replay(args.paths, producer, args.topic, encode, options, should_stop=lambda: stop)
    print(result.summary(args.topic), file=sys.stderr)
    return EXIT_OK if result.complete else EXIT_FATAL


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
            return run_service(_settings(args, RUN_SETTINGS))
        if args.command == "scan":
            return _scan(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "exceptions":
            return _exceptions(args)
        if args.command == "query":
            return _query(args)
        if args.command == "topics":
            return _topics(args)
        if args.command == "dlq":
            return _dlq(args)
        return _rules(args)
    except (ConfigError, RuleLoadError, ExceptionLoadError) as error:
        print(f"cloudtrail-detector: configuration error:\n{error}", file=sys.stderr)
        return EXIT_CONFIG
    except ReplayError as error:
        print(f"cloudtrail-detector: {error}", file=sys.stderr)
        return EXIT_FATAL
