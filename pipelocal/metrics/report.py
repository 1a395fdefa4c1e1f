"""The closing lines of a run, from its :class:`RunSummary`: per-stage medians, per-module memory, accuracy."""

from __future__ import annotations

from pipelocal.metrics.console import Console, format_duration
from pipelocal.metrics.summary import RunSummary

MIB = 2**20


def closing_report(summary: RunSummary, console: Console) -> None:
    stages = summary.stages
    columns = ["stage", "samples/s", "util", "wait recv", "wait send", "compute ms/step", "max staleness"]
    columns += ["saved MiB", "CUDA peak MiB"]
    rows = [
        [
            s.stage,
            round(s.samples_per_s_median, 1),
            round(s.utilisation_median, 3),
            round(s.recv_wait_frac_median, 3),
            round(s.send_wait_frac_median, 3),
            round(s.compute_s_per_step_median * 1e3, 1),
            s.staleness_max,
            round(s.saved_bytes_peak_max / MIB, 1),
            None if s.cuda_peak_bytes is None else round(s.cuda_peak_bytes / MIB, 1),
        ]
        for s in stages
    ]
    if any(s.grad_wait_frac_median or s.delay_max is not None for s in stages):
        columns += ["guided", "wait grad", "delay mean/max", "kept+stash MiB"]
        for row, s in zip(rows, stages):
            delay = "-" if s.delay_max is None else f"{s.delay_mean:.2f}/{s.delay_max}"
            held = (s.kept_bytes_peak + s.stash_bytes_peak) / MIB
            row += [s.guided_steps, round(s.grad_wait_frac_median, 3), delay, round(held, 1)]
    if any(s.reuse or s.dropped for s in stages):
        columns += ["steps", "fresh", "reused", "dropped unused", "staleness p50/p95/max", "buffer MiB"]
        for row, s in zip(rows, stages):
            st = s.staleness
            reused = s.steps - s.fresh if s.reuse else 0
            row += [s.steps, s.fresh if s.reuse else s.steps, reused, s.dropped_unused]
            row += [f"{st.p50}/{st.p95}/{st.max}", round(s.buffer_bytes_peak / MIB, 1)]
    if any(s.replicas > 1 for s in stages):
        columns += ["replicas", "wait all-reduce", "all-reduce ms/step"]
        for row, s in zip(rows, stages):
            row += [s.replicas, round(s.dp_wait_frac_median, 3), round(s.dp_wait_s_per_step_median * 1e3, 1)]
    if any(s.sleep_s_per_step_median for s in stages):
        columns.append("injected sleep ms/step")
        for row, s in zip(rows, stages):
            row.append(round(s.sleep_s_per_step_median * 1e3, 1))
    console.table("per-stage medians over epochs", columns, rows)
    if len(summary.saved_bytes_peak) == len(summary.module_units):  # the local modes measure per module
        saved = zip(summary.module_units, summary.saved_bytes_peak)
        modules = [[i, str(units), round(b / MIB, 1)] for i, (units, b) in enumerate(saved)]
        console.table("per-module peak saved activations (MiB)", ["module", "units", "MiB"], modules)
    where = "at the last stage" if len(stages) > 1 else ""
    final, best = summary.final_top1, summary.best_top1
    best_text = "-" if best is None else f"{best:.4f} (epoch {summary.best_epoch})"
    console.print(
        f"final test top-1 {_acc(final)} | best test top-1 {best_text} | "
        f"{summary.samples_per_s_median:.1f} samples/s {where} (median epoch)".replace("  ", " ")
    )


def trained_line(epochs: int, elapsed_s: float, expected_s: float | None = None) -> str:
    """How long the run took on this process (evaluations and checkpoints included), beside what was expected
    after its first epoch: "trained 3 epochs in 1m23s (expected 1m20s after the first)"."""
    expected = f" (expected {format_duration(expected_s)} after the first)" if expected_s is not None else ""
    return f"trained {epochs} epoch{'s' if epochs != 1 else ''} in {format_duration(elapsed_s)}{expected}"


def _acc(value) -> str:
    return "-" if value is None else f"{value:.4f}"
