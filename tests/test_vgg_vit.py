"""Beyond ResNets: VGG and ViT backbones as units, every method's heads on them, their splits."""

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from pipelocal.config import ConfigError
from pipelocal.data import Batch, DataInfo
from pipelocal.methods import METHODS
from pipelocal.methods.base import unit_shapes
from pipelocal.models import MODELS, TokenClassifier, TokensToGrid, build_backbone
from pipelocal.models.vgg import ConvUnit
from pipelocal.models.vit import Attention, Block
from pipelocal.runtime import build_local_net
from pipelocal.runtime.profile import split_for
from pipelocal.schedules.sequential import train_step
from pipelocal.split import table_ranges, uniform_ranges
from tests.conftest import one_process, tiny_config

INFO = DataInfo(num_classes=5, input_shape=(3, 16, 16))
CIFAR = DataInfo(num_classes=10, input_shape=(3, 32, 32))

# Every registered backbone -> the (name, model.depth) the step test runs for it: itself where it is small, else
# the smallest net its builder makes (the same units, positions and new_block; sizes and structure of the big ones
# are checked on the meta device below and in test_models.py).
STAND_INS = {
    "cifar_resnet": ("cifar_resnet", 8),
    "resnet18": ("resnet18", 0),
    "resnet34": ("resnet18", 0),
    "resnet50": ("resnet50", 0),
    "resnet101": ("resnet50", 0),
    "resnet152": ("resnet50", 0),
    "resnext101_32x8d": ("resnet50", 0),
    "cifar_vgg": ("cifar_vgg", 11),
    **{f"vgg{d}_bn": ("cifar_vgg", 11) for d in (11, 13, 16, 19)},  # the 224 head alone: a 103M-weight Linear
    "vit_tiny_p4": ("vit_tiny_p4", 2),
    "vit_tiny_p4_gap": ("vit_tiny_p4_gap", 2),
    **{f"vit_{s}{g}": (f"vit_tiny{g}", 0) for s in ("tiny", "small", "base") for g in ("", "_gap")},
}
STEP_CASES = sorted(set(STAND_INS.values()))


def test_every_registered_backbone_has_a_step_case():
    assert set(STAND_INS) == set(MODELS.names())


@pytest.mark.parametrize("method", METHODS.names())
@pytest.mark.parametrize("model, depth", STEP_CASES, ids=[f"{m}-{d}" for m, d in STEP_CASES])
def test_every_method_runs_a_sequential_step_on_every_backbone(model, depth, method):
    mode = "e2e" if method == "e2e" else "sequential"
    cfg = tiny_config(
        f"--model.name={model}",
        f"--model.depth={depth}",
        f"--method.name={method}",
        f"--mode={mode}",
        "--split.num_modules=3",
        "--data.batch_size=4",
        "--data.synthetic_train=8",
    )
    loader, net, opts, numerics = one_process(cfg)
    batch = next(iter(loader))
    before = [p.detach().clone() for p in net.local_modules[0].body.parameters()]
    result = train_step(net, batch, opts, cfg.optim.step == "per_module", numerics=numerics)
    assert result.output.shape[0] == len(batch) and all(math.isfinite(x.item()) for x in result.losses)
    # module 0 learned (MLAAN's through module 1's cascade; e2e's through the one loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, net.local_modules[0].body.parameters()))


# ---------------------------------------------------------------------------------------------------------- VGG


@pytest.mark.parametrize("depth, units", [(11, 8), (13, 10), (16, 13), (19, 16)])
def test_vgg_units_positions_and_shapes(depth, units):
    net = build_backbone("cifar_vgg", depth, 3, 10)
    assert net.num_units == units and net.positions[0] == (1, 0) and net.positions[-1][0] == 5
    stages = [s for s, _ in net.positions]
    assert all(b == 0 or (s, b - 1) in net.positions for s, b in net.positions)  # blocks count up within a stage
    assert sorted(set(stages)) == [1, 2, 3, 4, 5]
    shapes = net.unit_shapes((3, 32, 32))
    ends = [i for i, (s, _) in enumerate(net.positions) if i == units - 1 or net.positions[i + 1][0] != s]
    assert [shapes[i][1] for i in ends] == [16, 8, 4, 2, 1]  # each group ends at its pool
    assert build_backbone("cifar_vgg", depth, 1, 10).unit_shapes((1, 28, 28))[-1] == (512, 1, 1)  # 28-14-7-4-2-1


