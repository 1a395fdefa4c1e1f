"""One job's lifecycle, the same in every mode: start-up, the shared set-up, build, train, save, teardown.

Start-up: a multi-process mode joins the job torchrun started (distributed/setup.py; with
``pipeline.replicas: auto``, rank 0 first chooses R, sim/mesh.py), a one-process mode gets a one-stage
topology. Set-up (collectives, before any data moves): rank 0 reads the dataset, names the run directory
and chooses the split (profiling, when asked), and every rank learns the numbers it needs. Then the
mode's registered builder (``schedules.MODES``) builds this rank's step strategy, every
rank from the same seed, and the one trainer (trainer.py) runs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from pipelocal import checkpoint
from pipelocal.checkpoint import save_stage
from pipelocal.config import ConfigError, JobConfig
from pipelocal.config_parse import dump_yaml
from pipelocal.data import build_loaders
from pipelocal.distributed.setup import destroy_distributed, init_distributed
from pipelocal.distributed.topology import Topology
from pipelocal.identity import check_resumable, locate_run, set_aside_newer
from pipelocal.methods import METHODS
from pipelocal.methods.base import LocalMethod
from pipelocal.metrics import timeline
from pipelocal.metrics.console import Console
from pipelocal.metrics.run_log import Place, RunLog
from pipelocal.metrics.summary import RunSummary
from pipelocal.metrics.timeline import TIMELINE
from pipelocal.preemption import Preemption
from pipelocal.runtime import determinism, process
from pipelocal.runtime.profile import split_for
from pipelocal.runtime.watchdog import Watchdog
from pipelocal.schedules import MODES, Mode
from pipelocal.sim.mesh import AutoReplicas
from pipelocal.trainer import Trainer


def run_job(cfg: JobConfig) -> RunSummary | None:
    """Run this rank's part to the end; rank 0 returns the summary, the others None. A preemption raises
    :class:`Preempted` once every stage has written its part of the checkpoint."""
    mode: Mode = MODES.get(cfg.mode)
    auto = AutoReplicas(cfg) if cfg.pipeline.replicas == "auto" else None
    topo, groups = start(cfg, mode, auto)
    if auto is not None:
        cfg = auto.resolved(cfg, topo.dp)
    console = Console(cfg.metrics.console if topo.is_coordinator else "none")
    setup, loaders = prepare(cfg, topo, groups, console, auto)
    run_dir = Path(setup["run_dir"])
    strategy = mode.build(cfg, topo, groups, setup, loaders)
    control, stats = (groups.control, groups.stats) if groups is not None else (None, None)
    resumed = None
    if setup["resume"] and len(strategy.plan.train_rows) != setup["resume_steps_per_epoch"]:
        raise ConfigError(
            f"checkpoint {setup['resume']} was written with {setup['resume_steps_per_epoch']} steps per epoch, this "
            f"run has {len(strategy.plan.train_rows)}: the data or batch differ, so its step numbers mean other "
            "batches. Resume with the same data, or start a new run"
        )
    if setup["resume"]:
        strategy.load_checkpoint(setup["resume"], control)
        resumed = checkpoint.load_rank_object(setup["resume"], topo, control, strategy.stage)
        if resumed is not None:
            checkpoint.set_rng_state(resumed["rng"], topo.device)
    console.print(describe(cfg, topo, strategy, run_dir))
    TIMELINE.configure(cfg.metrics.timeline)
    if cfg.metrics.timeline and topo.distributed:
        TIMELINE.offset_ns = timeline.clock_offset(groups.control)
    place = Place(
        topo.rank,
        topo.world_size,
        topo.stage_index,
        topo.replica,
        topo.num_stages,
        topo.device,
        topo.backend,
        tuple(topo.other_ranks()),
    )
    log = RunLog(cfg, place, console, run_dir, control, stats, setup["history"])
    saver = checkpoint.Saver(cfg, topo, control, run_dir, setup["ranges"])
    # Replay stages train unplanned step counts, so no common step exists to stop at: a signal ends them as before.
    preemption = (
        Preemption(topo.stage_index, groups.preempt if groups else None) if cfg.pipeline.buffer == "fifo" else None
    )
    try:
        summary = Trainer(cfg, strategy, log, saver, resumed, preemption).fit()
    except BaseException:
        if preemption is not None:
            preemption.abandon()
        raise
    if preemption is not None:
        preemption.close()
    if determinism.NONDETERMINISTIC.line():
        console.print(determinism.NONDETERMINISTIC.line())
    if cfg.metrics.timeline:
        write_timeline(topo, groups, console, run_dir)
    state = strategy.state_dict()
    if state is not None:
        save_stage(state, run_dir, topo.stage_index)  # a stage's data replicas hold the same weights
    if topo.distributed:
        dist.barrier(group=groups.control)
        destroy_distributed()
    if _watchdog is not None:
        _watchdog.close()
    return summary


_watchdog: Watchdog | None = None


def write_timeline(topo: Topology, groups, console: Console, run_dir: Path) -> None:
    """Every rank's spans to rank 0, which writes the merged timeline and says what recording cost."""
    TIMELINE.stop()
    ranks = timeline.gather(TIMELINE, topo.rank, topo.stage_index, topo.replica, groups.control if groups else None)
    if ranks is None:
        return
    path = timeline.write(ranks, run_dir)
    if not (run_dir / "timeline.png").exists():  # asked for (metrics.timeline), so say why it is missing
        console.print("timeline.png not drawn: matplotlib is not installed (pip install 'pipelocal[plots]')")
    spans = sum(len(r["spans"]) for r in ranks)
    trained = sum(dur for r in ranks for name, _, dur, _ in r["spans"] if name == "train") * 1e3  # ns
    cost = sum(r["cost_ns"] for r in ranks) + spans * timeline.span_cost_ns()
    console.print(
        f"timeline: {spans} spans of {len(ranks)} processes in {path} (open in https://ui.perfetto.dev); "
        f"recording cost {100 * cost / max(trained, 1):.2f}% of the recorded steps' time"
    )


