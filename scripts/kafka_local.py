"""Run a single-node Apache Kafka broker (KRaft, broker and controller in one JVM) on loopback.

Tests, the demo and the benchmarks need a real broker and this machine has no Docker engine, so
the broker's jars come from Maven Central (cached outside the repo) and run on the installed JDK.
`scripts/kafka-local` runs this with the project's virtualenv:

    scripts/kafka-local run                 # a free port, a throw-away data directory
    scripts/kafka-local run --port 9092 --topic cloudtrail-events:6 \
        --topic cloudtrail-alerts --topic cloudtrail-events.dlq --data-dir ~/kafka-data
    scripts/kafka-local fetch               # only download the jars
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

KAFKA_VERSION = os.environ.get("KAFKA_LOCAL_VERSION", "4.1.1")
LOG4J_VERSION = "2.24.3"
"""log4j2 with its slf4j 1.x binding: Kafka 4.0 to 4.2 log through slf4j 1.7.36."""

CACHE_ROOT = Path(
    os.environ.get("KAFKA_LOCAL_CACHE", Path.home() / ".cache" / "cloudtrail-detector")
)

POM_TEMPLATE = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.cloudtrail-detector</groupId>
  <artifactId>kafka-local</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

LOG4J2_CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="${sys:kafka.logs.dir}/server.log">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="warn"/>
    <Logger name="org.apache.kafka.controller" level="info"/>
    <Root level="info"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""

SINGLE_NODE_SETTINGS = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "10",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "10",
    "group.initial.rebalance.delay.ms": "0",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
    "num.partitions": "1",
    "auto.create.topics.enable": "false",
    "log.flush.interval.messages": "9223372036854775807",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
}


def fetch_jars() -> Path:
    """Download the broker's runtime classpath once; later calls reuse the cache."""
    lib_dir = CACHE_ROOT / f"kafka-{KAFKA_VERSION}" / "libs"
    stamp = lib_dir / ".complete"
    if stamp.exists():
        return lib_dir
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka broker jars")
    work = lib_dir.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(POM_TEMPLATE.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
    staging = work / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run(
        [
            "mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(work / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
        ],
        check=True,
    )
    shutil.rmtree(lib_dir, ignore_errors=True)
    staging.rename(lib_dir)
    stamp.touch()
    return lib_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise RuntimeError("a JDK 17+ (java) is needed to run the Kafka broker")
    return found


class LocalKafka:
    """One KRaft broker+controller process; its data survives `stop()` so it can be restarted."""

    def __init__(
        self,
        workdir: Path | None = None,
        extra_config: Mapping[str, str] | None = None,
        listeners: Mapping[str, str] | None = None,
        jvm_options: tuple[str, ...] = (),
        scram_users: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
    ) -> None:
        """`scram_users` (name -> password) get SCRAM-SHA-512 credentials when the storage is
        formatted: KRaft has no ZooKeeper to add them to before the broker first starts.
        A `workdir` formatted before is reused with its data and its controller port (the
        KRaft quorum remembers the controller's address)."""
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="kafka-local-"))
        self.extra_config = dict(extra_config or {})
        self.extra_listeners = dict(listeners or {})
        self.jvm_options = jvm_options
        self.scram_users = dict(scram_users or {})
        remembered = self._remembered_ports()
        self.port = port or remembered.get("port") or free_port()
        self.controller_port = remembered.get("controller") or free_port()
        self.listener_ports = {name: free_port() for name in self.extra_listeners}
        self.process: subprocess.Popen[bytes] | None = None
        self._formatted = (self.workdir / "data" / "meta.properties").exists()

    def _remembered_ports(self) -> dict[str, int]:
        try:
            ports = json.loads((self.workdir / "ports.json").read_text())
        except (OSError, ValueError):
            return {}
        return {key: int(value) for key, value in ports.items()}

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def listener_address(self, name: str) -> str:
        return f"127.0.0.1:{self.listener_ports[name]}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "logs" / "server.log"

    def _write_config(self) -> Path:
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        advertised = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        for name, protocol in self.extra_listeners.items():
            listeners.append(f"{name}://127.0.0.1:{self.listener_ports[name]}")
            advertised.append(f"{name}://127.0.0.1:{self.listener_ports[name]}")
            protocols.append(f"{name}:{protocol}")
        listeners.append(f"CONTROLLER://127.0.0.1:{self.controller_port}")
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "listener.security.protocol.map": ",".join(protocols),
            "log.dirs": str(self.workdir / "data"),
            **SINGLE_NODE_SETTINGS,
            **self.extra_config,
        }
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        (self.workdir / "log4j2.xml").write_text(LOG4J2_CONFIG)
        return path

    def _java(self, main_class: str, *args: str) -> list[str]:
        return [
            java_binary(),
            "-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.xml'}",
            *self.jvm_options,
            "-cp", str(fetch_jars() / "*"),
            main_class, *args,
        ]

    def start(self, timeout: float = 90.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        config = self._write_config()
        if not self._formatted:
            scram = [
                argument
                for name, password in self.scram_users.items()
                for argument in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
            ]
            (self.workdir / "ports.json").write_text(
                json.dumps({"port": self.port, "controller": self.controller_port})
            )
            subprocess.run(
                self._java(
                    "kafka.tools.StorageTool", "format", "--standalone",
                    "-t", str(uuid.uuid4()).replace("-", "")[:22], "-c", str(config), *scram,
                ),
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            self._formatted = True
        with open(self.workdir / "logs" / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                self._java("kafka.Kafka", str(config)),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Block until the broker answers a metadata request on its plaintext listener."""
        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        while True:
            if self.process is not None and self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"Kafka exited with {code}; see {self.log_path}")
            try:
                metadata = admin.list_topics(timeout=2)
                if metadata.brokers:
                    return
            except Exception:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka not ready after {timeout}s; see {self.log_path}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM for a clean shutdown, SIGKILL when the deadline passes."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def running_broker(**kwargs: object) -> Iterator[LocalKafka]:
    broker = LocalKafka(**kwargs)  # type: ignore[arg-type]
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


def topic_spec(text: str) -> tuple[str, int]:
    """NAME or NAME:PARTITIONS."""
    name, _, partitions = text.partition(":")
    if not name or (partitions and not partitions.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: give a topic as NAME or NAME:PARTITIONS")
    return name, int(partitions or 1)


def create_topics(bootstrap: str, topics: Sequence[tuple[str, int]]) -> None:
    """Create the topics that do not exist yet (a reused data directory keeps its topics)."""
    if not topics:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=10).topics
    wanted = [NewTopic(name, partitions, 1) for name, partitions in topics if name not in existing]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=30).items():
        try:
            future.result(timeout=30)
        except KafkaException as error:
            raise RuntimeError(f"cannot create topic {name}: {error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("command", choices=["run", "fetch"],
                        help="run: start the broker until Ctrl-C; fetch: only download the jars")
    parser.add_argument("--port", type=int, default=0,
                        help="client port on 127.0.0.1 (0: a free one; a reused data directory "
                        "keeps its port)")
    parser.add_argument("--topic", dest="topics", action="append", type=topic_spec, default=[],
                        metavar="NAME[:PARTITIONS]",
                        help="create this topic at start-up (repeatable; the broker does not "
                        "auto-create topics)")
    parser.add_argument("--data-dir", type=Path,
                        help="keep the broker's data here across runs (default: a temporary "
                        "directory, removed on exit)")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(fetch_jars())
        return 0
    started = time.monotonic()
    broker = LocalKafka(workdir=args.data_dir, port=args.port or None)
    try:
        broker.start()
        create_topics(broker.bootstrap_servers, args.topics)
        topics = ", ".join(f"{name} ({count} partitions)" for name, count in args.topics)
        print(
            f"Kafka {KAFKA_VERSION} ready at {broker.bootstrap_servers} "
            f"in {time.monotonic() - started:.1f}s (log: {broker.log_path})"
            f"{'; topics: ' + topics if topics else ''}; Ctrl-C stops it",
            flush=True,
        )
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
    finally:
        if args.data_dir is None:
            broker.close()
        else:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
