"""The start-up that keeps NCCL from deadlocking (docs/gpus.md#start-up), pinned on gloo.

NCCL creates a communicator at the first operation that needs it, and that creation blocks until the peer
joins; gloo connects every pair at once, so a CPU run cannot deadlock the way a GPU run could. What can be
pinned here is the order that makes the GPU run safe: every link's group is warmed, in one global order that
every rank shares, before any receive is posted and before any collective runs.
"""

import json
from pathlib import Path

import pytest

from pipelocal.distributed.setup import place
from pipelocal.distributed.startup import link_pairs
from tests.distributed.launch import TINY, torchrun

# Three stages, MLAAN (gradients and EMA weights flow upstream) with sync guidance: every kind of link but replay.
ARGS = [
    *TINY,
    "--mode=pipeline",
    "--method.name=mlaan",
    "--split.num_modules=3",
    "--guidance.every=2",
    "--guidance.mode=sync",
    "--train.max_steps=4",
    "--train.resume=auto",
]


@pytest.fixture(scope="module")
def startup(tmp_path_factory):
    out = tmp_path_factory.mktemp("startup")
    worker = str(Path(__file__).with_name("startup_worker.py"))
    args = [str(out / "log"), *ARGS, f"--metrics.out_dir={out}", "--metrics.run_name=run", "--metrics.timeline=[0,2]"]
    done, _ = torchrun(3, *args, target=(worker,))
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((out / f"log.{rank}.json").read_text()) for rank in range(3)]


def test_nothing_communicates_before_the_warm_up(startup):
    """A receive posted or a collective run before the warm-up (the set-up broadcast, a resume, the timeline's clock
    offset) could wait on a rank still creating an NCCL communicator: none may come first."""
    for rank, events in enumerate(startup):
        assert not [e for e in events if e[-1] == "before"], f"rank {rank} communicated before the warm-up: {events}"
        during = [e for e in events if e[-1] == "during"]
        assert during and {e[0] for e in during} <= {"warm", "send", "post"}, during
        assert any(e[0] == "collective" for e in events if e[-1] == "after")  # the record sees collectives at all


def test_every_rank_warms_its_links_in_the_one_global_order(startup):
    order = [tuple(p) for p in link_pairs(3, 1, {"forward", "backward", "weights"})]
    for rank, events in enumerate(startup):
        warmed = [tuple(e[1:4]) for e in events if e[0] == "warm"]
        assert warmed == [p for p in order if rank in p[1:]], f"rank {rank} warmed {warmed}"
        # each warm-up is one message: the source sends, the destination receives
        kinds = [e[0] for e in events if e[-1] == "during" and e[0] != "warm"]
        assert kinds == ["send" if p[1] == rank else "post" for p in warmed], kinds


def test_link_pairs_cover_each_direction_once_in_a_fixed_order():
    pairs = link_pairs(3, 2, {"forward", "backward", "link", "weights"})
    assert len(pairs) == len(set(pairs))
    assert pairs[:2] == [("forward", 0, 2), ("forward", 2, 4)]  # replica 0: ranks 0, 2, 4 (stage-major layout)
    assert ("backward", 3, 1) in pairs and ("weights", 5, 1) in pairs and ("link", 1, 3) in pairs
    assert ("weights", 1, 3) not in pairs  # weights flow upstream only: owner -> earlier follower
    assert link_pairs(3, 2, {"forward"}) == link_pairs(3, 2, {"forward"})  # the same numbers, the same list
    assert link_pairs(1, 4, {"forward", "backward", "weights"}) == []


@pytest.mark.parametrize(
    "backend, device, local_world, gpus, expected",
    [
        ("auto", "auto", 4, 0, ("gloo", "cpu", False)),
        ("auto", "auto", 4, 4, ("nccl", "cuda:2", False)),
        ("auto", "auto", 4, 1, ("gloo", "cuda:0", True)),  # four stages share one GPU: host-staged
        ("auto", "auto", 4, 3, ("gloo", "cuda:2", True)),
        ("gloo", "auto", 4, 4, ("gloo", "cuda:2", True)),
        ("auto", "cpu", 4, 4, ("gloo", "cpu", False)),  # train.device=cpu under torchrun: CPU and gloo
        ("nccl", "cuda", 2, 2, ("nccl", "cuda:0", False)),
    ],
)
def test_placement(backend, device, local_world, gpus, expected):
    local_rank = 2 if local_world == 4 else 0
    where = place(backend, device, local_rank, local_world, gpus)
    assert (where.backend, str(where.device), where.staged) == expected


@pytest.mark.parametrize(
    "backend, device, local_world, gpus, message",
    [
        ("nccl", "auto", 4, 1, "distributed.backend=nccl needs one GPU per process.*4 processes.*1 GPU"),
        ("nccl", "auto", 2, 0, "nccl needs GPUs, but this machine has no CUDA device"),
        ("nccl", "cpu", 2, 2, "nccl needs GPUs, but train.device=cpu"),
        ("auto", "cuda", 2, 0, "train.device=cuda but CUDA is not available"),
    ],
)
def test_placement_errors_name_the_fix(backend, device, local_world, gpus, message):
    from pipelocal.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        place(backend, device, 0, local_world, gpus)