def start(cfg: JobConfig, mode: Mode, auto: AutoReplicas | None = None):
    """The topology (and process groups) of this process; threads and determinism as configured. ``auto``:
    chooses R at start-up (``pipeline.replicas: auto``)."""
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts (runtime/determinism.py)
    if mode.traits.multi_process:
        topo, groups = init_distributed(
            cfg.pipeline.timeout_s,
            data_parallel=mode.traits.data_parallel,
            replicas=auto or cfg.pipeline.replicas,
            backend=cfg.distributed.backend,
            device=cfg.train.device,
            channels=frozenset() if mode.traits.end_to_end else stage_channels(cfg),
        )
        if groups.staged and mode.traits.end_to_end and not mode.traits.data_parallel:
            raise ConfigError(
                f"mode={cfg.mode} needs one GPU per process (torch.distributed.pipelining sends over NCCL), but "
                f"torchrun started more processes than this node has GPUs: run it with --nproc_per_node=<GPUs>, "
                "or on the CPU with --train.device=cpu"
            )
        global _watchdog  # noqa: PLW0603 (one per process; it ends with the process in any case)
        _watchdog = Watchdog(cfg.pipeline.timeout_s, topo.stage_index)
    else:
        check_single_process(cfg.mode)
        topo, groups = Topology.single(pick_device(cfg.train.device)), None
    process.configure(cfg, topo.device, mode.traits.multi_process)
    return topo, groups


def stage_channels(cfg: JobConfig) -> frozenset[str]:
    """The kinds of link a local pipeline's stages may use (distributed/setup.py sets up and warms each):
    activations always, gradients (guidance, cascades) always, replay streams with pipeline.buffer=replay,
    weights when the method's aux nets follow later units (MLAAN)."""
    channels = {"forward", "backward"}
    if cfg.pipeline.buffer == "replay":
        channels.add("link")
    if METHODS.get(cfg.method.name).followed_units is not LocalMethod.followed_units:
        channels.add("weights")
    return frozenset(channels)


