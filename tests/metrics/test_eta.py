"""Time remaining: the duration format, the estimate from the measured step rate, the run's clock, the lines shown."""

import pytest

from pipelocal.metrics.console import Console, format_duration, remaining_s
from pipelocal.metrics.report import trained_line
from pipelocal.metrics.run_log import RunClock


@pytest.mark.parametrize(
    "seconds, text",
    [(None, "-"), (-3, "0s"), (0.4, "0s"), (42, "42s"), (59.6, "1m00s"), (185, "3m05s")]
    + [(3720, "1h02m"), (90000, "25h00m")],
)
def test_durations_read_at_a_glance(seconds, text):
    assert format_duration(seconds) == text


def test_remaining_time_is_the_steps_left_at_the_measured_rate():
    assert remaining_s(10, 30, 5.0) == 15.0  # 2 steps/s
    assert remaining_s(10, 0, 5.0) == 0.0
    assert remaining_s(0, 30, 5.0) is None and remaining_s(10, 30, 0.0) is None  # nothing measured yet


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_run_clock_counts_the_whole_run_and_what_this_process_trained():
    now = FakeClock()
    clock = RunClock(3, now)  # 3 epochs of 10 steps
    clock.start_epoch(0, 10, 0)
    now.t += 5.0
    assert clock.remaining_s(0, 5) == 25.0  # 5 steps in 5 s, 25 to go
    now.t += 5.0
    now.t += 2.0  # the epoch's evaluation: in the rate from now on
    assert clock.end_epoch(0) == 24.0  # 10 steps in 12 s, 20 to go
    assert clock.expected_s == 36.0 and clock.elapsed_s() == 12.0
    clock.start_epoch(1, 10, 0)
    now.t += 12.0
    clock.end_epoch(1)
    clock.start_epoch(2, 10, 0)
    now.t += 12.0
    assert clock.end_epoch(2) == 0.0 and clock.expected_s == 36.0  # set once, after the first epoch
    assert (clock.epochs_done, clock.elapsed_s()) == (3, 36.0)


def test_a_resumed_run_measures_from_where_it_resumed():
    now = FakeClock()
    clock = RunClock(2, now)
    clock.start_epoch(1, 10, 4)  # resumed at step 14 of 20
    now.t += 3.0
    assert clock.remaining_s(1, 7) == 3.0  # 3 steps in 3 s (not 17), 3 to go
    assert clock.remaining_s(1, 4) is None


def test_the_closing_line_says_elapsed_and_expected():
    assert trained_line(3, 83.0, 80.2) == "trained 3 epochs in 1m23s (expected 1m20s after the first)"
    assert trained_line(1, 12.0) == "trained 1 epoch in 12s"


def test_the_plain_progress_line_shows_the_epoch_and_the_run_remaining(capsys):
    with Console("plain").progress("epoch 1/3", 100) as update:
        update(50, {"loss": 2.0}, 185.0)
        update(60, {"loss": 1.5})
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("epoch 1/3 50/100  loss 2  eta ") and first.endswith("  run eta 3m05s")
    assert "run eta" not in second  # not known: not shown
