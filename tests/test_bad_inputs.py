"""Every bad input is one line naming the problem and the fix: one parametrized row per case, each run as a user
would (``pipelocal.run.cli``) in this process with tiny data. Then the runs that used to finish silently wrong."""

from __future__ import annotations

import errno
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipelocal import checkpoint
from pipelocal.run import cli

TINY = {
    "mode": "sequential",
    "model": {"depth": 8},
    "data": {
        "name": "synthetic",
        "synthetic_shape": [3, 16, 16],
        "synthetic_train": 128,
        "synthetic_test": 64,
        "batch_size": 32,
        "eval_batch_size": 64,
    },
    "split": {"num_modules": 2},
    "method": {"name": "greedy"},
    "train": {"epochs": 1, "max_steps": 2, "threads": 1},
    "metrics": {"console": "none"},
}


def write_idx(path: Path, array: np.ndarray, cut: int = 0) -> None:
    """An idx file of uint8 ``array`` (gzipped for a .gz name); ``cut``: bytes missing at the end."""
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = (data + array.astype(np.uint8).tobytes())[: -cut or None]
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def fashion_files(root: Path, cut: str = "", gz: bool = False) -> Path:
    """A Fashion-MNIST-format folder of 64 + 32 random 16x16 images; ``cut`` names a file to truncate."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", 64), ("t10k", 32)):
        for kind, shape in (("images-idx3-ubyte", (n, 16, 16)), ("labels-idx1-ubyte", (n,))):
            name = f"{stem}-{kind}" + (".gz" if gz else "")
            array = rng.integers(0, 10 if "labels" in kind else 256, shape)
            write_idx(root / name, array, cut=100 if name == cut else 0)
    return root


def run(tmp_path: Path, *args: str, config: dict | None = None) -> tuple[int, str]:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config or TINY))
    return cli(["--config", str(path), f"--metrics.out_dir={tmp_path / 'runs'}", *args])


def finished_run(tmp_path: Path, name: str = "a", *args: str) -> Path:
    assert run(tmp_path, f"--metrics.run_name={name}", *args) == 0
    return tmp_path / "runs" / name


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/__0_0.distcp")


def corrupt_gz(tmp_path: Path) -> list[str]:
    root = fashion_files(tmp_path / "fm", gz=True)
    (root / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    return ["--data.name=fashion_mnist", f"--data.root={root}"]


def stopped_run(tmp_path: Path) -> list[str]:
    """A run whose summary was never written (stopped): resuming it with another lr is refused."""
    run_dir = finished_run(tmp_path, "s")
    (run_dir / "summary.json").unlink()
    return ["--metrics.run_name=s", "--train.resume=auto", "--optim.lr=0.05", "--train.seed=1"]


# (id, arguments or a function of tmp_path that prepares the case and returns them, exit code, the message)
CASES = [
    ("lr-nan", ["--optim.lr=.nan"], 2, "optim.lr=nan must be a finite number > 0"),
    ("lr-negative", ["--optim.lr=-1"], 2, "optim.lr=-1.0 must be a finite number > 0"),
    ("train-subset-negative", ["--data.train_subset=-5"], 2, "data.train_subset=-5 must be >= 1"),
    ("test-subset-negative", ["--data.test_subset=-1"], 2, "data.test_subset=-1 must be >= 1"),
    ("unknown-key", ["--train.epoch=2"], 2, "unknown key 'train.epoch'"),
    ("unknown-section", ["--trian.epochs=2"], 2, "unknown key 'trian'"),
    ("not-an-integer", ["--train.epochs=two"], 2, "'train.epochs' needs an integer"),
    ("bad-choice", ["--optim.step=sometimes"], 2, "per_batch"),
    ("resnet-depth", ["--model.depth=21"], 2, "depth must be 6n+2"),
    ("unknown-method", ["--method.name=nope"], 2, "nope"),
    ("boundaries-count", ["--split.boundaries=[0,1]"], 2, "split.boundaries has 2 entries"),
    ("no-dashes", ["train.epochs=2"], 2, "--section.key=value"),
    ("nan-policy-choice", ["--train.nan_policy=maybe"], 2, "train.nan_policy"),
    ("batch-over-data", ["--data.batch_size=100000"], 2, "larger than the 128 training samples"),
    (
        "root-without-data",
        lambda t: ["--data.name=fashion_mnist", f"--data.root={t / 'empty'}"],
        2,
        "dataset 'fashion_mnist' not found; tried",
    ),
    (
        "truncated-idx",
        lambda t: ["--data.name=fashion_mnist", f"--data.root={fashion_files(t / 'fm', 'train-images-idx3-ubyte')}"],
        2,
        "train-images-idx3-ubyte is truncated or corrupt: its header says 16384 bytes of data, it holds 16284",
    ),
    ("corrupt-gz", corrupt_gz, 2, "train-labels-idx1-ubyte.gz cannot be read"),
    (
        "used-run-name",
        lambda t: [f"--metrics.run_name={finished_run(t).name}"],
        2,
        "exists already; continue it with --train.resume=auto",
    ),
    (
        "finished-run",
        lambda t: [f"--metrics.run_name={finished_run(t).name}", "--train.resume=auto"],
        2,
        "has finished (summary.json) and is never rewritten",
    ),
    ("resume-changes-lr", stopped_run, 2, "would change what the run trains: optim.lr: 0.1 in the run, 0.05 now"),
    (
        "override-unknown-key",
        lambda t: stopped_run(t) + ["--train.resume_override=optim.lrr"],
        2,
        "train.resume_override names 'optim.lrr'",
    ),
    (
        "override-bound-key",
        lambda t: stopped_run(t) + ["--train.resume_override=model.depth"],
        2,
        "model.depth cannot change on resume",
    ),
    ("diverged", ["--optim.lr=1.0e+30"], 1, "module 0's gradient is not finite (NaN or inf) at step 1"),
    ("disk-full", ["--metrics.run_name=full"], 2, "checkpoint step 2 could not be written: no space left on device"),
]


@pytest.mark.parametrize("args, code, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line(tmp_path, capsys, monkeypatch, args, code, message):
    if message.startswith("checkpoint step"):
        monkeypatch.setattr("torch.distributed.checkpoint.filesystem._write_item", no_space)
    args = args(tmp_path) if callable(args) else args
    capsys.readouterr()  # what preparing the case printed
    assert run(tmp_path, *args) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    if message.startswith("checkpoint step"):
        assert not list((tmp_path / "runs" / "full" / "checkpoints").iterdir())  # nothing half-written left


def test_one_process_mode_under_several_processes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    assert run(tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torchrun started 4" in err


# ------------------------------------------------------------------------ runs that used to finish silently wrong


def test_resume_auto_never_takes_over_a_run_of_another_config(tmp_path, capsys):
    """Run A finished; the same command with another seed and lr and resume=auto trains a run of its own."""
    assert run(tmp_path) == 0
    (first,) = (tmp_path / "runs").iterdir()
    config, summary = (first / "config.yaml").read_text(), (first / "summary.json").read_text()
    assert run(tmp_path, "--train.seed=1", "--optim.lr=0.05", "--train.resume=auto") == 0
    assert len(list((tmp_path / "runs").iterdir())) == 2
    assert (first / "config.yaml").read_text() == config and (first / "summary.json").read_text() == summary
    (first / "summary.json").unlink()  # as if stopped: the same config continues it, another does not
    assert run(tmp_path, "--train.seed=2", "--train.resume=auto") == 0
    assert len(list((tmp_path / "runs").iterdir())) == 3
    assert run(tmp_path, "--train.resume=auto", "--train.epochs=2") == 0  # epochs may change on resume
    assert len(list((tmp_path / "runs").iterdir())) == 3 and (first / "summary.json").is_file()


def test_an_override_is_taken_and_recorded_with_its_step(tmp_path):
    args = stopped_run(tmp_path) + ["--train.resume_override=optim.lr,train.seed"]
    assert run(tmp_path, *args) == 0
    (row,) = [json.loads(x) for x in (tmp_path / "runs" / "s" / "resumes.jsonl").read_text().splitlines()]
    assert row["step"] == 2 and row["overridden"] == ["optim.lr", "train.seed"]
    assert row["changed"]["optim.lr"] == [0.1, 0.05] and row["changed"]["train.resume"] == [None, "auto"]


def test_a_failed_start_leaves_its_name_free(tmp_path):
    assert run(tmp_path, "--metrics.run_name=x", "--optim.lr=1.0e+30") == 1  # stops before any checkpoint
    assert (tmp_path / "runs" / "x" / "config.yaml").is_file()
    assert run(tmp_path, "--metrics.run_name=x") == 0


def test_a_diverged_run_writes_no_checkpoint_and_skip_drops_the_steps(tmp_path):
    assert run(tmp_path, "--metrics.run_name=stop", "--optim.lr=1.0e+30", "--checkpoint.every_steps=1") == 1
    (kept,) = checkpoint.complete(tmp_path / "runs" / "stop" / "checkpoints")  # of step 1 (step 0 was finite)
    assert kept.name == "step-00000001" and all(v.isfinite().all() for v in checkpoint.load_model_state(kept).values())
    assert not list((tmp_path / "runs" / "stop").glob("stage*.pt"))
    for policy in ("skip", "off"):
        assert run(tmp_path, f"--metrics.run_name={policy}", "--optim.lr=1.0e+30", f"--train.nan_policy={policy}") == 0
    finite = {
        policy: all(v.isfinite().all() for v in checkpoint.load_merged(tmp_path / "runs" / policy).values())
        for policy in ("skip", "off")
    }
    assert finite == {"skip": True, "off": False}  # off: what the guard prevents
    epoch = json.loads((tmp_path / "runs" / "skip" / "metrics.jsonl").read_text().splitlines()[0])
    assert epoch["stages"][0]["skipped"] == 1  # step 0 is finite (and throws the weights far), step 1 is not


def test_the_files_read_are_printed_and_recorded_and_a_zero_subset_is_the_full_set(tmp_path, capsys):
    root = fashion_files(tmp_path / "fm")
    config = {**TINY, "metrics": {"console": "plain"}}
    args = ["--data.name=fashion_mnist", f"--data.root={root}", "--data.train_subset=0", "--metrics.run_name=f"]
    assert run(tmp_path, *args, config=config) == 0
    record = json.loads((tmp_path / "runs" / "f" / "data.json").read_text())
    assert sorted(record["files"]) == sorted(str(p) for p in root.iterdir())
    assert (record["train_samples"], record["train_subset"]) == (64, None)
    assert f"all 64 training and all 32 test samples, read from {root}" in capsys.readouterr().out


def _image_folder(root: Path, train: list[str], val: list[str]) -> Path:
    from PIL import Image

    for split, classes in (("train", train), ("val", val)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / name / "0.png")
    return root


def test_imagefolder_val_keeps_train_class_indices(tmp_path):
    from pipelocal.config import DataConfig
    from pipelocal.data import DataFileError, build_loaders

    cfg = DataConfig(name="imagefolder", root=str(_image_folder(tmp_path / "a", ["a", "b", "c"], ["a", "c"])))
    cfg.image_size, cfg.workers = 8, 0
    train, test, info = build_loaders(cfg, torch.device("cpu"))
    assert info.num_classes == 3 and train.dataset.targets == [0, 1, 2] and test.dataset.targets == [0, 2]
    cfg.root = str(_image_folder(tmp_path / "b", ["a", "b"], ["a", "d"]))
    with pytest.raises(DataFileError, match="has classes that .* lacks: d"):
        build_loaders(cfg, torch.device("cpu"))
