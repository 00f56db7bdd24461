"""The supervisor restarts a crashed worker later after each crash in a row, not every second."""

from __future__ import annotations

from consumer.stream.app import WORKER_HEALTHY_S, restart_pause


def test_crashes_in_a_row_back_off_up_to_30_seconds() -> None:
    crashes, pauses = 0, []
    for _ in range(7):
        crashes, pause = restart_pause(crashes, ran_s=0.5)
        pauses.append(pause)

    assert pauses == [1.0, 2.0, 5.0, 10.0, 30.0, 30.0, 30.0]


def test_a_worker_that_ran_a_minute_starts_the_row_again() -> None:
    assert restart_pause(6, ran_s=WORKER_HEALTHY_S) == (1, 1.0)
