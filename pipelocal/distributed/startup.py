"""The start-up order that keeps NCCL from deadlocking: which links a pipeline has, and their warm-up.

NCCL makes a communicator at the first operation that needs it (unless the group was made eagerly), and
making one blocks until every member joins; a rank blocked there while its peer waits for it elsewhere is a
deadlock that gloo (which connects every pair at once) never shows. So every link's group is made and then
used once, in one global order every rank derives from the same numbers, before any receive is posted and
before any collective runs (docs/gpus.md#start-up). tests/distributed/test_startup.py pins the order.
"""

from __future__ import annotations

import dataclasses
import json

import torch
import torch.distributed as dist

from pipelocal.distributed.topology import Topology

CHANNELS = ("forward", "backward", "link", "weights")


def link_pairs(pp: int, dp: int, channels: frozenset[str] | set[str]) -> list[tuple[str, int, int]]:
    """Every link direction a ``pp``-stage pipeline replicated ``dp`` times may use, as ``(channel, src rank, dst
    rank)``, in one global order (channel, replica, stage): every rank derives the same list from the same numbers.
    ``weights``: every owner stage -> every earlier follower stage (MLAAN's aux nets follow later units)."""
    pairs = []
    for channel in (c for c in CHANNELS if c in channels):
        for r in range(dp):
            rank = lambda s, r=r: Topology.layout_rank(s, r, dp)  # noqa: E731
            if channel == "weights":
                pairs += [(channel, rank(o), rank(f)) for o in range(1, pp) for f in range(o)]
            elif channel == "backward":
                pairs += [(channel, rank(s + 1), rank(s)) for s in range(pp - 1)]
            else:
                pairs += [(channel, rank(s), rank(s + 1)) for s in range(pp - 1)]
    return pairs


def warm_up(groups, topo, pairs: list[tuple[str, int, int]]):
    """One small message over every pair group of ``pairs`` this rank belongs to, then one all-reduce over its
    stage's ``dp`` group; returns ``groups`` (setup.Groups) with ``warmed`` set.

    Each message is a rendezvous of its two members only, and every rank meets them in the global order of
    ``pairs``, so the first unfinished one always has both members at it: no cycle. With a bound device (NCCL here)
    the pair groups already hold communicators split eagerly from the world's, which p2p reuses; the warm-up makes
    the same guarantee where a group is lazy (its first p2p creates a 2-rank communicator, blocking until the peer
    joins). Blocking ``send``/``recv``: nothing else is in flight yet. Nothing may be posted or run on any group
    before this returns (tests/distributed/test_startup.py)."""
    STARTUP.begin(topo.rank)
    box = torch.zeros(1, device=topo.device)
    for channel, src, dst in pairs:
        if topo.rank in (src, dst):
            STARTUP.record("warm", channel, src, dst)
            group = groups.pair(channel, src, dst)
            if groups.staged:
                box = box.cpu()
            if topo.rank == src:
                dist.send(box, dst, group=group)
            else:
                dist.recv(box, src, group=group)
    if groups.dp is not None:
        STARTUP.record("warm", "dp", topo.rank_of_replica(0), topo.rank_of_replica(topo.dp - 1))
        dist.all_reduce(torch.zeros(1, device=topo.device), group=groups.dp)
    STARTUP.end()
    return dataclasses.replace(groups, warmed=tuple(pairs))


class StartupLog:
    """What happened on this rank's groups around the warm-up, in order: the test hook that pins the start-up
    (``("warm", channel, src, dst)`` while warming, then whatever the transport records: ``("post", ...)`` for a
    posted receive, ``("collective", ...)``). Off unless a test sets ``path`` (tests/distributed/startup_worker.py)."""

    def __init__(self):
        self.events: list[tuple] = []
        self.warming = False
        self.done = False
        self.path: str | None = None

    def begin(self, rank: int) -> None:
        self.rank, self.warming = rank, True

    def record(self, *event) -> None:
        if self.path:
            self.events.append((*event, "during" if self.warming else ("after" if self.done else "before")))

    def end(self) -> None:
        self.warming, self.done = False, True
        self.write()

    def write(self) -> None:
        if self.path:
            with open(f"{self.path}.{self.rank}.json", "w") as f:
                json.dump(self.events, f)


STARTUP = StartupLog()
