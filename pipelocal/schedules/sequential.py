"""Sequential mode (the papers' protocol) on one device; with method e2e it is plain backprop.

Per batch, module by module: forward on the detached output of the one before, its local loss, its
backward at once (so one module's graph is alive at a time), then the next module. A module without a
head (e2e) hands its output on *with* its graph, so the next loss spans it too.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from pipelocal.data import Batch
from pipelocal.metrics.memory import SavedTensorMeter
from pipelocal.runtime import LocalNet


@dataclass
class StepResult:
    losses: list[torch.Tensor]  # one detached scalar per module that has a loss (no host sync here)
    saved_peak: list[int] = field(default_factory=list)  # live saved bytes seen while each module ran


def train_step(
    net: LocalNet,
    batch: Batch,
    optimizers: list[torch.optim.Optimizer],
    per_module: bool,
    meter: SavedTensorMeter | None = None,
) -> StepResult:
    """One batch through every module; ``per_module`` steps each optimizer right after its backward (DGL)."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    result = StepResult(losses=[])
    x = batch.x
    pending: list[int] = []  # modules whose gradient the next loss completes
    for i, module in enumerate(net.local_modules):
        pending.append(i)
        if meter:
            meter.reset_peak()
        with meter.hooks() if meter else nullcontext():
            h = module(x)
            out = module.head(h, batch) if module.head is not None else None
        if out is None:
            x = h  # no local loss: keep the graph, a later loss trains this module
            if meter:
                result.saved_peak.append(meter.peak)
            continue
        out["loss"].backward()
        if meter:
            result.saved_peak.append(meter.peak)
        result.losses.append(out["loss"].detach())
        if per_module:
            for j in pending:
                optimizers[j].step()
            pending.clear()
        x = h.detach()
    if not per_module:
        for opt in optimizers:
            opt.step()
    return result


@torch.no_grad()
def evaluate(net: LocalNet, loader) -> dict:
    """Top-1 of the final classifier and of every aux head that gives class scores (layer-wise probes)."""
    was_training = net.training
    net.eval()
    correct = None  # kept on the device: a .item() per batch would be a host sync per batch
    has_logits = [True] * net.num_modules
    total = 0
    for batch in loader:
        if correct is None:
            correct = torch.zeros(net.num_modules, dtype=torch.long, device=batch.y.device)
        x = batch.x
        for i, module in enumerate(net.local_modules):
            x = module(x)
            logits = module.head.logits(x) if module.head is not None else None
            if logits is None:
                has_logits[i] = False
                continue
            correct[i] += (logits.argmax(1) == batch.y).sum()
        total += len(batch)
    net.train(was_training)
    counts = correct.tolist() if correct is not None else [0] * net.num_modules
    accs = [c / max(total, 1) if ok else None for c, ok in zip(counts, has_logits)]
    return {"top1": accs[-1], "module_top1": accs, "samples": total}
