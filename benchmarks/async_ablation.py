"""Asynchronous modules for real: replay buffers and stragglers between pipeline stages (DGL's §4.3 study,
across processes instead of simulated in one).

    python benchmarks/async_ablation.py configs/ablations/async_p2.yaml
    python benchmarks/async_ablation.py configs/ablations/async_p2.yaml configs/ablations/async_p4.yaml

Each grid (the ``ablate.py`` format, resumable) sweeps buffer in {fifo, replay M = 1, 4, 16} x the slowdown
of one stage in {1, 1.25, 2} x method. Per point the table gives samples/s and idle fraction per stage,
each stage's steps (a replaying consumer trains more often than its producer produced), the staleness of
what the stages consumed (producer message number minus the one consumed: mean, p95, max over stages),
reuse and drops, and test top-1 two ways: after the fixed number of stage-0 epochs every point runs, and
at a fixed wall-clock budget, the training time the fifo point without slowdown needed for its epochs
(per method and P; the last evaluation that finished within it, evaluations every epoch).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from ablate import point_name, sweep
from common import hardware, results_dir, write_outputs

from pipelocal.metrics.stats import Distribution, EpochRecord, read_epochs
from pipelocal.metrics.summary import RunSummary

COLUMNS = [
    "method",
    "P",
    "buffer",
    "slowdown",
    "samples/s per stage",
    "idle per stage",
    "steps per stage",
    "staleness mean / p95 / max",
    "reused steps",
    "dropped unused",
    "top-1 (stage-0 epochs)",
    "top-1 at budget (epochs done)",
]


def buffer_label(point: dict) -> str:
    if point.get("pipeline.buffer", "fifo") == "fifo":
        return "fifo"
    return f"replay M={point.get('pipeline.buffer_size', 4)}"


def at_budget(records: list[EpochRecord], budget: float) -> tuple[float | None, int]:
    """Test top-1 of the last evaluated epoch that finished within ``budget`` seconds of training."""
    elapsed, top1, done = 0.0, None, 0
    for r in records:
        elapsed += max(s.wall_s for s in r.stages)
        if elapsed > budget * 1.001:
            break
        done += 1
        top1 = r.test_top1 if r.test_top1 is not None else top1
    return top1, done


def table(points: list[dict], summaries: list[RunSummary], run_root: Path) -> list[list]:
    budgets = {}  # the training time of the slowest stage, summed over epochs (as at_budget counts it)
    for p, s in zip(points, summaries):
        if buffer_label(p) == "fifo" and float(p.get("pipeline.slowdown.factor", 1)) == 1:
            budgets[(s.method, s.num_stages)] = s.train_seconds
    rows = []
    for p, s in zip(points, summaries):
        st = s.stages
        stale = [x.staleness for x in st[1:]] or [Distribution()]
        reused = sum(x.steps - x.fresh for x in st if x.reuse)
        budget = budgets.get((s.method, s.num_stages))
        top1, done = at_budget(read_epochs(run_root / point_name(p)), budget) if budget else (None, 0)
        rows.append(
            [
                s.method,
                s.num_stages,
                buffer_label(p),
                float(p.get("pipeline.slowdown.factor", 1)),
                " / ".join(f"{x.samples_per_s_median:.0f}" for x in st),
                " / ".join(f"{x.idle_frac_median:.2f}" for x in st),
                " / ".join(str(x.steps) for x in st),
                f"{max(x.mean for x in stale):.2f} / {max(x.p95 for x in stale)} / {max(x.max for x in stale)}",
                reused,
                sum(x.dropped_unused for x in st),
                s.final_top1,
                f"{top1:.4f} ({done})" if top1 is not None else f"- ({done})",
            ]
        )
    return rows


def plot(folder: Path, rows: list[list]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r[0], r[1]) for r in rows})
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 3.4 * len(groups)), squeeze=False)
    for g, (method, stages) in enumerate(groups):
        mine = [r for r in rows if (r[0], r[1]) == (method, stages)]
        labels = [f"{r[2]}\\nx{r[3]}" for r in mine]
        last = [float(r[4].split(" / ")[-1]) for r in mine]
        axes[g][0].bar(range(len(mine)), last)
        axes[g][0].set_title(f"{method}, P={stages}: samples/s at the last stage", fontsize=9)
        axes[g][1].bar(range(len(mine)), [r[10] or 0 for r in mine])
        axes[g][1].set_title(f"{method}, P={stages}: test top-1 after the stage-0 epochs", fontsize=9)
        lows = [r[10] for r in mine if r[10]]
        axes[g][1].set_ylim(min(lows) - 0.05 if lows else 0, 1)
        for ax in axes[g]:
            ax.set_xticks(range(len(mine)), labels, fontsize=6)
    fig.suptitle(f"async-module ablation on {hardware()}", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "async_ablation.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grids", nargs="+", help="grid YAML files (ablate.py format)")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/<hardware>-<date>/async_ablation)")
    args = parser.parse_args()
    folder = results_dir("async_ablation", args.out)
    rows, specs, all_summaries = [], [], []
    for grid in args.grids:
        spec = yaml.safe_load(Path(grid).read_text())
        run_root = folder / "runs" / Path(grid).stem
        points, summaries = sweep(spec, run_root, Path(grid).stem)
        rows += table(points, summaries, run_root)
        specs.append(spec)
        all_summaries += summaries
    header = (
        f"# Asynchronous modules: replay buffers x stragglers\n\nhardware: {hardware()} (every stage one thread; "
        f"P = 4 puts 4 processes on this machine's cores); grids: {', '.join(args.grids)}\n\n"
        "samples/s and idle (time waiting for input / wall) per stage, medians over epochs. steps per stage: "
        "stage 0 produces a fixed epoch; consumers take as many steps as their buffer lets them. staleness: "
        "newest producer message number received minus the one consumed, over the consuming stages. top-1 at "
        "budget: the fifo, no-slowdown point's training time for the same method and P; in parentheses the "
        "epochs that finished within it.\n\ncommand: python benchmarks/async_ablation.py " + " ".join(args.grids)
    )
    meta = {"hardware": hardware(), "grids": specs, "summaries": all_summaries}
    print(write_outputs(folder, "async_ablation", COLUMNS, rows, meta, header))
    plot(folder, rows)


if __name__ == "__main__":
    main()
