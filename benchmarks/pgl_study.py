"""What periodic global guidance (PGL) buys, with error bars: local methods x K x guidance schedules x seeds.

    python benchmarks/pgl_study.py                                   # the full grid (2.5-3 hours on 2 cores)
    python benchmarks/pgl_study.py --modules 16 --methods greedy infopro --seeds 3   # a slice
    python benchmarks/pgl_study.py --resume                          # keep the runs that finished
    python benchmarks/pgl_study.py --tabulate                        # run nothing: the table of the cells that finished

Fashion-MNIST, CIFAR-style ResNet-32 (16 units: K = 16 is one block per module), sequential mode (the papers'
protocol; each method's own configs/fmnist/<method>_k4.yaml for its knobs, K overridden), every run with the
same epochs, batch, learning rate and schedule (``--set`` for all; by default the study's budget, BUDGET). Per cell
(method, K, schedule): final test top-1 over ``--seeds`` seeds (mean ± sample std, and each seed), its gap to
e2e's mean and its gain over the unguided run, each with the standard error of a difference of two means
(sqrt(s1^2/n1 + s2^2/n2)), and the share of the gap the schedule closes; what the schedule costs:
the fraction of steps that are guidance steps, training minutes, and the peak saved activations in one
process (a guided step keeps every module's graph: e2e's peak). Throughput in the P = 2 pipeline is what
``benchmarks/guidance_ablation.py`` measures for the same schedules.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from accuracy import run_name, run_one
from common import hardware, results_dir, write_outputs

BUDGET = ["data.train_subset=6000", "data.test_subset=2000", "train.epochs=3"]  # 141 steps: the grid in 2.5-3 h here
SCHEDULES = {  # name -> config overrides
    "off": [],
    "every 10": ["guidance.every=10"],
    "every 2": ["guidance.every=2"],
    "dense-to-sparse 2-20": ["guidance.every=2", "guidance.every_end=20"],
    "burst 2 of 10": ["guidance.every=10", "guidance.burst=2"],
}
COLUMNS = [
    "method",
    "K",
    "guidance",
    "seeds",
    "final top-1 mean",
    "std",
    "per seed",
    "gap to e2e (points)",
    "gap se",
    "gain over off (points)",
    "gain se",
    "gap closed",
    "guided steps",
    "train minutes",
    "peak saved MiB",
]


def spec(method: str, k: int, schedule: str) -> str:
    """The method's Fashion-MNIST config (its knobs; the same optimiser, batch and epochs in every one) at K."""
    return f"configs/fmnist/{method}_k4.yaml@" + ",".join([f"split.num_modules={k}", *SCHEDULES[schedule]])


