"""Build one rank's stage loop for the local modes (sequential, e2e, pipeline): its modules, and every link
the plan says it has, made here and only here.

Every rank derives the same :class:`Plan`, so each knows every message it will receive: the forward
stream's expectations, the GRAD messages that come back (one per step with a gradient crossing the
boundary), and which units' weights it follows (MLAAN). One process (``topo.num_stages == 1``) gets no
links at all: that is sequential mode.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from pipelocal.config import ConfigError
from pipelocal.data import build_loaders
from pipelocal.distributed.data_parallel import Replicas
from pipelocal.distributed.setup import Groups
from pipelocal.distributed.topology import Topology
from pipelocal.distributed.transport import Receiver, Sender
from pipelocal.distributed.wire import (
    HEADER_SIZE,
    Expected,
    Kind,
    TensorMeta,
    check_header,
    decode_header,
    encode_header,
)
from pipelocal.options import ModeTraits
from pipelocal.runtime import build_local_net
from pipelocal.runtime.stage import Stage
from pipelocal.schedules import MODES, Mode
from pipelocal.schedules.ema_links import EmaLinks
from pipelocal.schedules.grad_links import GradLinks, async_delay_bound
from pipelocal.schedules.links import ForwardIn, ForwardOut, Links, ReplayIn, ReplayOut
from pipelocal.schedules.plan import Plan, expectations, grad_expectations, link_metas
from pipelocal.schedules.replay import LinkReader, ReplayBuffer
from pipelocal.schedules.stage_loop import StageLoop
from pipelocal.split import stage_ranges


def build_stage_loop(cfg, topo: Topology, groups: Groups | None, setup: dict, loaders) -> StageLoop:
    """This rank's stage, its links to the neighbours (after the handshake), and its loop."""
    net = build_local_net(cfg, setup["info"], setup["ranges"])
    per_stage = cfg.pipeline.modules_per_stage if topo.num_stages > 1 else None  # says how P > 1 stages share
    ranges = stage_ranges(net.num_modules, topo.num_stages, per_stage)
    replicas = None
    if cfg.pipeline.replicas > 1:
        replicas = Replicas(groups.dp, groups.dp_host, topo.replica, topo.dp, cfg.pipeline.slowdown.allreduce_s)
    stage = Stage(net, ranges[topo.stage_index], cfg, topo.device, replicas)
    shard = (topo.replica, topo.dp) if replicas is not None else (0, 1)
    plan = Plan.build(cfg, setup["train_len"], setup["test_len"], setup["start_step"], shard)
    if replicas is not None and topo.is_first_stage:  # every replica's first stage reads its shard of the data
        loaders = loaders or build_loaders(cfg.data, topo.device, cfg.train.seed)[:2]
        for loader in loaders:
            loader.shard(topo.replica, topo.dp)
    slow = cfg.pipeline.slowdown.stage
    if slow is not None and not 0 <= slow < topo.num_stages:
        raise ConfigError(f"pipeline.slowdown.stage={slow}, but the pipeline has stages 0..{topo.num_stages - 1}")
    links = build_links(cfg, topo, groups, plan, stage, ranges, setup["info"]) if topo.num_stages > 1 else Links()
    return StageLoop(cfg, stage, plan, topo.stage_index, links, loaders)


MODES.register("sequential")(Mode(build_stage_loop, ModeTraits(multi_process=False, end_to_end=False)))
MODES.register("e2e")(Mode(build_stage_loop, ModeTraits(multi_process=False, end_to_end=True, one_module=True)))
MODES.register("pipeline")(Mode(build_stage_loop, ModeTraits(multi_process=True, end_to_end=False)))


