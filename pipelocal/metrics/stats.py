"""Per-stage figures as types, from the loop to the benchmarks.

A stage fills one :class:`StageStats` per epoch (raw sums and lists, plain numbers, so it travels to rank
0 as one object at the epoch end). Rank 0 turns each into a :class:`StageEpoch` (rates and fractions of
wall time) inside an :class:`EpochRecord` (one JSONL line), and the epochs into a :class:`RunSummary` of
:class:`StageSummary` rows (``summary.json``). The live table, the JSONL, the closing report and the
benchmarks all read these types (``RunSummary.load``), never loose dict keys. Medians are
``statistics.median`` everywhere (the mean of the two middle values for an even count).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelocal.metrics.console import stage_row

median = statistics.median  # the one median rule of every figure pipelocal reports


@dataclass
class StageStats:
    """What a stage measures in one epoch."""

    stage: int
    steps: int = 0
    samples: int = 0
    wall_s: float = 0.0
    recv_wait_s: float = 0.0
    send_wait_s: float = 0.0
    staleness: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # mean per head over the local (unguided) steps
    saved_peak: list[int] = field(default_factory=list)  # per module of the stage
    correct: list[int] = field(default_factory=list)
    eval_samples: int = 0
    log_s: float = 0.0  # time spent in the metrics hooks (live table, reports): the cost of observability
    guided: int = 0  # guidance steps
    guide_loss: float | None = None  # mean final loss of the guidance steps (last stage)
    grad_wait_s: float = 0.0  # waiting for gradients from the next stage (sync) or at epoch end (async)
    delays: list[int] = field(default_factory=list)  # async: steps between a graph's step and its gradient
    kept_bytes_peak: int = 0  # saved tensors of graphs kept past their step (async), between steps
    stash_bytes_peak: int = 0  # stashed weight copies alive at once (async)
    sleep_s: float = 0.0  # straggler injection (pipeline.slowdown)
    busy_s: float = 0.0  # compute of the steps, before any injected sleep
    reuse: dict = field(default_factory=dict)  # replay: times a batch had been used when consumed -> count
    fresh: int = 0  # replay: steps on batches never trained on before
    dropped: int = 0  # replay: batches pushed out of the buffer (this epoch)
    dropped_unused: int = 0  # ... never trained on
    buffer_bytes_peak: int = 0
    cuda_peak_bytes: int | None = None
    static_bytes: dict = field(default_factory=dict)  # parameters, gradients, optimizer state (metrics/memory.py)
    skipped: int = 0  # steps dropped for a non-finite loss or gradient (train.nan_policy=skip)
    dp_wait_s: float = 0.0  # replicas: optimizer steps waiting for their gradients' all-reduce (not hidden by overlap)
    replicas: int = 1  # processes whose figures these are (a stage's data-parallel replicas, merged)
    # Running sums on the device (no host sync per step); turned into ``loss`` by ``close``.
    _loss_sum: torch.Tensor | None = field(default=None, repr=False)
    _local_steps: int = 0
    _guide_sum: torch.Tensor | None = field(default=None, repr=False)

    @property
    def compute_s(self) -> float:
        return self.wall_s - self.recv_wait_s - self.send_wait_s - self.grad_wait_s - self.dp_wait_s

    @classmethod
    def merge(cls, replicas: list[StageStats]) -> StageStats:
        """A stage's R replicas as one stage: samples and correct predictions add up (each replica trains and
        evaluates its own shard), times and losses are the replicas' means, peaks their maxima."""
        if len(replicas) == 1:
            return replicas[0]
        first, n = replicas[0], len(replicas)
        mean = lambda name: sum(getattr(r, name) for r in replicas) / n  # noqa: E731
        merged = dataclasses.replace(first, replicas=n)
        for name in ("wall_s", "recv_wait_s", "send_wait_s", "log_s", "grad_wait_s", "sleep_s", "busy_s", "dp_wait_s"):
            setattr(merged, name, mean(name))
        merged.samples = sum(r.samples for r in replicas)
        merged.eval_samples = sum(r.eval_samples for r in replicas)
        merged.correct = [-1 if min(c) < 0 else sum(c) for c in zip(*[r.correct for r in replicas])]
        merged.loss = [sum(v) / n for v in zip(*[r.loss for r in replicas])]
        losses = [r.guide_loss for r in replicas if r.guide_loss is not None]
        merged.guide_loss = sum(losses) / len(losses) if losses else None
        merged.saved_peak = [max(v) for v in zip(*[r.saved_peak for r in replicas])]
        merged.staleness = [v for r in replicas for v in r.staleness]
        merged.delays = [v for r in replicas for v in r.delays]
        for name in ("kept_bytes_peak", "stash_bytes_peak"):
            setattr(merged, name, max(getattr(r, name) for r in replicas))
        peaks = [r.cuda_peak_bytes for r in replicas if r.cuda_peak_bytes is not None]
        merged.cuda_peak_bytes = max(peaks) if peaks else None
        return merged

    def add(self, result) -> None:
        """Count one finished step (a ``runtime.step.StepResult``)."""
        if result.guided:  # the final loss of an end-to-end step; local losses are not all computed
            if result.losses:
                final = result.losses[-1]
                self._guide_sum = final if self._guide_sum is None else self._guide_sum + final
            self.guided += 1
        elif result.losses:
            losses = torch.stack(result.losses)
            self._loss_sum = losses if self._loss_sum is None else self._loss_sum + losses
            self._local_steps += 1
        peak = result.saved_peak
        self.saved_peak = [max(a, b) for a, b in zip(self.saved_peak or peak, peak)]
        self.steps += 1
        self.samples += result.rows

    def close(self) -> None:
        """End of the epoch: the loss sums to the host (one sync), so the record travels as plain numbers."""
        self.loss = (self._loss_sum / self._local_steps).tolist() if self._loss_sum is not None else []
        self.guide_loss = (self._guide_sum / self.guided).item() if self._guide_sum is not None else None
        self._loss_sum = self._guide_sum = None


