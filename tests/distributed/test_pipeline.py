"""Invariant 1 (pipeline = sequential), the main job, and STOP/partial batches, as real torchrun jobs."""

import json

import pytest
import torch

from pipelocal.checkpoint import load_merged
from pipelocal.data import build_loaders
from pipelocal.optim import lr_for_step, set_lr
from pipelocal.runtime import build_local_net
from pipelocal.runtime.guidance import guide_for
from pipelocal.schedules.sequential import train_step
from tests.conftest import one_process, tiny_config
from tests.distributed.launch import TINY, runs_fixture, torchrun
from tests.reference.local import top1
from tests.test_reference import PIPELINE_RUNS, PIPELINE_TOLERANCE, gap_from_reference


def sequential_state(overrides: list[str]) -> dict:
    """The same job in sequential mode, in this process, for the same steps (of every epoch)."""
    cfg = tiny_config(*TINY, *overrides, "--mode=sequential")
    torch.use_deterministic_algorithms(True)
    loader, net, opts, numerics = one_process(cfg)
    steps, epochs = min(len(loader), cfg.train.max_steps), cfg.train.epochs
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if i == steps:
                break
            set_lr(opts, lr_for_step(cfg, epoch, i, steps))
            guide = guide_for(cfg.guidance, epoch, epoch * steps + i, epochs)
            train_step(net, batch, opts, cfg.optim.step == "per_module", guide=guide, numerics=numerics)
    return net.state_dict()


def evaluated_top1(run, overrides: list[str]) -> list[float]:
    """Each module's test top-1 of the weights ``run`` saved, evaluated here in one process over the whole test set:
    what the run's last metrics line must say (a replica that drifted, or a miscounted batch, would not)."""
    cfg = tiny_config(*TINY, *overrides, "--mode=sequential")
    _, test_loader, info = build_loaders(cfg.data, torch.device("cpu"), cfg.train.seed)
    net = build_local_net(cfg, info)
    net.load_state_dict(load_merged(run))
    return top1(net.local_modules, test_loader, cfg.data.synthetic_test)


CASES = [
    # (method, processes, K, queue depth, extra): every method at P = 2 with depths 1, 2, 4; at P = 4; and K > P
    *[
        (m, 2, 2, q, ["--optim.step=per_module"] if m == "dgl" else [])
        for m in ("greedy", "dgl", "infopro")
        for q in (1, 2, 4)
    ],
    ("greedy", 4, 4, 2, []),
    ("dgl", 4, 4, 4, []),
    ("infopro", 4, 4, 1, []),
    ("infopro", 2, 4, 2, ["--optim.name=adamw", "--optim.lr=0.001", "--optim.weight_decay=0.05"]),
    ("dgl", 2, 4, 1, ["--pipeline.stage_order=forward_first"]),
    # The same ops on the same dtypes: exact in mixed precision too (activations cross stages in bf16/fp16).
    ("infopro", 2, 4, 2, ["--train.precision=bf16", "--train.channels_last=true"]),
    ("dgl", 2, 4, 1, ["--optim.step=per_module", "--train.precision=fp16"]),
]


def _overrides(method, k, depth, extra) -> list[str]:
    return [f"--method.name={method}", f"--split.num_modules={k}", f"--pipeline.queue_depth={depth}", *extra]


def _id(method, nproc, k, depth, extra) -> str:
    numerics = [e.split("=")[1] for e in extra if e.startswith(("--train.precision", "--optim.name"))]
    return "-".join([f"{method}-P{nproc}-K{k}-q{depth}", *numerics])


IDS = [_id(*c) for c in CASES]
RUNS = {i: [*TINY, "--mode=pipeline", *_overrides(m, k, q, e)] for i, (m, p, k, q, e) in zip(IDS, CASES)}
# Invariant 1 against the plain-autograd reference too (tests/reference/local.py): 10 steps, K = 4 on P = 2
REFERENCED = ["ref-dgl", "ref-infopro"]
RUNS_P2 = {i: args for i, args, c in zip(IDS, RUNS.values(), CASES) if c[1] == 2}
runs_p2 = runs_fixture(2, {**RUNS_P2, **{n: [*TINY, "--mode=pipeline", *PIPELINE_RUNS[n]] for n in REFERENCED}})
runs_p4 = runs_fixture(4, {i: args for i, args, c in zip(IDS, RUNS.values(), CASES) if c[1] == 4})


