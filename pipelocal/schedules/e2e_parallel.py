"""End-to-end baselines across processes: DDP, and GPipe / 1F1B through ``torch.distributed.pipelining``.

Same model, data, global batch and metrics as the local pipeline, so throughput and memory compare on
the same work. Each is a step strategy of the one trainer (trainer.py), as the local modes'
:class:`~pipelocal.schedules.stage_loop.StageLoop` is.

- ``ddp``: every rank holds the whole net and trains its slice of each global batch; gradients are
  averaged by DistributedDataParallel. The loss is scaled so that uneven slices (a last partial batch)
  still give exactly the global batch's mean gradient.
- ``gpipe`` / ``1f1b``: rank s holds stage s (the same unit split as the local pipeline, no aux heads),
  batches are cut into ``pipeline.microbatches``. Fixed microbatch shapes are required, so a last
  partial training batch is dropped and evaluation pads its last batch.

BatchNorm makes DDP (per-replica statistics) and microbatching (per-microbatch statistics) differ from
one big batch; ``model.norm: group`` removes that difference (invariant 4 is tested with it).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipelocal.config import ConfigError
from pipelocal.data import build_loaders
from pipelocal.metrics.timeline import TIMELINE, trace_microbatches
from pipelocal.options import ModeTraits
from pipelocal.runtime import build_local_net
from pipelocal.runtime.stage import Stage
from pipelocal.runtime.step import StepResult
from pipelocal.schedules import MODES, Mode
from pipelocal.schedules.plan import Plan
from pipelocal.split import stage_ranges


class _Strategy:
    """What the E2E strategies share: the data of an epoch, one optimizer step per batch."""

    def __init__(self, stage: Stage, plan: Plan, rank: int, loaders, control):
        self.stage, self.plan, self.stage_index, self.rank = stage, plan, rank, rank
        self.train_loader, self.test_loader = loaders
        self.control = control
        self._batches = None
        self.halt_requested = lambda: False  # set by the trainer: has a preemption been asked for?
        self.halting = False

    @property
    def steps_per_epoch(self) -> int:
        return len(self.plan.train_rows)

    def start_epoch(self, epoch: int, start: int = 0) -> None:
        self.stage.set_mode(True)
        if self.train_loader is not None:
            self.train_loader.set_epoch(epoch, start)
            self._batches = iter(self.train_loader)

    def step(self, t: int, stats) -> StepResult:
        TIMELINE.at_step(t)
        with TIMELINE.span("train", step=t):
            return self._step(t, stats)

    def _step(self, t: int, stats) -> StepResult:
        batch = next(self._batches) if self._batches is not None else None
        for opt in self.stage.optimizers:
            opt.zero_grad(set_to_none=True)
        meter = self.stage.meter
        if meter:
            meter.reset_peak()
        loss = self.train_step(batch)
        with TIMELINE.span("optimizer"):
            for j, opt in enumerate(self.stage.optimizers):
                self.stage.numerics.step(j, opt)
        rows = self.plan.train_rows[t % len(self.plan.train_rows)]
        # Every rank steps in lockstep, so they agree on a preemption with one small gloo all-reduce.
        flag = torch.tensor([int(self.halt_requested())])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control)
        self.halting = bool(flag)
        return StepResult(None, [loss], [meter.peak if meter else 0], rows=rows)

    def end_epoch(self, epoch: int, now: int, stats) -> None:
        pass

    def drain(self, now: int, stats) -> None:
        pass  # nothing is in flight between steps

    def checkpoint_state(self) -> dict:
        return self.stage.checkpoint_state()

    def load_checkpoint(self, path, group) -> None:
        self.stage.load_checkpoint(path, group)

    def waits(self) -> tuple[float, float]:
        return 0.0, 0.0  # communication happens inside DDP / the pipelining schedule; not split out here

    def stop(self) -> None:
        pass

    def state_dict(self) -> dict | None:
        return self.stage.state_dict()


class DDPLoop(_Strategy):
    def __init__(self, stage: Stage, plan: Plan, rank: int, world: int, loaders, control):
        super().__init__(stage, plan, rank, loaders, control)
        self.world = world
        module = stage.modules[0]
        self.ddp = DistributedDataParallel(_WholeNet(module), device_ids=_device_ids(stage.device))

    def _slice(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.tensor_split(tensor, self.world)[self.rank]

    def train_step(self, batch) -> torch.Tensor:
        numerics = self.stage.numerics
        x, y = numerics.layout(self._slice(batch.x)), self._slice(batch.y)
        numerics.dynamic_rows(x, y)
        meter = self.stage.meter
        with meter.hooks() if meter else nullcontext(), numerics.autocast():
            logits = self.ddp(x)
        # Sum over my rows / (global rows / world): after DDP's mean over ranks, the global batch's mean.
        loss = F.cross_entropy(logits.float(), y, reduction="sum") * self.world / len(batch)
        numerics.scale(0, loss).backward()
        return loss.detach() * len(batch) / max(len(y) * self.world, 1)

    @torch.no_grad()
    def evaluate(self, stats) -> None:
        self.stage.set_mode(False)
        correct = torch.zeros(1, dtype=torch.long, device=self.stage.device)  # read once, at the end
        total = 0
        numerics = self.stage.numerics
        for batch in self.test_loader:
            x, y = numerics.layout(self._slice(batch.x)), self._slice(batch.y)
            with numerics.autocast():
                correct += (self.ddp.module(x).argmax(1) == y).sum()
            total += len(batch)
        correct = correct.cpu()
        dist.all_reduce(correct, group=self.control)  # at the end of evaluation: the replicas are in step anyway
        stats.correct = correct.tolist() if self.rank == 0 else []
        stats.eval_samples = total
        self.stage.set_mode(True)

    def state_dict(self) -> dict | None:
        return self.stage.state_dict() if self.rank == 0 else None  # every replica holds the same weights

    def checkpoint_state(self) -> dict:
        # Replica 0's: the weights are the same everywhere, BatchNorm statistics are not (DDP broadcasts rank
        # 0's buffers before each forward, so theirs are the ones the next step uses).
        return self.stage.checkpoint_state() if self.rank == 0 else {}


class PipeliningLoop(_Strategy):
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

    def train_step(self, batch) -> torch.Tensor:
        losses: list[torch.Tensor] = []
        meter = self.stage.meter
        with meter.hooks() if meter else nullcontext():
            self.schedule.step(*self._args(batch), **self._target(batch, losses))
        return torch.stack(losses).mean().detach() if losses else torch.zeros((), device=self.stage.device)

    def _args(self, batch) -> tuple:
        return (batch.x,) if self.is_first else ()

    def _target(self, batch, losses) -> dict:
        return {"target": batch.y, "losses": losses} if self.is_last else {}

    @torch.no_grad()
    def evaluate(self, stats) -> None:
        self.stage.set_mode(False)
        correct = torch.zeros(len(self.stage.modules), dtype=torch.long, device=self.stage.device)  # read at the end
        correct[:-1] = -1  # only the classifier gives class scores
        rows = self.plan.batch_size
        batches = iter(self.test_loader) if self.test_loader is not None else None
        for valid in self.plan.eval_rows:
            batch = next(batches) if batches is not None else None
            padded = _padded(batch, rows) if batch is not None else None
            out = self.schedule.eval(*self._args(padded), **({"target": padded.y} if self.is_last else {}))
            if self.is_last:
                correct[-1] += (out[:valid].argmax(1) == padded.y[:valid]).sum()
            stats.eval_samples += valid
        if not self.is_last:
            correct[-1] = -1
        stats.correct = correct.tolist()
        self.stage.set_mode(True)


def _padded(batch, rows: int):
    """Fixed microbatch shapes: pad a smaller last batch with zeros (its extra rows are not counted)."""
    if len(batch) == rows:
        return batch
    extra = rows - len(batch)
    return replace(batch, x=F.pad(batch.x, (0, 0, 0, 0, 0, 0, 0, extra)), y=F.pad(batch.y, (0, extra)))


class _WholeNet(nn.Module):
    """The whole net as one module (body, then the classifier) for DDP."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module.head.logits(self.module(x))


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


