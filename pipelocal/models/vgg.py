"""VGG-11/13/16/19 with BatchNorm as ordered units: one conv3x3-BN-ReLU layer per unit, each 2x2 max-pool attached to
the unit before it. Two heads: a CIFAR-size one (global avg pool -> Linear, as the common CIFAR VGGs) and
torchvision's 224 one (avg pool to 7x7 -> Linear 4096 -> Linear 4096 -> Linear, ReLU and dropout between).

Positions: stage s = the s-th group of conv layers between max-pools (1..5; VGG has no stem), block b = the layer's
index in its group. So, as in a ResNet, a stage runs at one resolution and width, its block 0 is where the width
changes (VGG-11's 64 -> 128 -> 256 -> 512), and its last block ends at the pool that halves the resolution.
"""

from __future__ import annotations

from torch import nn

from pipelocal.models.base import Backbone, Classifier, init_weights, norm_layer
from pipelocal.models.registry import MODELS
from pipelocal.options import ConfigError

# Conv widths per group (torchvision's configurations A, B, D, E); a 2x2 max-pool ends every group.
GROUPS = {
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class ConvUnit(nn.Module):
    """conv3x3 (with bias, as torchvision's) -> norm -> ReLU, then a 2x2 max-pool when the layer ends its group.
    The pool rounds up (``ceil_mode``), so 28x28 inputs keep a 1x1 map after five pools (28-14-7-4-2-1);
    at 32 and 224 that is the usual floor pooling."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.bn = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if pool else nn.Identity()

    def forward(self, x):
        return self.pool(self.relu(self.bn(self.conv(x))))


class ImageNetHead(nn.Sequential):
    """torchvision's VGG classifier: avg pool to 7x7 -> Linear(512*49 -> 4096) -> ReLU -> Dropout -> Linear(4096 ->
    4096) -> ReLU -> Dropout -> Linear(-> classes); Linear weights N(0, 0.01), biases 0, as torchvision's."""

    def __init__(self, channels: int, num_classes: int, hidden: int = 4096, dropout: float = 0.5):
        super().__init__(
            nn.AdaptiveAvgPool2d(7),
            nn.Flatten(),
            nn.Linear(channels * 49, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)


def build_vgg(depth: int, in_channels: int, num_classes: int, norm: str, imagenet_head: bool) -> Backbone:
    if depth not in GROUPS:
        raise ConfigError(f"model.depth={depth}: VGG depths are {', '.join(map(str, GROUPS))}")
    layer = norm_layer(norm)
    units: list[nn.Module] = []
    positions = []
    width = in_channels
    for stage, widths in enumerate(GROUPS[depth], start=1):
        for block, out_width in enumerate(widths):
            units.append(ConvUnit(width, out_width, block == len(widths) - 1, layer))
            positions.append((stage, block))
            width = out_width

    def new_block(in_width: int, out_width: int, stride: int) -> ConvUnit:
        """A fresh conv layer; stride 2 is a layer that ends its group (the pool halves the resolution)."""
        unit = ConvUnit(in_width, out_width, stride == 2, layer)
        init_weights(unit)
        return unit

    classifier = ImageNetHead(width, num_classes) if imagenet_head else Classifier(width, num_classes)
    net = Backbone(units, classifier, positions, new_block)
    init_weights(net)  # convs N(0, sqrt(2 / (9 out))): torchvision's kaiming_normal_(fan_out) for VGG too
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.zeros_(m.bias)
    return net


@MODELS.register("cifar_vgg")
def cifar_vgg(depth: int, in_channels: int, num_classes: int, norm: str = "batch") -> Backbone:
    """VGG-``depth`` (11, 13, 16, 19) with BN and the CIFAR head (global avg pool -> Linear(512 -> classes))."""
    return build_vgg(depth, in_channels, num_classes, norm, imagenet_head=False)


def _register(layers: int):
    def build(depth: int, in_channels: int, num_classes: int, norm: str = "batch") -> Backbone:
        del depth  # fixed by the name
        return build_vgg(layers, in_channels, num_classes, norm, imagenet_head=True)

    build.__doc__ = f"torchvision's vgg{layers}_bn (224 inputs, 4096-wide classifier), one unit per conv layer."
    return MODELS.register(f"vgg{layers}_bn")(build)


vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn = (_register(d) for d in (11, 13, 16, 19))  # 8, 10, 13, 16 units
