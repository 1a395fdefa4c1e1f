"""Evaluation: test top-1 counted the same way by every strategy (local stages, DDP, GPipe, 1F1B) and by export.

:func:`count_correct` is the one routine. It puts the modules in eval mode, walks the batches under no_grad,
lets the caller's ``score`` add each batch's correct predictions to a per-head counter on the device, and puts
the modules back in train mode, even when a batch raises. Where a batch comes from (a loader, the previous
stage's link, a padded microbatch schedule) and what happens to the counter after (an all-reduce over DDP's
replicas) stay with the strategy; how a batch is scored through local modules is :func:`score_heads`, which
runs under the stage's numerics (precision, channels_last), as training does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from pipelocal.runtime.numerics import FP32, Numerics


@torch.no_grad()
def count_correct(
    modules: Sequence[nn.Module], batches: Iterable, score: Callable, heads: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """Correct predictions per head (on ``device``, -1 where a head gives no class scores) and samples counted.

    ``score(batch, correct)`` adds the batch's correct predictions to ``correct`` and returns how many samples
    of the batch count (a padded batch counts its real rows only). The counter is read on the host by the
    caller, once, at the end: a read per batch would be a device sync per batch."""
    for m in modules:
        m.train(False)
    correct = torch.zeros(heads, dtype=torch.long, device=device)
    samples = 0
    try:
        for batch in batches:
            samples += score(batch, correct)
    finally:
        for m in modules:
            m.train(True)
    return correct, samples


def score_heads(modules, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, numerics: Numerics = FP32):
    """Forward ``modules`` on ``x``; add each head's correct predictions to ``correct`` (-1: no logits). Returns
    the last module's output (what a stage sends on)."""
    x = numerics.layout(x)
    for i, module in enumerate(modules):
        numerics.dynamic_rows(x)
        with numerics.autocast():
            x = numerics.boundary(module(x))
            logits = module.head.logits(x) if module.head is not None else None
        if logits is None:  # known on the host: a module without logits never has them (no device read here)
            correct[i] = -1
        else:
            correct[i] += (logits.argmax(1) == y).sum()
    return x
