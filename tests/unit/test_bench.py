"""The benchmarks stay runnable: each module imports as part of the `bench` package and answers
`--help` (they are run as `python -m bench.<name>`; nothing else would notice them breaking)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import bench
import bench.pipeline
from bench import REPO

OPTIONAL = {"bench.pipeline.quix": "quixstreams"}
"""Modules that need a package the project does not install (see docs/benchmarks.md)."""


def _modules() -> list[str]:
    names = []
    for package in (bench, bench.pipeline):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if not info.ispkg:
                names.append(info.name)
    return sorted(names)


def test_every_benchmark_module_is_listed() -> None:
    assert {"bench.pipeline_bench", "bench.hot_loop_bench", "bench.pipeline.reference"} <= set(
        _modules()
    )


@pytest.mark.parametrize("name", _modules())
def test_a_benchmark_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    module = importlib.import_module(name)
    main = getattr(module, "main", None)
    if main is None:
        return  # a helper module of the pipeline benchmark: importing it is the check
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_the_documented_command_runs_from_the_repository_root() -> None:
    """`python -m bench.pipeline_bench` finds `consumer`, `tests.support` and `scripts` with no
    path set up for it: the way docs/benchmarks.md runs every benchmark."""
    ran = subprocess.run([sys.executable, "-m", "bench.pipeline_bench", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=False, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert "--latency-rate" in ran.stdout
