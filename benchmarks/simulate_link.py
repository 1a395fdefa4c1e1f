"""The link figures the simulator takes on CPU, measured with gloo between 2 local processes (run by torchrun).

One-way time of an isend/irecv of each size (half a ping-pong's round trip, median of repeats), and a
2-rank all-reduce per size; rank 0 prints them as one JSON line. One thread per process, as the runs use.
"""

from __future__ import annotations

import json
import statistics
import time

import torch
import torch.distributed as dist

SIZES = [4096, 65536, 1 << 20, 4 << 20, 16 << 20]


def one_way(nbytes: int, rank: int, repeats: int = 12) -> float:
    t = torch.zeros(nbytes // 4)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        if rank == 0:
            dist.send(t, 1)
            dist.recv(t, 1)
        else:
            dist.recv(t, 0)
            dist.send(t, 0)
        times.append((time.perf_counter() - start) / 2)
    return statistics.median(times[2:])


def all_reduce(nbytes: int, repeats: int = 12) -> float:
    t = torch.ones(nbytes // 4)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = {"sizes": SIZES, "one_way_s": [one_way(n, rank) for n in SIZES]}
    out["all_reduce_s"] = [all_reduce(n) for n in SIZES]
    if rank == 0:
        print(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
