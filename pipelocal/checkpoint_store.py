"""Checkpoint storage: folders in ``torch.distributed.checkpoint`` (DCP) format, written whole or not at all,
checked by size and SHA-256, the newest intact one found; what goes into a checkpoint is checkpoint.py's.

A checkpoint is a folder ``<run dir>/checkpoints/step-<8 digits>`` (the step is the next training step to run).
``meta.json`` is written last, after DCP's own ``.metadata``, with the size and SHA-256 of every file. A folder
is written as ``.step-<n>.tmp-<attempt>`` and renamed when complete, so a checkpoint is complete or absent;
:func:`problem` finds a truncated or corrupted one by its sizes and digests. DCP does the tensors (sharded
writes, any number of readers); the commit protocol, integrity checks and pruning around it are written here
because DCP leaves them to the caller (docs/checkpoints.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

FORMAT = 1
META = "meta.json"
PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: missing, incomplete, corrupted, or of a different network."""


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


def load(path: Path, state: dict, group=None) -> None:
    """Fill ``state`` (this rank's keys, every one present in the checkpoint) in place from ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(path), process_group=group, no_dist=group is None)
