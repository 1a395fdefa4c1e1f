"""The schedules pipelocal runs, as op generators for the engine: the local pipeline (P x R), GPipe, 1F1B, DDP.

Costs come per unit (:class:`Units`: forward, backward, aux head, output and parameter bytes at a batch size);
a module is a range of units and carries the head of its last unit, as ``split.balance: time`` profiles it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelocal.sim.engine import compute, done, poll, recv, reduce, send, wait

LABEL_BYTES = 8  # int64 labels travel with every activation message


@dataclass
class Units:
    """Per-unit costs at ``rows`` samples on ``threads`` threads (seconds; bytes)."""

    rows: int
    fwd: list[float]
    bwd: list[float]
    head: list[float]  # the aux head's forward + backward, as if a module ended at this unit
    out_bytes: list[float]  # the unit's output
    param_bytes: list[float]
    saved_bytes: list[float]  # activations saved for backward
    head_saved_bytes: list[float]
    head_param_bytes: list[float]
    threads: int = 1
    optimizer_s_per_byte: float = 0.0  # an optimizer step's time per parameter byte

    def module(self, a: int, b: int, head: bool = True) -> tuple[float, float, float]:
        """(forward, backward, head) seconds of units [a, b)."""
        return sum(self.fwd[a:b]), sum(self.bwd[a:b]), self.head[b - 1] if head else 0.0

    def params(self, a: int, b: int, head: bool = True) -> float:
        return sum(self.param_bytes[a:b]) + (self.head_param_bytes[b - 1] if head else 0.0)


@dataclass
class Job:
    """One schedule to simulate. ``ranges``: the K modules' unit ranges; ``stages``: modules per stage."""

    schedule: str  # local | gpipe | 1f1b | ddp | e2e
    ranges: list[tuple[int, int]]
    stages: list[list[int]]  # module indices of each stage
    replicas: int = 1
    steps: int = 20
    rows: int = 128  # global batch
    microbatches: int = 1
    queue_depth: int = 2
    guide_every: int = 0
    guide_mode: str = "sync"
    replay: bool = False  # a replay buffer between stages: a consumer trains on what is there
    ema_every: int = 0  # MLAAN: EMA weights sent to the previous stage every N steps
    ddp_overhead_s: float = 0.0  # what torch's DDP adds to a replica's step beyond its all-reduce (measured)

    @property
    def num_stages(self) -> int:
        return len(self.stages)


def rank(job: Job, stage: int, replica: int) -> int:
    return stage * job.replicas + replica


def local_stage(job: Job, u: Units, s: int, r: int):
    """A local pipeline stage (replica r): receive, each module's forward, send as soon as the output exists,
    local head + backward; guidance steps are end to end across stages (sync: wait for the gradient)."""
    P, R, mods = job.num_stages, job.replicas, job.stages[s]
    prev, nxt = rank(job, s - 1, r), rank(job, s + 1, r)
    group = tuple(rank(job, s, q) for q in range(R))
    rows = job.rows // R
    b_in = u.out_bytes[job.ranges[mods[0]][0] - 1] if s > 0 else 0
    for t in range(job.steps):
        guided = job.guide_every and t % job.guide_every == job.guide_every - 1
        if s > 0:
            yield poll(prev) if job.replay else recv(prev, t)
        if guided and job.guide_mode == "async" and s < P - 1 and t >= job.guide_every:
            late = t - job.guide_every  # the gradient of the last guided step: applied, never waited for
            yield recv(nxt, ("g", late), "grad-wait")
            yield compute(sum(u.module(*job.ranges[m])[1] for m in mods), "backward", u.threads)
        sync = guided and job.guide_mode == "sync"
        for j, m in enumerate(mods):
            a, b = job.ranges[m]
            fwd, bwd, head = u.module(a, b)
            yield compute(fwd, "forward", u.threads)
            if j == len(mods) - 1 and s < P - 1:
                yield send(nxt, u.out_bytes[b - 1] + rows * LABEL_BYTES, ("replay", t) if job.replay else t)
            if not sync or (s == P - 1 and j == len(mods) - 1):
                yield compute(head, "head", u.threads)
            if not sync:
                yield compute(bwd, "backward", u.threads)
            if R > 1 and not sync:
                yield reduce(group, u.params(a, b), ("dp", s, t, m))
        if sync:  # end to end: the gradient from downstream first, then the whole stage backward
            if s < P - 1:
                yield recv(nxt, ("g", t), "grad-wait")
            yield compute(sum(u.module(*job.ranges[m])[1] for m in mods), "backward", u.threads)
            if R > 1:
                yield reduce(group, sum(u.params(*job.ranges[m]) for m in mods), ("dp", s, t, -1))
        if guided and s > 0:
            yield send(prev, b_in, ("g", t))
        if job.ema_every and s > 0 and t % job.ema_every == 0:
            yield send(prev, u.params(*job.ranges[mods[0]], head=False), ("ema", t))
        if job.ema_every and s < P - 1 and t % job.ema_every == 0:
            yield recv(nxt, ("ema", t), "recv")
        if R > 1:
            for m in mods if not sync else [-1]:
                yield wait(("dp", s, t, m))
        yield compute(u.optimizer_s_per_byte * sum(u.params(*job.ranges[m]) for m in mods), "optimizer")
        if s == P - 1:
            yield done(rows)


