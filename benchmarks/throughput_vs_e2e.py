"""Is local learning in a pipeline faster, and how much activation memory does it save, against E2E?

    python benchmarks/throughput_vs_e2e.py                                   # infopro, K = P = 2
    python benchmarks/throughput_vs_e2e.py --modules 4 --tag k4              # K = 4: two modules per stage
    python benchmarks/throughput_vs_e2e.py --stages 4 --set method.name=dgl
    python benchmarks/throughput_vs_e2e.py --modes e2e ddp pipeline pipeline-dp pipeline-dp+syncbn --tag dp
    python benchmarks/throughput_vs_e2e.py --predict                         # + the simulator's figure per row
    python benchmarks/throughput_vs_e2e.py --predict --table results/.../throughput_vs_e2e.json  # no runs

Runs, on the same model, data and global batch: ``e2e`` (one process), ``ddp``, ``gpipe``, ``1f1b``
(P processes, ``pipeline.microbatches``), the local ``pipeline`` (the chosen method, K modules on P
stages), ``pipeline+guidance`` (the same with sync guidance every 20 steps) and ``ddg`` (the
delayed-gradient E2E baseline: method e2e as a pipeline with async cross-stage gradients, DDG-style),
and, on request, ``pipeline-dp`` (the same local method with the P processes as data-parallel replicas of
a one-stage pipeline: P = 1 x R; ``+syncbn`` with BatchNorm synchronised across them).
Each run trains ``--epochs`` epochs of ``--steps`` steps; its throughput is the median epoch's
samples/s (the first epoch is warm-up), and the figure per mode is the median over ``--repeats``
alternating repeats. Threads are fair on CPU: every mode gets the same total, P (one process with P
threads, or P processes with one thread each); the output says so. Memory: peak bytes saved for
backward per stage (saved-tensor hooks) and, on CUDA, peak allocated memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from common import hardware, pipelocal_command, results_dir, run_job, write_outputs

from pipelocal.metrics.summary import RunSummary

ROOT = Path(__file__).resolve().parent.parent
MODES = ("e2e", "ddp", "gpipe", "1f1b", "pipeline", "pipeline+guidance", "ddg")
DATA_PARALLEL = {"pipeline-dp": [], "pipeline-dp+syncbn": ["--pipeline.sync_batchnorm=true"]}  # P = 1 x R
EXACT_E2E = ("e2e", "ddp", "gpipe", "1f1b")
VARIANTS = {  # modes that are the local pipeline with something added: (mode, overrides)
    "pipeline": ("pipeline", []),
    "pipeline+guidance": ("pipeline", ["--guidance.every=20", "--guidance.mode=sync"]),
    "ddg": ("pipeline", ["--method.name=e2e", "--guidance.mode=async"]),
}
COLUMNS = [
    "mode",
    "processes x threads",
    "samples/s",
    "vs e2e",
    "max stage saved MiB",
    "vs e2e (memory)",
    "saved MiB per stage",
    "CUDA peak MiB per stage",
    "utilisation per stage",
    "all-reduce wait per stage",
    "final top-1",
]


def command(mode: str, args, run_root: Path, name: str) -> list[str]:
    if mode in DATA_PARALLEL:
        mode, added = "pipeline", [f"--pipeline.replicas={args.stages}", *DATA_PARALLEL[mode]]
    else:
        mode, added = VARIANTS.get(mode, (mode, []))
    shared = [
        "--config",
        args.config,
        *[f"--{kv}" for kv in args.set],
        f"--mode={mode}",
        f"--data.train_subset={args.steps * args.batch}",
        f"--data.batch_size={args.batch}",
        f"--data.test_subset={args.test_subset}",
        f"--train.epochs={args.epochs}",
        f"--train.eval_every={args.epochs}",
        "--metrics.console=none",
        f"--metrics.out_dir={run_root}",
        f"--metrics.run_name={name}",
        f"--pipeline.microbatches={args.microbatches}",
    ]
    cores = args.cores or args.stages
    if mode == "e2e":
        return pipelocal_command([*shared, "--method.name=e2e", f"--train.threads={cores}"])
    local = [f"--split.num_modules={args.modules}", *added] if mode == "pipeline" else ["--method.name=e2e"]
    if mode in ("gpipe", "1f1b"):
        local.append(f"--split.num_modules={args.stages}")
    return pipelocal_command([*shared, *local, f"--pipeline.threads={max(cores // args.stages, 1)}"], args.stages)


def run(mode: str, args, run_root: Path, name: str) -> RunSummary:
    return run_job(command(mode, args, run_root, name), run_root / name, ROOT)


def stage_figures(summary: RunSummary) -> dict:
    """Per-stage memory and utilisation (measured by the local pipeline only)."""
    stages = summary.stages
    return {
        "saved": [s.saved_bytes_peak_max for s in stages],
        "cuda": [s.cuda_peak_bytes for s in stages],
        "util": [round(s.utilisation_median, 3) if summary.mode == "pipeline" else None for s in stages],
        "dp": [round(s.dp_wait_frac_median, 3) if s.replicas > 1 else None for s in stages],
    }


def table(results: dict, args) -> tuple[list[list], dict]:
    med = statistics.median
    rate = {m: med(s.samples_per_s_median for s in runs) for m, runs in results.items()}
    memory = {m: stage_figures(runs[0]) for m, runs in results.items()}
    e2e_mem = max(memory["e2e"]["saved"])
    rows = []
    for mode in results:
        f = memory[mode]
        cores = args.cores or args.stages
        layout = f"1 x {cores}" if mode == "e2e" else f"{args.stages} x {max(cores // args.stages, 1)}"
        if mode in DATA_PARALLEL:
            layout += f" (P=1 x R={args.stages})"
        cuda = " / ".join("-" if c is None else f"{c / 2**20:.0f}" for c in f["cuda"])
        util = " / ".join("-" if u is None else str(u) for u in f["util"])
        rows.append(
            [
                mode,
                layout,
                round(rate[mode], 1),
                round(rate[mode] / rate["e2e"], 3),
                round(max(f["saved"]) / 2**20, 1),
                round(max(f["saved"]) / e2e_mem, 3),
                " / ".join(f"{b / 2**20:.1f}" for b in f["saved"]),
                cuda,
                util,
                " / ".join("-" if d is None else str(d) for d in f["dp"]),
                results[mode][-1].final_top1,
            ]
        )
    best_e2e = max((m for m in results if m in EXACT_E2E), key=lambda m: rate[m])
    figures = {
        "samples_per_s": rate,
        "best_e2e_mode": best_e2e,
        "pipeline_vs_best_e2e": rate["pipeline"] / rate[best_e2e],
        "pipeline_memory_vs_e2e": max(memory["pipeline"]["saved"]) / e2e_mem,
    }
    return rows, figures


def plot(folder: Path, rows: list[list], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [r[0] for r in rows]
    colors = ["#2a7" if n.startswith("pipeline") else "#c84" if n == "ddg" else "#888" for n in names]
    axes[0].bar(names, [r[2] for r in rows], color=colors)
    axes[0].set_title("samples/s (median)")
    axes[1].bar(names, [r[4] for r in rows], color=colors)
    axes[1].set_title("largest stage's saved activations, MiB")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(folder / "throughput_vs_e2e.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fmnist/pipeline_infopro_p2.yaml")
    parser.add_argument("--stages", type=int, default=2, help="P: processes for every multi-process mode")
    parser.add_argument(
        "--cores", type=int, default=0, help="cores for every mode: e2e's threads, cores / P per process (default P)"
    )
    parser.add_argument("--modules", type=int, default=2, help="K of the local pipeline (K >= P)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--test-subset", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=[*MODES, *DATA_PARALLEL])
    parser.add_argument("--tag", default="", help="suffix of the results folder name")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, section.key=value")
    parser.add_argument("--out")
    parser.add_argument("--predict", action="store_true", help="print the simulator's figure beside each row")
    parser.add_argument("--table", help="with --predict: an earlier throughput_vs_e2e.json to read, not run")
    args = parser.parse_args()
    if args.table:
        if not args.predict:
            parser.error("--table only goes with --predict")
        print_predictions(json.loads(Path(args.table).read_text())["rows"], args)
        return
    if "e2e" not in args.modes or "pipeline" not in args.modes:
        parser.error("--modes must include e2e and pipeline (the table compares the two)")
    folder = results_dir("throughput_vs_e2e" + (f"-{args.tag}" if args.tag else ""), args.out)
    results = {m: [] for m in args.modes}
    for r in range(args.repeats):  # alternate, so drift on a shared machine hits every mode alike
        for mode in args.modes:
            results[mode].append(run(mode, args, folder / "runs", f"{mode}-{r}"))
    rows, figures = table(results, args)
    cores = args.cores or args.stages
    header = (
        f"# Throughput and memory: local pipeline vs E2E\n\nhardware: {hardware()}; every mode uses {cores} "
        f"cores in all (1 process x {cores} threads, or {args.stages} processes x {max(cores // args.stages, 1)} "
        "threads).\n\n"
        f"config: {args.config} {' '.join(args.set)}; batch {args.batch}; local pipeline K = {args.modules} on "
        f"P = {args.stages}; gpipe/1f1b {args.microbatches} microbatches; {args.steps} steps x {args.epochs} epochs "
        f"per run (median epoch), median of {args.repeats} alternating repeats. Best E2E mode: "
        f"{figures['best_e2e_mode']}; local pipeline vs it: {figures['pipeline_vs_best_e2e']:.2f}x throughput; "
        f"largest stage's saved activations vs e2e: {figures['pipeline_memory_vs_e2e']:.2f}x.\n\n"
        "Utilisation is compute / wall per stage, measured by the local pipeline (the E2E modes' communication "
        "happens inside DDP and torch.distributed.pipelining, so it is not split out). final top-1 is after this "
        "short budget, a sanity check, not an accuracy result.\n\ncommand: python benchmarks/throughput_vs_e2e.py "
        + " ".join(sys.argv[1:])
    )
    print(
        write_outputs(
            folder,
            "throughput_vs_e2e",
            COLUMNS,
            rows,
            {"hardware": hardware(), "figures": figures, "runs": results},
            header,
        )
    )
    plot(folder, rows, f"local pipeline vs E2E on {hardware()}")
    if args.predict:
        print_predictions(rows, args)


def print_predictions(rows: list[list], args) -> None:
    """Each measured row beside the simulator's prediction from this machine's measured inputs (no fitting)."""
    from simulate_validate import latest_measured, predict_mode

    from pipelocal.config_parse import load_config

    path = latest_measured()
    data = json.loads(path.read_text())
    method = load_config(ROOT / args.config, [f"--{kv}" for kv in args.set]).method.name
    if args.stages != 2 or args.modules != 2:
        print(f"--predict: the measured inputs are for P = K = 2; asked for P = {args.stages}, K = {args.modules}")
        return
    print(f"\npredicted from {path} (idle machine; '-': its inputs do not cover this mode)")
    print(f"{'mode':22} {'measured':>9} {'predicted':>9} {'rel.err':>8}")
    for row in rows:
        mode, measured = row[0], row[2]
        pred = predict_mode(mode, method, data, args.steps, args.microbatches)
        err = f"{abs(pred - measured) / measured:8.3f}" if pred else "       -"
        shown = f"{pred:.1f}" if pred else "-"
        print(f"{mode:22} {measured:9.1f} {shown:>9} {err}")


if __name__ == "__main__":
    main()