@dataclass
class Distribution:
    """mean, p50, p95 and max of a list of step differences (zeros when empty)."""

    mean: float = 0.0
    p50: int = 0
    p95: int = 0
    max: int = 0

    @classmethod
    def of(cls, values: list[int]) -> Distribution:
        if not values:
            return cls()
        ordered = sorted(values)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
        return cls(statistics.fmean(ordered), pick(0.5), pick(0.95), ordered[-1])


@dataclass
class StageEpoch:
    """One stage in one epoch: rates, fractions of its wall time, memory, guidance and replay figures."""

    stage: int
    samples_per_s: float
    utilisation: float
    recv_wait_frac: float
    send_wait_frac: float
    compute_s_per_step: float
    staleness_mean: float
    staleness_max: int
    loss: list[float]
    saved_bytes_peak: list[int]
    cuda_peak_bytes: int | None
    wall_s: float
    log_frac: float
    guided_steps: int
    guidance_loss: float | None
    grad_wait_frac: float
    delay_mean: float | None
    delay_max: int | None
    kept_bytes_peak: int
    stash_bytes_peak: int
    steps: int
    busy_s_per_step: float
    sleep_s_per_step: float
    idle_frac: float
    staleness: Distribution
    reuse: dict[int, int]
    fresh: int
    dropped: int
    dropped_unused: int
    buffer_bytes_peak: int
    static_bytes: dict
    dp_wait_frac: float = 0.0  # replicas: waiting for the gradient all-reduce, of wall time
    dp_wait_s_per_step: float = 0.0
    replicas: int = 1
    skipped: int = 0  # steps dropped for a non-finite loss or gradient (train.nan_policy=skip)

    @classmethod
    def of(cls, g: StageStats) -> StageEpoch:
        wall, steps = max(g.wall_s, 1e-9), max(g.steps, 1)
        return cls(
            stage=g.stage,
            samples_per_s=g.samples / wall,
            utilisation=g.compute_s / wall,
            recv_wait_frac=g.recv_wait_s / wall,
            send_wait_frac=g.send_wait_s / wall,
            compute_s_per_step=g.compute_s / steps,
            staleness_mean=statistics.fmean(g.staleness) if g.staleness else 0.0,
            staleness_max=max(g.staleness) if g.staleness else 0,
            loss=g.loss,
            saved_bytes_peak=g.saved_peak,
            cuda_peak_bytes=g.cuda_peak_bytes,
            wall_s=g.wall_s,
            log_frac=g.log_s / wall,
            guided_steps=g.guided,
            guidance_loss=g.guide_loss,
            grad_wait_frac=g.grad_wait_s / wall,
            delay_mean=statistics.fmean(g.delays) if g.delays else None,
            delay_max=max(g.delays) if g.delays else None,
            kept_bytes_peak=g.kept_bytes_peak,
            stash_bytes_peak=g.stash_bytes_peak,
            steps=g.steps,
            busy_s_per_step=g.busy_s / steps,
            sleep_s_per_step=g.sleep_s / steps,
            idle_frac=g.recv_wait_s / wall,
            staleness=Distribution.of(g.staleness),
            reuse={int(k): v for k, v in sorted(g.reuse.items())},
            fresh=g.fresh,
            dropped=g.dropped,
            dropped_unused=g.dropped_unused,
            buffer_bytes_peak=g.buffer_bytes_peak,
            static_bytes=g.static_bytes,
            dp_wait_frac=g.dp_wait_s / wall,
            dp_wait_s_per_step=g.dp_wait_s / steps,
            replicas=g.replicas,
            skipped=g.skipped,
        )

    def cells(self) -> list:
        """This stage's row of the all-stage table (metrics/console.py)."""
        return stage_row(
            self.stage,
            self.samples_per_s,
            self.utilisation,
            self.recv_wait_frac,
            self.send_wait_frac,
            self.staleness_mean,
            self.loss[-1] if self.loss else None,
            max(self.saved_bytes_peak or [0]) / 2**20,
        )


