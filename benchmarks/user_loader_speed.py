"""Loader speed on a user's data (data.name: package.module:function): images per second the training loader
delivers for several ``data.workers``, against the built-in in-memory loader of the same images.

    python benchmarks/user_loader_speed.py [--batches 40] [--workers 0 1 2] [--batch-size 128]

The user data is examples/fmnist_data.py (Fashion-MNIST as a torch Dataset that augments per sample in
Python); the built-in one is data.name=fashion_mnist (uint8 tensors augmented a batch at a time). Only the
loader runs: no network. Prints one line per setting with the host, threads and load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelocal.config_parse import load_config  # noqa: E402
from pipelocal.data import build_loaders  # noqa: E402


def rate(name: str, workers: int, batches: int, batch_size: int, device: torch.device) -> float:
    cfg = load_config(None, [f"--data.name={name}", f"--data.workers={workers}", f"--data.batch_size={batch_size}"])
    train, _, _ = build_loaders(cfg.data, device, 0)
    it = iter(train)
    next(it)  # workers started, first batch in: the steady state is what an epoch sees
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        seen += len(next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    host = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {device}"
    print(f"host: {host}; torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")
    builtin = rate("fashion_mnist", 0, args.batches, args.batch_size, device)
    print(f"built-in fashion_mnist (in memory): {builtin:,.0f} images/s")
    for workers in args.workers:
        user = rate("examples.fmnist_data:fashion_mnist", workers, args.batches, args.batch_size, device)
        print(f"user Dataset, data.workers={workers}: {user:,.0f} images/s (pin_memory={device.type == 'cuda'})")


if __name__ == "__main__":
    main()
