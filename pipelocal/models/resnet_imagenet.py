"""ImageNet-style ResNet-18/34/50/101/152 and ResNeXt-101 32x8d (torchvision's layout), cut into units: the stem,
then one per block."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from pipelocal.models.base import Backbone, Classifier, init_weights, norm_layer
from pipelocal.models.registry import MODELS

if TYPE_CHECKING:
    from torchvision.models.resnet import ResNet


def _block_builder(kind: type[nn.Module], norm, groups: int = 1, base_width: int = 64):
    """Fresh torchvision blocks of ``kind`` (BasicBlock or Bottleneck) by output width, with a projection
    shortcut when the stride or the width changes; ``groups``/``base_width`` keep a ResNeXt's grouped 3x3."""

    def new_block(in_width: int, out_width: int, stride: int) -> nn.Module:
        downsample = None
        if stride != 1 or in_width != out_width:
            downsample = nn.Sequential(nn.Conv2d(in_width, out_width, 1, stride, bias=False), norm(out_width))
        planes = out_width // kind.expansion
        block = kind(in_width, planes, stride, downsample, groups=groups, base_width=base_width, norm_layer=norm)
        init_weights(block)
        return block

    return new_block


def _from_torchvision(tv: ResNet, in_channels: int, num_classes: int, norm) -> Backbone:
    if in_channels != 3:
        tv.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    units: list[nn.Module] = [nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool)]
    positions = [(0, 0)]
    for stage, layer in enumerate((tv.layer1, tv.layer2, tv.layer3, tv.layer4), start=1):
        for block_index, block in enumerate(layer):
            units.append(block)
            positions.append((stage, block_index))
    new_block = _block_builder(type(tv.layer1[0]), norm, tv.groups, tv.base_width)
    net = Backbone(units, Classifier(tv.fc.in_features, num_classes), positions, new_block)
    init_weights(net)
    return net


def _register(name: str):
    @MODELS.register(name)
    def build(depth: int, in_channels: int, num_classes: int, norm: str = "batch") -> Backbone:
        del depth  # fixed by the name
        from torchvision.models import resnet  # here, not at import: torchvision.ops pulls in dynamo (1.7 s a process)

        layer = norm_layer(norm)
        tv = getattr(resnet, name)(weights=None, norm_layer=layer)
        return _from_torchvision(tv, in_channels, num_classes, layer)

    build.__doc__ = f"torchvision {name}, units = stem + one per block."
    return build


resnet18 = _register("resnet18")
resnet34 = _register("resnet34")
resnet50 = _register("resnet50")
resnet101 = _register("resnet101")  # blocks [3, 4, 23, 3]: 34 units
resnet152 = _register("resnet152")  # blocks [3, 8, 36, 3]: 51 units
# groups=32, width_per_group=8 (torchvision's builder sets them); same block layout as resnet101, 34 units
resnext101_32x8d = _register("resnext101_32x8d")
