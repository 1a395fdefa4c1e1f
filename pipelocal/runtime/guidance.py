"""When a batch is a guidance step (periodic global guidance, PGL; METHODS §3)."""

from __future__ import annotations

from pipelocal.config import GuidanceConfig
from pipelocal.runtime.step import Guide


def guide_for(cfg: GuidanceConfig, epoch: int, step: int) -> Guide | None:
    """The guidance of global step ``step`` (0-based) in ``epoch``: every step during ``warmup_epochs``
    (plain end-to-end training), then every ``every``-th step until ``until_epoch``; None: a local step."""
    if epoch < cfg.warmup_epochs:
        return Guide("replace", 1.0, cfg.recompute)
    if not cfg.every or (cfg.until_epoch is not None and epoch >= cfg.until_epoch):
        return None
    return Guide(cfg.combine, cfg.weight, cfg.recompute) if (step + 1) % cfg.every == 0 else None
