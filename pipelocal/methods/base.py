"""What a method is: a factory of auxiliary heads, each an nn.Module that returns its local loss.

A head follows timm's "model + loss in one module returning a dict" shape: ``head(h, batch)`` returns
``{"loss": scalar, "logits": (N, classes) or None, ...named loss terms}``. The trainer, schedules and
pipeline know only this interface; a new method is a new registered class and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelocal.config import MethodConfig
from pipelocal.registry import Registry

METHODS: Registry = Registry("method")


@dataclass(frozen=True)
class NetInfo:
    """What a method may know about the network it attaches heads to."""

    num_modules: int
    num_classes: int
    input_shape: tuple[int, int, int]
    module_shapes: tuple[tuple[int, int, int], ...]  # output (C, H, W) of each module
    final_width: int  # channels entering the classifier


class Head(nn.Module):
    """A head that trains the module under it; subclasses implement ``forward(h, batch) -> dict``."""

    def logits(self, h: torch.Tensor) -> torch.Tensor | None:
        """Class scores for accuracy, or None when the head has none (a contrastive embedding)."""
        return None


class CrossEntropyHead(Head):
    """A head ``net`` producing class scores, trained with cross-entropy."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def logits(self, h):
        return self.net(h)

    def forward(self, h, batch):
        logits = self.net(h)
        return {"loss": F.cross_entropy(logits, batch.y), "logits": logits}


class LocalMethod:
    """Base of every method. ``span`` is how many modules back a loss's gradient travels (DESIGN §1)."""

    name = "base"
    span_all = False  # True: one loss spans every module (e2e); False: span 1, outputs detached
    needs: tuple[str, ...] = ()  # extra batch fields the heads read (e.g. "raw"); travel with the batch

    def __init__(self, cfg: MethodConfig, info: NetInfo):
        self.cfg = cfg
        self.info = info

    def build_head(self, index: int) -> Head | None:
        """Aux head for non-final module ``index`` (None: the module has no local loss)."""
        raise NotImplementedError

    def span(self) -> int:
        return self.info.num_modules if self.span_all else 1
