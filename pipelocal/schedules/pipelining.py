"""End-to-end pipeline parallel across processes: GPipe and 1F1B through ``torch.distributed.pipelining``.

Rank s holds stage s (the same unit split as the local pipeline, no aux heads); batches are cut into
``pipeline.microbatches``. Fixed microbatch shapes are required, so a last partial training batch is dropped and
evaluation pads its last batch. BatchNorm makes microbatching (per-microbatch statistics) differ from one big
batch; ``model.norm: group`` removes that difference (invariant 4 is tested with it).

The schedule waits on its transfers in one function of torch's (``schedules._wait_batch_p2p``), with a step's
sends and receives batched together; :func:`_timed_waits` times that function while this process's schedule
steps, so the waits are measured as the local pipeline's are (distributed/waits.py). Sends and receives waited
on together cannot be told apart: their sum reads as receiving.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from pipelocal.config import ConfigError
from pipelocal.data import build_loaders
from pipelocal.metrics.timeline import trace_microbatches
from pipelocal.options import ModeTraits
from pipelocal.runtime import build_local_net
from pipelocal.runtime.evaluation import count_correct
from pipelocal.runtime.stage import Stage
from pipelocal.schedules import MODES, Mode
from pipelocal.schedules.e2e_parallel import Lockstep
from pipelocal.schedules.plan import Plan
from pipelocal.split import stage_ranges


class PipeliningLoop(Lockstep):
    """GPipe or 1F1B over this rank's stage, with torch.distributed.pipelining."""

    def __init__(self, cfg, stage: Stage, plan: Plan, rank: int, world: int, loaders, schedule: str, groups):
        super().__init__(stage, plan, rank, loaders, groups.control)
        self.is_first, self.is_last = rank == 0, rank == world - 1
        self.module = _StageModule(stage.modules, self.is_last, stage.numerics)
        trace_microbatches(self.module)
        from torch.distributed import pipelining  # here, not at import: it pulls in dynamo (0.7 s a process)

        pipe_stage = pipelining.PipelineStage(self.module, rank, world, stage.device, group=groups.forward)
        schedule_cls = getattr(pipelining, schedule)
        self.schedule = schedule_cls(pipe_stage, n_microbatches=cfg.pipeline.microbatches, loss_fn=_loss)

    def train_step(self, batch, stats) -> torch.Tensor:
        losses: list[torch.Tensor] = []
        meter = self.stage.meter
        with meter.hooks() if meter else nullcontext(), _timed_waits(self.recv_clock):
            self.schedule.step(*self._args(batch), **self._target(batch, losses))
        return torch.stack(losses).mean().detach() if losses else torch.zeros((), device=self.stage.device)

    def _args(self, batch) -> tuple:
        return (batch.x,) if self.is_first else ()

    def _target(self, batch, losses) -> dict:
        return {"target": batch.y, "losses": losses} if self.is_last else {}

    def evaluate(self, stats) -> None:
        """Only the classifier gives class scores: the other heads' counts are -1, as are every stage's but the
        last's."""
        rows, is_last = self.plan.batch_size, self.is_last

        def score(item, correct) -> int:
            valid, batch = item
            padded = _padded(batch, rows) if batch is not None else None
            out = self.schedule.eval(*self._args(padded), **({"target": padded.y} if is_last else {}))
            if is_last:
                correct[-1] += (out[:valid].argmax(1) == padded.y[:valid]).sum()
            return valid

        batches = iter(self.test_loader) if self.test_loader is not None else None
        items = ((valid, next(batches) if batches is not None else None) for valid in self.plan.eval_rows)
        correct, samples = count_correct(self.stage.modules, items, score, len(self.stage.modules), self.stage.device)
        correct[:-1] = -1
        if not is_last:
            correct[-1] = -1
        stats.eval_samples += samples
        stats.correct = correct.tolist()


def _padded(batch, rows: int):
    """Fixed microbatch shapes: pad a smaller last batch with zeros (its extra rows are not counted)."""
    if len(batch) == rows:
        return batch
    extra = rows - len(batch)
    return replace(batch, x=F.pad(batch.x, (0, 0, 0, 0, 0, 0, 0, extra)), y=F.pad(batch.y, (0, extra)))


class _StageModule(nn.Module):
    """A stage's modules as one module for torch.distributed.pipelining; the last stage ends in the classifier.
    Forwards run under the stage's autocast; what a stage sends leaves in the compute dtype, as in the local
    modes (the schedule infers the wire's dtypes from these outputs)."""

    def __init__(self, modules, is_last: bool, numerics):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.is_last = is_last
        self.numerics = numerics

    def forward(self, x):
        if x.requires_grad and self.numerics.channels_last:
            x = _ContiguousGrad.apply(x)
        x = self.numerics.layout(x)
        with self.numerics.autocast():
            for part in self.parts:
                x = self.numerics.boundary(part(x))
            # The wire takes contiguous tensors only (a channels_last activation is not).
            return self.parts[-1].head.logits(x) if self.is_last else x.contiguous()


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose gradient is made contiguous: a received input's gradient goes back over the wire, which
    takes contiguous tensors only (through channels_last layers it would not be)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _loss(logits, target):
    return F.cross_entropy(logits.float(), target)


@contextmanager
def _timed_waits(clock):
    """Time every wait of torch's pipelining schedules on ``clock`` (module-level function swapped for the
    duration; where a torch release names it otherwise, the waits go unmeasured rather than the run failing)."""
    from torch.distributed.pipelining import schedules

    original = getattr(schedules, "_wait_batch_p2p", None)
    if original is None:
        yield
        return

    def timed(work):
        with clock.measure():
            return original(work)

    schedules._wait_batch_p2p = timed
    try:
        yield
    finally:
        schedules._wait_batch_p2p = original


def _pipelining_builder(schedule: str):
    """``schedule``: the name of a torch.distributed.pipelining schedule class."""

    def build(cfg, topo, groups, setup, loaders):
        net = build_local_net(cfg, setup["info"], setup["ranges"])
        ranges = stage_ranges(net.num_modules, topo.num_stages, cfg.pipeline.modules_per_stage)
        stage = Stage(net, ranges[topo.stage_index], cfg, topo.device)
        # Evaluation goes through the same fixed microbatch shapes: batches of the training size.
        data = replace(cfg.data, eval_batch_size=cfg.data.batch_size, drop_last=True)
        plan = Plan.build(replace(cfg, data=data), setup["train_len"], setup["test_len"], setup["start_step"])
        needs_data = topo.is_first_stage or topo.is_last_stage
        loaders = build_loaders(data, topo.device, cfg.train.seed)[:2] if needs_data else (None, None)
        return PipeliningLoop(cfg, stage, plan, topo.stage_index, topo.num_stages, loaders, schedule, groups)

    return build


def _check_pipelining(cfg) -> None:
    if cfg.data.batch_size % cfg.pipeline.microbatches:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} does not divide into pipeline.microbatches="
            f"{cfg.pipeline.microbatches}; pick sizes that divide"
        )
    if cfg.train.precision == "fp16":
        raise ConfigError(
            f"mode={cfg.mode} with train.precision=fp16: torch.distributed.pipelining runs the backward itself, "
            "so no per-stage loss scaling can be put in it; use train.precision=bf16 (no scaling needed)"
        )


PIPELINING = ModeTraits(multi_process=True, end_to_end=True, microbatched=True, check=_check_pipelining)
MODES.register("gpipe")(Mode(_pipelining_builder("ScheduleGPipe"), PIPELINING))
MODES.register("1f1b")(Mode(_pipelining_builder("Schedule1F1B"), PIPELINING))
