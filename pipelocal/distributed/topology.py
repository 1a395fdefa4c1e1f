"""Where a process sits in the job, checked once (in the manner of torchtitan's ``ParallelDims``).

The degrees (pipeline stages P, data replicas R of each stage) multiply to the world size; every rank number,
neighbour rank and peer set is derived here (``layout_rank``). Nothing else computes ``stage ± 1`` as a rank,
multiplies a stage by R or assumes that rank = stage: the rank layout is this file's business alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelocal.config import ConfigError


@dataclass(frozen=True)
class Topology:
    """This process: rank ``rank`` of a ``pp``-stage pipeline job on ``device`` (``backend`` None: one process).

    Ranks are laid out stage-major, ``rank = stage * dp + replica``, the order of a ``(pp, dp)`` device mesh.
    """

    pp: int
    rank: int
    device: torch.device
    backend: str | None = None
    local_rank: int = 0
    dp: int = 1

    def __post_init__(self):
        if self.pp < 1 or self.dp < 1:
            raise ConfigError(f"pipeline stages ({self.pp}) and data replicas ({self.dp}) must be at least 1")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside a world of {self.world_size} = {self.pp} x {self.dp}")

    @classmethod
    def single(cls, device: torch.device) -> Topology:
        """One process holding every module: sequential and e2e modes."""
        return cls(pp=1, rank=0, device=device)

    @classmethod
    def of_world(cls, world_size: int, rank: int, device, backend: str, local_rank: int, dp: int = 1) -> Topology:
        if world_size % dp:
            raise ConfigError(
                f"torchrun started {world_size} processes, which do not divide into pipeline.replicas={dp}: "
                f"start P x R processes (e.g. --nproc_per_node={dp * max(world_size // dp, 1)})"
            )
        return cls(pp=world_size // dp, rank=rank, device=device, backend=backend, local_rank=local_rank, dp=dp)

    @property
    def world_size(self) -> int:
        return self.pp * self.dp

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def num_stages(self) -> int:
        return self.pp

    @property
    def stage_index(self) -> int:
        return self.rank // self.dp

    @property
    def replica(self) -> int:
        return self.rank % self.dp

    @property
    def is_first_stage(self) -> bool:
        return self.stage_index == 0

    @property
    def is_last_stage(self) -> bool:
        return self.stage_index == self.pp - 1

    @property
    def is_coordinator(self) -> bool:
        """Rank 0 gathers metrics, writes the run directory and drives evaluation (docs/design.md#how-a-batch-walks)."""
        return self.rank == 0

    @staticmethod
    def layout_rank(stage: int, replica: int, dp: int) -> int:
        """The rank of ``replica`` of ``stage`` when each stage has ``dp`` replicas: stage-major, the order of a
        ``(pp, dp)`` device mesh. The one place a rank is computed from a stage and a replica."""
        return stage * dp + replica

    def rank_of(self, stage: int) -> int:
        """The rank of ``stage`` in this process's replica pipeline."""
        if not 0 <= stage < self.pp:
            raise ValueError(f"stage {stage} is outside the pipeline's stages 0..{self.pp - 1}")
        return self.layout_rank(stage, self.replica, self.dp)

    def rank_of_replica(self, replica: int) -> int:
        """The rank of this stage's ``replica``."""
        return self.layout_rank(self.stage_index, replica, self.dp)

    def replica_ranks(self, stage: int) -> list[int]:
        """The ranks of every replica of ``stage`` (its ``dp`` group's members)."""
        return [self.layout_rank(stage, r, self.dp) for r in range(self.dp)]

    @property
    def prev_rank(self) -> int | None:
        """The rank of the previous stage (None on the first stage)."""
        return None if self.is_first_stage else self.rank_of(self.stage_index - 1)

    @property
    def next_rank(self) -> int | None:
        """The rank of the next stage (None on the last stage)."""
        return None if self.is_last_stage else self.rank_of(self.stage_index + 1)

    def other_ranks(self) -> list[int]:
        """The live metrics' senders: the first replica of every later stage (one process per stage, so the
        live table has a row per stage), or every other replica of a one-stage job."""
        if self.pp == 1:
            return list(range(1, self.world_size))
        return [self.layout_rank(s, 0, self.dp) for s in range(1, self.pp)]
