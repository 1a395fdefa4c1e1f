"""Local streaming: what one pipeline stage does, step by step (DESIGN §4).

Per training step: take batch t (stage 0 from the loader, the others from the previous stage), run
the stage's modules, send the detached output downstream as soon as it exists (before the last
module's backward), then the local backward(s) and optimizer steps. No stage waits for a gradient.
Evaluation streams the test set the same way under no_grad. Every rank derives the same
:class:`Plan`, so each knows every message it will receive and can pre-post it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipelocal.data import Batch
from pipelocal.distributed.setup import Groups, Topology
from pipelocal.distributed.transport import (
    Expected,
    Kind,
    Receiver,
    Sender,
    TensorMeta,
    check_header,
    decode_header,
    encode_header,
)
from pipelocal.optim import lr_for_step, set_lr
from pipelocal.runtime import build_local_net
from pipelocal.runtime.stage import Stage
from pipelocal.schedules import LOOPS
from pipelocal.split import stage_ranges


@dataclass(frozen=True)
class Plan:
    """The message schedule of the whole run: valid rows of every train/eval step, and which epochs evaluate."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    train_rows: tuple[int, ...]  # per step of one epoch
    eval_rows: tuple[int, ...]  # per step of one evaluation
    eval_epochs: tuple[int, ...]

    @classmethod
    def build(cls, cfg, train_len: int, test_len: int) -> Plan:
        train = _rows(train_len, cfg.data.batch_size, cfg.data.drop_last)[: cfg.train.max_steps or None]
        epochs, every = cfg.train.epochs, cfg.train.eval_every
        evals = tuple(e for e in range(epochs) if (e + 1) % every == 0 or e + 1 == epochs)
        return cls(
            epochs,
            cfg.data.batch_size,
            cfg.data.eval_batch_size,
            train,
            _rows(test_len, cfg.data.eval_batch_size, False),
            evals,
        )

    def messages(self) -> list[tuple[Kind, int, int]]:
        """Every message in order: (kind, step, valid rows); DATA steps count across epochs."""
        out, eval_step = [], 0
        for epoch in range(self.epochs):
            out += [(Kind.DATA, epoch * len(self.train_rows) + i, r) for i, r in enumerate(self.train_rows)]
            if epoch in self.eval_epochs:
                out += [(Kind.EVAL, eval_step + j, r) for j, r in enumerate(self.eval_rows)]
                eval_step += len(self.eval_rows)
        return out + [(Kind.STOP, 0, 0)]


def _rows(n: int, batch: int, drop_last: bool) -> tuple[int, ...]:
    full, rest = divmod(n, batch)
    return (batch,) * full + ((rest,) if rest and not drop_last else ())


def link_metas(plan: Plan, shape: tuple[int, ...], context_shapes: dict[str, tuple[int, ...]]):
    """Tensors on the wire into a stage: DATA carries the activation and the context; EVAL the activation."""
    data = [TensorMeta(torch.float32, (plan.batch_size, *shape))]
    data += [TensorMeta(torch.float32, (plan.batch_size, *s)) for s in context_shapes.values()]
    return {
        Kind.DATA: tuple(data),
        Kind.EVAL: (TensorMeta(torch.float32, (plan.eval_batch_size, *shape)),),
        Kind.STOP: (),
    }


def expectations(plan: Plan, metas) -> list[Expected]:
    return [Expected(kind, step, valid, metas[kind]) for kind, step, valid in plan.messages()]


@dataclass
class StageStats:
    """What a stage measures in one epoch; plain numbers so they travel as objects at epoch end."""

    stage: int
    steps: int = 0
    samples: int = 0
    wall_s: float = 0.0
    recv_wait_s: float = 0.0
    send_wait_s: float = 0.0
    staleness: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    saved_peak: list[int] = field(default_factory=list)
    correct: list[int] = field(default_factory=list)
    eval_samples: int = 0
    log_s: float = 0.0  # time spent in the metrics hook (live table, reports): the cost of observability

    @property
    def compute_s(self) -> float:
        return self.wall_s - self.recv_wait_s - self.send_wait_s


