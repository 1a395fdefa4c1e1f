"""Distributed set-up and teardown: backend choice, device, timeouts, and the channels' process groups.

One code path: NCCL on ``cuda:local_rank`` when CUDA is available, gloo on CPU otherwise. The groups
are created in the same order on every rank (docs/design.md#process-groups):

- ``forward``: activations downstream (the backend's p2p);
- ``backward``: gradients upstream (guidance, cascades);
- ``weights``: weights upstream, from the stage owning a block to a stage whose aux net follows it (MLAAN's EMA);
- ``links``: two groups for replay streams, link s -> s+1 on ``links[s % 2]``, so a stage's receiving
  thread and its sending main thread never share a group;
- ``forward_headers``, ``backward_headers``, ``link_headers``: gloo twins of the groups that carry messages
  (transport.py): a message's header goes on the twin, its tensors on the backend's group, so headers are
  host buffers on NCCL too and reading one is never a device sync. One twin per group, so the replay
  reader thread and the main thread never share one either (``weights`` sends bare tensors: no twin);
- ``control``: gloo, collectives for start-up, epoch-end metrics and evaluation results;
- ``stats``: gloo, point-to-point live metrics to rank 0 (kept apart from ``control`` because gloo
  collectives number their tags from 0 too, and p2p tags must not collide with them);
- ``preempt``: gloo, a background thread's flag exchange (preemption.py), apart from the main thread's;
- ``dp``, ``dp_host`` (R > 1 replicas of the pipeline): this stage's replicas, the ``dp`` dimension of a
  ``(pp, dp)`` device mesh (the backend's group: gradient all-reduces, synchronised BatchNorm) and its gloo
  twin (host-side agreements: a preemption, which late gradients to apply).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from pipelocal.config import ConfigError
from pipelocal.distributed.topology import Topology
from pipelocal.distributed.transport import Channel


@dataclass(frozen=True)
class Groups:
    forward: dist.ProcessGroup
    backward: dist.ProcessGroup
    weights: dist.ProcessGroup
    links: tuple[dist.ProcessGroup, dist.ProcessGroup]
    forward_headers: dist.ProcessGroup
    backward_headers: dist.ProcessGroup
    link_headers: tuple[dist.ProcessGroup, dist.ProcessGroup]
    control: dist.ProcessGroup
    stats: dist.ProcessGroup
    preempt: dist.ProcessGroup
    dp: dist.ProcessGroup | None = None
    dp_host: dist.ProcessGroup | None = None
    mesh: DeviceMesh | None = None

    @property
    def forward_channel(self) -> Channel:
        return Channel(self.forward, self.forward_headers)

    @property
    def backward_channel(self) -> Channel:
        return Channel(self.backward, self.backward_headers)

    def link_channel(self, stage_index: int) -> Channel:
        """The replay link from stage ``stage_index`` to the next one."""
        return Channel(self.links[stage_index % 2], self.link_headers[stage_index % 2])


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(timeout_s: float, data_parallel: bool = False, replicas: int = 1) -> tuple[Topology, Groups]:
    """Join the job torchrun started; fail at start-up (not at the first send) when the setup is wrong.
    ``data_parallel``: every process is a replica of the whole net (ddp), not a pipeline stage; ``replicas``:
    R copies of a P-stage pipeline, P = world size / R, on a ``(pp, dp)`` device mesh."""
    if not launched_by_torchrun():
        raise ConfigError(
            "mode=pipeline runs one process per stage: start it with torchrun, e.g. "
            "torchrun --nproc_per_node=4 -m pipelocal.run --mode=pipeline"
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    timeout = timedelta(seconds=timeout_s)
    store = job_store(rank, world, timeout)
    if torch.cuda.is_available():
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
        # device_id makes NCCL form its communicator eagerly, so a bad setup fails here.
        dist.init_process_group(backend, timeout=timeout, device_id=device, store=store, rank=rank, world_size=world)
    else:
        device, backend = torch.device("cpu"), "gloo"
        dist.init_process_group(backend, timeout=timeout, store=store, rank=rank, world_size=world)
    groups = Groups(
        forward=dist.new_group(backend=backend, timeout=timeout),
        backward=dist.new_group(backend=backend, timeout=timeout),
        weights=dist.new_group(backend=backend, timeout=timeout),
        links=(dist.new_group(backend=backend, timeout=timeout), dist.new_group(backend=backend, timeout=timeout)),
        forward_headers=dist.new_group(backend="gloo", timeout=timeout),
        backward_headers=dist.new_group(backend="gloo", timeout=timeout),
        link_headers=(dist.new_group(backend="gloo", timeout=timeout), dist.new_group(backend="gloo", timeout=timeout)),
        control=dist.new_group(backend="gloo", timeout=timeout),
        stats=dist.new_group(backend="gloo", timeout=timeout),
        preempt=dist.new_group(backend="gloo", timeout=timeout),
    )
    topo = Topology.of_world(world, rank, device, backend, local_rank, dp=world if data_parallel else replicas)
    if replicas > 1:
        groups = replicated(groups, topo, timeout)
    return topo, groups


def replicated(groups: Groups, topo: Topology, timeout: timedelta) -> Groups:
    """Add the ``(pp, dp)`` device mesh and this stage's ``dp`` groups. The mesh's rank order is the topology's
    (``rank = stage * R + replica``); every rank creates every stage's gloo twin (``new_group`` is collective)."""
    mesh = init_device_mesh(topo.device.type, (topo.pp, topo.dp), mesh_dim_names=("pp", "dp"))
    dp = mesh.get_group("dp")
    if dist.get_process_group_ranks(dp) != [topo.rank_of_replica(r) for r in range(topo.dp)]:
        raise RuntimeError(f"device mesh dp group {dist.get_process_group_ranks(dp)} is not this stage's replicas")
    twins = [
        dist.new_group([s * topo.dp + r for r in range(topo.dp)], backend="gloo", timeout=timeout)
        for s in range(topo.pp)
    ]
    return dataclasses.replace(groups, dp=dp, dp_host=twins[topo.stage_index], mesh=mesh)


def job_store(rank: int, world: int, timeout: timedelta) -> dist.Store:
    """torchrun's key-value store, under a prefix per restart attempt. torchrun keeps one store across the
    restarts of ``--max-restarts``; without the prefix a restarted group can read the addresses the failed
    attempt published and fail to connect (seen here with gloo: "connectFullMesh failed ... Connection refused")."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, world, is_master=rank == 0 and not agent_hosts_it, timeout=timeout)
    return dist.PrefixStore(f"pipelocal/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def destroy_distributed() -> None:
    """Clean teardown after a successful run only; a failing stage exits without collectives
    (docs/pipeline.md#failing-fast)."""
    if dist.is_initialized():
        dist.destroy_process_group()
