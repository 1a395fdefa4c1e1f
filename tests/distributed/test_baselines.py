"""Invariant 4: the E2E baselines are E2E. ddp, gpipe and 1f1b end with the same parameters as
single-process backprop after N steps (so every step's gradient was the same), on gloo/CPU."""

import json
import time

import pytest
import torch

from pipelocal.checkpoint import load_merged
from tests.distributed.launch import TINY, runs_fixture, torchrun
from tests.distributed.test_pipeline import evaluated_top1, sequential_state

# GroupNorm: BatchNorm's batch statistics differ per replica (DDP) and per microbatch (GPipe) by design.
E2E = ["--method.name=e2e", "--model.norm=group"]

EPOCHS = [*E2E, "--split.num_modules=2", "--train.epochs=2"]
MIXED = ["--train.precision=bf16", "--train.channels_last=true"]
CASES = [("ddp", 2), ("ddp", 4), ("gpipe", 2), ("gpipe", 4), ("1f1b", 2), ("1f1b", 4)]


def _overrides(mode: str, nproc: int) -> list[str]:
    return [*E2E, f"--split.num_modules={1 if mode == 'ddp' else nproc}"]


def _cases(nproc: int) -> dict[str, list[str]]:
    runs = {f"{m}-P{p}": [*TINY, f"--mode={m}", *_overrides(m, p)] for m, p in CASES if p == nproc}
    if nproc == 2:  # two epochs, evaluation after each, a partial last test batch (100 = 3 x 32 + 4)
        runs |= {f"{m}-epochs": [*TINY, f"--mode={m}", *EPOCHS] for m in ("ddp", "1f1b")}
        runs |= {f"{m}-bf16": [*TINY, f"--mode={m}", *_overrides(m, 2), *MIXED] for m in ("ddp", "gpipe", "1f1b")}
    return runs


runs_p2, runs_p4 = runs_fixture(2, _cases(2)), runs_fixture(4, _cases(4))


@pytest.mark.parametrize("mode, nproc", CASES, ids=[f"{m}-P{p}" for m, p in CASES])
def test_baseline_equals_single_process_backprop(request, mode, nproc):
    run = request.getfixturevalue(f"runs_p{nproc}") / f"{mode}-P{nproc}"
    trained = load_merged(run)
    reference = sequential_state(_overrides(mode, nproc))  # method e2e in one process: plain backprop
    assert trained.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.allclose(trained[name], value, atol=1e-5, rtol=1e-4), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mode"] == mode and summary["final_top1"] is not None


def test_baselines_reject_local_methods(tmp_path):
    out, _ = torchrun(2, *TINY, "--mode=gpipe", "--method.name=dgl", f"--metrics.out_dir={tmp_path}")
    assert out.returncode != 0 and "set method.name=e2e" in out.stderr  # torchrun exits 1 for any failure


@pytest.mark.parametrize("mode", ["ddp", "1f1b"])
def test_baselines_train_and_evaluate_over_several_epochs(runs_p2, mode):
    """Two epochs, evaluation after each, a partial last test batch (100 = 3 x 32 + 4)."""
    run = runs_p2 / f"{mode}-epochs"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    # the last epoch's figure is the saved weights' top-1 over the whole test set, evaluated here in one process
    one = _overrides(mode, 2) + ["--train.epochs=2"]  # ddp saves the one-module net it trains
    assert epochs[-1]["test_top1"] == pytest.approx(evaluated_top1(run, one)[-1])


@pytest.mark.parametrize("mode", ["ddp", "gpipe", "1f1b"])
def test_baselines_in_bf16_and_channels_last_track_single_process_backprop(runs_p2, mode):
    """The speed switches reach every baseline: bf16 + channels_last runs and ends nearer one process's bf16
    backprop than fp32 backprop is (not equal: slices and microbatches round differently in bf16)."""
    trained = load_merged(runs_p2 / f"{mode}-bf16")
    bf16 = sequential_state([*_overrides(mode, 2), *MIXED])
    fp32 = sequential_state(_overrides(mode, 2))

    def gap(a: dict, b: dict) -> float:
        flat = [torch.cat([d[k].float().flatten() for k in sorted(b)]) for d in (a, b)]
        return ((flat[0] - flat[1]).norm() / flat[1].norm()).item()

    assert gap(trained, bf16) < min(gap(fp32, bf16), 5e-3), (gap(trained, bf16), gap(fp32, bf16))


@pytest.mark.parametrize("mode", ["ddp", "gpipe", "1f1b"])
def test_baselines_measure_their_waits(runs_p4, mode):
    """Waits are measured, not assumed away: DDP's backward waits for the all-reduce that overlap did not hide,
    and a GPipe/1F1B stage waits on the wire in its fill and drain (4 processes on this host's cores). A strategy
    whose waits() read 0 (as the baselines' did) would report every stage 100 % busy."""
    stages = json.loads((runs_p4 / f"{mode}-P4" / "summary.json").read_text())["stages"]
    key = "dp_wait_frac_median" if mode == "ddp" else "recv_wait_frac_median"
    assert all(s[key] > 0 for s in stages), [s[key] for s in stages]
    assert all(s["utilisation_median"] < 1 for s in stages)


@pytest.mark.parametrize("device, counted", [("cpu", True), ("cuda", False)])
def test_the_step_agreement_is_a_wait_on_a_cpu(monkeypatch, device, counted):
    """A GPipe/1F1B last stage ends its step before the first stage's last backward and waits for it at the
    step's agreement. That was read as compute (the last stage looked 20 % busier than its forwards and
    backwards on this host's 1F1B runs). On a GPU the host's wait overlaps queued work: not counted there."""
    from types import SimpleNamespace

    from pipelocal.schedules import e2e_parallel

    def late_peer(box, op, group):
        time.sleep(0.05)
        box.fill_(1)

    monkeypatch.setattr(e2e_parallel.dist, "all_reduce", late_peer)
    lock = e2e_parallel.Lockstep(SimpleNamespace(device=torch.device(device)), None, 0, None, control=None)
    assert lock.decide_halt(lock._agree) is True  # the peers' flag, taken from the all-reduce
    recv, send = lock.waits()
    assert (0.05 <= recv < 1.0) if counted else recv == 0.0
    assert send == 0.0
