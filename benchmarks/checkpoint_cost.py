"""What a checkpoint costs: its size on disk and the time to write and to read it, for one network.

    python benchmarks/checkpoint_cost.py                       # ResNet-110, K = 4 InfoPro, CIFAR-shaped data
    python benchmarks/checkpoint_cost.py --depth 32 --k 8 --repeats 5

Runs a short sequential job on synthetic CIFAR-shaped data with a checkpoint after every step (so every
module's optimizer state exists), times every write (``checkpoint.save``: DCP write, digests, meta.json,
rename), then times reading the last one back into a fresh job's stage (``--train.resume``). Prints the
medians and the size, with the machine and the config.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import hardware

from pipelocal import checkpoint
from pipelocal.config_parse import load_config
from pipelocal.job import run_job
from pipelocal.runtime.stage import Stage


def timed(fn, into: list[float]):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        into.append(time.perf_counter() - start)
        return out

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=110)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--method", default="infopro")
    parser.add_argument("--repeats", type=int, default=5, help="checkpoints written (one per step)")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="ckpt-cost-"))
    keys = [
        "--mode=sequential",
        f"--method.name={args.method}",
        f"--model.depth={args.depth}",
        f"--split.num_modules={args.k}",
        "--split.balance=uniform",
        "--data.name=synthetic",
        "--data.synthetic_shape=[3,32,32]",
        f"--data.synthetic_train={16 * (args.repeats + 1)}",
        "--data.synthetic_test=16",
        "--data.batch_size=16",
        "--data.eval_batch_size=16",
        "--train.epochs=1",
        "--checkpoint.every_steps=1",
        "--checkpoint.keep=0",
        "--metrics.console=none",
        f"--metrics.out_dir={out}",
    ]
    writes, reads = [], []
    checkpoint.save = timed(checkpoint.save, writes)
    run_job(load_config(None, [*keys, "--metrics.run_name=a"]))
    last = checkpoint.complete(out / "a" / "checkpoints")[-1]
    Stage.load_checkpoint = timed(Stage.load_checkpoint, reads)
    run_job(load_config(None, [*keys, "--metrics.run_name=b", f"--train.resume={last}", "--checkpoint.final=false"]))
    size = sum(f.stat().st_size for f in last.iterdir())
    tensors = sum(1 for v in checkpoint.stored_metadata(last).values() if v[0] is not None)
    print(f"machine: {hardware()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"config: cifar_resnet-{args.depth}, K={args.k}, {args.method}, one process (sequential), local disk {out}")
    print(
        f"checkpoint: {size / 2**20:.1f} MiB, {tensors} tensors (parameters, buffers, optimizer state); "
        f"write median {statistics.median(writes):.2f} s over {len(writes)} (min {min(writes):.2f}, "
        f"max {max(writes):.2f}); read into a fresh stage {statistics.median(reads):.2f} s"
    )


if __name__ == "__main__":
    main()
