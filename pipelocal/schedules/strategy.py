"""The step strategy: what the one training loop (trainer.py) drives on each rank, whatever the mode.

:class:`StepStrategy` is the interface, as a ``typing.Protocol``: the local stage loop (sequential, e2e, pipeline:
schedules/stage_loop.py), DDP (schedules/e2e_parallel.py) and GPipe / 1F1B (schedules/pipelining.py) implement it.
:class:`StrategyBase` holds what they share, written once: an epoch's data (``start_epoch``), the timeline span
around a step, the preemption agreement (``decide_halt``) and a checkpoint's contents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pipelocal.metrics.timeline import TIMELINE
from pipelocal.runtime.stage import Stage
from pipelocal.runtime.step import StepResult
from pipelocal.schedules.plan import Plan


class StepStrategy(Protocol):
    """One rank's side of a mode, as the trainer drives it (docs/design.md#the-step-strategy)."""

    stage: Stage  # modules, optimizers, numerics, device
    plan: Plan  # steps, rows and guidance of every epoch, shared by every rank
    stage_index: int
    halt_requested: Callable[[], bool]  # set by the trainer: has a preemption been asked for?
    halting: bool  # after a step: it was the last before a preemption checkpoint

    @property
    def steps_per_epoch(self) -> int | None:
        """Training steps of an epoch; None: until ``step`` returns None (a replay consumer)."""

    def start_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch`` from its step ``start`` (not 0: a resumed run)."""

    def step(self, t: int, stats) -> StepResult | None:
        """Training step ``t`` (counted across epochs); None when the epoch is over for this rank."""

    def end_epoch(self, epoch: int, now: int, stats) -> None:
        """Complete what the epoch left in flight, before it is evaluated or checkpointed."""

    def drain(self, now: int, stats) -> None:
        """A mid-epoch checkpoint comes: apply and finish everything in flight."""

    def evaluate(self, stats) -> None:
        """Count the test set's correct predictions per head into ``stats.correct`` (runtime/evaluation.py)."""

    def waits(self) -> tuple[float, float]:
        """Seconds waited so far to receive and to send (distributed/waits.py), summed since the start."""

    def checkpoint_state(self) -> dict:
        """This rank's tensors of a checkpoint ({} where another replica writes them)."""

    def load_checkpoint(self, path, group) -> None: ...

    def state_dict(self) -> dict | None:
        """The final weights this rank writes (None: another replica writes them)."""

    def stop(self) -> None:
        """End of the run: finish every send."""


class StrategyBase:
    """What every strategy shares. ``loaders``: (train, test), either None where this rank reads no data."""

    def __init__(self, stage: Stage, plan: Plan, stage_index: int, loaders=None):
        self.stage, self.plan, self.stage_index = stage, plan, stage_index
        self.train_loader, self.test_loader = loaders or (None, None)
        self._batches = None
        self.halt_requested: Callable[[], bool] = lambda: False
        self.halting = False

    @property
    def steps_per_epoch(self) -> int | None:
        return len(self.plan.train_rows)

    def start_epoch(self, epoch: int, start: int = 0) -> None:
        self.stage.set_mode(True)
        if self.train_loader is not None:
            self.train_loader.set_epoch(epoch, start)
            self._batches = iter(self.train_loader)

    def step(self, t: int, stats) -> StepResult | None:
        TIMELINE.at_step(t)
        with TIMELINE.span("train", step=t):
            return self._step(t, stats)

    def _step(self, t: int, stats) -> StepResult | None:
        raise NotImplementedError

    def decide_halt(self, agree: Callable[[int], int] | None) -> bool:
        """The one preemption agreement: the ranks that take a batch from the data (a pipeline's first stage and
        its replicas; every rank of a lockstep baseline) stop after the same step, the maximum of their flags
        (``agree``: that maximum over them; None: this rank alone). A pipeline's later stages learn it from the
        data: the mark travels with the batch (docs/design.md#preemption)."""
        flag = int(self.halt_requested())
        return bool(agree(flag) if agree is not None else flag)

    def end_epoch(self, epoch: int, now: int, stats) -> None:
        pass

    def drain(self, now: int, stats) -> None:
        pass

    def checkpoint_state(self) -> dict:
        return self.stage.checkpoint_state() if self.writes else {}

    def state_dict(self) -> dict | None:
        return self.stage.state_dict() if self.writes else None

    @property
    def writes(self) -> bool:
        """Whether this rank writes its stage's weights (of replicas holding the same weights, replica 0 does)."""
        return True

    def load_checkpoint(self, path, group) -> None:
        self.stage.load_checkpoint(path, group)

    def stop(self) -> None:
        pass
