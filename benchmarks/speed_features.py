"""What do bf16, channels_last and torch.compile buy in each execution mode, and does bf16 cost accuracy?

    python benchmarks/speed_features.py                                        # every row x variant, 3 repeats
    python benchmarks/speed_features.py --rows pipeline e2e --variants fp32 bf16 --repeats 5
    python benchmarks/speed_features.py --accuracy --rows                      # the accuracy part only

Rows (the model and method of configs/default.yaml: ResNet-20, InfoPro, K = 4; split.balance=uniform
everywhere, a fixed split, so repeats compare): ``sequential`` (K = 4 in one process, 1 thread),
``pipeline`` (K = 4 on P stages, torchrun, 1 thread each), and the end-to-end baselines, method e2e:
``e2e`` (one process, P threads), ``ddp`` and ``1f1b`` (P processes x 1 thread). Threads follow
throughput_vs_e2e.py's fairness rule, P in total per row, except ``sequential``: it is the one-thread
reference of the pipeline (pipeline_efficiency.py's), so compare it across variants, not across rows.

Variants: ``fp32``, ``bf16`` (train.precision, torch.autocast), ``bf16+cl`` (+ train.channels_last) and
``bf16+cl+compile`` (+ train.compile). They run alternately: for each repeat, for each row, for each
variant. A run trains ``--epochs`` epochs of ``--steps`` steps and evaluates once, at the end. Its figure
is the median over epochs, the first excluded (warm-up; compilation happens there), of training samples/s
at the last stage, read from the run's metrics.jsonl: the summary's medians include the first epoch, which
with compile can take minutes. Per row and variant: median samples/s over repeats, and the ratio to the
row's fp32 as the median of per-repeat ratios. The pipeline row also gets its efficiency, samples/s /
(batch / slowest stage's compute seconds per step), as pipeline_efficiency.py computes it. A run that
fails (or times out) is recorded as "failed: <reason>" with the end of its log; the rest go on.

``--accuracy``: Fashion-MNIST top-1 after ``--accuracy-epochs`` full epochs (3) of sequential InfoPro K = 4
and of e2e, fp32 against bf16 with the same seed: final and best top-1 and the differences in points
(both on P threads there: no speed is compared).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import hardware, markdown_table, pipelocal_command, results_dir, write_outputs

from pipelocal.metrics.stats import read_epochs
from pipelocal.metrics.summary import RunSummary

ROOT = Path(__file__).resolve().parent.parent
ROWS = ("sequential", "pipeline", "e2e", "ddp", "1f1b")
# Every switch explicit: the config file may set any of them (configs/default.yaml does).
VARIANTS = {
    f"{precision}{'+cl' if cl else ''}{'+compile' if compiled else ''}": [
        f"--train.precision={precision}",
        f"--train.channels_last={str(cl).lower()}",
        f"--train.compile={str(compiled).lower()}",
    ]
    for precision in ("fp32", "bf16")
    for cl, compiled in ((False, False), (True, False), (True, True))
}
DEFAULT_VARIANTS = ["fp32", "bf16", "bf16+cl", "bf16+cl+compile"]  # the issue's; fp32+cl(+compile) on request
ACCURACY_ROWS = ("sequential", "e2e")
COLUMNS = [
    "row",
    "processes x threads",
    "variant",
    "samples/s",
    "vs fp32",
    "efficiency",
    "slowest stage compute ms/step",
    "warm-up epoch s",
    "final top-1",
    "failures",
]
ACCURACY_COLUMNS = [
    "run",
    "precision",
    "final top-1",
    "best top-1 (epoch)",
    "final vs fp32 (points)",
    "best vs fp32 (points)",
    "samples/s",
    "train minutes",
]


@dataclass
class Outcome:
    """One run: its figures, or why it failed."""

    row: str
    variant: str
    repeat: int
    command: str
    samples_per_s: float | None = None
    slowest_compute_s: float | None = None  # per step, the slowest stage's, first epoch excluded
    warmup_s: float | None = None  # the first epoch's training wall time (the slowest stage's)
    summary: RunSummary | None = None
    failure: str | None = None
    log_tail: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ commands


def row_args(row: str, stages: int, microbatches: int) -> tuple[list[str], int]:
    """A row's own overrides and its number of processes."""
    e2e = ["--method.name=e2e", f"--split.num_modules={stages}"]
    if row == "sequential":
        return ["--mode=sequential", "--train.threads=1"], 1
    if row == "pipeline":
        return ["--mode=pipeline", "--pipeline.threads=1"], stages
    if row == "e2e":
        return ["--mode=e2e", *e2e, f"--train.threads={stages}"], 1
    if row == "ddp":
        return ["--mode=ddp", *e2e, "--pipeline.threads=1"], stages
    return ["--mode=1f1b", *e2e, "--pipeline.threads=1", f"--pipeline.microbatches={microbatches}"], stages


