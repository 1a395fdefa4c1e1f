"""The one training loop of every mode: epochs, learning rate, evaluation cadence, metrics, end of run.

Per rank it drives a *step strategy* (the mode's, from ``schedules.MODES``), the ``typing.Protocol``
:class:`~pipelocal.schedules.strategy.StepStrategy`: a local stage loop (sequential, e2e, pipeline:
schedules/stage_loop.py) or an E2E baseline (ddp: schedules/e2e_parallel.py; gpipe, 1f1b:
schedules/pipelining.py).

Where things go: something done every N steps (a checkpoint) is a step hook here, after ``stats.add``; a
window of steps (the profiler's, metrics/profiler.py) opens at the top of a step and pauses at the epoch
end, so each recorded step holds its whole iteration and no evaluation; something around every forward
(autocast, runtime/numerics.py) is in the strategy's ``step``, the one place each mode runs its forward
(``LocalStep`` for the local modes, ``train_step`` for the E2E baselines); something at an epoch end (a
checkpoint, after the drain) is in ``fit``.
A checkpoint holds the state after step ``self.step - 1``; a mid-epoch one is never taken at an epoch's
last step (that one waits for the evaluation), so resuming at a step is resuming the epoch it falls in.
"""

from __future__ import annotations

import copy
import sys
import time

import torch

from pipelocal.checkpoint import Saver
from pipelocal.metrics.memory import cuda_peak_bytes
from pipelocal.metrics.profiler import StepProfiler
from pipelocal.metrics.run_log import RunLog
from pipelocal.metrics.stats import StageStats
from pipelocal.metrics.summary import RunSummary
from pipelocal.optim import lr_for_step, set_lr
from pipelocal.preemption import Preempted
from pipelocal.runtime.guard import Guard
from pipelocal.schedules.strategy import StepStrategy


