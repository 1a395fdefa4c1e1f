"""Projections past this machine: the seeds' nets on 4, 8 and 16 A100/H100-class GPUs, NVLink and 100 Gb/s Ethernet.

For each net, K and cluster: the local pipeline of each method at its best P x R (P stages of K / P modules,
R = n / P replicas), 1F1B at its best P x R (2P microbatches per replica), and DDP; samples/s in steady state,
the largest device's memory, and the local pipeline's bound (R x rows over its slowest stage's compute).
Every assumption is in ASSUMPTIONS, written beside the results.
"""

from __future__ import annotations

from dataclasses import replace

from pipelocal.config_parse import load_config
from pipelocal.data import DataInfo
from pipelocal.sim.device import A100, H100, Efficiency, NetModel
from pipelocal.sim.engine import Machine
from pipelocal.sim.model import simulate
from pipelocal.sim.schedules import Job
from pipelocal.split import balanced_ranges

CIFAR, IMAGENET = DataInfo(10, (3, 32, 32)), DataInfo(1000, (3, 224, 224))
METHODS = ("greedy", "dgl", "infopro")
# net: (data, config per method, Ks); global batch from the seeds' configs (1024 for both)
NETS = {
    "CIFAR ResNet-32": (CIFAR, "configs/cifar10/resnet32_{m}_k{k}.yaml", (2, 4, 8, 16)),
    "CIFAR ResNet-110": (CIFAR, "configs/cifar10/resnet110_{m}_k{k}.yaml", (2, 4, 8, 16)),
    "ImageNet ResNet-101": (IMAGENET, "configs/imagenet/resnet101_infopro_k2.yaml", (4, 8)),
}
GPUS = {"A100": (A100, 300e9), "H100": (H100, 450e9)}  # NVLink per direction: 600 and 900 GB/s both ways
ETHERNET = 12.5e9  # 100 Gb/s
LATENCY = {"NVLink": 5e-6, "100GbE": 25e-6}
HOST_OVERHEAD_S = 30e-6
WORLDS = (4, 8, 16)
ROWS = 1024
ASSUMPTIONS = [
    (
        "A100 peak, bandwidth, memory",
        "312 TFLOP/s bf16 dense, 2.039 TB/s HBM2e, 80 GB",
        "NVIDIA A100 datasheet, via glennklockwood.com/garden/processors/A100",
    ),
    (
        "H100 peak, bandwidth, memory",
        "989 TFLOP/s bf16 dense, 3.35 TB/s HBM3, 80 GB",
        "NVIDIA H100 datasheet, via glennklockwood.com/garden/processors/h100",
    ),
    ("NVLink per GPU, one direction", "A100 300 GB/s, H100 450 GB/s (600/900 GB/s both ways)", "NVIDIA datasheets"),
    ("NVLink at 16 GPUs", "every GPU at full NVLink speed (an NVLink switch system)", "assumption: an upper bound"),
    ("100 Gb/s Ethernet", "12.5 GB/s per GPU per direction, ring all-reduce at that bus bandwidth", "line rate"),
    ("latency per message", "NVLink 5 us, Ethernet 25 us; all-reduce 2(n-1) x that", "assumption"),
    ("host overhead per message", f"{HOST_OVERHEAD_S * 1e6:.0f} us (a gloo header on the host)", "assumption"),
    ("conv/linear efficiency", f"{Efficiency().matmul:.0%} of peak", "assumption (eager cuDNN, bf16)"),
    ("element-wise efficiency", f"{Efficiency().memory:.0%} of peak bandwidth", "assumption"),
    (
        "op floor",
        f"{Efficiency().op_floor_s * 1e6:.0f} us per eager op",
        "PyTorch eager dispatch, 5-25 us per op (jiahuanglin.xyz, PyTorch op to kernel launch)",
    ),
    ("precision", "bf16 activations, fp32 weights, gradients and momentum", "pipelocal's bf16 path"),
    ("global batch", f"{ROWS} (CIFAR and ImageNet)", "the seeds' configs"),
    ("backward", "2x the forward's FLOPs and bytes", "standard for conv nets"),
    ("tensor-core tile", "a layer with < 64 output channels pays for 64", "assumption (GEMM tile width)"),
    ("1F1B microbatches", "2P per replica", "assumption"),
    (
        "InfoPro on ImageNet at K = 4, 8",
        "lambdas [5, 0.75, 0, 1]",
        "the seed's [5, 0.75, 0, 0] leaves modules lossless",
    ),
    ("greedy on ResNet-110", "the DGL seed's config with method.name = greedy", "no greedy seed for ResNet-110"),
    ("steady state", "samples/s over the second half of 20+ steps, before the drain", "this simulator"),
]


