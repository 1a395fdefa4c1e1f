"""Greedy, DGL and InfoPro with periodic global guidance, in plain autograd: the reference for invariants 1, 2 and 6.

Per batch, from the papers' equations: module i's output h_i = f_i(h_{i-1}) (one forward per module, so BatchNorm
statistics move once, as in a real step); its local loss trains f_i and its head only (the gradient is taken with
respect to those parameters alone, which is what detaching its input means); the last module's loss is the
backbone classifier's cross-entropy. On a guidance step the final loss trains every body and the classifier, end to
end: ``replace`` uses weight x that gradient alone (aux heads are not run), ``add`` adds it to the local gradients
(the last module gets its CE twice); async, the modules on stages before the last get that end-to-end part, taken
at the guidance step's weights (weight stashing), as an SGD step of its own a stated number of steps later. Then one
SGD step (momentum, Nesterov, weight decay as torch's SGD defines
them, written out) at the step's rate. Only nn.Modules of the net are borrowed (their weights and torch's layer
forwards), never a head's forward: greedy's and DGL's heads are an ``nn.Sequential`` ``net``; InfoPro's a
``decoder`` (upsampled first, here) and a ``task`` net, its λs interpolated here from the configured four.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def infopro_lambdas(lambdas: list[float], index: int, num_modules: int) -> tuple[float, float]:
    """(λ1, λ2) of module ``index``: the first module's pair moving linearly to module K-2's (InfoPro's schedule)."""
    ratio = index / (num_modules - 2) if num_modules > 2 else 0.0
    first_rec, first_task, last_rec, last_task = lambdas
    return first_rec + (last_rec - first_rec) * ratio, first_task + (last_task - first_task) * ratio


def cosine_lr(lr: float, epoch: int, step: int, steps: int, epochs: int) -> float:
    """Cosine annealing over the run, updated every step (no warm-up): 0.5 lr (1 + cos(pi t / epochs))."""
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch + step / steps) / epochs))


def guide_at(g, epoch: int, step: int, epochs: int) -> tuple[str, float] | None:
    """PGL's schedule (docs/methods.md#guidance-pgl) at global ``step`` (0-based, counted across epochs) of
    ``epoch``: (combine, weight) on a guidance step, None on a local one. ``g`` has the guidance section's knobs.
    Warm-up epochs and every ``every_epochs``-th epoch are plain end-to-end training; otherwise, before
    ``until_epoch``, the last ``burst`` steps of every period, the period moving linearly from ``every`` at the
    first epoch to ``every_end`` at the last."""
    if epoch < g.warmup_epochs or (g.every_epochs and (epoch + 1) % g.every_epochs == 0):
        return ("replace", 1.0)
    if not g.every or (g.until_epoch is not None and epoch >= g.until_epoch):
        return None
    end = g.every if g.every_end is None else g.every_end
    period = round(g.every + (end - g.every) * epoch / max(epochs - 1, 1))
    return (g.combine, g.weight) if step % period >= period - g.burst else None


