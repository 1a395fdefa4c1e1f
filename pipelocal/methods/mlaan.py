"""mlaan: an independent probe plus a cascade loss through a leap augmented module (MLAAN, AAAI 2025).

Module i >= 1 has two losses (METHODS §3):

- ``wx`` x CE of a probe (avg pool -> linear) on its output: trains module i only;
- ``wy`` x CE of the leap augmented module (LAM) on its output: copies of later backbone blocks, where the
  first copied block's output is the sum of a trainable copy and a frozen EMA copy of the live block
  (``ema <- m ema + (1 - m) live`` after every step). Its gradient trains modules i-1 and i
  (``cascade_span`` = 2; 3 reaches i-2 too): the head returns it as a term of that span.

Module 0 (the stem) has no loss of its own; module 1's cascade trains it. The final module's classifier
loss is the last cascade (it trains the final module and the one before). Unlike the released CIFAR code we
refresh every EMA copy (``ema_update: all``; ``last`` keeps the quirk) and drop no computed loss. No module is
re-run: the step keeps module i-1's graph until module i's cascade gradient has flowed back through it,
which is the same gradient as the paper's recomputation and the mechanism a pipeline uses across stages.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelocal.methods.base import METHODS, Head, LocalMethod, unit_shapes
from pipelocal.models import init_weights
from pipelocal.options import ConfigError, option

# Where the authors' R-32 table (5 blocks per stage) departs from the rule: position -> copied positions.
PUBLISHED_LAM = {5: {(3, 0): [(3, 1), (3, 2), (3, 4)]}}


@dataclass
class MLAANConfig:
    """MLAAN's knobs, set as ``method.<key>``."""

    wx: float = option(0.001, "weight of the independent probe (avg pool -> linear) on each module")
    wy: float = option(0.999, "weight of the cascade loss through the leap augmented module")
    cascade_span: int = option(2, "modules a cascade loss trains, ending at its own (2, or 3 as in DGL/InfoPro+)")
    ema_momentum: float = option(0.995, "m in ema <- m*ema + (1-m)*live for the LAM's frozen copy")
    ema_sync_every: int = option(
        1, "in a pipeline, stages that own the blocks the EMA copies follow send their weights every N steps"
    )
    ema_update: str = option(
        "all", "refresh every aux net's EMA copy, or only the last one (the released code's quirk)", ("all", "last")
    )

    def validate(self) -> None:
        if self.cascade_span not in (2, 3):
            raise ConfigError(f"method.cascade_span={self.cascade_span}: MLAAN cascades span 2 or 3 modules")
        if self.ema_sync_every < 1:  # the pipeline sends the EMA's weights when step % ema_sync_every == 0
            raise ConfigError(f"method.ema_sync_every={self.ema_sync_every} must be at least 1 (1: every step)")


def lam_units(after: int, positions: list[tuple[int, int]]) -> list[int]:
    """Units the LAM after unit ``after`` copies: the next stage's transition block first (the next block in
    the last stage), then each later stage's transition block, then the final stage's last blocks, up to 4
    blocks (3 in the last stage); it always ends at the last block."""
    n = len(positions)
    stage = positions[after][0]
    last_stage = positions[-1][0]
    published = PUBLISHED_LAM.get(positions[-1][1] + 1, {}).get(positions[after])
    if published is not None:
        return [positions.index(p) for p in published]
    if stage < last_stage:
        chain = [positions.index((t, 0)) for t in range(stage + 1, last_stage + 1)]
        depth = 4
    else:
        chain = [after + 1]
        depth = 3
    depth = min(depth, n - 1 - after)
    chain = chain[: max(depth - 1, 1)]
    fill = [u for u in range(chain[-1] + 1, n)][-(depth - len(chain)) :] if depth > len(chain) else []
    units = chain + fill
    if units[-1] != n - 1:
        units[-1] = n - 1
    return units


def _frozen(block: nn.Module) -> nn.Module:
    ema = copy.deepcopy(block)
    for p in ema.parameters():
        p.requires_grad_(False)
    for m in ema.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0  # running statistics move only with the EMA, never with its own forwards
    return ema


class MLAANHead(Head):
    def __init__(self, live: list[nn.Module], units: list[int], widths: tuple[int, int], num_classes: int, cfg, span):
        super().__init__()
        self.wx, self.wy, self.span, self.momentum = cfg.wx, cfg.wy, span, cfg.ema_momentum
        self.units = units  # backbone units copied; units[0] is the one the EMA follows
        width, out_width = widths  # of the module's output and of the last copied block
        self.probe = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
        self.first = copy.deepcopy(live[0])
        self.ema = _frozen(live[0])
        self.rest = nn.Sequential(*(copy.deepcopy(b) for b in live[1:]))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(out_width, num_classes))
        init_weights(self.probe)
        init_weights(self.classifier)
        self.follow_ema = True

    def logits(self, h):
        return self.probe(h)

    def forward(self, h, batch):
        probe_logits = self.probe(h)
        probe = F.cross_entropy(probe_logits, batch.y)
        cascade = F.cross_entropy(self.classifier(self.rest(self.first(h) + self.ema(h))), batch.y)
        return {
            "loss": self.wx * probe + self.wy * cascade,
            "logits": probe_logits,
            "probe": probe,
            "cascade": cascade,
            "terms": [(self.wx * probe, 1), (self.wy * cascade, self.span)],
        }

    @torch.no_grad()
    def after_step(self, live_unit) -> None:
        if self.follow_ema:
            ema_update(self.ema, live_unit(self.units[0]), self.momentum)


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

    def loss_spans(self, index):
        if index == 0:
            return ()
        span = min(self.cfg.cascade_span, index + 1)
        return (span,) if index == self.info.num_modules - 1 else (1, span)

    def followed_units(self, index):
        k = self.info.num_modules
        if index == 0 or index == k - 1 or (self.cfg.ema_update == "last" and index != k - 2):
            return []
        return lam_units(self.info.module_ends[index], self.info.backbone.positions)[:1]

    def build_head(self, index):
        if index == 0:
            return None  # the stem and module 0 learn through module 1's cascade
        backbone = self.info.backbone
        units = lam_units(self.info.module_ends[index], backbone.positions)
        head = MLAANHead(
            [backbone.units[u] for u in units],
            units,
            (self.info.module_shapes[index][0], unit_shapes(self.info)[units[-1]][0]),
            self.info.num_classes,
            self.cfg,
            self.loss_spans(index)[-1],
        )
        head.follow_ema = bool(self.followed_units(index))
        return head
