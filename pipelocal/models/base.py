"""A backbone is an ordered list of units plus a classifier, with known output shapes."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn


class Backbone(nn.Module):
    """Units applied in order, then ``classifier``; the pieces that split.py cuts into local modules.

    ``positions[i]`` is unit i's ``(stage, block)`` address used by the papers' split tables
    (``(0, 0)`` is the stem). ``new_block(in_channels, out_channels, stride)`` builds a fresh, initialised
    block of the backbone's own kind (basic or bottleneck), for aux nets shaped like later units (AugLocal).
    """

    def __init__(
        self,
        units: list[nn.Module],
        classifier: nn.Module,
        positions: list[tuple[int, int]],
        new_block: Callable[[int, int, int], nn.Module],
    ):
        super().__init__()
        if len(units) != len(positions):
            raise ValueError("every unit needs a (stage, block) position")
        self.units = nn.ModuleList(units)
        self.classifier = classifier
        self.positions = positions
        self.new_block = new_block
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
        """Per-unit output shape (C, H, W) for one sample of ``input_shape``, by a dry forward on meta (cached)."""
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
    """METHODS §1 init: conv ~ N(0, sqrt(2 / (k*k*out_channels))), BN weight 1, bias 0."""
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


def norm_layer(name: str):
    """``model.norm``: BatchNorm2d (as published), GroupNorm with 8 groups (batch-independent), or none."""
    if name == "batch":
        return nn.BatchNorm2d
    if name == "group":
        return lambda channels: nn.GroupNorm(min(8, channels), channels)
    if name == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm '{name}'; choose batch, group or none")
