"""One batch through a run of local modules: forward, losses, backward, optimizer steps.

Sequential mode runs it over all K modules; a pipeline stage runs it over its own modules and passes
``on_output`` to send its activation downstream as soon as it exists, before any backward of the last
module (docs/pipeline.md#a-stages-step).

Every loss term has a *span*: how many modules it trains, ending at its own. A span-1 loss (greedy, dgl,
infopro, auglocal, MLAAN's probe) backpropagates into its module only: the module's input is detached.
A longer one (MLAAN's cascade, the final loss of e2e or of a guidance step) needs the gradient with respect
to its module's input, which goes back to the module before as the gradient of that module's output, and
so on until the span is used up (docs/design.md#spans). A module's graph is therefore kept until the last
gradient that will reach it has gone through, and no module is ever recomputed. Each distinct span is its own
backward pass, so a gradient never travels further than its loss's span. Which spans a batch has, which
gradients cross a stage boundary and how long each graph lives is planned in runtime/spans.py; this file runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from torch.nn.modules.batchnorm import _BatchNorm

from pipelocal.data import Batch
from pipelocal.metrics.memory import SavedTensorMeter
from pipelocal.metrics.timeline import TIMELINE
from pipelocal.runtime.numerics import FP32, Numerics
from pipelocal.runtime.spans import Guide, SpanPlan, guided_spans, loss_groups


@dataclass
class StepResult:
    output: torch.Tensor  # the last module's output, detached
    losses: list[torch.Tensor]  # one detached scalar per head that ran (no host sync here)
    saved_peak: list[int] = field(default_factory=list)  # live saved bytes seen while each module ran
    guided: bool = False
    rows: int = 0  # samples in the batch (set by the step strategy that read it)


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
    numerics: Numerics = FP32,
) -> StepResult:
    """Train ``modules`` (all of the net's, consecutive) on one batch whose input to the first is ``x``.

    ``forward_first``: run every module's forward before any backward (the output is sent sooner;
    all graphs of the run are alive at once). Otherwise each module's backward runs before the next
    module's forward (one graph alive at a time, unless a longer span keeps it). The math is the same.
    """
    spans = [guided_spans(m.spans, m.index, m.is_final, guide) for m in modules]
    step = LocalStep(modules, optimizers, per_module, spans, meter, forward_first, numerics=numerics)
    step.forward(x, batch, guide, on_output)
    return step.finish()


class LocalStep:
    """One batch through consecutive ``modules`` (all K in sequential mode, a stage's in a pipeline).

    ``spans`` lists the term spans of *every* module of the net on this batch (``net_spans``), so a stage
    knows which gradients will come back to it from later stages (``incoming``) and which leave it
    (``upstream``, summed by the span they have left). The phases: ``forward`` (forwards, local backwards,
    output sent), ``receive`` (gradients of the last module's output from downstream), ``finish``
    (optimizer steps). With ``stash``, modules whose graph outlives this step run on a copy of their weights
    (weight stashing), so the step can finish now and a late gradient still meets the weights it was made
    with (``receive`` after ``finish``, then ``finish_late``). ``numerics`` (runtime/numerics.py): forwards
    and losses run under its autocast, outputs leave in its dtype, fp16 losses are scaled per optimizer and
    gradients cross module boundaries unscaled.
    """

    def __init__(
        self,
        modules,
        optimizers,
        per_module,
        spans,
        meter=None,
        forward_first=False,
        stash=False,
        numerics=FP32,
        replicas=None,
        weight=1.0,
    ):
        self.modules, self.optimizers, self.per_module = list(modules), optimizers, per_module
        self.numerics, self.replicas, self.weight = numerics, replicas, weight
        self.meter, self.forward_first, self.stash = meter, forward_first, stash
        self.first, self.last = self.modules[0].index, self.modules[-1].index
        self.own = [spans[m.index] for m in self.modules]
        self.params = [[p for p in m.parameters() if p.requires_grad] for m in self.modules]
        plan = SpanPlan.of(spans, self.first, self.last)
        self.incoming, self.uses, self.reach, self.late = plan.incoming, plan.uses, plan.reach, plan.late
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.stashed: dict[int, dict[str, torch.Tensor]] = {}
        self.upstream: dict[int, torch.Tensor] = {}
        self.losses: list[torch.Tensor] = []
        self.peaks: list[int] = []
        self.guided = False
        self.output: torch.Tensor | None = None

    def forward(self, x, batch, guide: Guide | None, on_output=None) -> None:
        for j in range(len(self.optimizers)):
            self._zero(j)
        self.launched: set[int] = set()
        self.guided = guide is not None
        self.recompute = guide is not None and guide.recompute
        meter, deferred, last = self.meter, [], len(self.modules) - 1
        x = self.numerics.layout(x)
        if batch is not None:
            self.numerics.dynamic_rows(batch.y, batch.raw)
        for j, module in enumerate(self.modules):
            if j == 0 and self.stash and self.late[0]:
                # The graph outlives this step; a received input is a view of a receive buffer that a later
                # message will overwrite (behind autograd's back), so the graph gets its own copy.
                x = x.clone()
            x = x.detach().requires_grad_(self.reach[j] and (j > 0 or self.first > 0))
            if meter:
                meter.reset_peak()
            self.numerics.dynamic_rows(x)
            with meter.hooks() if meter else nullcontext(), self.numerics.autocast():
                with TIMELINE.span(f"forward m{module.index}"):
                    h = self.numerics.boundary(self._body(j, module, x))
                self.numerics.dynamic_rows(h)
                if j == last and on_output is not None:
                    with TIMELINE.span("send"):
                        on_output(h.detach())
                with TIMELINE.span(f"head m{module.index}"):
                    groups = loss_groups(module, h, batch, guide, self.own[j], self.losses)
            self.kept[j] = (x, h)
            if self.forward_first and j != last:
                deferred.append((j, groups))
            else:
                with TIMELINE.span(f"backward m{module.index}"):
                    self._run(j, groups)
            self.peaks.append(meter.peak if meter else 0)
            x = h
        for j, groups in deferred:
            with TIMELINE.span(f"backward m{self.modules[j].index}"):
                self._run(j, groups)
        self.output = x.detach()

    def _body(self, j: int, module, x: torch.Tensor) -> torch.Tensor:
        body = module
        if self.stash and self.late[j]:
            # This module's graph waits for a gradient from a later stage: build it on a copy of the weights.
            copies = {n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in module.body.named_parameters()}
            self.stashed[j] = copies
            body = lambda x: torch.func.functional_call(module.body, copies, (x,))  # noqa: E731
        if self.recompute and not module.is_final:
            # A guidance step keeps every module's graph until the final loss comes back: keep only this
            # module's input, and run its forward again inside the backward (BatchNorm statistics updated once).
            frozen = lambda: (nullcontext(), _StatisticsKept(module.body))  # noqa: E731
            return torch.utils.checkpoint.checkpoint(body, x, use_reentrant=False, context_fn=frozen)
        return body(x)

    @property
    def stash_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for c in self.stashed.values() for t in c.values())

    def receive(self, grads: dict[int, torch.Tensor]) -> None:
        """Gradients of the last module's output from downstream, keyed by the span they have left."""
        if sorted(grads) != self.incoming:
            raise RuntimeError(f"expected gradients for spans {self.incoming}, got {sorted(grads)}")
        last = len(self.modules) - 1
        for r in self.incoming:
            self._backward(last, self.kept[last][1], grads[r], r)

    def finish(self) -> StepResult:
        """Optimizer steps of this batch (with ``stash``: of what has arrived so far)."""
        self._unstash_grads()
        if self.replicas is not None:  # modules not done yet (waiting for a late gradient): their local part now
            for j in range(len(self.optimizers)):
                if j not in self.launched:
                    self._step(j)
        elif not self.per_module:
            for j in range(len(self.optimizers)):
                self._step(j)
        elif self.stash:
            for j in self.kept:  # still waiting for a late gradient: step with the local part now
                self._step(j)
        self._settle()
        return StepResult(self.output, self.losses, self.peaks, self.guided)

    def finish_late(self) -> None:
        """After a late ``receive``: one more step of the modules it trained, with only its gradient."""
        touched = [j for j in self.stashed]
        for j in touched:
            self._zero(j)
        self._unstash_grads()
        for j in touched:
            self._step(j)
        self._settle()
        self.stashed.clear()

    def _zero(self, j: int) -> None:
        if self.replicas is not None:
            self.replicas.zero(j)  # the gradients stay views of the all-reduce's buckets
        else:
            self.optimizers[j].zero_grad(set_to_none=True)

    def _step(self, j: int) -> None:
        """Module j's optimizer step; with replicas, once the all-reduce launched now has summed its gradients."""
        if self.replicas is None:
            with TIMELINE.span(f"optimizer m{self.modules[j].index}"):
                self.numerics.step(j, self.optimizers[j])
        else:
            self.launched.add(j)
            with TIMELINE.span(f"all-reduce launch m{self.modules[j].index}"):
                self.replicas.launch(j)  # body and head: a stashed body's gradients are unstashed

    def _settle(self) -> None:
        if self.replicas is not None:
            for j in self.replicas.completed():
                with TIMELINE.span(f"optimizer m{self.modules[j].index}"):
                    self.numerics.step(j, self.optimizers[j])

    def _unstash_grads(self) -> None:
        for j, copies in self.stashed.items():
            for name, p in self.modules[j].body.named_parameters():
                g = copies[name].grad
                if g is not None:
                    if p.grad is None:
                        p.grad = g
                    else:
                        p.grad.add_(g)  # in place: with replicas, .grad is a view of the all-reduce's bucket
                    if self.replicas is not None:
                        self.replicas.touch([p])
                    copies[name].grad = None

    def _run(self, j: int, groups: dict[int, torch.Tensor]) -> None:
        if not groups and not self.uses[j]:
            self._done(j)  # no loss and no gradient reaches it on this batch
        for span, loss in groups.items():
            self._backward(j, loss, None, span)

    def _backward(self, j: int, tensor: torch.Tensor, grad: torch.Tensor | None, span_left: int) -> None:
        """Backward from a loss (``grad`` None) or from an unscaled gradient of module j's output ``tensor``."""
        x, _ = self.kept[j]
        if grad is None:
            tensor = self.numerics.scale(j, tensor if self.weight == 1 else tensor * self.weight)
        else:
            grad = self.numerics.grad_in(j, grad, tensor)
        self.uses[j] -= 1
        go_on = span_left > 1 and x.requires_grad
        params = list(self.stashed[j].values()) if j in self.stashed else self.params[j]
        if j in self.stashed and self.modules[j].head is not None:
            params = params + [p for p in self.modules[j].head.parameters() if p.requires_grad]
        inputs = (params + [x] if go_on else params) if x.requires_grad else None
        torch.autograd.backward(tensor, grad, retain_graph=self.uses[j] > 0, inputs=inputs)
        if go_on:  # unscaled with the scale it was made with, before this module's step may update it
            g, x.grad = self.numerics.grad_out(j, x.grad, params), None
        if not self.uses[j]:
            self._done(j)
        if go_on:
            if j == 0:  # leaves this run of modules: the previous stage's last module
                left = span_left - 1
                self.upstream[left] = self.upstream[left] + g if left in self.upstream else g
            else:
                self._backward(j - 1, self.kept[j - 1][1], g, span_left - 1)

    def _done(self, j: int) -> None:
        """Module j's last backward of the batch is done: its gradients are final (unless stashed, late ones still
        to come). With replicas its all-reduce starts now, whatever ``optim.step``, to overlap the modules
        before it; the optimizer step waits for it in ``finish``."""
        self.kept.pop(j, None)
        if j not in self.stashed and (self.per_module or self.replicas is not None):
            self._step(j)


class _StatisticsKept:
    """Around a recomputed forward: BatchNorm's running statistics as they were (the first forward updated them).
    Reusable: a graph used by two backward passes (local and guided, ``combine: add``) is recomputed twice; the
    exit also runs when checkpoint stops a recomputation early (by raising) once it has what it needs."""

    def __init__(self, body):
        self.norms = [m for m in body.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]

    def __enter__(self):
        self.kept = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in self.norms]

    @torch.no_grad()
    def __exit__(self, *exc):
        for m, (mean, var, count) in zip(self.norms, self.kept):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
        return False
