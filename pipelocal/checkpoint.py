"""Checkpoints: what a run needs to continue exactly, in ``torch.distributed.checkpoint`` (DCP) format.

A checkpoint is a folder ``<run dir>/checkpoints/step-<8 digits>`` (the step is the next training step to
run). Every rank writes the keys it owns under the full network's names, so any number of stages can read
it back (a K=4 run saved at P=2 resumes at P=4 or in one process):

- ``model.local_modules.<i>.<name>``: parameters and buffers (BatchNorm statistics, MLAAN's EMA heads);
- ``optim.local_modules.<i>.<param>.<state>``: each module's optimizer state (SGD momentum);
- ``ema.unit<u>.<name>``: a stage's copies of units other stages own (MLAAN in a pipeline);
- ``rank.p<P>x<R>.stage<s>.modules<a>-<b>.replica<r>``: per-process objects (torch RNG states, the
  interrupted epoch's statistics so far).

``meta.json`` holds the step and epoch, the resolved config, the unit split and the epoch history (best and
last accuracy). How a folder is written, checked and found (DCP, the atomic rename, SHA-256) is
checkpoint_store.py's; this file says what goes in and how a rank reads its part back.

``stage<s>.pt`` in the run directory (the final weights as plain ``torch.save`` files) stays as before.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

import torch
import torch.distributed as dist

# Storage names are used through this module too (checkpoint.resolve, checkpoint.load, ...): one import for callers.
from pipelocal.checkpoint_store import (  # noqa: F401
    CheckpointError,
    CheckpointWriteError,
    clear_partial,
    complete,
    latest,
    load,
    problem,
    read_meta,
    resolve,
    save,
    stored_metadata,
    why_not_written,
)
from pipelocal.metrics.run_files import provenance
from pipelocal.metrics.timeline import TIMELINE

# ------------------------------------------------------------------------------------------ final weights


def stage_path(run_dir: Path, stage_index: int) -> Path:
    return Path(run_dir) / f"stage{stage_index}.pt"


def save_stage(state: dict[str, torch.Tensor], run_dir: Path, stage_index: int) -> None:
    path = stage_path(run_dir, stage_index)
    try:
        torch.save(state, path)
    except OSError as err:
        path.unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"final weights {path} could not be written: {why_not_written(err)}; the last checkpoint is intact"
        ) from None


def load_merged(run_dir: Path) -> dict[str, torch.Tensor]:
    """All stage files of a run merged into one LocalNet state dict."""
    shards = sorted(Path(run_dir).glob("stage*.pt"))
    if not shards:
        raise FileNotFoundError(f"no stage checkpoints (stage*.pt) in {run_dir}")
    merged: dict[str, torch.Tensor] = {}
    for shard in shards:
        merged.update(torch.load(shard, map_location="cpu"))
    return merged


# ------------------------------------------------------------------------------------------ reading


def check_keys(path: Path, own: dict[str, torch.Tensor], stored: dict[str, tuple], prefix: str) -> None:
    """Refuse checkpoint ``path`` unless its keys under ``prefix`` are ``own``'s, with the same shapes."""
    theirs = {k: shape for k, (shape, _) in stored.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(theirs))
    extra = sorted(set(theirs) - set(own))
    shapes = sorted(
        f"{k} {theirs[k]} vs {tuple(v.shape)}" for k, v in own.items() if k in theirs and theirs[k] != tuple(v.shape)
    )
    if missing or extra or shapes:
        parts = [
            f"{what} ({len(keys)}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
            for what, keys in (
                ("not in the checkpoint", missing),
                ("only in the checkpoint", extra),
                ("shapes (checkpoint vs this run)", shapes),
            )
            if keys
        ]
        raise CheckpointError(
            f"checkpoint {path} is of a different network: "
            + "; ".join(parts)
            + ". Resume with the model, split and method it was written with, or start a new run"
        )


def load_model_state(path: Path) -> dict[str, torch.Tensor]:
    """The whole network's state dict (LocalNet names, without ``model.``) of checkpoint ``path``, on the CPU."""
    state = {
        k: torch.empty(shape, dtype=dtype)
        for k, (shape, dtype) in stored_metadata(path).items()
        if k.startswith("model.") and shape is not None
    }
    load(path, state)
    return {k.removeprefix("model."): v for k, v in state.items()}


class Saver:
    """Writes a job's checkpoints: every rank's keys, rank 0's ``meta.json``, in ``<run dir>/checkpoints``."""

    def __init__(self, cfg, topo, group, run_dir: Path, ranges):
        self.cfg, self.topo, self.group, self.ranges = cfg, topo, group, ranges
        self.root = Path(run_dir) / "checkpoints"

    def save(self, step: int, epoch: int, strategy, stats, history) -> Path:
        """The state after ``step - 1``; ``epoch``: the one to run next; ``stats``: its figures so far (or None)."""
        with TIMELINE.span("checkpoint", step=step):
            return self._save(step, epoch, strategy, stats, history)

    def _save(self, step: int, epoch: int, strategy, stats, history) -> Path:
        topo = self.topo
        state = dict(strategy.checkpoint_state())
        scalers = strategy.stage.numerics.state_dict()  # fp16's loss scales (per optimizer); [] otherwise
        mine = {"rng": rng_state(topo.device), "stats": stats, "step": step, "scalers": scalers}
        state[rank_key(topo, strategy.stage)] = pack(mine)
        meta = None
        if topo.is_coordinator:
            meta = {
                "step": step,
                "epoch": epoch,
                "steps_per_epoch": len(strategy.plan.train_rows),
                "ranges": self.ranges,  # as the job gave them to build_local_net (None: from the config)
                "module_units": strategy.stage.module_units,  # every module's [first, last) units
                "stages": topo.num_stages,
                "replicas": topo.dp,
                "history": [record.to_dict() for record in history],
                "config": dataclasses.asdict(self.cfg),
                "written": time.strftime("%Y-%m-%d %H:%M:%S"),
                "provenance": provenance(),
            }
        return save(self.root, step, state, meta, self.group if topo.distributed else None, self.cfg.checkpoint.keep)


def rank_key(topo, stage) -> str:
    """A process's own object, named by its place in a layout and its modules (another layout finds none)."""
    where = f"p{topo.num_stages}x{topo.dp}.stage{topo.stage_index}.modules{stage.first}-{stage.last}"
    return f"rank.{where}.replica{topo.replica}"


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_rank_object(path: Path, topo, group, stage) -> dict | None:
    """This process's object of checkpoint ``path`` (every rank calls it); None when the checkpoint was
    written by another stage layout (the RNG and the interrupted epoch's figures then start afresh)."""
    key = rank_key(topo, stage)
    present = key in stored_metadata(path)
    if topo.distributed:  # a collective load: every rank must take part, with or without a key
        flags = torch.tensor([int(present)])
        dist.all_reduce(flags, op=dist.ReduceOp.MIN, group=group)
        present = bool(flags)
    if not present:
        return None
    state = {key: io.BytesIO()}
    load(path, state, group if topo.distributed else None)
    return unpack(state[key], topo.device)


def pack(obj) -> io.BytesIO:
    """A per-rank object as one stored item (DCP would flatten a dict into keys)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def unpack(buf: io.BytesIO, device=None):
    buf.seek(0)
    return torch.load(buf, map_location=device, weights_only=False)