class StageLoop:
    """Runs one stage through the plan. ``context`` names the batch fields the next stages need."""

    def __init__(
        self,
        cfg,
        stage: Stage,
        plan: Plan,
        stage_index: int,
        receiver: Receiver | None,
        sender: Sender | None,
        sender_metas: dict | None,
        context: tuple[str, ...],
        loaders=None,
    ):
        self.cfg, self.stage, self.plan, self.stage_index = cfg, stage, plan, stage_index
        self.receiver, self.sender, self.sender_metas, self.context = receiver, sender, sender_metas, context
        self.train_loader, self.test_loader = loaders or (None, None)
        self.step = 0  # training steps done, across epochs (= DATA message step)
        self._eval_step = 0
        self._staleness = 0
        self._fault = injected_fault(stage_index)
        self.on_step = None  # hook(epoch, step, steps, stats, losses, start, waits), for live metrics

    # ------------------------------------------------------------------------------------ inputs

    def _inputs(self, loader_iter) -> Batch:
        if loader_iter is not None:
            return next(loader_iter)
        header, tensors, staleness = self.receiver.recv()
        self._staleness = staleness
        raw = tensors[1] if len(tensors) > 1 else None  # context travels after the activation
        return Batch(tensors[0], header.labels.to(tensors[0].device), raw)

    def _send(self, kind: Kind, step: int, batch: Batch, h: torch.Tensor) -> None:
        rows = self.plan.batch_size if kind == Kind.DATA else self.plan.eval_batch_size
        tensors = [_pad(h, rows)]
        if kind == Kind.DATA:
            # A copy: a relayed context tensor is a view of a receive buffer that is reused later.
            tensors += [_pad(getattr(batch, name), rows, copy=True) for name in self.context]
        metas = self.sender_metas[kind]
        self.sender.send(kind, step, len(batch), tensors, batch.y, metas)

    # ------------------------------------------------------------------------------------ epochs

    def train_epoch(self, epoch: int) -> StageStats:
        cfg, stage, stats = self.cfg, self.stage, StageStats(self.stage_index)
        stage.set_mode(True)
        loader_iter = None
        if self.train_loader is not None:
            self.train_loader.set_epoch(epoch)
            loader_iter = iter(self.train_loader)
        steps = len(self.plan.train_rows)
        if stage.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(stage.device)
        loss_sum, waits = None, self.waits()
        start = time.perf_counter()
        for i in range(steps):
            if self._fault and self._fault[0] == self.step:
                _inject(self._fault[1], self.stage_index, self.step)
            set_lr(stage.optimizers, lr_for_step(cfg, epoch, i, steps))
            batch = self._inputs(loader_iter)
            on_output = (
                None if self.sender is None else (lambda h, b=batch, t=self.step: self._send(Kind.DATA, t, b, h))
            )
            result = stage.train(batch, on_output)
            losses = torch.stack(result.losses)
            loss_sum = losses if loss_sum is None else loss_sum + losses
            stats.saved_peak = [max(a, b) for a, b in zip(stats.saved_peak or result.saved_peak, result.saved_peak)]
            if self.receiver is not None:
                stats.staleness.append(self._staleness)
            stats.steps, stats.samples, self.step = i + 1, stats.samples + len(batch), self.step + 1
            if self.on_step is not None:
                hook_start = time.perf_counter()
                self.on_step(epoch, i + 1, steps, stats, losses, start, waits)
                stats.log_s += time.perf_counter() - hook_start
        self._close_epoch_timing(stats, start, waits)
        stats.loss = (loss_sum / steps).tolist()
        return stats

    def waits(self) -> tuple[float, float]:
        return (self.receiver.wait_s if self.receiver else 0.0, self.sender.wait_s if self.sender else 0.0)

    def _close_epoch_timing(self, stats: StageStats, start: float, waits) -> None:
        if self.stage.device.type == "cuda":
            torch.cuda.synchronize(self.stage.device)  # timing must include queued kernels
        stats.wall_s = time.perf_counter() - start
        recv, send = self.waits()
        stats.recv_wait_s, stats.send_wait_s = recv - waits[0], send - waits[1]

    @torch.no_grad()
    def evaluate(self, stats: StageStats) -> None:
        """Stream the test set through the pipeline; count each head's correct predictions on this stage."""
        self.stage.set_mode(False)
        loader_iter = iter(self.test_loader) if self.test_loader is not None else None
        correct = torch.zeros(len(self.stage.modules), dtype=torch.long, device=self.stage.device)
        for j in range(len(self.plan.eval_rows)):
            batch = self._inputs(loader_iter)
            h = self.stage.evaluate(batch.x, batch.y, correct)
            if self.sender is not None:
                self._send(Kind.EVAL, self._eval_step + j, batch, h)
            stats.eval_samples += len(batch)
        self._eval_step += len(self.plan.eval_rows)
        stats.correct = correct.tolist()
        self.stage.set_mode(True)

    def checkpoint(self) -> dict:
        return self.stage.state_dict()

    def stop(self) -> None:
        """STOP flows downstream: receive it (unless first), pass it on (unless last), finish sends."""
        if self.receiver is not None:
            self.receiver.recv()
        if self.sender is not None:
            self.sender.send(Kind.STOP, 0, 0, [], torch.zeros(0, dtype=torch.long), ())
            self.sender.flush()


