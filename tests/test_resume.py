"""Checkpoints and resume in one process (sequential, e2e): exact resume mid-epoch and at an epoch end,
resume=auto in the same folder, damaged checkpoints, a different network refused, pruning, SIGINT."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from pipelocal import checkpoint
from pipelocal.config import ConfigError
from pipelocal.job import run_job
from pipelocal.metrics.stats import read_epochs
from pipelocal.preemption import Preempted
from tests.conftest import tiny_config

# 2 epochs of 4 steps (max_steps), a checkpoint every 3 steps: after steps 3, 4 (epoch end), 6, 8 (final).
RUN = [
    "--mode=sequential",
    "--method.name=infopro",
    "--train.epochs=2",
    "--train.max_steps=4",
    "--train.deterministic=true",
    "--train.threads=1",  # the module fixture runs before the one-thread fixture of each test
    "--checkpoint.every_steps=3",
    "--checkpoint.keep=0",
    "--guidance.every=3",
]


def _run(tmp_path, name, *extra):
    return run_job(tiny_config(*RUN, f"--metrics.run_name={name}", *extra, tmp_path=tmp_path))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    _run(out, "a")
    return out


def _same(a: Path, b: Path) -> None:
    first, second = checkpoint.load_merged(a), checkpoint.load_merged(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert [(r.test_top1, [s.loss for s in r.stages]) for r in read_epochs(a)][-1] == [
        (r.test_top1, [s.loss for s in r.stages]) for r in read_epochs(b)
    ][-1]
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert (ours["final_top1"], ours["best_top1"], ours["steps"]) == (
        theirs["final_top1"],
        theirs["best_top1"],
        theirs["steps"],
    )


def test_every_checkpoint_is_written_complete(full):
    names = [p.name for p in checkpoint.complete(full / "a" / "checkpoints")]
    assert names == ["step-00000003", "step-00000004", "step-00000006", "step-00000008"]
    meta = checkpoint.read_meta(full / "a" / "checkpoints" / "step-00000004")
    assert (meta["step"], meta["epoch"], len(meta["history"])) == (4, 1, 1)
    keys = checkpoint.stored_metadata(full / "a" / "checkpoints" / "step-00000006")
    assert any(k.startswith("optim.local_modules.1.") and k.endswith("momentum_buffer") for k in keys)
    assert any(k.endswith("running_mean") for k in keys) and "rank.p1x1.stage0.modules0-2.replica0" in keys
    assert all(checkpoint.problem(p) is None for p in checkpoint.complete(full / "a" / "checkpoints"))


@pytest.mark.parametrize("step", [3, 4, 6])
def test_resume_mid_epoch_and_at_an_epoch_end_is_exact(full, tmp_path, step):
    _run(tmp_path, "b", f"--train.resume={full / 'a' / 'checkpoints' / f'step-{step:08d}'}")
    _same(full / "a", tmp_path / "b")


def test_e2e_resumes_exactly(tmp_path):  # with AdamW: its moments and step counts come back too
    e2e = ["--mode=e2e", "--method.name=e2e", "--guidance.every=0", "--optim.name=adamw", "--optim.lr=0.001"]
    _run(tmp_path, "a", *e2e)
    _run(tmp_path, "b", *e2e, f"--train.resume={tmp_path / 'a' / 'checkpoints' / 'step-00000006'}")
    _same(tmp_path / "a", tmp_path / "b")


def test_resume_auto_continues_its_folder_and_appends_metrics(full, tmp_path):
    """A run stopped after step 6 (its later checkpoint, metrics and summary gone), continued with resume=auto."""
    run = tmp_path / "a"
    _run(tmp_path, "a", "--train.epochs=2")
    (run / "checkpoints" / "step-00000008").rename(tmp_path / "moved")
    (run / "summary.json").unlink()  # a stopped run has none (a finished one is never rewritten)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")  # epoch 1's line only, as at step 6
    _run(tmp_path, "a", "--train.resume=auto")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # appended
    _same(full / "a", run)


def test_a_used_run_name_is_an_error_without_resume(full):
    with pytest.raises(ConfigError, match="exists already; continue it with --train.resume=auto"):
        _run(full, "a")


def test_resume_auto_without_a_checkpoint_starts_fresh(tmp_path):
    _run(tmp_path, "fresh", "--train.resume=auto", "--train.epochs=1", "--checkpoint.every_steps=0")
    assert [p.name for p in checkpoint.complete(tmp_path / "fresh" / "checkpoints")] == ["step-00000004"]


def test_a_damaged_checkpoint_is_named_and_skipped(full, tmp_path):
    import shutil

    root = tmp_path / "checkpoints"
    for name in ("step-00000006", "step-00000008"):
        shutil.copytree(full / "a" / "checkpoints" / name, root / name)
    shard = next((root / "step-00000008").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-100])
    said = []
    assert checkpoint.latest(root, said.append) == root / "step-00000006"
    assert "step-00000008 is damaged" in said[0] and "truncated" in said[0]
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.resolve(root / "step-00000008")


def test_a_checkpoint_of_another_network_is_refused_naming_the_keys(full, tmp_path):
    path = f"--train.resume={full / 'a' / 'checkpoints' / 'step-00000006'}"
    with pytest.raises(ConfigError, match=r"split.num_modules: 2 in the checkpoint, 4 now"):
        _run(tmp_path, "k4", path, "--split.num_modules=4")
    with pytest.raises(ConfigError, match=r"model.depth: 8 in the checkpoint, 14 now"):
        _run(tmp_path, "d14", path, "--model.depth=14")
    with pytest.raises(ConfigError, match=r"split.boundaries: None in the checkpoint, \[0\] now"):
        _run(tmp_path, "b0", path, "--split.boundaries=[0]")


def test_keep_prunes_old_checkpoints(tmp_path):
    _run(tmp_path, "k", "--checkpoint.keep=2")
    assert [p.name for p in checkpoint.complete(tmp_path / "k" / "checkpoints")] == ["step-00000006", "step-00000008"]


def test_sigint_stops_after_the_step_with_a_checkpoint_and_resumes_exactly(full, tmp_path):
    """SIGINT in the middle of a one-process run: the step finishes, the checkpoint is written, Preempted
    says where; resume=auto then ends where the uninterrupted run ends."""
    slow = ["--pipeline.slowdown.stage=0", "--pipeline.slowdown.factor=40"]  # slower steps, same math
    timer = threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(Preempted) as stopped:
        _run(tmp_path, "a", *slow)
    timer.cancel()
    assert 0 < stopped.value.step < 8 and Path(stopped.value.path).is_dir()
    _run(tmp_path, "a", "--train.resume=auto")
    _same(full / "a", tmp_path / "a")


def test_a_batch_larger_than_the_data_is_an_error_at_once(tmp_path):
    with pytest.raises(ConfigError, match="larger than the 512 training samples"):
        _run(tmp_path, "big", "--data.batch_size=100000")
