"""The typed per-stage records: counting steps, deriving an epoch, summarising a run, reading it back."""

import json

import torch

from pipelocal.metrics.stats import EpochRecord, StageStats, median, read_epochs
from pipelocal.metrics.summary import RunSummary
from pipelocal.runtime.step import StepResult


def _result(losses, guided=False, rows=8, peak=(5, 7)):
    return StepResult(None, [torch.tensor(v) for v in losses], list(peak), guided, rows)


def test_stage_stats_average_local_steps_and_guided_steps_apart():
    stats = StageStats(0)
    stats.add(_result([1.0, 2.0]))
    stats.add(_result([3.0, 4.0], peak=(9, 1)))
    stats.add(_result([10.0], guided=True, rows=3))  # a guidance step: only the final loss is computed
    stats.close()
    assert stats.loss == [2.0, 3.0] and stats.guide_loss == 10.0 and stats.guided == 1
    assert (stats.steps, stats.samples, stats.saved_peak) == (3, 19, [9, 7])


def _epoch(epoch: int, rate: float, correct: list[int] | None) -> EpochRecord:
    stages = []
    for s in range(2):
        g = StageStats(s, steps=4, samples=int(rate * 2), wall_s=2.0, recv_wait_s=0.5 * s, loss=[1.0])
        g.saved_peak, g.staleness = [100 * (s + 1)], [0, 1, 1, 2]
        g.correct, g.eval_samples = (correct[s : s + 1], 10) if correct else ([], 0)
        stages.append(g)
    return EpochRecord.of(epoch, stages)


def test_epoch_record_derives_rates_and_accuracy():
    record = _epoch(0, 50.0, [-1, 7])
    second = record.stages[1]
    assert record.samples_per_s == 50.0 and second.recv_wait_frac == 0.25 and second.utilisation == 0.75
    assert second.staleness.max == 2 and second.staleness_mean == 1.0
    assert record.test_top1 == 0.7 and record.module_top1 == [None, 0.7]
    assert "test_top1" not in _epoch(1, 50.0, None).to_dict()  # no evaluation, no accuracy fields


def test_summary_takes_medians_and_the_first_best(tmp_path):
    history = [_epoch(0, 10.0, [-1, 9]), _epoch(1, 30.0, [-1, 9]), _epoch(2, 40.0, [-1, 5]), _epoch(3, 20.0, None)]
    cfg = {"mode": "pipeline", "method": {"name": "dgl"}}
    summary = RunSummary.of(cfg, history, [[0, 2], [2, 4]], "gloo", "cpu", 1)
    assert summary.samples_per_s_median == median([10.0, 30.0, 40.0, 20.0]) == 25.0  # mean of the middle two
    assert (summary.best_top1, summary.best_epoch, summary.final_top1) == (0.9, 1, None)  # the first epoch
    assert summary.saved_bytes_peak == [100, 200] and summary.steps == 16
    summary.write(tmp_path / "summary.json")
    back = RunSummary.load(tmp_path)
    assert back == summary


def test_jsonl_epochs_read_back_as_types(tmp_path):
    records = [_epoch(0, 10.0, [-1, 9]), _epoch(1, 20.0, None)]
    lines = [json.dumps(r.to_dict()) for r in records] + [json.dumps({"kind": "other"})]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    back = read_epochs(tmp_path)
    assert back == records
