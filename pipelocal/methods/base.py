"""What a method is: a factory of auxiliary heads, each an nn.Module that returns its local loss.

A head follows timm's "model + loss in one module returning a dict" shape: ``head(h, batch)`` returns
``{"loss": scalar, "logits": (N, classes) or None, ...named loss terms}``. A head whose losses reach back
over more than its own module (MLAAN's cascade) also returns ``"terms": [(loss, span), ...]``; without
it the whole ``loss`` has the span the method gives the module. The trainer, schedules and pipeline know
only this interface; a new method is a new registered class and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipelocal.models import Classifier, TokenClassifier, TokenLayout, TokensToGrid
from pipelocal.options import MethodConfig, add_method_options, pick_knobs
from pipelocal.registry import Registry


class MethodRegistry(Registry):
    """Method name -> class. Registering a method also adds its ``Config`` knobs to the job's ``method`` section
    (options.py), so a new method brings its keys, help and checks with it."""

    def register(self, name: str):
        add = super().register(name)

        def add_method(cls):
            add(cls)
            add_method_options(name, cls.Config, cross_module=cls.cross_module or cls.span_all)
            return cls

        return add_method


METHODS: MethodRegistry = MethodRegistry("method")


@dataclass(frozen=True)
class NetInfo:
    """What a method may know about the network it attaches heads to."""

    num_modules: int
    num_classes: int
    input_shape: tuple[int, int, int]
    module_shapes: tuple[tuple[int, ...], ...]  # output (C, H, W), or (T, D) tokens, of each module
    final_width: int  # channels entering the classifier: shape[0] of the last output (on tokens: final_width())
    module_ends: tuple[int, ...] = ()  # index of the last unit of each module
    backbone: Any = None  # the Backbone being cut (unit shapes, positions, new_block); read, never owned


def unit_shapes(info: NetInfo) -> list[tuple[int, int, int]]:
    return info.backbone.unit_shapes(info.input_shape)


# Token backbones (ViT). A method's rule is written for (C, H, W) maps; on (T, D) tokens each method makes the
# nearest faithful choice, with these helpers: the token width plays the channels, linear probes pool the tokens
# (TokenClassifier), and conv aux nets run on the patch grid (TokensToGrid).


def token_layout(info: NetInfo) -> TokenLayout | None:
    """How the backbone's activations are tokens (None: (C, H, W) maps, or no backbone given)."""
    return getattr(info.backbone, "tokens", None)


def width_of(info: NetInfo, shape: tuple[int, ...]) -> int:
    """Channels C of a (C, H, W) map, or the width D of (T, D) tokens."""
    return shape[-1] if token_layout(info) else shape[0]


def final_width(info: NetInfo) -> int:
    """Channels (or token width) entering the classifier."""
    return width_of(info, unit_shapes(info)[-1]) if token_layout(info) else info.final_width


def probe_net(info: NetInfo, shape: tuple[int, ...]) -> nn.Module:
    """The linear probe on an activation of ``shape``: global avg pool -> Linear on maps; on tokens the mean of the
    tokens -> LayerNorm -> Linear (the ViT head's kind: a pre-norm transformer's tokens are normalised only
    there). The mean, not the class token, whatever the backbone classifies: after the embedding alone the class
    token has seen no pixel, and after a few blocks it has gathered little."""
    if token_layout(info):
        return TokenClassifier(shape[-1], info.num_classes, "mean")
    return Classifier(shape[0], info.num_classes)


def as_maps(info: NetInfo, shape: tuple[int, ...]) -> tuple[nn.Module | None, tuple[int, int, int]]:
    """For the conv aux nets: (an adapter taking (N, T, D) tokens to their (N, D, H/p, W/p) patch grid, the grid's
    shape), or (None, ``shape``) on maps, which need none."""
    layout = token_layout(info)
    if layout is None:
        return None, tuple(shape)
    grid = layout.grid(info.input_shape)
    return TokensToGrid(layout.prefix, grid), (shape[-1], *grid)


class Head(nn.Module):
    """A head that trains the module under it; subclasses implement ``forward(h, batch) -> dict``."""

    def logits(self, h: torch.Tensor) -> torch.Tensor | None:
        """Class scores for accuracy, or None when the head has none (a contrastive embedding)."""
        return None

    def after_step(self, live_unit) -> None:
        """Called once per batch after the optimizer steps; ``live_unit(u)`` gives backbone unit u as trained
        now (MLAAN's EMA copies follow it). Most heads keep no state beyond their parameters."""


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
    """Base of every method. ``span`` is how many modules back a loss's gradient travels (docs/design.md#vocabulary)."""

    name = "base"
    span_all = False  # True: one loss spans every module (e2e); False: span 1, outputs detached
    cross_module = False  # True: some loss trains more than its own module (MLAAN's cascade)
    needs: tuple[str, ...] = ()  # extra batch fields the heads read (e.g. "raw"); travel with the batch
    Config: type | None = None  # the method's knobs: a dataclass with validate(), set as method.<knob>

    def __init__(self, cfg: MethodConfig, info: NetInfo):
        """``cfg`` is the job's ``method`` section; the method keeps its own ``Config`` from it, checked here."""
        self.cfg = pick_knobs(self.Config, cfg)
        self.info = info

    def build_head(self, index: int) -> Head | None:
        """Aux head for non-final module ``index`` (None: the module has no local loss)."""
        raise NotImplementedError

    def span(self) -> int:
        """The longest reach of any loss, in modules."""
        return max((max(s, default=1) for s in map(self.loss_spans, range(self.info.num_modules))), default=1)

    def followed_units(self, index: int) -> list[int]:
        """Backbone units whose live weights module ``index``'s head follows (MLAAN's EMA); in a pipeline they
        are sent to its stage by the stages that own them."""
        return []

    def loss_spans(self, index: int) -> tuple[int, ...]:
        """Spans of module ``index``'s loss terms, in the order its head returns them (() for no loss)."""
        last = index == self.info.num_modules - 1
        if self.span_all:
            return (self.info.num_modules,) if last else ()
        return (1,)
