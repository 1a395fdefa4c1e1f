"""Sequential mode against the plain-autograd reference (tests/reference/local.py) over 10+ steps: greedy, DGL and
InfoPro, local and guidance steps (replace and add, the guidance schedules), torch's SGD and the cosine rate written
out. Both run in float64 here, where they agree to 1e-16 (measured). In fp32 this tiny net amplifies rounding: one
ReLU input near 0 that lands on the other side in one of the two moves a channel's gradient, and within 10 steps the
two part by up to 2e-3 of all the weights' norm (DGL, plain SGD; measured). ``reference_state`` in fp32 is what the
pipeline tests (invariants 1, 2 and 6) compare with, on jobs where that floor was measured low."""

import pytest
import torch

from pipelocal.data import Batch, build_loaders
from pipelocal.optim import build_optimizers, lr_for_step, set_lr
from pipelocal.runtime import build_local_net
from pipelocal.runtime.guidance import guide_for
from pipelocal.runtime.numerics import Numerics
from pipelocal.schedules.sequential import train_step
from tests.conftest import tiny_config
from tests.distributed.launch import TINY
from tests.reference.local import Reference, cosine_lr, guide_at


def _config(overrides: list[str]):
    return tiny_config(*TINY, *overrides, "--mode=sequential")


def _batches(cfg, loader, dtype):
    """(epoch, step in it, batch in ``dtype``) for every step the job trains."""
    steps = min(len(loader), cfg.train.max_steps)
    for epoch in range(cfg.train.epochs):
        loader.set_epoch(epoch)
        for i, b in zip(range(steps), loader):
            yield epoch, i, steps, Batch(b.x.to(dtype), b.y, b.raw.to(dtype))


def reference_state(overrides: list[str], dtype: torch.dtype = torch.float32) -> dict:
    """The job ``overrides`` describes (on TINY), trained by the reference in this process: its final state."""
    cfg = _config(overrides)
    o = cfg.optim
    # what the reference writes out: SGD, a cosine or constant rate set every step, no warm-up, fp32 compute
    assert o.name == "sgd" and o.warmup_epochs == 0 and o.per_step and o.schedule in ("cosine", "constant")
    assert cfg.train.precision == "fp32"
    torch.use_deterministic_algorithms(True)
    loader, _, info = build_loaders(cfg.data, torch.device("cpu"), cfg.train.seed)
    net = build_local_net(cfg, info).to(dtype)
    lambdas = list(cfg.method.lambdas) if cfg.method.name == "infopro" else None
    ref = Reference(net, cfg.method.name, lambdas, o.momentum, o.nesterov, o.weight_decay)
    for epoch, i, steps, batch in _batches(cfg, loader, dtype):
        lr = o.lr if o.schedule == "constant" else cosine_lr(o.lr, epoch, i, steps, cfg.train.epochs)
        ref.step(batch, lr, guide_at(cfg.guidance, epoch, epoch * steps + i, cfg.train.epochs))
    return net.state_dict()


class _Float64(Numerics):
    """fp32's numerics without the cast at module boundaries, so a float64 net computes in float64 throughout."""

    def boundary(self, h):
        return h


def sequential_float64(overrides: list[str]) -> dict:
    """Sequential mode's step (schedules/sequential.py) in float64, as tests/distributed's sequential_state runs it."""
    cfg = _config(overrides)
    torch.use_deterministic_algorithms(True)
    loader, _, info = build_loaders(cfg.data, torch.device("cpu"), cfg.train.seed)
    net = build_local_net(cfg, info).double()
    opts = build_optimizers(net.local_modules, cfg.optim)
    numerics, per_module = _Float64("fp32", torch.device("cpu")), cfg.optim.step == "per_module"
    for epoch, i, steps, batch in _batches(cfg, loader, torch.float64):
        set_lr(opts, lr_for_step(cfg, epoch, i, steps))
        guide = guide_for(cfg.guidance, epoch, epoch * steps + i, cfg.train.epochs)
        train_step(net, batch, opts, per_module, guide=guide, numerics=numerics)
    return net.state_dict()


def gaps(state: dict, reference: dict) -> dict[str, float]:
    """Each floating tensor's distance from the reference's, relative to the reference's norm."""
    assert state.keys() == reference.keys()
    out = {}
    for name, value in reference.items():
        a, b = state[name].double(), value.double()
        if not value.is_floating_point():
            assert torch.equal(a, b), name  # BatchNorm's step count: one forward per module per step
            continue
        out[name] = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
    return out


SMALL = ["--data.batch_size=16", "--train.max_steps=10"]  # 10 steps of 16
CASES = {
    # the default optimizer: SGD, Nesterov momentum 0.9, weight decay 1e-4, cosine per step
    "greedy": ["--method.name=greedy", "--split.num_modules=4", *SMALL],
    "dgl-replace": ["--method.name=dgl", "--split.num_modules=4", "--optim.step=per_module", "--guidance.every=3"]
    + [*SMALL, "--optim.momentum=0", "--optim.nesterov=false", "--optim.schedule=constant"],
    # 3 epochs of 4 steps: bursts of 2 ending periods of 3, then 4 steps; the third epoch end to end (replace)
    "infopro-add-schedule": ["--method.name=infopro", "--split.num_modules=4", "--method.lambdas=[1,0.5,0.2,1]"]
    + ["--guidance.combine=add", "--guidance.weight=0.5", "--guidance.every=3", "--guidance.every_end=5"]
    + ["--guidance.burst=2", "--guidance.every_epochs=3", "--train.epochs=3", "--data.batch_size=16"]
    + ["--train.max_steps=4"],
}


@pytest.mark.parametrize("name", CASES)
def test_sequential_mode_equals_the_reference_in_float64(name):
    worst = max(gaps(sequential_float64(CASES[name]), reference_state(CASES[name], torch.float64)).values())
    assert worst < 1e-12, worst  # measured: 1e-16
