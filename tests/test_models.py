import math

import pytest
import torch
import torchvision

from pipelocal.models import MODELS, build_backbone


@pytest.mark.parametrize("depth, units", [(8, 4), (20, 10), (32, 16), (56, 28), (110, 55)])
def test_cifar_resnet_units(depth, units):
    net = build_backbone("cifar_resnet", depth, 3, 10)
    assert net.num_units == units
    shapes = net.unit_shapes((3, 32, 32))
    assert shapes[0] == (16, 32, 32) and shapes[-1] == (64, 8, 8)


def test_cifar_resnet_any_input():
    net = build_backbone("cifar_resnet", 20, 1, 10)
    assert net.unit_shapes((1, 28, 28))[-1] == (64, 7, 7)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name, units, width", [("resnet18", 9, 512), ("resnet34", 17, 512), ("resnet50", 17, 2048)])
def test_imagenet_resnets(name, units, width):
    net = build_backbone(name, 0, 3, 100)
    assert net.num_units == units
    assert net.unit_shapes((3, 64, 64))[-1][0] == width
    assert net.positions[0] == (0, 0) and net.positions[-1][0] == 4


@pytest.mark.parametrize(
    "name, blocks", [("resnet101", [3, 4, 23, 3]), ("resnet152", [3, 8, 36, 3]), ("resnext101_32x8d", [3, 4, 23, 3])]
)
def test_deep_imagenet_backbones_match_torchvision(name, blocks):
    with torch.device("meta"):  # counts and shapes only: no memory, no initialisation cost
        net = build_backbone(name, 0, 3, 1000)
        reference = getattr(torchvision.models, name)(weights=None)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in reference.parameters())
    assert net.num_units == 1 + sum(blocks)
    assert net.positions == [(0, 0)] + [(stage, b) for stage, n in enumerate(blocks, 1) for b in range(n)]
    assert net.unit_shapes((3, 64, 64))[-1] == (2048, 2, 2)
    # new_block (AugLocal's fresh blocks) keeps the backbone's kind: layer3's transition block, ResNeXt groups too
    transition = net.units[1 + sum(blocks[:2])]
    with torch.device("meta"):
        fresh = net.new_block(512, 1024, 2)
    assert sum(p.numel() for p in fresh.parameters()) == sum(p.numel() for p in transition.parameters())
    assert fresh.conv2.groups == transition.conv2.groups == (32 if name.startswith("resnext") else 1)


def test_conv_init_matches_methods_section_1():
    torch.manual_seed(0)
    net = build_backbone("cifar_resnet", 110, 3, 10)
    conv = net.units[30].conv1  # 32 -> 32 channels, 3x3
    expected = math.sqrt(2.0 / (3 * 3 * conv.out_channels))
    assert abs(conv.weight.std().item() - expected) / expected < 0.05
    assert torch.all(net.units[30].bn1.weight == 1) and torch.all(net.units[30].bn1.bias == 0)


def test_registry_lists_models():
    names = {"cifar_resnet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext101_32x8d"}
    assert names <= set(MODELS.names())
