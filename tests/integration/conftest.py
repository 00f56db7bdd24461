"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.kafka import DetectorProcess


@pytest.fixture
def detectors() -> Iterator[list[DetectorProcess]]:
    """Detector processes a test starts; each is killed at the end if still running."""
    started: list[DetectorProcess] = []
    yield started
    for detector in started:
        detector.stop()
