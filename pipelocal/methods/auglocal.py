"""auglocal: aux nets of fresh blocks shaped like a uniform sample of the later units (Ma et al., ICLR 2024).

The aux net after unit l mimics the rest of the network at a fraction of its depth: it samples d_l later
units uniformly (always ending at the last one) and builds a *new* block of the backbone's own kind for
each, with that unit's output width (no weights shared or copied), then avg pool -> [BN1d if d_l <= 1]
-> linear. Depths decay linearly with the module index (docs/methods.md#auglocal).

The authors' code uses K - d modules and folds the last d + 1 units into the final module; here K means
K modules. To reproduce their setting give the boundaries explicitly (docs/methods.md#auglocal).

Beyond ResNets the rule is the same, with the backbone's own kind of unit (``Backbone.new_block``). VGG: a fresh
conv3x3-BN-ReLU layer per sampled unit, "stride 2" being a layer that ends with a 2x2 max-pool (as the units that
end a conv group do), so the aux net halves the resolution at most once per sampled layer where the real net
may pool several times in between (a ResNet's sampled blocks likewise skip stages). ViT: a fresh transformer block
per sampled block, always at the token width and count (stride 1); the classifier pools the tokens (mean) ->
LayerNorm -> Linear, the ViT head's kind, without the BN1d of depth-1 nets (the LayerNorm normalises there).
Networks from outside the package (a user's factory, timm) have no block builder: each block is a re-initialised
copy of the mimicked unit, or of the nearest unit that takes the running shape to its output (models/user.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from pipelocal.methods.base import METHODS, Head, LocalMethod, token_layout, unit_shapes, width_of
from pipelocal.models import TokenClassifier, init_weights
from pipelocal.models.user import fresh_copies
from pipelocal.options import ConfigError, option


@dataclass
class AugLocalConfig:
    """AugLocal's knobs, set as ``method.<key>``."""

    aux_depth: int = option(2, "d, the depth (blocks) of the first aux net")
    depth_decay: float = option(0.5, "c, aux i has depth max(1, round(d(1 - ic/(K-2)) + ic/(K-2)))")

    def validate(self) -> None:
        if self.aux_depth < 1:
            raise ConfigError(f"method.aux_depth={self.aux_depth} must be at least 1 (the paper uses 2 or 3)")


def aux_depths(num_modules: int, depth: int, decay: float) -> list[int]:
    """Depth of aux i = 0..K-2: ``max(1, round(d(1 - i c/(K-2)) + i c/(K-2)))`` (Python's round)."""
    ratio = [i * decay / (num_modules - 2) if num_modules > 2 else 0.0 for i in range(num_modules - 1)]
    return [max(1, round(depth * (1 - r) + r)) for r in ratio]


def sampled_units(after: int, depth: int, num_units: int) -> list[int]:
    """The later units the aux after unit ``after`` mimics: all of them if there are few enough, else
    ``round(l + (n - l - 1) / d * j)`` for j = 1..d (the last is always the final unit)."""
    if depth >= num_units - 1 - after:
        return list(range(after + 1, num_units))
    return [round(after + (num_units - after - 1) / depth * j) for j in range(1, depth + 1)]


class AugLocalHead(Head):
    def __init__(self, blocks: list[nn.Module], width: int, num_classes: int, tokens: bool = False):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        if tokens:
            self.classifier = TokenClassifier(width, num_classes, "mean")
            return
        norm = [nn.BatchNorm1d(width)] if len(blocks) <= 1 else []
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), *norm, nn.Linear(width, num_classes))
        init_weights(self.classifier)

    def logits(self, h):
        return self.classifier(self.blocks(h))

    def forward(self, h, batch):
        logits = self.logits(h)
        return {"loss": F.cross_entropy(logits, batch.y), "logits": logits}


@METHODS.register("auglocal")
class AugLocal(LocalMethod):
    name = "auglocal"
    Config = AugLocalConfig

    def plan(self, index: int) -> list[tuple[int, int, int]]:
        """(unit mimicked, width, stride) of each block of aux ``index``: stride 2 where the mimicked unit's
        resolution is below the running one (on CIFAR ResNets: where the width doubles; never on tokens)."""
        shapes = unit_shapes(self.info)
        after = self.info.module_ends[index]
        depth = aux_depths(self.info.num_modules, self.cfg.aux_depth, self.cfg.depth_decay)[index]
        tokens = token_layout(self.info) is not None
        size = 1 if tokens else shapes[after][1]
        plan = []
        for u in sampled_units(after, depth, len(shapes)):
            stride = 2 if not tokens and shapes[u][1] < size else 1
            size = -(-size // stride)
            plan.append((u, width_of(self.info, shapes[u]), stride))
        return plan

    def build_head(self, index):
        width = width_of(self.info, self.info.module_shapes[index])
        plan, backbone = self.plan(index), self.info.backbone
        if backbone.new_block is None:  # a network from outside the package: copies of the later units
            after, units = self.info.module_ends[index], [u for u, _, _ in plan]
            blocks = fresh_copies(backbone, after, units, self.info.input_shape)
            return AugLocalHead(blocks, plan[-1][1], self.info.num_classes, token_layout(self.info) is not None)
        blocks = []
        for _, out_width, stride in plan:
            blocks.append(backbone.new_block(width, out_width, stride))
            width = out_width
        return AugLocalHead(blocks, width, self.info.num_classes, token_layout(self.info) is not None)
