"""Local streaming: what one pipeline stage does, step by step (DESIGN §4).

Per training step: take batch t (stage 0 from the loader, the others from the previous stage), run
the stage's modules, send the detached output downstream as soon as it exists (before the last
module's backward), then the local backward(s) and optimizer steps. A local method never waits for a
gradient. Evaluation streams the test set the same way under no_grad. Every rank derives the same
:class:`Plan`, so each knows every message it will receive and can pre-post it.

Gradients that cross stages (DESIGN §5: guidance, MLAAN's cascade, e2e) use one mechanism: the stage
keeps the graph of batch t, the next stage sends back ``d loss / d input`` for t (one GRAD message per
step and link, one tensor per span still to go), and the stage runs backward through what it kept.
``guidance.mode: sync`` waits for it before the step (exact: invariant 2); ``async`` steps now and applies
the gradient when it arrives, through a graph built on stashed weights, and logs the delay. Guidance
batches travel as GUIDE messages, so the mark flows down with the data and is checked on arrival.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipelocal.config import ConfigError
from pipelocal.data import Batch
from pipelocal.distributed.setup import Groups, Topology
from pipelocal.distributed.transport import (
    Expected,
    Kind,
    Receiver,
    Sender,
    TensorMeta,
    WireError,
    check_header,
    decode_header,
    encode_header,
)
from pipelocal.optim import lr_for_step, set_lr
from pipelocal.runtime import build_local_net
from pipelocal.runtime.stage import Stage
from pipelocal.runtime.step import net_spans
from pipelocal.schedules import LOOPS
from pipelocal.schedules.ema_links import EmaLinks
from pipelocal.schedules.plan import Plan, expectations, grad_expectations, grad_keys, link_metas
from pipelocal.schedules.replay import Entry, LinkReader, ReplayBuffer
from pipelocal.split import stage_ranges


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
    guided: int = 0  # guidance steps
    grad_wait_s: float = 0.0  # waiting for gradients from the next stage (sync) or at epoch end (async)
    delays: list[int] = field(default_factory=list)  # async: steps between a graph's step and its gradient
    kept_bytes_peak: int = 0  # saved tensors of graphs kept past their step (async), between steps
    stash_bytes_peak: int = 0  # stashed weight copies alive at once (async)
    sleep_s: float = 0.0  # straggler injection (pipeline.slowdown)
    busy_s: float = 0.0  # compute of the steps, before any injected sleep
    reuse: dict = field(default_factory=dict)  # replay: times a batch had been used when consumed -> count
    fresh: int = 0  # replay: steps on batches never trained on before
    dropped: int = 0  # replay: batches pushed out of the buffer (this epoch)
    dropped_unused: int = 0  # ... never trained on
    buffer_bytes_peak: int = 0

    @property
    def compute_s(self) -> float:
        return self.wall_s - self.recv_wait_s - self.send_wait_s - self.grad_wait_s


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
        # Cross-stage backward (set by build_stage_loop when some gradient crosses a stage boundary).
        self.grad_receiver: Receiver | None = None  # from the next stage
        self.grad_sender: Sender | None = None  # to the previous stage
        self.grad_metas: tuple[TensorMeta, ...] = ()  # of one GRAD tensor to the previous stage
        self.asynchronous = cfg.guidance.mode == "async"
        self._pending: deque = deque()  # async: (step, LocalStep) waiting for their gradient
        self._upstream: deque = deque()  # (step, LocalStep, valid rows, keys, ready): sent in step order
        self.ema: EmaLinks | None = None
        # Replay streams (pipeline.buffer: replay): training traffic on the link groups, a reading thread.
        self.replay: ReplayBuffer | None = None
        self.reader: LinkReader | None = None
        self.link_sender: Sender | None = None
        self._sent = 0  # training messages sent downstream on the replay link
        self._latest = -1  # newest producer message number received
        slow = cfg.pipeline.slowdown
        self.slowdown = slow.factor if slow.stage == stage_index and slow.factor > 1 else 1.0

    # ------------------------------------------------------------------------------------ inputs

    def _inputs(self, loader_iter) -> Batch:
        if loader_iter is not None:
            return next(loader_iter)
        header, tensors, staleness = self.receiver.recv()
        self._staleness = staleness
        raw = tensors[1] if len(tensors) > 1 else None  # context travels after the activation
        return Batch(tensors[0], header.labels.to(tensors[0].device), raw)

    def _send(self, kind: Kind, step: int, batch: Batch, h: torch.Tensor) -> None:
        train = kind in (Kind.DATA, Kind.GUIDE)
        rows = self.plan.batch_size if train else self.plan.eval_batch_size
        tensors = [_pad(h, rows)]
        if train:
            # A copy: a relayed context tensor is a view of a receive buffer that is reused later.
            tensors += [_pad(getattr(batch, name), rows, copy=True) for name in self.context]
        metas = self.sender_metas[kind]
        self.sender.send(kind, step, len(batch), tensors, batch.y, metas)

    # ------------------------------------------------------------------------------------ epochs

    def train_epoch(self, epoch: int) -> StageStats:
        if self.cfg.pipeline.buffer == "replay":
            return self.train_epoch_replay(epoch)
        cfg, stage, stats = self.cfg, self.stage, StageStats(self.stage_index)
        stage.set_mode(True)
        loader_iter = None
        if self.train_loader is not None:
            self.train_loader.set_epoch(epoch)
            loader_iter = iter(self.train_loader)
        steps = len(self.plan.train_rows)
        if stage.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(stage.device)
        loss_sum, local_steps, waits = None, 0, self.waits()
        start = time.perf_counter()
        for i in range(steps):
            if self._fault and self._fault[0] == self.step:
                _inject(self._fault[1], self.stage_index, self.step)
            set_lr(stage.optimizers, lr_for_step(cfg, epoch, i, steps))
            t, guide = self.step, self.plan.guides[self.step]
            if self._pending:
                self._apply_arrived(stats, block=False)
            batch = self._inputs(loader_iter)
            busy, grad_wait = time.perf_counter(), stats.grad_wait_s
            kind = self.plan.train_kind(t)
            on_output = None if self.sender is None else (lambda h, b=batch, k=kind, t=t: self._send(k, t, b, h))
            step = stage.begin(net_spans(stage.method, guide))
            step.forward(batch.x, batch, guide, on_output)
            if step.incoming and not self.asynchronous:
                step.receive(self._recv_grads(t, step.incoming, stats))
            elif step.incoming:
                self._pending.append((t, step))
            result = step.finish()
            self._straggle(stats, busy + stats.grad_wait_s - grad_wait)  # compute only, not the gradient wait
            if self.grad_sender is not None:
                keys = grad_keys(self.plan, stage.method, stage.first, t)
                if keys:
                    self._upstream.append([t, step, len(batch), keys, not (self.asynchronous and step.incoming)])
                    self._send_upstream()
            if self.ema is not None:
                self.ema.sync(t)
            stage.after_step()
            self._memory(stats, step)
            if result.guided:
                stats.guided += 1
            elif result.losses:
                losses = torch.stack(result.losses)
                loss_sum = losses if loss_sum is None else loss_sum + losses
                local_steps += 1
            stats.saved_peak = [max(a, b) for a, b in zip(stats.saved_peak or result.saved_peak, result.saved_peak)]
            if self.receiver is not None:
                stats.staleness.append(self._staleness)
            stats.steps, stats.samples, self.step = i + 1, stats.samples + len(batch), self.step + 1
            if self.on_step is not None:
                hook_start = time.perf_counter()
                losses = torch.stack(result.losses) if result.losses else torch.zeros(0)
                self.on_step(epoch, i + 1, steps, stats, losses, start, waits)
                stats.log_s += time.perf_counter() - hook_start
        if self._pending:
            self._apply_arrived(stats, block=True)  # the epoch's updates are complete before it is evaluated
        if self.grad_sender is not None:
            self.grad_sender.flush()
        self._close_epoch_timing(stats, start, waits)
        stats.loss = (loss_sum / local_steps).tolist() if loss_sum is not None else []
        return stats

    def _straggle(self, stats: StageStats, since: float) -> None:
        """Straggler injection: sleep (factor - 1) x the step's measured compute (``pipeline.slowdown``)."""
        if self.stage.device.type == "cuda":
            torch.cuda.synchronize(self.stage.device)  # the compute to scale includes queued kernels
        busy = time.perf_counter() - since
        stats.busy_s += busy
        if self.slowdown > 1:
            pause = (self.slowdown - 1) * busy
            time.sleep(pause)
            stats.sleep_s += pause

    def train_epoch_replay(self, epoch: int) -> StageStats:
        """``pipeline.buffer: replay``: stage 0 produces its epoch at its own pace; a consumer trains on what
        its buffer offers, as often as it can, until its producer's epoch is over and nothing unused is left."""
        cfg, stage, stats = self.cfg, self.stage, StageStats(self.stage_index)
        stage.set_mode(True)
        steps = len(self.plan.train_rows)
        loader_iter = None
        if self.train_loader is not None:
            self.train_loader.set_epoch(epoch)
            loader_iter = iter(self.train_loader)
        if self.replay is not None:
            self.replay.clear()
            dropped = (self.replay.dropped, self.replay.dropped_unused)
        loss_sum, waits, start = None, self.waits(), time.perf_counter()
        epoch_over, i = False, 0
        while True:
            if loader_iter is not None:
                if i == steps:
                    break
                batch = next(loader_iter)
            else:
                if not epoch_over:
                    epoch_over = self._drain(block=False)
                if epoch_over and not self.replay.has_unused():
                    break  # the producer's epoch is over and every batch it sent was used or dropped
                entry = self.replay.pick()
                if entry is None:
                    if epoch_over:
                        break
                    begin = time.perf_counter()
                    epoch_over = self._drain(block=True)
                    stats.recv_wait_s += time.perf_counter() - begin
                    continue
                batch = entry.batch
                stats.staleness.append(self._latest - entry.step)
                stats.reuse[entry.uses] = stats.reuse.get(entry.uses, 0) + 1
                stats.fresh += entry.uses == 1
            set_lr(stage.optimizers, lr_for_step(cfg, epoch, min(i, steps - 1), steps))
            busy = time.perf_counter()
            on_output = None if self.link_sender is None else self._stream_out(batch)
            step = stage.begin(net_spans(stage.method, None))
            step.forward(batch.x, batch, None, on_output)
            result = step.finish()
            self._straggle(stats, busy)
            losses = torch.stack(result.losses)
            loss_sum = losses if loss_sum is None else loss_sum + losses
            stats.saved_peak = [max(a, b) for a, b in zip(stats.saved_peak or result.saved_peak, result.saved_peak)]
            i += 1
            stats.steps, stats.samples, self.step = i, stats.samples + len(batch), self.step + 1
            if self.on_step is not None:
                hook_start = time.perf_counter()
                self.on_step(epoch, i, steps, stats, losses, start, waits)
                stats.log_s += time.perf_counter() - hook_start
        if self.link_sender is not None:
            self.link_sender.send(Kind.EPOCH, epoch, 0, [], torch.zeros(0, dtype=torch.long), ())
        if self.replay is not None:
            stats.dropped = self.replay.dropped - dropped[0]
            stats.dropped_unused = self.replay.dropped_unused - dropped[1]
            stats.buffer_bytes_peak = self.replay.bytes_peak
        self._close_epoch_timing(stats, start, waits)
        stats.recv_wait_s = max(stats.recv_wait_s, 0.0)
        stats.loss = (loss_sum / max(i, 1)).tolist() if loss_sum is not None else []
        return stats

    def _stream_out(self, batch: Batch):
        def send(h: torch.Tensor) -> None:
            rows = self.plan.batch_size
            tensors = [_pad(h, rows)] + [_pad(getattr(batch, n), rows, copy=True) for n in self.context]
            self.link_sender.send(Kind.DATA, self._sent, len(batch), tensors, batch.y, self.sender_metas[Kind.DATA])
            self._sent += 1

        return send

    def _drain(self, block: bool) -> bool:
        """Move what the reading thread received into the buffer; True once the producer's epoch is over
        (what follows its EPOCH stays queued for the next epoch)."""
        while True:
            item = self.reader.get(block)
            if item is None:
                return False
            block = False
            header, tensors = item
            if header.kind == Kind.EPOCH:
                return True
            if header.kind == Kind.STOP:
                raise WireError(
                    f"stage {self.stage_index}: the replay link from stage {self.stage_index - 1} stopped mid-epoch"
                )
            raw = tensors[1] if len(tensors) > 1 else None
            self._latest = header.step
            self.replay.add(Entry(header.step, Batch(tensors[0], header.labels.to(tensors[0].device), raw)))

    def _recv_grads(self, t: int, keys: list[int], stats: StageStats) -> dict[int, torch.Tensor]:
        begin = time.perf_counter()
        header, tensors, _ = self.grad_receiver.recv()  # checked against the plan: kind GRAD, step t, shapes
        stats.grad_wait_s += time.perf_counter() - begin
        if header.step != t:
            raise WireError(f"stage {self.stage_index} expected the gradient of step {t}, got step {header.step}")
        return dict(zip(keys, tensors, strict=True))

    def _apply_arrived(self, stats: StageStats, block: bool) -> None:
        """Async: apply every gradient that has arrived (all of them when ``block``), oldest first."""
        while self._pending and (block or self.grad_receiver.ready()):
            t, step = self._pending.popleft()
            step.receive(self._recv_grads(t, step.incoming, stats))
            step.finish_late()
            stats.delays.append(self.step - t - 1)  # optimizer steps this stage took in between
            for entry in self._upstream:
                if entry[0] == t:
                    entry[4] = True
            self._send_upstream()

    def _send_upstream(self) -> None:
        """Send, in step order, every GRAD message to the previous stage whose gradients are all there."""
        while self._upstream and self._upstream[0][4]:
            t, step, rows, keys, _ = self._upstream.popleft()
            if sorted(step.upstream) != keys:
                raise RuntimeError(
                    f"stage {self.stage_index} step {t}: gradients for spans {sorted(step.upstream)}, planned {keys}"
                )
            tensors = [_pad(step.upstream[k], self.plan.batch_size) for k in keys]
            self.grad_sender.send(
                Kind.GRAD, t, rows, tensors, torch.zeros(0, dtype=torch.long), self.grad_metas * len(keys)
            )

    def _memory(self, stats: StageStats, step) -> None:
        if self.stage.meter is not None:
            stats.kept_bytes_peak = max(stats.kept_bytes_peak, self.stage.meter.live)
        stash = step.stash_bytes + sum(s.stash_bytes for _, s in self._pending if s is not step)
        stats.stash_bytes_peak = max(stats.stash_bytes_peak, stash)

    def waits(self) -> tuple[float, float]:
        sender = self.link_sender or self.sender
        return (self.receiver.wait_s if self.receiver else 0.0, sender.wait_s if sender else 0.0)

    def _close_epoch_timing(self, stats: StageStats, start: float, waits) -> None:
        if self.stage.device.type == "cuda":
            torch.cuda.synchronize(self.stage.device)  # timing must include queued kernels
        stats.wall_s = time.perf_counter() - start
        recv, send = self.waits()
        stats.recv_wait_s += recv - waits[0]
        stats.send_wait_s = send - waits[1]

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
        if self.grad_sender is not None:
            self.grad_sender.flush()
        if self.ema is not None:
            self.ema.flush()
        if self.link_sender is not None:
            self.link_sender.send(Kind.STOP, 0, 0, [], torch.zeros(0, dtype=torch.long), ())
            self.link_sender.flush()
        if self.reader is not None:
            if self.reader.get(block=True)[0].kind != Kind.STOP:
                raise WireError(f"stage {self.stage_index}: the replay link sent more after its last epoch")
            self.reader.thread.join()


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

    slow = cfg.pipeline.slowdown.stage
    if slow is not None and not 0 <= slow < topo.num_stages:
        raise ConfigError(f"pipeline.slowdown.stage={slow}, but the pipeline has stages 0..{topo.num_stages - 1}")
    replay = cfg.pipeline.buffer == "replay"
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
            [e for e in expectations(plan, receiver_metas) if not replay or e.kind in (Kind.EVAL, Kind.STOP)],
            cfg.pipeline.queue_depth,
            topo.device,
            max(plan.batch_size, plan.eval_batch_size),
        )
    if not topo.is_last_stage:
        sender = Sender(
            groups.forward, s, s + 1, cfg.pipeline.queue_depth, max(plan.batch_size, plan.eval_batch_size), topo.device
        )
    loop = StageLoop(cfg, stage, plan, s, receiver, sender, sender_metas, tuple(context_out), loaders)
    _link_backward(loop, cfg, topo, groups, plan, net, ranges)
    if replay:
        rows = plan.batch_size
        if not topo.is_last_stage:
            loop.link_sender = Sender(groups.links[s % 2], s, s + 1, cfg.pipeline.queue_depth, rows, topo.device)
        if not topo.is_first_stage:
            p = cfg.pipeline
            loop.replay = ReplayBuffer(p.buffer_size, p.sampling, p.max_reuse, cfg.train.seed + s)
            loop.reader = LinkReader(groups.links[(s - 1) % 2], s - 1, s, receiver_metas[Kind.DATA], topo.device, rows)
    return loop, stage


