"""dgl: Decoupled Greedy Learning's "MLP-SR" aux head (Belilovsky et al., 2020; docs/methods.md#the-methods).

On a ViT the head runs on the patch grid (the class token dropped): S is the grid's side, the spatial pooling
averages neighbouring patch tokens, and its conv1x1-BN-ReLU layers are a token MLP (a 1x1 conv is one Linear
applied to every token), so MLP-SR keeps its shape: pool the tokens to ceil(S/4)^2, a 3-layer token MLP, pool to
<= 2x2, flatten, MLP. BatchNorm stays (as in MLP-SR) rather than a transformer's LayerNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from pipelocal.methods.base import METHODS, CrossEntropyHead, LocalMethod, as_maps
from pipelocal.models import init_weights
from pipelocal.options import option

# head -> (hidden Linear-BN1d-ReLU layers, whether those Linears have a bias)
MLP_LAYERS = {
    "auglocal": (2, False),  # AugLocal's re-implementation (networks/auxiliary_nets.py, net_config 'DGL')
    "dgl": (3, True),  # eugenium/DGL's original (auxiliary_nets_study/models.py, aux_type 'mlp-sr')
}


@dataclass
class DGLConfig:
    """DGL's knobs, set as ``method.<key>``."""

    head: str = option(
        "auglocal",
        "MLP of the MLP-SR head: auglocal (2 hidden Linear-BN-ReLU, no bias; AugLocal's re-implementation, "
        "what InfoPro's and AugLocal's DGL rows compare with) or dgl (3 hidden, with bias; eugenium/DGL's "
        "original, behind DGL's own tables)",
        tuple(MLP_LAYERS),
    )

    def validate(self) -> None:
        """Nothing beyond the choices of ``head`` (checked with the section)."""


def mlp_sr(channels: int, spatial: int, num_classes: int, head: str = "auglocal") -> nn.Sequential:
    """pool to ceil(S/4) -> 3 x conv1x1-BN-ReLU -> pool to min(ceil(S/4), 2) -> n x Linear-BN-ReLU -> Linear,
    n = 2 (``auglocal``) or 3 (``dgl``)."""
    hidden, bias = MLP_LAYERS[head]
    first = math.ceil(spatial / 4)
    second = min(first, 2)  # the original always pools to 2; the same wherever S >= 8 (every CIFAR ResNet split)
    convs = []
    for _ in range(3):
        convs += [nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
    flat = channels * second * second
    mlp = []
    for _ in range(hidden):
        mlp += [nn.Linear(flat, flat, bias=bias), nn.BatchNorm1d(flat), nn.ReLU(inplace=True)]
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
    Config = DGLConfig

    def build_head(self, index):
        to_maps, (channels, height, _) = as_maps(self.info, self.info.module_shapes[index])
        net = mlp_sr(channels, height, self.info.num_classes, self.cfg.head)
        return CrossEntropyHead(net if to_maps is None else nn.Sequential(to_maps, *net))
