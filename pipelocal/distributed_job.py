"""The multi-process job under torchrun: the local pipeline (mode=pipeline) and the E2E baselines
(ddp, gpipe, 1f1b), one driver for all.

Start-up (collectives, before any data moves): rank 0 reads the dataset, names the run directory and
chooses the split (profiling, when asked), and every rank learns the numbers it needs. Then the mode's
registered loop builder (``schedules.LOOPS``) builds this rank's part and its loop, every rank from the
same seed. Metrics are gathered to rank 0 at epoch ends, where evaluation drains the pipeline anyway;
live figures travel off the hot path (metrics/live.py).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
import torch.distributed as dist

from pipelocal.checkpoint import save_stage
from pipelocal.config import JobConfig, dump_yaml, to_dict
from pipelocal.data import build_loaders
from pipelocal.distributed.setup import Groups, Topology, destroy_distributed, init_distributed
from pipelocal.metrics.console import Console, epoch_line, stage_row
from pipelocal.metrics.jsonl import JsonlWriter
from pipelocal.metrics.live import LiveCollector, LiveReporter
from pipelocal.metrics.memory import cuda_peak_bytes
from pipelocal.runtime.profile import split_for
from pipelocal.runtime.stage import Stage
from pipelocal.schedules import LOOPS, e2e_parallel, stream  # noqa: F401  (the modules register their loops)
from pipelocal.schedules.sequential import accuracies
from pipelocal.schedules.stream import StageLoop, StageStats


def run_distributed(cfg: JobConfig, make_run_dir) -> dict | None:
    """Run this rank's part to the end; rank 0 returns the summary, the others None."""
    topo, groups = init_distributed(cfg.pipeline.timeout_s)
    if topo.device.type == "cpu" and cfg.pipeline.threads:
        torch.set_num_threads(cfg.pipeline.threads)
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    console = Console(cfg.metrics.console if topo.is_first_stage else "none")
    loaders, setup = None, {}
    if topo.is_first_stage:
        train_loader, test_loader, info = build_loaders(cfg.data, topo.device, cfg.train.seed)
        loaders = (train_loader, test_loader)
        run_dir = make_run_dir(cfg)
        dump_yaml(cfg, run_dir / "config.yaml")
        ranges, split_line = split_for(cfg, info, topo.device)  # profiled once, here, so every rank agrees
        console.print(split_line)
        setup = {
            "info": info,
            "train_len": train_loader.num_samples,
            "test_len": test_loader.num_samples,
            "run_dir": str(run_dir),
            "ranges": ranges,
        }
    box = [setup]
    dist.broadcast_object_list(box, src=0, group=groups.control)
    setup = box[0]
    loop, stage = LOOPS.get(cfg.mode)(cfg, topo, groups, setup, loaders)
    console.print(describe(cfg, topo, stage, setup))
    summary = train_stages(cfg, topo, groups, loop, console, Path(setup["run_dir"]))
    state = loop.checkpoint()
    if state is not None:
        save_stage(state, Path(setup["run_dir"]), topo.stage_index)
    dist.barrier(group=groups.control)
    destroy_distributed()
    return summary


def describe(cfg: JobConfig, topo: Topology, stage: Stage, setup: dict) -> str:
    return (
        f"{cfg.mode} | {cfg.method.name} | {cfg.model.name}-{cfg.model.depth} | K={stage.method.info.num_modules} "
        f"P={topo.num_stages} | queue depth {cfg.pipeline.queue_depth} | {cfg.data.name} | {topo.backend} on "
        f"{topo.device.type} | run dir {setup['run_dir']}"
    )


# ------------------------------------------------------------------------------------------ epochs