def cell(runs) -> dict:
    finals = [s.final_top1 for s, _ in runs]
    first = runs[0][0]
    return {
        "mean": statistics.fmean(finals),
        "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "finals": finals,
        "guided": first.guidance_steps / max(first.steps, 1),
        "minutes": statistics.fmean(s.train_seconds for s, _ in runs) / 60,
        "peak": first.saved_bytes_peak_max / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", nargs="*", type=int, default=[4, 8, 16])
    parser.add_argument("--methods", nargs="*", default=["greedy", "dgl", "infopro"])
    study = [s for s in SCHEDULES if s != "burst 2 of 10"]
    parser.add_argument("--schedules", nargs="*", default=study, choices=list(SCHEDULES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=BUDGET, help="overrides for every run (key=value; replace BUDGET)")
    parser.add_argument("--out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--tabulate", action="store_true", help="run nothing; tabulate the cells whose seeds all finished"
    )
    args = parser.parse_args()
    folder = results_dir("pgl_study", args.out)
    shared = ["--model.depth=32", "--split.balance=uniform", *[f"--{kv}" for kv in args.set]]

    def runs(spec_: str):
        if args.tabulate and not all(_finished(folder, spec_, seed) for seed in range(args.seeds)):
            return None
        return [
            run_one(spec_, shared, folder / "runs", 1, args.resume or args.tabulate, seed) for seed in range(args.seeds)
        ]

    e2e_runs = runs("configs/fmnist/e2e.yaml")
    if e2e_runs is None:
        raise SystemExit(f"--tabulate: e2e has not finished {args.seeds} seeds in {folder / 'runs'}")
    e2e = cell(e2e_runs)
    rows = [["e2e", 1, "-", args.seeds, e2e["mean"], e2e["std"], _seeds(e2e), 0.0, *[None] * 4, 1.0, None, None]]
    cells, missing = {}, []
    for k in args.modules:
        for method in args.methods:
            for schedule in args.schedules:
                found = runs(spec(method, k, schedule))
                if found is None:
                    missing.append(f"{method} K={k} {schedule}")
                    continue
                c = cells[(method, k, schedule)] = cell(found)
                off = cells.get((method, k, "off"))
                guided = off is not None and schedule != "off"
                gain, gain_se = _difference(c, off) if guided else (None, None)
                rows.append(
                    [method, k, schedule, args.seeds, round(c["mean"], 4), round(c["std"], 4), _seeds(c),
                     *_difference(e2e, c), gain, gain_se, _closed(e2e, off, c) if guided else None,
                     round(c["guided"], 3), round(c["minutes"], 2), round(c["peak"], 1)]
                )  # fmt: skip
    header = (
        f"# What periodic guidance buys (PGL study)\n\nhardware: {hardware()}; Fashion-MNIST, ResNet-32 (16 units), "
        f"sequential mode, uniform split, seeds 0..{args.seeds - 1} per cell; shared overrides: "
        f"{' '.join(shared)}.\n\ngap to e2e: e2e's mean final top-1 minus the cell's, in points; gain over off: the "
        "cell's mean minus the unguided run's, in points; se: the standard error of that difference of two means, "
        "sqrt(s1^2/n1 + s2^2/n2) (a difference within about 2 se is not separable from seed noise); gap closed: "
        "the share of the unguided run's gap this schedule removes ((guided - off) / (e2e - off), means; not given "
        "where that gap is within 2 se). guided steps: fraction of steps that are end-to-end; peak saved MiB: the "
        "largest saved activations of any module while it ran (one process: a guided step keeps every module's "
        "graph).\n\ncommand: python benchmarks/pgl_study.py "
        + " ".join(_argv(args))
        + (f"\n\nnot run (cells without all {args.seeds} seeds): {'; '.join(missing)}" if missing else "")
    )
    meta = {"hardware": hardware(), "e2e": e2e, "cells": {f"{m}-K{k}-{s}": c for (m, k, s), c in cells.items()}}
    print(write_outputs(folder, "pgl_study", COLUMNS, rows, meta, header))
    plot(folder, e2e, cells, args)


def _finished(folder: Path, spec_: str, seed: int) -> bool:
    return (folder / "runs" / run_name(spec_, seed) / "summary.json").exists()


def _seeds(c: dict) -> str:
    return " / ".join(f"{v:.4f}" for v in c["finals"])


def _difference(a: dict, b: dict) -> tuple[float, float]:
    """a's mean minus b's in points, and the standard error of that difference."""
    se = (a["std"] ** 2 / len(a["finals"]) + b["std"] ** 2 / len(b["finals"])) ** 0.5
    return round(100 * (a["mean"] - b["mean"]), 2), round(100 * se, 2)


def _closed(e2e: dict, off: dict, c: dict) -> str:
    """The share of the unguided gap closed; a gap within 2 standard errors is noise, and so would its share be."""
    gap, se = _difference(e2e, off)
    return f"{(c['mean'] - off['mean']) / (gap / 100):.0%}" if gap > 2 * se else "no gap (< 2 se)"


def _argv(args) -> list[str]:
    out = ["--modules", *map(str, args.modules), "--methods", *args.methods, "--seeds", str(args.seeds)]
    out += ["--schedules", *(f'"{s}"' if " " in s else s for s in args.schedules)]
    return out + (["--set", *args.set] if args.set else [])


def plot(folder: Path, e2e: dict, cells: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.modules), figsize=(4.5 * len(args.modules), 3.8), squeeze=False)
    width = 0.8 / len(args.schedules)
    for ax, k in zip(axes[0], args.modules):
        for j, schedule in enumerate(args.schedules):
            found = [(i, cells[(m, k, schedule)]) for i, m in enumerate(args.methods) if (m, k, schedule) in cells]
            xs, cs = [i + j * width for i, _ in found], [c for _, c in found]  # a cell not run leaves a gap
            ax.bar(xs, [c["mean"] for c in cs], width, yerr=[c["std"] for c in cs], capsize=3, label=schedule)
        ax.axhline(e2e["mean"], color="k", lw=1, ls="--", label="e2e (band: ± std)")
        ax.axhspan(e2e["mean"] - e2e["std"], e2e["mean"] + e2e["std"], color="k", alpha=0.07)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(args.methods))], args.methods)
        low = min([c["mean"] - c["std"] for (m, kk, s), c in cells.items() if kk == k] or [e2e["mean"]])
        ax.set_ylim(low - 0.01, max(e2e["mean"] + e2e["std"], low) + 0.005)
        ax.set_title(f"K = {k}: final top-1 (mean ± std over {args.seeds} seeds)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "pgl_study.png", dpi=110)


if __name__ == "__main__":
    main()
