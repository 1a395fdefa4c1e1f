"""No device-to-host sync on a stage's training step (issue #14): its hot path never reads a tensor's value
on the host. Headers are host buffers on a gloo group, labels travel on the device beside their activations
(transport.py), so the steps of a pipeline on CPU/gloo must make no host read at all; on CUDA they also run
under ``torch.cuda.set_sync_debug_mode("error")`` (host_reads.py)."""

import pytest
import torch

from pipelocal.metrics.stats import StageStats
from pipelocal.run import main
from tests.distributed.host_reads import HostReads, count_step_reads
from tests.distributed.launch import TINY, torchrun_runs

QUIET = ["--metrics.console=none", "--metrics.log_every=1000", "--train.epochs=2"]  # no live row inside the run
GUIDED = ["--method.name=greedy", "--guidance.every=2"]
PIPELINE = {  # per torchrun job: at P = K = 3 a first, a middle and a last stage; every kind of message and link
    "fifo": ["--method.name=infopro"],  # the raw input relayed as context; EVAL
    "sync": [*GUIDED, "--guidance.mode=sync"],  # GUIDE, and GRAD back
    "async": [*GUIDED, "--guidance.mode=async"],  # late GRADs, polled with ready()
    "replay": ["--method.name=greedy", "--pipeline.buffer=replay"],  # reader threads
    "mlaan": ["--method.name=mlaan"],  # the cascade's GRADs, EMA weights
    "bf16": [*GUIDED, "--guidance.mode=sync", "--train.precision=bf16", "--train.channels_last=true"],
}


def _sequential(tmp_path, *extra: str) -> int:
    args = [*TINY, *QUIET, "--mode=sequential", *extra, f"--metrics.out_dir={tmp_path}"]
    return main(args)


def test_the_counter_counts_host_reads_in_its_window_only():
    """The control: without it a counter that counts nothing would pass every test below."""
    t = torch.tensor([1.0, 2.0])
    reads = HostReads()
    with reads:
        t.sum().item()  # outside a counting window
        with reads.counting():
            t.sum().item(), t.tolist(), t.cpu(), t.to("cpu"), int(t[0]), float(t[1]), bool(t[0] > 0)
            range(3)[torch.tensor(1)]  # __index__
            t.to(torch.float64), t + 1  # not host reads
    assert len(reads.calls) == 8, reads.calls
    assert all("test_host_sync.py" in call for call in reads.calls)
    assert torch.Tensor.item.__name__ == "item"  # the methods are restored


def test_a_host_read_in_a_training_step_is_caught(tmp_path, monkeypatch):
    """The control on the real step path: a ``.item()`` per step in ``StageStats.add`` is counted, per step."""
    add = StageStats.add
    monkeypatch.setattr(StageStats, "add", lambda self, result: (add(self, result), result.losses[0].item()))
    reads = HostReads()
    code, steps = count_step_reads(lambda: _sequential(tmp_path), reads)
    assert code == 0 and steps == 10
    assert len(reads.calls) == steps and "item" in reads.calls[0] and "test_host_sync.py" in reads.calls[0]


BF16 = ["--train.precision=bf16", "--train.channels_last=true"]


@pytest.mark.parametrize("extra", [[], [*GUIDED, "--split.num_modules=4", *BF16], ["--method.name=mlaan"]])
def test_sequential_steps_make_no_host_read(tmp_path, extra):
    """One process, no links: the step itself (modules, heads, losses, optimizers, the loader, the stats).
    On a GPU this runs on CUDA under sync debug mode "error"."""
    reads = HostReads()
    code, steps = count_step_reads(lambda: _sequential(tmp_path, *extra), reads)
    assert code == 0 and steps == 10
    assert not reads.calls, "\n".join(reads.calls[:5])


def _pipeline(nproc: int, out) -> str:
    """Every case of ``PIPELINE`` (K = nproc) in one torchrun job (one start-up), host reads counted by
    host_sync_worker.py; returns its stdout, which says how many each rank saw."""
    runs = [
        [
            *TINY,
            *QUIET,
            "--mode=pipeline",
            *args,
            f"--split.num_modules={nproc}",
            f"--metrics.out_dir={out}",
            f"--metrics.run_name={name}",
        ]
        for name, args in PIPELINE.items()
    ]
    done, _ = torchrun_runs(nproc, runs, out, timeout=600, target=("-m", "tests.distributed.host_sync_worker"))
    assert done.returncode == 0, done.stderr[-6000:]
    return done.stdout


def test_pipeline_steps_make_no_host_read(tmp_path):
    """Every stage's steps on gloo: headers decoded from host buffers, labels received on the device."""
    out = _pipeline(3, tmp_path)
    assert all(f"rank {rank}: 0 host reads in" in out for rank in range(3)), out


# GPU only: skipped on CPU (CI). On one GPU the sequential test above covers the step on CUDA.
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="an NCCL pipeline takes one GPU per stage")
def test_pipeline_steps_make_no_device_sync_on_cuda(tmp_path):
    """The same runs at P = 2 on NCCL, every step under sync debug mode "error" (host_reads.py)."""
    out = _pipeline(2, tmp_path)
    assert all(f"rank {rank}: 0 host reads in" in out for rank in range(2)), out