def train_stages(cfg: JobConfig, topo: Topology, groups: Groups, loop: StageLoop, console: Console, run_dir: Path):
    coordinator = topo.is_first_stage
    collector = LiveCollector(groups.stats, topo.num_stages) if coordinator else None
    reporter = None if coordinator else LiveReporter(groups.stats)
    log = JsonlWriter(run_dir / "metrics.jsonl") if coordinator else None
    every = cfg.pipeline.live_every or cfg.metrics.log_every
    loop.on_step = _live_hook(loop, every, collector, reporter, console, topo.stage_index)
    history, best = [], None
    for epoch in range(cfg.train.epochs):
        stats = loop.train_epoch(epoch)
        if epoch in loop.plan.eval_epochs:
            loop.evaluate(stats)
        stats_obj = {**stats.__dict__, "compute_s": stats.compute_s, "cuda_peak_bytes": cuda_peak_bytes(topo.device)}
        gathered = [None] * topo.num_stages if coordinator else None
        dist.gather_object(stats_obj, gathered, dst=0, group=groups.control)  # epoch end: the pipeline is drained
        if coordinator:
            record = epoch_record(epoch, gathered)
            if record.get("test_top1") is not None and (best is None or record["test_top1"] > best[0]):
                best = (record["test_top1"], epoch)
            log.write(record)
            history.append(record)
            console.stage_table(f"epoch {epoch + 1}/{cfg.train.epochs}", stage_rows(record))
            console.print(epoch_line(record, "at the last stage"))
    loop.stop()
    if reporter is not None:
        reporter.report({"stage": topo.stage_index}, final=True)
    if collector is not None:
        collector.drain()
        log.close()
        console.close()
        summary = summarise(cfg, history, best, run_dir, topo, loop.stage.method.info.num_modules)
        report(summary, console)
        return summary
    return None


def report(summary: dict, console: Console) -> None:
    """The closing lines of the main job: accuracy, then per-stage throughput, utilisation and memory."""
    rows = [
        [
            s["stage"],
            round(s["samples_per_s_median"], 1),
            round(s["utilisation_median"], 3),
            round(s["recv_wait_frac_median"], 3),
            round(s["send_wait_frac_median"], 3),
            round(s["compute_s_per_step_median"] * 1e3, 1),
            s["staleness_max"],
            round(max(s["saved_bytes_peak"] or [0]) / 2**20, 1),
            None if s["cuda_peak_bytes"] is None else round(s["cuda_peak_bytes"] / 2**20, 1),
        ]
        for s in summary["stages"]
    ]
    columns = [
        "stage",
        "samples/s",
        "util",
        "wait recv",
        "wait send",
        "compute ms/step",
        "max staleness",
        "saved MiB",
        "CUDA peak MiB",
    ]
    if any(s["grad_wait_frac_median"] or s["delay_max"] is not None for s in summary["stages"]):
        columns += ["guided", "wait grad", "delay mean/max", "kept+stash MiB"]
        for row, s in zip(rows, summary["stages"]):
            delay = "-" if s["delay_max"] is None else f"{s['delay_mean']:.2f}/{s['delay_max']}"
            held = (s["kept_bytes_peak"] + s["stash_bytes_peak"]) / 2**20
            row += [s["guided_steps"], round(s["grad_wait_frac_median"], 3), delay, round(held, 1)]
    if any(s["reuse"] or s["dropped"] for s in summary["stages"]):
        columns += ["steps", "fresh", "reused", "dropped unused", "staleness p50/p95/max", "buffer MiB"]
        for row, s in zip(rows, summary["stages"]):
            st = s["staleness"]
            reused = s["steps"] - s["fresh"] if s["reuse"] else 0
            row += [s["steps"], s["fresh"] if s["reuse"] else s["steps"], reused, s["dropped_unused"]]
            row += [f"{st['p50']}/{st['p95']}/{st['max']}", round(s["buffer_bytes_peak"] / 2**20, 1)]
    if any(s["sleep_s_per_step_median"] for s in summary["stages"]):
        columns.append("injected sleep ms/step")
        for row, s in zip(rows, summary["stages"]):
            row.append(round(s["sleep_s_per_step_median"] * 1e3, 1))
    console.table("per-stage medians over epochs", columns, rows)
    final, best = summary["final_top1"], summary["best_top1"]
    console.print(
        f"final test top-1 {final:.4f} | best test top-1 {best:.4f} (epoch {summary['best_epoch'] + 1}) | "
        f"{summary['samples_per_s_median']:.1f} samples/s at the last stage (median epoch)"
    )


