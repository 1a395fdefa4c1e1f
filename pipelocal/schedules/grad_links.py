"""Gradients that cross stages: guidance, MLAAN's cascade, delayed-gradient e2e (docs/pipeline.md).

The stage keeps the graph of batch t; the next stage sends back ``d loss / d input`` for t (one GRAD
message per step and link, one tensor per span still to go) and the stage runs backward through what it
kept. ``guidance.mode: sync`` waits for it before the step (exact: invariant 2); ``async`` steps now and
applies the gradient when it arrives, through a graph built on stashed weights, and logs the delay. What
this stage owes the previous one leaves in step order, once all of its gradients are there.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from pipelocal.distributed.transport import Receiver, Sender
from pipelocal.distributed.wire import Kind, TensorMeta, WireError, pad_rows
from pipelocal.metrics.timeline import TIMELINE
from pipelocal.runtime.step import LocalStep
from pipelocal.schedules.plan import Plan, grad_keys

NO_LABELS = torch.zeros(0, dtype=torch.long)


def async_delay_bound(num_stages: int, stage: int, queue_depth: int) -> int:
    """The most optimizer steps ``stage`` can take between a batch and its late gradient (async; fifo links).

    A forward send of step m returns only once the next stage has received step m - 2q (q sends unfinished, q
    receives posted), so a stage is at most 2q + 1 steps ahead of the next one when that one sends a gradient
    back, and it applies the gradient at its next step's start: 2q + 1 steps per link on the way back, plus
    one when the gradient is still on the wire as the stage looks (the next stage's receive, posted after the
    gradient's send, can let this stage's forward send through first). That model gave (P - 1 - s)(2q + 2),
    and a P = 4, q = 2 run on gloo measured 13 steps at stage 1 against its 12 (1 run in 6), so the model
    misses a step somewhere; the bound keeps one step more per link than the model, 2q + 3, unexplained margin
    included. GRAD links have room for this many, so a GRAD send never waits and adds nothing (build.py).
    Measured on gloo: tests/distributed/test_cross_stage.py.
    """
    return (num_stages - 1 - stage) * (2 * queue_depth + 3)


@dataclass
class Waiting:
    """Async: a step whose graph waits for its gradient from the next stage."""

    step: int
    local_step: LocalStep


@dataclass
class Owed:
    """Gradients this stage owes the previous one for ``step``: sent once ``ready`` (all of them computed)."""

    step: int
    local_step: LocalStep
    rows: int
    keys: list[int]  # the spans they have left, one tensor each
    ready: bool


class GradLinks:
    """The gradient link from the next stage (``receiver``) and to the previous one (``sender``), either optional."""

    def __init__(self, plan: Plan, method, first_module: int, stage_index: int, asynchronous: bool):
        self.plan, self.method, self.first_module, self.stage_index = plan, method, first_module, stage_index
        self.asynchronous = asynchronous
        self.receiver: Receiver | None = None
        self.sender: Sender | None = None
        self.metas: tuple[TensorMeta, ...] = ()  # of one GRAD tensor to the previous stage
        self.waiting: deque[Waiting] = deque()
        self.owed: deque[Owed] = deque()

    def on_forward(self, t: int, step: LocalStep, stats) -> None:
        """After the step's forward: wait for its gradient from downstream (sync), or keep it waiting (async)."""
        if not step.incoming:
            return
        if self.asynchronous:
            self.waiting.append(Waiting(t, step))
        else:
            grads = self._recv(t, step.incoming, stats)
            with TIMELINE.span("backward from next stage", step=t):
                step.receive(grads)

    def on_finish(self, t: int, step: LocalStep, rows: int) -> None:
        """After the step's optimizer steps: owe the previous stage the gradients that leave this one."""
        if self.sender is None:
            return
        keys = grad_keys(self.plan, self.method, self.first_module, t)
        if keys:
            self.owed.append(Owed(t, step, rows, keys, ready=not (self.asynchronous and step.incoming)))
            self._send_owed()

    def apply_arrived(self, now: int, stats, block: bool, limit: int | None = None) -> None:
        """Async: apply every gradient that has arrived (all of them when ``block``; ``limit``: the first
        ``limit``, which have arrived), oldest first."""
        applied = 0
        while self.waiting and (block or (applied < limit if limit is not None else self.receiver.ready())):
            applied += 1
            waiting = self.waiting.popleft()
            t, step = waiting.step, waiting.local_step
            grads = self._recv(t, step.incoming, stats)
            with TIMELINE.span("backward from next stage", step=t, late=True):
                step.receive(grads)
                step.finish_late()
            stats.delays.append(now - t - 1)  # optimizer steps this stage took in between
            for owed in self.owed:
                if owed.step == t:
                    owed.ready = True
            self._send_owed()

    def end_epoch(self, now: int, stats) -> None:
        """The epoch's updates are complete before it is evaluated (a drain point, like a checkpoint)."""
        if self.waiting:
            self.apply_arrived(now, stats, block=True)
        self.flush()

    def stash_bytes(self, current: LocalStep) -> int:
        """Weight copies alive now: the current step's and every waiting one's."""
        return current.stash_bytes + sum(w.local_step.stash_bytes for w in self.waiting if w.local_step is not current)

    def flush(self) -> None:
        if self.sender is not None:
            self.sender.flush()

    def _recv(self, t: int, keys: list[int], stats) -> dict[int, torch.Tensor]:
        begin = time.perf_counter()
        with TIMELINE.span("grad-wait", step=t):
            header, tensors, _ = self.receiver.recv()  # checked against the plan: kind GRAD, step t, shapes
        stats.grad_wait_s += time.perf_counter() - begin
        if header.step != t:
            raise WireError(f"stage {self.stage_index} expected the gradient of step {t}, got step {header.step}")
        return dict(zip(keys, tensors, strict=True))

    def _send_owed(self) -> None:
        """Send, in step order, every GRAD message to the previous stage whose gradients are all there."""
        while self.owed and self.owed[0].ready:
            owed = self.owed.popleft()
            step = owed.local_step
            if sorted(step.upstream) != owed.keys:
                raise RuntimeError(
                    f"stage {self.stage_index} step {owed.step}: gradients for spans {sorted(step.upstream)}, "
                    f"planned {owed.keys}"
                )
            tensors = [pad_rows(step.upstream[k], self.plan.batch_size) for k in owed.keys]
            self.sender.send(Kind.GRAD, owed.step, owed.rows, tensors, NO_LABELS, self.metas * len(owed.keys))
