"""Replay buffers and stragglers in the real pipeline (torchrun, gloo): fifo keeps invariant 1, replay reuses
batches as its policy says and ends cleanly, a straggler is as slow as asked, staleness follows the headers."""

import json

import pytest
import torch

from pipelocal import checkpoint
from pipelocal.checkpoint import load_merged
from tests.distributed.launch import TINY, torchrun
from tests.distributed.test_pipeline import sequential_state


def _run(tmp_path, nproc, *overrides):
    out, _ = torchrun(
        nproc,
        *TINY,
        "--mode=pipeline",
        *overrides,
        f"--metrics.out_dir={tmp_path}",
        "--metrics.run_name=p",
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((tmp_path / "p" / "summary.json").read_text())


def test_fifo_with_a_straggler_still_equals_sequential(tmp_path):
    overrides = ["--method.name=dgl", "--split.num_modules=2", "--pipeline.buffer=fifo"]
    _run(tmp_path, 2, *overrides, "--pipeline.slowdown.stage=0", "--pipeline.slowdown.factor=1.5")
    piped, reference = load_merged(tmp_path / "p"), sequential_state(overrides)
    for name, value in reference.items():
        assert torch.allclose(piped[name].float(), value.float(), atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("size, max_reuse", [(1, None), (4, 3)])
def test_replay_behind_a_slow_producer_reuses_batches_by_the_policy(tmp_path, size, max_reuse):
    cap = [] if max_reuse is None else [f"--pipeline.max_reuse={max_reuse}"]
    summary = _run(
        tmp_path,
        2,
        "--method.name=greedy",
        "--split.num_modules=2",
        "--pipeline.buffer=replay",
        f"--pipeline.buffer_size={size}",
        *cap,
        "--pipeline.slowdown.stage=0",
        "--pipeline.slowdown.factor=3",
        "--train.max_steps=8",
        "--train.epochs=2",
    )
    producer, consumer = summary["stages"]
    assert producer["steps"] == 16  # stage 0 produces exactly its epochs
    reuse = {int(k): v for k, v in consumer["reuse"].items()}
    assert sum(reuse.values()) == consumer["steps"] and consumer["steps"] > producer["steps"]  # it replayed
    assert reuse.get(1, 0) == consumer["fresh"]
    assert consumer["fresh"] + consumer["dropped_unused"] == producer["steps"]  # each batch used or dropped unused
    if max_reuse is not None:
        assert max(reuse) <= max_reuse
    stale = consumer["staleness"]
    assert 0 <= stale["p50"] <= stale["p95"] <= stale["max"] <= size - 1  # the buffer holds the newest M
    assert consumer["buffer_bytes_peak"] > 0 and summary["final_top1"] is not None
    # Epoch checkpoints are numbered by the plan, not by each stage's own step count: both stages' parts
    # land in one folder per epoch, complete and checked.
    saved = checkpoint.complete(tmp_path / "p" / "checkpoints")
    assert [p.name for p in saved] == ["step-00000008", "step-00000016"]
    assert all(checkpoint.problem(p) is None and len(list(p.glob("*.distcp"))) == 2 for p in saved)


def test_replay_with_a_slow_consumer_drops_and_never_blocks_the_producer(tmp_path):
    summary = _run(
        tmp_path,
        2,
        "--method.name=greedy",
        "--split.num_modules=2",
        "--pipeline.buffer=replay",
        "--pipeline.buffer_size=2",
        "--pipeline.slowdown.stage=1",
        "--pipeline.slowdown.factor=4",
        "--train.max_steps=10",
        "--train.epochs=1",
    )
    producer, consumer = summary["stages"]
    assert consumer["dropped_unused"] > 0 and consumer["fresh"] + consumer["dropped_unused"] == 10
    assert producer["send_wait_frac_median"] < 0.2  # it did not wait for the slow consumer


def test_straggler_takes_factor_times_its_compute(tmp_path):
    summary = _run(
        tmp_path,
        2,
        "--method.name=greedy",
        "--split.num_modules=2",
        "--pipeline.slowdown.stage=1",
        "--pipeline.slowdown.factor=2",
        "--train.max_steps=10",
    )
    slow = summary["stages"][1]
    per_step = slow["busy_s_per_step_median"] + slow["sleep_s_per_step_median"]
    assert per_step / slow["busy_s_per_step_median"] == pytest.approx(2, rel=0.15)
    assert slow["compute_s_per_step_median"] / slow["busy_s_per_step_median"] == pytest.approx(2, rel=0.15)
    assert summary["stages"][0]["sleep_s_per_step_median"] == 0