def pipe_stage(job: Job, u: Units, s: int, r: int = 0):
    """A GPipe or 1F1B stage, replica r (E2E: gradients cross stages; one flush per step; replicas all-reduce
    the stage's gradients after it). ``u`` is at microbatch rows."""
    P, m = job.num_stages, job.microbatches
    prev, nxt = rank(job, s - 1, r), rank(job, s + 1, r)
    (a, _), (_, b) = job.ranges[job.stages[s][0]], job.ranges[job.stages[s][-1]]
    fwd, bwd, head = u.module(a, b, head=s == P - 1)
    out = u.out_bytes[b - 1] + u.rows * LABEL_BYTES if s < P - 1 else 0
    grad_in = u.out_bytes[a - 1] if s > 0 else 0

    def forward(t, i):
        if s > 0:
            yield recv(prev, (t, i))
        yield compute(fwd, "forward", u.threads)
        if s < P - 1:
            yield send(nxt, out, (t, i))

    def backward(t, i):
        if s < P - 1:
            yield recv(nxt, ("g", t, i), "grad-wait")
        yield compute(bwd + head, "backward", u.threads)
        if s > 0:
            yield send(prev, grad_in, ("g", t, i))

    for t in range(job.steps):
        warm = m if job.schedule == "gpipe" else min(P - 1 - s, m)
        for i in range(warm):
            yield from forward(t, i)
        for i in range(m - warm):
            yield from forward(t, warm + i)
            yield from backward(t, i)
        for i in range(m - warm, m):
            yield from backward(t, i)
        if job.replicas > 1:
            yield reduce(tuple(rank(job, s, q) for q in range(job.replicas)), u.params(a, b, False), ("dp", s, t))
            yield wait(("dp", s, t))
        yield compute(u.optimizer_s_per_byte * u.params(a, b, head=False), "optimizer")
        if s == P - 1:
            yield done(job.rows // job.replicas)


def ddp_replica(job: Job, u: Units, r: int, bucket_bytes: float = 25 * 2**20, first_bucket: float = 2**20):
    """A DDP replica: the whole net's forward, then backward unit by unit (last first), an asynchronous
    all-reduce each time a bucket fills (the first one small, as torch's DDP), all of them waited before the step."""
    n, group = len(u.fwd), tuple(range(job.replicas))
    for t in range(job.steps):
        if job.replicas > 1 and job.ddp_overhead_s:  # buffer broadcast, reducer hooks, bucket copies
            yield compute(job.ddp_overhead_s, "ddp overhead", u.threads)
        yield compute(sum(u.fwd), "forward", u.threads)
        yield compute(u.head[-1], "head", u.threads)
        buckets, size, cap = 0, 0.0, first_bucket
        for k in reversed(range(n)):
            yield compute(u.bwd[k], "backward", u.threads)
            size += u.param_bytes[k] + (u.head_param_bytes[-1] if k == n - 1 else 0)
            if size >= cap or k == 0:
                yield reduce(group, size, ("dp", t, buckets))
                buckets, size, cap = buckets + 1, 0.0, bucket_bytes
        for i in range(buckets):
            yield wait(("dp", t, i))
        yield compute(u.optimizer_s_per_byte * u.params(0, n), "optimizer")
        yield done(job.rows // job.replicas)
