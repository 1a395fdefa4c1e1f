"""Measure what the simulator is validated against, on this machine: the inputs (unit costs, link and all-reduce
times) and the runs (samples/s), each with the load average it ran under.

    python benchmarks/simulate_measure.py [--steps 20] [--epochs 3] [--only NAME ...]

Each run also records the cores other tenants of the machine kept busy while it ran (/proc/stat's busy time
less the run's own CPU time, over its wall time). Inputs are measured apart from the runs (profile_units, as
``split.balance: time`` uses it, on the CPU clock; a gloo ping-pong), so the model is never fitted to the runs
it predicts. Writes measured.json in the simulate results
folder (benchmarks/results/<hardware>-<date>/simulate/).
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
from common import hardware, pipelocal_command, results_dir, run_job

from pipelocal.config_parse import load_config
from pipelocal.data import DataInfo
from pipelocal.runtime import profile
from pipelocal.runtime.local_net import backbone_for

ROOT = Path(__file__).resolve().parent.parent
FMNIST = DataInfo(10, (1, 28, 28))
# Fashion-MNIST is not installed on every host: data of its shape costs the same to train on
SYNTHETIC = ["--data.name=synthetic", "--data.synthetic_shape=[1,28,28]", "--data.synthetic_test=256"]
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


def cpu_clock(threads: int):
    """Seconds of CPU time per thread: the work itself, which other tenants of the cores do not stretch as they
    stretch wall time (at 2 threads this assumes the two share the work evenly)."""
    return lambda *_: time.process_time() / threads


def unit_costs(config: str, overrides: list[str], threads: int, batch: int) -> dict:
    """profile_units at ``batch`` rows and ``threads`` threads, plus forward-only times, shapes and parameters;
    timed on the CPU clock (:func:`cpu_clock`), the profiler's own code otherwise."""
    cfg = load_config(ROOT / config, [*overrides, f"--data.batch_size={batch}"])
    torch.set_num_threads(threads)
    clock, profile._now = cpu_clock(threads), cpu_clock(threads)
    prof = profile.profile_units(cfg, FMNIST, torch.device("cpu"))
    backbone = backbone_for(cfg, FMNIST)
    shapes = backbone.unit_shapes(FMNIST.input_shape)
    fwd, x = [], torch.rand(batch, *FMNIST.input_shape)
    with torch.no_grad():
        for unit in backbone.units:
            times = []
            for _ in range(5):
                start = clock()
                y = unit(x)
                times.append(clock() - start)
            fwd.append(statistics.median(times[2:]))
            x = y
    params = [sum(p.numel() * 4 for p in u.parameters()) for u in backbone.units]
    return {
        "threads": threads,
        "batch": batch,
        "unit_s": prof.unit_s,
        "head_s": prof.head_s,
        "forward_s": fwd,
        "unit_saved_bytes": prof.unit_bytes,
        "head_saved_bytes": prof.head_bytes,
        "out_bytes": [batch * 4 * int(torch.tensor(s).prod()) for s in shapes],
        "param_bytes": params,
        "classifier_param_bytes": sum(p.numel() * 4 for p in backbone.classifier.parameters()),
    }


def profiles() -> dict:
    infopro = "configs/fmnist/pipeline_infopro_p2.yaml"
    out = {
        name: unit_costs(cfg, ov, 1, 128)
        for name, (cfg, ov) in {
            "greedy": ("configs/fmnist/pipeline_greedy_p2.yaml", []),
            "dgl": ("configs/fmnist/pipeline_dgl_p2.yaml", []),
            "infopro": (infopro, []),
            "infopro-k4-cl": ("configs/default.yaml", []),
        }.items()
    }
    out["e2e-2threads"] = unit_costs(infopro, ["--method.name=e2e"], 2, 128)
    out["e2e-1thread"] = unit_costs(infopro, ["--method.name=e2e"], 1, 128)
    out["e2e-b64"] = unit_costs(infopro, ["--method.name=e2e"], 1, 64)
    out["e2e-b32"] = unit_costs(infopro, ["--method.name=e2e"], 1, 32)
    return out


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
    """Inputs added after the first measurement: InfoPro at 64 rows (a replica's share), heads' parameters,
    the optimizer's cost."""
    infopro = "configs/fmnist/pipeline_infopro_p2.yaml"
    data["extras_uptime"] = uptime()
    data["profiles"]["infopro-b64"] = unit_costs(infopro, [], 1, 64)
    sources = {
        "greedy": ("configs/fmnist/pipeline_greedy_p2.yaml", []),
        "dgl": ("configs/fmnist/pipeline_dgl_p2.yaml", []),
        "infopro": (infopro, []),
        "infopro-b64": (infopro, []),
        "infopro-k4-cl": ("configs/default.yaml", []),
    }
    for name, prof in data["profiles"].items():
        config, overrides = sources.get(name, (infopro, ["--method.name=e2e"]))
        prof["head_param_bytes"] = head_param_bytes(config, overrides)
    data["optimizer_s_per_byte"] = optimizer_s_per_byte()


def links() -> dict:
    """Gloo isend/irecv one-way time per size and a 2-rank all-reduce, measured by simulate_link.py."""
    cmd = pipelocal_command([], 2)[:-3] + [str(ROOT / "benchmarks" / "simulate_link.py")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_run(name: str, args, folder: Path) -> dict:
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
            f"--metrics.run_name={name}",
        ],
        nproc,
    )
    before, start, busy, ours = uptime(), time.time(), busy_cores_s(), children_cpu_s()
    summary = run_job(cmd, folder / "runs" / name, ROOT)
    wall = time.time() - start
    others = max(0.0, (busy_cores_s() - busy) - (children_cpu_s() - ours)) / wall
    return {
        "others_cores": round(others, 3),
        "name": name,
        "processes": nproc,
        "command": " ".join(cmd[cmd.index("pipelocal.run") + 1 :]),
        "samples_per_s": summary.samples_per_s_median,
        "utilisation": [s.utilisation_median for s in summary.stages],
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
    parser.add_argument("--only", nargs="*", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--extras", action="store_true", help="only add the extra inputs to measured.json")
    parser.add_argument("--runs-only", action="store_true", help="keep the inputs measured.json has, measure runs")
    parser.add_argument("--out")
    args = parser.parse_args()
    folder = results_dir("simulate", args.out)
    path = folder / "measured.json"
    data = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    if args.extras:
        extras(data)
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
    for name in args.only:
        data["runs"][name] = measure_run(name, args, folder)
        print(name, data["runs"][name]["samples_per_s"], data["runs"][name]["uptime_before"], flush=True)
        path.write_text(json.dumps(data, indent=1))
    print(path)


if __name__ == "__main__":
    main()
