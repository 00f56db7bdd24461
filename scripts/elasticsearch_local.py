"""Run Elasticsearch (the integ-test-zip distribution from Maven Central) on loopback.

The integ-test-zip is Elasticsearch's smallest distribution: the server and core modules, no
security plugin to configure and no bundled JDK (it runs on the installed JDK 17). Elasticsearch
refuses to run as root, so as root it is started as `nobody` on a copy of the distribution
whose config, data, logs and temp directories that user owns (the files themselves are hard
links into the cache: the copy costs no disk and no time).

    python -m scripts.elasticsearch_local run     # start, print the URL, stop on Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from scripts.kafka_local import free_port
from scripts.server_local import (
    ServerProcess,
    answers,
    as_unprivileged,
    fetch_maven,
    give_to_unprivileged,
    http_json,
    java_home,
    unpacked,
)

ELASTICSEARCH_VERSION = os.environ.get("ELASTICSEARCH_LOCAL_VERSION", "8.17.0")


def fetch_elasticsearch() -> Path:
    archive = fetch_maven(
        f"org.elasticsearch.distribution.integ-test-zip:elasticsearch:{ELASTICSEARCH_VERSION}:zip"
    )
    return unpacked(archive, f"elasticsearch-{ELASTICSEARCH_VERSION}") / (
        f"elasticsearch-{ELASTICSEARCH_VERSION}"
    )


class LocalElasticsearch(ServerProcess):
    """A single-node cluster, security off, 512 MB heap."""

    name = "elasticsearch"

    def __init__(self, workdir: Path | None = None) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.transport_port = free_port()
        self._home: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _prepare_home(self) -> Path:
        """The distribution, hard-linked, with its own writable config, logs, data and tmp, in
        a directory of its own under the system's temp directory: the work directory's parents
        may be closed to the unprivileged user."""
        if self._home is not None:
            return self._home
        distribution = fetch_elasticsearch()
        base = Path(tempfile.mkdtemp(prefix="elasticsearch-home-"))
        base.chmod(0o755)
        home = self._home = base / "home"
        subprocess.run(["cp", "-al", str(distribution), str(home)], check=True)
        shutil.rmtree(home / "config")
        shutil.copytree(distribution / "config", home / "config")
        shutil.rmtree(home / "logs", ignore_errors=True)
        for writable in ("logs", "data", "tmp"):
            (home / writable).mkdir()
        with (home / "config" / "elasticsearch.yml").open("a") as config:
            config.write(
                "\nnetwork.host: 127.0.0.1\n"
                f"http.port: {self.port}\ntransport.port: {self.transport_port}\n"
                "discovery.type: single-node\nxpack.security.enabled: false\n"
                f"path.data: {home / 'data'}\npath.logs: {home / 'logs'}\n"
                "cluster.routing.allocation.disk.threshold_enabled: false\n"
            )
        give_to_unprivileged(*(home / name for name in ("config", "logs", "data", "tmp")))
        return home

    def start(self, timeout: float = 120.0) -> None:
        home = self._prepare_home()
        self.spawn(
            [*as_unprivileged(), str(home / "bin" / "elasticsearch")],
            env={
                "ES_JAVA_HOME": str(java_home(17, maximum=23)),
                "ES_TMPDIR": str(home / "tmp"),
                "ES_JAVA_OPTS": "-Xms512m -Xmx512m",
            },
            cwd=home,
        )
        self.wait_until(
            lambda: answers(f"{self.url}/_cluster/health?wait_for_status=yellow&timeout=1s"),
            timeout,
        )

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Any:
        """One API call; a non-2xx answer raises with Elasticsearch's error."""
        status, answer = http_json(method, f"{self.url}{path}", body, content_type=content_type)
        if not 200 <= status < 300:
            raise RuntimeError(f"{method} {path}: {status} {answer}")
        return answer

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and drop its data (a restart starts an empty cluster)."""
        super().stop(timeout)
        if self._home is not None:
            shutil.rmtree(self._home.parent, ignore_errors=True)
            self._home = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "fetch"])
    args = parser.parse_args()
    if args.command == "fetch":
        print(fetch_elasticsearch())
        return 0
    server = LocalElasticsearch()
    try:
        server.start()
        print(f"Elasticsearch {ELASTICSEARCH_VERSION} ready at {server.url} "
              f"(log: {server.log_path}); Ctrl-C stops it", flush=True)
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
