"""``pipeline.replicas: auto``: the P x R layout of a local pipeline for the processes torchrun started, chosen by
simulating each layout on this device's own profiled costs (docs/simulator.md#choosing-p-x-r-at-start-up).

Every layout with P x R = the world size is a candidate (P at most K; with ``pipeline.modules_per_stage``, the
P it names; with a replay buffer, R = 1). Each is profiled at the rows its stages run (``stage_rows``: a
replica's share of the batch), split as ``split.balance`` splits it, and simulated on this machine (the
processes share the host's cores on a CPU, each has its own GPU on CUDA); the fastest in steady state wins,
and of layouts within ``TIE`` (5 %) of it, the one with the fewest replicas.
The links are assumptions, not measured at start-up (:data:`LINKS`); the optimizer step and MLAAN's EMA
messages are left out. The choice is kept in the run folder (``mesh.json``) under its key, and a later run
of the same key under the same ``metrics.out_dir`` (a resume too) takes it without profiling again.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from pipelocal.config import ConfigError, JobConfig
from pipelocal.config_policy import check_replicas
from pipelocal.data import DataInfo
from pipelocal.runtime import process
from pipelocal.runtime.local_net import backbone_for
from pipelocal.runtime.profile import (
    TIE,
    UnitProfile,
    device_kind,
    find_cached,
    profile_rounds,
    profiled_ranges,
    stage_rows,
)
from pipelocal.sim.engine import Machine
from pipelocal.sim.model import simulate
from pipelocal.sim.schedules import Job, Units
from pipelocal.split import stage_ranges


@dataclass(frozen=True)
class Link:
    latency_s: float
    bandwidth: float  # bytes/s, one direction
    reduce_latency_s: float
    reduce_bandwidth: float  # bus bandwidth of a ring all-reduce
    source: str


# What a message and an all-reduce cost, by backend: assumed (a start-up does not measure its links)
LINKS = {
    "gloo": Link(
        300e-6,
        4.6e9,
        880e-6,
        1.65e9,
        "gloo over loopback TCP on one host, fitted to benchmarks/simulate_link.py on a 2-core AMD EPYC "
        "(benchmarks/results/cpu-2core-AMD-EPYC-avx512-2026-12-06/simulate/measured.json)",
    ),
    "nccl": Link(5e-6, 300e9, 30e-6, 300e9, "NVLink-class GPUs (A100: 300 GB/s a direction), as projections assume"),
}


@dataclass
class Layout:
    stages: int
    replicas: int
    rows: int  # what each stage runs at once (a replica's share)
    samples_per_s: float  # simulated, steady state
    bound: float  # R x rows over the slowest stage's compute, no communication, no sharing of cores
    memory: float  # the largest process's simulated peak bytes


def candidates(cfg: JobConfig, world: int) -> list[tuple[int, int]]:
    """(P, R) with P x R = ``world`` that this config can run, most stages first."""
    k, per_stage = cfg.split.num_modules, cfg.pipeline.modules_per_stage
    out = []
    for p in range(min(world, k), 0, -1):
        r = world // p
        if world % p or (per_stage is not None and p > 1 and len(per_stage) != p):
            continue
        try:  # what a number R would be refused for: more replicas than rows, a replay buffer, a contrast loss...
            check_replicas(_with_replicas(cfg, r))
        except ConfigError:
            continue
        out.append((p, r))
    if not out:
        raise ConfigError(
            f"pipeline.replicas=auto: no P x R layout of {world} processes fits split.num_modules={k}"
            + (f" and pipeline.modules_per_stage={per_stage}" if per_stage is not None else "")
            + f" and data.batch_size={cfg.data.batch_size}; set pipeline.replicas to a number, or start "
            "another number of processes"
        )
    return out


def units_of(prof: UnitProfile, rows: int, shapes: list[tuple], param_bytes: list[float], dtype_bytes: int, threads):
    """The simulator's per-unit costs from a profile taken at ``rows``."""
    return Units(
        rows=rows,
        fwd=list(prof.forward_s),
        bwd=[max(t - f, 0.0) for t, f in zip(prof.unit_s, prof.forward_s)],
        head=list(prof.head_s),
        out_bytes=[rows * dtype_bytes * math.prod(s) for s in shapes],
        param_bytes=param_bytes,
        saved_bytes=list(prof.unit_bytes),
        head_saved_bytes=list(prof.head_bytes),
        head_param_bytes=list(prof.head_param_bytes),
        threads=max(threads, 1),
    )


