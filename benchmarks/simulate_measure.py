"""Measure what the simulator is validated against, on this machine: the inputs (unit costs, link and all-reduce
times) and the runs (samples/s), each with the load average it ran under.

    python benchmarks/simulate_measure.py [--steps 20] [--epochs 3] [--passes 3] [--only NAME ...]

Each run also records the cores other tenants of the machine kept busy while it ran (/proc/stat's busy time
less the run's own CPU time, over its wall time). Inputs are measured apart from the runs (chained training
steps per unit and head on the wall clock, beside profile_units as ``split.balance: time`` uses it; a gloo
ping-pong and all-reduce; torch DDP's own cost; the co-run slowdown of processes computing at once, in rounds
taken between the runs' passes), so the model is never fitted to the runs it predicts. Writes measured.json in
the simulate results folder (benchmarks/results/<hardware>-<date>/simulate/).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import time
from pathlib import Path

import torch
from common import SYNTHETIC, hardware, pipelocal_command, results_dir, run_job

from pipelocal.config_parse import load_config
from pipelocal.data import DataInfo
from pipelocal.data.sources import Batch
from pipelocal.methods import CrossEntropyHead
from pipelocal.runtime import host_memory, profile
from pipelocal.runtime.local_net import backbone_for
from pipelocal.runtime.numerics import Numerics

ROOT = Path(__file__).resolve().parent.parent
FMNIST = DataInfo(10, (1, 28, 28))
# name: (config, processes, overrides): the validation set (issue 31); every run 2 cores in all
RUNS = {
    "e2e": ("configs/fmnist/pipeline_infopro_p2.yaml", 1, ["--mode=e2e", "--method.name=e2e", "--train.threads=2"]),
    "pipeline-greedy": ("configs/fmnist/pipeline_greedy_p2.yaml", 2, []),
    "pipeline-dgl": ("configs/fmnist/pipeline_dgl_p2.yaml", 2, []),
    "pipeline-infopro": ("configs/fmnist/pipeline_infopro_p2.yaml", 2, []),
    "1f1b": ("configs/fmnist/pipeline_infopro_p2.yaml", 2, ["--mode=1f1b", "--method.name=e2e"]),
    "gpipe": ("configs/fmnist/pipeline_infopro_p2.yaml", 2, ["--mode=gpipe", "--method.name=e2e"]),
    "ddp": ("configs/fmnist/pipeline_infopro_p2.yaml", 2, ["--mode=ddp", "--method.name=e2e"]),
    "guidance-sync-2": ("configs/fmnist/pipeline_infopro_p2.yaml", 2, ["--guidance.every=2", "--guidance.mode=sync"]),
    "guidance-sync-10": (
        "configs/fmnist/pipeline_infopro_p2.yaml",
        2,
        ["--guidance.every=10", "--guidance.mode=sync"],
    ),
    "mesh-1x2": ("configs/fmnist/pipeline_infopro_p2.yaml", 2, ["--pipeline.replicas=2"]),
    "default-4proc": ("configs/default.yaml", 4, []),
}


def busy_cores_s() -> float:
    """CPU seconds every process on this machine has used since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this script's finished children (the runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def load1() -> float:
    return os.getloadavg()[0]


