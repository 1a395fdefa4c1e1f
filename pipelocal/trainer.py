"""The one training loop of every mode: epochs, learning rate, evaluation cadence, metrics, end of run.

Per rank it drives a *step strategy* (the mode's, from ``schedules.MODES``): a local stage loop
(sequential, e2e, pipeline: schedules/stage_loop.py) or an E2E baseline (ddp, gpipe, 1f1b:
schedules/e2e_parallel.py). A strategy has ``stage`` (modules, optimizers, device), ``plan``,
``stage_index``, ``steps_per_epoch`` (None: until it says the epoch is over), ``start_epoch``,
``step(t, stats) -> StepResult | None``, ``end_epoch``, ``evaluate``, ``waits``, ``state_dict`` and ``stop``.

Where things go: something done every N steps (a checkpoint, a profiler window) is a step hook here,
after ``stats.add``; something around every forward (autocast) is the strategy's ``step``, the one place
each mode runs its forward; something at an epoch end (a checkpoint, after the drain) is in ``fit``.
"""

from __future__ import annotations

import time

import torch

from pipelocal.metrics.memory import cuda_peak_bytes
from pipelocal.metrics.run_log import RunLog
from pipelocal.metrics.stats import StageStats
from pipelocal.metrics.summary import RunSummary
from pipelocal.optim import lr_for_step, set_lr


class Trainer:
    """``fit()`` trains for ``train.epochs``; rank 0 returns the :class:`RunSummary`, the others None."""

    def __init__(self, cfg, strategy, log: RunLog):
        self.cfg, self.strategy, self.log = cfg, strategy, log
        self.device = strategy.stage.device
        self.step = 0  # training steps done on this rank, across epochs (= the step number of the next one)

    def fit(self) -> RunSummary | None:
        strategy = self.strategy
        for epoch in range(self.cfg.train.epochs):
            stats = self.train_epoch(epoch)
            if epoch in strategy.plan.eval_epochs:
                strategy.evaluate(stats)
            stats.cuda_peak_bytes = cuda_peak_bytes(self.device)
            stats.static_bytes = strategy.stage.static_bytes()
            self.log.end_epoch(epoch, stats)
        strategy.stop()
        return self.log.close(strategy.stage.module_units)

    def train_epoch(self, epoch: int) -> StageStats:
        cfg, strategy = self.cfg, self.strategy
        optimizers = strategy.stage.optimizers
        stats = StageStats(strategy.stage_index)
        steps = len(strategy.plan.train_rows)  # the plan's; the learning rate follows it
        limit = strategy.steps_per_epoch
        strategy.start_epoch(epoch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        waits, start = strategy.waits(), time.perf_counter()
        with self.log.epoch(epoch, steps, start, waits) as on_step:
            i = 0
            while limit is None or i < limit:
                lr = lr_for_step(cfg, epoch, min(i, steps - 1), steps)
                set_lr(optimizers, lr)
                result = strategy.step(self.step, stats)
                if result is None:
                    break
                stats.add(result)
                i, self.step = i + 1, self.step + 1
                hook_start = time.perf_counter()
                on_step(stats, result, strategy.waits, lr)
                stats.log_s += time.perf_counter() - hook_start
        strategy.end_epoch(epoch, self.step, stats)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # timing must include queued kernels
        stats.wall_s = time.perf_counter() - start
        recv, send = strategy.waits()
        stats.recv_wait_s += recv - waits[0]
        stats.send_wait_s = send - waits[1]
        stats.close()
        return stats
