"""The command line, as a user calls it."""

import subprocess
import sys

import pytest


def _run(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "pipelocal.run", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_the_sections():
    out = _run("--help")
    assert out.returncode == 0
    for section in ("model:", "data:", "split:", "method:", "optim:", "train:", "metrics:"):
        assert section in out.stdout


def test_unknown_method_exits_nonzero_and_lists_the_registered_ones():
    out = _run("--method.name=nope")
    assert out.returncode != 0
    assert "nope" in out.stderr and "dgl, e2e, greedy, infopro" in out.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    out = _run("--mode=sequential", "--data.name=svhn", f"--data.root={tmp_path}", f"--metrics.out_dir={tmp_path}")
    assert out.returncode != 0 and "dataset 'svhn' not found" in out.stderr and str(tmp_path) in out.stderr


def test_one_process_mode_under_several_processes_is_an_error(monkeypatch):
    from pipelocal.config import ConfigError
    from pipelocal.run import check_single_process

    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="torchrun started 4"):
        check_single_process("sequential")


def test_a_shipped_config_runs(tmp_path):
    out = _run(
        "--config",
        "configs/fmnist/greedy_k4.yaml",
        "--data.name=synthetic",
        "--data.synthetic_shape=[1,28,28]",
        "--data.synthetic_train=256",
        "--train.epochs=1",
        f"--metrics.out_dir={tmp_path}",
        "--metrics.console=plain",
    )
    assert out.returncode == 0, out.stderr
    assert "final test top-1" in out.stdout and "best test top-1" in out.stdout


def test_default_job_without_torchrun_says_how_to_start_it():
    out = _run()
    assert out.returncode == 2 and "torchrun --nproc_per_node=4 -m pipelocal.run" in out.stderr


def test_a_missing_or_broken_config_file_is_one_error_line(tmp_path):
    out = _run("--config", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "nope.yaml" in out.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  epochs: [1, 2\nmodel: {}\n")
    out = _run("--config", str(broken))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "broken.yaml, line 3" in out.stderr, out.stderr
