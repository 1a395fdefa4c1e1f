"""A small sweep runner: a YAML grid over config keys, each point a real run, gathered into one table.

    python benchmarks/ablate.py configs/ablations/queue_depth.yaml
    python benchmarks/ablate.py configs/ablations/queue_depth.yaml --out /tmp/sweep   # resume: done points skip

Grid file:

    base: configs/fmnist/pipeline_infopro_p2.yaml   # the config every point starts from
    nproc: 2                                        # processes (torchrun); 1 runs python -m pipelocal.run
    set: {train.epochs: 1}                          # overrides shared by every point
    grid:                                           # the cartesian product of these values
      pipeline.queue_depth: [1, 2, 4]
      split.balance: [uniform, time]
      nproc: [2]                                    # P may be swept too
      buffer:                                       # a list of mappings: each is one value of a joint key
        - {pipeline.buffer: fifo}
        - {pipeline.buffer: replay, pipeline.buffer_size: 4}

Each point runs in its own folder under the results folder; a point whose summary.json exists is not
run again, so an interrupted sweep resumes. Writes ablation.md/.json/.csv and a PNG of samples/s.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import hardware, pipelocal_command, results_dir, write_outputs

from pipelocal.metrics.console import Console
from pipelocal.metrics.summary import RunSummary

ROOT = Path(__file__).resolve().parent.parent


def points(spec: dict) -> list[dict]:
    """The grid's cartesian product, in file order; each point maps key -> value (a mapping value sets
    several keys together)."""
    keys = list(spec.get("grid", {}))
    values = [spec["grid"][k] if isinstance(spec["grid"][k], list) else [spec["grid"][k]] for k in keys]
    out = []
    for combo in itertools.product(*values):
        point: dict = {}
        for key, value in zip(keys, combo):
            point.update(value if isinstance(value, dict) else {key: value})
        out.append(point)
    return out


def point_name(point: dict) -> str:
    text = "_".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())
    return "".join(c if c.isalnum() or c in "=_-." else "-" for c in text) or "base"


def command(spec: dict, point: dict, run_root: Path, name: str) -> list[str]:
    nproc = int(point.get("nproc", spec.get("nproc", 1)))
    overrides = {**spec.get("set", {}), **{k: v for k, v in point.items() if k != "nproc"}}
    args = [
        "--config",
        spec["base"],
        *[f"--{k}={_yaml(v)}" for k, v in overrides.items()],
        f"--metrics.out_dir={run_root}",
        f"--metrics.run_name={name}",
        "--metrics.console=none",
    ]
    return pipelocal_command(args, nproc)


def _yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def point_keys(todo: list[dict]) -> list[str]:
    """Every key some point sets, in first-seen order (the table's leading columns)."""
    return list(dict.fromkeys(k for point in todo for k in point))


def row(point: dict, summary: RunSummary, keys: list[str]) -> list:
    best = summary.best_top1
    return [
        *(point.get(k) for k in keys),
        round(summary.samples_per_s_median, 1),
        summary.final_top1,
        None if best is None else round(best, 4),
        round(summary.saved_bytes_peak_max / 2**20, 1),
    ]


def sweep(spec: dict, run_root: Path, title: str) -> tuple[list[dict], list[RunSummary]]:
    """Run every point of the grid that has no summary yet; return the points and their summaries."""
    todo = points(spec)
    console = Console("auto")
    summaries, start, ran = [], time.perf_counter(), 0
    with console.progress(f"sweep {title}", len(todo)) as update:
        for i, point in enumerate(todo):
            name = point_name(point)
            done = run_root / name / "summary.json"
            if not done.exists():
                cmd = command(spec, point, run_root, name)
                console.print("$ " + shlex.join(cmd))
                subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
                ran += 1
            summaries.append(RunSummary.load(done))
            update(i + 1, {"point": name, "ran": ran, "elapsed_s": round(time.perf_counter() - start)})
    return todo, summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", help="grid YAML file")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/<hardware>-<date>/ablate-<grid>)")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.grid).read_text())
    folder = results_dir(f"ablate-{Path(args.grid).stem}", args.out)
    todo, summaries = sweep(spec, folder / "runs", Path(args.grid).stem)
    keys = point_keys(todo)
    columns = [*keys, "samples/s", "final top-1", "best top-1", "max stage saved MiB"]
    rows = [row(p, s, keys) for p, s in zip(todo, summaries)]
    header = (
        f"# Ablation {Path(args.grid).stem}\n\nhardware: {hardware()}; grid file: {args.grid}\n\n"
        f"```yaml\n{yaml.safe_dump(spec, sort_keys=False).strip()}\n```\n\n"
        f"command: python benchmarks/ablate.py {' '.join(sys.argv[1:])}"
    )
    print(
        write_outputs(
            folder, "ablation", columns, rows, {"hardware": hardware(), "spec": spec, "summaries": summaries}, header
        )
    )
    plot(folder, [point_name(p) for p in todo], [r[len(keys)] for r in rows])


def plot(folder: Path, names: list[str], rates: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names)), 4))
    ax.bar(range(len(names)), rates)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("samples/s (median epoch)")
    ax.set_title(f"ablation on {hardware()}")
    fig.tight_layout()
    fig.savefig(folder / "ablation.png", dpi=110)


if __name__ == "__main__":
    main()
