"""What one stage does in one training step, in order: the step strategy of the local modes (docs/pipeline.md).

Take batch t (from the data loader on the first stage, else from the previous stage's link), run the
stage's modules, send the detached output downstream as soon as it exists (before the last module's
backward), then the local backward(s) and optimizer steps; gradients from later stages and MLAAN's weights
go through their links. A local method never waits for a gradient. Evaluation streams the test set the
same way under no_grad. Epochs, the learning rate, metrics and checkpoints are the trainer's (trainer.py).

Sequential mode is this loop with one stage holding all K modules and no links; e2e is that with K = 1.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from itertools import islice

import torch
from torch.distributed import ReduceOp

from pipelocal.data import Batch
from pipelocal.distributed.wire import Kind
from pipelocal.metrics.timeline import TIMELINE
from pipelocal.runtime.evaluation import count_correct
from pipelocal.runtime.spans import net_spans
from pipelocal.runtime.stage import Stage
from pipelocal.runtime.step import StepResult
from pipelocal.schedules.links import Links
from pipelocal.schedules.plan import Plan
from pipelocal.schedules.strategy import StrategyBase


class StageLoop(StrategyBase):
    """Runs one stage through the plan over its ``links``; ``loaders`` only where the stage reads data."""

    def __init__(self, cfg, stage: Stage, plan: Plan, stage_index: int, links: Links, loaders=None):
        super().__init__(stage, plan, stage_index, loaders)
        self.links = links
        self._eval_step = plan.eval_steps_before  # EVAL messages are numbered across the run, a resume included
        self._fault = injected_fault(stage_index)
        self.replicas = stage.replicas  # R > 1: this stage's replicas (distributed/data_parallel.py)
        self._sync_bn = cfg.pipeline.sync_batchnorm
        slow = cfg.pipeline.slowdown
        self.slowdown = slow.factor if slow.stage == stage_index and slow.factor > 1 else 1.0

    @property
    def steps_per_epoch(self) -> int | None:
        """Training steps of an epoch; None: a replay consumer trains until its producer's epoch is over."""
        return None if self.links.replay_in is not None else len(self.plan.train_rows)

    def start_epoch(self, epoch: int, start: int = 0) -> None:
        super().start_epoch(epoch, start)
        if self.links.replay_in is not None:
            self.links.replay_in.start_epoch()

    def _step(self, t: int, stats) -> StepResult | None:
        if self._fault and self._fault[0] == t:
            _inject(self._fault[1], self.stage_index, t)
        grads, ema, replicas = self.links.grads, self.links.ema, self.replicas
        dp_wait = replicas.wait_s if replicas is not None else 0.0
        if grads is not None and grads.waiting:
            # Replicas apply the same late gradients at the same step (those arrived at all of them), so their
            # weights stay equal.
            limit = replicas.agree(grads.receiver.arrived(), ReduceOp.MIN) if replicas is not None else None
            grads.apply_arrived(t, stats, block=False, limit=limit)
        with TIMELINE.span("recv"):
            batch = self._next_input(stats)
        if batch is None:
            return None
        # A preemption stops every stage after the same step: the first decides (its replicas together), the
        # mark travels with the data.
        forward_in = self.links.forward_in
        if forward_in is not None:
            self.halting = forward_in.halt
        else:
            self.halting = self.links.planned and self.decide_halt(replicas.agree if replicas is not None else None)
        guide = self.plan.guides[t] if self.links.planned else None
        busy, grad_wait = time.perf_counter(), stats.grad_wait_s
        step = self.stage.begin(net_spans(self.stage.method, guide), self.plan.weight(t))
        step.forward(batch.x, batch, guide, self._output(t, batch))
        if grads is not None:
            grads.on_forward(t, step, stats)
        result = step.finish()
        waited = stats.grad_wait_s - grad_wait + (replicas.wait_s - dp_wait if replicas is not None else 0.0)
        self._straggle(stats, busy + waited)  # compute only, not the gradient or all-reduce waits
        if grads is not None:
            grads.on_finish(t, step, len(batch))
        if ema is not None:
            ema.sync(t)
        self.stage.after_step()
        self._memory(stats, step)
        if replicas is not None:
            stats.dp_wait_s += replicas.wait_s - dp_wait
        result.rows = len(batch)
        return result

    def _next_input(self, stats) -> Batch | None:
        if self._batches is not None:
            return next(self._batches)
        if self.links.replay_in is not None:
            return self.links.replay_in.next(stats)
        batch, staleness = self.links.forward_in.recv()
        stats.staleness.append(staleness)
        return batch

    def _output(self, t: int, batch: Batch):
        """Where the last module's detached output goes, as soon as it exists (None: the last stage)."""
        if self.links.replay_out is not None:
            return lambda h: self.links.replay_out.send(batch, h)
        if self.links.forward_out is not None:
            kind, halt = self.plan.train_kind(t), self.halting
            return lambda h: self.links.forward_out.send(kind, t, batch, h, halt)
        return None

    def _straggle(self, stats, since: float) -> None:
        """Straggler injection: sleep (factor - 1) x the step's measured compute (``pipeline.slowdown``).

        Only then a sync per step: without injection, ``busy_s`` on CUDA counts the time to launch the step's
        kernels (the host's side), not to run them, so that the host can run ahead of the device."""
        if self.slowdown > 1 and self.stage.device.type == "cuda":
            torch.cuda.synchronize(self.stage.device)  # the compute to scale includes queued kernels
        busy = time.perf_counter() - since
        stats.busy_s += busy
        if self.slowdown > 1:
            pause = (self.slowdown - 1) * busy
            time.sleep(pause)
            stats.sleep_s += pause

    def _memory(self, stats, step) -> None:
        if self.stage.meter is not None:
            stats.kept_bytes_peak = max(stats.kept_bytes_peak, self.stage.meter.live)
        grads = self.links.grads
        stash = grads.stash_bytes(step) if grads is not None else step.stash_bytes
        stats.stash_bytes_peak = max(stats.stash_bytes_peak, stash)

    def end_epoch(self, epoch: int, now: int, stats) -> None:
        """Drain what the epoch left in flight, so it is complete before it is evaluated or checkpointed."""
        if self.links.grads is not None:
            self.links.grads.end_epoch(now, stats)
        if self.links.replay_out is not None:
            self.links.replay_out.end_epoch(epoch)
        if self.links.replay_in is not None:
            self.links.replay_in.end_epoch(stats)
        if self.replicas is not None:
            self.replicas.check_in_step(self.stage.modules, f"stage {self.stage_index} after epoch {epoch + 1}")

    def drain(self, now: int, stats) -> None:
        """Mid-epoch checkpoint: apply every gradient still in flight and finish every send (a drain point)."""
        if self.links.grads is not None:
            self.links.grads.end_epoch(now, stats)
        if self.links.ema is not None:
            self.links.ema.flush()

    def waits(self) -> tuple[float, float]:
        return self.links.waits()

    def evaluate(self, stats) -> None:
        """Stream the test set through the pipeline; count each head's correct predictions on this stage."""
        with TIMELINE.span("eval"):
            self._evaluate(stats)

    def _evaluate(self, stats) -> None:
        if self.replicas is not None and not self._sync_bn:
            self.replicas.broadcast_buffers(self.stage.modules)  # evaluate replica 0's BatchNorm statistics
        out, first, n = self.links.forward_out, self._eval_step, len(self.plan.eval_rows)

        def score(item, correct) -> int:
            j, batch = item
            h = self.stage.evaluate(batch.x, batch.y, correct)
            if out is not None:
                out.send(Kind.EVAL, first + j, batch, h)
            return len(batch)

        if self.test_loader is not None:
            batches = islice(self.test_loader, n)
        else:
            batches = (self.links.forward_in.recv()[0] for _ in range(n))
        stage = self.stage
        correct, samples = count_correct(stage.modules, enumerate(batches), score, len(stage.modules), stage.device)
        self._eval_step += n
        stats.eval_samples += samples
        stats.correct = correct.tolist()

    @property
    def writes(self) -> bool:
        """A stage's replicas hold the same weights: replica 0 saves them (its BatchNorm statistics, as evaluated)."""
        return self.replicas is None or self.replicas.index == 0

    def stop(self) -> None:
        self.links.stop()


def injected_fault(stage_index: int) -> tuple[int, str] | None:
    """Test hook: ``PIPELOCAL_INJECT_FAULT=stage:step:raise|hang|kill|stop`` makes that stage fail at that step
    (``kill``: SIGKILL itself; ``stop``: SIGSTOP itself), in a job's first attempt only (a torchrun restart
    runs clean)."""
    spec = os.environ.get("PIPELOCAL_INJECT_FAULT")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    stage, step, kind = spec.split(":")
    return (int(step), kind) if int(stage) == stage_index else None


def _inject(kind: str, stage_index: int, step: int) -> None:
    if kind == "hang":
        time.sleep(10**6)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "stop":  # frozen: not even a thread runs (the watchdog's case)
        print(f"stage {stage_index} stops itself at {time.time():.3f}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    raise RuntimeError(f"injected fault on stage {stage_index} at step {step} (PIPELOCAL_INJECT_FAULT)")
