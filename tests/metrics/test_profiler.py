"""metrics.profile: the step window, a trace per process from real runs, nothing when off, the window checked."""

import json

import pytest
import torch

from pipelocal.config import ConfigError, MetricsConfig
from pipelocal.job import run_job
from pipelocal.metrics.profiler import StepProfiler
from tests.conftest import tiny_config
from tests.distributed.launch import TINY, torchrun


def _traces(run_dir):
    return sorted((run_dir / "profile").glob("*.pt.trace.json"))


def _steps(trace) -> list[str]:
    events = json.loads(trace.read_text())["traceEvents"]
    return sorted({e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")})


def _work():
    torch.randn(64, 64) @ torch.randn(64, 64)


def test_window_records_its_steps_across_an_epoch_end_and_writes_once(tmp_path):
    profiler = StepProfiler([4, 5], tmp_path, "stage0-replica0", torch.device("cpu"))
    profiler.at(3)
    assert not profiler.recording
    profiler.at(4)
    _work()
    profiler.pause(5)  # the epoch ends inside the window: collection pauses
    assert not profiler.recording and not profiler.done and not list(tmp_path.glob("*"))
    profiler.at(5)  # the next epoch's first step
    assert profiler.recording
    _work()
    profiler.at(6)  # step 5 done: written
    assert profiler.done and profiler.written and not profiler.recording
    profiler.at(4)  # never reopened
    profiler.close()
    assert not profiler.recording
    (trace,) = tmp_path.glob("stage0-replica0.*.pt.trace.json")
    assert _steps(trace) == ["ProfilerStep#4", "ProfilerStep#5"]


def test_a_pipeline_stage_writes_its_trace_at_the_run_end(tmp_path):
    profiler = StepProfiler([0, 0], tmp_path, "stage1-replica0", torch.device("cpu"), defer=True)
    profiler.at(0)
    _work()
    profiler.pause(1)
    assert profiler.done and not profiler.written and not list(tmp_path.glob("*"))
    profiler.close()
    (trace,) = tmp_path.glob("stage1-replica0.*.pt.trace.json")
    assert _steps(trace) == ["ProfilerStep#0"]


def test_sequential_run_writes_one_trace_of_the_window_and_nothing_when_off(tmp_path):
    common = ("--train.max_steps=3", "--data.synthetic_train=256")
    run_job(tiny_config(*common, "--metrics.profile=[1, 2]", "--metrics.run_name=profiled", tmp_path=tmp_path))
    run_job(tiny_config(*common, "--metrics.run_name=plain", tmp_path=tmp_path))
    (trace,) = _traces(tmp_path / "profiled")
    assert trace.name.startswith("stage0-replica0.") and _steps(trace) == ["ProfilerStep#1", "ProfilerStep#2"]
    assert not (tmp_path / "plain" / "profile").exists()


def test_a_window_over_two_epochs_and_one_past_the_run(tmp_path):
    short = "--train.max_steps=2"
    run_job(tiny_config(short, "--train.epochs=2", "--metrics.profile=[1, 2]", tmp_path=tmp_path / "two"))
    run_job(tiny_config(short, "--metrics.profile=[1, 50]", tmp_path=tmp_path / "past"))
    (across,) = _traces(next((tmp_path / "two").iterdir()))
    assert _steps(across) == ["ProfilerStep#1", "ProfilerStep#2"]  # step 1 in epoch 1, step 2 in epoch 2
    (cut,) = _traces(next((tmp_path / "past").iterdir()))  # written when the run ended
    assert _steps(cut) == ["ProfilerStep#1"]


def test_pipeline_writes_a_trace_per_stage(tmp_path):
    """And exits cleanly: receives posted inside the window complete after it, so the traces wait for the run's end."""
    args = [*TINY, "--mode=pipeline", "--train.max_steps=3", "--metrics.profile=[1, 2]"]
    done, _ = torchrun(2, *args, f"--metrics.out_dir={tmp_path}", "--metrics.run_name=p", timeout=90)
    assert done.returncode == 0, done.stderr[-4000:]
    traces = _traces(tmp_path / "p")
    assert [t.name.split(".")[0] for t in traces] == ["stage0-replica0", "stage1-replica0"]
    assert all(_steps(t) == ["ProfilerStep#1", "ProfilerStep#2"] for t in traces)


@pytest.mark.parametrize("window", [[3, 1], [-1, 2], [1], [1, 2, 3]])
def test_bad_windows_are_config_errors_naming_the_key(window):
    with pytest.raises(ConfigError, match=r"metrics\.profile"):
        MetricsConfig(profile=window).validate()


@pytest.mark.parametrize("key", ["profile", "timeline"])
def test_a_bad_window_is_a_config_error(key):
    for window in ("[2,1]", "[-1,3]", "[4]"):
        with pytest.raises(ConfigError, match=rf"metrics\.{key}"):
            tiny_config(f"--metrics.{key}={window}")
