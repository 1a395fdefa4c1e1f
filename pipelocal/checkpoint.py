"""Checkpoints: one file per stage, keyed by the full net's parameter names, so they merge into a
state dict that loads into the sequential LocalNet (and back)."""

from __future__ import annotations

from pathlib import Path

import torch


def stage_path(run_dir: Path, stage_index: int) -> Path:
    return Path(run_dir) / f"stage{stage_index}.pt"


def save_stage(state: dict[str, torch.Tensor], run_dir: Path, stage_index: int) -> None:
    torch.save(state, stage_path(run_dir, stage_index))


def load_merged(run_dir: Path) -> dict[str, torch.Tensor]:
    """All stage files of a run merged into one LocalNet state dict."""
    shards = sorted(Path(run_dir).glob("stage*.pt"))
    if not shards:
        raise FileNotFoundError(f"no stage checkpoints (stage*.pt) in {run_dir}")
    merged: dict[str, torch.Tensor] = {}
    for shard in shards:
        merged.update(torch.load(shard, map_location="cpu"))
    return merged
