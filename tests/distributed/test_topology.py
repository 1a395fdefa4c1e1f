"""The topology: degrees checked once, neighbours derived from it (pure: no process is started)."""

import pytest
import torch

from pipelocal.config import ConfigError
from pipelocal.distributed.topology import Topology

CPU = torch.device("cpu")


def test_a_pipeline_of_four_knows_its_neighbours():
    middle = Topology.of_world(4, 2, CPU, "gloo", 2)
    assert (middle.num_stages, middle.stage_index, middle.prev_rank, middle.next_rank) == (4, 2, 1, 3)
    first, last = Topology.of_world(4, 0, CPU, "gloo", 0), Topology.of_world(4, 3, CPU, "gloo", 3)
    assert first.is_first_stage and first.prev_rank is None and first.is_coordinator
    assert last.is_last_stage and last.next_rank is None and not last.is_coordinator
    assert first.other_ranks() == [1, 2, 3]


def test_data_replicas_are_laid_out_stage_major():
    """rank = stage * dp + replica: a replica's neighbours are in its own replica pipeline."""
    topo = Topology.of_world(6, 3, CPU, "gloo", 3, dp=2)  # stage 1, replica 1
    assert (topo.pp, topo.dp, topo.stage_index, topo.replica) == (3, 2, 1, 1)
    assert (topo.prev_rank, topo.next_rank, topo.rank_of(0)) == (1, 5, 1)


def test_ddp_is_one_stage_of_replicas():
    topo = Topology.of_world(2, 1, CPU, "gloo", 1, dp=2)
    assert topo.num_stages == 1 and topo.is_first_stage and topo.is_last_stage and topo.replica == 1


def test_one_process():
    topo = Topology.single(CPU)
    assert not topo.distributed and topo.world_size == 1 and topo.prev_rank is None and topo.next_rank is None


@pytest.mark.parametrize("world, rank, dp", [(5, 0, 2), (4, 4, 1)])
def test_bad_degrees_are_errors(world, rank, dp):
    with pytest.raises(ConfigError):
        Topology.of_world(world, rank, CPU, "gloo", 0, dp=dp)


def test_a_stage_outside_the_pipeline_is_an_error():
    with pytest.raises(ValueError, match="outside the pipeline"):
        Topology.of_world(2, 0, CPU, "gloo", 0).rank_of(2)
