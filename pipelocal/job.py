"""One job's lifecycle, the same in every mode: start-up, the shared set-up, build, train, save, teardown.

Start-up: a multi-process mode joins the job torchrun started (distributed/setup.py), a one-process mode
gets a one-stage topology. Set-up (collectives, before any data moves): rank 0 reads the dataset, names
the run directory and chooses the split (profiling, when asked), and every rank learns the numbers it
needs. Then the mode's registered builder (``schedules.MODES``) builds this rank's step strategy, every
rank from the same seed, and the one trainer (trainer.py) runs it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pipelocal.checkpoint import save_stage
from pipelocal.config import ConfigError, JobConfig, dump_yaml
from pipelocal.data import build_loaders
from pipelocal.distributed.setup import destroy_distributed, init_distributed
from pipelocal.distributed.topology import Topology
from pipelocal.metrics.console import Console
from pipelocal.metrics.run_log import RunLog
from pipelocal.metrics.summary import RunSummary
from pipelocal.runtime.profile import split_for
from pipelocal.schedules import MODES, Mode
from pipelocal.trainer import Trainer


def run_job(cfg: JobConfig) -> RunSummary | None:
    """Run this rank's part to the end; rank 0 returns the summary, the others None."""
    mode: Mode = MODES.get(cfg.mode)
    topo, groups = start(cfg, mode)
    console = Console(cfg.metrics.console if topo.is_coordinator else "none")
    setup, loaders = prepare(cfg, topo, groups, console)
    run_dir = Path(setup["run_dir"])
    strategy = mode.build(cfg, topo, groups, setup, loaders)
    console.print(describe(cfg, topo, strategy, run_dir))
    control, stats = (groups.control, groups.stats) if groups is not None else (None, None)
    summary = Trainer(cfg, strategy, RunLog(cfg, topo, console, run_dir, control, stats)).fit()
    state = strategy.state_dict()
    if state is not None:
        save_stage(state, run_dir, topo.stage_index)  # a stage's data replicas hold the same weights
    if topo.distributed:
        dist.barrier(group=groups.control)
        destroy_distributed()
    return summary


def start(cfg: JobConfig, mode: Mode):
    """The topology (and process groups) of this process; threads and determinism as configured."""
    if mode.traits.multi_process:
        topo, groups = init_distributed(cfg.pipeline.timeout_s, data_parallel=mode.traits.data_parallel)
        threads = cfg.pipeline.threads if topo.device.type == "cpu" else 0
    else:
        check_single_process(cfg.mode)
        topo, groups, threads = Topology.single(pick_device(cfg.train.device)), None, cfg.train.threads
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    return topo, groups


def prepare(cfg: JobConfig, topo: Topology, groups, console: Console):
    """Rank 0 reads the data, makes the run directory and chooses the split; every rank gets the numbers."""
    loaders, setup = None, {}
    if topo.is_coordinator:
        train_loader, test_loader, info = build_loaders(cfg.data, topo.device, cfg.train.seed)
        loaders = (train_loader, test_loader)
        run_dir = make_run_dir(cfg)
        dump_yaml(cfg, run_dir / "config.yaml")
        ranges, split_line = split_for(cfg, info, topo.device)  # profiled once, here, so every rank agrees
        console.print(split_line)
        setup = {
            "info": info,
            "train_len": train_loader.num_samples,
            "test_len": test_loader.num_samples,
            "run_dir": str(run_dir),
            "ranges": ranges,
        }
    if topo.distributed:
        box = [setup]
        dist.broadcast_object_list(box, src=0, group=groups.control)
        setup = box[0]
    return setup, loaders


def describe(cfg: JobConfig, topo: Topology, strategy, run_dir: Path) -> str:
    stage = strategy.stage
    k = stage.method.info.num_modules
    units = ", ".join(f"{i}:{u}" for i, u in enumerate(stage.module_units))
    where = f"{topo.backend} on {topo.device.type}" if topo.distributed else str(topo.device)
    queue = f" | queue depth {cfg.pipeline.queue_depth}" if topo.num_stages > 1 else ""
    return (
        f"{cfg.mode} | {cfg.method.name} | {cfg.model.name}-{cfg.model.depth} | K={k} P={topo.num_stages}{queue} | "
        f"units {units} | {cfg.data.name} | {where} | run dir {run_dir}"
    )


def make_run_dir(cfg: JobConfig) -> Path:
    name = cfg.metrics.run_name or f"{cfg.mode}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.metrics.out_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


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
