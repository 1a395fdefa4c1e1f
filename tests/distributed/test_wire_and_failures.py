"""Invariant 5 (nothing silently wrong on the wire) and fail-fast (docs/pipeline.md#failing-fast), as real
multi-process jobs."""

import os
import re
import subprocess
import sys
import time

import pytest
import torch

from pipelocal.distributed.wire import (
    HEADER_SIZE,
    Expected,
    Kind,
    TensorMeta,
    WireError,
    check_header,
    decode_header,
    encode_header,
)
from tests.distributed.launch import ROOT, TINY, torchrun

META = (TensorMeta(torch.float32, (8, 16, 4, 4)), TensorMeta(torch.float32, (8, 3, 16, 16)))


def test_header_round_trip():
    encoded = encode_header(Kind.DATA, 42, 5, META, halt=True)
    assert encoded.device.type == "cpu" and encoded.shape == (HEADER_SIZE,)  # a host buffer, on gloo even under NCCL
    header = decode_header(encoded)
    assert (header.kind, header.step, header.valid, header.metas, header.halt) == (Kind.DATA, 42, 5, META, True)
    assert header.labels is None  # labels travel beside the tensors, on the device, not in the header


@pytest.mark.parametrize(
    "kind, step, valid, metas, words",
    [
        (Kind.DATA, 41, 8, META, ["step 41", "expected 42"]),
        (Kind.EVAL, 42, 8, META, ["EVAL", "expected DATA"]),
        (Kind.DATA, 42, 7, META, ["7 valid rows"]),
        (Kind.DATA, 42, 8, (TensorMeta(torch.float16, (8, 16, 4, 8)), META[1]), ["float16"]),
    ],
)
def test_check_header_names_the_problem_and_both_stages(kind, step, valid, metas, words):
    header = decode_header(encode_header(kind, step, valid, metas))
    with pytest.raises(WireError) as err:
        check_header(header, Expected(Kind.DATA, 42, 8, META), src=1, dst=2)
    text = str(err.value)
    assert "stage 2" in text and "stage 1" in text and all(w in text for w in words)


def _wire(fault: str) -> str:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        str(ROOT / "tests/distributed/wire_worker.py"),
        fault,
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90, env={**os.environ})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.parametrize("fault", ["step", "kind", "dtype", "shape"])
def test_receiver_rejects_a_bad_message(fault):
    out = _wire(fault)
    assert "REJECTED" in out and "stage 1 received a bad message from stage 0" in out


def test_receiver_accepts_a_good_message():
    assert "ACCEPTED labels=[0, 1, 2, 3] shape=[4, 2, 3]" in _wire("ok")


def test_a_stage_that_raises_ends_the_job_naming_it(tmp_path):
    out, seconds = torchrun(
        3,
        *TINY,
        "--mode=pipeline",
        "--split.num_modules=3",
        "--train.max_steps=50",
        "--data.synthetic_train=2000",
        f"--metrics.out_dir={tmp_path}",
        env={"PIPELOCAL_INJECT_FAULT": "1:3:raise"},
    )
    assert out.returncode != 0
    assert seconds < 30
    assert "injected fault on stage 1 at step 3" in out.stderr and "error on stage 1" in out.stderr


def test_a_stopped_stage_ends_the_job_within_the_timeout_and_is_named(tmp_path):
    """Stage 1 SIGSTOPs itself (frozen: no thread of it runs). Its watchdog ends it within pipeline.timeout_s
    of its last beat, so the job ends then (not after torchrun's 30 s grace), and torchrun's root cause is
    stage 1 (rank 1), not the healthy stage 0 whose sends failed."""
    out, _ = torchrun(
        2,
        *TINY,
        "--mode=pipeline",
        "--train.max_steps=50",
        "--data.synthetic_train=2000",
        "--pipeline.timeout_s=5",
        f"--metrics.out_dir={tmp_path}",
        env={"PIPELOCAL_INJECT_FAULT": "1:2:stop"},
    )
    ended = time.time()
    assert out.returncode != 0
    stopped = float(re.search(r"stage 1 stops itself at ([0-9.]+)", out.stderr).group(1))
    assert ended - stopped < 5 + 4, f"took {ended - stopped:.1f} s after the stop"
    assert "stage 1 stopped responding for 5 s" in out.stderr
    root = out.stderr[out.stderr.index("Root Cause") :]
    assert "rank      : 1 (local_rank: 1)" in root and "SIGKILL" in root
