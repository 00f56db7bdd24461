"""/readyz says why the detector is not ready: fatal, stalled, or what it waits for."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from consumer.stream.http import serve
from consumer.stream.service import Health


def test_a_ready_detector_has_no_reason() -> None:
    health = Health(ready=True)

    assert health.unready_reason() is None
    assert health.serving()


def test_the_reasons_name_fatal_errors_stalls_and_what_is_awaited() -> None:
    assert Health(waiting_for="the broker is unreachable").unready_reason() == (
        "the broker is unreachable")
    assert Health(ready=True, fatal="fenced").unready_reason() == "fatal: fenced"
    stalled = Health(ready=True, last_loop=time.monotonic() - 30)
    assert stalled.unready_reason() == (
        "the loop has not turned for 30s (blocked in a commit?)")


def test_readyz_answers_503_with_the_reason() -> None:
    health = Health(waiting_for="topic(s) cloudtrail-events do not exist")
    server = serve("127.0.0.1", 0, CollectorRegistry(), health.alive, health.unready_reason)
    try:
        url = f"http://127.0.0.1:{server.server_port}/readyz"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert (refused.value.code, refused.value.read()) == (
            503, b"not ready: topic(s) cloudtrail-events do not exist\n")
        health.ready, health.waiting_for = True, ""
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert (reply.status, reply.read()) == (200, b"ready\n")
    finally:
        server.shutdown()
