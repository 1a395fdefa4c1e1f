"""The GPU tier (marker ``gpu``): the CUDA paths, on a machine with CUDA. Run it with ``pytest -m gpu``; the default
run hides GPUs (tests/conftest.py), so the CPU suite runs on the CPU on any machine and these tests skip.

Tolerances, per device:
- CUDA against CPU fp32 (other kernels, other summation orders; TF32 off in deterministic mode): 3 SGD steps of
  ResNet-20 agree to ``CROSS_DEVICE`` (relative 1e-3, absolute 1e-4);
- a pipeline against sequential mode on the same GPU (the same kernels; deterministic mode): ``SAME_DEVICE``
  (relative 1e-4, absolute 1e-5), the CPU suite's tolerance.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from pipelocal.checkpoint import load_merged
from pipelocal.config_parse import load_config
from pipelocal.job import run_job
from tests.distributed.launch import torchrun

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the GPU tier: pytest -m gpu)"),
]

CROSS_DEVICE = {"rtol": 1e-3, "atol": 1e-4}
SAME_DEVICE = {"rtol": 1e-4, "atol": 1e-5}

# ResNet-20 with InfoPro at K = 4 on CIFAR-shaped synthetic data, a few steps.
BASE = [
    "--data.name=synthetic",
    "--data.synthetic_shape=[3,32,32]",
    "--data.synthetic_train=256",
    "--data.synthetic_test=128",
    "--data.batch_size=32",
    "--data.eval_batch_size=64",
    "--model.name=cifar_resnet",
    "--model.depth=20",
    "--method.name=infopro",
    "--split.num_modules=4",
    "--split.balance=uniform",
    "--train.epochs=1",
    "--train.max_steps=3",
    "--train.deterministic=true",
    "--train.channels_last=false",
    "--metrics.console=none",
]


def one_process(tmp_path, name: str, *args: str) -> tuple[dict, dict]:
    """A one-process run in this process: its summary and final weights."""
    cfg = load_config(None, [*BASE, *args, f"--metrics.out_dir={tmp_path}", f"--metrics.run_name={name}"])
    summary = run_job(cfg).to_dict()
    return summary, load_merged(tmp_path / name)


def assert_close(got: dict, want: dict, **tol) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.allclose(got[key].float().cpu(), value.float().cpu(), **tol), key


@pytest.mark.parametrize("mode", ["sequential", "e2e"])
def test_cuda_equals_cpu_fp32(tmp_path, mode):
    method = ["--method.name=e2e", "--split.num_modules=1"] if mode == "e2e" else []
    _, cpu = one_process(tmp_path, "cpu", f"--mode={mode}", "--train.device=cpu", *method)
    summary, cuda = one_process(tmp_path, "cuda", f"--mode={mode}", "--train.device=cuda", *method)
    assert summary["device"].startswith("cuda")
    assert_close(cuda, cpu, **CROSS_DEVICE)


@pytest.mark.parametrize(
    "numerics",
    [["--train.precision=bf16"], ["--train.precision=fp16"], ["--train.channels_last=true"], ["--train.compile=true"]],
    ids=["bf16", "fp16-gradscaler", "channels_last", "compile"],
)
def test_numerics_on_cuda(tmp_path, numerics):
    """Each speed switch runs on CUDA and trains the same net: fp32's weights within the switch's rounding."""
    _, fp32 = one_process(tmp_path, "fp32", "--mode=sequential", "--train.device=cuda")
    summary, got = one_process(tmp_path, "switch", "--mode=sequential", "--train.device=cuda", *numerics)
    assert all(math.isfinite(v.float().sum().item()) for v in got.values())
    loose = "--train.precision" in numerics[0]  # 16-bit activations: a few steps apart by their rounding
    assert_close(got, fp32, **({"rtol": 5e-2, "atol": 5e-3} if loose else CROSS_DEVICE))
    assert summary["final_top1"] is not None


def test_cuda_peak_memory_in_the_summary(tmp_path):
    summary, _ = one_process(tmp_path, "mem", "--mode=sequential", "--train.device=cuda")
    peak = summary["cuda_peak_bytes"]
    params = 4 * sum(p.numel() for p in torch.nn.Linear(64, 10).parameters())  # far below any real peak
    assert peak is not None and peak > params
    assert peak <= torch.cuda.get_device_properties(0).total_memory
    assert summary["stages"][0]["cuda_peak_bytes"] == peak


@pytest.mark.parametrize("stages", [2, 4])
def test_stages_sharing_one_gpu_equal_sequential(tmp_path, stages):
    """P stages on one GPU: distributed.backend=auto picks the host-staged transport (gloo through pinned buffers)."""
    _, reference = one_process(tmp_path, "seq", "--mode=sequential", "--train.device=cuda")
    args = [*BASE, "--mode=pipeline", "--train.device=cuda", f"--metrics.out_dir={tmp_path}", "--metrics.run_name=p"]
    done, _ = torchrun(stages, *args, env={"CUDA_VISIBLE_DEVICES": "0"}, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["backend"] == "gloo" and summary["device"].startswith("cuda")
    assert_close(load_merged(tmp_path / "p"), reference, **SAME_DEVICE)


def test_nccl_pipeline_with_guidance_and_mlaan_resume_and_timeline(tmp_path):
    """One GPU per stage over NCCL: MLAAN (cascade and EMA links upstream) with sync guidance equals sequential;
    a resumed run equals an uninterrupted one; the timeline has every stage."""
    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip(f"needs 2 or more GPUs (this machine has {gpus})")
    stages = min(gpus, 3)
    common = [
        *BASE,
        "--method.name=mlaan",
        f"--split.num_modules={stages}",
        "--guidance.every=2",
        "--guidance.mode=sync",
        "--train.device=cuda",
        f"--metrics.out_dir={tmp_path}",
    ]
    _, reference = one_process(tmp_path, "seq", *common[len(BASE) :], "--mode=sequential")
    nccl = [*common, "--mode=pipeline", "--distributed.backend=nccl"]
    done, _ = torchrun(stages, *nccl, "--metrics.run_name=p", "--metrics.timeline=[0,2]", timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["backend"] == "nccl"
    assert_close(load_merged(tmp_path / "p"), reference, **SAME_DEVICE)
    events = json.loads((tmp_path / "p" / "timeline.json").read_text())["traceEvents"]
    assert {e["tid"] for e in events if e["ph"] == "X"} == {s * 1000 for s in range(stages)}  # every stage's spans

    two = ["--train.epochs=2", "--train.max_steps=3"]
    done, _ = torchrun(stages, *nccl, *two, "--metrics.run_name=straight", timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    done, _ = torchrun(stages, *nccl, "--metrics.run_name=resumed", timeout=300)  # epoch 1, checkpointed
    assert done.returncode == 0, done.stderr[-4000:]
    done, _ = torchrun(stages, *nccl, *two, "--metrics.run_name=resumed", "--train.resume=auto", timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert_close(load_merged(tmp_path / "resumed"), load_merged(tmp_path / "straight"), **SAME_DEVICE)
