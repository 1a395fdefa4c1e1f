"""The console: a rich progress bar with the epoch's and the run's remaining time and live fields on a terminal,
plain lines otherwise.

The only file that imports rich.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich.console import Console as RichConsole
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def resolve_kind(kind: str) -> str:
    if kind == "auto":
        return "rich" if sys.stdout.isatty() else "plain"
    return kind


def format_fields(fields: dict) -> str:
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


def format_duration(seconds: float | None) -> str:
    """A duration read at a glance: 42s, 3m05s, 1h02m; '-' when unknown."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def remaining_s(steps_done: int, steps_left: int, elapsed_s: float) -> float | None:
    """Time left at the measured rate (``steps_done`` steps took ``elapsed_s``); None before any step is measured."""
    if steps_done <= 0 or elapsed_s <= 0:
        return None
    return elapsed_s / steps_done * max(steps_left, 0)


def epoch_line(record: dict, rate_where: str = "") -> str:
    """One line per epoch: test top-1, each module's probe top-1 (layer-wise separability), samples/s."""
    acc = record.get("test_top1")
    probes = " ".join("-" if a is None else f"{a:.3f}" for a in record.get("module_top1") or [])
    text = f"test top-1 {acc:.4f}  per-module [{probes}]" if acc is not None else "no eval"
    where = f" {rate_where}" if rate_where else ""
    return f"epoch {record['epoch']}: {text}  {record['samples_per_s']:.1f} samples/s{where}"


STAGE_COLUMNS = ["stage", "samples/s", "util", "wait recv", "wait send", "staleness", "loss", "saved MiB"]


def stage_row(stage, samples_per_s, utilisation, recv_wait, send_wait, staleness, loss, saved_mib) -> list:
    """One row of the all-stage table, in :data:`STAGE_COLUMNS` order (fractions of wall time, MiB)."""
    return [
        int(stage),
        round(samples_per_s, 1),
        round(utilisation, 3),
        round(recv_wait, 3),
        round(send_wait, 3),
        round(staleness, 2),
        None if loss is None else round(loss, 4),
        round(saved_mib, 1),
    ]


class Console:
    """Epoch progress and messages; ``kind`` is rich, plain or none."""

    def __init__(self, kind: str = "auto"):
        self.kind = resolve_kind(kind)
        self._rich = RichConsole(highlight=False) if self.kind == "rich" else None
        self._live = None
        self.file = ConsoleFile()  # log.txt, once the run folder exists (RunLog opens it on rank 0), even with none

    def print(self, message: str) -> None:
        self.file.write(message)
        if self.kind == "none":
            return
        if self._rich:
            self._rich.print(message)
        else:
            print(message, flush=True)

    @contextmanager
    def progress(self, title: str, total: int):
        """Yields ``update(step, fields, run_left)``: rich redraws live, plain prints a line per call, each with the
        epoch's remaining time (from its own rate) and ``run_left``, the run's (seconds; None: not known yet)."""
        if self.kind == "rich":
            columns = [
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("run eta {task.fields[run]}"),
                TextColumn("{task.fields[info]}"),
            ]
            with Progress(*columns, console=self._rich, transient=False) as bar:
                task = bar.add_task(title, total=total, info="", run="-")

                def redraw(step: int, fields: dict, run_left: float | None = None) -> None:
                    bar.update(task, completed=step, info=format_fields(fields), run=format_duration(run_left))
                    self.file.write(
                        f"{title} {step}/{total}  {format_fields(fields)}  run eta {format_duration(run_left)}"
                    )

                yield redraw
            return
        start = time.perf_counter()

        def update(step: int, fields: dict, run_left: float | None = None) -> None:
            if step == 0:
                return  # (with kind none, print still copies the line to log.txt)
            eta = remaining_s(step, total - step, time.perf_counter() - start)
            run = f"  run eta {format_duration(run_left)}" if run_left is not None else ""
            self.print(f"{title} {step}/{total}  {format_fields(fields)}  eta {format_duration(eta)}{run}")

        yield update

    def stage_table(self, title: str, rows: list[list]) -> None:
        """The all-stage table (pipeline mode): redrawn in place on a terminal, plain lines otherwise."""
        columns = STAGE_COLUMNS
        if self.kind == "rich":  # log.txt gets the plain lines of what the terminal redraws in place
            for row in rows:
                self.file.write(f"{title} | " + "  ".join(f"{c} {_cell(v)}" for c, v in zip(columns, row)))
        else:
            for row in rows:
                self.print(f"{title} | " + "  ".join(f"{c} {_cell(v)}" for c, v in zip(columns, row)))
            return
        table = Table(title=title)
        for c in columns:
            table.add_column(c, justify="right")
        for row in rows:
            table.add_row(*[_cell(v) for v in row])
        if self._live is None:
            self._live = Live(table, console=self._rich, auto_refresh=False)
            self._live.start()
        self._live.update(table, refresh=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def table(self, title: str, columns: list[str], rows: list[list]) -> None:
        """A small table: rich on a terminal, aligned text otherwise."""
        if self._rich:
            for line in [title, "  ".join(columns)] + ["  ".join(_cell(v) for v in row) for row in rows]:
                self.file.write(line)
            table = Table(title=title)
            for c in columns:
                table.add_column(c, justify="right")
            for row in rows:
                table.add_row(*[_cell(v) for v in row])
            self._rich.print(table)
            return
        cells = [columns] + [[_cell(v) for v in row] for row in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
        self.print(title)
        for r in cells:
            self.print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ConsoleFile:
    """log.txt: every line the console shows (plain text), from the start of the run. Lines printed before the
    run folder exists wait in memory and are written when it opens."""

    def __init__(self):
        self._file = None
        self._early: list[str] = []

    def open(self, path) -> None:
        # Line-buffered and left open to the process's end: a crash keeps what was shown, and lines printed after
        # the summary (the timeline's) still land. Appended: a resumed run continues its log.
        self._file = open(path, "a", buffering=1)
        for line in self._early:
            self._file.write(line + "\n")
        self._early = []

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text + "\n")
        elif len(self._early) < 10_000:
            self._early.append(text)