class Trainer:
    """``fit()`` trains for ``train.epochs``; rank 0 returns the :class:`RunSummary`, the others None.

    ``saver`` writes checkpoints (None: never); ``resumed`` is this rank's object from the checkpoint the job
    resumed from (the plan starts at its step); ``preemption`` tells the strategy when a signal came.
    """

    def __init__(
        self, cfg, strategy: StepStrategy, log: RunLog, saver: Saver | None = None, resumed=None, preemption=None
    ):
        self.cfg, self.strategy, self.log, self.saver = cfg, strategy, log, saver
        self.device = strategy.stage.device
        self.step = strategy.plan.start  # training steps done on this rank, across epochs (= the next one's number)
        self.resumed = resumed or {}
        strategy.stage.numerics.load_state_dict(self.resumed.get("scalers"))
        if preemption is not None:
            strategy.halt_requested = preemption.requested
        self._saved_at = None
        self._skipped_before = 0
        self.guard = Guard(cfg.train.nan_policy, strategy.stage, strategy.stage_index)
        strategy.stage.numerics.guard = self.guard if self.guard.on else None
        self.profiler = StepProfiler.of(cfg.metrics.profile, log.run_dir, log.place)  # None: off (metrics.profile)

    def fit(self) -> RunSummary | None:
        strategy, every = self.strategy, self.cfg.checkpoint
        steps = len(strategy.plan.train_rows)
        first, offset = divmod(self.step, steps)
        partial = self.resumed.get("stats") if offset else None  # the interrupted epoch's figures so far
        for epoch in range(first, self.cfg.train.epochs):
            stats, halted = self.train_epoch(
                epoch, offset if epoch == first else 0, partial if epoch == first else None
            )
            if halted and self.step < (epoch + 1) * steps and strategy.steps_per_epoch is not None:
                strategy.drain(self.step, stats)
                raise Preempted(self.step, self._save(epoch, stats))
            if epoch in strategy.plan.eval_epochs:
                strategy.evaluate(stats)
            stats.cuda_peak_bytes = cuda_peak_bytes(self.device)
            stats.static_bytes = strategy.stage.static_bytes()
            self.log.end_epoch(epoch, stats)
            due = every.every_epochs and (epoch + 1) % every.every_epochs == 0
            if halted or due or (every.every_steps and self.step % every.every_steps == 0):
                self._save(epoch + 1)
            if halted:
                raise Preempted(self.step, self._saved_at[1] if self._saved_at else None)
        if every.final and (self._saved_at is None or self._saved_at[0] != self.step):
            self._save(self.cfg.train.epochs)
        self.guard.verify()  # before the final weights (stage<s>.pt) are written
        strategy.stop()
        if self.profiler is not None:
            self.profiler.close()  # a pipeline stage's trace: every transfer begun inside the window has completed
        return self.log.close(strategy.stage.module_units)

    def train_epoch(self, epoch: int, start: int = 0, stats: StageStats | None = None) -> tuple[StageStats, bool]:
        """Epoch ``epoch`` from its step ``start`` (a resumed run: ``stats`` holds what came before); also
        whether it stopped early for a preemption."""
        cfg, strategy = self.cfg, self.strategy
        optimizers = strategy.stage.optimizers
        stats = stats or StageStats(strategy.stage_index)
        steps = len(strategy.plan.train_rows)  # the plan's; the learning rate follows it
        limit, every = strategy.steps_per_epoch, cfg.checkpoint.every_steps
        strategy.start_epoch(epoch, start)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        waits, begin = strategy.waits(), time.perf_counter()
        halted, profiler, guard = False, self.profiler, self.guard
        with self.log.epoch(epoch, steps, begin, waits, start) as on_step:
            i = start
            while limit is None or i < limit:
                if profiler is not None:  # the profiler window's steps: each iteration whole, hooks included
                    profiler.at(self.step)
                lr = lr_for_step(cfg, epoch, min(i, steps - 1), steps)
                set_lr(optimizers, lr)
                if guard.on:
                    guard.begin(self.step)
                result = strategy.step(self.step, stats)
                if guard.on:
                    guard.end(result)
                if result is None:
                    break
                stats.add(result)
                i, self.step = i + 1, self.step + 1
                hook_start = time.perf_counter()
                on_step(stats, result, strategy.waits, lr)
                stats.log_s += time.perf_counter() - hook_start
                if self.step % self.log.every == 0:
                    guard.verify()  # at the log window: the host reads the device's flags with the log's
                if strategy.halting:
                    halted = True
                    break
                if every and self.step % every == 0 and i < steps:  # at an epoch's end: after its evaluation
                    strategy.drain(self.step, stats)
                    self._save(epoch, stats, time.perf_counter() - begin)
        if profiler is not None:
            profiler.pause(self.step)  # what comes between epochs (evaluation, checkpoints) is not profiled
        if not halted or i == limit:
            strategy.end_epoch(epoch, self.step, stats)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # timing must include queued kernels
        stats.wall_s += time.perf_counter() - begin
        recv, send = strategy.waits()
        stats.recv_wait_s += recv - waits[0]
        stats.send_wait_s += send - waits[1]
        if not halted or i == limit:
            stats.close()
        if guard.on:
            guard.verify()
            stats.skipped = guard.skipped - self._skipped_before
            self._skipped_before = guard.skipped
            if stats.skipped:
                print(
                    f"stage {strategy.stage_index}: {stats.skipped} steps of epoch {epoch + 1} dropped for a "
                    "non-finite loss or gradient (train.nan_policy=skip)",
                    file=sys.stderr,
                    flush=True,
                )
        return stats, halted

    def _save(self, epoch: int, stats: StageStats | None = None, elapsed: float = 0.0):
        """A checkpoint: mid-epoch (``stats``: the figures of ``epoch`` so far) at ``self.step``, else at the
        start of ``epoch``, numbered by the plan (a replay stage's own step count differs from its producer's)."""
        if self.saver is None:
            return None
        self.guard.verify(self.saver.group if self.saver.topo.distributed else None)  # never a diverged state
        partial, step = None, epoch * len(self.strategy.plan.train_rows)
        if stats is not None:
            partial, step = copy.copy(stats), self.step
            partial.wall_s += elapsed
        path = self.saver.save(step, epoch, self.strategy, partial, self.log.history)
        self._saved_at = (self.step, path)
        return path
