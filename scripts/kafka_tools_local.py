"""Kafka's own command-line clients (kafka-tools: the console consumer and producer, ...) on the
installed JDK, for tests that check what any Kafka client sees, not only librdkafka.

    python -m scripts.kafka_tools_local fetch
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from scripts.kafka_local import CACHE_ROOT, KAFKA_VERSION
from scripts.server_local import ServerUnavailableError, java_home

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.cloudtrail-detector</groupId>
  <artifactId>kafka-tools-local</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-nop</artifactId><version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
"""
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"


def fetch_tools() -> Path:
    """kafka-tools and its runtime classpath, downloaded once."""
    lib_dir = CACHE_ROOT / f"kafka-tools-{KAFKA_VERSION}" / "libs"
    if (lib_dir / ".complete").exists():
        return lib_dir
    if shutil.which("mvn") is None:
        raise ServerUnavailableError("Maven (mvn) is needed to fetch kafka-tools")
    work = lib_dir.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(POM.format(kafka=KAFKA_VERSION))
    staging = work / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run(
        ["mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(work / "pom.xml"),
         "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
         "-DincludeScope=runtime"],
        check=True, stdout=subprocess.DEVNULL,
    )
    shutil.rmtree(lib_dir, ignore_errors=True)
    staging.rename(lib_dir)
    (lib_dir / ".complete").touch()
    return lib_dir


def tool_command(main_class: str, *args: str) -> list[str]:
    """The java command line running one of Kafka's tools."""
    java = java_home(17) / "bin" / "java"
    return [str(java), "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", f"{fetch_tools()}/*",
            main_class, *args]


if __name__ == "__main__":
    print(fetch_tools())
    sys.exit(0)
