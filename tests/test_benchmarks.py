"""Smoke tests of the benchmark scripts on tiny configs: every mode / point produces its row."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_SET = [
    "data.name=synthetic",
    "data.synthetic_shape=[1,16,16]",
    "data.synthetic_train=256",
    "model.depth=8",
    "split.balance=uniform",
    "model.norm=group",
]


MODES = ["e2e", "ddp", "gpipe", "1f1b", "pipeline", "pipeline+guidance", "ddg", "pipeline-dp"]


def test_throughput_vs_e2e_gives_a_row_per_mode(tmp_path):
    cmd = [
        sys.executable,
        "benchmarks/throughput_vs_e2e.py",
        "--steps",
        "2",
        "--epochs",
        "1",
        "--batch",
        "16",
        "--test-subset",
        "64",
        "--repeats",
        "1",
        "--out",
        str(tmp_path),
        "--modes",
        *MODES,
        "--set",
        *TINY_SET,
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "throughput_vs_e2e.json").read_text())
    assert [r[0] for r in result["rows"]] == MODES
    assert result["rows"][-1][1] == "2 x 1 (P=1 x R=2)" and result["rows"][-1][-2] != "-"  # its all-reduce wait
    assert all(r[2] > 0 for r in result["rows"]) and (tmp_path / "throughput_vs_e2e.png").exists()


def test_ablate_runs_the_grid_and_resumes(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base: configs/fmnist/greedy_k4.yaml\nnproc: 1\n"
        "set: {data.name: synthetic, data.synthetic_shape: [1, 16, 16], data.synthetic_train: 128, model.depth: 8,"
        " train.epochs: 1}\ngrid:\n  split.num_modules: [2, 3]\n"
    )
    cmd = [sys.executable, "benchmarks/ablate.py", str(grid), "--out", str(tmp_path / "out")]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "ablation.json").read_text())["rows"]
    assert [r[0] for r in rows] == [2, 3]
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "$ " not in second.stdout  # nothing ran again


def test_guidance_ablation_gives_a_row_per_variant(tmp_path):
    cmd = [sys.executable, "benchmarks/guidance_ablation.py", "--steps", "3", "--epochs", "1", "--batch", "16"]
    cmd += ["--repeats", "1", "--every", "1", "--out", str(tmp_path), "--set", *TINY_SET]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "guidance_ablation.json").read_text())["rows"]
    names = [r[0] for r in rows]
    assert names == ["off", "sync every 1", "async every 1"]  # --every picks the periods
    every_step = rows[names.index("sync every 1")]
    assert every_step[3] == 3 and rows[0][3] == 0  # guided steps: all 3, and none with guidance off
    assert rows[names.index("async every 1")][5] != "-"  # async reports the delays it measured


def test_accuracy_runs_per_config_overrides(tmp_path):
    spec = "configs/fmnist/infopro_guided_k4.yaml@guidance.every=2"
    cmd = [sys.executable, "benchmarks/accuracy.py", spec, "--out", str(tmp_path), "--set", *TINY_SET]
    cmd += ["train.epochs=1", "train.max_steps=4", "data.test_subset=64", "data.batch_size=16"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "accuracy.json").read_text())["rows"]
    assert rows[0][0] == "infopro_guided_k4-every=2" and rows[0][6] == "2 / 4"
    again = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "$ " not in again.stdout, again.stderr[-3000:]  # kept, not run again
    assert json.loads((tmp_path / "accuracy.json").read_text())["rows"] == rows  # the same row, wall time too


def test_accuracy_over_seeds_gives_mean_and_spread(tmp_path):
    cmd = [sys.executable, "benchmarks/accuracy.py", "configs/fmnist/greedy_k4.yaml", "--seeds", "2", "--out"]
    cmd += [str(tmp_path), "--set", *TINY_SET, "train.epochs=1", "train.max_steps=3", "data.test_subset=64"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    [row] = json.loads((tmp_path / "accuracy.json").read_text())["rows"]
    runs = [tmp_path / "runs" / f"greedy_k4-seed{i}" for i in (0, 1)]
    finals = [json.loads((r / "summary.json").read_text())["final_top1"] for r in runs]
    assert [json.loads((r / "summary.json").read_text())["config"]["train"]["seed"] for r in runs] == [0, 1]
    assert row[11] == 2 and row[3] == pytest.approx(statistics.fmean(finals), abs=1e-4)
    assert row[12] == pytest.approx(statistics.stdev(finals), abs=1e-4)
    assert row[-1] == " / ".join(f"{v:.4f}" for v in finals) and (tmp_path / "accuracy.png").exists()


def test_pgl_study_tabulates_the_gap_with_its_spread(tmp_path):
    cmd = [sys.executable, "benchmarks/pgl_study.py", "--modules", "4", "--methods", "greedy", "--seeds", "2"]
    cmd += ["--schedules", "off", "every 2", "--out", str(tmp_path), "--set", *TINY_SET, "train.epochs=1"]
    cmd += ["train.max_steps=3", "data.test_subset=64"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "pgl_study.json").read_text())["rows"]
    assert [r[:3] for r in rows] == [["e2e", 1, "-"], ["greedy", 4, "off"], ["greedy", 4, "every 2"]]
    e2e, off, guided = rows
    assert off[7] == pytest.approx(100 * (e2e[4] - off[4]), abs=0.01)
    assert off[8] == pytest.approx(100 * ((e2e[5] ** 2 + off[5] ** 2) / 2) ** 0.5, abs=0.01)  # se of 2-seed means
    assert off[9] is None and guided[9] == pytest.approx(100 * (guided[4] - off[4]), abs=0.01)
    assert guided[12] == 0.5  # 2 steps of 128 per run: the second one guided
    assert len(off[6].split(" / ")) == 2 and (tmp_path / "pgl_study.png").exists()
    # --tabulate runs nothing: the finished cells come back, the one never run is named as such
    cmd[cmd.index("every 2") + 1 : cmd.index("every 2") + 1] = ["every 10"]
    out = subprocess.run([*cmd, "--tabulate"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "pgl_study.json").read_text())["rows"] == rows
    assert "not run (cells without all 2 seeds): greedy K=4 every 10" in (tmp_path / "pgl_study.md").read_text()


def test_time_to_accuracy_gives_curves_and_targets(tmp_path):
    cmd = [sys.executable, "benchmarks/time_to_accuracy.py", "--evals", "2", "--steps-per-eval", "2", "--batch"]
    cmd += ["16", "--layouts", "e2e", "pipeline", "--out", str(tmp_path), "--set", *TINY_SET, "data.test_subset=64"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "time_to_accuracy.json").read_text())
    assert [r[0] for r in result["rows"]] == ["e2e", "pipeline"]
    for row in result["rows"]:
        curve = result["curves"][row[0]]
        assert len(curve) == 2 and curve[0][0] < curve[1][0] and round(curve[1][0], 1) == row[7]  # seconds add up
        assert row[5] == max(acc for _, acc in curve) and row[6] == curve[-1][1]
    assert (tmp_path / "time_to_accuracy.png").exists()


def test_timelines_draws_one_picture_per_schedule(tmp_path):
    cmd = [sys.executable, "benchmarks/timelines.py", "--only", "pipeline", "1f1b", "--steps", "4", "--window", "1"]
    cmd += ["2", "--batch", "16", "--out", str(tmp_path), "--set", *TINY_SET, "data.test_subset=64"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("pipeline", "1f1b"):
        events = json.loads((tmp_path / f"{name}.json").read_text())["traceEvents"]
        assert {"forward", "backward"} <= {e["cat"] for e in events if e["ph"] == "X"}
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert "![1f1b](1f1b.png)" in (tmp_path / "timelines.md").read_text()


def test_step_cost_measures_local_and_guided_steps(tmp_path):
    cmd = [sys.executable, "benchmarks/step_cost.py", "--methods", "greedy", "mlaan", "--modules", "4"]
    cmd += ["--batch", "8", "--rounds", "1", "--threads", "1", "--out", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "step_cost.json").read_text())["rows"]
    assert [r[:2] for r in rows] == [["greedy", 4], ["mlaan", 4]] and all(r[2] > 0 and r[3] > 0 for r in rows)


def test_speed_features_gives_a_row_per_mode_and_variant(tmp_path):
    cmd = [sys.executable, "benchmarks/speed_features.py", "--repeats", "1", "--epochs", "2", "--steps", "3"]
    cmd += ["--batch", "16", "--test-subset", "64", "--rows", "sequential", "pipeline", "--variants", "fp32", "bf16"]
    cmd += ["--out", str(tmp_path), "--set", *TINY_SET]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert all((tmp_path / f"speed_features.{ext}").exists() for ext in ("md", "json", "csv", "png"))
    result = json.loads((tmp_path / "speed_features.json").read_text())
    rows = {(r[0], r[2]): r for r in result["rows"]}
    assert list(rows) == [("sequential", "fp32"), ("sequential", "bf16"), ("pipeline", "fp32"), ("pipeline", "bf16")]
    assert all(isinstance(r[3], float) and r[3] > 0 and r[-1] == "-" for r in rows.values()), result["rows"]
    assert rows["sequential", "bf16"][4] > 0 and rows["pipeline", "bf16"][4] > 0  # the ratio to the row's fp32
    assert rows["pipeline", "fp32"][5] > 0 and rows["pipeline", "bf16"][5] > 0  # pipeline efficiency
    assert all("--train.precision=bf16" in run["command"] for run in result["runs"] if run["variant"] == "bf16")
