"""Simulate one job: build its processes, run the engine, and read off samples/s, utilisation, waits, the bubble,
peak memory per device and bytes on the wire; draw the Gantt with the timeline code real runs use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelocal.sim.engine import Engine, Machine, Trace
from pipelocal.sim.schedules import Job, Units, ddp_replica, local_stage, pipe_stage

OPTIMIZER_STATE = 3  # weights, gradients and SGD momentum: three copies of every parameter byte


@dataclass
class Result:
    samples_per_s: float
    utilisation: list[float]  # per process (stage-major, then replica): compute / wall
    waits: list[dict[str, float]]  # per process: seconds waiting, by kind
    bubble: float  # 1 - mean utilisation
    memory: list[float]  # peak bytes per device
    bytes_on_wire: float  # per training step, all links and collectives
    trace: Trace = field(repr=False)


def simulate(job: Job, units: Callable[[int], Units], machine: Machine) -> Result:
    """``units(rows)`` gives the per-unit costs at a batch of ``rows`` samples."""
    engine = Engine(machine, job.queue_depth)
    P, R = job.num_stages, job.replicas
    if job.schedule == "local":
        u = units(job.rows // R)
        for s in range(P):
            for r in range(R):
                engine.add(local_stage(job, u, s, r), s, r)
    elif job.schedule in ("gpipe", "1f1b"):
        u = units(job.rows // R // job.microbatches)
        for s in range(P):
            for r in range(R):
                engine.add(pipe_stage(job, u, s, r), s, r)
    elif job.schedule in ("ddp", "e2e"):
        u = units(job.rows // R)
        for r in range(R):
            engine.add(ddp_replica(job, u, r), 0, r)
    else:
        raise ValueError(f"unknown schedule {job.schedule!r}: local, gpipe, 1f1b, ddp or e2e")
    trace = engine.run()
    wall = trace.makespan_s
    util = [p.busy_s / wall for p in trace.procs]
    waits = []
    for p in trace.procs:
        kinds: dict[str, float] = {}
        for name, a, b in p.spans:
            if name in ("recv", "send", "grad-wait", "all-reduce"):
                kinds[name] = kinds.get(name, 0.0) + b - a
        waits.append(kinds)
    return Result(
        trace.samples_per_s,
        util,
        waits,
        1 - sum(util) / len(util),
        memory(job, units),
        trace.bytes_on_wire / job.steps,
        trace,
    )


def memory(job: Job, units: Callable[[int], Units]) -> list[float]:
    """Peak bytes per device: parameters with their gradients and optimizer state, the activations saved for
    backward of every batch in flight at once, and the link buffers (queue depth x message, both ways)."""
    out = []
    if job.schedule in ("ddp", "e2e"):
        u = units(job.rows // job.replicas)
        n = len(u.fwd)
        state = OPTIMIZER_STATE * u.params(0, n)
        return [state + sum(u.saved_bytes) + u.head_saved_bytes[-1]] * job.replicas
    pipe = job.schedule in ("gpipe", "1f1b")
    u = units(job.rows // job.replicas // (job.microbatches if pipe else 1))
    P = job.num_stages
    for s, mods in enumerate(job.stages):
        ranges = [job.ranges[m] for m in mods]
        last = s == P - 1
        state = OPTIMIZER_STATE * sum(u.params(a, b, head=not pipe or last) for a, b in ranges)
        saved = [sum(u.saved_bytes[a:b]) for a, b in ranges]
        heads = [u.head_saved_bytes[b - 1] for _, b in ranges]
        if pipe:
            in_flight = job.microbatches if job.schedule == "gpipe" else min(P - s, job.microbatches)
            acts = in_flight * (sum(saved) + (heads[-1] if last else 0))
        elif job.guide_every and job.guide_mode == "sync":
            acts = sum(saved) + max(heads)  # a guided step keeps every module's graph until the gradient comes
        else:
            acts = max(x + h for x, h in zip(saved, heads))  # each module's backward right after its forward
        a0, b1 = ranges[0][0], ranges[-1][1]
        buffers = job.queue_depth * ((u.out_bytes[a0 - 1] if s else 0) + (u.out_bytes[b1 - 1] if not last else 0))
        out += [state + acts + buffers] * job.replicas
    return out


def gantt_ranks(trace: Trace) -> list[dict]:
    """The trace as the timeline's per-rank span lists (microseconds), for ``timeline.write``/``draw``."""
    return [
        {
            "rank": i,
            "stage": p.stage,
            "replica": p.replica,
            "cost_ns": 0,
            "spans": [(name, a * 1e6, (b - a) * 1e6, None) for name, a, b in p.spans],
        }
        for i, p in enumerate(trace.procs)
    ]


def draw_gantt(trace: Trace, path: Path, until_s: float | None = None) -> Path:
    """The simulated schedule drawn by the timeline code of real runs (``until_s``: only the first seconds)."""
    from pipelocal.metrics.timeline import draw

    ranks = gantt_ranks(trace)
    if until_s is not None:
        for r in ranks:
            r["spans"] = [s for s in r["spans"] if s[1] < until_s * 1e6]
    draw(ranks, Path(path), 0.0)
    return Path(path)
