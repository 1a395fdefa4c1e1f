"""Train a list of configs to completion and tabulate final/best test top-1, samples/s and memory.

    python benchmarks/accuracy.py configs/fmnist/{e2e,greedy_k4,dgl_k4,infopro_k4}.yaml --set train.epochs=3
    python benchmarks/accuracy.py configs/fmnist/infopro_guided_k4.yaml@guidance.every=50 ...
    python benchmarks/accuracy.py configs/fmnist/{e2e,infopro_k4}.yaml --seeds 3   # mean ± std over seeds 0, 1, 2

Each config runs in its own process (``python -m pipelocal.run``), one after the other, with the same
overrides (``--set``) plus its own (``CONFIG@key=value,key=value``); the table, JSON, CSV and a PNG land
under benchmarks/results/<hardware>-<date>/accuracy/ (or ``--out``). ``--resume`` keeps runs that finished
and continues those that stopped.
``--seeds N`` runs every config with ``train.seed`` = 0 .. N-1 (model init and data order): its row gives the
mean and sample standard deviation of final and best top-1 over the seeds, and each seed's final figure;
the PNG draws the spread.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from pathlib import Path

from common import hardware, pipelocal_command, results_dir, run_job, write_outputs

from pipelocal.metrics.summary import RunSummary

COLUMNS = [
    "config",
    "method",
    "K",
    "final top-1",
    "best top-1 (epoch)",
    "samples/s",
    "guided steps",
    "train minutes",
    "peak saved MiB (max module)",
    "saved MiB per module",
    "minutes",
]


SEED_COLUMNS = ["seeds", "final top-1 std", "best top-1 mean", "best top-1 std", "final top-1 per seed"]


def parse_spec(spec: str) -> tuple[str, str, list[str]]:
    """``CONFIG[@key=value,...]`` -> (config path, run name, overrides)."""
    config, _, extra = spec.partition("@")
    pairs = [kv for kv in extra.split(",") if kv]
    name = Path(config).stem + "".join(f"-{kv.split('.')[-1]}" for kv in pairs)
    return config, name, [f"--{kv}" for kv in pairs]


def run_name(spec: str, seed: int | None = None) -> str:
    """The folder name of ``spec``'s run (with ``seed``) under the runs folder."""
    name = parse_spec(spec)[1]
    return name if seed is None else f"{name}-seed{seed}"


def run_one(
    spec: str, overrides: list[str], run_root: Path, nproc: int, resume: bool, seed: int | None = None
) -> tuple[RunSummary, dict]:
    """The run's summary, and this script's record of it (wall minutes and command)."""
    config, _, own = parse_spec(spec)
    name = run_name(spec, seed)
    if seed is not None:
        own = [*own, f"--train.seed={seed}"]
    summary_path = run_root / name / "summary.json"
    wall_path = run_root / name / "benchmark.json"  # this script's own record: wall minutes and command
    if resume and summary_path.exists():
        print(f"# {name}: finished before, kept ({summary_path})", flush=True)
        wall = json.loads(wall_path.read_text()) if wall_path.exists() else {}
        return RunSummary.load(summary_path), wall
    args = [
        "--config",
        config,
        *overrides,
        *own,
        f"--metrics.out_dir={run_root}",
        f"--metrics.run_name={name}",
        "--metrics.console=plain",
    ]
    if resume and (run_root / name).exists():  # stopped before its summary: continue from its checkpoint
        args.append("--train.resume=auto")
    start = time.perf_counter()
    cmd = pipelocal_command(args, nproc)
    summary = run_job(cmd, run_root / name, Path.cwd(), quiet=False)
    wall = {"minutes": (time.perf_counter() - start) / 60, "command": shlex.join(cmd)}
    wall_path.write_text(json.dumps(wall))
    return summary, wall


def row(spec: str, s: RunSummary, wall: dict) -> list:
    mib = [round(b / 2**20, 1) for b in s.saved_bytes_peak]
    return [
        parse_spec(spec)[1],
        s.method,
        s.num_modules,
        s.final_top1,
        f"{s.best_top1:.4f} ({s.best_epoch})",
        round(s.samples_per_s_median, 1),
        f"{s.guidance_steps} / {s.steps}",
        round(s.train_seconds / 60, 1),
        max(mib),
        " / ".join(map(str, mib)),
        round(wall["minutes"], 1) if "minutes" in wall else None,  # runs kept from before this record existed
    ]