def machine(
    device: torch.device, backend: str, cores: float | None = None, nodes: int = 1, per_node: int = 1
) -> Machine:
    """This job's machine: on a CPU, the cores of its ``nodes`` hosts (this one's count each) shared by every
    process; on CUDA, a device each, or, with more processes a node (``per_node``) than GPUs, the GPUs shared
    by the processes as cores are (time-sliced)."""
    link = LINKS["nccl" if backend == "nccl" else "gloo"]
    if device.type == "cpu" and cores is None:
        here = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        cores = here * nodes
    elif device.type == "cuda" and cores is None and per_node > torch.cuda.device_count():
        cores = torch.cuda.device_count() * nodes
    return Machine(
        cores=cores,
        latency_s=link.latency_s,
        bandwidth=link.bandwidth,
        reduce_latency_s=link.reduce_latency_s,
        reduce_bandwidth=link.reduce_bandwidth,
    )


def job_of(cfg: JobConfig, ranges: list[tuple[int, int]], p: int, r: int) -> Job:
    """The local pipeline this config runs as P stages of R replicas."""
    per_stage = cfg.pipeline.modules_per_stage if p > 1 else None
    stages = [list(range(a, b)) for a, b in stage_ranges(len(ranges), p, per_stage)]
    g = cfg.guidance
    return Job(
        "local",
        list(ranges),
        stages,
        replicas=r,
        steps=max(24, 6 * p, 4 * cfg.pipeline.queue_depth * p),  # past a first stage's run-ahead of up to q x P
        rows=cfg.data.batch_size,
        queue_depth=cfg.pipeline.queue_depth,
        guide_every=g.every,
        guide_mode=g.mode,
        replay=cfg.pipeline.buffer == "replay",
    )


def evaluate(cfg: JobConfig, prof: UnitProfile, ranges, shapes, param_bytes, p: int, r: int, m: Machine) -> Layout:
    """Simulate one layout on ``prof`` (taken at its rows) with the module ``ranges`` its split gives."""
    rows = stage_rows(_with_replicas(cfg, r))
    dtype_bytes = 4 if cfg.train.precision == "fp32" else 2
    u = units_of(prof, rows, shapes, param_bytes, dtype_bytes, cfg.pipeline.threads)
    job = job_of(cfg, ranges, p, r)
    result = simulate(job, lambda _rows: u, m)
    slowest = max(sum(sum(u.module(*ranges[i])) for i in g) for g in job.stages)
    return Layout(p, r, rows, result.trace.steady_samples_per_s, r * rows / slowest, max(result.memory))


def _with_replicas(cfg: JobConfig, r: int) -> JobConfig:
    return replace(cfg, pipeline=replace(cfg.pipeline, replicas=r))


@dataclass
class Plan:
    replicas: int
    layouts: list[Layout]  # as simulated (for a recorded choice: as its record has them)
    profile: UnitProfile | None  # the chosen layout's profile (the split reuses it); None for a recorded choice
    key: dict
    line: str

    def record(self, run_dir: Path) -> None:
        record = {"key": self.key, "replicas": self.replicas, "layouts": [asdict(x) for x in self.layouts]}
        (Path(run_dir) / "mesh.json").write_text(json.dumps(record, indent=1))