def injected_fault(stage_index: int) -> tuple[int, str] | None:
    """Test hook: ``PIPELOCAL_INJECT_FAULT=stage:step:raise|hang`` makes that stage fail at that step."""
    spec = os.environ.get("PIPELOCAL_INJECT_FAULT")
    if not spec:
        return None
    stage, step, kind = spec.split(":")
    return (int(step), kind) if int(stage) == stage_index else None


def _inject(kind: str, stage_index: int, step: int) -> None:
    if kind == "hang":
        time.sleep(10**6)
    raise RuntimeError(f"injected fault on stage {stage_index} at step {step} (PIPELOCAL_INJECT_FAULT)")


def _pad(t: torch.Tensor, rows: int, copy: bool = False) -> torch.Tensor:
    """The wire carries full batches; the last, smaller one is zero-padded and its header says how many rows count."""
    if len(t) == rows:
        return t.contiguous().clone() if copy else t.contiguous()
    return F.pad(t, (0, 0) * (t.dim() - 1) + (0, rows - len(t)))


# ----------------------------------------------------------------------------------- building a stage


@LOOPS.register("pipeline")
def build_stage_loop(cfg, topo: Topology, groups: Groups, setup: dict, loaders):
    """This rank's stage, its links to the neighbours (after the handshake), and its loop."""
    info = setup["info"]
    net = build_local_net(cfg, info, setup["ranges"])
    ranges = stage_ranges(net.num_modules, topo.num_stages, cfg.pipeline.modules_per_stage)
    s, num_modules = topo.stage_index, net.num_modules
    stage = Stage(net, ranges[s], cfg, topo.device)
    plan = Plan.build(cfg, setup["train_len"], setup["test_len"])
    shapes = net.method.info.module_shapes
    context_shapes = {"raw": tuple(info.input_shape)}

    def context_into(j: int) -> dict:
        """Batch fields stage j or a later one reads: they must flow into stage j."""
        needed = any(ranges[k][0] < num_modules - 1 for k in range(j, topo.num_stages))
        return {n: context_shapes[n] for n in net.method.needs} if needed else {}

    receiver = sender = sender_metas = None
    context_out: dict = {}
    if not topo.is_first_stage:
        metas = link_metas(plan, shapes[ranges[s][0] - 1], context_into(s))
        receiver_metas = metas
    if not topo.is_last_stage:
        context_out = context_into(s + 1)
        sender_metas = link_metas(plan, stage.output_shape, context_out)
    handshake(topo, groups, sender_metas, receiver_metas if not topo.is_first_stage else None, plan.batch_size)
    if not topo.is_first_stage:
        receiver = Receiver(
            groups.forward,
            s - 1,
            s,
            expectations(plan, receiver_metas),
            cfg.pipeline.queue_depth,
            topo.device,
            max(plan.batch_size, plan.eval_batch_size),
        )
    if not topo.is_last_stage:
        sender = Sender(
            groups.forward, s, s + 1, cfg.pipeline.queue_depth, max(plan.batch_size, plan.eval_batch_size), topo.device
        )
    loop = StageLoop(cfg, stage, plan, s, receiver, sender, sender_metas, tuple(context_out), loaders)
    return loop, stage


def handshake(topo: Topology, groups: Groups, out_metas, in_metas, rows: int) -> None:
    """Stage s tells s+1 what it will send; s+1 checks it against what it expects (fail at start-up)."""
    s, device = topo.stage_index, topo.device
    works, incoming = [], None
    if in_metas is not None:
        incoming = torch.empty(
            len(encode_header(Kind.DATA, -1, 0, in_metas[Kind.DATA], torch.zeros(0), rows)),
            dtype=torch.int64,
            device=device,
        )
        works.append(dist.irecv(incoming, s - 1, group=groups.forward))
    if out_metas is not None:
        outgoing = encode_header(Kind.DATA, -1, 0, out_metas[Kind.DATA], torch.zeros(0), rows).to(device)
        works.append(dist.isend(outgoing, s + 1, group=groups.forward))
    for work in works:
        work.wait()
    if incoming is not None:
        check_header(decode_header(incoming), Expected(Kind.DATA, -1, 0, in_metas[Kind.DATA]), s - 1, s)