@pytest.mark.parametrize("method, nproc, k, depth, extra", CASES, ids=IDS)
def test_pipeline_equals_sequential(request, method, nproc, k, depth, extra):
    out = request.getfixturevalue(f"runs_p{nproc}")
    piped = load_merged(out / _id(method, nproc, k, depth, extra))
    reference = sequential_state(_overrides(method, k, depth, extra))
    assert piped.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.allclose(piped[name].float(), value.float(), atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("name", REFERENCED)
def test_pipeline_equals_sequential_and_the_reference(runs_p2, name):
    piped = load_merged(runs_p2 / name)
    reference = sequential_state(PIPELINE_RUNS[name])
    for key, value in reference.items():
        assert torch.allclose(piped[key].float(), value.float(), atol=1e-5, rtol=1e-4), key
    gap = gap_from_reference(piped, PIPELINE_RUNS[name])
    assert gap < PIPELINE_TOLERANCE, gap  # measured: 1.8e-6 (dgl), 1.2e-6 (infopro)


def test_partial_last_batch_and_stop(tmp_path):
    """330 samples in batches of 32: the last batch has 10 rows, padded on the wire; eval has a partial batch too."""
    out, _ = torchrun(
        2,
        *TINY,
        "--mode=pipeline",
        "--data.synthetic_train=330",
        "--train.max_steps=100",
        "--train.epochs=2",
        "--data.synthetic_test=130",
        f"--metrics.out_dir={tmp_path}",
        "--metrics.run_name=p",
        "--metrics.log_every=2",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # live.jsonl: each stage's rows at exactly every log_every steps (and the epoch's last step), each once,
    # with the step's learning rate (a one-slot mailbox used to drop rows and rank 0 rewrote stale ones).
    live = [json.loads(x) for x in (tmp_path / "p" / "live.jsonl").read_text().splitlines()]
    for stage in (0, 1):
        for epoch in (1, 2):
            steps = [r["step"] for r in live if (r["stage"], r["epoch"]) == (stage, epoch)]
            assert steps == [2, 4, 6, 8, 10, 11], (stage, epoch, steps)  # 330 samples: 11 steps of 32
    cfg = tiny_config(*TINY, "--train.epochs=2")
    for r in live:
        assert r["lr"] == pytest.approx(lr_for_step(cfg, r["epoch"] - 1, r["step"] - 1, 11))
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["final_top1"] is not None and len(summary["stages"]) == 2
    lines = [json.loads(x) for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert "final test top-1" in out.stdout


def test_sequential_mode_under_torchrun_is_an_error(tmp_path):
    out, _ = torchrun(2, *TINY, "--mode=sequential", f"--metrics.out_dir={tmp_path}")
    assert out.returncode != 0 and "torchrun started 2" in out.stderr


def test_pipeline_without_torchrun_is_an_error():
    from pipelocal.config import ConfigError
    from pipelocal.distributed.setup import init_distributed

    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"):
        init_distributed(5)


def test_main_job_default_config_with_four_processes(tmp_path):
    """`torchrun --nproc_per_node=4 -m pipelocal.run` (the README's job), on synthetic data of FMNIST's shape."""
    out, seconds = torchrun(
        4,
        "--data.name=synthetic",
        "--data.synthetic_shape=[1,28,28]",
        "--data.synthetic_train=256",
        "--data.synthetic_test=128",
        "--data.batch_size=32",
        "--train.epochs=1",
        "--metrics.console=plain",
        f"--metrics.out_dir={tmp_path}",
        "--pipeline.timeout_s=30",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pipeline | infopro | cifar_resnet-20 | K=4 P=4" in out.stdout
    assert "balance=time" in out.stdout and "per-stage medians" in out.stdout and "final test top-1" in out.stdout
