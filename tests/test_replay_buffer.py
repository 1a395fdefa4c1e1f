"""The replay buffer's policy, in one process: what it keeps, what it drops, what it offers next."""

import torch

from pipelocal.data import Batch
from pipelocal.schedules.replay import Entry, ReplayBuffer


def _entry(step):
    x = torch.zeros(2, 3)
    return Entry(step, Batch(x, torch.zeros(2, dtype=torch.long), None))


def test_least_used_freshest_and_drop_oldest():
    buf = ReplayBuffer(3, "least_used_freshest", None, 0)
    for step in range(3):
        buf.add(_entry(step))
    assert [buf.pick().step for _ in range(4)] == [2, 1, 0, 2]  # fresh ones newest first, then least used
    buf.add(_entry(3))  # full: the oldest (step 0) goes, though it was used
    assert sorted(e.step for e in buf.entries) == [1, 2, 3] and buf.dropped == 1 and buf.dropped_unused == 0
    buf.add(_entry(4))
    buf.add(_entry(5))  # drops 1 and 2 (used), keeps 3 (unused) and the new ones
    assert sorted(e.step for e in buf.entries) == [3, 4, 5] and buf.dropped == 3
    buf.add(_entry(6))  # drops 3, never used
    assert buf.dropped_unused == 1 and buf.bytes == 3 * _entry(0).nbytes


def test_max_reuse_makes_the_consumer_wait():
    buf = ReplayBuffer(2, "least_used_freshest", 2, 0)
    buf.add(_entry(0))
    assert [buf.pick().step for _ in range(2)] == [0, 0]
    assert buf.pick() is None and not buf.has_unused()


def test_uniform_sampling_is_seeded_and_covers_the_buffer():
    picks = []
    for _ in range(2):
        buf = ReplayBuffer(4, "uniform", None, 7)
        for step in range(4):
            buf.add(_entry(step))
        picks.append([buf.pick().step for _ in range(40)])
    assert picks[0] == picks[1] and set(picks[0]) == {0, 1, 2, 3}
