"""metrics.tensorboard: the scalars rank 0 writes (epoch figures, evaluation, learning rate, live rows), and the
clear error when the package is missing."""

import json
import sys

import pytest

from pipelocal.config import ConfigError
from pipelocal.job import run_job
from pipelocal.metrics.stats import EpochRecord, StageStats
from pipelocal.metrics.tensorboard import TensorBoardLog
from pipelocal.optim import lr_for_step
from tests.conftest import tiny_config


@pytest.fixture
def read_scalars():
    """``read(folder) -> {tag: [(step, value), ...]}``, with tensorboard's own reader (skipped without it)."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

    def read(folder):
        events = accumulator.EventAccumulator(str(folder))
        events.Reload()
        return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    return read


def test_a_run_writes_every_stage_figure_the_evaluation_the_lr_and_the_live_rows(tmp_path, read_scalars):
    args = ("--train.epochs=2", "--train.max_steps=2", "--metrics.log_every=1", "--metrics.tensorboard=true")
    cfg = tiny_config(*args, "--metrics.run_name=r", tmp_path=tmp_path)
    run_job(cfg)
    run = tmp_path / "r"
    scalars = read_scalars(run / "tensorboard")
    figures = ["samples_per_s", "utilisation", "wait_recv", "wait_send", "wait_grad", "wait_allreduce"]
    figures += ["loss_head0", "loss_head1", "saved_MiB", "guided_steps"]
    assert {f"stage0/{f}" for f in figures} <= set(scalars)
    assert "stage0/cuda_peak_MiB" not in scalars and "stage0/delay_mean" not in scalars  # CPU; no async guidance
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in scalars["test/top1"]] == [2, 4]  # the plan's global step at each epoch's end
    for (_, value), record in zip(scalars["test/top1"], epochs):
        assert value == pytest.approx(record["test_top1"])
    assert [v for _, v in scalars["test/module0_top1"]] == pytest.approx([e["module_top1"][0] for e in epochs])
    last_lrs = [(2 * (e + 1), pytest.approx(lr_for_step(cfg, e, 1, 2))) for e in range(2)]  # each epoch's last step
    assert scalars["train/lr"] == last_lrs
    assert [s for s, _ in scalars["live/stage0/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in scalars["live/stage0/samples_per_s"]] == [1, 2, 3, 4]


def test_every_stage_gets_its_tags_and_absent_figures_are_left_out(tmp_path, read_scalars):
    stages = []
    for s in range(2):
        g = StageStats(s, steps=4, samples=40, wall_s=2.0, recv_wait_s=0.5 * s, loss=[1.0 + s], saved_peak=[2**20])
        g.correct, g.eval_samples = [-1 + 8 * s], 10  # stage 0's head gives no class scores
        g.cuda_peak_bytes, g.delays = (3 * 2**20, [1, 2]) if s else (None, [])
        stages.append(g)
    log = TensorBoardLog(tmp_path)
    log.epoch(EpochRecord.of(0, stages), 8, None)
    log.close()
    scalars = read_scalars(tmp_path)
    assert scalars["stage1/wait_recv"] == [(8, 0.25)] and scalars["stage1/loss_head0"] == [(8, 2.0)]
    assert scalars["stage1/cuda_peak_MiB"] == [(8, 3.0)] and scalars["stage1/delay_mean"] == [(8, 1.5)]
    assert "stage0/cuda_peak_MiB" not in scalars and "stage0/delay_mean" not in scalars
    assert scalars["test/top1"] == [(8, pytest.approx(0.7))] and "test/module0_top1" not in scalars
    assert "train/lr" not in scalars and scalars["train/samples_per_s"] == [(8, 20.0)]


def test_missing_package_is_a_config_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an import without the package meets
    with pytest.raises(ConfigError, match=r"pip install pipelocal\[tensorboard\]"):
        TensorBoardLog(tmp_path)