class Subject:
    """One profile's net: a config's backbone and the head a module ending at each unit would get, prepared as
    the run trains them (threads, memory format), and a batch of ``batch`` rows."""

    def __init__(self, config: str, overrides: list[str], threads: int, batch: int):
        self.threads, self.batch = threads, batch
        self.cfg = load_config(ROOT / config, [*overrides, f"--data.batch_size={batch}"])
        self.numerics = Numerics.of(self.cfg, torch.device("cpu"))
        self.backbone = self.numerics.prepare(backbone_for(self.cfg, FMNIST))
        n, k = self.backbone.num_units, self.cfg.split.num_modules
        heads = [profile._head_at(self.cfg, FMNIST, self.backbone, u, k) for u in range(n - 1)]
        heads.append(CrossEntropyHead(self.backbone.classifier))
        self.heads = [self.numerics.prepare(h) if h is not None else None for h in heads]
        x = torch.rand(batch, *FMNIST.input_shape)
        self.data = Batch(x, torch.randint(0, FMNIST.num_classes, (batch,)), x)
        self.rounds: list[tuple[list, list, list]] = []

    def time_chain(self, repeats: int) -> None:
        """Time ``repeats`` chained steps (:func:`chained_step`) and keep them."""
        torch.set_num_threads(self.threads)
        self.rounds += [chained_step(self) for _ in range(repeats)]

    def costs(self) -> dict:
        """The medians of every timed step, with the saved bytes profile_units measures, shapes and parameters."""
        torch.set_num_threads(self.threads)
        prof = profile.profile_units(self.cfg, FMNIST, torch.device("cpu"))
        fwd, bwd, head_s = ([statistics.median(c) for c in zip(*(r[i] for r in self.rounds))] for i in range(3))
        shapes = self.backbone.unit_shapes(FMNIST.input_shape)
        return {
            "threads": self.threads,
            "batch": self.batch,
            "clock": f"wall, chained steps (median of {len(self.rounds)}, taken in rounds across the profiles)",
            "unit_s": [f + b for f, b in zip(fwd, bwd)],
            "head_s": head_s,
            "forward_s": fwd,
            "profile_units_s": prof.unit_s,
            "profile_head_s": prof.head_s,
            "unit_saved_bytes": prof.unit_bytes,
            "head_saved_bytes": prof.head_bytes,
            "out_bytes": [self.batch * 4 * int(torch.tensor(s).prod()) for s in shapes],
            "param_bytes": [sum(p.numel() * 4 for p in u.parameters()) for u in self.backbone.units],
            "classifier_param_bytes": sum(p.numel() * 4 for p in self.backbone.classifier.parameters()),
        }


def chained_step(subject: Subject) -> tuple[list, list, list]:
    """Each unit's forward and backward and each head's forward + backward, timed as a training step runs them:
    one pass through the whole chain (every unit's activations alive, each unit once), on the wall clock.
    profile_units repeats one unit in a hot loop instead; both are kept (profile_units_s)."""
    backbone, heads, data, numerics = subject.backbone, subject.heads, subject.data, subject.numerics
    n = len(backbone.units)
    fwd, bwd, head_s = [0.0] * n, [0.0] * n, [0.0] * n
    ins, outs, h = [], [], numerics.layout(data.x)
    for u, unit in enumerate(backbone.units):
        hi = h.detach().requires_grad_(u > 0)
        start = time.perf_counter()
        h = unit(hi)
        fwd[u] = time.perf_counter() - start
        ins.append(hi)
        outs.append(h)
    for u, head in enumerate(heads[:-1]):
        if head is not None:
            start = time.perf_counter()
            head(outs[u].detach().requires_grad_(True), data)["loss"].backward()  # with its input gradient
            head_s[u] = time.perf_counter() - start
    last = outs[-1].detach().requires_grad_(True)  # the classifier's head gives the chain its gradient
    start = time.perf_counter()
    heads[-1](last, data)["loss"].backward()
    head_s[-1] = time.perf_counter() - start
    grad = last.grad
    for u in reversed(range(n)):
        start = time.perf_counter()
        outs[u].backward(grad)
        bwd[u] = time.perf_counter() - start
        grad = ins[u].grad
    return fwd, bwd, head_s


INFOPRO = "configs/fmnist/pipeline_infopro_p2.yaml"
E2E = ["--method.name=e2e"]
# name: (config, overrides, threads, rows): what the validation runs train, per process
PROFILES = {
    "greedy": ("configs/fmnist/pipeline_greedy_p2.yaml", [], 1, 128),
    "dgl": ("configs/fmnist/pipeline_dgl_p2.yaml", [], 1, 128),
    "infopro": (INFOPRO, [], 1, 128),
    "infopro-b64": (INFOPRO, [], 1, 64),
    "infopro-k4-cl": ("configs/default.yaml", [], 1, 128),
    "e2e-2threads": (INFOPRO, E2E, 2, 128),
    "e2e-1thread": (INFOPRO, E2E, 1, 128),
    "e2e-b64": (INFOPRO, E2E, 1, 64),
    "e2e-b32": (INFOPRO, E2E, 1, 32),
}


