"""Per-module optimizers (SGD, AdamW) and the learning-rate schedules of docs/methods.md#recipes."""

from __future__ import annotations

import math

import torch

from pipelocal.config import OptimConfig


def build_optimizers(modules, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """One optimizer per local module (body + head). Same math as one optimizer over all of them: SGD and AdamW
    are per parameter. Frozen parameters (MLAAN's EMA copies) are not in it."""

    def build(params):
        if cfg.name == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )

    return [build([p for p in m.parameters() if p.requires_grad]) for m in modules]


def lr_at(epoch: float, cfg: OptimConfig, epochs: int) -> float:
    """The rate at ``epoch`` (counted from 0; fractional with ``optim.per_step``) of ``epochs``.

    ``cosine`` and ``constant``: linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_epochs``, then
    ``0.5 * lr * (1 + cos(pi * t))`` with t the fraction of the post-warm-up epochs done (or ``lr``).
    ``cosine_blend``: the authors' code, see :func:`cosine_blend`.
    """
    if cfg.schedule == "cosine_blend":
        return cosine_blend(epoch, cfg, epochs)
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * epoch / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(epochs - cfg.warmup_epochs, 1e-9)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min((epoch - cfg.warmup_epochs) / span, 1.0)))


def cosine_blend(epoch: float, cfg: OptimConfig, epochs: int) -> float:
    """The released InfoPro/AugLocal/MLAAN code's schedule: one cosine over all epochs, the warm-up blended in.

    With e = epoch + 1 (1..E), W = ``warmup_epochs``, c(e) = ``0.5 * lr * (1 + cos(pi * e / E))``:
    ``c(e) * (e - 1) / W + warmup_lr * (W + 1 - e) / W`` for e <= W, else c(e) (W = 10, warmup_lr = 0.01 is
    their code). Both pieces agree at e = W + 1, so fractional epochs (``per_step``) interpolate smoothly and
    match the per-epoch rate at each epoch's start. As in their code, the last epoch (e = E) runs at 0.
    """
    e = min(epoch + 1, epochs)
    cosine = 0.5 * cfg.lr * (1 + math.cos(math.pi * e / epochs))
    if e > cfg.warmup_epochs:
        return cosine
    return cosine * (e - 1) / cfg.warmup_epochs + cfg.warmup_lr * (cfg.warmup_epochs + 1 - e) / cfg.warmup_epochs


def lr_for_step(cfg, epoch: int, step: int, steps: int) -> float:
    """The rate for ``step`` of ``steps`` in ``epoch``: fractional epochs with ``optim.per_step``, else per epoch."""
    return lr_at(epoch + (step / steps if cfg.optim.per_step else 0.0), cfg.optim, cfg.train.epochs)


def set_lr(optimizers, lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr
