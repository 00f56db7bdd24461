"""Wiring: settings → decoder, rules, metrics, HTTP endpoint and one service per worker."""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry

from consumer import __version__
from consumer.alerts.document import Alert, encode_json
from consumer.cloudtrail.decode import (
    Decoder,
    JsonDecoder,
    RegistryAvroDecoder,
    SchemalessAvroDecoder,
)
from consumer.cloudtrail.normalize import configure_enrichment
from consumer.config import ConfigError, Settings
from consumer.rules.detector import Detector
from consumer.rules.exceptions import ExceptionWatcher
from consumer.rules.loader import LoadedRule, RuleSet, load_rule_set, log_rule_set
from consumer.stream.http import serve
from consumer.stream.metrics import Metrics
from consumer.stream.registry import registered_alert_encoder, registry_client
from consumer.stream.service import RETRY_LATER_BACKOFF_S, Health, Service, install_signal_handlers
from consumer.stream.sink import FatalSinkError

log = logging.getLogger("consumer")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_CONFIG = 2

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process gets when its parent dies."""

WORKER_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Pauses before restarting a crashed worker, longer after each crash in a row, so a
persistent fault cannot spin; a worker that ran for WORKER_HEALTHY_S starts the row again."""

WORKER_HEALTHY_S = 60.0


def make_decoder(settings: Settings) -> Decoder:
    if settings.input_format == "avro-registry":
        # Asking before the partitions it paused are read again would only block the loop.
        return RegistryAvroDecoder(
            registry_client(settings), outage_memory_s=RETRY_LATER_BACKOFF_S
        )
    if settings.input_format == "avro":
        if settings.writer_schema is None:
            return SchemalessAvroDecoder()
        try:
            return SchemalessAvroDecoder(json.loads(Path(settings.writer_schema).read_text()))
        except (OSError, ValueError) as error:  # unreadable, not JSON, or not CloudTrail
            raise ConfigError(
                f"DETECTOR_WRITER_SCHEMA {settings.writer_schema}: {error}"
            ) from error
    return JsonDecoder(shape=settings.input_envelope)


def alert_encoder(settings: Settings) -> Callable[[Alert], bytes]:
    if settings.alert_format == "avro-registry":
        return registered_alert_encoder(
            registry_client(settings), f"{settings.alerts_topic}-value"
        )
    return encode_json


def load_rule_set_for(settings: Settings) -> RuleSet:
    """The configured rules, with each replaced built-in and skipped rule logged."""
    overrides = dict.fromkeys(settings.enable_rules, True)
    overrides |= dict.fromkeys(settings.disable_rules, False)
    rule_set = load_rule_set(settings.rules_dir, overrides)
    log_rule_set(rule_set)
    return rule_set


def load_enabled_rules(settings: Settings) -> list[LoadedRule]:
    return load_rule_set_for(settings).rules


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_worker(settings: Settings, worker: int) -> int:
    """One group member with its own metrics endpoint on metrics_port + worker."""
    configure_logging(settings.log_level)
    configure_enrichment(
        settings.data_stream_namespace, settings.geoip_city_database, settings.geoip_asn_database
    )
    rule_set = load_rule_set_for(settings)
    rules = rule_set.rules
    registry = CollectorRegistry(auto_describe=True)
    metrics = Metrics(registry)
    enabled = [rule for rule in rules if rule.enabled]
    metrics.rules_loaded.set(len(enabled))
    for kind, count in rule_set.skipped_by_kind().items():
        metrics.rules_skipped.labels(kind).set(count)
    metrics.build.info(
        {
            "version": __version__,
            "worker": str(worker),
            "rules": ",".join(rule.rule_id for rule in enabled),
        }
    )
    for rule in enabled:
        metrics.rule.labels(rule.rule_id).info({"rule_name": rule.name, "severity": rule.severity})
    health = Health()
    exceptions = ExceptionWatcher(settings.exceptions_dir, enabled, settings.exceptions_reload_s)
    metrics.exception_items.set(exceptions.current.item_count)
    detector = Detector(
        make_decoder(settings), rules, use_prefilter=settings.prefilter,
        exceptions=exceptions.current,
    )
    service = Service(
        settings, detector, metrics, health, worker=worker, encode_alert=alert_encoder(settings),
        exceptions=exceptions,
    )
    install_signal_handlers(service)
    port = settings.metrics_port + worker if settings.metrics_port else 0
    try:
        server = serve(settings.metrics_host, port, registry, health.alive, health.unready_reason)
    except OSError as error:
        raise port_error(settings, port, error) from None
    log.info(
        "worker %d: rules %s; metrics on http://%s:%d/metrics; settings %s",
        worker, [rule.name for rule in enabled], settings.metrics_host, server.server_port,
        json.dumps(settings.redacted()),
    )
    try:
        service.run()
    except FatalSinkError as error:
        log.error("fatal: %s", error)
        return EXIT_FATAL
    finally:
        server.shutdown()
    return EXIT_OK


