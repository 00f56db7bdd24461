"""Run a private Docker engine on this machine, and make a Debian base image with Python locally.

Debian's docker.io engine runs here on its own socket, data root and exec root under a work
directory, without touching the host's firewall or bridge (`--iptables=false --bridge=none`):
containers use the host network (`--network host`), so they reach the loopback broker. Images
cannot be pulled from a registry here, so `base_image()` makes one: a minimal Debian root file
system with Python by debootstrap (from Debian's own package mirror), turned into an image by
`docker import`. The root file system is cached as a tarball, since debootstrap takes minutes.

    python -m scripts.docker_local base     # make (or reuse) the cached base tarball
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.kafka_local import CACHE_ROOT
from scripts.server_local import ServerProcess, ServerUnavailableError

DEBIAN_SUITE = "bookworm"
"""Debian 12: its python3 is 3.11, the oldest Python the project supports."""
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
"""What the Dockerfile needs of its base: `python`, `python -m venv`, and TLS roots for pip."""
BASE_TAG = "cloudtrail-detector-base:debian-python"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def base_tarball() -> Path:
    """The debootstrapped root file system as a tarball in the cache, made once."""
    target = CACHE_ROOT / f"debian-{DEBIAN_SUITE}-python.tar"
    if target.exists():
        return target
    if shutil.which("debootstrap") is None:
        raise ServerUnavailableError("debootstrap is needed to make the local base image")
    if os.geteuid() != 0:
        raise ServerUnavailableError("debootstrap needs root to make the local base image")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=target.parent) as work:
        root = Path(work) / "root"
        try:
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 DEBIAN_SUITE, str(root)],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
        except subprocess.CalledProcessError as error:
            raise ServerUnavailableError(
                f"debootstrap {DEBIAN_SUITE} failed (is Debian's mirror reachable?): "
                f"{error.stderr.decode(errors='replace')[-500:]}"
            ) from None
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        partial = target.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(target)
    return target


class LocalDocker(ServerProcess):
    """One dockerd with everything (socket, images, containers) under its work directory."""

    name = "dockerd"

    def __init__(self, workdir: Path | None = None) -> None:
        super().__init__(workdir)
        self.socket = self.workdir / "docker.sock"

    @property
    def host(self) -> str:
        """DOCKER_HOST for clients of this engine."""
        return f"unix://{self.socket}"

    def start(self, timeout: float = 60.0) -> None:
        for tool in ("dockerd", "docker"):
            if shutil.which(tool) is None:
                raise ServerUnavailableError(f"{tool} is missing (Debian's docker.io package)")
        if os.geteuid() != 0:
            raise ServerUnavailableError("dockerd needs root")
        self.spawn([
            "dockerd", f"--host={self.host}", f"--data-root={self.workdir / 'data'}",
            f"--exec-root={self.workdir / 'exec'}", f"--pidfile={self.workdir / 'docker.pid'}",
            "--iptables=false", "--ip6tables=false", "--bridge=none",
        ])
        try:
            self.wait_until(
                lambda: self.docker("info", check=False, capture=True).returncode == 0, timeout
            )
        except RuntimeError as error:  # dockerd exited: this machine cannot run it
            raise ServerUnavailableError(str(error)) from None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop dockerd, then unmount what it left mounted under the work directory (its
        network namespace, overlay layers), deepest first, so the directory can be removed."""
        super().stop(timeout)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{self.workdir}/")),
                            key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)

    def docker(self, *args: str, check: bool = True, capture: bool = False,
               timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this engine (classic builder: BuildKit would pull images)."""
        return subprocess.run(
            ["docker", *args], check=check, text=True, timeout=timeout,
            capture_output=capture,
            env={**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"},
        )

    def base_image(self) -> str:
        """The local Debian-with-Python image, imported from the cached tarball, trusting the
        certificate authorities this host trusts (pip in a build reaches PyPI through them)."""
        if not self.docker("image", "inspect", BASE_TAG, check=False, capture=True).returncode:
            return BASE_TAG
        imported = f"{BASE_TAG}-debootstrap"
        self.docker("import", "--change", "CMD [\"python3\"]", str(base_tarball()), imported,
                    capture=True)
        with tempfile.TemporaryDirectory(prefix="base-image-") as context:
            shutil.copy(HOST_CA_BUNDLE, Path(context) / "ca-certificates.crt")
            (Path(context) / "Dockerfile").write_text(
                f"FROM {imported}\n"
                "COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n"
                "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt\n"
            )
            self.docker("build", "--network", "host", "-t", BASE_TAG, context, capture=True)
        return BASE_TAG


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["base"])
    parser.parse_args()
    print(base_tarball())
    return 0


if __name__ == "__main__":
    sys.exit(main())
