"""A stage's data-parallel replicas (``pipeline.replicas`` = R > 1, the ``dp`` mesh dimension; docs/scale-out.md).

Each of the R replica pipelines trains its shard of every global batch. A stage's replicas average their
gradients before each optimizer step, per local module: as soon as a module's backward is done, its gradients
go into flat buckets and an asynchronous all-reduce starts, overlapped with the next module's work; the step
waits for it (:meth:`Replicas.completed`). Each replica's losses are weighted by its shard's share of the
global batch (:func:`shard_weight`) and the all-reduce sums, so an update is the global batch's mean gradient
even when a batch splits unevenly: the same config gives the same math at any R (invariant 6).

Replicas must also agree on a few host-side decisions (stop for a preemption; which late gradients to apply
now): those go over the gloo twin of the group, so they never wait on the device.
"""

from __future__ import annotations

import time
from collections import deque

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from pipelocal.metrics.timeline import TIMELINE

BUCKET_BYTES = 64 * 2**20  # one all-reduce per bucket: large enough to be efficient, small enough to overlap


def shard_rows(rows: int, replicas: int) -> list[int]:
    """How a batch of ``rows`` splits over ``replicas`` (as ``torch.tensor_split``: the first ones get one more)."""
    base, extra = divmod(rows, replicas)
    return [base + (r < extra) for r in range(replicas)]


def shard_weight(rows: int, global_rows: int) -> float:
    """What one replica's mean losses are multiplied by, so that summed gradients are the global mean."""
    return rows / global_rows


class Replicas:
    """This stage's place among its replicas: ``index`` of ``count``, ``group`` (the backend's) and ``host_group``
    (gloo). ``wait_s``: time the optimizer steps waited for their all-reduce (what overlap did not hide)."""

    def __init__(self, group: dist.ProcessGroup, host_group: dist.ProcessGroup, index: int, count: int):
        self.group, self.host_group, self.index, self.count = group, host_group, index, count
        self.source = dist.get_global_rank(group, 0)  # replica 0: its buffers are the ones evaluated and saved
        self._pending: deque = deque()  # (key, [(work, flat, grads)])
        self.wait_s = 0.0
        self.reduced_bytes = 0

    def launch(self, key, params) -> None:
        """Start summing the gradients of ``params`` over the replicas (those without a gradient on this step
        have none on every replica: the step's plan is the same)."""
        grads = [p.grad for p in params if p.grad is not None]
        buckets, size, current = [], 0, []
        for g in grads:
            if current and size + g.numel() * g.element_size() > BUCKET_BYTES:
                buckets.append(current)
                current, size = [], 0
            current.append(g)
            size += g.numel() * g.element_size()
        if current:
            buckets.append(current)
        launched = []
        for bucket in buckets:
            flat = _flatten_dense_tensors(bucket)
            launched.append((dist.all_reduce(flat, group=self.group, async_op=True), flat, bucket))
            self.reduced_bytes += flat.numel() * flat.element_size()
        self._pending.append((key, launched))

    def completed(self):
        """Yield the keys launched, in order, each once its gradients hold the sum over the replicas."""
        while self._pending:
            key, launched = self._pending.popleft()
            begin = time.perf_counter()
            with TIMELINE.span("all-reduce wait"):
                for work, flat, bucket in launched:
                    work.wait()
                    for g, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                        g.copy_(reduced)
            self.wait_s += time.perf_counter() - begin
            yield key

    def agree(self, value: int, op=dist.ReduceOp.MAX) -> int:
        """One host-side number every replica of this stage agrees on (their maximum, or ``op``)."""
        box = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(box, op=op, group=self.host_group)
        return int(box)

    @torch.no_grad()
    def check_in_step(self, modules, where: str) -> None:
        """Fail if this stage's replicas no longer hold the same parameters (they must: every step applies the same
        summed gradients). Two sums per replica, compared as their maximum and minimum over the group."""
        params = [p.detach().float() for m in modules for p in m.parameters()]
        sums = torch.stack([sum(p.sum() for p in params), sum(p.square().sum() for p in params)]).cpu()
        high, low = sums.clone(), sums.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.host_group)
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self.host_group)
        if not torch.equal(high, low):
            raise RuntimeError(
                f"{where}: the data-parallel replicas of this stage hold different weights (parameter sums "
                f"{low.tolist()} to {high.tolist()}); their steps must match (a bug: please report it)"
            )

    @torch.no_grad()
    def broadcast_buffers(self, modules) -> None:
        """Replica 0's BatchNorm statistics to every replica (per-replica statistics drift apart in training;
        evaluation and checkpoints use replica 0's, as DDP does)."""
        buffers = [b for m in modules for b in m.buffers() if b.dtype.is_floating_point]
        if not buffers:
            return
        flat = _flatten_dense_tensors(buffers)
        dist.broadcast(flat, src=self.source, group=self.group)
        for b, value in zip(buffers, _unflatten_dense_tensors(flat, buffers)):
            b.copy_(value)
