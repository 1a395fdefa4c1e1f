"""Export and evaluation of a real checkpoint, written here without the trainer."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import pytest
import torch

from pipelocal import checkpoint
from pipelocal.data import build_loaders
from pipelocal.export import evaluate_checkpoint, export_backbone, main
from pipelocal.models import build_backbone
from pipelocal.runtime import build_local_net
from pipelocal.runtime.profile import split_for
from tests.conftest import tiny_config
from tests.reference.local import top1

DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run dir with one checkpoint of a perturbed 2-module InfoPro ResNet-8, and that net."""
    torch.set_num_threads(1)
    cfg = tiny_config(
        "--method.name=infopro",
        "--data.synthetic_train=64",
        "--data.synthetic_test=96",
        "--data.eval_batch_size=40",
        "--train.device=cpu",
    )
    _, test_loader, info = build_loaders(cfg.data, DEVICE, cfg.train.seed)
    ranges, _ = split_for(cfg, info, DEVICE)
    net = build_local_net(cfg, info, ranges)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # away from the seed's init, and BN statistics that are not 0/1
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                noise = 0.1 * torch.randn(t.shape, generator=gen)
                t.add_(noise.abs() if "running_var" in name else noise)
    run_dir = tmp_path_factory.mktemp("run")
    meta = {"step": 12, "epoch": 3, "config": dataclasses.asdict(cfg), "ranges": ranges}
    state = {"model." + k: v for k, v in net.state_dict().items()}
    checkpoint.save(run_dir / "checkpoints", 12, state, meta=meta, group=None)
    return run_dir, net.eval(), cfg, info, test_loader


def test_export_loads_strictly_and_matches_the_bodies(run, capsys):
    run_dir, net, cfg, info, _ = run
    out = export_backbone(run_dir)
    assert out == run_dir / "backbone.pt"
    line = capsys.readouterr().out.strip()
    assert "backbone.pt" in line and "step 12, epoch 3" in line and "tensors" in line
    backbone = build_backbone(cfg.model.name, cfg.model.depth, info.input_shape[0], info.num_classes, cfg.model.norm)
    backbone.load_state_dict(torch.load(out), strict=True)
    backbone.eval()
    x = torch.randn(5, *info.input_shape)
    with torch.no_grad():
        h = x
        for module in net.local_modules:
            h = module.body(h)
        features = x
        for unit in backbone.units:
            features = unit(features)
        torch.testing.assert_close(features, h)
        torch.testing.assert_close(backbone(x), net(x))


def test_evaluate_matches_a_direct_eval(run, capsys):
    run_dir, net, _, _, test_loader = run
    want = top1(net.local_modules, test_loader, test_loader.num_samples)
    assert evaluate_checkpoint(run_dir / "checkpoints") == pytest.approx(want)
    assert f"test top-1 {want[-1]:.4f} (final head)" in capsys.readouterr().out


def test_cli_exports_and_evaluates(run, tmp_path, capsys):
    run_dir = run[0]
    ckpt = checkpoint.resolve(run_dir)
    assert main([str(ckpt), "--out", str(tmp_path / "b.pt"), "--evaluate"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"wrote {tmp_path / 'b.pt'}") and lines[1].startswith("test top-1 ")


def test_damaged_checkpoint_is_one_error_line(run, tmp_path, capsys):
    ckpt = tmp_path / "step-00000012"
    shutil.copytree(checkpoint.resolve(run[0]), ckpt)
    data = next(p for p in ckpt.iterdir() if p.suffix == ".distcp")
    data.write_bytes(data.read_bytes()[:-10])
    assert main([str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "truncated" in err[0]


def test_cli_on_an_empty_folder_exits_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipelocal.export", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: no complete checkpoint in {tmp_path} (looked in {tmp_path} and {tmp_path / 'checkpoints'})"
    ]
