"""The running detector's log: dead-letter warnings rate-limited per reason, a hint when the input
looks like the other format, and the periodic progress line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from consumer.offline.replay import avro_encoder
from consumer.offline.scan_output import ProgressBar, summary
from consumer.stream.progress import Progress, ReasonLog, format_hint
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


def test_the_scan_progress_bar_shows_bytes_records_and_alerts_at_most_10_times_a_second() -> None:
    stream = io.StringIO()
    clock = Clock()
    bar = ProgressBar(stream, total_bytes=2_000_000, clock=clock, width=lambda: 100)
    clock.now += 2.0

    bar.update(1_000_000, 5000, 3)
    bar.update(1_500_000, 6000, 3)  # too soon: not drawn

    drawn = stream.getvalue()
    assert drawn.startswith("\r[")
    assert drawn.count("\r") == 1
    assert "50% 1.0 MB/2.0 MB  5,000 records (2,500/s)  3 alerts" in drawn
    assert len(drawn) <= 100


def test_the_scan_summary_names_files_bytes_records_alerts_rules_and_time() -> None:
    assert summary(files=3, total_bytes=162_000_000, records=1_234_567, alerts=4, rules=1,
                   skipped=2, seconds=12.34) == (
        "scanned 3 file(s), 162.0 MB: 1,234,567 records, 4 alerts from 1 rule(s), 2 skipped, "
        "in 12.3s")
