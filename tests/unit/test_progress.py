"""The running detector's log: dead-letter warnings rate-limited per reason, a hint when the input
looks like the other format, and the periodic progress line."""

from __future__ import annotations

import json
import logging

import pytest

from consumer.progress import Progress, ReasonLog, format_hint
from consumer.replay import avro_encoder
from tests.support.events import create_access_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_one_reason_logs_one_warning_and_then_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    reasons = ReasonLog(window_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING):
        for number in range(3210):
            reasons.warn("avro-truncated", f"dead letter {number}")
        reasons.warn("invalid-json", "another reason")
        clock.now += 10.0
        reasons.flush()

    assert [r.getMessage() for r in caplog.records] == [
        "dead letter 0",
        "another reason",
        "3209 more dead letter(s) with reason avro-truncated in the last 10s (not logged one "
        "by one; see cloudtrail_detector_dead_letters_total)",
    ]


def test_a_reason_is_logged_again_once_its_window_has_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    reasons = ReasonLog(window_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING):
        reasons.warn("empty", "first")
        clock.now += 10.0
        reasons.warn("empty", "second")

    assert [r.getMessage() for r in caplog.records] == ["first", "second"]


JSON_RECORD = json.dumps(create_access_key(event_id="e", caller="a", target="b")).encode()
AVRO_RECORD = avro_encoder()(create_access_key(event_id="e", caller="a", target="b"))


@pytest.mark.parametrize(
    ("payload", "input_format", "suggests"),
    [
        (JSON_RECORD, "avro", "DETECTOR_INPUT_FORMAT=json"),
        (b"  " + JSON_RECORD, "avro-registry", "DETECTOR_INPUT_FORMAT=json"),
        (b"\x00\x00\x00\x00\x01" + AVRO_RECORD, "json", "DETECTOR_INPUT_FORMAT=avro-registry"),
        (AVRO_RECORD, "json", "DETECTOR_INPUT_FORMAT=avro "),
        (AVRO_RECORD, "avro-registry", "DETECTOR_INPUT_FORMAT=avro "),
    ],
    ids=["json-as-avro", "json-as-registry", "registry-as-json", "avro-as-json",
         "avro-as-registry"],
)
def test_a_payload_in_the_other_format_gets_a_hint_naming_the_setting(
    payload: bytes, input_format: str, suggests: str
) -> None:
    hint = format_hint(payload, input_format)

    assert hint is not None
    assert suggests in hint


@pytest.mark.parametrize(
    ("payload", "input_format"),
    [(JSON_RECORD, "json"), (AVRO_RECORD, "avro"), (b"", "avro"), (None, "json")],
)
def test_a_payload_in_the_configured_format_gets_no_hint(
    payload: bytes | None, input_format: str
) -> None:
    assert format_hint(payload, input_format) is None


def test_the_progress_line_says_consumed_rate_alerts_dead_letters_and_lag() -> None:
    clock = Clock()
    progress = Progress(every_s=60.0, clock=clock)
    progress.consumed, progress.alerts, progress.dead_letters = 12_000, 4, 2
    clock.now += 60.0

    assert progress.due()
    assert progress.line(lag=1234, partitions=3) == (
        "progress: consumed 12,000 (200/s), alerts 4, dead letters 2, lag 1,234 over 3 "
        "partition(s)"
    )
    assert not progress.due()
    assert "lag unknown" in progress.line(lag=None, partitions=0)