def _live_hook(loop, every: int, collector, reporter, console: Console, stage_index: int):
    import time

    def hook(epoch, step, steps, stats: StageStats, losses, start, waits):
        if step % every and step != steps:
            return
        elapsed = time.perf_counter() - start
        recv, send = loop.waits()
        row = {
            "stage": stage_index,
            "epoch": epoch,
            "step": step,
            "steps": steps,
            "samples_per_s": stats.samples / elapsed,
            "recv_wait_frac": (recv - waits[0]) / elapsed,
            "send_wait_frac": (send - waits[1]) / elapsed,
            "staleness": statistics.fmean(stats.staleness) if stats.staleness else 0.0,
            "loss": losses[-1].item() if len(losses) else 0.0,  # host sync, once per interval only
            "saved_mib": max(stats.saved_peak or [0]) / 2**20,
        }
        row["compute_frac"] = 1 - row["recv_wait_frac"] - row["send_wait_frac"]
        if reporter is not None:
            reporter.report(row)
            return
        latest = {0: row, **collector.poll()}
        console.stage_table(f"epoch {epoch + 1} step {step}/{steps}", [_live_row(latest[k]) for k in sorted(latest)])

    return hook


def _live_row(r: dict) -> list:
    return stage_row(
        r["stage"],
        r["samples_per_s"],
        r["compute_frac"],
        r["recv_wait_frac"],
        r["send_wait_frac"],
        r["staleness"],
        r["loss"],
        r["saved_mib"],
    )


def epoch_record(epoch: int, gathered: list[dict]) -> dict:
    stages = []
    for g in gathered:
        wall = max(g["wall_s"], 1e-9)
        stages.append(
            {
                "stage": g["stage"],
                "samples_per_s": g["samples"] / wall,
                "utilisation": g["compute_s"] / wall,
                "recv_wait_frac": g["recv_wait_s"] / wall,
                "send_wait_frac": g["send_wait_s"] / wall,
                "compute_s_per_step": g["compute_s"] / max(g["steps"], 1),
                "staleness_mean": statistics.fmean(g["staleness"]) if g["staleness"] else 0.0,
                "staleness_max": max(g["staleness"]) if g["staleness"] else 0,
                "loss": g["loss"],
                "saved_bytes_peak": g["saved_peak"],
                "cuda_peak_bytes": g["cuda_peak_bytes"],
                "wall_s": g["wall_s"],
                "log_frac": g["log_s"] / wall,
                "guided_steps": g["guided"],
                "grad_wait_frac": g["grad_wait_s"] / wall,
                "delay_mean": statistics.fmean(g["delays"]) if g["delays"] else None,
                "delay_max": max(g["delays"]) if g["delays"] else None,
                "kept_bytes_peak": g["kept_bytes_peak"],
                "stash_bytes_peak": g["stash_bytes_peak"],
                "steps": g["steps"],
                "busy_s_per_step": g["busy_s"] / max(g["steps"], 1),
                "sleep_s_per_step": g["sleep_s"] / max(g["steps"], 1),
                "idle_frac": g["recv_wait_s"] / wall,
                "staleness": _distribution(g["staleness"]),
                "reuse": {int(k): v for k, v in sorted(g["reuse"].items())},
                "fresh": g["fresh"],
                "dropped": g["dropped"],
                "dropped_unused": g["dropped_unused"],
                "buffer_bytes_peak": g["buffer_bytes_peak"],
            }
        )
    record = {"kind": "epoch", "epoch": epoch, "stages": stages, "samples_per_s": stages[-1]["samples_per_s"]}
    if gathered[0]["correct"]:
        correct = [c for g in gathered for c in g["correct"]]
        acc = accuracies(correct, gathered[-1]["eval_samples"])
        record.update(test_top1=acc["top1"], module_top1=acc["module_top1"])
    return record


