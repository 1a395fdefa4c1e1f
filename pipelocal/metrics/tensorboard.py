"""TensorBoard scalars (``metrics.tensorboard``): rank 0's figures as they already are, under ``<run dir>/tensorboard``.

Written from what rank 0 holds anyway: each epoch's :class:`EpochRecord` (gathered at the epoch end) and the
live rows of each log interval, so it adds no traffic and nothing to a step between intervals. The x axis
is the plan's global training step. ``metrics.jsonl`` stays the record; this is a view of it. Tags:

- ``stage<s>/``: samples_per_s, utilisation, wait_recv, wait_send, wait_grad, wait_allreduce (fractions of
  wall time), loss_head<j> (the stage's j-th head), saved_MiB, cuda_peak_MiB (on a GPU), guided_steps,
  delay_mean (async guidance);
- ``test/``: top1 (the final head), module<k>_top1 (each head with class scores), at evaluated epochs;
- ``train/``: samples_per_s (at the last stage), lr (the epoch's last);
- ``live/stage<s>/``: samples_per_s and loss, every log interval.
"""

from __future__ import annotations

from pathlib import Path

from pipelocal.config import ConfigError
from pipelocal.metrics.live import LiveRow
from pipelocal.metrics.stats import EpochRecord

MIB = 2**20


class TensorBoardLog:
    """A ``SummaryWriter`` on rank 0; opening it without the tensorboard package is a ConfigError (at start-up)."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: an optional extra
        except ImportError as err:
            raise ConfigError(
                "metrics.tensorboard=true needs the tensorboard package: pip install pipelocal[tensorboard] "
                "(or pip install tensorboard), or set metrics.tensorboard=false"
            ) from err
        self.writer = SummaryWriter(log_dir=str(folder))
        self._live_steps: dict[int, int] = {}  # stage -> the global step of its last live row written

    def epoch(self, record: EpochRecord, step: int, lr: float | None) -> None:
        """Every stage's figures of the epoch ending at global step ``step``, the evaluation, the learning rate."""
        for s in record.stages:
            scalars = {
                "samples_per_s": s.samples_per_s,
                "utilisation": s.utilisation,
                "wait_recv": s.recv_wait_frac,
                "wait_send": s.send_wait_frac,
                "wait_grad": s.grad_wait_frac,
                "wait_allreduce": s.dp_wait_frac,
                "saved_MiB": max(s.saved_bytes_peak or [0]) / MIB,
                "guided_steps": s.guided_steps,
                "cuda_peak_MiB": None if s.cuda_peak_bytes is None else s.cuda_peak_bytes / MIB,
                "delay_mean": s.delay_mean,
                **{f"loss_head{j}": loss for j, loss in enumerate(s.loss)},
            }
            self._add(f"stage{s.stage}", scalars, step)
        if record.test_top1 is not None:
            modules = {f"module{k}_top1": acc for k, acc in enumerate(record.module_top1 or [])}
            self._add("test", {"top1": record.test_top1, **modules}, step)
        self._add("train", {"samples_per_s": record.samples_per_s, "lr": lr}, step)
        self.writer.flush()  # on disk at each epoch end, as the JSONL line is

    def live(self, rows: list[LiveRow]) -> None:
        """One log interval's rows (one per stage), each at its own global step; a row not renewed since the last
        interval (a stage that reports less often) is not written again."""
        for row in rows:
            step = row.epoch * row.steps + row.step
            if self._live_steps.get(row.stage) == step:
                continue
            self._live_steps[row.stage] = step
            self._add(f"live/stage{row.stage}", {"samples_per_s": row.samples_per_s, "loss": row.loss}, step)

    def close(self) -> None:
        self.writer.close()

    def _add(self, prefix: str, scalars: dict, step: int) -> None:
        for name, value in scalars.items():
            if value is not None:  # a figure this stage or epoch does not have
                self.writer.add_scalar(f"{prefix}/{name}", value, step)
