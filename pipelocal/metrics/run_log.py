"""What the trainer reports, on every rank: live rows during an epoch, the epoch's stats at its end, the
summary at the close. Rank 0 (the coordinator) writes the run directory and draws the console.

No collective on the hot path (docs/pipeline.md#no-stalls-from-bookkeeping): live rows travel off it
(metrics/live.py), and each stage's :class:`StageStats` is gathered once per epoch, at its end, where
evaluation drains the pipeline anyway. With one process nothing travels; the same types are written. Rank 0
also keeps the run's clock (the remaining time in the progress line and the live table, the elapsed time at the
close) and, with ``metrics.tensorboard``, writes the same figures as TensorBoard scalars (metrics/tensorboard.py).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pipelocal.config_parse import to_dict
from pipelocal.metrics.console import Console, epoch_line, format_duration, remaining_s
from pipelocal.metrics.jsonl import JsonlWriter
from pipelocal.metrics.live import LiveCollector, LiveReporter, LiveRow
from pipelocal.metrics.report import closing_report, trained_line
from pipelocal.metrics.run_files import provenance, write_summary_csv
from pipelocal.metrics.stats import EpochRecord, StageStats
from pipelocal.metrics.summary import RunSummary
from pipelocal.metrics.tensorboard import TensorBoardLog


@dataclass(frozen=True)
class Place:
    """Where this process sits in the job, as the metrics need it: the few figures job.py passes down from
    distributed/topology.py, so that the metrics layer imports nothing above it. ``reporters``: the ranks that
    send live rows to rank 0 (one per stage)."""

    rank: int
    world_size: int
    stage_index: int
    replica: int
    num_stages: int
    device: torch.device
    backend: str | None = None  # None: one process
    reporters: tuple[int, ...] = ()

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    def other_ranks(self) -> list[int]:
        return list(self.reporters)


class RunLog:
    """One per rank. ``control`` and ``stats`` are the gloo groups (None with one process)."""

    def __init__(self, cfg, place: Place, console: Console, run_dir: Path, control=None, stats_group=None, history=()):
        self.cfg, self.place, self.console, self.run_dir, self.control = cfg, place, console, Path(run_dir), control
        self.every = (cfg.pipeline.live_every or cfg.metrics.log_every) if place.distributed else cfg.metrics.log_every
        coordinator, distributed = place.is_coordinator, place.distributed
        self.collector = LiveCollector(stats_group, place.other_ranks()) if coordinator and distributed else None
        reports = distributed and place.rank in place.other_ranks()
        self.reporter = LiveReporter(stats_group) if reports else None
        self.log = JsonlWriter(self.run_dir / "metrics.jsonl") if coordinator else None
        if coordinator:
            console.file.open(self.run_dir / "log.txt")
        self.live = JsonlWriter(self.run_dir / "live.jsonl") if coordinator else None
        self.history = [EpochRecord.from_dict(r) for r in history]  # epochs before a resume (from the checkpoint)
        tensorboard = coordinator and cfg.metrics.tensorboard
        self.tensorboard = TensorBoardLog(self.run_dir / "tensorboard") if tensorboard else None
        self.clock = RunClock(cfg.train.epochs)
        self.lr: float | None = None  # the learning rate of the last logged step (the epoch's last at its end)

    @contextmanager
    def epoch(self, epoch: int, steps: int, start: float, waits, from_step: int = 0):
        """Yields ``on_step(stats, result, waits_fn, lr)``: every ``every`` steps the stage's live row goes to rank 0,
        which draws a progress line with the epoch's and the run's remaining time (one process) or the all-stage
        table, and appends it to live.jsonl. ``from_step``: the epoch's first step here (a resume starts part-way)."""
        title = f"epoch {epoch + 1}/{self.cfg.train.epochs}"
        one_stage = not self.place.distributed
        self.clock.start_epoch(epoch, steps, from_step)
        with self.console.progress(title, steps) if one_stage else _no_progress() as update:

            def on_step(stats: StageStats, result, current_waits, lr: float) -> None:
                self.lr = lr  # every step: the epoch's record carries its last step's rate
                if stats.steps % self.every and stats.steps != steps:
                    return
                if self.reporter is None and not self.place.is_coordinator:
                    return  # a later replica of a stage: its first replica's row stands for it
                if self.place.device.type == "cuda":  # once per window: time the device's work, not the host's lead
                    torch.cuda.synchronize(self.place.device)
                waits_now = current_waits()
                elapsed = time.perf_counter() - start
                row = _live_row(epoch, steps, stats, result, elapsed, waits, waits_now, lr)
                if self.reporter is not None:
                    self.reporter.report(row)
                    return
                rows = {0: row, **(self.collector.poll() if self.collector else {})}
                self._write_live([row])
                if self.tensorboard is not None:
                    self.tensorboard.live([rows[k] for k in sorted(rows)])
                left = self.clock.remaining_s(epoch, stats.steps)
                if one_stage:
                    update(stats.steps, {"loss": row.loss, "lr": lr, "samples/s": round(row.samples_per_s, 1)}, left)
                else:
                    cells = [rows[k].cells() for k in sorted(rows)]
                    when = f"elapsed {format_duration(self.clock.elapsed_s())}  run eta {format_duration(left)}"
                    self.console.stage_table(f"{title} step {stats.steps}/{steps}  {when}", cells)

            yield on_step

    def _write_live(self, own: list[LiveRow]) -> None:
        """live.jsonl: rank 0's row and every row the other stages sent since (each once); epochs from 1."""
        rows = own + (self.collector.take() if self.collector else [])
        for row in sorted(rows, key=lambda r: (r.epoch, r.step, r.stage)):
            self.live.write({"kind": "live", **row.__dict__, "epoch": row.epoch + 1})

    def end_epoch(self, epoch: int, stats: StageStats) -> None:
        """Gather every stage's epoch to rank 0 (the pipeline is drained here), which logs and prints it."""
        gathered = [stats]
        if self.place.distributed:
            gathered = [None] * self.place.world_size if self.place.is_coordinator else None
            dist.gather_object(stats, gathered, dst=0, group=self.control)
        if not self.place.is_coordinator:
            return
        record = EpochRecord.of(epoch, gathered)
        record.lr = self.lr
        self.log.write(record.to_dict())
        self.history.append(record)
        write_summary_csv(self.history, self.run_dir / "summary.csv")
        if self.tensorboard is not None:
            self.tensorboard.epoch(record, (epoch + 1) * self.clock.steps, self.lr)
        left = self.clock.end_epoch(epoch)
        if len(record.stages) > 1:
            self.console.stage_table(f"epoch {epoch + 1}/{self.cfg.train.epochs}", [s.cells() for s in record.stages])
        line = epoch_line(record.to_dict(), "at the last stage" if len(record.stages) > 1 else "")
        when = f"  elapsed {format_duration(self.clock.elapsed_s())}  run eta {format_duration(left)}" if left else ""
        self.console.print(line + when)

    def close(self, module_units: list) -> RunSummary | None:
        """After the last epoch: every rank's final live row, then rank 0 writes and prints the summary."""
        if self.reporter is not None:
            self.reporter.report(None, final=True)
        if not self.place.is_coordinator:
            return None
        if self.collector is not None:
            self.collector.drain()
            self._write_live([])
        self.log.close()
        self.live.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.console.close()
        backend = self.place.backend or "none (one process)"
        summary = RunSummary.of(
            to_dict(self.cfg), self.history, module_units, backend, str(self.place.device), torch.get_num_threads()
        )
        summary.provenance = provenance()
        summary.write(self.run_dir / "summary.json")
        closing_report(summary, self.console)
        self.console.print(trained_line(self.clock.epochs_done, self.clock.elapsed_s(), self.clock.expected_s))
        return summary


