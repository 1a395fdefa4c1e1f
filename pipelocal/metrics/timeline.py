"""The pipeline as a picture: per-stage spans on one clock, as a Chrome/Perfetto trace and a Gantt chart.

``metrics.timeline: [first, last]`` records, on every rank, from the start of training step ``first`` to the
start of step ``last + 1`` (so the drain, evaluation and checkpoint after ``last`` are in it when they come
next): the step, receive (with its wait), each module's forward and local backward, the send (with its
wait), the wait for a gradient from the next stage, the optimizer steps, the data-parallel all-reduce wait,
evaluation and checkpoints. Spans nest (a step holds its parts) and never overlap within a rank otherwise.

Clocks: each rank stamps ``time.perf_counter_ns`` and measures, at start-up over the control group, its
offset to rank 0's wall clock (:func:`clock_offset`: the median of a few barrier-aligned exchanges), so spans
of every rank share rank 0's time axis. Off, a span is one attribute read and a shared null context.
Rank 0 merges every rank's spans at the end of the run (:func:`write`): ``timeline.json`` (open it in
https://ui.perfetto.dev or chrome://tracing: one row per stage, like the pictures in the GPipe and PipeDream
papers) and ``timeline.png`` (with matplotlib).
"""

from __future__ import annotations

import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

_OFF = nullcontext()


class Timeline:
    """This process's recorder. ``window``: (first, last) training steps, or None (off)."""

    def __init__(self):
        self.window: tuple[int, int] | None = None
        self.recording = False
        self.spans: list[tuple[str, int, int, dict | None]] = []  # (name, start ns, end ns, args)
        self.offset_ns = 0  # add to perf_counter_ns for rank 0's wall clock (ns)
        self.cost_ns = 0  # time spent recording (for the overhead figure)

    def configure(self, window) -> None:
        self.window = tuple(window) if window else None
        self.recording, self.spans = False, []

    def at_step(self, step: int) -> None:
        """Called at the start of every training step: inside the window or not."""
        if self.window is not None:
            self.recording = self.window[0] <= step <= self.window[1]

    def stop(self) -> None:
        self.recording = False

    def span(self, name: str, **args):
        return _Span(self, name, args or None) if self.recording else _OFF


class _Span:
    __slots__ = ("timeline", "name", "args", "start")

    def __init__(self, timeline: Timeline, name: str, args):
        self.timeline, self.name, self.args = timeline, name, args

    def __enter__(self):
        self.start = time.perf_counter_ns()

    def __exit__(self, *exc):
        end = time.perf_counter_ns()
        timeline = self.timeline
        timeline.spans.append((self.name, self.start, end, self.args))
        timeline.cost_ns += time.perf_counter_ns() - end
        return False


TIMELINE = Timeline()  # one per process, like torch.profiler's state: the loop's parts record into it


def trace_microbatches(module) -> None:
    """Spans for every forward and backward through ``module`` (a GPipe/1F1B stage: one per microbatch; the
    schedule's own transfers, inside torch.distributed.pipelining, show as the gaps). A backward starts when the
    output's gradient arrives and ends when the module's first parameter, the last the backward reaches, has its
    gradient. Off, each is a hook call returning at once."""
    spans = {}

    def start(kind: str) -> None:
        spans[kind] = TIMELINE.span(kind)
        spans[kind].__enter__()

    def end(kind: str) -> None:
        span = spans.pop(kind, None)
        if span is not None:
            span.__exit__(None, None, None)

    def after_forward(_module, _args, out) -> None:
        end("forward")
        if TIMELINE.recording and out.requires_grad:
            out.register_hook(lambda grad: start("backward"))

    module.register_forward_pre_hook(lambda _module, _args: start("forward"))
    module.register_forward_hook(after_forward)
    first = next(p for p in module.parameters() if p.requires_grad)
    first.register_post_accumulate_grad_hook(lambda _param: end("backward"))


def span_cost_ns(n: int = 20_000) -> float:
    """What entering and leaving one recorded span costs here, timed on a scratch recorder."""
    scratch = Timeline()
    scratch.recording = True
    begin = time.perf_counter_ns()
    for _ in range(n):
        with scratch.span("x"):
            pass
    return (time.perf_counter_ns() - begin) / n