def seeds_row(spec: str, runs: list[tuple[RunSummary, dict]]) -> list:
    """One config over its seeds: the first seed's row with the mean final top-1, then the spread."""
    final = [s.final_top1 for s, _ in runs]
    best = [s.best_top1 for s, _ in runs]
    std = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    out = row(spec, *runs[0])
    out[3] = round(statistics.fmean(final), 4)
    out[4] = f"{statistics.fmean(best):.4f}"
    return out + [
        len(runs),
        round(std(final), 4),
        round(statistics.fmean(best), 4),
        round(std(best), 4),
        " / ".join(f"{v:.4f}" for v in final),
    ]


def plot(folder: Path, rows: list[list]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r[0] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    spread = [r[len(COLUMNS) + 1] for r in rows] if len(rows[0]) > len(COLUMNS) else None
    axes[0].bar(names, [r[3] for r in rows], yerr=spread, capsize=4)
    for i, r in enumerate(rows):
        if spread is not None:  # each seed's figure over the mean's bar
            seeds = [float(v) for v in r[-1].split(" / ")]
            axes[0].plot([i] * len(seeds), seeds, "k.", ms=4)
    axes[0].set_title("final test top-1" + (" (mean, ± std, seeds)" if spread is not None else ""))
    axes[0].set_ylim(min(r[3] for r in rows) - 0.05, 1.0)
    axes[1].bar(names, [r[5] for r in rows])
    axes[1].set_title("train samples/s (median epoch)")
    axes[2].bar(names, [r[COLUMNS.index("peak saved MiB (max module)")] for r in rows])
    axes[2].set_title("peak saved activations, MiB (largest module)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"pipelocal accuracy benchmark on {hardware()}")
    fig.tight_layout()
    fig.savefig(folder / "accuracy.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="CONFIG or CONFIG@section.key=value,section.key=value")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every config, as section.key=value")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/<hardware>-<date>/accuracy)")
    parser.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun), for multi-process modes")
    parser.add_argument("--resume", action="store_true", help="keep runs whose summary.json exists in the folder")
    parser.add_argument("--seeds", type=int, default=0, help="N: run each config with train.seed = 0 .. N-1")
    args = parser.parse_args()
    folder = results_dir("accuracy", args.out)
    overrides = [f"--{kv}" for kv in args.set]
    if args.seeds:
        grouped = [
            [run_one(c, overrides, folder / "runs", args.nproc, args.resume, seed) for seed in range(args.seeds)]
            for c in args.configs
        ]
        rows = [seeds_row(c, g) for c, g in zip(args.configs, grouped)]
        runs = [r for g in grouped for r in g]
        columns = COLUMNS + SEED_COLUMNS
    else:
        runs = [run_one(c, overrides, folder / "runs", args.nproc, args.resume) for c in args.configs]
        rows = [row(c, s, wall) for c, (s, wall) in zip(args.configs, runs)]
        columns = COLUMNS
    first, _ = runs[0]
    header = (
        f"# Accuracy, throughput and memory per method\n\nhardware: {hardware()}, torch threads: "
        f"{first.torch_threads}, device: {first.device}"
        f"\n\noverrides: {' '.join(args.set) or 'none'}"
        "\n\ncommand:\n\n    python benchmarks/accuracy.py "
        + " ".join(args.configs)
        + (" --set " + " ".join(args.set) if args.set else "")
        + (f" --seeds {args.seeds}" if args.seeds else "")
        + "\n\nbest top-1 is the best over evaluated epochs (what the papers report); final is the last epoch's."
        " samples/s is the median over epochs of training samples per second (evaluation excluded); train minutes"
        " sums the epochs' training time. guided steps: end-to-end guidance steps / all steps."
        + (
            f" With --seeds {args.seeds}: final top-1 is the mean over seeds 0..{args.seeds - 1}, std the sample"
            " standard deviation; the other columns are seed 0's."
            if args.seeds
            else ""
        )
    )
    meta = {"hardware": hardware(), "summaries": [s.to_dict() | wall for s, wall in runs]}
    print(write_outputs(folder, "accuracy", columns, rows, meta, header))
    plot(folder, rows)


if __name__ == "__main__":
    main()
