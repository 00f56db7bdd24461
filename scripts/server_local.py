"""What the local server helpers share: artifacts from Maven Central unpacked once into the
cache, a JDK of the right version, an unprivileged user, and a child process that is waited for
until ready and stopped with SIGTERM, then SIGKILL.

Like scripts/kafka_local.py, every server binds to loopback on free ports and keeps its data in a
work directory of its own, which survives `stop()` so that a test can restart the server.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.kafka_local import CACHE_ROOT

UNPRIVILEGED_USER = "nobody"
UNPRIVILEGED_GROUP = "nogroup"


class ServerUnavailableError(RuntimeError):
    """The server cannot run on this machine (a tool or artifact is missing); tests skip on it
    with this message, every other failure fails them."""


def fetch_maven(coordinates: str) -> Path:
    """`group:artifact:version[:packaging[:classifier]]` downloaded once into the cache."""
    parts = coordinates.split(":")
    artifact, version = parts[1:3]
    packaging = parts[3] if len(parts) > 3 else "jar"
    classifier = f"-{parts[4]}" if len(parts) > 4 else ""
    target = CACHE_ROOT / "downloads" / f"{artifact}-{version}{classifier}.{packaging}"
    if target.exists():
        return target
    if shutil.which("mvn") is None:
        raise ServerUnavailableError(f"Maven (mvn) is needed to fetch {coordinates}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="fetch-", dir=target.parent))
    try:
        subprocess.run(
            ["mvn", "-q", "-B", "-Dstyle.color=never", "dependency:copy",
             f"-Dartifact={coordinates}", f"-DoutputDirectory={staging}"],
            check=True, cwd=staging, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        (staging / target.name).rename(target)
    except subprocess.CalledProcessError as error:
        raise ServerUnavailableError(
            f"cannot fetch {coordinates}: {error.stderr.decode(errors='replace')[-500:]}"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def unpacked(archive: Path, name: str) -> Path:
    """The archive's content under the cache's `name/`, unpacked once (a stamp marks it done)."""
    target = CACHE_ROOT / name
    stamp = target / ".complete"
    if stamp.exists():
        return target
    staging = target.with_name(f"{name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                path = Path(bundle.extract(member, staging))
                mode = member.external_attr >> 16
                if mode:
                    path.chmod(mode & 0o777)
    else:
        with tarfile.open(archive) as bundle:
            bundle.extractall(staging, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    stamp.touch()
    return target


def java_home(minimum: int, maximum: int = 99) -> Path:
    """A JDK from `minimum` to `maximum`: $JAVA_HOME, else the newest under /usr/lib/jvm that
    fits (Elasticsearch 8.17 refuses Java 24+, whose JVM no longer has a Security Manager)."""
    candidates = [Path(os.environ["JAVA_HOME"])] if os.environ.get("JAVA_HOME") else []
    candidates += sorted(Path("/usr/lib/jvm").glob("*"), key=_java_major, reverse=True)
    for home in candidates:
        if (home / "bin" / "java").exists() and minimum <= _java_major(home) <= maximum:
            return home
    raise ServerUnavailableError(f"no JDK {minimum} to {maximum} in $JAVA_HOME or /usr/lib/jvm")


def _java_major(home: Path) -> int:
    try:
        release = (home / "release").read_text()
    except OSError:
        return 0
    match = re.search(r'^JAVA_VERSION="(\d+)', release, re.MULTILINE)
    return int(match[1]) if match else 0


def as_unprivileged() -> list[str]:
    """The command prefix that drops root (servers that refuse to run as root); none otherwise."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        raise ServerUnavailableError("running as root and setpriv is missing to drop privileges")
    return ["setpriv", f"--reuid={UNPRIVILEGED_USER}", f"--regid={UNPRIVILEGED_GROUP}",
            "--clear-groups"]


def give_to_unprivileged(*paths: Path) -> None:
    """Hand directories to the user `as_unprivileged` runs as (a no-op when not root)."""
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    for path in paths:
        for directory, _, files in os.walk(path):
            os.chown(directory, user.pw_uid, user.pw_gid)
            for file in files:
                os.chown(Path(directory) / file, user.pw_uid, user.pw_gid)


def http_json(
    method: str, url: str, body: Any = None, *, auth: tuple[str, str] | None = None,
    content_type: str = "application/json", timeout: float = 30,
) -> tuple[int, Any]:
    """One HTTP request; the status and the decoded JSON answer (None when empty)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, raw = int(reply.status), reply.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return status, json.loads(raw) if raw.strip() else None


def answers(url: str) -> bool:
    """True when `url` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return 200 <= int(reply.status) < 300
    except OSError:
        return False


class ServerProcess:
    """One server child process with its log in its work directory."""

    name = "server"

    def __init__(self, workdir: Path | None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{self.name}-local-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def spawn(self, command: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **(env or {})}, cwd=cwd or self.workdir,
            )

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll `ready` until it holds; fail at once if the process exits meanwhile."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}: "
                    f"{self.log_tail()} (log {self.log_path})"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout}s; see {self.log_path}")
            time.sleep(0.2)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the process group for a clean shutdown, SIGKILL past the deadline."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
