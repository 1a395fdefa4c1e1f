"""mlaan: an independent probe plus a cascade loss through a leap augmented module (MLAAN, AAAI 2025).

Module i has two losses (docs/methods.md#mlaan):

- ``wx`` x the probe's loss on its output: trains module i only;
- ``wy`` x the same kind of loss on the output of the leap augmented module (LAM): copies of later backbone
  blocks, where the first copied block's output is the sum of a trainable copy and a frozen EMA copy of the live
  block (``ema <- m ema + (1 - m) live`` after every step). Its gradient trains modules i-1 and i
  (``cascade_span`` = 2; 3 reaches i-2 too): the head returns it as a term of that span.

``base`` picks the losses: ``mlaan`` (avg pool -> linear, CE), or the heads of ``dgl`` or ``infopro``, built by
that method's own builder, for the probe and for the LAM's output alike (DGL+MLAAN, InfoPro+MLAAN; the released
code's resnetDGLbin.py / resnetInfoProbin.py, run there with span 3). Modules before the first full cascade
(module 0; 0 and 1 at span 3) have no loss of their own: that cascade trains them, as in the released code. The
final module's classifier loss is the last cascade. Which blocks a LAM copies: :func:`lam_units`.

As the released CIFAR code (CIFAR-SVHN-STL/networks/): the authors' copy tables for their splits (the R-32 "K=16"
run is their K = 15: one block per module, the stem with the first); ``ema_update: last`` refreshes only the
last aux net's EMA, as that code does (the others stay at their init); ``ema_timing: pre_step`` (the default)
refreshes as that code does: before the optimizer step, from the weights the step began with, parameters only
(``post_step``: after the step, from the new weights, BN statistics too). As the paper, not the code:
``ema_update: all`` (the default) refreshes every EMA; the InfoPro combination's probe uses the configured task
loss (the code's is always contrastive) and the usual λ schedule (the code interpolates by stage index). No module is
re-run: the step keeps module i-1's graph until module i's cascade gradient has flowed back through it, the
same gradient as the paper's recomputation and the mechanism a pipeline uses across stages.

Beyond ResNets the copy rule reads the backbone's positions as it reads a ResNet's. VGG (stages = conv groups,
block 0 the layer that widens): from a group before the last, the first layer of every later group, then the last
group's layers, ending at the last layer; because a VGG downsamples by the pool that ends the layer *before* a
copied one, the LAM max-pools to the resolution the live layer sees before each copy that needs it (on a ResNet
the copied transition blocks downsample themselves, so nothing is inserted). ViT (the embedding, then one stage of
alike blocks): from the embedding, blocks 0, 2, 3 and the last (the stage's block 0, then blocks from its third);
from a block, the last 3 blocks (fewer near the end), the first of them trainable + EMA. Probes on tokens pool them
(mean) -> LayerNorm -> Linear (base.probe_net).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from pipelocal.methods.base import METHODS, CrossEntropyHead, Head, LocalMethod, probe_net, token_layout, unit_shapes
from pipelocal.methods.mlaan_lam import PUBLISHED_LAM, derived_units, lam_units  # noqa: F401  (their home before)
from pipelocal.models import Classifier, init_weights
from pipelocal.options import ConfigError, option


@dataclass
class MLAANConfig:
    """MLAAN's knobs, set as ``method.<key>``."""

    wx: float = option(0.001, "weight of the independent probe on each module")
    wy: float = option(0.999, "weight of the cascade loss through the leap augmented module")
    cascade_span: int = option(2, "modules a cascade loss trains, ending at its own (2, or 3 as in DGL/InfoPro+)")
    ema_momentum: float = option(0.995, "m in ema <- m*ema + (1-m)*live for the LAM's frozen copy")
    ema_sync_every: int = option(
        1, "in a pipeline, stages that own the blocks the EMA copies follow send their weights every N steps"
    )
    ema_update: str = option(
        "all",
        "refresh every aux net's EMA copy (the paper), or only the last one (the released code)",
        ("all", "last"),
    )
    ema_timing: str = option(
        "pre_step",
        "when an EMA copy is refreshed: pre_step (the released code: in the step, before optimizer.step, from the "
        "weights the step started from, parameters only) or post_step (after the step, from the new weights, BN "
        "statistics averaged too)",
        ("pre_step", "post_step"),
    )
    base: str = option(
        "mlaan",
        "losses of the probe and of the LAM's output: mlaan (avg pool -> linear, CE), or the aux head of dgl or "
        "infopro with that method's knobs (DGL+MLAAN, InfoPro+MLAAN)",
        ("mlaan", "dgl", "infopro"),
    )

    def validate(self) -> None:
        if self.cascade_span not in (2, 3):
            raise ConfigError(f"method.cascade_span={self.cascade_span}: MLAAN cascades span 2 or 3 modules")
        if self.ema_sync_every < 1:  # the pipeline sends the EMA's weights when step % ema_sync_every == 0
            raise ConfigError(f"method.ema_sync_every={self.ema_sync_every} must be at least 1 (1: every step)")


