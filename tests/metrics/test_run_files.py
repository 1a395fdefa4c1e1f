"""The run folder's plain files: summary.csv, log.txt (ConsoleFile), the provenance."""

import csv
import shutil
import subprocess
from pathlib import Path

import torch

from pipelocal.metrics.console import Console
from pipelocal.metrics.run_files import provenance, write_summary_csv
from pipelocal.metrics.stats import EpochRecord, StageStats

ROOT = Path(__file__).resolve().parents[2]


def _record(epoch: int, losses: list[list[float]], correct: list[int] | None, lr: float) -> EpochRecord:
    stages = []
    for s, loss in enumerate(losses):
        g = StageStats(s, steps=4, samples=40, wall_s=2.0 + s, loss=loss)
        g.saved_peak, g.staleness = [1] * len(loss), [0]
        g.correct, g.eval_samples = (correct[s : s + 1], 10) if correct else ([], 0)
        stages.append(g)
    record = EpochRecord.of(epoch, stages)
    record.lr = lr
    return record


def test_summary_csv_has_one_row_per_epoch_with_losses_lr_top1_and_rate(tmp_path):
    history = [_record(0, [[2.5, 2.0], [1.5]], [-1, 4], 0.1), _record(1, [[1.25, 1.0], [0.5]], None, 0.05)]
    write_summary_csv(history, tmp_path / "summary.csv")
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]  # the console's numbering: 1 = the first epoch
    assert [(r["loss_m0"], r["loss_m1"], r["loss_m2"]) for r in rows] == [("2.5", "2", "1.5"), ("1.25", "1", "0.5")]
    assert [r["lr"] for r in rows] == ["0.1", "0.05"]
    assert (rows[0]["test_top1"], rows[0]["top1_m0"], rows[0]["top1_m1"]) == ("0.4", "", "0.4")  # 4 of 10; no head
    assert rows[1]["test_top1"] == ""  # not evaluated that epoch
    assert rows[0]["samples_per_s"] == "13.3333" and rows[0]["wall_s"] == "3"  # last stage's 40 / 3 s; the slowest


def test_log_txt_keeps_lines_from_before_the_folder_and_after(tmp_path):
    console = Console("none")  # nothing on the terminal, every line in log.txt
    console.print("split: before the run folder exists")
    console.file.open(tmp_path / "log.txt")
    console.table("t", ["a", "b"], [[1, 2.5]])
    with console.progress("epoch 1/1", 2) as update:
        update(1, {"loss": 0.5})
    assert (tmp_path / "log.txt").read_text().splitlines()[:4] == [
        "split: before the run folder exists",
        "t",
        "a    b",
        "1  2.5",
    ]
    assert "epoch 1/1 1/2  loss 0.5" in (tmp_path / "log.txt").read_text()


def test_provenance_names_versions_commit_host_and_command():
    p = provenance()
    assert p["torch"] == torch.__version__ and p["cuda"] == torch.version.cuda
    if shutil.which("git") and (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert p["git_commit"].removesuffix("-dirty") == head
    assert p["host"] and p["cpu"] and "pytest" in p["command"]


def test_a_timeline_without_matplotlib_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from pipelocal.run import train
    from tests.conftest import tiny_config

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    cfg = tiny_config("--mode=sequential", "--train.max_steps=2", "--metrics.timeline=[0,1]", tmp_path=tmp_path)
    cfg.metrics.console = "plain"
    train(cfg)
    run = next(tmp_path.iterdir())
    assert (run / "timeline.json").is_file() and not (run / "timeline.png").exists()
    said = [line for line in capsys.readouterr().out.splitlines() if "timeline.png" in line]
    assert said == ["timeline.png not drawn: matplotlib is not installed (pip install 'pipelocal[plots]')"]
    assert said[0] in (run / "log.txt").read_text()