def net_config(net: str, method: str, k: int):
    data, pattern, _ = NETS[net]
    if net.startswith("ImageNet"):
        over = [f"--method.name={method}", f"--split.num_modules={k}", "--split.boundaries=null"]
        over += ["--split.balance=uniform", "--method.lambdas=[5,0.75,0,1]"] if method == "infopro" else []
        return load_config(pattern, over), data
    name = pattern.format(m=method, k=k)
    if method == "greedy" and "resnet110" in name:  # no greedy seed for ResNet-110: DGL's, with greedy's heads
        return load_config(pattern.format(m="dgl", k=k), ["--method.name=greedy"]), data
    return load_config(name, []), data


def machine(gpu: str, link: str, n: int) -> Machine:
    bw = GPUS[gpu][1] if link == "NVLink" else ETHERNET
    lat = LATENCY[link]
    return Machine(None, lat, bw, 2 * (n - 1) * lat, bw, HOST_OVERHEAD_S)


def stage_groups(k: int, p: int) -> list[list[int]]:
    return [list(range(s * k // p, (s + 1) * k // p)) for s in range(p)]


def local_best(model: NetModel, k: int, n: int, m: Machine, dev, eff) -> dict:
    best = None
    for p in [p for p in (1, 2, 4, 8, 16) if p <= k and k % p == 0 and n % p == 0]:
        r = n // p
        u = model.units(ROWS // r, dev, eff)
        ranges = [tuple(x) for x in balanced_ranges([f + b for f, b in zip(u.fwd, u.bwd)], u.head, k)]
        job = Job("local", ranges, stage_groups(k, p), replicas=r, steps=max(20, 4 * p), rows=ROWS)
        res = simulate(job, lambda rows, u=u: u, m)
        stage = max(sum(sum(u.module(*ranges[i])) for i in g) for g in job.stages)
        row = {"layout": f"{p}x{r}", "rate": res.trace.steady_samples_per_s, "memory": max(res.memory)}
        row["bound"] = r * (ROWS // r) / stage
        if best is None or row["rate"] > best["rate"]:
            best = row
    return best


def e2e_best(model: NetModel, n: int, m: Machine, dev, eff) -> dict:
    """DDP (P = 1) and 1F1B at each P x R; the best of each."""
    out = {}
    for p in [p for p in (1, 2, 4, 8, 16) if n % p == 0 and p <= len(model.unit_ops)]:
        r = n // p
        if p == 1:
            u = model.units(ROWS // r, dev, eff)
            job = Job("ddp", [(0, len(u.fwd))], [[0]], replicas=r, steps=6, rows=ROWS)
            name = "ddp"
        else:
            mb = 2 * p
            u = model.units(max(ROWS // r // mb, 1), dev, eff)
            heads = [0.0] * (len(u.fwd) - 1) + [u.head[-1]]
            ranges = [tuple(x) for x in balanced_ranges([f + b for f, b in zip(u.fwd, u.bwd)], heads, p)]
            job = Job("1f1b", ranges, [[i] for i in range(p)], replicas=r, steps=4, rows=ROWS, microbatches=mb)
            name = "1f1b"
        res = simulate(job, lambda rows, u=u: u, m)
        row = {"layout": f"{p}x{r}", "rate": res.trace.steady_samples_per_s, "memory": max(res.memory)}
        if name not in out or row["rate"] > out[name]["rate"]:
            out[name] = row
    return out


def project(nets=None, log=print) -> list[dict]:
    eff, rows = Efficiency(), []
    for net in nets or NETS:
        base = None
        for k in NETS[net][2]:
            models = {}
            for method in METHODS:
                try:
                    cfg, data = net_config(net, method, k)
                    models[method] = base = NetModel(cfg, data, like=base)
                except Exception as err:  # a method the seeds have no valid config for at this K: say so
                    log(f"{net} K={k} {method}: skipped ({type(err).__name__}: {err})")
            for gpu, (dev, _) in GPUS.items():
                for link in LATENCY:
                    for n in WORLDS:
                        m = machine(gpu, link, n)
                        row = {"net": net, "K": k, "gpu": gpu, "link": link, "n": n}
                        for method, model in models.items():
                            row[method] = local_best(model, k, n, m, dev, eff)
                        row.update(e2e_best(base, n, m, dev, replace(eff)))
                        rows.append(row)
                        log(summary(row))
    return rows


def summary(row: dict) -> str:
    parts = [f"{row['net']} K={row['K']} {row['n']}x{row['gpu']} {row['link']}:"]
    for key in (*METHODS, "1f1b", "ddp"):
        if key in row:
            parts.append(f"{key} {row[key]['rate']:.0f}/s ({row[key]['layout']})")
    return " ".join(parts)
