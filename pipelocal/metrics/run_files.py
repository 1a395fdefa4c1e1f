"""The run folder's plain files besides the JSONL logs: summary.csv (one row per epoch), and the provenance that
summary.json and each checkpoint's meta.json carry. (log.txt, the console's copy, is console.py's ConsoleFile.)"""

from __future__ import annotations

import csv
import functools
import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from pipelocal.metrics.stats import EpochRecord


def write_summary_csv(history: list[EpochRecord], path: Path) -> None:
    """One row per epoch (rewritten whole at each epoch end, so a resumed run's file holds every epoch): the
    mean training loss of each module's head, the learning rate, test top-1 (final head, then each module's)
    and samples/s at the last stage. Empty cells: not measured (no evaluation that epoch, a head without loss)."""
    modules = max(len(_losses(h)) for h in history)
    probes = max(len(h.module_top1 or []) for h in history)
    header = ["epoch", *[f"loss_m{k}" for k in range(modules)], "lr", "test_top1"]
    header += [f"top1_m{k}" for k in range(probes)] + ["samples_per_s", "wall_s"]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        for h in history:
            losses = _losses(h) + [None] * (modules - len(_losses(h)))
            top1 = (h.module_top1 or []) + [None] * (probes - len(h.module_top1 or []))
            wall = max(s.wall_s for s in h.stages)
            out.writerow(_cells([h.epoch, *losses, h.lr, h.test_top1, *top1, h.samples_per_s, wall]))


def _losses(record: EpochRecord) -> list[float]:
    return [loss for stage in record.stages for loss in stage.loss]


def _cells(values: list) -> list[str]:
    return ["" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in values]


@functools.cache
def provenance() -> dict:
    """Where and how this run ran: versions, the code's git commit (None outside a git checkout), the host and
    its hardware, the command line (this process's; under torchrun, a worker's) and the world size."""
    cuda = torch.cuda.is_available()
    return {
        "pipelocal": _version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,  # the CUDA torch was built with (None: a CPU build)
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }


def _version() -> str | None:
    try:
        return metadata.version("pipelocal")
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """HEAD of the checkout the code runs from (+ "-dirty" with uncommitted changes); None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
