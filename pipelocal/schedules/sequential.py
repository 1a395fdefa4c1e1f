"""Sequential mode (the papers' protocol) on one device; with method e2e it is plain backprop.

Per batch, module by module: forward on the detached output of the one before, its local loss, its
backward at once (so one module's graph is alive at a time), then the next module.
"""

from __future__ import annotations

import torch

from pipelocal.data import Batch
from pipelocal.metrics.memory import SavedTensorMeter
from pipelocal.runtime import LocalNet
from pipelocal.runtime.step import Guide, StepResult, eval_step, local_step


def train_step(
    net: LocalNet,
    batch: Batch,
    optimizers: list[torch.optim.Optimizer],
    per_module: bool,
    meter: SavedTensorMeter | None = None,
    guide: Guide | None = None,
) -> StepResult:
    """One batch through every module; ``per_module`` steps each optimizer right after its last backward
    (DGL); ``guide`` makes it a guidance step. Heads that follow other units (MLAAN's EMA) update after."""
    result = local_step(net.local_modules, batch.x, batch, optimizers, per_module, meter, guide=guide)
    for module in net.local_modules:
        if module.head is not None:
            module.head.after_step(net.unit)
    return result


@torch.no_grad()
def evaluate(net: LocalNet, loader) -> dict:
    """Top-1 of the final classifier and of every aux head that gives class scores (layer-wise probes)."""
    was_training = net.training
    net.eval()
    correct, total = None, 0
    for batch in loader:
        if correct is None:
            correct = torch.zeros(net.num_modules, dtype=torch.long, device=batch.y.device)
        eval_step(net.local_modules, batch.x, batch.y, correct)
        total += len(batch)
    net.train(was_training)
    return accuracies(correct.tolist(), total)


def accuracies(correct: list[int], total: int) -> dict:
    """Per-module top-1 from correct counts (None where a head gives no class scores)."""
    module_top1 = [c / max(total, 1) if c >= 0 else None for c in correct]
    return {"top1": module_top1[-1], "module_top1": module_top1, "samples": total}
