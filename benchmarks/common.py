"""What every benchmark shares: the hardware line, the results folder, and table/JSON/CSV/PNG writers."""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from pipelocal.metrics.summary import RunSummary

RESULTS = Path(__file__).resolve().parent / "results"


# Fashion-MNIST is not installed on every host: data of its shape costs the same to train on
SYNTHETIC = ["--data.name=synthetic", "--data.synthetic_shape=[1,28,28]", "--data.synthetic_test=256"]


def hardware() -> str:
    """A short, file-name-safe description of the device the benchmark ran on."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return f"{torch.cuda.device_count()}x{name}".replace(" ", "-")
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(__import__("os").sched_getaffinity(0))
    name = f"cpu-{cores}core-" + "".join(c if c.isalnum() else "-" for c in cpu).strip("-")[:40]
    # Hosts that report one model name differ in vector units (an AVX2-only and an AVX-512 "AMD EPYC" both
    # served this project): the folder names torch's CPU capability, so their figures never share a folder
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return name if capability == "default" else f"{name}-{capability}"


def results_dir(name: str, out: str | None = None) -> Path:
    folder = Path(out) if out else RESULTS / f"{hardware()}-{time.strftime('%Y-%m-%d')}" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def markdown_table(columns: list[str], rows: list[list]) -> str:
    def cell(v):
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(folder: Path, stem: str, columns: list[str], rows: list[list], meta: dict, header: str) -> str:
    """Write <stem>.md (header + table), .json (meta + rows) and .csv; return the markdown.

    ``meta`` may hold summaries (dataclasses): they are written as the plain data of their ``summary.json``.
    """
    text = header.rstrip() + "\n\n" + markdown_table(columns, rows) + "\n"
    (folder / f"{stem}.md").write_text(text)
    data = {**meta, "columns": columns, "rows": rows}
    (folder / f"{stem}.json").write_text(json.dumps(data, indent=2, default=dataclasses.asdict))
    with (folder / f"{stem}.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return text


def pipelocal_command(args: list[str], nproc: int = 1) -> list[str]:
    """``python -m pipelocal.run ARGS`` for one process, torchrun (standalone, no restarts) for several."""
    if nproc == 1:
        return [sys.executable, "-m", "pipelocal.run", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        "-m",
        "pipelocal.run",
        *args,
    ]


def run_job(cmd: list[str], run_dir: Path, cwd: Path, quiet: bool = True) -> RunSummary:
    """Run one job (quiet: its output is only in its run directory) and return its summary."""
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.DEVNULL if quiet else None)
    return RunSummary.load(run_dir)
