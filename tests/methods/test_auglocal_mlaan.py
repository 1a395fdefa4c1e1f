"""AugLocal's aux nets and MLAAN's cascade and EMA, checked against the worked examples of docs/methods.md."""

import torch
from torch import nn

from pipelocal.data import Batch, DataInfo
from pipelocal.methods.auglocal import aux_depths, sampled_units
from pipelocal.methods.mlaan import lam_units
from pipelocal.models import build_backbone
from pipelocal.optim import build_optimizers
from pipelocal.runtime import build_local_net
from pipelocal.schedules.sequential import train_step
from tests.conftest import tiny_config

CIFAR = DataInfo(num_classes=10, input_shape=(3, 32, 32))


def _auglocal_r32():
    """ResNet-32 (16 units) with aux nets after units 0..11: explicit boundaries, so K = 13."""
    cfg = tiny_config(
        "--method.name=auglocal",
        "--model.depth=32",
        "--split.num_modules=13",
        f"--split.boundaries={list(range(12))}",
        "--method.aux_depth=3",
        "--method.depth_decay=0.5",
    )
    return build_local_net(cfg, CIFAR)


def test_auglocal_depths_and_sampled_units_match_the_worked_example():
    assert aux_depths(13, 3, 0.5) == [3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2]
    assert sampled_units(0, 3, 16) == [5, 10, 15]
    assert sampled_units(6, 2, 16) == [10, 15]
    assert sampled_units(11, 2, 16) == [13, 15]
    assert sampled_units(13, 3, 16) == [14, 15]  # fewer later units than the depth: all of them
    net = _auglocal_r32()
    method = net.method
    assert method.plan(0) == [(5, 16, 1), (10, 32, 2), (15, 64, 2)]
    assert method.plan(6) == [(10, 32, 1), (15, 64, 2)]
    assert method.plan(11) == [(13, 64, 1), (15, 64, 1)]
    for index, expected in ((0, [(16, 1), (32, 2), (64, 2)]), (6, [(32, 1), (64, 2)]), (11, [(64, 1), (64, 1)])):
        blocks = list(net.local_modules[index].head.blocks)
        assert [(b.conv2.out_channels, b.conv1.stride[0]) for b in blocks] == expected
        projected = [not isinstance(b.shortcut, nn.Identity) for b in blocks]
        widths = [net.local_modules[index].head.blocks[0].conv1.in_channels] + [w for w, _ in expected]
        assert projected == [a != b or s == 2 for a, b, (_, s) in zip(widths, widths[1:], expected)]


def test_auglocal_blocks_are_fresh_and_train():
    net = _auglocal_r32()
    live = {id(p) for m in net.local_modules for p in m.body.parameters()}
    assert not any(id(p) in live for m in net.local_modules[:-1] for p in m.head.parameters())
    head = net.local_modules[0].head
    assert isinstance(head.classifier[2], nn.Linear) and len(head.blocks) == 3  # no BN1d above depth 1
    batch = _batch(CIFAR, 8)
    out = head(net.local_modules[0](batch.x), batch)
    out["loss"].backward()
    assert all(p.grad is not None for p in head.parameters())


def test_auglocal_uses_bottleneck_blocks_on_resnet50():
    info = DataInfo(num_classes=10, input_shape=(3, 64, 64))
    cfg = tiny_config("--method.name=auglocal", "--model.name=resnet50", "--split.num_modules=4")
    net = build_local_net(cfg, info)
    heads = [m.head for m in net.local_modules[:-1]]
    assert all(type(b).__name__ == "Bottleneck" for h in heads for b in h.blocks)
    batch = _batch(info, 2)
    x = batch.x
    for module in net.local_modules[:-1]:
        x = module(x)
        assert module.head(x, batch)["logits"].shape == (2, 10)


def test_mlaan_copies_follow_the_authors_r32_table():
    positions = build_backbone("cifar_resnet", 32, 3, 10).positions
    table = {
        (1, 2): [(2, 0), (3, 0), (3, 3), (3, 4)],  # stage-1 modules ("3,2 or 3,3": we take 3,3)
        (2, 1): [(3, 0), (3, 2), (3, 3), (3, 4)],
        (3, 0): [(3, 1), (3, 2), (3, 4)],
        (3, 1): [(3, 2), (3, 3), (3, 4)],
        (3, 2): [(3, 3), (3, 4)],
        (3, 3): [(3, 4)],
    }
    for after, copies in table.items():
        assert [positions[u] for u in lam_units(positions.index(after), positions)] == copies
    r20 = build_backbone("cifar_resnet", 20, 3, 10).positions  # the rule elsewhere: ends at the last block
    assert [r20[u] for u in lam_units(r20.index((1, 1)), r20)] == [(2, 0), (3, 0), (3, 1), (3, 2)]


