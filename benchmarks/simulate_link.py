"""The link figures the simulator takes on CPU, measured with gloo between 2 local processes (run by torchrun).

One-way time of an isend/irecv of each size (half a ping-pong's round trip, median of repeats), a 2-rank
all-reduce per size, and what torch's DDP adds to a step of the validation runs' net (ResNet-20, 64 rows a
replica) over the same step without communication: buffer broadcast, reducer hooks and bucket copies, gloo's
threads on the cores the backward uses. Rank 0 prints them as one JSON line. One thread per process and
glibc keeping freed memory, as the runs use.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pipelocal.runtime import host_memory

ROOT = Path(__file__).resolve().parent.parent

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


def ddp_overhead(rows: int = 64, repeats: int = 15) -> dict:
    """Median step time of ResNet-20 at ``rows`` under DDP and without communication (the module itself), and
    their difference: the per-step cost of torch DDP on gloo that the simulator's DDP schedule takes as input."""
    from torch.nn.parallel import DistributedDataParallel

    from pipelocal.config_parse import load_config
    from pipelocal.data import DataInfo
    from pipelocal.runtime.local_net import backbone_for

    cfg = load_config(ROOT / "configs/fmnist/pipeline_infopro_p2.yaml", ["--method.name=e2e"])
    backbone = backbone_for(cfg, DataInfo(10, (1, 28, 28)))
    net = torch.nn.Sequential(*backbone.units, backbone.classifier)
    ddp = DistributedDataParallel(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(rows, 1, 28, 28), torch.randint(0, 10, (rows,))

    def step(model) -> float:
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter() - start

    times = {"ddp": [], "alone": []}
    for r in range(repeats + 2):  # interleaved, so a drift of the host's speed falls on both alike
        dist.barrier()
        for name, model in (("ddp", ddp), ("alone", net)):
            t = step(model)
            if r >= 2:
                times[name].append(t)
    out = {name: statistics.median(ts) for name, ts in times.items()}
    return {"rows": rows, "ddp_s": out["ddp"], "alone_s": out["alone"], "overhead_s": out["ddp"] - out["alone"]}


def main() -> None:
    torch.set_num_threads(1)
    host_memory.keep_freed_memory()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = {"sizes": SIZES, "one_way_s": [one_way(n, rank) for n in SIZES]}
    out["all_reduce_s"] = [all_reduce(n) for n in SIZES]
    out["ddp"] = ddp_overhead()
    if rank == 0:
        print(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
