"""The run's summary (``summary.json``): accuracy, and every stage's figures over the epochs, as types.

Benchmarks read it back with :meth:`RunSummary.load`, so a figure is named once, here.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from pipelocal.metrics.stats import Distribution, EpochRecord, StageEpoch, median


@dataclass
class StageSummary:
    """One stage over the run: medians over epochs of rates and fractions, maxima of memory, sums of counts."""

    stage: int
    samples_per_s_median: float
    utilisation_median: float
    recv_wait_frac_median: float
    send_wait_frac_median: float
    compute_s_per_step_median: float
    staleness_max: int
    saved_bytes_peak: list[int]  # per module of the stage, max over epochs
    cuda_peak_bytes: int | None
    log_frac_median: float
    guided_steps: int
    grad_wait_frac_median: float
    delay_mean: float | None
    delay_max: int | None
    kept_bytes_peak: int
    stash_bytes_peak: int
    steps: int
    busy_s_per_step_median: float
    sleep_s_per_step_median: float
    idle_frac_median: float
    staleness: Distribution  # of the last epoch
    reuse: dict[int, int]
    fresh: int
    dropped: int
    dropped_unused: int
    buffer_bytes_peak: int
    static_bytes: dict
    train_seconds: float
    dp_wait_frac_median: float = 0.0
    dp_wait_s_per_step_median: float = 0.0
    replicas: int = 1

    @classmethod
    def of(cls, rows: list[StageEpoch]) -> StageSummary:
        med = lambda name: median(getattr(r, name) for r in rows)  # noqa: E731
        delays = [r.delay_mean for r in rows if r.delay_mean is not None]
        reuse: dict[int, int] = {}
        for r in rows:
            for k, v in r.reuse.items():
                reuse[int(k)] = reuse.get(int(k), 0) + v
        return cls(
            stage=rows[0].stage,
            samples_per_s_median=med("samples_per_s"),
            utilisation_median=med("utilisation"),
            recv_wait_frac_median=med("recv_wait_frac"),
            send_wait_frac_median=med("send_wait_frac"),
            compute_s_per_step_median=med("compute_s_per_step"),
            staleness_max=max(r.staleness_max for r in rows),
            saved_bytes_peak=[max(v) for v in zip(*[r.saved_bytes_peak for r in rows])],
            cuda_peak_bytes=rows[-1].cuda_peak_bytes,
            log_frac_median=med("log_frac"),
            guided_steps=sum(r.guided_steps for r in rows),
            grad_wait_frac_median=med("grad_wait_frac"),
            delay_mean=statistics.fmean(delays) if delays else None,
            delay_max=max((r.delay_max for r in rows if r.delay_max is not None), default=None),
            kept_bytes_peak=max(r.kept_bytes_peak for r in rows),
            stash_bytes_peak=max(r.stash_bytes_peak for r in rows),
            steps=sum(r.steps for r in rows),
            busy_s_per_step_median=med("busy_s_per_step"),
            sleep_s_per_step_median=med("sleep_s_per_step"),
            idle_frac_median=med("idle_frac"),
            staleness=rows[-1].staleness,
            reuse=dict(sorted(reuse.items())),
            fresh=sum(r.fresh for r in rows),
            dropped=sum(r.dropped for r in rows),
            dropped_unused=sum(r.dropped_unused for r in rows),
            buffer_bytes_peak=max(r.buffer_bytes_peak for r in rows),
            static_bytes=rows[-1].static_bytes,
            train_seconds=sum(r.wall_s for r in rows),
            dp_wait_frac_median=med("dp_wait_frac"),
            dp_wait_s_per_step_median=med("dp_wait_s_per_step"),
            replicas=rows[-1].replicas,
        )

    @property
    def saved_bytes_peak_max(self) -> int:
        return max(self.saved_bytes_peak or [0])


@dataclass
class RunSummary:
    """What a run did: accuracy (final and best, labelled), throughput at the last stage, every stage."""

    mode: str
    method: str
    num_stages: int
    num_modules: int
    module_units: list[list[int]]  # unit range [start, end) of each module
    final_top1: float | None
    best_top1: float | None
    best_epoch: int | None  # 1 = the first epoch
    samples_per_s_median: float  # at the last stage, median over epochs
    train_seconds: float  # the slowest stage's training wall time, summed over epochs
    steps: int  # training steps of the first stage (what the data loader produced)
    guidance_steps: int
    saved_bytes_peak: list[int]  # per module, every stage's in order
    saved_bytes_peak_max: int
    cuda_peak_bytes: int | None  # the largest stage's
    stages: list[StageSummary]
    device: str
    backend: str
    torch_threads: int
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)  # versions, git commit, host, hardware, command (run_files.py)

    @classmethod
    def of(cls, cfg_dict: dict, history: list[EpochRecord], module_units, backend: str, device: str, threads: int):
        # Per-stage figures over the epochs of this layout (a resume may have changed the number of stages).
        layout = [h for h in history if len(h.stages) == len(history[-1].stages)]
        per_stage = [StageSummary.of([h.stages[s] for h in layout]) for s in range(len(layout[0].stages))]
        evaluated = [h for h in history if h.test_top1 is not None]
        best = max(evaluated, key=lambda h: h.test_top1, default=None)  # the first of equal bests
        saved = [b for s in per_stage for b in s.saved_bytes_peak]
        cuda = [s.cuda_peak_bytes for s in per_stage if s.cuda_peak_bytes is not None]
        return cls(
            mode=cfg_dict["mode"],
            method=cfg_dict["method"]["name"],
            num_stages=len(per_stage),
            num_modules=len(module_units),
            module_units=[list(u) for u in module_units],
            final_top1=history[-1].test_top1,
            best_top1=best.test_top1 if best else None,
            best_epoch=best.epoch if best else None,
            samples_per_s_median=median(h.samples_per_s for h in history),
            train_seconds=sum(max(s.wall_s for s in h.stages) for h in history),
            steps=per_stage[0].steps,
            guidance_steps=per_stage[0].guided_steps,
            saved_bytes_peak=saved,
            saved_bytes_peak_max=max(saved or [0]),
            cuda_peak_bytes=max(cuda) if cuda else None,
            stages=per_stage,
            device=device,
            backend=backend,
            torch_threads=threads,
            config=cfg_dict,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, values: dict) -> RunSummary:
        stages = [_stage(s) for s in values["stages"]]
        return cls(**{**_known(cls, values), "stages": stages})

    @classmethod
    def load(cls, path: str | Path) -> RunSummary:
        """A run's ``summary.json`` (the file, or the run directory holding it)."""
        path = Path(path)
        return cls.from_dict(json.loads((path / "summary.json" if path.is_dir() else path).read_text()))


def _stage(values: dict) -> StageSummary:
    values = {**_known(StageSummary, values), "staleness": Distribution(**values["staleness"])}
    values["reuse"] = {int(k): v for k, v in values["reuse"].items()}  # JSON keys are strings
    return StageSummary(**values)


def _known(cls, values: dict) -> dict:
    """The fields ``cls`` has (a summary written by a newer version may carry more)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}