def restart_pause(crashes_in_a_row: int, ran_s: float) -> tuple[int, float]:
    """The crash count after this crash, and how long to wait before the restart."""
    crashes = 1 if ran_s >= WORKER_HEALTHY_S else crashes_in_a_row + 1
    return crashes, WORKER_RESTART_BACKOFF_S[min(crashes, len(WORKER_RESTART_BACKOFF_S)) - 1]


def port_error(settings: Settings, port: int, error: OSError) -> ConfigError:
    return ConfigError(
        f"setting metrics_port (--metrics-port, DETECTOR_METRICS_PORT): cannot listen on "
        f"{settings.metrics_host}:{port}: {error.strerror} (another detector on this host? "
        f"give each its own port, or 0 for a free one)"
    )


def check_metrics_ports(settings: Settings) -> None:
    """The supervisor's check that every worker's port is free, before starting any."""
    if not settings.metrics_port:
        return
    for worker in range(settings.workers):
        port = settings.metrics_port + worker
        with socket.socket(socket.AF_INET6 if ":" in settings.metrics_host else socket.AF_INET,
                           socket.SOCK_STREAM) as probe:
            try:
                probe.bind((settings.metrics_host, port))
            except OSError as error:
                raise port_error(settings, port, error) from None


def _worker_main(settings: Settings, worker: int) -> None:
    """A worker's exit code tells the supervisor what to do: 2 (configuration) stops all."""
    _exit_with_parent()
    try:
        code = run_worker(settings, worker)
    except ConfigError as error:
        log.error("configuration error: %s", error)
        code = EXIT_CONFIG
    sys.exit(code)


def _exit_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when its supervisor dies, even by SIGKILL, so no
    orphaned worker keeps consuming for a group whose supervisor is gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warning("cannot tie worker lifetime to the supervisor on this platform")


def run(settings: Settings) -> int:
    """Run the detector: in this process, or as a supervisor of `workers` processes."""
    if settings.workers == 1:
        return run_worker(settings, 0)
    configure_logging(settings.log_level)
    load_enabled_rules(settings)  # a broken rule stops start-up here, not in N restart loops
    check_metrics_ports(settings)
    context = multiprocessing.get_context("spawn")
    stopping = False
    started_at: dict[int, float] = {}
    crashes: dict[int, int] = {}
    restart_at: dict[int, float] = {}

    def start(worker: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker_main, args=(settings, worker), name=f"worker-{worker}"
        )
        process.start()
        started_at[worker] = time.monotonic()
        return process

    workers = {index: start(index) for index in range(settings.workers)}

    def forward(signum: int, frame: FrameType | None) -> None:
        """First signal: each worker shuts down cleanly. Second: they are killed."""
        nonlocal stopping
        for process in workers.values():
            if process.is_alive():
                if stopping:
                    process.kill()
                else:
                    process.terminate()
        stopping = True

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    worst = EXIT_OK
    while workers or (restart_at and not stopping):
        for index, due in list(restart_at.items()):
            if time.monotonic() >= due and not stopping:
                del restart_at[index]
                workers[index] = start(index)
        if not workers:
            time.sleep(0.2)
        for index, process in list(workers.items()):
            process.join(0.5 / len(workers))
            if process.exitcode is None:
                continue
            del workers[index]
            if stopping or process.exitcode == EXIT_CONFIG:
                worst = max(worst, process.exitcode)
                if not stopping:
                    log.error("worker %d: configuration error; stopping", index)
                    forward(signal.SIGTERM, None)
                    restart_at.clear()
                continue
            ran = time.monotonic() - started_at[index]
            crashes[index], pause = restart_pause(crashes.get(index, 0), ran)
            log.error("worker %d exited with %s after %.0fs; restarting it in %.0fs",
                      index, process.exitcode, ran, pause)
            restart_at[index] = time.monotonic() + pause
    return worst
