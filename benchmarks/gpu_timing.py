"""One GPU: e2e, sequential InfoPro K = 4 and the 4-stage local pipeline sharing the GPU, in fp32 and bf16.

    python benchmarks/gpu_timing.py                    # Fashion-MNIST when present, else synthetic data of its shape
    python benchmarks/gpu_timing.py --steps 100 --epochs 3

Each run trains ``--epochs`` epochs of ``--steps`` steps of ResNet-20 (batch ``--batch``); its figure is the median
epoch's samples/s at the last stage (the first epoch is warm-up). The 4-stage pipeline runs four processes on one
GPU, so its messages travel host-staged (gloo through pinned host buffers, docs/gpus.md): this measures what a
one-GPU workstation gets, not a pipeline of four GPUs. benchmarks/device_check.sh runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common import hardware, pipelocal_command, results_dir, run_job, write_outputs

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {  # name -> (processes, overrides)
    "e2e": (1, ["--mode=e2e", "--method.name=e2e", "--split.num_modules=1"]),
    "sequential infopro K=4": (1, ["--mode=sequential", "--method.name=infopro", "--split.num_modules=4"]),
    "pipeline infopro K=4, 4 stages on 1 GPU": (
        4,
        ["--mode=pipeline", "--method.name=infopro", "--split.num_modules=4"],
    ),
}
COLUMNS = ["layout", "precision", "processes", "samples/s", "vs e2e (same precision)", "CUDA peak MiB (largest stage)"]


def fashion_mnist_present() -> bool:
    """Is Fashion-MNIST where a run looks without --data.root (./data, $PIPELOCAL_DATA, Debian's folder)?"""
    bases = [Path("data"), Path(os.environ.get("PIPELOCAL_DATA", "~/.cache/pipelocal")).expanduser()]
    return any((base / "fashion-mnist").is_dir() for base in [*bases, Path("/usr/share/datasets")])


def command(args, processes: int, overrides: list[str], precision: str, folder: Path, name: str) -> list[str]:
    data = (
        ["--data.name=fashion_mnist"] if args.fmnist else ["--data.name=synthetic", "--data.synthetic_shape=[1,28,28]"]
    )
    return pipelocal_command(
        [
            *data,
            *overrides,
            "--model.name=cifar_resnet",
            "--model.depth=20",
            "--split.balance=uniform",
            f"--data.batch_size={args.batch}",
            f"--data.train_subset={args.steps * args.batch}",
            f"--data.synthetic_train={args.steps * args.batch}",
            "--data.test_subset=1000",
            f"--train.epochs={args.epochs}",
            f"--train.eval_every={args.epochs}",
            f"--train.precision={precision}",
            "--train.device=cuda",
            "--train.channels_last=true",
            "--metrics.console=none",
            f"--metrics.out_dir={folder}",
            f"--metrics.run_name={name}",
        ],
        processes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precisions", nargs="*", default=["fp32", "bf16"])
    parser.add_argument("--out")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_timing.py needs CUDA: no GPU is visible")
    args.fmnist = fashion_mnist_present()
    folder = results_dir("gpu_timing", args.out)
    rows, runs = [], {}
    for precision in args.precisions:
        rate_e2e = None
        for layout, (processes, overrides) in LAYOUTS.items():
            name = f"{layout.split()[0]}-{precision}"
            cmd = command(args, processes, overrides, precision, folder / "runs", name)
            summary = run_job(cmd, folder / "runs" / name, ROOT)
            rate = summary.samples_per_s_median
            rate_e2e = rate_e2e or rate
            cuda = summary.cuda_peak_bytes
            peak = None if cuda is None else round(cuda / 2**20)
            rows.append([layout, precision, processes, round(rate, 1), round(rate / rate_e2e, 3), peak])
            runs[name] = summary
    data = "Fashion-MNIST" if args.fmnist else "synthetic data of Fashion-MNIST's shape (no Fashion-MNIST found)"
    header = (
        f"# One GPU: e2e, sequential and a 4-stage pipeline sharing it\n\nhardware: {hardware()}; ResNet-20 on {data}, "
        f"batch {args.batch}, {args.steps} steps x {args.epochs} epochs per run (median epoch's samples/s), "
        "channels_last. The pipeline's 4 processes share the one GPU (host-staged messages).\n\n"
        "command: python benchmarks/gpu_timing.py " + " ".join(sys.argv[1:])
    )
    print(write_outputs(folder, "gpu_timing", COLUMNS, rows, {"hardware": hardware(), "runs": runs}, header))


if __name__ == "__main__":
    main()
