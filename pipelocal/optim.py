"""Per-module SGD optimizers and the learning-rate schedule of METHODS §4."""

from __future__ import annotations

import math

import torch

from pipelocal.config import OptimConfig


def build_optimizers(modules, cfg: OptimConfig) -> list[torch.optim.SGD]:
    """One SGD per local module (body + head). Same math as one optimizer: SGD is per parameter. Frozen
    parameters (MLAAN's EMA copies) are not in it."""
    return [
        torch.optim.SGD(
            [p for p in m.parameters() if p.requires_grad],
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
        for m in modules
    ]


def lr_at(epoch: float, cfg: OptimConfig, epochs: int) -> float:
    """Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_epochs``, then cosine to 0 at ``epochs``.

    ``epoch`` counts from 0 and may be fractional (``optim.per_step``). The cosine is
    ``0.5 * lr * (1 + cos(pi * t))`` with t the fraction of the post-warm-up epochs done.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * epoch / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(epochs - cfg.warmup_epochs, 1e-9)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min((epoch - cfg.warmup_epochs) / span, 1.0)))


def lr_for_step(cfg, epoch: int, step: int, steps: int) -> float:
    """The rate for ``step`` of ``steps`` in ``epoch``: fractional epochs with ``optim.per_step``, else per epoch."""
    return lr_at(epoch + (step / steps if cfg.optim.per_step else 0.0), cfg.optim, cfg.train.epochs)


def set_lr(optimizers, lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr
