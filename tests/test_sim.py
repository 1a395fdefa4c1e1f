"""The schedule simulator's invariants, against closed forms worked out by hand (no process starts)."""

from __future__ import annotations

import json

import pytest

from pipelocal.sim.engine import Machine
from pipelocal.sim.model import simulate
from pipelocal.sim.schedules import LABEL_BYTES, Job, Units


def units(n=4, rows=128, f=1.0, b=2.0, h=0.5, out=1000.0, params=100.0, saved=10.0, threads=1):
    return Units(
        rows=rows,
        fwd=[f] * n,
        bwd=[b] * n,
        head=[h] * n,
        out_bytes=[out] * n,
        param_bytes=[params] * n,
        saved_bytes=[saved] * n,
        head_saved_bytes=[0.0] * n,
        head_param_bytes=[0.0] * n,
        threads=threads,
    )


def per_stage(p: int, n: int = 4) -> tuple[list, list]:
    width = n // p
    return [(i * width, (i + 1) * width) for i in range(p)], [[i] for i in range(p)]


@pytest.mark.parametrize("p", [2, 4])
def test_balanced_local_pipeline_without_communication_meets_its_bound(p):
    ranges, stages = per_stage(p)
    steps, u = 50, units()
    res = simulate(Job("local", ranges, stages, steps=steps), lambda rows: u, Machine())
    stage_s = (4 // p) * (1.0 + 2.0) + 0.5  # the units' forward + backward and one head
    # the output goes downstream as soon as the forward ends: the fill is the earlier stages' forwards, then
    # the last stage takes one stage time per step
    fill = (p - 1) * (4 // p) * 1.0
    assert res.samples_per_s == pytest.approx(steps * 128 / (fill + steps * stage_s))
    bound = 128 / stage_s
    assert bound * 0.95 < res.samples_per_s <= bound
    assert res.bytes_on_wire == pytest.approx((p - 1) * (1000.0 + 128 * LABEL_BYTES))


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
@pytest.mark.parametrize("p,m", [(2, 4), (4, 4), (4, 8), (3, 1)])
def test_pipeline_bubble_is_p_minus_1_over_m_plus_p_minus_1(schedule, p, m):
    ranges, stages = per_stage(p if p != 3 else 3, 4 if p != 3 else 3)
    u = units(n=4 if p != 3 else 3, h=0.0)
    res = simulate(Job(schedule, ranges, stages, steps=1, microbatches=m), lambda rows: u, Machine())
    assert res.bubble == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.parametrize("n,nbytes,bw", [(2, 1e6, 1e9), (4, 8e6, 12.5e9), (16, 3e7, 2e11)])
def test_ddp_ring_all_reduce_takes_2_n_minus_1_over_n_bytes_over_bandwidth(n, nbytes, bw):
    u = units(n=1, f=0.0, b=0.0, h=0.0, params=nbytes)
    machine = Machine(reduce_bandwidth=bw)
    res = simulate(Job("ddp", [(0, 1)], [[0]], replicas=n, steps=1, rows=64 * n), lambda rows: u, machine)
    assert res.trace.makespan_s == pytest.approx(2 * (n - 1) / n * nbytes / bw)


def test_ddp_all_reduce_overlaps_backward():
    # two buckets: the first (the last unit's, small cap) reduces while the first unit computes its backward
    u = units(n=2, f=1.0, b=1.0, h=0.0, params=2.0**20)
    machine = Machine(reduce_bandwidth=2.0**20)  # each 1 MiB bucket takes 1 s on 2 members
    res = simulate(Job("ddp", [(0, 2)], [[0]], replicas=2, steps=1), lambda rows: u, machine)
    # forward 2 s, backward 2 s, the first bucket's 1 s hidden under the second unit's backward, then 1 s
    assert res.trace.makespan_s == pytest.approx(2 + 2 + 1)


def test_ddp_overhead_is_paid_once_per_replica_step_and_not_by_one_process():
    u = units(n=1, f=1.0, b=1.0, h=0.0, params=0.0)
    for replicas, expected in ((2, 3 * (2.0 + 0.25)), (1, 3 * 2.0)):  # one process has no DDP wrapper to pay
        job = Job("ddp", [(0, 1)], [[0]], replicas=replicas, steps=3, ddp_overhead_s=0.25)
        assert simulate(job, lambda rows: u, Machine()).trace.makespan_s == pytest.approx(expected)


def test_oversubscribed_cores_share_time():
    u = units(n=1, f=1.0, b=1.0, h=0.0, params=0.0)
    job = Job("ddp", [(0, 1)], [[0]], replicas=4, steps=3)
    alone = simulate(job, lambda rows: u, Machine(cores=None)).trace.makespan_s
    shared = simulate(job, lambda rows: u, Machine(cores=2)).trace.makespan_s
    assert alone == pytest.approx(3 * 2.0)
    assert shared == pytest.approx(2 * alone)  # 4 processes on 2 cores: each at half speed


def test_co_running_processes_slow_each_other_by_the_measured_factor_and_not_alone():
    u = units(n=1, f=1.0, b=1.0, h=0.0, params=0.0)
    machine = Machine(cores=2, corun=(1.0, 1.25, 1.3, 1.5))
    for replicas, expected in ((1, 3 * 2.0), (2, 3 * 2.0 * 1.25), (4, 3 * 2.0 * 2 * 1.5)):
        job = Job("ddp", [(0, 1)], [[0]], replicas=replicas, steps=3)
        assert simulate(job, lambda rows: u, machine).trace.makespan_s == pytest.approx(expected)
    # a 2-thread process alone was profiled on its 2 threads: no slowdown of its own
    two = units(n=1, f=1.0, b=1.0, h=0.0, params=0.0, threads=2)
    job = Job("ddp", [(0, 1)], [[0]], replicas=1, steps=3)
    assert simulate(job, lambda rows: two, machine).trace.makespan_s == pytest.approx(3 * 2.0)
    # on GPUs (no shared cores) nothing co-runs; between measured counts the factor is linear, past them flat
    assert Machine(cores=None, corun=(1.0, 2.0)).corun_slowdown(2) == 1.0
    assert machine.corun_slowdown(2.5) == pytest.approx(1.275)
    assert machine.corun_slowdown(9) == 1.5


def test_a_stage_slows_only_while_the_other_computes():
    # stage 0: forward 1, head 0, backward 2 per step; stage 1 the same, after its input; co-run factor 2
    u = units(n=2, f=1.0, b=2.0, h=0.0, params=0.0, out=0.0)
    machine = Machine(cores=2, corun=(1.0, 2.0))
    res = simulate(Job("local", [(0, 1), (1, 2)], [[0], [1]], steps=1), lambda rows: u, machine)
    # stage 0's forward runs alone (1 s); then both compute at half speed until stage 0's backward ends
    # (2 s of work: 4 s), stage 1 has done 2 s of its 3: the last 1 s alone
    assert res.trace.makespan_s == pytest.approx(1 + 4 + 1)


def test_sync_guidance_every_step_serialises_the_stages():
    u = units(n=2, f=1.0, b=2.0, h=0.5)
    job = Job("local", [(0, 1), (1, 2)], [[0], [1]], steps=10, guide_every=1)
    res = simulate(job, lambda rows: u, Machine())
    # every step: stage 0 forward, stage 1 forward + head + backward, then stage 0's backward, no overlap
    assert res.trace.makespan_s == pytest.approx(10 * (1 + 1 + 0.5 + 2 + 2))


def test_guidance_every_n_costs_less_than_every_step_and_more_than_none():
    u = units(n=2)
    rate = {}
    for every in (0, 10, 2, 1):
        job = Job("local", [(0, 1), (1, 2)], [[0], [1]], steps=40, guide_every=every)
        rate[every] = simulate(job, lambda rows: u, Machine()).samples_per_s
    assert rate[0] > rate[10] > rate[2] > rate[1]


def test_queue_depth_bounds_how_far_a_fast_stage_runs_ahead():
    fast = units(n=2)
    job = Job("local", [(0, 1), (1, 2)], [[0], [1]], steps=20, queue_depth=2)
    per_unit = lambda rows: Units(**{**fast.__dict__, "fwd": [1.0, 10.0]})  # noqa: E731
    res = simulate(job, per_unit, Machine())
    first, last = res.trace.procs
    starts = [a for name, a, _ in first.spans if name == "forward"]
    consumed = [a for name, a, _ in last.spans if name == "forward"]  # it takes a message, then computes
    # stage 0 may start step t only once its send of step t - depth - 1 was taken
    for t in range(3, 20):
        assert starts[t] >= consumed[t - 3] - 1e-9
    # and, held up, it waits for exactly that: the send of step t - 1 goes once step t - 3 is taken, then
    # stage 0 finishes step t - 1 (head 0.5 + backward 2) before it starts step t
    assert [starts[t] - consumed[t - 3] for t in range(10, 20)] == pytest.approx([2.5] * 10)
    assert res.utilisation[0] < 0.5 < res.utilisation[1]


def test_link_time_is_latency_plus_bytes_over_bandwidth():
    u = units(n=2, f=0.0, b=0.0, h=0.0, out=5e6)
    machine = Machine(latency_s=1e-3, bandwidth=1e9)
    res = simulate(Job("local", [(0, 1), (1, 2)], [[0], [1]], steps=1), lambda rows: u, machine)
    assert res.trace.makespan_s == pytest.approx(1e-3 + (5e6 + 128 * LABEL_BYTES) / 1e9)


def test_memory_gpipe_holds_every_microbatch_1f1b_at_most_p_minus_stage():
    u = units(n=4, saved=10.0, params=0.0, out=0.0)
    ranges, stages = per_stage(4)
    gpipe = simulate(Job("gpipe", ranges, stages, steps=1, microbatches=8), lambda r: u, Machine()).memory
    one_f = simulate(Job("1f1b", ranges, stages, steps=1, microbatches=8), lambda r: u, Machine()).memory
    assert gpipe == [80.0] * 4
    assert one_f == [40.0, 30.0, 20.0, 10.0]


def test_mesh_replicas_reduce_each_stage_and_split_the_batch():
    u = units(n=2, params=1e6)
    job = Job("local", [(0, 1), (1, 2)], [[0], [1]], replicas=2, steps=1, rows=128)
    res = simulate(job, lambda rows: units(n=2, rows=rows, params=1e6), Machine(reduce_bandwidth=1e9))
    assert len(res.utilisation) == 4
    assert res.trace.rows == 128
    # activation messages (2 replicas) + each stage's ring all-reduce: 2 (n-1)/n x bytes per member, 2 members
    assert res.bytes_on_wire == pytest.approx(2 * (1000.0 + 64 * LABEL_BYTES) + 2 * 2 * 1e6)
    del u


def test_gantt_is_the_timeline_of_real_runs(tmp_path):
    from pipelocal.metrics.timeline import write
    from pipelocal.sim.model import gantt_ranks

    u = units(n=2)
    res = simulate(Job("local", [(0, 1), (1, 2)], [[0], [1]], steps=3), lambda rows: u, Machine())
    ranks = gantt_ranks(res.trace)
    events = json.loads(write(ranks, tmp_path).read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    # every simulated compute span is drawn, in microseconds, on its stage's row
    assert sum(e["name"] == "forward" for e in spans) == 6
    assert {e["tid"] for e in spans} == {0, 1000}
    first = min(e["ts"] + e["dur"] for e in spans if e["name"] == "forward")
    assert first == pytest.approx(1.0 * 1e6)


def test_device_model_op_time_is_roofline_with_a_floor():
    from pipelocal.sim.device import Device, Efficiency, Op, op_seconds

    dev = Device("x", peak_flops=1e12, memory_bandwidth=1e11, memory_bytes=1e9, source="test")
    eff = Efficiency(matmul=0.5, memory=0.5, op_floor_s=1e-5, dtype_bytes=2)
    big = Op("matmul", flops=1e9, numel=1e3, saved=0)  # at 2 probe rows; 4 rows double it
    assert op_seconds([big], 4, dev, eff) == pytest.approx(2e9 / 0.5e12)
    wide = Op("memory", flops=0, numel=1e7, saved=0)
    assert op_seconds([wide], 2, dev, eff) == pytest.approx(1e7 * 2 / 0.5e11)
    tiny = Op("memory", flops=0, numel=1, saved=0)
    assert op_seconds([tiny], 2, dev, eff) == pytest.approx(1e-5)
    assert op_seconds([tiny], 2, dev, eff, backward=True) == pytest.approx(2e-5)  # two ops
    assert op_seconds([big], 4, dev, eff, backward=True) == pytest.approx(2 * 2e9 / 0.5e12)


def test_replay_consumer_never_waits_once_fed_and_ema_adds_its_weights_to_the_wire():
    slow_first = units(n=2)
    slow_first.fwd[0] = 20.0  # the producer is 10x slower: a replay consumer trains on what it has
    job = Job("local", [(0, 1), (1, 2)], [[0], [1]], steps=10, replay=True)
    res = simulate(job, lambda rows: slow_first, Machine())
    consumer = res.trace.procs[1]
    waits = [b - a for name, a, b in consumer.spans if name == "recv"]
    assert len(waits) == 1  # only the first batch is waited for
    # it trains at its own pace: its 10 steps are over long before the producer's
    assert consumer.spans[-1][2] < res.trace.procs[0].spans[-1][2] / 2
    plain = simulate(Job("local", [(0, 1), (1, 2)], [[0], [1]], steps=10), lambda rows: units(n=2), Machine())
    ema = simulate(
        Job("local", [(0, 1), (1, 2)], [[0], [1]], steps=10, ema_every=2), lambda rows: units(n=2), Machine()
    )
    assert ema.bytes_on_wire - plain.bytes_on_wire == pytest.approx(100.0 * 5 / 10)  # unit 1's weights, 5 of 10 steps


def test_async_guidance_never_waits_for_the_gradient():
    u = units(n=2)
    sync = simulate(Job("local", [(0, 1), (1, 2)], [[0], [1]], steps=20, guide_every=2), lambda r: u, Machine())
    late = Job("local", [(0, 1), (1, 2)], [[0], [1]], steps=20, guide_every=2, guide_mode="async")
    res = simulate(late, lambda r: u, Machine())
    assert res.samples_per_s > sync.samples_per_s
    assert sum(w.get("grad-wait", 0.0) for w in res.waits) == pytest.approx(0.0)
