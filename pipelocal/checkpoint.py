"""Checkpoints: what a run needs to continue exactly, in ``torch.distributed.checkpoint`` (DCP) format.

A checkpoint is a folder ``<run dir>/checkpoints/step-<8 digits>`` (the step is the next training step to
run). Every rank writes the keys it owns under the full network's names, so any number of stages can read
it back (a K=4 run saved at P=2 resumes at P=4 or in one process):

- ``model.local_modules.<i>.<name>``: parameters and buffers (BatchNorm statistics, MLAAN's EMA heads);
- ``optim.local_modules.<i>.<param>.<state>``: each module's optimizer state (SGD momentum);
- ``ema.unit<u>.<name>``: a stage's copies of units other stages own (MLAAN in a pipeline);
- ``rank.p<P>x<R>.stage<s>.modules<a>-<b>.replica<r>``: per-process objects (torch RNG states, the
  interrupted epoch's statistics so far).

``meta.json`` is written last, after DCP's own ``.metadata``: the step and epoch, the resolved config, the
unit split, the epoch history (best and last accuracy), and the size and SHA-256 of every file. A folder
is written as ``.step-<n>.tmp-<attempt>`` and renamed when complete, so a checkpoint is complete or absent;
:func:`problem` finds a truncated or corrupted one by its sizes and digests.

``stage<s>.pt`` in the run directory (the final weights as plain ``torch.save`` files) stays as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from pipelocal.metrics.run_files import provenance
from pipelocal.metrics.timeline import TIMELINE

FORMAT = 1
META = "meta.json"
PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: missing, incomplete, corrupted, or of a different network."""


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


# ------------------------------------------------------------------------------------------ writing


def folder_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def save(root: Path, step: int, state: dict, meta: dict | None, group=None, keep: int = 0) -> Path:
    """Write ``state`` (this rank's keys) as checkpoint ``step`` under ``root``; every rank calls it.

    ``meta`` is the coordinator's (None elsewhere). With ``group`` DCP gathers the ranks' plans over it;
    the coordinator writes ``meta.json`` once every rank's data is written, then renames the folder into
    place and keeps the newest ``keep`` (0: all). Returns the checkpoint's folder.
    """
    root = Path(root)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    tmp = root / f".{folder_name(step)}.tmp-{attempt}"
    try:
        return _save(root, tmp, step, state, meta, group, keep)
    except (Exception, dcp.api.CheckpointException) as err:  # DCP's derives from BaseException
        shutil.rmtree(tmp, ignore_errors=True)  # (a folder never renamed into place is no checkpoint anyway)
        raise CheckpointWriteError(
            f"checkpoint step {step} could not be written: {why_not_written(err)} (in {root}); the previous "
            "checkpoint is intact"
        ) from None


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, a peer gone...); the ones before it are untouched."""


def why_not_written(err: BaseException) -> str:
    """The first cause of a failed write in a few words: an OSError's own (ENOSPC: "No space left on device")."""
    causes = [err]
    if isinstance(err, dcp.api.CheckpointException):
        causes = [f[0] if isinstance(f, tuple) else f for f in err.failures.values()] or causes
    for cause in causes:
        while cause.__cause__ is not None and not isinstance(cause, OSError):
            cause = cause.__cause__
        if isinstance(cause, OSError) and cause.strerror:
            return f"{cause.strerror.lower()}" + (f" ({cause.filename})" if cause.filename else "")
    first = causes[0]
    return f"{type(first).__name__}: {str(first).splitlines()[0] if str(first) else ''}".rstrip(": ")


def _save(root: Path, tmp: Path, step: int, state: dict, meta: dict | None, group, keep: int) -> Path:
    distributed = group is not None
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=tmp, process_group=group, no_dist=not distributed)
    final = root / folder_name(step)
    if meta is not None:
        files = {p.name: _digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {"format": FORMAT, **meta, "files": files}
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)  # the same step again (a resumed run passing it): the newer write wins
        os.replace(tmp, final)
        if keep:
            for old in [p for p in complete(root) if p != final][: -(keep - 1) or None]:
                shutil.rmtree(old, ignore_errors=True)
    if distributed:  # nobody leaves (a preempted stage exits next) before the folder is in place
        dist.barrier(group=group)
    return final


def clear_partial(root: Path) -> None:
    """Remove folders a killed run left half-written (coordinator, before any rank writes)."""
    for tmp in Path(root).glob(f".{PREFIX}*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _digest(path: Path) -> dict:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    return {"size": path.stat().st_size, "sha256": sha.hexdigest()}


# ------------------------------------------------------------------------------------------ finding


def complete(root: Path) -> list[Path]:
    """Checkpoint folders under ``root`` that were renamed into place, oldest first (not yet verified)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def problem(path: Path) -> str | None:
    """What is wrong with checkpoint ``path`` (None: complete and intact)."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        return f"{path} has no {META} (not a checkpoint, or written by an interrupted run)"
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        return f"{meta_path} is not valid JSON ({err})"
    for name, want in meta.get("files", {}).items():
        file = Path(path) / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != want["size"]:
            return f"{file} has {file.stat().st_size} bytes, {want['size']} were written (truncated?)"
        if _digest(file)["sha256"] != want["sha256"]:
            return f"{file} does not match its SHA-256 (corrupted)"
    return None


def latest(root: Path, say=print) -> Path | None:
    """The newest intact checkpoint under ``root``; a damaged newer one is named and skipped."""
    for path in reversed(complete(root)):
        wrong = problem(path)
        if wrong is None:
            return path
        say(f"checkpoint {path.name} is damaged and is skipped: {wrong}; falling back to the previous one")
    return None


def resolve(path: str | Path, say=print) -> Path:
    """A checkpoint folder from a checkpoint folder, a ``checkpoints`` folder or a run directory (its newest)."""
    path = Path(path)
    if (path / META).is_file() or (path / ".metadata").is_file():
        wrong = problem(path)
        if wrong:
            raise CheckpointError(f"cannot use checkpoint {path}: {wrong}")
        return path
    for root in (path, path / "checkpoints"):
        found = latest(root, say) if root.is_dir() else None
        if found is not None:
            return found
    raise CheckpointError(f"no complete checkpoint in {path} (looked in {path} and {path / 'checkpoints'})")


def read_meta(path: Path) -> dict:
    return json.loads((Path(path) / META).read_text())


# ------------------------------------------------------------------------------------------ reading


def stored_metadata(path: Path) -> dict[str, tuple]:
    """Every key of checkpoint ``path`` -> (shape, dtype) of its tensor; (None, None) for a stored object."""
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    return {
        k: (tuple(v.size), v.properties.dtype) if hasattr(v, "size") else (None, None)
        for k, v in metadata.state_dict_metadata.items()
    }


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


def load(path: Path, state: dict, group=None) -> None:
    """Fill ``state`` (this rank's keys, every one present in the checkpoint) in place from ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(path), process_group=group, no_dist=group is None)


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
