"""CIFAR-style ResNet of depth 6n+2 (ResNet-20/32/56/110), any input channels and size (docs/methods.md#backbones)."""

from __future__ import annotations

from torch import nn

from pipelocal.models.base import Backbone, Classifier, init_weights, norm_layer
from pipelocal.models.registry import MODELS


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut (projection when stride or width changes), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), norm(out_channels)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def stem(in_channels: int, width: int = 16, norm=nn.BatchNorm2d) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), norm(width), nn.ReLU(inplace=True))


@MODELS.register("cifar_resnet")
def cifar_resnet(depth: int, in_channels: int, num_classes: int, norm: str = "batch") -> Backbone:
    """Units: the stem, then one per BasicBlock in three stages of 16/32/64 channels."""
    if (depth - 2) % 6:
        raise ValueError(f"cifar_resnet depth must be 6n+2, got {depth}")
    blocks_per_stage = (depth - 2) // 6
    layer = norm_layer(norm)
    units: list[nn.Module] = [stem(in_channels, norm=layer)]
    positions = [(0, 0)]
    width = 16
    for stage, out_width in enumerate((16, 32, 64), start=1):
        for block in range(blocks_per_stage):
            stride = 2 if (stage > 1 and block == 0) else 1
            units.append(BasicBlock(width, out_width, stride, layer))
            positions.append((stage, block))
            width = out_width

    def new_block(in_width: int, out_width: int, stride: int) -> BasicBlock:
        block = BasicBlock(in_width, out_width, stride, layer)
        init_weights(block)
        return block

    net = Backbone(units, Classifier(64, num_classes), positions, new_block)
    init_weights(net)
    return net
