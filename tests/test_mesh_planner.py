"""``pipeline.replicas: auto`` (pipelocal/sim/mesh.py): which layouts it considers, that it picks the layout a hand
computation says is fastest, that a later run of the same key takes the recorded choice, and how start-up agrees
on it. The torchrun job that trains a chosen layout is in tests/distributed/test_data_parallel.py."""

import itertools
import json

import pytest
import torch
import torch.distributed as dist

from pipelocal.config import ConfigError
from pipelocal.data import DataInfo
from pipelocal.distributed import setup
from pipelocal.distributed.setup import agree_at_start
from pipelocal.identity import make_run_dir
from pipelocal.runtime.profile import UnitProfile, stage_rows
from pipelocal.sim import mesh
from pipelocal.sim.engine import Machine
from pipelocal.sim.model import simulate
from pipelocal.sim.schedules import Units
from tests.conftest import tiny_config

DATA = DataInfo(10, (3, 16, 16))
BATCH = 128
# ResNet-8: 4 units; K = 4 modules of one unit each, whatever the balance
STAGES = {4: [[0], [1], [2], [3]], 2: [[0, 1], [2, 3]], 1: [[0, 1, 2, 3]]}


def auto(*overrides, tmp_path=None):
    return tiny_config(
        "--mode=pipeline",
        "--pipeline.replicas=auto",
        "--split.num_modules=4",
        f"--data.batch_size={BATCH}",
        *overrides,
        tmp_path=tmp_path,
    )


def test_the_layouts_considered():
    assert mesh.candidates(auto(), 4) == [(4, 1), (2, 2), (1, 4)]
    assert mesh.candidates(auto("--split.num_modules=2"), 4) == [(2, 2), (1, 4)]  # P <= K
    assert mesh.candidates(auto("--pipeline.modules_per_stage=[1,3]"), 4) == [(2, 2), (1, 4)]  # P as named
    assert mesh.candidates(auto("--data.batch_size=2", "--data.eval_batch_size=2"), 4) == [(4, 1), (2, 2)]
    assert mesh.candidates(auto("--pipeline.buffer=replay"), 4) == [(4, 1)]  # a replay pipeline has no replicas
    # what a number R is refused for (each replica would contrast only its shard) is no candidate either
    assert mesh.candidates(auto("--method.name=infopro", "--method.loss=contrast"), 4) == [(4, 1)]
    with pytest.raises(ConfigError, match="no P x R layout of 4 processes"):
        mesh.candidates(auto("--pipeline.buffer=replay", "--split.num_modules=2"), 4)


def test_auto_is_a_pipeline_option():
    assert auto().pipeline.replicas == "auto"
    assert tiny_config("--pipeline.replicas=2", "--mode=pipeline").pipeline.replicas == 2  # a number stays one
    with pytest.raises(ConfigError, match="or auto"):
        tiny_config("--pipeline.replicas=two", "--mode=pipeline")
    with pytest.raises(ConfigError, match="'pipeline.replicas' needs an integer or a string, got 2.5"):
        tiny_config("--pipeline.replicas=2.5", "--mode=pipeline")
    with pytest.raises(ConfigError, match="mode=pipeline"):
        tiny_config("--pipeline.replicas=auto", "--mode=sequential")


def synthetic(costs):
    """A profile maker: ``costs(rows)`` gives each unit's forward + backward seconds (a third of it forward)."""
    calls = []

    def profile(cfg, data, device):
        rows = stage_rows(cfg)
        calls.append(rows)
        unit = costs(rows)
        zero = [0.0] * len(unit)
        return UnitProfile(unit, zero, zero, zero, [t / 3 for t in unit], zero)

    return profile, calls


def hand_rate(costs, p: int, r: int, cores: float | None) -> float:
    """samples/s of P x R by hand: on own devices, R x rows over the slowest stage; on shared cores with every
    process busy, the cores' share of the total compute (the stages here are balanced, so none idles)."""
    rows = BATCH // r
    unit = costs(rows)
    if cores is None:
        return r * rows / max(sum(unit[u] for u in stage) for stage in STAGES[p])
    return cores * r * rows / (r * sum(unit))


LINEAR = lambda rows: [1e-4 * rows] * 4  # noqa: E731 (every layout the same on shared cores)
OVERHEAD = lambda rows: [0.005 + 1e-4 * rows] * 4  # noqa: E731 (a fixed cost per unit: few rows waste it)
ONE_HEAVY = lambda rows: [1e-3 * rows, 1e-4 * rows, 1e-4 * rows, 1e-4 * rows]  # noqa: E731 (no split balances it)