def prepare(cfg: JobConfig, topo: Topology, groups, console: Console, auto: AutoReplicas | None = None):
    """Rank 0 reads the data (``auto`` read it already), makes (or finds) the run directory and chooses the split
    (a resumed run: its checkpoint's); every rank gets the numbers."""
    loaders, setup = None, {}
    if topo.is_coordinator:
        loaded = auto.loaded if auto is not None else None
        train_loader, test_loader, info = loaded or build_loaders(cfg.data, topo.device, cfg.train.seed)
        loaders = (train_loader, test_loader)
        if cfg.data.batch_size > train_loader.num_samples:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} is larger than the {train_loader.num_samples} training "
                "samples; a batch cannot exceed the data: lower data.batch_size (or raise data.train_subset)"
            )
        run_dir, resume = locate_run(cfg, console.print)
        if auto is not None:
            console.print(auto.plan.line)
            auto.plan.record(run_dir)
        checkpoint.clear_partial(run_dir / "checkpoints")
        meta = checkpoint.read_meta(resume) if resume else None
        if meta is not None:
            check_resumable(cfg, meta, resume, run_dir)
            set_aside_newer(run_dir / "checkpoints", resume, console.print)
            ranges = [tuple(r) for r in meta["ranges"]] if meta["ranges"] is not None else None
            console.print(f"resuming from {resume} (step {meta['step']}, epoch {meta['epoch'] + 1})")
        else:
            # profiled once, here, so every rank agrees
            profiled = auto.plan.profile if auto is not None else None  # at the rows this layout runs
            ranges, split_line = split_for(cfg, info, topo.device, topo.num_stages, run_dir, profiled)
            console.print(split_line)
        dump_yaml(cfg, run_dir / "config.yaml")
        console.print(record_data(cfg, info, train_loader.num_samples, test_loader.num_samples, run_dir))
        setup = {
            "info": info,
            "train_len": train_loader.num_samples,
            "test_len": test_loader.num_samples,
            "run_dir": str(run_dir),
            "ranges": ranges,
            "resume": str(resume) if resume else None,
            "start_step": meta["step"] if meta else 0,
            "history": meta["history"] if meta else [],
            "resume_steps_per_epoch": meta["steps_per_epoch"] if meta else None,
        }
    if topo.distributed:
        box = [setup]
        dist.broadcast_object_list(box, src=0, group=groups.control)
        setup = box[0]
    return setup, loaders


def record_data(cfg: JobConfig, info, train_len: int, test_len: int, run_dir: Path) -> str:
    """The data the run read, as a line, and in ``data.json`` (files, sample counts, subsets)."""
    d = cfg.data
    subsets = {"train_subset": d.train_subset or None, "test_subset": d.test_subset or None}
    record = {"name": d.name, "files": list(info.files), "train_samples": train_len, "test_samples": test_len}
    (run_dir / "data.json").write_text(json.dumps({**record, **subsets}, indent=1))
    train = f"first {train_len}" if d.train_subset else f"all {train_len}"
    test = f"first {test_len}" if d.test_subset else f"all {test_len}"
    return f"data: {d.name}, {train} training and {test} test samples, read from {', '.join(info.files) or '?'}"


def describe(cfg: JobConfig, topo: Topology, strategy, run_dir: Path) -> str:
    stage = strategy.stage
    k = stage.method.info.num_modules
    units = ", ".join(f"{i}:{u}" for i, u in enumerate(stage.module_units))
    where = f"{topo.backend} on {topo.device.type}" if topo.distributed else str(topo.device)
    queue = f" | queue depth {cfg.pipeline.queue_depth}" if topo.num_stages > 1 else ""
    replicas = f" x R={topo.dp}" if cfg.pipeline.replicas > 1 else ""
    return (
        f"{cfg.mode} | {cfg.method.name} | {cfg.model.name}-{cfg.model.depth} | K={k} P={topo.num_stages}{replicas}"
        f"{queue} | "
        f"units {units} | {cfg.data.name} | {where} | run dir {run_dir}"
    )


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available; use train.device=cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def check_single_process(mode: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise ConfigError(
            f"mode={mode} runs in one process, but torchrun started {world}; "
            "run it with python -m pipelocal.run, or use a multi-process mode"
        )