def build_links(cfg, topo: Topology, groups: Groups, plan: Plan, stage: Stage, ranges, info) -> Links:
    s, method = topo.stage_index, stage.method
    shapes, num_modules, rows = method.info.module_shapes, method.info.num_modules, plan.batch_size
    depth, device, replay = cfg.pipeline.queue_depth, topo.device, cfg.pipeline.buffer == "replay"

    context_shapes = {"raw": tuple(info.input_shape)}  # the batch fields a method may declare it needs

    def context_into(j: int) -> dict:
        """Batch fields stage j or a later one reads: they must flow into stage j."""
        needed = any(ranges[k][0] < num_modules - 1 for k in range(j, topo.num_stages))
        return {n: context_shapes[n] for n in method.needs} if needed else {}

    in_metas = None if topo.is_first_stage else link_metas(plan, shapes[ranges[s][0] - 1], context_into(s))
    out_context = {} if topo.is_last_stage else context_into(s + 1)
    out_metas = None if topo.is_last_stage else link_metas(plan, stage.output_shape, out_context)
    handshake(topo, groups, out_metas, in_metas)
    links = Links()
    if in_metas is not None:
        # A replay link carries the training traffic; the forward group keeps evaluation and STOP.
        planned = [e for e in expectations(plan, in_metas) if not replay or e.kind in (Kind.EVAL, Kind.STOP)]
        links.forward_in = ForwardIn(
            Receiver(groups.channel("forward", topo.prev_rank, topo.rank), topo.prev_rank, s, planned, depth, device)
        )
        if replay:
            p = cfg.pipeline
            buffer = ReplayBuffer(p.buffer_size, p.sampling, p.max_reuse, cfg.train.seed + s)
            channel = groups.channel("link", topo.prev_rank, topo.rank, s - 1)
            reader = LinkReader(channel, topo.prev_rank, s, in_metas[Kind.DATA], device)
            links.replay_in = ReplayIn(reader, buffer, s)
    if out_metas is not None:
        sender = Sender(groups.channel("forward", topo.rank, topo.next_rank), s, topo.next_rank, depth, device)
        context = tuple(out_context)
        links.forward_out = ForwardOut(sender, out_metas, context, plan.batch_size, plan.eval_batch_size)
        if replay:
            link = Sender(groups.channel("link", topo.rank, topo.next_rank, s), s, topo.next_rank, depth, device)
            links.replay_out = ReplayOut(link, out_metas[Kind.DATA], context, rows)
    links.grads = _grad_links(cfg, topo, groups, plan, stage, ranges)
    links.ema = _ema_links(cfg, topo, groups, stage, ranges)
    return links


def _grad_links(cfg, topo: Topology, groups: Groups, plan: Plan, stage: Stage, ranges) -> GradLinks | None:
    """GRAD links to the neighbours where some gradient crosses (None: none does)."""
    s, method, rows, device = topo.stage_index, stage.method, plan.batch_size, topo.device
    shapes, asynchronous = method.info.module_shapes, cfg.guidance.mode == "async"
    grads = GradLinks(plan, method, stage.first, s, asynchronous)

    def room(receiving_stage: int) -> int:
        """Async: room for every gradient the receiving stage can have in flight, posted ahead and unfinished on
        the sender, so that a gradient lands as soon as it is sent and a GRAD send never waits on a stage that
        is itself waiting to send forward (docs/design.md#what-queue-depth-bounds). Sync: one at a time."""
        if not asynchronous:
            return cfg.pipeline.queue_depth + 1
        return async_delay_bound(topo.num_stages, receiving_stage, cfg.pipeline.queue_depth) + 1

    if not topo.is_last_stage:
        boundary = ranges[s + 1][0]
        expected = grad_expectations(plan, method, boundary, shapes[boundary - 1])
        if expected:
            channel = groups.channel("backward", topo.next_rank, topo.rank)
            grads.receiver = Receiver(channel, topo.next_rank, s, expected, room(s), device)
    if not topo.is_first_stage and grad_expectations(plan, method, stage.first, shapes[stage.first - 1]):
        channel = groups.channel("backward", topo.rank, topo.prev_rank)
        grads.sender = Sender(channel, s, topo.prev_rank, room(s - 1), device)
        grads.metas = (TensorMeta(plan.grad_dtype, (rows, *shapes[stage.first - 1])),)
    return grads if grads.receiver is not None or grads.sender is not None else None


def _ema_links(cfg, topo: Topology, groups: Groups, stage: Stage, ranges) -> EmaLinks | None:
    """MLAAN: weights of followed units flow from the stage that owns them to the stages that follow them."""
    method = stage.method
    stage_of_module = {i: k for k, (a, b) in enumerate(ranges) for i in range(a, b)}
    ends = method.info.module_ends

    def stage_of_unit(u: int) -> int:
        return stage_of_module[next(i for i, end in enumerate(ends) if u <= end)]

    followers: dict[int, list[int]] = {}
    for i in range(method.info.num_modules):
        for u in method.followed_units(i):
            followers.setdefault(u, []).append(stage_of_module[i])
    if not followers:
        return None
    return EmaLinks(stage, groups, stage_of_unit, followers, cfg.method.ema_sync_every, topo)


def handshake(topo: Topology, groups: Groups, out_metas, in_metas) -> None:
    """Stage s tells s+1 what it will send; s+1 checks it against what it expects (fail at start-up).
    A header alone, on the forward channel's header group, ahead of every message on it."""
    works, incoming = [], None
    if in_metas is not None:
        incoming = torch.empty(HEADER_SIZE, dtype=torch.int64)
        works.append(dist.irecv(incoming, topo.prev_rank, group=groups.forward_headers))
    if out_metas is not None:
        outgoing = encode_header(Kind.DATA, -1, 0, out_metas[Kind.DATA])
        works.append(dist.isend(outgoing, topo.next_rank, group=groups.forward_headers))
    for work in works:
        work.wait()
    if incoming is not None:
        s = topo.stage_index
        check_header(decode_header(incoming), Expected(Kind.DATA, -1, 0, in_metas[Kind.DATA]), s - 1, s)
