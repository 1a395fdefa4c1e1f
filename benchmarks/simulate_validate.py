"""The simulator against this machine's measured runs: each run's job, built from the measured inputs alone.

measured.json (simulate_measure.py) holds the inputs (per-unit costs from the profiler ``split.balance: time``
uses, gloo link and all-reduce times, the optimizer's cost) and the runs. The module split of each run is
the one the run recorded (its start-up profile chose it; ``balanced_ranges`` on this profile where a run
did not record it); the cores are the machine's, less what other tenants kept busy during that run.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from pipelocal.sim.engine import Machine
from pipelocal.sim.model import Result, simulate
from pipelocal.sim.schedules import Job, Units
from pipelocal.split import balanced_ranges

RESULTS = Path(__file__).resolve().parent / "results"


def latest_measured() -> Path:
    # newest by the time measuring began (two hosts may measure on one day)
    found = sorted(RESULTS.glob("*/simulate/measured.json"), key=lambda p: json.loads(p.read_text())["date"])
    if not found:
        raise SystemExit("no measured runs: run python benchmarks/simulate_measure.py first")
    return found[-1]


def units_of(prof: dict, optimizer_s_per_byte: float) -> Units:
    fwd = prof["forward_s"]
    return Units(
        rows=prof["batch"],
        fwd=fwd,
        bwd=[max(t - f, 0.0) for t, f in zip(prof["unit_s"], fwd)],  # unit_s is forward + backward
        head=prof["head_s"],
        out_bytes=prof["out_bytes"],
        param_bytes=prof["param_bytes"],
        saved_bytes=prof["unit_saved_bytes"],
        head_saved_bytes=prof["head_saved_bytes"],
        head_param_bytes=prof.get("head_param_bytes", [0.0] * len(fwd)),
        threads=prof["threads"],
        optimizer_s_per_byte=optimizer_s_per_byte,
    )


def fit_line(sizes: list[float], times: list[float]) -> tuple[float, float]:
    """Least squares time = a + size / bandwidth: (a, bandwidth)."""
    mx, my = statistics.fmean(sizes), statistics.fmean(times)
    slope = sum((x - mx) * (y - my) for x, y in zip(sizes, times)) / sum((x - mx) ** 2 for x in sizes)
    return max(my - slope * mx, 0.0), 1 / slope


def machine_of(data: dict, others_cores: float = 0.0) -> Machine:
    links = data["links"]
    latency, bandwidth = fit_line(links["sizes"], links["one_way_s"])
    # a 2-member ring moves 2 (n - 1)/n = 1 x the bytes: the fitted slope is the bus bandwidth itself
    reduce_latency, reduce_bandwidth = fit_line(links["sizes"], links["all_reduce_s"])
    return Machine(
        cores=max(data["cores"] - others_cores, 0.25),
        latency_s=latency,
        bandwidth=bandwidth,
        reduce_latency_s=reduce_latency,
        reduce_bandwidth=reduce_bandwidth,
        corun=tuple(data["corun"]["slowdown"]) if "corun" in data else (1.0,),
    )


def balanced(prof: dict, k: int) -> list[tuple[int, int]]:
    """The split balance: time would choose on ``prof``."""
    return [tuple(r) for r in balanced_ranges(prof["unit_s"], prof["head_s"], k)]


def job_of(name: str, data: dict, steps: int) -> tuple[Job, dict[int, Units]]:
    """The job a measured run ran and its costs per batch size (rows -> Units)."""
    p, opt = data["profiles"], data.get("optimizer_s_per_byte", 0.0)
    at = {}
    chosen = data["runs"].get(name, {}).get("module_units")

    def ranges_of(prof: dict, k: int) -> list[tuple[int, int]]:
        # the split the run chose at its start, where recorded (its own profile, not this one, picked it)
        return [tuple(r) for r in chosen] if chosen and len(chosen) == k else balanced(prof, k)

    def use(*names):
        for n in names:
            at[p[n]["batch"]] = units_of(p[n], opt)

    two = [[0], [1]]
    if name == "e2e":
        # one process on 2 threads: the profile taken on 2 threads (intra-op scaling as measured, not 2x)
        use("e2e-2threads")
        return Job("e2e", [(0, len(p["e2e-2threads"]["unit_s"]))], [[0]], steps=steps), at
    if name in ("1f1b", "gpipe"):
        use("e2e-b32")
        return Job(name, ranges_of(p["e2e-1thread"], 2), two, steps=steps, microbatches=4), at
    if name == "ddp":
        use("e2e-b64")
        # torch's DDP costs each step more than its all-reduce (simulate_link.py measures it on this net)
        overhead = data["links"].get("ddp", {}).get("overhead_s", 0.0)
        return Job("ddp", [(0, len(p["e2e-b64"]["unit_s"]))], [[0]], 2, steps, ddp_overhead_s=overhead), at
    if name == "mesh-1x2":
        use("infopro-b64")
        return Job("local", ranges_of(p["infopro"], 2), [[0, 1]], replicas=2, steps=steps), at
    if name == "default-4proc":
        use("infopro-k4-cl")
        return Job("local", ranges_of(p["infopro-k4-cl"], 4), [[0], [1], [2], [3]], steps=steps), at
    method = name.split("-")[1] if name.startswith("pipeline-") else "infopro"
    use(method)
    every = int(name.rsplit("-", 1)[1]) if name.startswith("guidance-sync") else 0
    return Job("local", ranges_of(p[method], 2), two, steps=steps, guide_every=every), at


def predict(name: str, data: dict, others_cores: float = 0.0) -> Result:
    run = data["runs"][name]
    job, at = job_of(name, data, run["steps_per_epoch"])
    return simulate(job, lambda rows: at[rows], machine_of(data, others_cores))


def validate(path: Path | None = None, out=print) -> float:
    """Print predicted, measured and relative error per run, then the summary line; return the max error."""
    path = path or latest_measured()
    data = json.loads(path.read_text())
    shown = (
        path.resolve().relative_to(RESULTS.parent.parent)
        if path.resolve().is_relative_to(RESULTS.parent.parent)
        else path
    )
    out(f"measured on {data['cpu_model']} ({data['cores']} cores), {data['date']}: {shown}")
    out(f"{'run':18} {'predicted':>10} {'measured':>10} {'rel.err':>8} {'scaled':>7}  others' cores, load before")
    preds = {
        name: predict(name, data, run.get("others_cores", 0.0)).samples_per_s for name, run in data["runs"].items()
    }
    # One number for the load's common effect: how far the spread of the errors is the schedule model's own
    scale = statistics.median(preds[n] / r["samples_per_s"] for n, r in data["runs"].items())
    errors, scaled = [], []
    for name, run in data["runs"].items():
        pred, meas = preds[name], run["samples_per_s"]
        errors.append(abs(pred - meas) / meas)
        scaled.append(abs(pred / scale - meas) / meas)
        load = run["uptime_before"].split("load average:")[-1].strip()
        out(
            f"{name:18} {pred:10.1f} {meas:10.1f} {errors[-1]:8.3f} {scaled[-1]:7.3f}  "
            f"{run.get('others_cores', 0.0):.2f}, {load}"
        )
    out(
        f"with one common factor for the load (median predicted/measured {scale:.2f}, fitted, so not the result): "
        f"max relative error {max(scaled):.3f}"
    )
    worst = max(errors)
    out(f"validated against {len(errors)} measured runs: max relative error {worst:.3f}")
    return worst


def predict_mode(mode: str, method: str, data: dict, steps: int, microbatches: int) -> float | None:
    """The simulated samples/s of a throughput_vs_e2e mode (P = K = 2) on an idle machine, or None where the
    measured inputs do not cover it (another method's profile, another microbatch count, DDG)."""
    names = {
        "e2e": "e2e",
        "ddp": "ddp",
        "gpipe": "gpipe" if microbatches == 4 else None,
        "1f1b": "1f1b" if microbatches == 4 else None,
        "pipeline": f"pipeline-{method}" if method in ("greedy", "dgl", "infopro") else None,
        "pipeline+guidance": "guidance-sync-20" if method == "infopro" else None,
        "pipeline-dp": "mesh-1x2" if method == "infopro" else None,
    }
    name = names.get(mode)
    if name is None:
        return None
    job, at = job_of(name, data, steps)
    return simulate(job, lambda rows: at[rows], machine_of(data)).samples_per_s
