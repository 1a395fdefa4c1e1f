"""The run folder is the run's identity: which folder a job writes to, which checkpoint it continues, and what
a resume may change.

A resume continues a run only with the config that run was trained with, apart from keys that do not touch
the math (:data:`SAFE`: epochs, checkpoints, metrics, timeouts, threads). ``train.resume=auto`` without a run
name continues only a run whose config equals this one (else it starts a new run and says why); with a run
name or a path, a change to any other key is refused with the keys listed, unless ``train.resume_override``
names them: those are then recorded in ``resumes.jsonl`` with the step they took effect at. A finished run
(``summary.json``) is never rewritten. A start that failed before its first epoch leaves a folder that does
not block its name.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pipelocal import checkpoint
from pipelocal.config import ConfigError, JobConfig
from pipelocal.config_parse import to_dict

# Keys a resume may change: when the run stops, what it records, how long it waits, how many threads it uses.
SAFE = ("train.epochs", "train.threads", "train.resume", "train.resume_override", "train.nan_policy")
SAFE_SECTIONS = ("checkpoint.", "metrics.", "pipeline.slowdown.")  # (a straggler injection: same math)
SAFE += ("pipeline.timeout_s", "pipeline.threads", "pipeline.live_every", "data.workers", "data.download")
SAFE += ("train.device", "train.deterministic")
# ... and the layout: a checkpoint of any layout resumes in any other (a P=2 pipeline at P=4 or in one process,
# with other replicas or stage order), which computes the same steps (pipeline = sequential).
SAFE += ("mode", "pipeline.modules_per_stage", "pipeline.replicas", "pipeline.stage_order")

# Keys a checkpoint is bound to: the network, its split and the meaning of a step number. No override takes
# them (a profiled split, balance=time or memory, is not profiled again on resume: the checkpoint's is used).
BOUND = (
    "model.name",
    "model.depth",
    "model.norm",
    "split.num_modules",
    "split.balance",
    "split.table",
    "split.boundaries",
    "method.name",
    "data.name",
    "data.batch_size",
    "data.drop_last",
    "data.train_subset",
    "train.max_steps",
)

# What pipelocal writes into a run folder before its first epoch ends: a folder holding only these (and no
# checkpoint, epoch line or summary) is a start that failed, and its name is free.
START_FILES = {
    "config.yaml",
    "data.json",
    "split.json",
    "mesh.json",
    "live.jsonl",
    "metrics.jsonl",
    "checkpoints",
    "tensorboard",
    "log.txt",
}


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(theirs: dict, cfg: JobConfig) -> dict[str, tuple]:
    """Math-affecting keys whose value differs: key -> (the run's, this config's)."""
    old, new = flat(theirs), flat(to_dict(cfg))
    return {
        k: (old.get(k), new.get(k))
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k) and k in old and k not in SAFE and not k.startswith(SAFE_SECTIONS)
    }  # (a key the run's version did not have yet is taken as its default)


def overrides(cfg: JobConfig) -> list[str]:
    keys = [k.strip() for k in cfg.train.resume_override.split(",") if k.strip()]
    known = flat(to_dict(cfg))
    for key in keys:
        if key not in known:
            raise ConfigError(f"train.resume_override names '{key}', which is not a config key (section.key)")
        if key in BOUND:
            raise ConfigError(
                f"train.resume_override: {key} cannot change on resume (the checkpoint's network and step numbers "
                "depend on it); start a new run"
            )
    return keys


def finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "summary.json").is_file()


def used(run_dir: Path) -> bool:
    """Whether a folder holds a run (a checkpoint, an epoch's line, final weights, a summary)."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    return (
        finished(run_dir)
        or bool(checkpoint.complete(run_dir / "checkpoints"))
        or any(run_dir.glob("stage*.pt"))
        or (metrics.is_file() and metrics.stat().st_size > 0)
    )


def locate_run(cfg: JobConfig, say) -> tuple[Path, Path | None]:
    """The run directory, and the checkpoint to resume from (None: a fresh start).

    ``train.resume=auto`` continues the newest intact checkpoint of the run folder (``metrics.run_name``, or
    without one the newest unfinished ``<mode>-<method>-*`` folder whose config equals this one), or starts
    fresh; a PATH continues that checkpoint (in its own run folder unless ``metrics.run_name`` names another).
    Without resume, a used run folder is an error: nothing is ever overwritten.
    """
    out, name, resume = Path(cfg.metrics.out_dir), cfg.metrics.run_name, cfg.train.resume
    path = None
    if resume == "auto" and name:
        run_dir = out / name
        refuse_finished(run_dir)
        path = checkpoint.latest(run_dir / "checkpoints", say)
        if path is None:
            say(f"train.resume=auto: no complete checkpoint in {run_dir}; starting fresh")
            run_dir = run_dir if used(run_dir) else make_run_dir(cfg, say)
    elif resume == "auto":
        run_dir, path = same_run(cfg, out, say)
        run_dir = run_dir or make_run_dir(cfg, say)
    elif resume:
        try:
            path = checkpoint.resolve(resume, say)
        except checkpoint.CheckpointError as err:
            raise ConfigError(f"train.resume={resume}: {err}") from err
        run_dir = out / name if name else path.parent.parent
        refuse_finished(run_dir)
    else:
        run_dir = make_run_dir(cfg, say)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, path


