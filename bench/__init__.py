"""Benchmarks, run from the repository root as `python -m bench.<name>` (see docs/benchmarks.md).

They share the tests' helpers (tests/support) and the local broker script (scripts/kafka_local.py).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
"""Elastic's rule files and the CloudTrail datasets, beside the repository; may be absent."""
