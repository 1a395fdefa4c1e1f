"""MLAAN's update as the released code orders it, in plain autograd: the reference for ``ema_timing``.

Per batch: each module's losses (``wx`` x probe CE on its output, ``wy`` x CE on the leap augmented module's output,
``first(x) + ema(x)`` through the later copies), each recomputed over its span from the detached input of the span's
first module; then the EMA refresh; then a plain SGD step (no momentum, no decay). ``pre_step`` (the released code)
refreshes the EMA before the SGD step from the weights the step began with, parameters only; ``post_step`` after it,
from the new weights, BN statistics averaged too. Only nn.Modules of the net are borrowed (their weights), never its
forward logic: heads are taken apart into probe, entry, first, ema, rest and classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _losses(module, h, y) -> list[tuple[torch.Tensor, int]]:
    """The (loss, span) terms of ``module``'s head on its output ``h``: MLAAN's equation, written out."""
    head = module.head
    if not hasattr(head, "ema"):  # the final module: CE of its classifier, the last cascade
        return [(F.cross_entropy(head.logits(h), y), module.spans[0])]
    x = head.entry(h)
    lam = head.rest(head.first(x) + head.ema(x))
    probe = head.wx * F.cross_entropy(head.probe.logits(h), y)
    return [(probe, 1), (head.wy * F.cross_entropy(head.classifier.logits(lam), y), head.span)]


def gradients(net, x: torch.Tensor, y: torch.Tensor) -> None:
    """Every parameter's ``.grad``: the sum of the losses, each recomputed over its span from a detached input."""
    net.zero_grad(set_to_none=True)
    inputs = [x]
    with torch.no_grad():
        for module in net.local_modules:
            inputs.append(module.body(inputs[-1]))
    for i, module in enumerate(net.local_modules):
        if module.head is None:
            continue
        for k, span in enumerate(module.spans):
            h = inputs[i - span + 1]
            for m in net.local_modules[i - span + 1 : i + 1]:
                h = m.body(h)
            _losses(module, h, y)[k][0].backward()


@torch.no_grad()
def _refresh(net, heads, momentum: float, buffers: bool) -> None:
    for head in heads:
        live = net.unit(head.units[0])
        pairs = list(zip(head.ema.parameters(), live.parameters()))
        if buffers:
            pairs += [(e, b) for e, b in zip(head.ema.buffers(), live.buffers()) if e.dtype.is_floating_point]
        for e, w in pairs:
            e.mul_(momentum).add_(w, alpha=1 - momentum)


def step(net, x, y, lr: float, followers: list, momentum: float, timing: str) -> None:
    """One MLAAN step of plain SGD; ``followers``: the heads whose EMA copies are refreshed."""
    gradients(net, x, y)
    if timing == "pre_step":
        _refresh(net, followers, momentum, buffers=False)
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p.sub_(lr * p.grad)
    if timing == "post_step":
        _refresh(net, followers, momentum, buffers=True)