@pytest.mark.parametrize(
    ("costs", "cores", "expected"),
    [(OVERHEAD, None, 1), (ONE_HEAVY, None, 4), (OVERHEAD, 2.0, 1), (LINEAR, 2.0, 1)],
    ids=["per-call-overhead", "one-heavy-unit", "shared-cores", "a-tie-goes-to-fewer-replicas"],
)
def test_the_planner_picks_the_fastest_layout(monkeypatch, tmp_path, costs, cores, expected):
    profile, calls = synthetic(costs)
    monkeypatch.setattr(mesh, "profile_rounds", profile)
    plan = mesh.plan_mesh(auto(tmp_path=tmp_path), DATA, torch.device("cpu"), 4, "gloo", Machine(cores))
    rates = {x.replicas: x.samples_per_s for x in plan.layouts}
    by_hand = {r: hand_rate(costs, 4 // r, r, cores) for r in (1, 2, 4)}
    fastest = max(by_hand.values())
    assert plan.replicas == min(r for r, v in by_hand.items() if v >= 0.95 * fastest) == expected
    for r, rate in rates.items():
        assert rate == pytest.approx(by_hand[r], rel=0.03), (r, rates, by_hand)
    assert sorted(calls) == [32, 64, 128]  # each layout profiled at the rows its stages run
    assert plan.profile is not None and plan.line.startswith(f"pipeline.replicas=auto: P x R = {4 // expected} x")


def test_a_later_run_of_the_same_key_takes_the_recorded_choice(monkeypatch, tmp_path):
    profile, calls = synthetic(ONE_HEAVY)
    monkeypatch.setattr(mesh, "profile_rounds", profile)
    cfg = auto(tmp_path=tmp_path)
    first = mesh.plan_mesh(cfg, DATA, torch.device("cpu"), 4, "gloo", Machine(None))
    (tmp_path / "run-a").mkdir()
    first.record(tmp_path / "run-a")
    assert json.loads((tmp_path / "run-a" / "mesh.json").read_text())["replicas"] == first.replicas == 4
    profiled = len(calls)
    again = mesh.plan_mesh(cfg, DATA, torch.device("cpu"), 4, "gloo", Machine(None))
    assert (again.replicas, len(calls), again.profile) == (4, profiled, None)
    assert again.layouts == first.layouts  # recorded again as the first run simulated them, not emptied
    assert "as chosen for run-a" in again.line
    # a resume that trains longer with another timeout and log interval: the same choice, no profiling
    resumed = auto("--train.resume=auto", "--train.epochs=3", "--pipeline.timeout_s=900", tmp_path=tmp_path)
    assert mesh.plan_mesh(resumed, DATA, torch.device("cpu"), 4, "gloo", Machine(None)).profile is None
    assert len(calls) == profiled
    other = mesh.plan_mesh(cfg, DATA, torch.device("cpu"), 2, "gloo", Machine(None))  # another world: plan anew
    assert len(calls) > profiled and other.layouts


def test_start_up_agrees_on_rank_0s_answer(monkeypatch):
    """Two ranks in one process: each gets its own count of calls, as each process of a job has."""
    store = dist.HashStore()
    counts = {}

    def as_rank(rank, decide):
        monkeypatch.setattr(setup, "_decisions", counts.setdefault(rank, itertools.count()))
        return agree_at_start(store, rank, decide)

    assert as_rank(0, lambda: 2) == 2
    assert as_rank(1, lambda: pytest.fail("only rank 0 decides")) == 2

    def broken():
        raise ValueError("no data")

    with pytest.raises(ValueError):
        as_rank(0, broken)  # a second decision (a second run in the same processes) has a key of its own
    with pytest.raises(RuntimeError, match="rank 0 failed deciding at start-up .ValueError: no data"):
        as_rank(1, broken)


def test_a_failed_auto_start_leaves_its_run_name_free(tmp_path):
    """A start that failed after the choice was recorded leaves mesh.json beside config.yaml: the name is reused."""
    run = tmp_path / "named"
    run.mkdir()
    for name in ("mesh.json", "config.yaml", "data.json"):
        (run / name).write_text("{}")
    cfg = auto("--metrics.run_name=named", tmp_path=tmp_path)
    assert make_run_dir(cfg, lambda line: None) == run and not any(run.iterdir())


def test_a_deep_queue_is_simulated_into_its_steady_state():
    """A light first stage runs ahead of a heavy second one until its queue is full; on one shared core the
    steady state is then the core's share of both stages' work, 1 / (c + 3c) steps per second. Too few
    steps for the queue would read the run-ahead (both share the core, 1 / 6c) or the drain (1 / 3c)."""
    c = 0.01
    cfg = auto("--pipeline.queue_depth=16", "--split.num_modules=2")
    job = mesh.job_of(cfg, [(0, 1), (1, 2)], 2, 1)
    zero = [0.0, 0.0]
    u = Units(BATCH, [c / 3, c], [2 * c / 3, 2 * c], zero, zero, zero, zero, zero, zero)
    rate = simulate(job, lambda rows: u, Machine(cores=1.0)).trace.steady_samples_per_s
    assert rate == pytest.approx(BATCH / (4 * c), rel=0.03)