def _frozen(block: nn.Module) -> nn.Module:
    ema = copy.deepcopy(block)
    for p in ema.parameters():
        p.requires_grad_(False)
    for m in ema.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0  # running statistics move only with the EMA, never with its own forwards
    return ema


class LinearProbe(Classifier, Head):
    """avg pool -> Linear, trained with CE: MLAAN's own probe and LAM classifier (``base: mlaan``)."""

    def __init__(self, width: int, num_classes: int):
        super().__init__(width, num_classes)
        init_weights(self)

    def logits(self, h):
        return nn.Sequential.forward(self, h)

    def forward(self, h, batch):
        logits = self.logits(h)
        return {"loss": F.cross_entropy(logits, batch.y), "logits": logits}


class MLAANHead(Head):
    """``probe`` on the module's output, ``classifier`` on the LAM's: heads returning their loss (base.py)."""

    def __init__(
        self,
        live: list[nn.Module],
        units: list[int],
        probe: Head,
        classifier: Head,
        cfg,
        span: int,
        entry: nn.Module | None = None,
    ):
        """``live``: the blocks to copy, in order (parameter-free resampling layers may sit between them);
        ``entry``: a resampling of h before the first copy and its EMA (None: h as it is)."""
        super().__init__()
        self.wx, self.wy, self.span, self.momentum = cfg.wx, cfg.wy, span, cfg.ema_momentum
        self.units = units  # backbone units copied; units[0] is the one the EMA follows
        self.probe = probe
        self.entry = nn.Identity() if entry is None else entry  # no parameters: state-dict keys as before
        self.first = copy.deepcopy(live[0])
        self.ema = _frozen(live[0])
        self.rest = nn.Sequential(*(copy.deepcopy(b) for b in live[1:]))
        self.classifier = classifier
        self.follow_ema = True
        self.pre_step = cfg.ema_timing == "pre_step"
        if self.pre_step:
            # The live block's parameters as the step that is running started from (at first: the copy's own
            # init, which is the live block's); saved with the head, so a resumed run refreshes from them.
            for name, p in self.ema.named_parameters():
                self.register_buffer(_started(name), p.detach().clone())

    def logits(self, h):
        return self.probe.logits(h)

    def forward(self, h, batch):
        probe = self.probe(h, batch)
        x = self.entry(h)
        cascade = self.classifier(self.rest(self.first(x) + self.ema(x)), batch)
        wx, wy = self.wx * probe["loss"], self.wy * cascade["loss"]
        return {
            "loss": wx + wy,
            "logits": probe["logits"],
            "probe": probe["loss"],
            "cascade": cascade["loss"],
            "terms": [(wx, 1), (wy, self.span)],
        }

    @torch.no_grad()
    def after_step(self, live_unit) -> None:
        if not self.follow_ema:
            return
        live = live_unit(self.units[0])
        if not self.pre_step:
            ema_update(self.ema, live, self.momentum)
            return
        # The released code refreshes inside the step, before optimizer.step(), from the weights that step began
        # with; refreshing now from those (kept since the last step) gives the same EMA to every later forward,
        # whatever the optimizer step order (per module, per batch) or where the live block lives (a pipeline's
        # copy of another stage's block).
        for (name, e), x in zip(self.ema.named_parameters(), live.parameters()):
            started = getattr(self, _started(name))
            e.mul_(self.momentum).add_(started, alpha=1 - self.momentum)
            started.copy_(x.detach().to(started.device))


