"""Distributed set-up and teardown: backend and device choice, timeouts, the channels' process groups, and the
warm-up that makes an NCCL start-up cycle-free (docs/gpus.md#start-up).

Placement (:func:`place`): NCCL on ``cuda:local_rank`` when every process of a node has a GPU of its own; else,
with CUDA, the stages share GPUs (``cuda:local_rank % device_count``) and their messages are *host-staged*:
gloo carries them through pinned host buffers (transport.py); without CUDA, or with ``train.device=cpu``,
CPU and gloo. ``distributed.backend`` forces a choice; NCCL with more processes than GPUs is refused.

The groups are created in the same order on every rank (docs/design.md#process-groups):

- ``pairs``: one 2-rank group of the backend per link *direction* the pipeline may use, ``(channel, src, dst)``
  with channel ``forward`` (activations s -> s+1), ``backward`` (gradients s+1 -> s: guidance, cascades),
  ``link`` (replay streams s -> s+1) and ``weights`` (MLAAN's EMA, owner -> follower). One direction per group,
  so on NCCL each has its own communicator and stream: a pre-posted receive never queues in front of a send;
- ``forward``: the backend's world group, for gpipe/1f1b (torch.distributed.pipelining builds its own p2p);
- ``forward_headers``, ``backward_headers``, ``link_headers``: gloo twins of the channels: a message's header
  goes on the twin, its tensors on the pair group (transport.py), so headers are host buffers on NCCL too and
  reading one is never a device sync (the replay reader thread and the main thread never share a twin);
- ``control``: gloo, collectives for start-up, epoch-end metrics and evaluation results;
- ``stats``: gloo, point-to-point live metrics to rank 0 (apart from ``control``: gloo collectives number
  their tags from 0 too, and p2p tags must not collide with them);
- ``preempt``: gloo, a background thread's flag exchange (preemption.py), apart from the main thread's;
- ``dp``, ``dp_host`` (R > 1 replicas): this stage's replicas, the ``dp`` dimension of a ``(pp, dp)`` device
  mesh (the backend's group: gradient all-reduces, synchronised BatchNorm) and its gloo twin.

Before anything else communicates, startup.py's ``warm_up`` runs one message over every pair group and one
all-reduce over every ``dp`` group, in one global order that every rank derives from the same numbers. After it,
every NCCL communicator the job uses exists, so no later operation can block creating one (docs/gpus.md#start-up).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from pipelocal.config import ConfigError
from pipelocal.distributed.startup import link_pairs, warm_up
from pipelocal.distributed.topology import Topology
from pipelocal.distributed.transport import Channel


@dataclass(frozen=True)
class Placement:
    """Where this process computes and what carries its messages. ``staged``: CUDA compute, gloo messages
    through host buffers (stages sharing GPUs)."""

    backend: str
    device: torch.device
    staged: bool = False


def place(backend: str, device: str, local_rank: int, local_world: int, gpus: int) -> Placement:
    """The backend and device of one process: ``backend`` (auto | nccl | gloo) and ``device`` (auto | cpu | cuda)
    as configured, on a node running ``local_world`` processes with ``gpus`` visible GPUs."""
    if device == "cpu" or (device == "auto" and gpus == 0):
        if backend == "nccl":
            why = "train.device=cpu" if device == "cpu" else "this machine has no CUDA device"
            raise ConfigError(f"distributed.backend=nccl needs GPUs, but {why}: use distributed.backend=auto or gloo")
        return Placement("gloo", torch.device("cpu"))
    if gpus == 0:
        raise ConfigError("train.device=cuda but CUDA is not available; use train.device=cpu or auto")
    cuda = torch.device("cuda", local_rank % gpus)
    own_gpu = local_world <= gpus
    if backend == "nccl" and not own_gpu:
        raise ConfigError(
            f"distributed.backend=nccl needs one GPU per process, but torchrun started {local_world} processes on a "
            f"node with {gpus} GPU(s) (NCCL refuses two ranks on one GPU): use distributed.backend=auto, which lets "
            f"stages share GPUs through host memory, or --nproc_per_node={gpus}"
        )
    if backend == "nccl" or (backend == "auto" and own_gpu):
        return Placement("nccl", cuda)
    return Placement("gloo", cuda, staged=True)


@dataclass(frozen=True)
class Groups:
    forward: dist.ProcessGroup
    pairs: dict[tuple[str, int, int], dist.ProcessGroup]
    forward_headers: dist.ProcessGroup
    backward_headers: dist.ProcessGroup
    link_headers: tuple[dist.ProcessGroup, dist.ProcessGroup]
    control: dist.ProcessGroup
    stats: dist.ProcessGroup
    preempt: dist.ProcessGroup
    staged: bool = False
    dp: dist.ProcessGroup | None = None
    dp_host: dist.ProcessGroup | None = None
    mesh: DeviceMesh | None = None
    warmed: tuple[tuple[str, int, int], ...] = field(default=())  # the warm-up's global order (tests read it)

    def pair(self, channel: str, src: int, dst: int) -> dist.ProcessGroup:
        """The 2-rank group of the link ``src -> dst`` of ``channel``."""
        try:
            return self.pairs[(channel, src, dst)]
        except KeyError:
            raise RuntimeError(
                f"no {channel} link {src} -> {dst} was set up at start-up (startup.link_pairs)"
            ) from None

    def channel(self, channel: str, src: int, dst: int, stage_index: int = 0) -> Channel:
        """The link ``src -> dst`` of ``channel`` with its header twin (``link``: the twin of ``stage_index``,
        the sending stage, so that a stage's receiving thread and sending main thread never share one)."""
        twin = {
            "forward": self.forward_headers,
            "backward": self.backward_headers,
            "link": self.link_headers[stage_index % 2],
        }[channel]
        return Channel(self.pair(channel, src, dst), twin, staged=self.staged)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(
    timeout_s: float,
    data_parallel: bool = False,
    replicas: int | Callable[[int, torch.device, str], int] = 1,
    backend: str = "auto",
    device: str = "auto",
    channels: frozenset[str] = frozenset(),
) -> tuple[Topology, Groups]:
    """Join the job torchrun started; fail at start-up (not at the first send) when the setup is wrong.
    ``data_parallel``: every process is a replica of the whole net (ddp), not a pipeline stage; ``replicas``:
    R copies of a P-stage pipeline, P = world size / R, on a ``(pp, dp)`` device mesh (a function of the world
    size, device and backend: rank 0 calls it, every rank gets its answer, ``agree_at_start``); ``channels``: the kinds
    of stage-to-stage link to set up and warm (startup.CHANNELS; none for the baselines)."""
    if not launched_by_torchrun():
        raise ConfigError(
            "mode=pipeline runs one process per stage: start it with torchrun, e.g. "
            "torchrun --nproc_per_node=4 -m pipelocal.run --mode=pipeline (on one machine, add --standalone)"
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    gpus = torch.cuda.device_count() if device != "cpu" else 0
    where = place(backend, device, local_rank, local_world, gpus)
    timeout = timedelta(seconds=timeout_s)
    store = job_store(rank, world, timeout)
    if where.device.type == "cuda":
        torch.cuda.set_device(where.device)
    if callable(replicas):
        wait = max(timeout, DECIDE_TIMEOUT)
        replicas = agree_at_start(store, rank, lambda: replicas(world, where.device, where.backend), wait)
    # NCCL: device_id makes the communicator eager (a bad setup fails here), and every group made after it is
    # split from it at once (distributed_c10d._new_process_group_helper), so new_group is collective on NCCL.
    device_id = where.device if where.backend == "nccl" else None
    dist.init_process_group(
        where.backend, timeout=timeout, device_id=device_id, store=store, rank=rank, world_size=world
    )
    dp = world if data_parallel else replicas
    topo = Topology.of_world(world, rank, where.device, where.backend, local_rank, dp=dp)
    pairs = link_pairs(topo.pp, topo.dp, channels) if not data_parallel else []
    host = lambda: host_group(None, timeout)  # noqa: E731
    groups = Groups(
        forward=dist.new_group(backend=where.backend, timeout=timeout),
        pairs={p: dist.new_group(list(p[1:]), backend=where.backend, timeout=timeout) for p in pairs},
        forward_headers=host(),
        backward_headers=host(),
        link_headers=(host(), host()),
        control=host(),
        stats=host(),
        preempt=host(),
        staged=where.staged,
    )
    if replicas > 1:
        groups = replicated(groups, topo, timeout)
    return topo, warm_up(groups, topo, pairs)


def replicated(groups: Groups, topo: Topology, timeout: timedelta) -> Groups:
    """Add the ``(pp, dp)`` device mesh and this stage's ``dp`` groups. The mesh's rank order is the topology's
    (``rank = stage * R + replica``); every rank creates every stage's gloo twin (``new_group`` is collective)."""
    mesh = init_device_mesh(topo.device.type, (topo.pp, topo.dp), mesh_dim_names=("pp", "dp"))
    dp = mesh.get_group("dp")
    if dist.get_process_group_ranks(dp) != topo.replica_ranks(topo.stage_index):
        raise RuntimeError(f"device mesh dp group {dist.get_process_group_ranks(dp)} is not this stage's replicas")
    twins = [host_group(topo.replica_ranks(s), timeout) for s in range(topo.pp)]
    return dataclasses.replace(groups, dp=dp, dp_host=twins[topo.stage_index], mesh=mesh)


def host_group(ranks: list[int] | None, timeout: timedelta) -> dist.ProcessGroup:
    """A gloo group of ``ranks`` (None: every rank), made as on a CPU job even when NCCL's device is bound.

    With a bound device, torch makes every non-member of a new group join an ``ncclCommSplit`` of the world's
    communicator (``_new_process_group_helper``, lines 2704-2729 in torch 2.14.1), whatever the new group's
    backend; the members of a gloo group never call it, so a gloo group of some ranks would hang the others
    (pytorch/pytorch#145376). Unbinding the default group for the call keeps gloo groups off NCCL."""
    default = dist.distributed_c10d._get_default_group()
    bound = default.bound_device_id
    default.bound_device_id = None
    try:
        return dist.new_group(ranks, backend="gloo", timeout=timeout)
    finally:
        default.bound_device_id = bound


_decisions = itertools.count()  # one key per call: every rank makes the same calls (runs in one job, tests)


DECIDE_TIMEOUT = timedelta(minutes=30)  # the other ranks' wait for rank 0's choice (profiling every layout)


def agree_at_start(store: dist.Store, rank: int, decide: Callable[[], int], timeout: timedelta = DECIDE_TIMEOUT) -> int:
    """Rank 0's ``decide()``, for every rank, before any process group exists (through torchrun's store). The
    others wait up to ``timeout`` (not the store's own, which a long profile could outlast); if it raises, they
    raise too, naming it, at once."""
    key = f"start/decided/{next(_decisions)}"
    if rank == 0:
        try:
            value = decide()
        except BaseException as err:
            store.set(key, f"error: rank 0 failed deciding at start-up ({type(err).__name__}: {err})")
            raise
        store.set(key, str(value))
        return value
    store.wait([key], timeout)
    answer = store.get(key).decode()
    if answer.startswith("error: "):
        raise RuntimeError(answer.removeprefix("error: "))
    return int(answer)


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