def layout(row: str, stages: int) -> str:
    return "1 x 1" if row == "sequential" else f"1 x {stages}" if row == "e2e" else f"{stages} x 1"


def command(row: str, variant: str, args, run_root: Path, name: str, timed: bool = True) -> list[str]:
    """Shared settings, then ``--set``, then the row's and the variant's keys (they define the experiment)."""
    budget = [
        f"--data.train_subset={args.steps * args.batch}",
        f"--data.test_subset={args.test_subset}",
        f"--train.epochs={args.epochs}",
        f"--train.eval_every={args.epochs}",
    ]
    shared = [
        "--config",
        args.config,
        "--split.balance=uniform",
        f"--data.batch_size={args.batch}",
        *(budget if timed else [f"--train.epochs={args.accuracy_epochs}", "--train.eval_every=1"]),
        "--metrics.console=none",
        f"--metrics.out_dir={run_root}",
        f"--metrics.run_name={name}",
    ]
    own, nproc = row_args(row, args.stages, args.microbatches)
    if not timed and row == "sequential":  # accuracy: speed is not measured there, so it may use all P cores
        own.append(f"--train.threads={args.stages}")
    return pipelocal_command([*shared, *[f"--{kv}" for kv in args.set], *own, *VARIANTS[variant]], nproc)


# ------------------------------------------------------------------------------------------ running