def _started(name: str) -> str:
    """The buffer holding the step-start value of the EMA copy's parameter ``name``."""
    return "live_at_step_start_" + name.replace(".", "_")


@torch.no_grad()
def ema_update(ema: nn.Module, live: nn.Module, momentum: float) -> None:
    """``ema <- m ema + (1 - m) live`` for every floating parameter and buffer (BN statistics included); counters
    (BN's ``num_batches_tracked``) stay the copy's own."""
    for e, x in zip(ema.state_dict().values(), live.state_dict().values()):
        if e.dtype.is_floating_point:
            e.mul_(momentum).add_(x.to(e.device), alpha=1 - momentum)


@METHODS.register("mlaan")
class MLAAN(LocalMethod):
    name = "mlaan"
    cross_module = True
    Config = MLAANConfig

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.section = cfg  # the whole method section: a base method reads its own knobs from it
        self.base = None if self.cfg.base == "mlaan" else METHODS.get(self.cfg.base)(cfg, info)
        self.needs = self.base.needs if self.base is not None else ()

    def loss_spans(self, index):
        span = min(self.cfg.cascade_span, index + 1)
        if index == self.info.num_modules - 1:
            return (span,)
        return () if index < self.cfg.cascade_span - 1 else (1, span)

    def copied_units(self, index: int) -> list[int]:
        return lam_units(self.info.module_ends[index], self.info.backbone.positions, self.info.module_ends[:-1])

    def followed_units(self, index):
        k = self.info.num_modules
        if not self.loss_spans(index) or index == k - 1 or (self.cfg.ema_update == "last" and index != k - 2):
            return []
        return self.copied_units(index)[:1]

    def build_head(self, index):
        if not self.loss_spans(index):
            return None  # trained through the first cascade
        units = self.copied_units(index)
        probe, classifier = self.heads(index, unit_shapes(self.info)[units[-1]])
        entry, live = self.at_live_resolution(index, units)
        head = MLAANHead(live, units, probe, classifier, self.cfg, self.loss_spans(index)[-1], entry)
        head.follow_ema = bool(self.followed_units(index))
        return head

    def at_live_resolution(self, index: int, units: list[int]) -> tuple[nn.Module | None, list[nn.Module]]:
        """(entry, blocks): the live units to copy, each preceded by a max-pool to the resolution the live net
        feeds it at, where that is below the LAM's running one (VGG; never on ResNets or tokens)."""
        backbone, shapes = self.info.backbone, unit_shapes(self.info)
        if token_layout(self.info) is not None:
            return None, [backbone.units[u] for u in units]
        entry, live, size = None, [], shapes[self.info.module_ends[index]][1:]
        for u in units:
            seen = shapes[u - 1][1:]  # what unit u receives in the live net
            if seen[0] < size[0]:
                pool = nn.AdaptiveMaxPool2d(seen)
                if live:
                    live.append(pool)
                else:
                    entry = pool
            live.append(backbone.units[u])
            size = shapes[u][1:]
        return entry, live

    def heads(self, index: int, lam_shape: tuple[int, int, int]) -> tuple[Head, Head]:
        """The probe on module ``index``'s output and the head on its LAM's output (shape ``lam_shape``)."""
        if self.base is None:
            if token_layout(self.info) is not None:
                shapes = (self.info.module_shapes[index], lam_shape)
                return tuple(CrossEntropyHead(probe_net(self.info, s)) for s in shapes)
            width = self.info.module_shapes[index][0]
            return LinearProbe(width, self.info.num_classes), LinearProbe(lam_shape[0], self.info.num_classes)
        shapes = tuple(lam_shape if i == index else s for i, s in enumerate(self.info.module_shapes))
        on_lam = type(self.base)(self.section, replace(self.info, module_shapes=shapes))
        return self.base.build_head(index), on_lam.build_head(index)
