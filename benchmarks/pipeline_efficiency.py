"""Pipeline efficiency on this machine: P stages (one thread each) against sequential mode on one thread.

    python benchmarks/pipeline_efficiency.py                      # Fashion-MNIST, ResNet-20, InfoPro, P = 2
    python benchmarks/pipeline_efficiency.py --set method.name=dgl --repeats 3

For each split balance (uniform, time) it runs sequential mode (train.threads=1) and the pipeline
(torchrun, pipeline.threads=1) on the same model, method, batch and split, in alternation, ``--repeats``
times. Per run, throughput is the median over epochs (the first epoch is warm-up) of training samples/s
(at the last stage for the pipeline). Reported, as medians over repeats:

- speedup = pipeline samples/s / sequential samples/s;
- efficiency = pipeline samples/s / bound, bound = batch / (slowest stage's compute seconds per step);
- per-stage utilisation = compute / wall, and the waiting split into receive and send;
- logging cost = 1 - (pipeline with console + live table every 10 steps) / (pipeline with no console).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from common import hardware, pipelocal_command, results_dir, run_job, write_outputs

from pipelocal.metrics.summary import RunSummary

ROOT = Path(__file__).resolve().parent.parent


def run(kind: str, args, overrides: list[str], run_root: Path, name: str) -> RunSummary:
    common = [
        "--config",
        args.config,
        *overrides,
        f"--metrics.out_dir={run_root}",
        f"--metrics.run_name={name}",
        f"--data.train_subset={args.steps * args.batch}",
        f"--data.batch_size={args.batch}",
        f"--train.epochs={args.epochs}",
        f"--train.eval_every={args.epochs}",
        "--metrics.console=plain",
    ]
    if kind == "sequential":
        return run_job(pipelocal_command([*common, "--mode=sequential", "--train.threads=1"]), run_root / name, ROOT)
    pipeline = [*common, "--mode=pipeline", "--pipeline.threads=1", f"--split.num_modules={args.stages}"]
    return run_job(pipelocal_command(pipeline, args.stages), run_root / name, ROOT)


def measure(args, folder: Path) -> dict[str, list[RunSummary]]:
    base = [f"--{kv}" for kv in args.set]
    variants = {}
    for balance in ("uniform", "time"):
        split = [f"--split.balance={balance}", f"--split.num_modules={args.stages}"]
        variants[f"sequential/{balance}"] = ("sequential", split)
        variants[f"pipeline/{balance}"] = ("pipeline", split + ["--metrics.log_every=10", "--pipeline.live_every=10"])
    variants["pipeline/time/quiet"] = (
        "pipeline",
        ["--split.balance=time", "--metrics.console=none", "--metrics.log_every=1000000"],
    )
    results = {name: [] for name in variants}
    for r in range(args.repeats):  # alternate, so drift on a shared machine hits every variant alike
        for name, (kind, extra) in variants.items():
            results[name].append(run(kind, args, base + extra, folder / "runs", f"{name.replace('/', '-')}-{r}"))
    return results


def rows_from(results: dict, batch: int) -> tuple[list[list], dict]:
    med = statistics.median
    rows, figures = [], {}
    quiet = med(s.samples_per_s_median for s in results["pipeline/time/quiet"])
    for balance in ("uniform", "time"):
        seq = med(s.samples_per_s_median for s in results[f"sequential/{balance}"])
        runs = results[f"pipeline/{balance}"]
        pipe = med(s.samples_per_s_median for s in runs)
        slowest = med(max(st.compute_s_per_step_median for st in s.stages) for s in runs)
        efficiency = pipe / (batch / slowest)
        stages = list(zip(*[s.stages for s in runs]))
        util = [round(med(st.utilisation_median for st in per), 3) for per in stages]
        recv = [round(med(st.recv_wait_frac_median for st in per), 3) for per in stages]
        send = [round(med(st.send_wait_frac_median for st in per), 3) for per in stages]
        compute_ms = [round(1e3 * med(st.compute_s_per_step_median for st in per), 1) for per in stages]
        split = runs[0].config["split"]["balance"]
        rows.append(
            [
                split,
                round(seq, 1),
                round(pipe, 1),
                round(pipe / seq, 3),
                round(efficiency, 3),
                " / ".join(map(str, compute_ms)),
                " / ".join(map(str, util)),
                " / ".join(map(str, recv)),
                " / ".join(map(str, send)),
            ]
        )
        figures[balance] = {
            "sequential": seq,
            "pipeline": pipe,
            "speedup": pipe / seq,
            "efficiency": efficiency,
            "utilisation": util,
            "compute_ms": compute_ms,
        }
    logged = med(s.samples_per_s_median for s in results["pipeline/time"])
    figures["logging_cost_ab"] = 1 - logged / quiet
    # Direct: the share of each stage's wall time spent in the metrics hook (live table every 10 steps).
    figures["logging_frac"] = max(
        med(st.log_frac_median for st in per) for per in zip(*[s.stages for s in results["pipeline/time"]])
    )
    return rows, figures


COLUMNS = [
    "balance",
    "sequential samples/s (1 thread)",
    "pipeline samples/s",
    "speedup",
    "efficiency",
    "compute ms/step per stage",
    "utilisation per stage",
    "wait recv per stage",
    "wait send per stage",
]


def plot(folder: Path, figures: dict, stages: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    names = ["uniform", "time"]
    seq = [figures[n]["sequential"] for n in names]
    pipe = [figures[n]["pipeline"] for n in names]
    xs = range(len(names))
    axes[0].bar([x - 0.2 for x in xs], seq, 0.4, label="sequential, 1 thread")
    axes[0].bar([x + 0.2 for x in xs], pipe, 0.4, label=f"pipeline, {stages} stages x 1 thread")
    axes[0].set_xticks(list(xs), [f"balance={n}" for n in names])
    axes[0].set_ylabel("samples/s")
    axes[0].legend()
    ticks, labels = [], []
    for i, n in enumerate(names):
        xs_n = [i * (stages + 1) + s for s in range(stages)]
        axes[1].bar(xs_n, figures[n]["utilisation"], label=f"balance={n}")
        ticks += xs_n
        labels += [f"stage {s}" for s in range(stages)]
    axes[1].set_xticks(ticks, labels)
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("per-stage utilisation (compute / wall)")
    axes[1].legend()
    fig.suptitle(f"pipeline efficiency on {hardware()}")
    fig.tight_layout()
    fig.savefig(folder / "pipeline_efficiency.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fmnist/pipeline_infopro_p2.yaml")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, section.key=value")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/<hardware>-<date>/...)")
    args = parser.parse_args()
    folder = results_dir("pipeline_efficiency", args.out)
    results = measure(args, folder)
    rows, figures = rows_from(results, args.batch)
    header = (
        f"# Pipeline efficiency: {args.stages} stages vs sequential, one thread each\n\n"
        f"hardware: {hardware()}; config: {args.config} {' '.join(args.set)}; batch {args.batch}; "
        f"{args.steps} steps x {args.epochs} epochs per run (median epoch), median of {args.repeats} alternating "
        f"repeats.\n\nefficiency = pipeline samples/s / (batch / slowest stage's compute s per step).\n\n"
        f"Logging cost, console + live all-stage table every 10 steps: {100 * figures['logging_frac']:.2f}% of the "
        f"busiest stage's wall time is spent in the metrics hook (measured directly). As an A/B of throughput "
        f"against no console: {100 * figures['logging_cost_ab']:.1f}%; run-to-run noise on this machine is larger "
        "than that difference, so read the direct figure.\n\ncommand: python benchmarks/pipeline_efficiency.py "
        + " ".join(sys.argv[1:])
    )
    print(
        write_outputs(
            folder,
            "pipeline_efficiency",
            COLUMNS,
            rows,
            {"hardware": hardware(), "figures": figures, "runs": results},
            header,
        )
    )
    plot(folder, figures, args.stages)


if __name__ == "__main__":
    main()
