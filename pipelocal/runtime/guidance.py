"""When a batch is a guidance step (periodic global guidance, PGL; docs/methods.md#guidance-pgl)."""

from __future__ import annotations

from pipelocal.config import GuidanceConfig
from pipelocal.runtime.spans import Guide


def guide_for(cfg: GuidanceConfig, epoch: int, step: int, epochs: int = 1) -> Guide | None:
    """The guidance of global step ``step`` (0-based) in ``epoch`` of ``epochs``; None: a local step.

    - every step of the first ``warmup_epochs`` and of every ``every_epochs``-th epoch: plain end-to-end training;
    - else, until ``until_epoch``, the last ``burst`` steps of every period of ``every`` steps (one step: every
      ``every``-th), the period going linearly from ``every`` at the first epoch to ``every_end`` at the last.
    """
    end_to_end = Guide("replace", 1.0, cfg.recompute)
    if epoch < cfg.warmup_epochs or (cfg.every_epochs and (epoch + 1) % cfg.every_epochs == 0):
        return end_to_end
    if not cfg.every or (cfg.until_epoch is not None and epoch >= cfg.until_epoch):
        return None
    period = cfg.every
    if cfg.every_end is not None:
        period = round(cfg.every + (cfg.every_end - cfg.every) * epoch / max(epochs - 1, 1))
    return Guide(cfg.combine, cfg.weight, cfg.recompute) if step % period >= period - cfg.burst else None