class RunClock:
    """The run's elapsed time on this process, and its remaining time at the step rate measured since this process
    began training (a resumed run: since its resume). Once an epoch has ended, the rate holds its evaluation too.
    Read only at log intervals and epoch ends. ``now``: the clock (seconds)."""

    def __init__(self, epochs: int, now=time.perf_counter):
        self.epochs, self.now = epochs, now
        self.steps = 0  # per epoch (the plan's)
        self.begin: float | None = None
        self.first = 0  # the run's steps done when this process began training
        self.epochs_done = 0
        self.expected_s: float | None = None  # the run's time as estimated at the end of its first epoch here

    def start_epoch(self, epoch: int, steps: int, from_step: int) -> None:
        if self.begin is None:
            self.begin, self.first = self.now(), epoch * steps + from_step
        self.steps = steps

    def elapsed_s(self) -> float:
        return 0.0 if self.begin is None else self.now() - self.begin

    def remaining_s(self, epoch: int, step: int) -> float | None:
        """After step ``step`` of epoch ``epoch``: the rest of the run at the rate so far (None: none measured)."""
        done = epoch * self.steps + step
        return remaining_s(done - self.first, self.epochs * self.steps - done, self.elapsed_s())

    def end_epoch(self, epoch: int) -> float | None:
        """The rest of the run after epoch ``epoch`` (0 after the last); the first one here sets ``expected_s``."""
        self.epochs_done += 1
        left = self.remaining_s(epoch + 1, 0)
        if self.expected_s is None and left:
            self.expected_s = self.elapsed_s() + left
        return left


def _live_row(epoch, steps, stats: StageStats, result, elapsed: float, waits, waits_now, lr: float) -> LiveRow:
    recv = (waits_now[0] - waits[0]) / elapsed
    send = (waits_now[1] - waits[1]) / elapsed
    loss = result.losses[-1].item() if result is not None and result.losses else 0.0  # host sync, per interval only
    return LiveRow(
        stage=stats.stage,
        epoch=epoch,
        step=stats.steps,
        steps=steps,
        samples_per_s=stats.samples / elapsed,
        compute_frac=1 - recv - send,
        recv_wait_frac=recv,
        send_wait_frac=send,
        staleness=statistics.fmean(stats.staleness) if stats.staleness else 0.0,
        loss=loss,
        saved_mib=max(stats.saved_peak or [0]) / 2**20,
        lr=float(lr),
    )


@contextmanager
def _no_progress():
    yield None