def _mlaan(*extra):
    cfg = tiny_config("--method.name=mlaan", "--split.num_modules=4", "--optim.weight_decay=0", *extra)
    if not any(a.startswith("--optim.lr=") for a in extra):
        cfg.optim.lr = 0.0  # weights stay put while gradients are compared (a value a user's run refuses)
    return build_local_net(cfg, DataInfo(num_classes=5, input_shape=(3, 16, 16))), cfg


def _batch(info, n):
    gen = torch.Generator().manual_seed(1)
    raw = torch.rand(n, *info.input_shape, generator=gen)
    return Batch((raw - 0.5) / 0.25, torch.arange(n) % info.num_classes, raw)


def test_mlaan_step_equals_the_papers_recomputation():
    """The step keeps module i-1's graph instead of re-running it; each module's gradient must equal the sum
    of the paper's losses, each computed by re-running the modules of its span on the detached input."""
    net, cfg = _mlaan()
    batch = _batch(net.method.info, 16)
    optimizers = build_optimizers(net.local_modules, cfg.optim)  # lr 0: weights stay, gradients stay
    train_step(net, batch, optimizers, per_module=False)
    got = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    want = papers_gradients(net, batch)
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    assert not any("head.ema" in name for name in got), "EMA copies must receive no gradient"


def papers_gradients(net, batch) -> dict:
    """Every parameter's gradient as the paper computes it: each loss term recomputed by re-running the modules
    of its span on the detached input of the first."""
    net.zero_grad(set_to_none=True)
    inputs = [batch.x]
    for module in net.local_modules:
        inputs.append(module(inputs[-1]).detach())
    for i, module in enumerate(net.local_modules):
        for k, span in enumerate(module.spans):
            x = inputs[i - span + 1]
            for m in net.local_modules[i - span + 1 : i + 1]:
                x = m(x)
            _terms(module, x, batch)[k][0].backward()
    return {n: p.grad for n, p in net.named_parameters() if p.grad is not None}


def _terms(module, h, batch):
    out = module.head(h, batch)
    return out.get("terms") or [(out["loss"], module.spans[0])]


def test_mlaan_ema_follows_the_live_block_exactly_and_is_not_optimised():
    """post_step: after the step, from the new weights (pre_step: tests/methods/test_mlaan_ema.py)."""
    net, cfg = _mlaan("--optim.lr=0.5", "--method.ema_momentum=0.9", "--method.ema_timing=post_step")
    optimizers = build_optimizers(net.local_modules, cfg.optim)
    optimised = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    heads = [m.head for m in net.local_modules[1:-1]]
    assert all(not p.requires_grad and id(p) not in optimised for h in heads for p in h.ema.parameters())
    before = [{k: v.clone() for k, v in h.ema.state_dict().items()} for h in heads]
    train_step(net, _batch(net.method.info, 16), optimizers, per_module=False)
    for head, old in zip(heads, before):
        live = net.unit(head.units[0]).state_dict()
        for name, value in head.ema.named_parameters():
            torch.testing.assert_close(value, 0.9 * old[name] + 0.1 * live[name], rtol=0, atol=1e-6)
            assert value.grad is None
        assert not torch.equal(live["conv1.weight"], old["conv1.weight"])  # the live block did move


def test_mlaan_ema_update_last_leaves_earlier_copies_frozen():
    net, cfg = _mlaan("--optim.lr=0.5", "--method.ema_update=last")
    heads = [m.head for m in net.local_modules[1:-1]]
    before = [h.ema.state_dict()["conv1.weight"].clone() for h in heads]
    train_step(net, _batch(net.method.info, 16), build_optimizers(net.local_modules, cfg.optim), per_module=False)
    moved = [not torch.equal(h.ema.state_dict()["conv1.weight"], b) for h, b in zip(heads, before)]
    assert moved == [False] * (len(heads) - 1) + [True]