def _device_ids(device: torch.device):
    return [device.index] if device.type == "cuda" else None


# ------------------------------------------------------------------------------------------ builders


def build_ddp_loop(cfg, topo, groups, setup, loaders):
    """Every rank a replica of the whole net (``topo.dp`` = the world size)."""
    stage = _whole_stage(cfg, setup, topo, (0, 1))
    plan = Plan.build(cfg, setup["train_len"], setup["test_len"], setup["start_step"])
    loaders = loaders or build_loaders(cfg.data, topo.device, cfg.train.seed)[:2]
    return DDPLoop(stage, plan, topo.replica, topo.dp, loaders, groups.control)


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


DDP = ModeTraits(multi_process=True, end_to_end=True, one_module=True, data_parallel=True)
PIPELINING = ModeTraits(multi_process=True, end_to_end=True, check=_check_pipelining)
MODES.register("ddp")(Mode(build_ddp_loop, DDP))
MODES.register("gpipe")(Mode(_pipelining_builder("ScheduleGPipe"), PIPELINING))
MODES.register("1f1b")(Mode(_pipelining_builder("Schedule1F1B"), PIPELINING))


def _whole_stage(cfg, setup, topo, module_range):
    net = build_local_net(cfg, setup["info"], setup["ranges"])
    return Stage(net, module_range, cfg, topo.device)
