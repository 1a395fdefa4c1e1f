"""A non-editable install: a wheel built from this tree, installed in a fresh venv, run from another folder.

Kept cheap: the wheel is built offline (no build isolation) and installed without dependencies into a venv that
sees this interpreter's site-packages (torch and the rest) but not the checkout; the checks are --help (which
prints the whole effective config), the default job's start and a one-step run of a packaged config.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pipelocal", "configs", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md"]


def _sh(args, cwd, timeout=300, env=None):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(
            ROOT / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    built = _sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp, src], tmp)
    assert built.returncode == 0, built.stderr
    wheel = next(tmp.glob("pipelocal-*.whl"))
    venv = tmp / "venv"
    _sh([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    site = next(venv.glob("lib/python*/site-packages"))
    # Plain path lines: torch & co. are found, but no .pth of theirs runs (an editable pipelocal's finder).
    shared = [p for p in sys.path if p.endswith("site-packages") and Path(p).resolve() != site.resolve()]
    (site / "shared_site.pth").write_text("\n".join(shared) + "\n")
    put = _sh(
        [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", wheel], tmp
    )
    assert put.returncode == 0, put.stderr
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"COLUMNS": "100"}
    return {"wheel": wheel, "venv": venv, "cwd": elsewhere, "env": env}


def test_the_wheel_carries_the_configs(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    shipped = {
        f"pipelocal/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob("*.yaml")
    }
    assert shipped and shipped <= names


def test_installed_default_job_is_the_checkouts(installed):
    venv, cwd, env = installed["venv"], installed["cwd"], installed["env"]
    where = _sh([venv / "bin" / "python", "-c", "import pipelocal; print(pipelocal.__file__)"], cwd, env=env)
    assert str(venv) in where.stdout, where.stdout + where.stderr  # the wheel's copy, not the checkout
    mine = _sh([venv / "bin" / "pipelocal", "--help"], cwd, env=env)
    checkout = _sh([sys.executable, "-m", "pipelocal.run", "--help"], ROOT, env=env)
    assert mine.returncode == checkout.returncode == 0, mine.stderr
    assert "--mode=pipeline" in checkout.stdout and mine.stdout == checkout.stdout  # the whole effective config
    start = _sh([venv / "bin" / "pipelocal"], cwd, env=env)  # the default job wants torchrun, as in the checkout
    assert start.returncode == 2 and "torchrun --nproc_per_node=4 -m pipelocal.run" in start.stderr, start.stderr


def test_installed_console_script_runs_a_packaged_config(installed):
    venv, cwd, env = installed["venv"], installed["cwd"], installed["env"]
    args = ["--config", "fmnist/greedy_k4.yaml", "--data.name", "synthetic", "--data.synthetic_shape=[1,28,28]"]
    args += ["--data.synthetic_train=64", "--data.batch_size=32", "--train.epochs=1", "--train.max_steps=1"]
    out = _sh([venv / "bin" / "pipelocal", *args, "--metrics.console=plain", "--metrics.run_name=one"], cwd, env=env)
    assert out.returncode == 0, out.stderr
    assert (cwd / "runs" / "one" / "summary.json").is_file()
