"""One batch through a run of local modules: forward, losses, backward, optimizer steps.

Sequential mode runs it over all K modules; a pipeline stage runs it over its own modules and passes
``on_output`` to send its activation downstream as soon as it exists, before any backward of the last
module (DESIGN §4).

Every loss term has a *span*: how many modules it trains, ending at its own. A span-1 loss (greedy, dgl,
infopro, auglocal, MLAAN's probe) backpropagates into its module only: the module's input is detached.
A longer one (MLAAN's cascade, the final loss of e2e or of a guidance step) needs the gradient with respect
to its module's input, which goes back to the module before as the gradient of that module's output, and
so on until the span is used up (DESIGN §5). A module's graph is therefore kept until the last gradient
that will reach it has gone through, and no module is ever recomputed. Each distinct span is its own
backward pass, so a gradient never travels further than its loss's span.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from pipelocal.data import Batch
from pipelocal.metrics.memory import SavedTensorMeter


@dataclass(frozen=True)
class Guide:
    """This batch is a guidance step (PGL): the final loss trains every module, no detach."""

    combine: str = "replace"  # replace: only the end-to-end gradient; add: local + weight * end-to-end
    weight: float = 1.0


@dataclass
class StepResult:
    output: torch.Tensor  # the last module's output, detached
    losses: list[torch.Tensor]  # one detached scalar per head that ran (no host sync here)
    saved_peak: list[int] = field(default_factory=list)  # live saved bytes seen while each module ran
    upstream: list[tuple[torch.Tensor, int]] = field(default_factory=list)  # (grad of the input, span left)
    guided: bool = False


def term_spans(module, guide: Guide | None) -> tuple[int, ...]:
    """Spans of the loss terms ``module`` backpropagates on this batch."""
    if guide is None:
        return module.spans
    if not module.is_final:
        return () if guide.combine == "replace" else module.spans
    end_to_end = (module.index + 1,)
    return end_to_end if guide.combine == "replace" else module.spans + end_to_end


def local_step(
    modules,
    x: torch.Tensor,
    batch: Batch,
    optimizers: list[torch.optim.Optimizer],
    per_module: bool,
    meter: SavedTensorMeter | None = None,
    forward_first: bool = False,
    on_output: Callable[[torch.Tensor], None] | None = None,
    guide: Guide | None = None,
) -> StepResult:
    """Train ``modules`` (consecutive) on one batch whose input to the first of them is ``x``.

    ``forward_first``: run every module's forward before any backward (the output is sent sooner;
    all graphs of the run are alive at once). Otherwise each module's backward runs before the next
    module's forward (one graph alive at a time, unless a longer span keeps it). The math is the same.
    """
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    spans = [term_spans(m, guide) for m in modules]
    graphs = _Graphs(modules, spans, optimizers, per_module)
    losses, peaks, deferred = [], [], []
    last = len(modules) - 1
    for j, module in enumerate(modules):
        x = x.detach().requires_grad_(graphs.needs_input_grad(j))
        if meter:
            meter.reset_peak()
        with meter.hooks() if meter else nullcontext():
            h = module(x)
            if j == last and on_output is not None:
                on_output(h.detach())
            groups = _loss_groups(module, h, batch, guide, spans[j], losses)
        graphs.keep(j, x, h)
        if forward_first and j != last:
            deferred.append((j, groups))
        else:
            graphs.run(j, groups)
        peaks.append(meter.peak if meter else 0)
        x = h
    for j, groups in deferred:
        graphs.run(j, groups)
    if not per_module:
        for opt in optimizers:
            opt.step()
    return StepResult(x.detach(), losses, peaks, graphs.upstream, guide is not None)


def _loss_groups(module, h, batch, guide, spans, losses) -> dict[int, torch.Tensor]:
    """Run the head (if this batch needs it) and sum its loss terms by span."""
    if not spans:
        return {}
    out = module.head(h, batch)
    losses.append(out["loss"].detach())
    terms = out.get("terms") or ([(out["loss"], module.spans[0])] if module.spans else [])
    if guide is not None and module.is_final:
        terms = [] if guide.combine == "replace" else list(terms)
        terms.append((guide.weight * out["loss"], module.index + 1))
    elif guide is not None and guide.combine == "replace":
        terms = []
    groups: dict[int, torch.Tensor] = {}
    for loss, span in terms:
        groups[span] = groups[span] + loss if span in groups else loss
    return dict(sorted(groups.items()))


class _Graphs:
    """The graphs of one batch's modules, each kept until the last gradient that reaches it has gone through."""

    def __init__(self, modules, spans, optimizers, per_module):
        self.optimizers, self.per_module = optimizers, per_module
        self.params = [[p for p in m.parameters() if p.requires_grad] for m in modules]
        self.first_index = modules[0].index
        n = len(modules)
        # uses[j]: backward passes through module j's graph: its own span groups, then one per gradient from
        # a later module whose span reaches it. reach[j]: some gradient must leave module j through its input.
        self.uses = [len(set(spans[j])) for j in range(n)]
        self.reach = [False] * n
        for o in range(n):
            for s in set(spans[o]):
                for j in range(max(o - s + 1, 0), o + 1):
                    self.uses[j] += j < o
                    self.reach[j] |= j > o - s + 1  # the span goes on before module j
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.upstream: list[tuple[torch.Tensor, int]] = []

    def needs_input_grad(self, j: int) -> bool:
        return self.reach[j] and (j > 0 or self.first_index > 0)

    def keep(self, j: int, x: torch.Tensor, h: torch.Tensor) -> None:
        self.kept[j] = (x, h)

    def run(self, j: int, groups: dict[int, torch.Tensor]) -> None:
        if not groups and not self.uses[j]:
            self._done(j)  # no loss and no gradient reaches it on this batch
        for span, loss in groups.items():
            self._backward(j, loss, None, span)

    def _backward(self, j: int, tensor: torch.Tensor, grad: torch.Tensor | None, span_left: int) -> None:
        x, _ = self.kept[j]
        self.uses[j] -= 1
        go_on = span_left > 1 and x.requires_grad
        inputs = (self.params[j] + [x] if go_on else self.params[j]) if x.requires_grad else None
        torch.autograd.backward(tensor, grad, retain_graph=self.uses[j] > 0, inputs=inputs)
        if not self.uses[j]:
            self._done(j)
        if go_on:
            g, x.grad = x.grad, None
            if j == 0:
                self.upstream.append((g, span_left - 1))  # leaves this run of modules (a stage boundary)
            else:
                self._backward(j - 1, self.kept[j - 1][1], g, span_left - 1)

    def _done(self, j: int) -> None:
        self.kept.pop(j, None)
        if self.per_module:
            self.optimizers[j].step()


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
