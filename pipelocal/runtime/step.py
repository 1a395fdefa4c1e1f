"""One batch through a run of local modules: forward, local losses, backward, optimizer steps.

Sequential mode runs it over all K modules; a pipeline stage runs it over its own modules and passes
``on_output`` to send its activation downstream as soon as it exists, before any backward of the last
module (DESIGN §4). A module without a head (e2e) hands its output on *with* its graph, so the next
loss spans it too; every other output is detached.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from pipelocal.data import Batch
from pipelocal.metrics.memory import SavedTensorMeter


@dataclass
class StepResult:
    output: torch.Tensor  # the last module's output, detached
    losses: list[torch.Tensor]  # one detached scalar per module with a loss (no host sync here)
    saved_peak: list[int] = field(default_factory=list)  # live saved bytes seen while each module ran


def local_step(
    modules,
    x: torch.Tensor,
    batch: Batch,
    optimizers: list[torch.optim.Optimizer],
    per_module: bool,
    meter: SavedTensorMeter | None = None,
    forward_first: bool = False,
    on_output: Callable[[torch.Tensor], None] | None = None,
) -> StepResult:
    """Train ``modules`` (consecutive) on one batch whose input to the first of them is ``x``.

    ``forward_first``: run every module's forward before any backward (the output is sent sooner;
    all graphs of the run are alive at once). Otherwise each module's backward runs before the next
    module's forward (one graph alive at a time). The math is the same either way.
    """
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    losses, peaks = [], []
    deferred: list[tuple[torch.Tensor, list[int]]] = []  # (loss, modules it completes), forward_first only
    pending: list[int] = []  # modules whose gradient the next loss completes
    last = len(modules) - 1
    for i, module in enumerate(modules):
        pending.append(i)
        if meter:
            meter.reset_peak()
        with meter.hooks() if meter else nullcontext():
            h = module(x)
            if i == last and on_output is not None:
                on_output(h.detach())
            out = module.head(h, batch) if module.head is not None else None
        if out is None:
            x = h  # no local loss: keep the graph, a later loss trains this module
            peaks.append(meter.peak if meter else 0)
            continue
        losses.append(out["loss"].detach())
        if forward_first and i != last:
            deferred.append((out["loss"], pending[:]))
        else:
            _backward(out["loss"], pending, optimizers, per_module)
        peaks.append(meter.peak if meter else 0)
        pending = []
        x = h.detach()
    for loss, owners in deferred:
        _backward(loss, owners, optimizers, per_module)
    if not per_module:
        for opt in optimizers:
            opt.step()
    return StepResult(x.detach(), losses, peaks)


def _backward(loss: torch.Tensor, owners: list[int], optimizers, per_module: bool) -> None:
    loss.backward()
    if per_module:
        for j in owners:
            optimizers[j].step()


@torch.no_grad()
def eval_step(modules, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Forward ``modules`` on ``x``; add each head's correct predictions to ``correct`` (-1: no logits).

    ``correct`` stays on the device: reading it per batch would be a host sync per batch.
    """
    for i, module in enumerate(modules):
        x = module(x)
        logits = module.head.logits(x) if module.head is not None else None
        if logits is None:
            correct[i] = -1
        elif correct[i] >= 0:
            correct[i] += (logits.argmax(1) == y).sum()
    return x
