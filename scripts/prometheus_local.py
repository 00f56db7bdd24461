"""Run Prometheus (Debian's `prometheus` package) on loopback, scraping given targets.

The scrape job is named `cloudtrail-detector` like deploy/prometheus/prometheus.yml's, so the
alert rules and the dashboard's queries (which select that job) run unchanged against it.

    python -m scripts.prometheus_local run 127.0.0.1:9464   # scrape a local detector
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.kafka_local import free_port
from scripts.server_local import ServerProcess, ServerUnavailableError, answers, http_json

JOB = "cloudtrail-detector"


class LocalPrometheus(ServerProcess):
    """One Prometheus server with a fresh TSDB in its work directory."""

    name = "prometheus"

    def __init__(
        self, targets: Sequence[str], workdir: Path | None = None,
        rule_files: Sequence[Path] = (), scrape_interval: str = "1s",
    ) -> None:
        super().__init__(workdir)
        self.targets = list(targets)
        self.rule_files = [path.resolve() for path in rule_files]
        self.scrape_interval = scrape_interval
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        config = {
            "global": {"scrape_interval": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": JOB, "static_configs": [{"targets": self.targets}]}
            ],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise ServerUnavailableError("prometheus is missing (Debian's prometheus package)")
        self.spawn([
            binary, f"--config.file={self._write_config()}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ])
        self.wait_until(lambda: answers(f"{self.url}/-/ready"), timeout)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one series) `expr` evaluates to now."""
        status, body = http_json(
            "GET", f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        )
        if status != 200 or body["status"] != "success":
            raise ValueError(f"Prometheus refused {expr!r}: {status} {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return result

    def target_metadata(self) -> dict[str, str]:
        """Metric family name -> type, as the scraped targets declared them (# TYPE lines),
        whether or not a series of that family exists yet."""
        _, body = http_json("GET", f"{self.url}/api/v1/targets/metadata")
        return {entry["metric"]: entry["type"] for entry in body["data"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run"])
    parser.add_argument("targets", nargs="+", help="host:port of each detector worker")
    parser.add_argument("--rules", type=Path, action="append", default=[],
                        help="rule files to evaluate (e.g. deploy/prometheus/alerts.yml)")
    args = parser.parse_args()
    prometheus = LocalPrometheus(args.targets, rule_files=args.rules, scrape_interval="15s")
    try:
        prometheus.start()
        print(f"Prometheus ready at {prometheus.url}; Ctrl-C stops it", flush=True)
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
    finally:
        prometheus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