def mesh_key(cfg: JobConfig, data: DataInfo, device: torch.device, world: int, cores: float | None) -> dict:
    """What the choice depends on, and nothing else (a resume may change timeouts, epochs, logging and keep it):
    the net, method, split and guidance, the batch, how stages link and compute, the processes and the device."""
    p, t, d = cfg.pipeline, cfg.train, cfg.data
    return {
        "net": [asdict(cfg.model), asdict(cfg.method), asdict(cfg.split), asdict(cfg.guidance), cfg.optim.step],
        "batch": [d.batch_size, d.eval_batch_size, list(data.input_shape)],
        "pipeline": [p.queue_depth, p.modules_per_stage, p.buffer, p.threads, p.sync_batchnorm],
        "numerics": [t.precision, t.channels_last, t.compile, t.host_allocator],
        "world": world,
        "device": device_kind(device),
        "cores": cores,
    }


def plan_mesh(
    cfg: JobConfig, data: DataInfo, device: torch.device, world: int, backend: str, m: Machine | None = None
) -> Plan:
    """Profile and simulate every candidate layout; the fastest (or the one an earlier run of this key chose).
    ``m``: the machine to simulate (default: this one, :func:`machine`)."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    m = m or machine(device, backend, nodes=max(world // per_node, 1), per_node=per_node)
    key = mesh_key(cfg, data, device, world, m.cores)
    cached = find_cached(Path(cfg.metrics.out_dir), key, "mesh.json", None)
    if cached is not None:
        record, where = cached
        replicas = record["replicas"]
        line = (
            f"pipeline.replicas=auto: P x R = {world // replicas} x {replicas}, as chosen for {where.parent.name} "
            f"(same job, {world} processes, {key['device']}; --pipeline.replicas={replicas} reproduces it)"
        )
        return Plan(replicas, [Layout(**x) for x in record["layouts"]], None, key, line)
    backbone = backbone_for(cfg, data)
    shapes = backbone.unit_shapes(data.input_shape)
    param_bytes = [float(sum(p.numel() * p.element_size() for p in u.parameters())) for u in backbone.units]
    layouts, profiles = [], {}
    for p, r in candidates(cfg, world):
        at = _with_replicas(cfg, r)
        rows = stage_rows(at)
        if rows not in profiles:
            profiles[rows] = profile_rounds(at, data, device)
        ranges = profiled_ranges(at, profiles[rows], backbone.num_units, backbone.positions, data)
        layouts.append(evaluate(at, profiles[rows], ranges, shapes, param_bytes, p, r, m))
    # within TIE of the fastest is a tie, and the fewest replicas win it: measured, the replicated layouts ran
    # slower than the model says, with causes it does not capture (docs/simulator.md#choosing-p-x-r-at-start-up)
    fastest = max(x.samples_per_s for x in layouts)
    best = min((x for x in layouts if x.samples_per_s >= fastest * (1 - TIE)), key=lambda x: x.replicas)
    others = ", ".join(f"{x.stages} x {x.replicas} {x.samples_per_s:.0f}" for x in layouts)
    shared = "GPUs" if device.type == "cuda" else "cores"
    where = f"{m.cores:g} {shared} shared" if m.cores is not None else "a device each"
    line = (
        f"pipeline.replicas=auto: P x R = {best.stages} x {best.replicas} of {world} processes, simulated on {device} "
        f"profiles ({where}; samples/s {others}; --pipeline.replicas={best.replicas} reproduces it)"
    )
    return Plan(best.replicas, layouts, profiles[best.rows], key, line)


class AutoReplicas:
    """``pipeline.replicas: auto`` at start-up: called on rank 0 before the process groups exist (they depend on
    R), it reads the data (kept for the run: ``loaded``), plans and returns R; ``plan`` says how."""

    def __init__(self, cfg: JobConfig):
        self.cfg, self.plan, self.loaded = cfg, None, None

    def __call__(self, world: int, device: torch.device, backend: str) -> int:
        from pipelocal.data import build_loaders

        process.configure(self.cfg, device, multi_process=True)  # profiled as the stages will train
        self.loaded = build_loaders(self.cfg.data, device, self.cfg.train.seed)
        self.plan = plan_mesh(self.cfg, self.loaded[2], device, world, backend)
        return self.plan.replicas

    def resolved(self, cfg: JobConfig, replicas: int) -> JobConfig:
        """``cfg`` with the chosen R: what the run trains, records in config.yaml and resumes with."""
        return _with_replicas(cfg, replicas)