@dataclass
class Reference:
    """The reference's training state around a LocalNet's modules (borrowed for their weights)."""

    net: torch.nn.Module
    method: str  # greedy, dgl or infopro
    lambdas: list[float] | None = None  # InfoPro's (λ1 first, λ2 first, λ1 last, λ2 last)
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    buffers: dict = field(default_factory=dict)  # momentum buffers by parameter
    # Async guidance: the first ``late_modules`` (those on stages before the last) get a guidance step's end-to-end
    # gradient, computed at that step's weights, as one more SGD step of its own at the start of the step ``delay``
    # steps after the next (or at the epoch's end, ``drain``); their local part is applied at once.
    late_modules: int = 0
    delay: int = 0
    pending: list = field(default_factory=list)  # (the step it is due at, its gradients)
    t: int = 0  # steps taken

    def local_loss(self, module, h: torch.Tensor, batch) -> torch.Tensor:
        """Module ``module``'s own loss on its output ``h``: CE of its aux net (greedy, DGL, the final classifier)
        or InfoPro's λ1 BCE(sigmoid(decoder(h)), raw) + λ2 CE(task(h))."""
        head = module.head
        if self.method != "infopro" or module.is_final:
            return F.cross_entropy(head.net(h), batch.y)
        rec_weight, task_weight = infopro_lambdas(self.lambdas, module.index, len(self.net.local_modules))
        loss = h.new_zeros(())
        if rec_weight:
            up = F.interpolate(h, size=batch.raw.shape[-2:], mode="bilinear", align_corners=True)
            for layer in head.decoder:
                up = layer(up)
            loss = loss + rec_weight * F.binary_cross_entropy(torch.sigmoid(up), batch.raw)
        if task_weight:
            loss = loss + task_weight * F.cross_entropy(head.task(h), batch.y)
        return loss

    def gradients(self, batch, guide: tuple[str, float] | None = None) -> tuple[dict, dict]:
        """Each trained parameter's gradient on ``batch``; ``guide``: (combine, weight) on a guidance step. Two
        parts: what is applied now, and the end-to-end gradient of the late modules' parameters (async)."""
        modules = list(self.net.local_modules)
        now: dict = {}
        later: dict = {}
        late = {p for m in modules[: self.late_modules] for p in m.parameters()}

        def add(loss, params, async_late=False):
            params = [p for p in params if p.requires_grad]
            for p, g in zip(params, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)):
                into = later if async_late and p in late else now
                if g is not None:
                    into[p] = into[p] + g if p in into else g

        hs, h = [], batch.x
        for module in modules:
            h = module.body(h)
            hs.append(h)
        if guide is None or guide[0] == "add":
            for module, h in zip(modules, hs):
                add(self.local_loss(module, h, batch), module.parameters())
        if guide is not None:
            combine, weight = guide
            final = weight * F.cross_entropy(modules[-1].head.net(hs[-1]), batch.y)
            params = [p for m in modules for p in m.body.parameters()] + list(modules[-1].head.parameters())
            add(final, params, async_late=True)
        return now, later

    @torch.no_grad()
    def sgd(self, grads: dict, lr: float) -> None:
        """torch's SGD: d = g + wd p; b = m b + d (b = d at first); p -= lr (d + m b if Nesterov else b)."""
        for p, g in grads.items():
            d = g + self.weight_decay * p if self.weight_decay else g
            if self.momentum:
                b = self.buffers.get(p)
                b = d.clone() if b is None else b.mul_(self.momentum).add_(d)
                self.buffers[p] = b
                d = d + self.momentum * b if self.nesterov else b
            p.sub_(lr * d)

    def step(self, batch, lr: float, guide: tuple[str, float] | None = None) -> None:
        """One training step at rate ``lr``: late gradients due now first (async), then this batch's."""
        while self.pending and self.pending[0][0] <= self.t:
            self.sgd(self.pending.pop(0)[1], lr)
        now, later = self.gradients(batch, guide)
        self.sgd(now, lr)
        if later:
            self.pending.append((self.t + self.delay + 1, later))
        self.t += 1

    def drain(self, lr: float) -> None:
        """The epoch's end: every late gradient still pending is applied, oldest first."""
        while self.pending:
            self.sgd(self.pending.pop(0)[1], lr)


@torch.no_grad()
def top1(modules, batches, samples: int) -> list[float | None]:
    """Each module's test top-1, scored here: body forward in eval mode, the head's class scores, argmax against the
    label, over ``samples`` (None for a head without class scores). The reference for evaluation counts; it shares
    nothing with pipelocal.runtime.evaluation."""
    for m in modules:
        m.eval()
    correct: list[int | None] = [0] * len(modules)
    for batch in batches:
        h = batch.x
        for i, m in enumerate(modules):
            h = m.body(h)
            logits = m.head.logits(h) if m.head is not None else None
            correct[i] = None if logits is None else correct[i] + int((logits.argmax(1) == batch.y).sum())
    return [None if c is None else c / samples for c in correct]
