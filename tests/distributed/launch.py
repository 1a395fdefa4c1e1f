"""Run pipelocal under torchrun from a test: a real multi-process job on gloo/CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Jobs without --config start from configs/default.yaml; the in-process references from the dataclass
# defaults. Everything that could differ between the two and matters to the math is pinned here.
TINY = [
    "--split.balance=uniform",
    "--data.name=synthetic",
    "--data.synthetic_shape=[3,16,16]",
    "--data.synthetic_train=320",
    "--data.synthetic_test=100",
    "--data.batch_size=32",
    "--data.eval_batch_size=50",
    "--model.depth=8",
    "--train.epochs=1",
    "--train.max_steps=5",
    "--train.deterministic=true",
    "--metrics.console=plain",
    "--pipeline.timeout_s=20",
    "--train.channels_last=false",  # default.yaml's speed switch (same math, other rounding)
]


def torchrun_command(nproc: int, *args: str, max_restarts: int = 0, target: tuple = ("-m", "pipelocal.run")):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--standalone",
        f"--max-restarts={max_restarts}",
        *target,
        *args,
    ]


def job_env(env: dict | None = None) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}


def torchrun(nproc: int, *args: str, env: dict | None = None, timeout: float = 120, **launch):
    """Returns (completed process, seconds). Output is captured; the job gets a fresh port."""
    cmd = torchrun_command(nproc, *args, **launch)
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=job_env(env), capture_output=True, text=True, timeout=timeout)
    return out, time.perf_counter() - start


def torchrun_runs(nproc: int, runs: list[list[str]], folder: Path, timeout: float = 300, target: tuple = ()):
    """Several runs one after another in one torchrun job (one start-up for all: runs_worker.py, or ``target``,
    a worker that takes the same file)."""
    spec = Path(folder) / "runs.json"
    spec.write_text(json.dumps(runs))
    target = target or (str(Path(__file__).with_name("runs_worker.py")),)
    return torchrun(nproc, str(spec), timeout=timeout, target=target)


def runs_fixture(nproc: int, cases: dict[str, list[str]], timeout: float = 600):
    """A module-scoped fixture: every case (run name -> arguments) at ``nproc`` processes, in one torchrun job;
    it returns the folder holding each run's directory under its name."""

    @pytest.fixture(scope="module")
    def runs(tmp_path_factory):
        out = tmp_path_factory.mktemp(f"runs-p{nproc}")
        specs = [[*args, f"--metrics.out_dir={out}", f"--metrics.run_name={name}"] for name, args in cases.items()]
        done, _ = torchrun_runs(nproc, specs, out, timeout)
        assert done.returncode == 0, done.stderr[-4000:]
        return out

    return runs