def test_vgg_bad_depth_names_the_key():
    with pytest.raises(ConfigError, match="model.depth=12"):
        build_backbone("cifar_vgg", 12, 3, 10)


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_vgg_224_matches_torchvision_in_size(depth):
    with torch.device("meta"):
        net = build_backbone(f"vgg{depth}_bn", 0, 3, 1000)
        reference = getattr(torchvision.models, f"vgg{depth}_bn")(weights=None)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in reference.parameters())
    assert net.unit_shapes((3, 224, 224))[-1] == (512, 7, 7)


def test_vgg_units_compute_torchvision_features():
    torch.manual_seed(0)
    net = build_backbone("cifar_vgg", 11, 3, 10).eval()
    reference = make_layers(cfgs["A"], batch_norm=True).eval()
    layers = [m for m in reference if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    ours = [m for unit in net.units for m in (unit.conv, unit.bn)]
    for mine, theirs in zip(ours, layers, strict=True):
        mine.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 32, 32)
    h = x
    for unit in net.units:
        h = unit(h)
    assert torch.allclose(h, reference(x), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------- ViT


@pytest.mark.parametrize("name, params", [("vit_tiny", 5_717_416), ("vit_small", 22_050_664), ("vit_base", 86_567_656)])
def test_vit_sizes_match_timm(name, params):
    """timm's vit_{tiny,small,base}_patch16_224 parameter counts; the _gap variants lack the class token and its
    position (timm's class_token=False, global_pool='avg')."""
    with torch.device("meta"):
        net, gap = build_backbone(name, 0, 3, 1000), build_backbone(f"{name}_gap", 0, 3, 1000)
    width = net.units[1].norm1.normalized_shape[0]
    assert sum(p.numel() for p in net.parameters()) == params
    assert sum(p.numel() for p in gap.parameters()) == params - 2 * width
    assert net.num_units == 13 and net.positions == [(0, 0)] + [(1, b) for b in range(12)]
    assert net.unit_shapes((3, 224, 224)) == [(197, width)] * 13
    assert gap.unit_shapes((3, 224, 224))[-1] == (196, width)


def test_small_vit_takes_its_depth_and_any_input_size():
    net = build_backbone("vit_tiny_p4", 6, 1, 10)
    assert net.num_units == 7 and net.tokens.patch == 4 and net.tokens.prefix == 1
    assert net.unit_shapes((1, 32, 32))[-1] == (65, 192)  # the position table's own grid, 8x8
    assert net.unit_shapes((1, 28, 28))[-1] == (50, 192)  # resampled to 7x7
    logits = net(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert net.units[0].pos_embed.grad is not None
    with pytest.raises(ConfigError, match="model.depth=0"):
        build_backbone("vit_tiny_p4", 0, 1, 10)


def test_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    mine, reference = Attention(16, 4), nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(mine.qkv.weight)
        reference.in_proj_bias.copy_(mine.qkv.bias)
        reference.out_proj.weight.copy_(mine.proj.weight)
        reference.out_proj.bias.copy_(mine.proj.bias)
    x = torch.randn(2, 5, 16)
    assert torch.allclose(mine(x), reference(x, x, x, need_weights=False)[0], atol=1e-6)


# ------------------------------------------------------------------------------------------ the methods on them


def _net(model, depth, method, k, info=INFO):
    cfg = tiny_config(
        f"--model.name={model}", f"--model.depth={depth}", f"--method.name={method}", f"--split.num_modules={k}"
    )
    return build_local_net(cfg, info)


def _outputs(net, x):
    outs = []
    for module in net.local_modules:
        x = module(x)
        outs.append(x)
    return outs


def _batch(info, n=4):
    raw = torch.rand(n, *info.input_shape)
    return Batch((raw - 0.5) / 0.25, torch.arange(n) % info.num_classes, raw)


def test_heads_on_tokens_pool_or_lay_out_the_patch_grid():
    batch = _batch(INFO)
    greedy = _net("vit_tiny_p4", 3, "greedy", 3)
    head = greedy.local_modules[0].head.net
    assert isinstance(head, TokenClassifier) and head.pool == "mean"
    dgl = _net("vit_tiny_p4", 3, "dgl", 3)
    assert isinstance(dgl.local_modules[0].head.net[0], TokensToGrid)
    infopro = _net("vit_tiny_p4", 3, "infopro", 3)
    h = _outputs(infopro, batch.x)[0]
    assert h.shape == (4, 17, 192)  # class token + 4x4 patches
    head = infopro.local_modules[0].head
    assert head.decoder(head.to_maps(h)).shape == batch.raw.shape  # the raw image, reconstructed from tokens
    out = head(h, batch)
    assert out["rec"] > 0 and out["logits"].shape == (4, 5)


def test_auglocal_aux_nets_are_fresh_blocks_of_the_backbone_kind():
    vit = _net("vit_tiny_p4", 4, "auglocal", 3)
    live = {id(p) for m in vit.local_modules for p in m.body.parameters()}
    for module in vit.local_modules[:-1]:
        assert all(isinstance(b, Block) for b in module.head.blocks) and len(module.head.blocks) >= 1
        assert not any(id(p) in live for p in module.head.parameters())
    assert vit.method.plan(0) == [(2, 192, 1), (4, 192, 1)]  # after unit 1 of 5, depth 2: round(2.5) = 2, then 4
    vgg = _net("cifar_vgg", 11, "auglocal", 3, CIFAR)  # modules end after units 2 and 5 of 8
    # after unit 2 ((3,0), 8x8): mimics units 4 ((4,0), 4x4) and 7 ((5,1), 1x1): a pooled layer each
    assert vgg.method.plan(0) == [(4, 512, 2), (7, 512, 2)]
    blocks = list(vgg.local_modules[0].head.blocks)
    assert all(isinstance(b, ConvUnit) and isinstance(b.pool, nn.MaxPool2d) for b in blocks)
    batch = _batch(CIFAR)
    h = _outputs(vgg, batch.x)[0]
    assert vgg.local_modules[0].head(h, batch)["logits"].shape == (4, 10)


def _lam_output(head, h):
    x = head.entry(h)
    return head.rest(head.first(x) + head.ema(x))


def test_mlaan_leap_module_on_vgg_runs_at_the_live_resolution():
    net = _net("cifar_vgg", 11, "mlaan", 4, CIFAR)  # modules end after units 1, 3, 5
    shapes = unit_shapes(net.method.info)
    outs = _outputs(net, _batch(CIFAR).x)
    for i in (1, 2):
        head = net.local_modules[i].head
        assert tuple(_lam_output(head, outs[i]).shape[1:]) == shapes[head.units[-1]]
    # after unit 3 ((3,1), 4x4): copies (4,0), (5,0) and (5,1); (5,0) sees the 2x2 left by (4,1)'s pool
    head = net.local_modules[1].head
    assert head.units == [4, 6, 7] and isinstance(head.rest[0], nn.AdaptiveMaxPool2d)
    resnet = _net("cifar_resnet", 20, "mlaan", 4, CIFAR)  # ResNet transition blocks downsample themselves
    assert not any(isinstance(m, nn.AdaptiveMaxPool2d) for m in resnet.modules())


def test_mlaan_leap_module_on_vit_copies_later_blocks_with_an_ema():
    net = _net("vit_tiny_p4", 5, "mlaan", 3)  # 6 units; modules end after units 1 and 3
    head = net.local_modules[1].head
    assert head.units == [4, 5]  # from a block: the last blocks (up to 3)
    assert isinstance(head.first, Block) and not any(p.requires_grad for p in head.ema.parameters())
    h = _outputs(net, _batch(INFO).x)[1]
    assert _lam_output(head, h).shape == h.shape
    live = net.unit(4)
    with torch.no_grad():
        live.attn.qkv.weight.add_(1.0)
    before = head.ema.attn.qkv.weight.clone()
    head.after_step(net.unit)  # ema_timing pre_step: refreshed from the weights this step began with
    assert torch.allclose(head.ema.attn.qkv.weight, before, atol=1e-6)
    head.after_step(net.unit)  # the next step's refresh reads the moved weights
    assert torch.allclose(head.ema.attn.qkv.weight, before + 0.005, atol=1e-6)  # (1 - m) of the step


# ---------------------------------------------------------------------------------------------------- splits


def test_time_balanced_split_of_a_vit_is_near_uniform():
    """Transformer blocks cost the same: profiling (balance=time) lands within one unit of the uniform split."""
    cfg = tiny_config(
        "--model.name=vit_tiny_p4",
        "--model.depth=6",
        "--method.name=greedy",
        "--split.num_modules=3",
        "--split.balance=time",
        "--data.batch_size=32",
    )
    ranges, line = split_for(cfg, INFO, torch.device("cpu"))
    assert "profiled on cpu" in line
    uniform = uniform_ranges(7, 3)
    assert len(ranges) == 3 and all(abs(a[1] - b[1]) <= 1 for a, b in zip(ranges, uniform)), (ranges, uniform)


def test_split_tables_refuse_other_backbones():
    with torch.device("meta"):
        vit = build_backbone("vit_tiny_p4", 32, 3, 10)
    with pytest.raises(ConfigError, match="cifar_resnet"):
        table_ranges("infopro", 32, 4, vit.positions)