def profiles(rounds: int = 4, repeats: int = 2) -> dict:
    """Every profile's chained steps, taken in ``rounds`` rounds across all of them (after one warm-up step
    each), so a slow minute of the host falls on every profile alike, not on one."""
    subjects = {name: Subject(*spec) for name, spec in PROFILES.items()}
    for subject in subjects.values():
        torch.set_num_threads(subject.threads)
        chained_step(subject)  # warm-up
    for _ in range(rounds):
        for subject in subjects.values():
            subject.time_chain(repeats)
    return {name: subject.costs() for name, subject in subjects.items()}


def head_param_bytes(config: str, overrides: list[str]) -> list[float]:
    """Each unit's head's parameter bytes (what a replica all-reduces with its module; no timing)."""
    from pipelocal.methods import CrossEntropyHead
    from pipelocal.runtime.profile import _head_at

    cfg = load_config(ROOT / config, overrides)
    backbone = backbone_for(cfg, FMNIST)
    n, out = backbone.num_units, []
    for u in range(n):
        head = (
            CrossEntropyHead(backbone.classifier)
            if u == n - 1
            else _head_at(cfg, FMNIST, backbone, u, cfg.split.num_modules)
        )
        out.append(float(sum(p.numel() * 4 for p in head.parameters())) if head is not None else 0.0)
    return out


