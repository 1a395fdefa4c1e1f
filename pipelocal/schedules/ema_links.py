"""MLAAN in a pipeline: weights of followed units flow from their owner stage to the follower stages."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from pipelocal.runtime.stage import Stage, flat_state, load_flat_state


class EmaLinks:
    """MLAAN in a pipeline: weights of backbone units flow from the stage that owns them to the stages whose
    aux nets keep an EMA of them, every ``method.ema_sync_every`` steps, after the owner's step
    (docs/pipeline.md#gradients-that-cross-stages).
    With 1 the follower gets the unit as it is after the same step, as in sequential mode; larger is a
    stale EMA (an ablation knob). Sends are non-blocking; a follower waits for what it receives."""

    def __init__(self, stage: Stage, group, stage_of_unit, followers: dict[int, list[int]], every: int, topo):
        self.stage, self.group, self.every, self.topo = stage, group, every, topo
        me = topo.stage_index
        self.inbound = sorted((stage_of_unit(u), u) for u in stage.copies)  # (owner stage, unit) I follow remotely
        self.outbound = sorted(  # (follower stage, unit) for the units I own
            (f, u) for u, fs in followers.items() for f in set(fs) if f != me and stage_of_unit(u) == me
        )
        self._works: list = []
        self.wait_s = 0.0

    def sync(self, step: int) -> None:
        if (step + 1) % self.every:
            return
        self.flush()
        for follower, unit in self.outbound:
            flat = flat_state(self.stage.unit(unit)).clone()
            self._works.append((dist.isend(flat, self.topo.rank_of(follower), group=self.group), flat))
        for owner, unit in self.inbound:
            begin = time.perf_counter()
            flat = torch.empty_like(flat_state(self.stage.copies[unit]))
            dist.recv(flat, self.topo.rank_of(owner), group=self.group)
            load_flat_state(self.stage.copies[unit], flat)
            self.wait_s += time.perf_counter() - begin

    def flush(self) -> None:
        for work, _ in self._works:
            work.wait()
        self._works = []
