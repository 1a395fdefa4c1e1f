"""A stage's data-parallel replicas (``pipeline.replicas`` = R > 1, the ``dp`` mesh dimension; docs/scale-out.md).

Each of the R replica pipelines trains its shard of every global batch. A stage's replicas average their
gradients before each optimizer step, per local module: gradients accumulate in flat buckets (each ``.grad`` a
view of one), and as soon as a module's last backward of the batch is done its asynchronous all-reduce starts,
overlapped with the other modules' work; the optimizer steps wait for it (:meth:`Replicas.completed`). Each
replica's losses are weighted by its shard's share of the global batch (:func:`shard_weight`) and the all-reduce
sums, so an update is the global batch's mean gradient even when a batch splits unevenly: the same config gives
the same math at any R (invariant 6).

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
    (gloo). ``wait_s``: time the optimizer steps waited for their all-reduce (what overlap did not hide).

    Gradients live in flat buckets (:meth:`attach`): each parameter's ``.grad`` is a view of its module's bucket,
    with the parameter's own strides, so autograd accumulates straight into what is all-reduced and the sum
    lands where the optimizer reads it: no copy either way (DDP's ``gradient_as_bucket_view``). A module's
    all-reduce is launched by the step the moment its gradients are final (``LocalStep._done``: its last
    backward of the batch, whatever ``optim.step`` is), so it runs while the modules before it compute; the
    optimizer steps wait for it (:meth:`completed`). A parameter that no backward reached on a step has its
    ``.grad`` set to None before the step, as without replicas (an optimizer skips it: no decay, no momentum).
    """

    def __init__(
        self, group: dist.ProcessGroup, host_group: dist.ProcessGroup, index: int, count: int, slow_s: float = 0.0
    ):
        self.group, self.host_group, self.index, self.count = group, host_group, index, count
        self.source = dist.get_global_rank(group, 0)  # replica 0: its buffers are the ones evaluated and saved
        self._pending: deque = deque()  # (key, [work], launched at)
        self._buckets: dict = {}  # key -> [(flat, params, views)]
        self._touched: set[int] = set()  # ids of the parameters a backward reached since their module's zero()
        self.wait_s = 0.0
        self.reduced_bytes = 0
        self.slow_s = slow_s  # pipeline.slowdown.allreduce_s: a slow network, injected
        self._link_free = 0.0  # with it: when the simulated link has finished the all-reduces before

    def attach(self, key, params) -> None:
        """Module ``key``'s gradients live in flat buckets of at most ``BUCKET_BYTES`` from now on."""
        buckets, current, size = [], [], 0
        for p in params:
            nbytes = p.numel() * p.element_size()
            if current and (size + nbytes > BUCKET_BYTES or p.dtype != current[0].dtype):
                buckets.append(current)
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            buckets.append(current)
        self._buckets[key] = [self._bucket(ps) for ps in buckets]
        for p in params:
            p.register_post_accumulate_grad_hook(lambda q: self._touched.add(id(q)))

    @staticmethod
    def _bucket(params) -> tuple:
        flat = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        views, offset = [], 0
        for p in params:  # the parameter's own strides (channels_last weights stay channels_last)
            views.append(torch.as_strided(flat, p.shape, p.stride(), offset))
            offset += p.numel()
        return flat, params, views

    def zero(self, key) -> None:
        """Before a module's backward passes of a batch: its buckets zeroed, every ``.grad`` the view again."""
        for flat, params, views in self._buckets[key]:
            flat.zero_()
            for p, view in zip(params, views):
                p.grad = view
                self._touched.discard(id(p))

    def touch(self, params) -> None:
        """``params`` got a gradient outside autograd's accumulation (added from a stashed copy)."""
        self._touched.update(id(p) for p in params)

    def launch(self, key) -> None:
        """Start summing module ``key``'s gradient buckets over the replicas."""
        works = []
        for flat, _, _ in self._buckets[key]:
            works.append(dist.all_reduce(flat, group=self.group, async_op=True))
            self.reduced_bytes += flat.numel() * flat.element_size()
        self._pending.append((key, works, time.perf_counter()))

    def completed(self):
        """Yield the keys launched, in order, each once its gradients hold the sum over the replicas."""
        while self._pending:
            key, works, launched = self._pending.popleft()
            begin = time.perf_counter()
            with TIMELINE.span("all-reduce wait"):
                for work in works:
                    work.wait()
                if self.slow_s:
                    self._slow_link(launched)
            self.wait_s += time.perf_counter() - begin
            for _, params, _ in self._buckets[key]:
                for p in params:
                    if id(p) not in self._touched:
                        p.grad = None  # no backward reached it on this step (on any replica: the same plan)
            yield key

    def _slow_link(self, launched: float) -> None:
        """``pipeline.slowdown.allreduce_s``: a link on which every all-reduce takes that long, one after the other,
        from its launch; what compute after the launch hides is not waited for (an ablation of overlap)."""
        done = max(self._link_free, launched) + self.slow_s
        self._link_free = done
        with TIMELINE.span("injected link wait"):
            time.sleep(max(0.0, done - time.perf_counter()))

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