def _link_backward(loop: StageLoop, cfg, topo: Topology, groups: Groups, plan: Plan, net, ranges) -> None:
    """GRAD links to the neighbours where some gradient crosses, and the EMA weight links (MLAAN)."""
    s, stage, method = topo.stage_index, loop.stage, net.method
    shapes = method.info.module_shapes
    rows = plan.batch_size
    if not topo.is_last_stage:
        boundary = ranges[s + 1][0]
        expected = grad_expectations(plan, method, boundary, shapes[boundary - 1])
        if expected:
            depth = cfg.pipeline.queue_depth + 1
            loop.grad_receiver = Receiver(groups.backward, s + 1, s, expected, depth, topo.device, rows)
    if not topo.is_first_stage and grad_expectations(plan, method, stage.first, shapes[stage.first - 1]):
        loop.grad_sender = Sender(groups.backward, s, s - 1, cfg.pipeline.queue_depth + 1, rows, topo.device)
        loop.grad_metas = (TensorMeta(torch.float32, (rows, *shapes[stage.first - 1])),)
    stage_of_module = {i: k for k, (a, b) in enumerate(ranges) for i in range(a, b)}
    ends = method.info.module_ends

    def stage_of_unit(u: int) -> int:
        return stage_of_module[next(i for i, end in enumerate(ends) if u <= end)]

    followers: dict[int, list[int]] = {}
    for i in range(method.info.num_modules):
        for u in method.followed_units(i):
            followers.setdefault(u, []).append(stage_of_module[i])
    if followers:
        loop.ema = EmaLinks(stage, groups.weights, stage_of_unit, followers, cfg.method.ema_sync_every, s)


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
