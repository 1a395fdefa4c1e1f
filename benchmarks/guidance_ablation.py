"""Periodic global guidance in the pipeline: what it costs in throughput and memory, and what it buys.

    python benchmarks/guidance_ablation.py                       # Fashion-MNIST, ResNet-20, InfoPro, P = K = 2
    python benchmarks/guidance_ablation.py --stages 4 --repeats 1
    python benchmarks/guidance_ablation.py --accuracy            # plus test top-1 after a fixed budget
    python benchmarks/guidance_ablation.py --modules 16 --every 10 2 --set model.depth=32 split.balance=uniform

Variants: guidance off, and every N in {100, 20, 5, 1} steps (``--every``) x mode in {sync, async}, all with the same
model, data, batch and split (``combine: replace``), each a torchrun job, in alternation ``--repeats`` times.
Per run, throughput is the last stage's training samples/s, median over epochs; reported as medians over
repeats, relative to guidance off. Also per variant: the gradient wait of the first stage (sync: the drain;
async: what is left at the epoch end), the delay of applied gradients in steps (async), and the bytes held
between steps by kept graphs and stashed weights (the memory guidance costs). ``--accuracy`` trains on
the whole training set for ``--accuracy-epochs`` and reports test top-1 at the end (one run per variant).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import hardware, pipelocal_command, results_dir, run_job, write_outputs

from pipelocal.metrics.summary import RunSummary

ROOT = Path(__file__).resolve().parent.parent
EVERY = (100, 20, 5, 1)
COLUMNS = [
    "guidance",
    "samples/s",
    "vs off",
    "guided steps",
    "stage-0 grad wait",
    "delay mean / max (steps)",
    "kept + stashed MiB (max stage)",
    "saved MiB (max stage)",
    "test top-1",
]


def variants(everies=EVERY) -> dict[str, list[str]]:
    out = {"off": ["--guidance.every=0"]}
    for mode in ("sync", "async"):
        for every in everies:
            out[f"{mode} every {every}"] = [f"--guidance.every={every}", f"--guidance.mode={mode}"]
    return out


def run(args, extra: list[str], run_root: Path, name: str, accuracy: bool) -> RunSummary:
    budget = (
        [f"--train.epochs={args.accuracy_epochs}"]
        if accuracy
        else [
            f"--data.train_subset={args.steps * args.batch}",
            f"--data.test_subset={args.batch}",
            f"--train.epochs={args.epochs}",
            f"--train.eval_every={args.epochs}",
        ]
    )
    cmd = [
        "--config",
        args.config,
        *[f"--{kv}" for kv in args.set],
        *extra,
        *budget,
        "--mode=pipeline",
        "--pipeline.threads=1",
        f"--split.num_modules={args.modules or args.stages}",
        f"--data.batch_size={args.batch}",
        "--guidance.combine=replace",
        f"--metrics.out_dir={run_root}",
        f"--metrics.run_name={name}",
        "--metrics.console=plain",
    ]
    return run_job(pipelocal_command(cmd, args.stages), run_root / name, ROOT)


def mib(value: float) -> float:
    return round(value / 2**20, 1)


def table(results: dict, accuracy: dict) -> tuple[list[list], dict]:
    med = statistics.median
    off = med(s.samples_per_s_median for s in results["off"])
    rows, figures = [], {}
    for name, runs in results.items():
        rate = med(s.samples_per_s_median for s in runs)
        first = [s.stages[0] for s in runs]
        held = med(max(st.kept_bytes_peak + st.stash_bytes_peak for st in s.stages) for s in runs)
        saved = med(s.saved_bytes_peak_max for s in runs)
        delays = [st for st in first if st.delay_max is not None]
        delay = f"{med(st.delay_mean for st in delays):.2f} / {max(st.delay_max for st in delays)}" if delays else "-"
        top1 = accuracy[name].final_top1 if name in accuracy else None
        rows.append(
            [
                name,
                round(rate, 1),
                round(rate / off, 3),
                first[0].guided_steps,
                round(med(st.grad_wait_frac_median for st in first), 3),
                delay,
                mib(held),
                mib(saved),
                top1,
            ]
        )
        figures[name] = {"relative": rate / off, "held_mib": mib(held), "top1": top1}
    return rows, figures


def plot(folder: Path, figures: dict, title: str, everies=EVERY) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for mode, marker in (("sync", "o"), ("async", "s")):
        xs = list(everies)
        axes[0].plot(xs, [figures[f"{mode} every {e}"]["relative"] for e in xs], marker=marker, label=mode)
        axes[1].plot(xs, [figures[f"{mode} every {e}"]["held_mib"] for e in xs], marker=marker, label=mode)
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_ylabel("samples/s relative to no guidance")
    axes[1].set_ylabel("kept graphs + stashed weights, MiB")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("guidance every N steps")
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "guidance_ablation.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fmnist/pipeline_infopro_p2.yaml")
    parser.add_argument("--stages", type=int, default=2, help="P")
    parser.add_argument("--modules", type=int, default=0, help="K (default: P)")
    parser.add_argument("--steps", type=int, default=100, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (median over them)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--every", nargs="*", type=int, default=list(EVERY), help="guidance periods to run")
    parser.add_argument("--accuracy", action="store_true", help="also train each variant on the full data")
    parser.add_argument("--accuracy-epochs", type=int, default=1)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, section.key=value")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/<hardware>-<date>/...)")
    args = parser.parse_args()
    folder = results_dir(f"guidance_ablation-p{args.stages}", args.out)
    runs = folder / "runs"
    results: dict[str, list[RunSummary]] = {name: [] for name in variants(args.every)}
    for r in range(args.repeats):  # alternate, so drift on a shared machine hits every variant alike
        for name, extra in variants(args.every).items():
            results[name].append(run(args, extra, runs, f"{name.replace(' ', '-')}-{r}", False))
    accuracy = {}
    if args.accuracy:
        for name, extra in variants(args.every).items():
            accuracy[name] = run(args, extra, runs, f"{name.replace(' ', '-')}-accuracy", True)
    rows, figures = table(results, accuracy)
    k = args.modules or args.stages
    title = f"guidance ablation, P={args.stages} K={k}, {hardware()}, {args.config}"
    header = (
        f"# Guidance ablation: P = {args.stages}, K = {k}\n\nhardware: {hardware()} (CPU stages: one thread each; "
        f"{args.stages} processes on this machine's cores)\n\nconfig: {args.config}, batch {args.batch}, "
        f"{args.steps} steps x {args.epochs} epochs per run, {args.repeats} repeats in alternation, "
        f"combine=replace; overrides: {' '.join(args.set) or 'none'}\n\n"
        "samples/s: last stage, median over epochs, median over repeats. stage-0 grad wait: fraction of stage 0's "
        "wall time spent waiting for gradients. delay: optimizer steps between a kept graph's step and the "
        "arrival of its gradient (async). kept + stashed: bytes of graphs kept past their step and of stashed "
        "weight copies, peak between steps."
        + (
            f"\n\ntest top-1: one run per variant, {args.accuracy_epochs} epoch(s) of the full training set."
            if args.accuracy
            else ""
        )
    )
    meta = {"hardware": hardware(), "args": vars(args), "results": results, "accuracy": accuracy}
    print(write_outputs(folder, "guidance_ablation", COLUMNS, rows, meta, header))
    plot(folder, figures, title, args.every)


if __name__ == "__main__":
    main()
