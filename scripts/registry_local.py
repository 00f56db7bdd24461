"""Run Apicurio Registry on loopback: a real Schema Registry with the Confluent-compatible API.

Apicurio serves Confluent's REST API under /apis/ccompat/v7, which is what confluent-kafka's
SchemaRegistryClient (and so the detector) speaks. It comes from Maven Central as a Quarkus
application and needs Java 21 or newer; its schemas live in an H2 file in the work directory, so
a restart keeps them. With `users`, every API call needs HTTP basic auth (Quarkus' embedded
users), which is how the detector's DETECTOR_SCHEMA_REGISTRY_BASIC_AUTH is tested.

    python -m scripts.registry_local run      # start, print the URL, stop on Ctrl-C
    python -m scripts.registry_local fetch    # only download
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from scripts.kafka_local import free_port
from scripts.server_local import (
    ServerProcess,
    answers,
    fetch_maven,
    http_json,
    java_home,
    unpacked,
)

APICURIO_VERSION = os.environ.get("REGISTRY_LOCAL_VERSION", "3.3.3")
CCOMPAT_PATH = "/apis/ccompat/v7"


def fetch_registry() -> Path:
    """The unpacked Quarkus application (quarkus-run.jar and its lib/)."""
    archive = fetch_maven(f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all")
    return unpacked(archive, f"apicurio-{APICURIO_VERSION}")


class LocalRegistry(ServerProcess):
    """One Apicurio Registry process; `restart()` keeps its schemas and its port."""

    name = "apicurio"

    def __init__(
        self, workdir: Path | None = None, users: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(workdir)
        self.users = dict(users or {})
        self.port = free_port()
        self.management_port = free_port()

    @property
    def url(self) -> str:
        """The base URL to give confluent-kafka (and DETECTOR_SCHEMA_REGISTRY_URL)."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    def _properties(self) -> dict[str, str]:
        properties = {
            "quarkus.http.host": "127.0.0.1",
            "quarkus.http.port": str(self.port),
            "quarkus.management.host": "127.0.0.1",
            "quarkus.management.port": str(self.management_port),
            "apicurio.datasource.url": f"jdbc:h2:file:{self.workdir / 'db' / 'registry'}",
        }
        if self.users:
            properties |= {
                "quarkus.http.auth.basic": "true",
                "quarkus.security.users.embedded.enabled": "true",
                "quarkus.security.users.embedded.plain-text": "true",
                "quarkus.http.auth.permission.apis.paths": "/apis/*",
                "quarkus.http.auth.permission.apis.policy": "authenticated",
            }
            properties |= {
                f"quarkus.security.users.embedded.users.{user}": password
                for user, password in self.users.items()
            }
        return properties

    def start(self, timeout: float = 120.0) -> None:
        home = fetch_registry()
        java = java_home(21) / "bin" / "java"
        self.spawn([
            str(java), "-Xms128m", "-Xmx512m", "-XX:TieredStopAtLevel=1",
            *(f"-D{key}={value}" for key, value in self._properties().items()),
            "-jar", str(home / "quarkus-run.jar"),
        ])
        self.wait_until(
            lambda: answers(f"http://127.0.0.1:{self.management_port}/health/ready"), timeout
        )

    def restart(self) -> None:
        self.stop()
        self.start()

    def set_compatibility(self, subject: str, level: str,
                          auth: tuple[str, str] | None = None) -> None:
        """Confluent's PUT /config/{subject}: the registry then refuses incompatible versions."""
        status, body = http_json(
            "PUT", f"{self.url}/config/{subject}", {"compatibility": level}, auth=auth,
            content_type="application/vnd.schemaregistry.v1+json",
        )
        if status != 200:
            raise RuntimeError(f"setting compatibility of {subject}: {status} {body}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "fetch"])
    args = parser.parse_args()
    if args.command == "fetch":
        print(fetch_registry())
        return 0
    registry = LocalRegistry()
    started = time.monotonic()
    try:
        registry.start()
        print(f"Apicurio Registry {APICURIO_VERSION} ready at {registry.url} in "
              f"{time.monotonic() - started:.1f}s (log: {registry.log_path}); Ctrl-C stops it",
              flush=True)
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
    finally:
        registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