def launch(cmd: list[str], log: Path, timeout: float) -> int | None:
    """Run ``cmd`` with its output in ``log``; its exit status, or None when it ran past ``timeout``."""
    print("$", shlex.join(cmd), flush=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: torchrun's workers go with it
            proc.wait()
            return None


ERROR_LINE = re.compile(r"^(\[rank\d+\]:)?error( on stage \d+)?: ")  # pipelocal.run's one line per failing stage


def failure_reason(status: int | None, lines: list[str], timeout: float) -> str:
    """Exit status and the first stage's error line (later stages often fail only because a peer left)."""
    if status is None:
        return f"timed out after {timeout:.0f} s"
    errors = [ln for ln in lines if ERROR_LINE.match(ln)]
    raised = [ln for ln in lines if re.search(r"\w+(Error|Exception)\b", ln) and "ChildFailedError" not in ln]
    said = (errors or raised[-1:] or [ln for ln in lines if ln.strip()][-1:] or ["no output"])[0].strip()
    return f"exit {status}: {said[:200]}"


def run(row: str, variant: str, repeat: int, args, run_root: Path, timed: bool = True) -> Outcome:
    name = f"{row}-{variant}-{repeat}" if timed else f"accuracy-{row}-{variant}"
    cmd = command(row, variant, args, run_root, name, timed)
    outcome = Outcome(row, variant, repeat, shlex.join(cmd))
    status = launch(cmd, run_root / f"{name}.log", args.timeout)
    lines = (run_root / f"{name}.log").read_text(errors="replace").splitlines()
    if status != 0 or not (run_root / name / "summary.json").exists():
        outcome.failure = failure_reason(status, lines, args.timeout) if status != 0 else "exit 0 without a summary"
        outcome.log_tail = lines[-30:]
        print(f"# {name} failed: {outcome.failure}", flush=True)
        return outcome
    outcome.summary = RunSummary.load(run_root / name)
    epochs = read_epochs(run_root / name)
    timed_epochs = epochs[1:] or epochs  # the first is warm-up (and compilation), unless it is the only one
    med = statistics.median
    outcome.samples_per_s = med(e.samples_per_s for e in timed_epochs)
    per_stage = zip(*[e.stages for e in timed_epochs])
    outcome.slowest_compute_s = max(med(s.compute_s_per_step for s in stage) for stage in per_stage)
    outcome.warmup_s = max(s.wall_s for s in epochs[0].stages)
    return outcome


def measure(args, run_root: Path) -> dict[tuple[str, str], list[Outcome]]:
    results = {(row, v): [] for row in args.rows for v in args.variants}
    for r in range(args.repeats):  # alternate, so drift on a shared machine hits every row and variant alike
        for row in args.rows:
            for variant in args.variants:
                results[row, variant].append(run(row, variant, r, args, run_root))
    return results


# ------------------------------------------------------------------------------------------ tables


def ok(runs: list[Outcome]) -> list[Outcome]:
    return [o for o in runs if o.failure is None]


def failures(runs: list[Outcome]) -> str:
    """How many repeats failed, and why when the figures come from the others (else samples/s says why)."""
    failed = [o for o in runs if o.failure is not None]
    if not failed:
        return "-"
    return f"{len(failed)}/{len(runs)}" + (f": {failed[0].failure}" if len(failed) < len(runs) else "")


def ratio_to_fp32(runs: list[Outcome], fp32: list[Outcome]) -> float | None:
    """Median over repeats where both ran of variant / fp32 samples/s."""
    pairs = [(o, b) for o, b in zip(runs, fp32) if o.failure is None and b.failure is None]
    return statistics.median(o.samples_per_s / b.samples_per_s for o, b in pairs) if pairs else None


def table_row(row: str, variant: str, runs: list[Outcome], fp32: list[Outcome], args) -> list:
    done, med = ok(runs), statistics.median
    if not done:
        blank = [None] * 5
        return [row, layout(row, args.stages), variant, f"failed: {runs[0].failure}", *blank, failures(runs)]
    rate = med(o.samples_per_s for o in done)
    slowest = med(o.slowest_compute_s for o in done)
    efficiency = rate / (args.batch / slowest) if row == "pipeline" else None
    return [
        row,
        layout(row, args.stages),
        variant,
        round(rate, 1),
        None if variant == "fp32" else _round(ratio_to_fp32(runs, fp32), 3),
        _round(efficiency, 3),
        round(1e3 * slowest, 1),
        round(med(o.warmup_s for o in done), 1),
        done[-1].summary.final_top1,
        failures(runs),
    ]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def speed_table(results: dict, args) -> list[list]:
    return [table_row(row, v, results[row, v], results[row, "fp32"], args) for row in args.rows for v in args.variants]


def ratio_matrix(rows: list[list], args) -> str:
    """Rows x variants of the ratio to fp32 (or the failure), for the header."""
    cells = {(r[0], r[2]): r[4] if isinstance(r[3], float) else "failed" for r in rows}
    others = [v for v in args.variants if v != "fp32"]
    lines = [[row, *[cells[row, v] for v in others]] for row in args.rows]
    return markdown_table(["row", *[f"{v} vs fp32" for v in others]], lines)


# ------------------------------------------------------------------------------------------ accuracy


def accuracy_part(args, run_root: Path) -> tuple[list[list], list[Outcome]]:
    """Full epochs of sequential InfoPro and e2e, fp32 then bf16 (same seed); final/best top-1 and the gaps."""
    outcomes, rows = [], []
    for row in ACCURACY_ROWS:
        base, half = args.accuracy_variants
        pair = {v: run(row, v, 0, args, run_root, timed=False) for v in (base, half)}
        outcomes += pair.values()
        for variant, o in pair.items():
            rows.append(accuracy_row(row, variant, o, pair[base]))
    return rows, outcomes


def accuracy_row(row: str, precision: str, o: Outcome, fp32: Outcome) -> list:
    name = "sequential infopro K=4" if row == "sequential" else "e2e"
    if o.failure is not None:
        return [name, precision, f"failed: {o.failure}", None, None, None, None, None]
    s, base = o.summary, fp32.summary
    compare = o is not fp32 and base is not None
    return [
        name,
        precision,
        s.final_top1,
        f"{s.best_top1:.4f} ({s.best_epoch})",
        round(100 * (s.final_top1 - base.final_top1), 2) if compare else None,
        round(100 * (s.best_top1 - base.best_top1), 2) if compare else None,
        round(s.samples_per_s_median, 1),
        round(s.train_seconds / 60, 2),
    ]


# ------------------------------------------------------------------------------------------ output


def plot(folder: Path, rows: list[list], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {(r[0], r[2]): r for r in rows}
    others = [v for v in args.variants if v != "fp32"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, variants, column in ((axes[0], args.variants, 3), (axes[1], others, 4)):
        width = 0.8 / max(len(variants), 1)
        for i, variant in enumerate(variants):
            xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(args.rows))]
            values = [cells[row, variant][column] for row in args.rows]
            color = f"C{args.variants.index(variant)}"
            ax.bar(xs, [v if isinstance(v, float) else 0 for v in values], width, label=variant, color=color)
            for x, v in zip(xs, values):
                if not isinstance(v, float):  # failed (or its fp32 did): mark the empty slot
                    ax.text(x, 0, " failed", rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(args.rows)), [f"{r}\n{layout(r, args.stages)}" for r in args.rows])
        ax.legend(fontsize=8)
    axes[0].set_title("training samples/s (median)")
    axes[1].axhline(1.0, color="#444", linewidth=0.8)
    axes[1].set_title("ratio to the row's fp32")
    fig.suptitle(f"bf16, channels_last, compile on {hardware()}")
    fig.tight_layout()
    fig.savefig(folder / "speed_features.png", dpi=110)