def stage_rows(record: dict) -> list[list]:
    return [
        stage_row(
            s["stage"],
            s["samples_per_s"],
            s["utilisation"],
            s["recv_wait_frac"],
            s["send_wait_frac"],
            s["staleness_mean"],
            s["loss"][-1] if s["loss"] else None,
            max(s["saved_bytes_peak"] or [0]) / 2**20,
        )
        for s in record["stages"]
    ]


def _distribution(values: list[int]) -> dict:
    """mean, p50, p95 and max of a list of step differences (zeros when empty)."""
    if not values:
        return {"mean": 0.0, "p50": 0, "p95": 0, "max": 0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"mean": statistics.fmean(ordered), "p50": pick(0.5), "p95": pick(0.95), "max": ordered[-1]}


def _summed(histograms: list[dict]) -> dict:
    out: dict = {}
    for h in histograms:
        for k, v in h.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def _mean_of(values) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def summarise(cfg: JobConfig, history: list[dict], best, run_dir: Path, topo: Topology, num_modules: int) -> dict:
    per_stage = []
    for s in range(topo.num_stages):
        rows = [h["stages"][s] for h in history]
        per_stage.append(
            {
                "stage": s,
                "samples_per_s_median": statistics.median(r["samples_per_s"] for r in rows),
                "utilisation_median": statistics.median(r["utilisation"] for r in rows),
                "recv_wait_frac_median": statistics.median(r["recv_wait_frac"] for r in rows),
                "send_wait_frac_median": statistics.median(r["send_wait_frac"] for r in rows),
                "compute_s_per_step_median": statistics.median(r["compute_s_per_step"] for r in rows),
                "staleness_max": max(r["staleness_max"] for r in rows),
                "saved_bytes_peak": [max(v) for v in zip(*[r["saved_bytes_peak"] for r in rows])],
                "cuda_peak_bytes": rows[-1]["cuda_peak_bytes"],
                "log_frac_median": statistics.median(r["log_frac"] for r in rows),
                "guided_steps": sum(r["guided_steps"] for r in rows),
                "grad_wait_frac_median": statistics.median(r["grad_wait_frac"] for r in rows),
                "delay_mean": _mean_of(r["delay_mean"] for r in rows),
                "delay_max": max((r["delay_max"] for r in rows if r["delay_max"] is not None), default=None),
                "kept_bytes_peak": max(r["kept_bytes_peak"] for r in rows),
                "stash_bytes_peak": max(r["stash_bytes_peak"] for r in rows),
                "steps": sum(r["steps"] for r in rows),
                "busy_s_per_step_median": statistics.median(r["busy_s_per_step"] for r in rows),
                "sleep_s_per_step_median": statistics.median(r["sleep_s_per_step"] for r in rows),
                "idle_frac_median": statistics.median(r["idle_frac"] for r in rows),
                "staleness": rows[-1]["staleness"],
                "reuse": _summed([r["reuse"] for r in rows]),
                "fresh": sum(r["fresh"] for r in rows),
                "dropped": sum(r["dropped"] for r in rows),
                "dropped_unused": sum(r["dropped_unused"] for r in rows),
                "buffer_bytes_peak": max(r["buffer_bytes_peak"] for r in rows),
            }
        )
    summary = {
        "mode": cfg.mode,
        "method": cfg.method.name,
        "num_stages": topo.num_stages,
        "num_modules": num_modules,
        "final_top1": history[-1].get("test_top1"),
        "best_top1": best[0] if best else None,
        "best_epoch": best[1] if best else None,
        "samples_per_s_median": statistics.median(h["samples_per_s"] for h in history),
        "stages": per_stage,
        "device": topo.device.type,
        "backend": topo.backend,
        "config": to_dict(cfg),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
