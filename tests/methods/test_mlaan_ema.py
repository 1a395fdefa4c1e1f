"""MLAAN's EMA timing against the plain-autograd reference (tests/reference/mlaan.py) over several steps."""

import copy

import pytest
import torch

from pipelocal.data import Batch, DataInfo
from pipelocal.optim import build_optimizers
from pipelocal.runtime import build_local_net
from pipelocal.schedules.sequential import train_step
from tests.conftest import tiny_config
from tests.reference import mlaan as reference

PLAIN = ["--optim.momentum=0", "--optim.nesterov=false", "--optim.weight_decay=0", "--optim.lr=0.05"]
STEPS = 6  # beyond ~7 the tiny net turns fp32 rounding into 1e-6..1e-4 gaps, whichever the timing (measured)


def _batches(info, n=16):
    gen = torch.Generator().manual_seed(3)
    for _ in range(STEPS):
        raw = torch.rand(n, *info.input_shape, generator=gen)
        yield Batch((raw - 0.5) / 0.25, torch.randint(0, info.num_classes, (n,), generator=gen), raw)


def _trained(update: str, timing: str, per_module: bool = False):
    """(pipelocal's net, the reference's net) after STEPS steps from the same weights on the same batches."""
    args = ["--method.name=mlaan", "--split.num_modules=4", "--method.ema_momentum=0.8"]
    cfg = tiny_config(*args, *PLAIN, f"--method.ema_update={update}", f"--method.ema_timing={timing}")
    info = DataInfo(num_classes=5, input_shape=(3, 16, 16))
    net = build_local_net(cfg, info)
    ref = copy.deepcopy(net)
    opts = build_optimizers(net.local_modules, cfg.optim)
    followers = [m.head for m in ref.local_modules if getattr(m.head, "follow_ema", False)]
    for batch in _batches(info):
        train_step(net, batch, opts, per_module=per_module)
        reference.step(ref, batch.x, batch.y, cfg.optim.lr, followers, cfg.method.ema_momentum, timing)
    return net, ref


def _flat(net) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def _gap(a, b) -> float:
    """Relative distance of all parameters (EMA copies included)."""
    return ((_flat(a) - _flat(b)).norm() / _flat(b).norm()).item()


def _differ(a, b) -> list[str]:
    """Parameters not equal up to fp32 rounding over a few steps."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    return [k for k in pa if not torch.allclose(pa[k], pb[k], rtol=1e-4, atol=1e-6)]


@pytest.mark.parametrize("update, timing", [("last", "pre_step"), ("all", "pre_step"), ("all", "post_step")])
def test_mlaan_ema_timing_equals_the_reference_over_several_steps(update, timing):
    net, ref = _trained(update, timing)
    assert _differ(net, ref) == []
    heads = [m.head for m in net.local_modules if getattr(m.head, "follow_ema", False)]
    # the refreshed copies lag their live blocks (a timing error would show) and left their init
    assert heads and all(not torch.equal(h.ema.conv1.weight, net.unit(h.units[0]).conv1.weight) for h in heads)


def test_pre_step_and_post_step_differ_by_more_than_the_tolerance():
    """The two timings' nets after STEPS steps are far apart, so the reference test above tells them apart."""
    pre, ref = _trained("last", "pre_step")
    post, _ = _trained("last", "post_step")
    # measured: 2.9e-4 apart, against 2e-8 between pre_step and its reference
    assert _gap(pre, post) > 1e3 * _gap(pre, ref) and _differ(pre, post)


def test_pre_step_refresh_is_the_same_whatever_the_optimizer_step_order():
    per_batch, ref = _trained("last", "pre_step")
    per_module, _ = _trained("last", "pre_step", per_module=True)
    # per_module steps each module after its own backward: the same update for these losses (no gradient of a
    # later module's loss reaches an earlier module after its step), and the EMA refresh reads step-start weights
    assert _differ(per_module, ref) == [] and _differ(per_batch, ref) == []