def bf16_hardware() -> str:
    """Whether this CPU computes bf16 in hardware (avx512_bf16 or AMX); without, oneDNN emulates it in fp32."""
    if torch.cuda.is_available():
        return f"CUDA bf16 supported: {torch.cuda.is_bf16_supported()}"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "CPU bf16 instructions: unknown"
    found = sorted(flags & {"avx512_bf16", "amx_bf16", "avx_ne_convert"})
    return f"CPU bf16 instructions: {', '.join(found) if found else 'none (bf16 is emulated)'}"


def header(args, rows: list[list]) -> str:
    threads = f"every row {args.stages} cores in all, except sequential (1 process x 1 thread)"
    return (
        f"# Speed features: bf16, channels_last, torch.compile per execution mode\n\nhardware: {hardware()}; "
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {bf16_hardware()}; "
        f"{threads}.\n\n"
        f"config: {args.config} --split.balance=uniform {' '.join(args.set)}; batch {args.batch}; K = 4 for "
        f"sequential and pipeline (P = {args.stages}), method e2e for e2e/ddp/1f1b (1f1b {args.microbatches} "
        f"microbatches); {args.steps} steps x {args.epochs} epochs per run, the first epoch excluded (warm-up, "
        f"compilation: see warm-up epoch s); median of {args.repeats} alternating repeats.\n\n"
        "vs fp32: median over repeats of the run's samples/s / the same repeat's fp32 run. efficiency (pipeline): "
        "samples/s / (batch / slowest stage's compute s per step). final top-1 is after this short budget, a "
        "sanity check; --accuracy measures accuracy.\n\n"
        + ratio_matrix(rows, args)
        + "\n\ncommand: python benchmarks/speed_features.py "
        + " ".join(sys.argv[1:])
    )


def accuracy_header(args) -> str:
    return (
        f"# Accuracy: {args.accuracy_variants[0]} vs {args.accuracy_variants[1]}\n\nhardware: {hardware()}; "
        f"{args.accuracy_epochs} epochs, the full training and "
        f"test sets (unless --set limits them), batch {args.batch}, evaluation every epoch, the same seed; "
        f"config: {args.config} --split.balance=uniform {' '.join(args.set)}.\n\nbest top-1 is the best over "
        f"epochs; points = 100 x ({args.accuracy_variants[1]} - {args.accuracy_variants[0]}).\n\n"
        "command: python benchmarks/speed_features.py " + " ".join(sys.argv[1:])
    )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=ROWS, help="none: skip the speed part")
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--stages", type=int, default=2, help="P: processes of the multi-process rows")
    parser.add_argument("--microbatches", type=int, default=4, help="1f1b's")
    parser.add_argument("--steps", type=int, default=30, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--test-subset", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run before it counts as failed")
    parser.add_argument("--accuracy", action="store_true", help="also the fp32 vs bf16 accuracy part")
    parser.add_argument("--accuracy-epochs", type=int, default=3)
    parser.add_argument(
        "--accuracy-variants",
        nargs=2,
        default=["fp32", "bf16"],
        choices=list(VARIANTS),
        help="the reference and the compared variant (e.g. fp32+cl bf16+cl: same math, faster on CPU)",
    )
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, section.key=value")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/<hardware>-<date>/...)")
    args = parser.parse_args()
    if args.rows and "fp32" not in args.variants:
        parser.error("--variants must include fp32 (every ratio is to it)")
    if not args.rows and not args.accuracy:
        parser.error("nothing to do: give --rows, or --accuracy")
    return args


def main() -> None:
    args = parse_args()
    folder = results_dir("speed_features", args.out)
    run_root = folder / "runs"
    run_root.mkdir(exist_ok=True)
    meta = {"hardware": hardware(), "torch": torch.__version__, "config": vars(args)}
    if args.rows:
        results = measure(args, run_root)
        rows = speed_table(results, args)
        runs = [o for per in results.values() for o in per]
        print(write_outputs(folder, "speed_features", COLUMNS, rows, {**meta, "runs": runs}, header(args, rows)))
        plot(folder, rows, args)
    if args.accuracy:
        rows, outcomes = accuracy_part(args, run_root)
        text = write_outputs(
            folder, "speed_features_accuracy", ACCURACY_COLUMNS, rows, {**meta, "runs": outcomes}, accuracy_header(args)
        )
        print(text)


if __name__ == "__main__":
    main()