def same_run(cfg: JobConfig, out: Path, say) -> tuple[Path | None, Path | None]:
    """The newest unfinished run of this config under ``out`` and its checkpoint; (None, None): start anew."""
    runs = sorted(out.glob(f"{cfg.mode}-{cfg.method.name}-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    reasons = []
    for run_dir in runs:
        path = checkpoint.latest(run_dir / "checkpoints", say) if not finished(run_dir) else None
        if path is None:
            continue
        differ = differences(checkpoint.read_meta(path)["config"], cfg)
        if not differ:
            return run_dir, path
        reasons.append(f"{run_dir.name} differs in {', '.join(differ)}")
    why = f" ({'; '.join(reasons[:3])})" if reasons else ""
    say(f"train.resume=auto: no unfinished run of this config in {out}{why}; starting a new run")
    return None, None


def refuse_finished(run_dir: Path) -> None:
    if finished(run_dir):
        raise ConfigError(
            f"run {run_dir} has finished (summary.json) and is never rewritten; to train on from its last "
            f"checkpoint use --train.resume={run_dir} --metrics.run_name=NEW_NAME"
        )


def make_run_dir(cfg: JobConfig, say=print) -> Path:
    """A new run folder; a named one that holds a run is an error (resume it, or pick another name)."""
    out = Path(cfg.metrics.out_dir)
    if cfg.metrics.run_name:
        run_dir = out / cfg.metrics.run_name
        if run_dir.exists() and any(run_dir.iterdir()):
            left = {p.name for p in run_dir.iterdir()}
            if used(run_dir) or not left <= START_FILES:
                raise ConfigError(
                    f"run folder {run_dir} exists already; continue it with --train.resume=auto, or choose another "
                    "--metrics.run_name (nothing is overwritten)"
                )
            for entry in left:  # what a start that failed left behind
                target = run_dir / entry
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            say(f"run folder {run_dir} held only the files of a start that failed: reused")
    else:
        stem = f"{cfg.mode}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir, n = out / stem, 1
        while run_dir.exists():  # two runs started in the same second
            n += 1
            run_dir = out / f"{stem}-{n}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def check_resumable(cfg: JobConfig, meta: dict, path: Path, run_dir: Path) -> None:
    """Refuse a checkpoint of another network or another step numbering, or a changed config not overridden,
    naming the keys that differ; record the overridden ones (and the safe changes) in ``resumes.jsonl``."""
    differ = differences(meta["config"], cfg)
    allowed = overrides(cfg)
    bound = [f"{k}: {differ[k][0]!r} in the checkpoint, {differ[k][1]!r} now" for k in BOUND if k in differ]
    if bound:
        raise ConfigError(
            f"checkpoint {path} was written by a different run: "
            + "; ".join(bound)
            + ". Resume with the same values, or start a new run"
        )
    refused = [f"{k}: {old!r} in the run, {new!r} now" for k, (old, new) in differ.items() if k not in allowed]
    if refused:
        raise ConfigError(
            f"resuming {path} would change what the run trains: "
            + "; ".join(refused)
            + ". Resume with the run's values, start a new run, or take them with --train.resume_override="
            + ",".join(k for k in differ if k not in allowed)
        )
    old = flat(meta["config"])
    changed = {k: [old.get(k), v] for k, v in flat(to_dict(cfg)).items() if k in old and old[k] != v}
    if changed:
        row = {"step": meta["step"], "from": str(path), "overridden": sorted(differ), "changed": changed}
        with (Path(run_dir) / "resumes.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")


def set_aside_newer(root: Path, resume: Path, say) -> None:
    """Resuming from an older checkpoint of this run abandons the newer ones: renamed ``abandoned-step-<n>``
    (kept, but no longer found by resume=auto or pruned as if they came after the new ones)."""
    if Path(resume).parent.resolve() != root.resolve():
        return  # resumed from another run's checkpoint: this folder's own are not superseded
    for path in checkpoint.complete(root):
        if path.name > Path(resume).name:
            path.rename(root / f"abandoned-{path.name}")
            say(f"{path.name} is newer than the checkpoint resumed from: kept as abandoned-{path.name}")
