"""End-to-end data parallel across processes (DDP), and what the lockstep E2E baselines share.

Same model, data, global batch and metrics as the local pipeline, so throughput and memory compare on the same
work. Each is a step strategy of the one trainer (schedules/strategy.py); GPipe and 1F1B are in
schedules/pipelining.py.

``ddp``: every rank holds the whole net and trains its slice of each global batch; gradients are averaged by
DistributedDataParallel. The loss is scaled so that uneven slices (a last partial batch) still give exactly the
global batch's mean gradient. BatchNorm makes DDP (per-replica statistics) differ from one big batch;
``model.norm: group`` removes that difference (invariant 4 is tested with it).

Waits are measured as the pipeline's are (distributed/waits.py): DDP's is the time from the last gradient of a
backward (a hook on every parameter's accumulation) to the backward's return, which is what DDP spends waiting
for the all-reduce that overlap did not hide (``dp_wait_s``, as a pipeline stage's replicas count theirs).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipelocal.data import build_loaders
from pipelocal.distributed.waits import WaitClock
from pipelocal.metrics.timeline import TIMELINE
from pipelocal.options import ModeTraits
from pipelocal.runtime import build_local_net
from pipelocal.runtime.evaluation import count_correct
from pipelocal.runtime.stage import Stage
from pipelocal.runtime.step import StepResult
from pipelocal.schedules import MODES, Mode
from pipelocal.schedules.plan import Plan
from pipelocal.schedules.strategy import StrategyBase


class Lockstep(StrategyBase):
    """What the E2E baselines share: one optimizer step per batch, every rank in step, so a preemption is agreed
    by one small all-reduce over ``control`` per step. ``recv_clock``: the wire's waits (GPipe, 1F1B)."""

    def __init__(self, stage: Stage, plan: Plan, rank: int, loaders, control):
        super().__init__(stage, plan, rank, loaders)
        self.rank, self.control = rank, control
        self.recv_clock = WaitClock(stage.device, on_stream=stage.device.type == "cuda")
        # A rank that ends its step first waits at the agreement for the rest (a GPipe/1F1B last stage for the
        # first stage's last backward). On a CPU that is idle time; on a GPU the host's wait overlaps the work
        # it queued, so it is not counted there.
        self.agree_clock = WaitClock(stage.device) if stage.device.type == "cpu" else None

    def _step(self, t: int, stats) -> StepResult:
        batch = next(self._batches) if self._batches is not None else None
        for opt in self.stage.optimizers:
            opt.zero_grad(set_to_none=True)
        meter = self.stage.meter
        if meter:
            meter.reset_peak()
        loss = self.train_step(batch, stats)
        with TIMELINE.span("optimizer"):
            for j, opt in enumerate(self.stage.optimizers):
                self.stage.numerics.step(j, opt)
        rows = self.plan.train_rows[t % len(self.plan.train_rows)]
        self.halting = self.decide_halt(self._agree)
        return StepResult(None, [loss], [meter.peak if meter else 0], rows=rows)

    def train_step(self, batch, stats) -> torch.Tensor:
        raise NotImplementedError

    def _agree(self, flag: int) -> int:
        box = torch.tensor([flag])
        with self.agree_clock.measure() if self.agree_clock else nullcontext():
            dist.all_reduce(box, op=dist.ReduceOp.MAX, group=self.control)
        return int(box)

    def waits(self) -> tuple[float, float]:
        """Receives and sends are waited on together in a pipelining schedule, and the step's agreement waits on
        the other ranks: their sum reads as receiving."""
        return self.recv_clock.seconds + (self.agree_clock.seconds if self.agree_clock else 0.0), 0.0


class DDPLoop(Lockstep):
    def __init__(self, stage: Stage, plan: Plan, rank: int, world: int, loaders, control):
        super().__init__(stage, plan, rank, loaders, control)
        self.world = world
        module = stage.modules[0]
        self.ddp = DistributedDataParallel(_WholeNet(module), device_ids=_device_ids(stage.device))
        self.all_reduce_clock = WaitClock(stage.device, on_stream=stage.device.type == "cuda")
        for p in module.parameters():
            if p.requires_grad:  # the last of these hooks in a backward starts the wait
                p.register_post_accumulate_grad_hook(lambda _: self.all_reduce_clock.begin())
        self._counted = 0.0

    def _slice(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.tensor_split(tensor, self.world)[self.rank]

    def train_step(self, batch, stats) -> torch.Tensor:
        numerics = self.stage.numerics
        x, y = numerics.layout(self._slice(batch.x)), self._slice(batch.y)
        numerics.dynamic_rows(x, y)
        meter = self.stage.meter
        with meter.hooks() if meter else nullcontext(), numerics.autocast():
            logits = self.ddp(x)
        # Sum over my rows / (global rows / world): after DDP's mean over ranks, the global batch's mean.
        loss = F.cross_entropy(logits.float(), y, reduction="sum") * self.world / len(batch)
        numerics.scale(0, loss).backward()
        self.all_reduce_clock.end()  # DDP's backward returns once every bucket's all-reduce is done
        if self.stage.device.type != "cuda":  # on CUDA read at the epoch's end: no device sync per step
            self._account(stats)
        return loss.detach() * len(batch) / max(len(y) * self.world, 1)

    def _account(self, stats) -> None:
        total = self.all_reduce_clock.seconds
        stats.dp_wait_s += total - self._counted
        self._counted = total

    def end_epoch(self, epoch: int, now: int, stats) -> None:
        self._account(stats)

    def drain(self, now: int, stats) -> None:
        self._account(stats)

    def evaluate(self, stats) -> None:
        numerics, model = self.stage.numerics, self.ddp.module

        def score(batch, correct) -> int:
            x, y = numerics.layout(self._slice(batch.x)), self._slice(batch.y)
            with numerics.autocast():
                correct += (model(x).argmax(1) == y).sum()
            return len(batch)

        correct, total = count_correct(self.stage.modules, self.test_loader, score, 1, self.stage.device)
        correct = correct.cpu()
        dist.all_reduce(correct, group=self.control)  # at the end of evaluation: the replicas are in step anyway
        stats.correct = correct.tolist() if self.rank == 0 else []
        stats.eval_samples = total

    @property
    def writes(self) -> bool:
        # Replica 0's: the weights are the same everywhere, BatchNorm statistics are not (DDP broadcasts rank 0's
        # buffers before each forward, so theirs are the ones the next step uses).
        return self.rank == 0


class _WholeNet(nn.Module):
    """The whole net as one module (body, then the classifier) for DDP."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module.head.logits(self.module(x))


def _device_ids(device: torch.device):
    return [device.index] if device.type == "cuda" else None


def build_ddp_loop(cfg, topo, groups, setup, loaders):
    """Every rank a replica of the whole net (``topo.dp`` = the world size)."""
    stage = _whole_stage(cfg, setup, topo, (0, 1))
    plan = Plan.build(cfg, setup["train_len"], setup["test_len"], setup["start_step"])
    loaders = loaders or build_loaders(cfg.data, topo.device, cfg.train.seed)[:2]
    return DDPLoop(stage, plan, topo.replica, topo.dp, loaders, groups.control)


DDP = ModeTraits(multi_process=True, end_to_end=True, one_module=True, data_parallel=True)
MODES.register("ddp")(Mode(build_ddp_loop, DDP))


def _whole_stage(cfg, setup, topo, module_range):
    net = build_local_net(cfg, setup["info"], setup["ranges"])
    return Stage(net, module_range, cfg, topo.device)
