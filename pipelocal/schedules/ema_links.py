"""MLAAN in a pipeline: weights of followed units flow from their owner stage to the follower stages."""

from __future__ import annotations

import torch
import torch.distributed as dist

from pipelocal.distributed.staging import to_host
from pipelocal.distributed.waits import WaitClock
from pipelocal.runtime.stage import Stage, flat_state, load_flat_state


class EmaLinks:
    """MLAAN in a pipeline: weights of backbone units flow from the stage that owns them to the stages whose
    aux nets keep an EMA of them, every ``method.ema_sync_every`` steps, after the owner's step
    (docs/pipeline.md#gradients-that-cross-stages).
    With 1 the follower gets the unit as it is after the same step, as in sequential mode; larger is a
    stale EMA (an ablation knob). Sends are non-blocking; a follower waits for what it receives."""

    def __init__(self, stage: Stage, groups, stage_of_unit, followers: dict[int, list[int]], every: int, topo):
        self.stage, self.groups, self.every, self.topo = stage, groups, every, topo
        me = topo.stage_index
        self.inbound = sorted((stage_of_unit(u), u) for u in stage.copies)  # (owner stage, unit) I follow remotely
        self.outbound = sorted(  # (follower stage, unit) for the units I own
            (f, u) for u, fs in followers.items() for f in set(fs) if f != me and stage_of_unit(u) == me
        )
        self._works: list = []
        self.clock = WaitClock(topo.device, on_stream=topo.device.type == "cuda" and not groups.staged)

    @property
    def wait_s(self) -> float:
        return self.clock.seconds

    def _group(self, owner: int, follower: int):
        """The pair group of the weights link owner stage -> follower stage (setup.link_pairs)."""
        return self.groups.pair("weights", self.topo.rank_of(owner), self.topo.rank_of(follower))

    def sync(self, step: int) -> None:
        if (step + 1) % self.every:
            return
        self.flush()
        me, device = self.topo.stage_index, self.topo.device
        for follower, unit in self.outbound:
            flat = flat_state(self.stage.unit(unit)).clone()
            if self.groups.staged:
                flat = to_host([flat], device)[0]
            self._works.append((dist.isend(flat, self.topo.rank_of(follower), group=self._group(me, follower)), flat))
        for owner, unit in self.inbound:
            like = flat_state(self.stage.copies[unit])
            flat = torch.empty_like(like, device="cpu" if self.groups.staged else like.device)
            with self.clock.measure():
                dist.recv(flat, self.topo.rank_of(owner), group=self._group(owner, me))
            load_flat_state(self.stage.copies[unit], flat.to(like.device, non_blocking=True))

    def flush(self) -> None:
        for work, _ in self._works:
            work.wait()
        self._works = []