def clock_offset(group, rounds: int = 5) -> int:
    """Nanoseconds to add to this rank's ``perf_counter_ns`` to get rank 0's wall clock: per round, every rank
    stamps both clocks right after a barrier; the median over rounds of (rank 0's wall - my perf counter)."""
    offsets = []
    for _ in range(rounds):
        dist.barrier(group=group)
        mine = torch.tensor([time.perf_counter_ns(), time.time_ns()], dtype=torch.int64)
        stamps = [torch.zeros(2, dtype=torch.int64) for _ in range(dist.get_world_size(group))]
        dist.all_gather(stamps, mine, group=group)
        # rank 0's wall clock at the barrier, against mine: my wall clock may differ (another node)
        offsets.append(int(stamps[0][1]) - int(mine[0]))
    return int(statistics.median(offsets))


def gather(timeline: Timeline, rank: int, stage: int, replica: int, group) -> list[dict] | None:
    """Every rank's spans to rank 0 (None elsewhere), as dicts on rank 0's clock (microseconds)."""
    mine = {
        "rank": rank,
        "stage": stage,
        "replica": replica,
        "cost_ns": timeline.cost_ns,
        "spans": [(n, (a + timeline.offset_ns) / 1e3, (b - a) / 1e3, args) for n, a, b, args in timeline.spans],
    }
    if group is None:
        return [mine]
    out = [None] * dist.get_world_size(group) if rank == 0 else None
    dist.gather_object(mine, out, dst=0, group=group)
    return out


def write(ranks: list[dict], run_dir: Path) -> Path:
    """``timeline.json`` (Chrome trace events, one row per stage and replica) and, with matplotlib,
    ``timeline.png``; times from the first span recorded."""
    start = min((s[1] for r in ranks for s in r["spans"]), default=0.0)
    events = []
    for r in ranks:
        tid = r["stage"] * 1000 + r["replica"]
        label = f"stage {r['stage']}" + (f" replica {r['replica']}" if r["replica"] else "")
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": tid, "args": {"name": label}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": 0, "tid": tid, "args": {"sort_index": tid}})
        for name, ts, dur, args in r["spans"]:
            event = {"name": name, "ph": "X", "pid": 0, "tid": tid, "ts": ts - start, "dur": dur, "cat": _kind(name)}
            if args:
                event["args"] = args
            events.append(event)
    path = Path(run_dir) / "timeline.json"
    path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
    try:
        draw(ranks, Path(run_dir) / "timeline.png", start)
    except ImportError:
        pass  # matplotlib is the plots extra: the JSON is the timeline, the PNG its picture (job.py says it is missing)
    return path


def _kind(name: str) -> str:
    return name.split(" ")[0]


COLORS = {
    "forward": "#4c9be8",
    "head": "#a6cee3",
    "backward": "#e8884c",
    "optimizer": "#8c6bb1",
    "recv": "#bbbbbb",
    "send": "#7fc97f",
    "grad-wait": "#e34a33",
    "all-reduce": "#fdb462",
    "eval": "#66c2a5",
    "checkpoint": "#999933",
}


def draw(ranks: list[dict], path: Path, start: float) -> None:
    """A Gantt chart: one row per stage (and replica), time in ms, the leaf spans coloured by kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(ranks, key=lambda r: (r["stage"], r["replica"]))
    fig, ax = plt.subplots(figsize=(12, 0.6 * len(rows) + 1.4))
    for y, r in enumerate(rows):
        for name, ts, dur, _ in sorted(r["spans"], key=lambda s: -s[2]):  # inner (shorter) spans on top
            kind = _kind(name)
            if kind in COLORS:  # a whole training step ("train") is drawn as its parts
                ax.broken_barh([((ts - start) / 1e3, dur / 1e3)], (y - 0.4, 0.8), color=COLORS[kind], lw=0)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"stage {r['stage']}" + (f" r{r['replica']}" if r["replica"] else "") for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    ax.legend(handles, list(COLORS), ncol=len(COLORS), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
