"""Throughput of two commits, measured in one session: did a change slow sequential mode or the pipeline?

    python benchmarks/compare_commits.py --before HEAD~1                  # against the working tree
    python benchmarks/compare_commits.py --before v1 --after v2 --repeats 5

Each commit is checked out into a temporary git worktree; jobs run from there (``python -m pipelocal.run``
puts the worktree first on the path), so both use this venv's torch. Runs alternate before/after, per
variant, ``--repeats`` times, so drift on a shared machine hits both alike. Per run the figure is the
summary's ``samples_per_s_median`` (median over epochs at the last stage; the first epoch is warm-up, so
use at least 3). Reported: each side's median over repeats, and after/before with its spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import hardware, pipelocal_command, results_dir, write_outputs

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "sequential": (1, ["--mode=sequential", "--train.threads=1"]),
    "pipeline P=2": (2, ["--mode=pipeline", "--pipeline.threads=1", "--split.num_modules=2"]),
}


def checkout(rev: str, where: Path) -> Path:
    if rev == "WORKTREE":
        return ROOT
    path = where / rev.replace("/", "_").replace("~", "-")
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(path), rev], cwd=ROOT, check=True)
    return path


def run(tree: Path, nproc: int, args: list[str], out: Path) -> float:
    subprocess.run(pipelocal_command(args, nproc), cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())["samples_per_s_median"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision")
    parser.add_argument("--after", default="WORKTREE", help="git revision (default: the working tree)")
    parser.add_argument("--config", default="configs/fmnist/pipeline_infopro_p2.yaml")
    parser.add_argument("--steps", type=int, default=40, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, section.key=value")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/<hardware>-<date>/...)")
    args = parser.parse_args()
    folder = results_dir("compare_commits", args.out)
    scratch = Path(tempfile.mkdtemp(prefix="compare-"))
    trees = {"before": checkout(args.before, scratch), "after": checkout(args.after, scratch)}
    common = [f"--config={(ROOT / args.config).resolve()}", *[f"--{kv}" for kv in args.set]]
    common += [f"--data.train_subset={args.steps * args.batch}", f"--data.batch_size={args.batch}"]
    common += [f"--train.epochs={args.epochs}", f"--train.eval_every={args.epochs}", "--metrics.console=none"]
    rates = {(v, side): [] for v in VARIANTS for side in trees}
    for r in range(args.repeats):
        for variant, (nproc, extra) in VARIANTS.items():
            for side, tree in trees.items():
                out = scratch / "runs" / f"{side}-{variant.replace(' ', '_')}-{r}"
                job = [*common, *extra, f"--metrics.out_dir={out.parent}", f"--metrics.run_name={out.name}"]
                rates[(variant, side)].append(run(tree, nproc, job, out))
                print(f"{variant:14s} {side:6s} repeat {r}: {rates[(variant, side)][-1]:.1f} samples/s", flush=True)
    for tree in trees.values():
        if tree != ROOT:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    rows = []
    for variant in VARIANTS:
        before, after = rates[(variant, "before")], rates[(variant, "after")]
        ratios = [a / b for a, b in zip(after, before)]
        rows.append(
            [variant, round(statistics.median(before), 1), round(statistics.median(after), 1)]
            + [round(statistics.median(ratios), 3), f"{min(ratios):.3f}-{max(ratios):.3f}"]
        )
    columns = ["variant", "before samples/s", "after samples/s", "after/before (median)", "range"]
    header = (
        f"# Throughput, {args.before} (before) vs {args.after} (after)\n\nHardware: {hardware()}. Config "
        f"{args.config} {' '.join(args.set)}, {args.steps} steps x {args.epochs} epochs of batch {args.batch}, "
        f"one thread per process, {args.repeats} alternating repeats; per run the median epoch's samples/s."
    )
    meta = {"before": args.before, "after": args.after, "rates": {f"{v}/{s}": x for (v, s), x in rates.items()}}
    print(write_outputs(folder, "compare_commits", columns, rows, meta, header))


if __name__ == "__main__":
    main()
