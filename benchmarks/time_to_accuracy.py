"""Which layout reaches a given accuracy first on the same devices? Test top-1 against training seconds.

    python benchmarks/time_to_accuracy.py                      # Fashion-MNIST, ResNet-20, 2 cores, about 25 min
    python benchmarks/time_to_accuracy.py --evals 6 --steps-per-eval 50 --layouts e2e pipeline

Same model, data, global batch, precision and learning-rate schedule for every layout, on the same cores:
``e2e`` (1 process x 2 threads), ``ddp`` (2 x 1), ``1f1b`` (2 x 1, the same unit split), ``pipeline`` (the
local method on P = 2 stages, 2 x 1) and ``pipeline+async`` (the same with async guidance every 10 steps).
Evaluation every ``--steps-per-eval`` steps: each "epoch" of the run is that many steps (``train.max_steps``;
the order is reshuffled at every one, so the stream is a random sample without replacement within each) and
evaluates after it; its time is not counted: the x axis is the training wall time summed over those epochs
(the slowest stage's). The learning rate follows its cosine over all of them. Output: a table (seconds to
reach 85 / 88 / 90 % test top-1, the best top-1 within the budget, the final), the curves as PNG, and the
local pipeline's seconds to 88 % against the best E2E layout's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import hardware, pipelocal_command, results_dir, run_job, write_outputs

from pipelocal.metrics.stats import read_epochs

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {  # name -> (processes, overrides)
    "e2e": (1, ["--mode=e2e", "--method.name=e2e", "--split.num_modules=1", "--train.threads=2"]),
    "ddp": (2, ["--mode=ddp", "--method.name=e2e", "--split.num_modules=1"]),
    "1f1b": (2, ["--mode=1f1b", "--method.name=e2e", "--split.num_modules=2"]),
    "pipeline": (2, ["--mode=pipeline"]),
    "pipeline+async": (2, ["--mode=pipeline", "--guidance.every=10", "--guidance.mode=async"]),
}
E2E = ("e2e", "ddp", "1f1b")
TARGETS = (0.85, 0.88, 0.90)
COLUMNS = ["layout", "processes x threads", *[f"seconds to {t:.0%}" for t in TARGETS], "best top-1", "final top-1"]
COLUMNS += ["train seconds", "samples/s"]


def command(layout: str, args, run_root: Path) -> list[str]:
    nproc, own = LAYOUTS[layout]
    local = [f"--method.name={args.method}", f"--split.num_modules={args.modules}"] if "pipeline" in layout else []
    shared = [
        "--config",
        args.config,
        f"--train.max_steps={args.steps_per_eval}",
        f"--train.epochs={args.evals}",
        "--train.eval_every=1",
        f"--data.batch_size={args.batch}",
        "--split.balance=uniform",
        "--pipeline.threads=1",
        "--checkpoint.every_epochs=0",
        "--checkpoint.final=false",
        "--metrics.console=none",
        f"--metrics.out_dir={run_root}",
        f"--metrics.run_name={layout}",
        *[f"--{kv}" for kv in args.set],
    ]
    return pipelocal_command([*shared, *local, *own], nproc)


def curve(run_dir: Path) -> list[tuple[float, float]]:
    """(training seconds so far, test top-1) after every evaluation."""
    seconds, out = 0.0, []
    for record in read_epochs(run_dir):
        seconds += max(s.wall_s for s in record.stages)
        out.append((seconds, record.test_top1))
    return out


def seconds_to(points, target: float) -> float | None:
    return next((round(s, 1) for s, acc in points if acc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml", help="model, data, precision (every layout)")
    parser.add_argument("--method", default="infopro", help="the local method of the pipeline layouts")
    parser.add_argument("--modules", type=int, default=2, help="K of the pipeline layouts (on P = 2)")
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--steps-per-eval", type=int, default=94, help="training steps between evaluations")
    parser.add_argument("--evals", type=int, default=10, help="evaluations (the budget: evals x steps)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every layout (section.key=value)")
    parser.add_argument("--out")
    args = parser.parse_args()
    folder = results_dir("time_to_accuracy", args.out)
    curves, summaries = {}, {}
    for layout in args.layouts:
        summaries[layout] = run_job(command(layout, args, folder / "runs"), folder / "runs" / layout, ROOT)
        curves[layout] = curve(folder / "runs" / layout)
    rows = []
    for layout, points in curves.items():
        nproc = LAYOUTS[layout][0]
        threads = "1 x 2" if nproc == 1 else f"{nproc} x 1"
        best = max(acc for _, acc in points)
        s = summaries[layout]
        rows.append(
            [layout, threads, *[seconds_to(points, t) for t in TARGETS], best, points[-1][1], round(points[-1][0], 1),
             round(s.samples_per_s_median, 1)]
        )  # fmt: skip
    reading = ratio_line(curves)
    header = (
        f"# Time to accuracy on the same devices\n\nhardware: {hardware()}; config {args.config} "
        f"{' '.join(args.set)}; batch {args.batch}; evaluation every {args.steps_per_eval} steps, {args.evals} times "
        f"(budget {args.steps_per_eval * args.evals} steps); local layouts: {args.method}, K = {args.modules} on "
        "P = 2; seconds: training wall time (the slowest stage's), evaluation excluded.\n\n"
        f"{reading}\n\ncommand: python benchmarks/time_to_accuracy.py " + " ".join(sys.argv[1:])
    )
    print(write_outputs(folder, "time_to_accuracy", COLUMNS, rows, {"hardware": hardware(), "curves": curves}, header))
    plot(folder, curves)


def ratio_line(curves: dict) -> str:
    """The local pipeline's seconds to 88 % against the fastest E2E layout's."""
    e2e = {k: seconds_to(v, 0.88) for k, v in curves.items() if k in E2E}
    reached = {k: v for k, v in e2e.items() if v is not None}
    local = seconds_to(curves["pipeline"], 0.88) if "pipeline" in curves else None
    if not reached or local is None:
        who = "the local pipeline" if local is None else "no E2E layout"
        return f"88 % test top-1: {who} did not reach it within the budget."
    best = min(reached, key=reached.get)
    return (
        f"88 % test top-1: the local pipeline after {local:.0f} s, the fastest E2E layout ({best}) after "
        f"{reached[best]:.0f} s: ratio {local / reached[best]:.2f} (below 1: the pipeline is first)."
    )


def plot(folder: Path, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for layout, points in curves.items():
        ax.plot([s for s, _ in points], [a for _, a in points], marker="o", ms=3, label=layout)
    for t in TARGETS:
        ax.axhline(t, color="#bbb", lw=0.8, ls=":")
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("test top-1")
    ax.set_title(f"time to accuracy on {hardware()}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "time_to_accuracy.png", dpi=110)


if __name__ == "__main__":
    main()