@dataclass
class EpochRecord:
    """One JSONL line: every stage's epoch, the throughput at the last stage, and the evaluation if it ran."""

    epoch: int  # 1 = the first, as the console counts (every file of the run folder counts so)
    stages: list[StageEpoch]
    samples_per_s: float
    test_top1: float | None = None
    module_top1: list[float | None] | None = None
    kind: str = "epoch"
    lr: float | None = None  # the learning rate of the epoch's last step (None: a record from before it was kept)

    @classmethod
    def of(cls, epoch: int, gathered: list[StageStats]) -> EpochRecord:
        """``epoch``: the trainer's index (0 = the first); ``gathered``: every rank's figures in rank order (a stage's
        replicas side by side: merged here)."""
        by_stage: dict[int, list[StageStats]] = {}
        for g in gathered:
            by_stage.setdefault(g.stage, []).append(g)
        gathered = [StageStats.merge(by_stage[s]) for s in sorted(by_stage)]
        stages = [StageEpoch.of(g) for g in gathered]
        record = cls(epoch + 1, stages, stages[-1].samples_per_s)
        if gathered[0].correct:  # evaluated: each stage counted its own heads' correct predictions
            correct = [c for g in gathered for c in g.correct]
            acc = accuracies(correct, gathered[-1].eval_samples)
            record.test_top1, record.module_top1 = acc["top1"], acc["module_top1"]
        return record

    @classmethod
    def from_dict(cls, values: dict) -> EpochRecord:
        """A ``metrics.jsonl`` epoch line back as the type (fields a newer version added are ignored)."""
        stages = [_stage_epoch(s) for s in values["stages"]]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in values.items() if k in names}, "stages": stages})

    def to_dict(self) -> dict:
        out = {"kind": self.kind, **dataclasses.asdict(self)}
        if self.test_top1 is None:  # epochs without evaluation carry no accuracy fields
            del out["test_top1"], out["module_top1"]
        return out


def _stage_epoch(values: dict) -> StageEpoch:
    names = {f.name for f in dataclasses.fields(StageEpoch)}
    values = {k: v for k, v in values.items() if k in names}
    values["staleness"] = Distribution(**values["staleness"])
    values["reuse"] = {int(k): v for k, v in values["reuse"].items()}  # JSON keys are strings
    return StageEpoch(**values)


def read_epochs(run_dir) -> list[EpochRecord]:
    """The epoch lines of a run's ``metrics.jsonl``, one per epoch: a resumed run appends, and an epoch it
    ran again (after the checkpoint it resumed from) replaces the earlier line."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    epochs = {r["epoch"]: r for r in map(json.loads, lines) if r.get("kind") == "epoch"}
    return [EpochRecord.from_dict(epochs[e]) for e in sorted(epochs)]


def accuracies(correct: list[int], total: int) -> dict:
    """Per-module top-1 from correct counts (None where a head gives no class scores)."""
    module_top1 = [c / max(total, 1) if c >= 0 else None for c in correct]
    return {"top1": module_top1[-1], "module_top1": module_top1, "samples": total}