def optimizer_s_per_byte(nbytes: int = 4 << 20, repeats: int = 7) -> float:
    """An SGD step with momentum and weight decay (as trained) on one thread, per parameter byte."""
    torch.set_num_threads(1)
    params = [torch.nn.Parameter(torch.randn(nbytes // 4 // 16)) for _ in range(16)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]) / nbytes


def extras(data: dict) -> None:
    """Inputs beside the unit costs: heads' parameters, the optimizer's cost."""
    data["extras_uptime"] = uptime()
    for name, prof in data["profiles"].items():
        config, overrides, _, _ = PROFILES[name]
        prof["head_param_bytes"] = head_param_bytes(config, overrides)
    data["optimizer_s_per_byte"] = optimizer_s_per_byte()


def _corun_worker(name: str, steps: int, barrier, out) -> None:
    """One of ``corun``'s processes: a profile's chained steps, started with the others at the barrier."""
    host_memory.keep_freed_memory()
    subject = Subject(*PROFILES[name])
    torch.set_num_threads(subject.threads)
    chained_step(subject)  # warm-up
    barrier.wait()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        chained_step(subject)
        times.append(time.perf_counter() - start)
    out.put(statistics.median(times))


def corun(rounds: int = 4, name: str = "greedy", steps: int = 6, samples: dict | None = None) -> dict:
    """How processes that compute at once slow each other, beyond their share of the cores: the same profile's
    chained steps (one thread each) in 1, 2, ... 2 x cores processes started together. slowdown[k - 1] is the
    step time with k processes over the step time alone x max(1, k / cores) (the share a fair scheduler gives).
    The profiles are taken alone, the runs are not: a pipeline's two stages compute at once on one memory bus.
    ``samples`` (processes -> step times) adds to earlier rounds: the factor drifts by several percent from one
    minute to the next on a shared host, so the runs' measurement takes rounds between its passes."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a forked child of a process that ran OpenMP may hang
    cores = len(os.sched_getaffinity(0))
    counts = list(range(1, min(2 * cores, 16) + 1))
    step_s = {k: list((samples or {}).get(str(k), [])) for k in counts}
    for _ in range(rounds):
        for k in counts:
            barrier, out = ctx.Barrier(k), ctx.Queue()
            procs = [ctx.Process(target=_corun_worker, args=(name, steps, barrier, out)) for _ in range(k)]
            for proc in procs:
                proc.start()
            step_s[k] += [out.get() for _ in procs]
            for proc in procs:
                proc.join()
    median = {k: statistics.median(v) for k, v in step_s.items()}
    return {
        "profile": name,
        "processes": counts,
        "step_s": [median[k] for k in counts],
        "slowdown": [median[k] / (median[1] * max(1.0, k / cores)) for k in counts],
        "samples": {str(k): v for k, v in step_s.items()},
        "uptime": uptime(),
    }


def links() -> dict:
    """Gloo isend/irecv one-way time per size and a 2-rank all-reduce, measured by simulate_link.py."""
    cmd = pipelocal_command([], 2)[:-3] + [str(ROOT / "benchmarks" / "simulate_link.py")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_run(name: str, args, folder: Path, attempt: int = 0) -> dict:
    config, nproc, overrides = RUNS[name]
    cmd = pipelocal_command(
        [
            "--config",
            config,
            *overrides,
            *SYNTHETIC,
            f"--data.synthetic_train={args.steps * 128}",
            f"--train.epochs={args.epochs}",
            f"--train.eval_every={args.epochs}",
            "--metrics.console=none",
            f"--metrics.out_dir={folder / 'runs'}",
            f"--metrics.run_name={name}-pass{attempt}",
        ],
        nproc,
    )
    before, start, busy, ours = uptime(), time.time(), busy_cores_s(), children_cpu_s()
    summary = run_job(cmd, folder / "runs" / f"{name}-pass{attempt}", ROOT)
    wall = time.time() - start
    others = max(0.0, (busy_cores_s() - busy) - (children_cpu_s() - ours)) / wall
    return {
        "others_cores": round(others, 3),
        "name": name,
        "processes": nproc,
        "command": " ".join(cmd[cmd.index("pipelocal.run") + 1 :]),
        "samples_per_s": summary.samples_per_s_median,
        "utilisation": [s.utilisation_median for s in summary.stages],
        "compute_s_per_step": [s.compute_s_per_step_median for s in summary.stages],
        "module_units": summary.module_units,  # the split the run chose (balance: time profiles at its start)
        "steps_per_epoch": args.steps,
        "epochs": args.epochs,
        "uptime_before": before,
        "uptime_after": uptime(),
        "seconds": round(time.time() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--passes", type=int, default=3, help="measure each run this many times (median)")
    parser.add_argument("--only", nargs="*", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--extras", action="store_true", help="only add the extra inputs to measured.json")
    parser.add_argument("--runs-only", action="store_true", help="keep the inputs measured.json has, measure runs")
    parser.add_argument("--out")
    args = parser.parse_args()
    host_memory.keep_freed_memory()  # as the runs do (train.host_allocator: reuse)
    folder = results_dir("simulate", args.out)
    path = folder / "measured.json"
    data = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    if args.extras:
        extras(data)
        data["corun"] = corun()
        path.write_text(json.dumps(data, indent=1))
        return
    if args.runs_only:
        measure_runs(data, args, folder, path)
        return
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    data["hardware"] = hardware()
    data["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if "Model name" in ln), "?")
    data["cores"] = len(os.sched_getaffinity(0))
    data["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    data["profiles_uptime"] = uptime()
    data["profiles"] = profiles()
    extras(data)
    data["links_uptime"] = uptime()
    data["links"] = links()
    path.write_text(json.dumps(data, indent=1))
    measure_runs(data, args, folder, path)


def measure_runs(data: dict, args, folder: Path, path: Path) -> None:
    """Every run ``args.passes`` times, one pass over the set after another (so a slow minute of the host falls
    on one pass of each run, not on every pass of one); a run's figure is the median of its passes."""
    passes = {name: [] for name in args.only}
    data.pop("corun", None)  # measured anew, in rounds between this measurement's passes
    for p in range(args.passes):
        # the co-run slowdown drifts with the host's minute: its rounds are spread over the runs' window too
        data["corun"] = corun(2, samples=data.get("corun", {}).get("samples"))
        for name in args.only:
            passes[name].append(measure_run(name, args, folder, p))
            print(p, name, passes[name][-1]["samples_per_s"], passes[name][-1]["uptime_before"], flush=True)
            run = dict(passes[name][len(passes[name]) // 2])
            run["samples_per_s"] = statistics.median(r["samples_per_s"] for r in passes[name])
            run["passes"] = [r["samples_per_s"] for r in passes[name]]
            run["others_cores"] = statistics.median(r["others_cores"] for r in passes[name])
            data["runs"][name] = run
            path.write_text(json.dumps(data, indent=1))
    print(path)


if __name__ == "__main__":
    main()
