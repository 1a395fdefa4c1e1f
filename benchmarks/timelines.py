"""The schedules as pictures: one timeline (metrics.timeline) per schedule, on the same model, data and steps.

    python benchmarks/timelines.py                      # Fashion-MNIST subset, ResNet-20, P = 2, about 3 minutes
    python benchmarks/timelines.py --only pipeline 1f1b

Each job trains ``--steps`` steps and records steps ``--window``; its ``timeline.png`` (one row per stage: forward,
aux head, backward, optimizer, receive and send waits, gradient waits, evaluation) is copied to the results
folder as ``<schedule>.png`` with its ``timeline.json`` (open in https://ui.perfetto.dev). Schedules: the local
pipeline (InfoPro, K = 2), GPipe and 1F1B (end-to-end, 4 microbatches), the local pipeline with guidance every
3 steps, sync and async, and a straggler (stage 0 twice as slow) with the fifo queue and with replay buffers.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import hardware, pipelocal_command, results_dir, run_job

LOCAL = ["--mode=pipeline", "--method.name=infopro", "--split.num_modules=2"]
E2E = ["--method.name=e2e", "--split.num_modules=2", "--pipeline.microbatches=4"]
ROOT = Path(__file__).resolve().parent.parent
STRAGGLER = [*LOCAL, "--pipeline.slowdown.stage=0", "--pipeline.slowdown.factor=2"]
SCHEDULES = {
    "pipeline": LOCAL,
    "gpipe": ["--mode=gpipe", *E2E],
    "1f1b": ["--mode=1f1b", *E2E],
    "guidance-sync": [*LOCAL, "--guidance.every=3", "--guidance.mode=sync"],
    "guidance-async": [*LOCAL, "--guidance.every=3", "--guidance.mode=async"],
    "straggler-fifo": STRAGGLER,
    "straggler-replay": [*STRAGGLER, "--pipeline.buffer=replay", "--pipeline.buffer_size=4"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(SCHEDULES), choices=list(SCHEDULES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--window", type=int, nargs=2, default=[5, 8])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every job (section.key=value)")
    parser.add_argument("--out")
    args = parser.parse_args()
    folder = results_dir("timelines", args.out)
    lines = [f"# Timelines of the schedules\n\nhardware: {hardware()}; {args.steps} steps of batch {args.batch}, "
             f"steps {args.window[0]}-{args.window[1]} recorded; P = 2 processes x 1 thread.\n"]  # fmt: skip
    for name in args.only:
        shared = [
            "--config=configs/default.yaml",
            f"--data.train_subset={args.steps * args.batch}",
            f"--data.batch_size={args.batch}",
            "--data.test_subset=512",
            "--train.epochs=1",
            "--split.balance=uniform",
            "--checkpoint.every_epochs=0",
            "--checkpoint.final=false",
            f"--metrics.timeline=[{args.window[0]},{args.window[1]}]",
            "--metrics.console=none",
            f"--metrics.out_dir={folder / 'runs'}",
            f"--metrics.run_name={name}",
            *[f"--{kv}" for kv in args.set],
        ]
        run_dir = folder / "runs" / name
        run_job(pipelocal_command([*shared, *SCHEDULES[name]], 2), run_dir, ROOT)
        for ext in ("png", "json"):
            shutil.copy(run_dir / f"timeline.{ext}", folder / f"{name}.{ext}")
        lines.append(f"## {name}\n\n`{' '.join(SCHEDULES[name])}`\n\n![{name}]({name}.png)\n")
    (folder / "timelines.md").write_text("\n".join(lines))
    print(f"timelines in {folder}")


if __name__ == "__main__":
    main()
