"""dgl: Decoupled Greedy Learning's "MLP-SR" aux head (Belilovsky et al., 2020; METHODS §3)."""

import math

from torch import nn

from pipelocal.methods.base import METHODS, CrossEntropyHead, LocalMethod
from pipelocal.models import init_weights


def mlp_sr(channels: int, spatial: int, num_classes: int) -> nn.Sequential:
    """pool to ceil(S/4) -> 3 x conv1x1-BN-ReLU -> pool to min(ceil(S/4), 2) -> 2 x Linear-BN-ReLU -> Linear."""
    first = math.ceil(spatial / 4)
    second = min(first, 2)
    convs = []
    for _ in range(3):
        convs += [nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
    flat = channels * second * second
    mlp = []
    for _ in range(2):
        mlp += [nn.Linear(flat, flat, bias=False), nn.BatchNorm1d(flat), nn.ReLU(inplace=True)]
    net = nn.Sequential(
        nn.AdaptiveAvgPool2d(first),
        *convs,
        nn.AdaptiveAvgPool2d(second),
        nn.Flatten(),
        *mlp,
        nn.Linear(flat, num_classes),
    )
    init_weights(net)
    return net


@METHODS.register("dgl")
class DGL(LocalMethod):
    name = "dgl"

    def build_head(self, index):
        channels, height, _ = self.info.module_shapes[index]
        return CrossEntropyHead(mlp_sr(channels, height, self.info.num_classes))
