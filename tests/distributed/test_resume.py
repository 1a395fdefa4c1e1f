"""Checkpoints and exact resume as real torchrun jobs: every multi-process mode resumed mid-epoch ends where
the uninterrupted run ends, a P = 2 checkpoint resumes at P = 4 and in one process, SIGTERM to one stage
stops the job with a checkpoint, and torchrun's restart after a ``kill -9`` finishes the run exactly.

Runs share torchrun jobs (tests/distributed/runs_worker.py): one start-up for many short runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from pipelocal.checkpoint import load_merged
from pipelocal.config_parse import load_config
from pipelocal.job import run_job
from pipelocal.metrics.stats import read_epochs
from pipelocal.preemption import PREEMPTED
from tests.distributed.launch import ROOT, TINY, job_env, torchrun, torchrun_command, torchrun_runs

# 2 epochs of 4 steps; checkpoints after steps 3 (mid-epoch 1), 4 (epoch end), 6 (mid-epoch 2) and 8 (final).
COMMON = [*TINY, "--train.epochs=2", "--train.max_steps=4", "--checkpoint.every_steps=3", "--checkpoint.keep=0"]
MID = "checkpoints/step-00000006"

TWO = {  # resumed at P = 2 from step 6 of the same config
    "pipeline-sync": ["--mode=pipeline", "--method.name=infopro", "--split.num_modules=4", "--guidance.every=2"],
    "ddp": ["--mode=ddp", "--method.name=e2e"],
    "gpipe": ["--mode=gpipe", "--method.name=e2e", "--pipeline.microbatches=2"],
    "1f1b": ["--mode=1f1b", "--method.name=e2e", "--pipeline.microbatches=2"],
}
FOUR = {  # P = 4: MLAAN's EMA links and cascade with sync guidance; async guidance
    "mlaan-sync": ["--mode=pipeline", "--method.name=mlaan", "--split.num_modules=4", "--guidance.every=3"],
    "infopro-async": [
        "--mode=pipeline",
        "--method.name=infopro",
        "--split.num_modules=4",
        "--guidance.every=2",
        "--guidance.mode=async",
    ],
}


def _args(out, name: str, case: list[str], *extra: str) -> list[str]:
    return [*COMMON, *case, f"--metrics.out_dir={out}", f"--metrics.run_name={name}", *extra]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Every P = 2 case run through, then resumed from its mid-epoch checkpoint: one torchrun job."""
    out = tmp_path_factory.mktemp("resume2")
    runs = []
    for name, case in TWO.items():
        runs += [_args(out, name, case), _args(out, f"{name}-resumed", case, f"--train.resume={out / name / MID}")]
    done, seconds = torchrun_runs(2, runs, out, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def four(two, tmp_path_factory):
    """At P = 4: the MLAAN case and its resume, and the P = 2 pipeline's checkpoint resumed at P = 4."""
    out = tmp_path_factory.mktemp("resume4")
    runs = [_args(out, "pipeline-sync-at-P4", TWO["pipeline-sync"], f"--train.resume={two / 'pipeline-sync' / MID}")]
    for name, case in FOUR.items():
        runs += [_args(out, name, case), _args(out, f"{name}-resumed", case, f"--train.resume={out / name / MID}")]
    done, _ = torchrun_runs(4, runs, out, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _same_run(a, b, exact: bool = True, same_layout: bool = True) -> None:
    """Same final weights, accuracy, and losses of the epoch the resume fell in (its figures before the
    checkpoint travel in it per process, so only a resume in the same stage layout joins them)."""
    first, second = load_merged(a), load_merged(b)
    assert first.keys() == second.keys()
    for key, value in first.items():
        if exact:
            assert torch.equal(value, second[key]), key
        else:
            assert torch.allclose(value.float(), second[key].float(), atol=1e-5, rtol=1e-4), key
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert (ours["final_top1"], ours["best_top1"]) == (theirs["final_top1"], theirs["best_top1"])
    last, again = read_epochs(a)[-1], read_epochs(b)[-1]  # the epoch the resume fell in, figures joined
    assert last.epoch == again.epoch and last.module_top1 == again.module_top1
    losses = [[x for s in r.stages for x in s.loss] for r in (last, again)]
    if same_layout:
        assert losses[0] == losses[1]


@pytest.mark.parametrize("name", list(TWO))
def test_resumed_mid_epoch_equals_uninterrupted(two, name):
    _same_run(two / name, two / f"{name}-resumed")


def test_mlaan_with_ema_links_and_guidance_at_p4_resumes_exactly(four):
    _same_run(four / "mlaan-sync", four / "mlaan-sync-resumed")


def test_async_guidance_resumes_from_a_drained_checkpoint(four):
    """Async guidance applies a gradient when it arrives, so even two uninterrupted runs differ in the last
    bits: not comparable exactly. The checkpoint is a drain point: the resumed run starts with nothing in
    flight, takes every guidance step of its part and applies every gradient (none is lost or doubled)."""
    ours, theirs = (
        json.loads((four / n / "summary.json").read_text()) for n in ("infopro-async", "infopro-async-resumed")
    )
    assert ours["guidance_steps"] == theirs["guidance_steps"] == 4
    resumed = read_epochs(four / "infopro-async-resumed")[-1]
    assert resumed.epoch == 2 and resumed.stages[0].guided_steps == 2 and resumed.test_top1 is not None


def test_a_p2_checkpoint_resumes_at_p4_and_in_one_process(two, four, tmp_path):
    _same_run(two / "pipeline-sync", four / "pipeline-sync-at-P4", same_layout=False)
    sync = [a for a in TWO["pipeline-sync"] if not a.startswith("--mode")]
    cfg = load_config(
        None, _args(tmp_path, "one", sync, "--mode=sequential", f"--train.resume={two / 'pipeline-sync' / MID}")
    )
    run_job(cfg)
    _same_run(
        two / "pipeline-sync", tmp_path / "one", exact=False, same_layout=False
    )  # pipeline = sequential up to float order


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                kids.append(int(entry))
    return sorted(kids)


def test_sigterm_to_one_stage_checkpoints_and_resume_auto_finishes_exactly(two, tmp_path):
    """SIGTERM to stage 1 mid-run: every stage stops after a common step, writes the checkpoint and exits 75;
    the same command with resume=auto ends where the uninterrupted run ends."""
    # Slow steps (stage 1 sleeps 30x its compute; the math is untouched) so the signal lands mid-run.
    args = _args(
        tmp_path,
        "pre",
        TWO["pipeline-sync"],
        "--metrics.log_every=1",
        "--pipeline.slowdown.stage=1",
        "--pipeline.slowdown.factor=30",
    )
    job = subprocess.Popen(
        torchrun_command(2, *args), cwd=ROOT, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    live = tmp_path / "pre" / "live.jsonl"
    deadline = time.time() + 120
    while not (live.exists() and len(live.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.2)
    stages = _children(job.pid)
    assert len(stages) == 2, stages
    sent = time.perf_counter()
    os.kill(stages[1], signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    seconds = time.perf_counter() - sent
    assert job.returncode != 0
    assert f"exitcode  : {PREEMPTED}" in stderr or "stopped: preempted" in stderr, stderr[-3000:]
    # the code-75 line comes once the checkpoint exists, from both stages; the signal line promises nothing
    assert stderr.count(f"(exit code {PREEMPTED})") == 2 and "exits with code" not in stderr, stderr[-3000:]
    saved = sorted((tmp_path / "pre" / "checkpoints").glob("step-*"))
    assert saved, stderr[-3000:]
    print(f"SIGTERM to exit: {seconds:.1f} s, checkpoint {saved[-1].name}")
    done, _ = torchrun(2, *args[:-2], "--train.resume=auto", timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout
    _same_run(two / "pipeline-sync", tmp_path / "pre")


def test_torchrun_restarts_a_killed_stage_and_finishes_exactly(two, tmp_path):
    """kill -9 of stage 1 at step 5 (after the checkpoint of step 4): torchrun --max-restarts=1 restarts the
    group, which resumes from that checkpoint (resume=auto) and ends where the uninterrupted run ends."""
    args = _args(tmp_path, "restarted", TWO["pipeline-sync"], "--train.resume=auto")
    done, _ = torchrun(2, *args, env={"PIPELOCAL_INJECT_FAULT": "1:5:kill"}, max_restarts=1, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout and "step 4" in done.stdout, done.stdout[-2000:]
    _same_run(two / "pipeline-sync", tmp_path / "restarted")
