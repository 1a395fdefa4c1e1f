"""Periodic global guidance in sequential mode: when it fires, and that its gradient is the E2E gradient."""

import pytest
import torch

from pipelocal.config import GuidanceConfig
from pipelocal.data import build_loaders
from pipelocal.optim import build_optimizers
from pipelocal.run import train
from pipelocal.runtime import build_local_net
from pipelocal.runtime.guidance import guide_for
from pipelocal.runtime.spans import Guide
from pipelocal.schedules.sequential import train_step
from tests.conftest import tiny_config

CPU = torch.device("cpu")
LOCAL_METHODS = ["greedy", "dgl", "infopro", "auglocal", "mlaan"]


def test_guide_for_fires_every_n_steps_with_warmup_and_until():
    cfg = GuidanceConfig(every=5, combine="add", weight=0.5)
    fired = [s for s in range(20) if guide_for(cfg, 0, s)]
    assert fired == [4, 9, 14, 19] and guide_for(cfg, 0, 4) == Guide("add", 0.5)
    assert guide_for(GuidanceConfig(), 0, 4) is None  # off by default
    warm = GuidanceConfig(every=0, warmup_epochs=2)
    assert all(guide_for(warm, e, s) == Guide("replace", 1.0) for e in (0, 1) for s in range(3))
    assert guide_for(warm, 2, 0) is None
    until = GuidanceConfig(every=1, until_epoch=1)
    assert guide_for(until, 0, 7) and guide_for(until, 1, 7) is None


def test_guidance_schedules_burst_period_and_epochs():
    burst = GuidanceConfig(every=5, burst=2)
    assert [s for s in range(15) if guide_for(burst, 0, s)] == [3, 4, 8, 9, 13, 14]
    # dense early, sparse late: period 2 in epoch 0, 4 in epoch 2 of 3 (3 in between)
    varying = GuidanceConfig(every=2, every_end=4)
    assert [s for s in range(8) if guide_for(varying, 0, s, 3)] == [1, 3, 5, 7]
    assert [s for s in range(12) if guide_for(varying, 1, s, 3)] == [2, 5, 8, 11]
    assert [s for s in range(8) if guide_for(varying, 2, s, 3)] == [3, 7]
    by_epochs = GuidanceConfig(every_epochs=3)
    assert [e for e in range(6) if guide_for(by_epochs, e, 0, 6)] == [2, 5]
    assert guide_for(by_epochs, 2, 1, 6) == Guide("replace", 1.0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--guidance.every=2", "--guidance.burst=3"], "at most the period"),
        (["--guidance.every_end=4"], "needs guidance.every > 0"),
        (["--guidance.every_epochs=-1"], "0 \\(off\\) or positive"),
        (["--mode=e2e", "--method.name=e2e", "--guidance.every_epochs=2"], "end-to-end already"),
    ],
)
def test_guidance_schedule_refusals(overrides, message):
    from pipelocal.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        tiny_config(*overrides)


def _setup(method, *extra):
    cfg = tiny_config(f"--method.name={method}", "--split.num_modules=4", "--optim.weight_decay=0", *extra)
    if not any(a.startswith("--optim.lr=") for a in extra):
        cfg.optim.lr = 0.0  # weights stay put while gradients are compared (a value a user's run refuses)
    loader, _, info = build_loaders(cfg.data, CPU, cfg.train.seed)
    net = build_local_net(cfg, info)
    return net, build_optimizers(net.local_modules, cfg.optim), next(iter(loader))


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _end_to_end_grads(net, batch):
    """Plain backprop of the final loss through every module, no detach (the reference)."""
    net.zero_grad(set_to_none=True)
    x = batch.x
    for module in net.local_modules:
        x = module(x)
    net.local_modules[-1].head(x, batch)["loss"].backward()
    return _grads(net)


@pytest.mark.parametrize("method", LOCAL_METHODS)
def test_a_replace_guidance_step_gives_exactly_the_end_to_end_gradient(method):
    net, opts, batch = _setup(method)  # lr 0: the weights are the same for both computations
    result = train_step(net, batch, opts, per_module=False, guide=Guide("replace", 1.0))
    got = _grads(net)
    want = _end_to_end_grads(net, batch)
    assert result.guided and got.keys() == want.keys()  # no aux head is trained at a replace step
    assert all(".body." in n or n.startswith(f"local_modules.{net.num_modules - 1}.") for n in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", LOCAL_METHODS)
def test_an_add_guidance_step_gives_local_plus_weighted_end_to_end(method):
    net, opts, batch = _setup(method)
    train_step(net, batch, opts, per_module=False)
    local = _grads(net)
    train_step(net, batch, opts, per_module=False, guide=Guide("add", 0.3))
    got = _grads(net)
    e2e = _end_to_end_grads(net, batch)
    assert got.keys() == local.keys() | e2e.keys()
    for name in got:
        want = local.get(name, 0) + 0.3 * e2e.get(name, 0)
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-6, msg=name)


def test_guidance_steps_are_counted_and_logged(tmp_path):
    cfg = tiny_config(
        "--method.name=greedy", "--guidance.every=3", "--train.max_steps=7", "--train.epochs=2", tmp_path=tmp_path
    )
    summary = train(cfg)
    assert summary["steps"] == 14 and summary["guidance_steps"] == 4  # global steps 3, 6, 9, 12 (1-based)
    assert summary["config"]["guidance"]["every"] == 3


def test_configs_that_cannot_run_are_refused():
    from pipelocal.config import ConfigError

    for extra in (["--method.name=mlaan"], ["--guidance.every=10"]):
        with pytest.raises(ConfigError, match="replay"):
            tiny_config("--mode=pipeline", "--pipeline.buffer=replay", *extra)
    with pytest.raises(ConfigError, match="guidance"):
        tiny_config("--mode=e2e", "--method.name=e2e", "--guidance.every=10")
    tiny_config("--mode=pipeline", "--method.name=mlaan", "--guidance.every=10")  # the pipeline runs these
