"""The divergence guard (``train.nan_policy``): a non-finite loss or gradient stops the run, or drops the step.

Every check stays on the device: each optimizer step ANDs "this module's gradient norm is finite" into a
flag, each step's losses too, and a per-module count and first bad step accumulate there. The host reads
them only where it reads anyway: at the log window, before every checkpoint and at the end of training
(``verify``). So ``stop`` ends the run at the next of those with one line naming the stage, the module and
the first bad step, and never writes a checkpoint or final weights of a diverged state (the last good
checkpoint stays as it was). ``skip`` snapshots the stage's weights, buffers and optimizer state before each
step and puts them back on the device (``torch.where``) when the step was not finite: the step is dropped
and counted. In fp16 the gradient check is left to the loss scaler (an overflow there is routine: it skips
the step and lowers its scale); the losses are still checked.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class Diverged(RuntimeError):
    """The run stopped on a non-finite loss or gradient (``train.nan_policy=stop``)."""


class DivergedElsewhere(Diverged):
    """This stage stops because another one diverged (that one's line says where; this one stays quiet)."""


class Guard:
    """``policy`` (stop|skip|off) over ``stage``'s modules and optimizers."""

    def __init__(self, policy: str, stage, stage_index: int):
        self.policy, self.stage, self.stage_index = policy, stage, stage_index
        device, n = stage.device, len(stage.optimizers)
        self.bad = torch.zeros(n + 1, dtype=torch.long, device=device)  # per optimizer, then the losses
        self.first = torch.full((n + 1,), -1, dtype=torch.long, device=device)  # first bad step of each
        self.ok = torch.ones((), dtype=torch.bool, device=device)  # this step so far
        self.step = 0
        self.dropped = torch.zeros((), dtype=torch.long, device=device)  # steps undone (skip)
        self.skipped = 0  # ... as last read
        self._snapshot: dict | None = None
        self._check_grads = not stage.numerics.fp16

    @property
    def on(self) -> bool:
        return self.policy != "off"

    def begin(self, step: int) -> None:
        """Before training step ``step``."""
        self.step = step
        self.ok = torch.ones((), dtype=torch.bool, device=self.bad.device)
        if self.policy == "skip":
            self._snapshot = {key: t.detach().clone() for key, t in self._tensors()}

    def optimizer_step(self, j: int, optimizer) -> None:
        """Before optimizer ``j``'s step: is its gradient finite? (on the device)"""
        if not self._check_grads:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            self._mark(j, torch.stack(torch._foreach_norm(grads)).sum().isfinite())

    def end(self, result) -> None:
        """After the step: its losses checked; with ``skip``, a non-finite step undone."""
        if result is not None and result.losses:
            self._mark(len(self.bad) - 1, torch.stack([x.float() for x in result.losses]).isfinite().all())
        if self.policy != "skip" or self._snapshot is None:
            return
        ok = self.ok
        self.dropped += (~ok).long()
        with torch.no_grad():
            for key, t in self._tensors():
                old = self._snapshot.get(key)
                t.copy_(torch.where(ok, t, old if old is not None else torch.zeros_like(t)))
            if result is not None and result.losses:  # a dropped step counts 0 in the epoch's loss mean
                result.losses = [torch.where(ok, x, torch.zeros_like(x)) for x in result.losses]
        self._snapshot = None

    def _mark(self, index: int, finite: torch.Tensor) -> None:
        self.ok = self.ok & finite
        bad = ~finite
        self.first[index] = torch.where(bad & (self.first[index] < 0), self.step, self.first[index])
        self.bad[index] += bad.long()

    def _tensors(self):
        """(key, tensor) of every weight, buffer and optimizer state tensor of the stage."""
        for i, module in enumerate(self.stage.modules):
            for name, t in module.state_dict(keep_vars=True).items():
                if torch.is_tensor(t) and t.is_floating_point():
                    yield ("m", i, name), t.data
        # (a state tensor elsewhere than the device, AdamW's host-side step count on CUDA, is not rolled back:
        # writing it from a device flag would be a host read per step)
        device = self.bad.device
        for o, opt in enumerate(self.stage.optimizers):
            for p_index, p in enumerate(q for group in opt.param_groups for q in group["params"]):
                for name, t in opt.state.get(p, {}).items():
                    if torch.is_tensor(t) and t.device == device:
                        yield ("o", o, p_index, name), t

    def verify(self, group=None) -> None:
        """One host read: with ``stop``, raise :class:`Diverged` naming the first bad module and step. With
        ``group`` (before a checkpoint), every stage learns whether any diverged, so none writes."""
        if not self.on:
            return
        if self.policy == "skip":
            self.skipped = int(self.dropped)
            return
        counts, firsts = self.bad.tolist(), self.first.tolist()
        mine = any(counts)
        anyone = mine
        if group is not None:
            flag = torch.tensor([int(mine)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
            anyone = bool(flag)
        if mine:
            raise Diverged(self.describe(counts, firsts))
        if anyone:
            raise DivergedElsewhere(
                f"stage {self.stage_index} stops: another stage diverged (its line names it); no checkpoint written"
            )

    def describe(self, counts: list[int], firsts: list[int]) -> str:
        n = len(counts) - 1
        seen = [(firsts[j], j) for j in range(len(counts)) if counts[j]]
        step, j = min(seen)
        what = f"module {self.stage.first + j}'s gradient" if j < n else "a loss"
        if j == n and n == 1:
            what = f"module {self.stage.first}'s loss"
        return (
            f"stage {self.stage_index}: {what} is not finite (NaN or inf) at step {step} (train.nan_policy=stop); "
            "nothing of this state is saved and the last checkpoint is intact. Lower optim.lr, or use "
            "train.nan_policy=skip to drop such steps"
        )
