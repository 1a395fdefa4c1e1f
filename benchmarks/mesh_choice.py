"""Does ``pipeline.replicas: auto`` choose the fastest P x R? Each layout measured against the planner's choice.

    python benchmarks/mesh_choice.py [--config configs/default.yaml] [--nproc 4] [--steps 30] [--epochs 3]
                                     [--passes 2]

Per pass (a folder of its own): one run with ``pipeline.replicas=auto`` (it profiles, simulates every layout,
picks one and trains it), then one run of every layout the planner considered, with that R set. Passes
interleave, so a slow minute of the host falls on every layout alike. Prints and writes
(benchmarks/results/<hardware>/mesh_choice.*) each layout's simulated samples/s (the auto runs' mesh.json) and
measured samples/s, and per pass the layout auto chose against the fastest one measured in that pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import SYNTHETIC, hardware, pipelocal_command, results_dir, run_job, write_outputs

from pipelocal.metrics.summary import RunSummary

ROOT = Path(__file__).resolve().parent.parent


def one_run(args, folder: Path, name: str, replicas: str) -> None:
    cmd = pipelocal_command(
        [
            "--config",
            args.config,
            *SYNTHETIC,
            f"--data.synthetic_train={args.steps * 128}",
            f"--train.epochs={args.epochs}",
            f"--train.eval_every={args.epochs}",
            f"--pipeline.replicas={replicas}",
            "--metrics.console=none",
            f"--metrics.out_dir={folder}",  # a folder per pass: its auto run plans anew (no earlier mesh.json)
            f"--metrics.run_name={name}",
        ],
        args.nproc,
    )
    run_job(cmd, folder / name, ROOT)


def summarise(folder: Path, args, started: str) -> str:
    """The table and the verdict from the runs under ``folder`` (pass*/auto, pass*/r<R>)."""
    med = statistics.median
    predicted, measured, verdicts = {}, {}, []
    passes = sorted(folder.glob("runs/pass*"))
    for run in passes:
        mesh = json.loads((run / "auto" / "mesh.json").read_text())
        rates = {}
        for layout in mesh["layouts"]:
            r = layout["replicas"]
            predicted.setdefault(r, []).append(layout["samples_per_s"])
            rates[r] = RunSummary.load(run / f"r{r}").samples_per_s_median
            measured.setdefault(r, []).append(rates[r])
        chosen, fastest = mesh["replicas"], max(rates, key=rates.get)
        auto = RunSummary.load(run / "auto").samples_per_s_median
        verdicts.append(
            f"- {run.name}: auto chose {args.nproc // chosen} x {chosen} (its own run {auto:.0f} samples/s); in this "
            f"pass that layout measured {rates[chosen]:.0f}, the fastest ({args.nproc // fastest} x {fastest}) "
            f"{rates[fastest]:.0f}: {rates[chosen] / rates[fastest]:.2f}x"
        )
    rows = [
        [f"{args.nproc // r} x {r}", round(med(predicted[r])), round(med(measured[r])), " ".join(f"{v:.0f}" for v in m)]
        for r, m in sorted(measured.items())
    ]
    header = (
        f"# pipeline.replicas=auto against every layout: {args.config}, {args.nproc} processes\n\n"
        f"{hardware()}; {started}; {len(passes)} passes of {args.epochs} epochs x {args.steps} steps of 128 "
        "(synthetic data of Fashion-MNIST's shape); samples/s is the median epoch's (simulated: each auto run's "
        "figure, their median; measured: each pass's run of that layout, their median).\n\n" + "\n".join(verdicts)
    )
    columns = ["P x R", "simulated samples/s", "measured samples/s", "each pass"]
    return write_outputs(folder, "mesh_choice", columns, rows, {"config": args.config, "started": started}, header)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="training steps per epoch (synthetic data)")
    parser.add_argument("--epochs", type=int, default=3, help="samples/s is the median epoch's")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    folder = results_dir("mesh_choice", args.out)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for p in range(args.passes):
        runs = folder / "runs" / f"pass{p}"
        one_run(args, runs, "auto", "auto")
        for layout in json.loads((runs / "auto" / "mesh.json").read_text())["layouts"]:
            one_run(args, runs, f"r{layout['replicas']}", str(layout["replicas"]))
    print(summarise(folder, args, started))


if __name__ == "__main__":
    main()
