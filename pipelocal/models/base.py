"""A backbone is an ordered list of units plus a classifier, with known output shapes."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """How a token backbone's activations (N, T, D) sit on the image: each patch token covers ``patch`` x
    ``patch`` pixels, and the first ``prefix`` tokens are not patches (ViT's class token)."""

    patch: int
    prefix: int

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, int]:
        """(H/p, W/p): the patch grid for one input of shape (C, H, W)."""
        return input_shape[1] // self.patch, input_shape[2] // self.patch


class Backbone(nn.Module):
    """Units applied in order, then ``classifier``; the pieces that split.py cuts into local modules.

    ``positions[i]`` is unit i's ``(stage, block)`` address used by the papers' split tables and MLAAN's copy
    rule: a stage is a run of units at one resolution and width whose block 0 is where the width changes
    (``(0, 0)`` is a stem, where there is one). ``new_block(in_channels, out_channels, stride)`` builds a fresh,
    initialised block of the backbone's own kind (basic or bottleneck, a VGG conv layer, a transformer block),
    for aux nets shaped like later units (AugLocal); None for networks from outside the package (models/user.py),
    whose AugLocal blocks are re-initialised copies of the later units. ``tokens`` is None for conv nets, whose
    units pass (N, C, H, W) maps; a ViT's units pass (N, T, D) tokens laid out as ``tokens`` says.
    """

    def __init__(
        self,
        units: list[nn.Module],
        classifier: nn.Module,
        positions: list[tuple[int, int]],
        new_block: Callable[[int, int, int], nn.Module] | None,
        tokens: TokenLayout | None = None,
    ):
        super().__init__()
        if len(units) != len(positions):
            raise ValueError("every unit needs a (stage, block) position")
        self.units = nn.ModuleList(units)
        self.classifier = classifier
        self.positions = positions
        self.new_block = new_block
        self.tokens = tokens
        self._shapes: dict[tuple, list] = {}

    @property
    def num_units(self) -> int:
        return len(self.units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return self.classifier(x)

    @torch.no_grad()
    def unit_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Per-unit output shape, (C, H, W) or (T, D) tokens, for one sample of ``input_shape``, by a dry forward on
        meta (cached)."""
        key = tuple(input_shape)
        if key not in self._shapes:
            x = torch.empty((2, *input_shape), device="meta")
            shapes = []
            for unit in self.units:
                x = _meta_forward(unit, x)
                shapes.append(tuple(x.shape[1:]))
            self._shapes[key] = shapes
        return list(self._shapes[key])


def _meta_forward(unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # A copy on the meta device gives shapes without computing or touching BN running statistics.
    return copy.deepcopy(unit).to("meta")(x)


def init_weights(module: nn.Module) -> None:
    """docs/methods.md#backbones init: conv ~ N(0, sqrt(2 / (k*k*out_channels))), BN weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Classifier(nn.Sequential):
    """Global average pool -> Linear: the real head of every backbone here."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


class TokenClassifier(nn.Module):
    """Pool the tokens (the class token, or the mean of all) -> LayerNorm -> Linear: a ViT's real head, and the
    token counterpart of :class:`Classifier` for aux heads (timm's final norm + head; for the class token,
    normalising before or after picking it is the same, LayerNorm being per token)."""

    def __init__(self, width: int, num_classes: int, pool: str = "mean"):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"token pool '{pool}': choose cls or mean")
        self.pool = pool
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(h[:, 0] if self.pool == "cls" else h.mean(1)))


class TokensToGrid(nn.Module):
    """(N, T, D) tokens -> (N, D, H/p, W/p): the patch tokens laid back on their grid (the class token dropped), so
    the conv aux nets (DGL's MLP-SR, InfoPro's decoder and task head) run on a ViT's activations."""

    def __init__(self, prefix: int, grid: tuple[int, int]):
        super().__init__()
        self.prefix, self.grid = prefix, tuple(grid)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, _, d = h.shape
        return h[:, self.prefix :].transpose(1, 2).reshape(n, d, *self.grid)


def norm_layer(name: str):
    """``model.norm``: BatchNorm2d (as published), GroupNorm with 8 groups (batch-independent), or none."""
    if name == "batch":
        return nn.BatchNorm2d
    if name == "group":
        return lambda channels: nn.GroupNorm(min(8, channels), channels)
    if name == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm '{name}'; choose batch, group or none")
