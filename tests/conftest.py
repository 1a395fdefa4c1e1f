"""Shared helpers: tiny, deterministic configs that run in seconds on 2 CPU cores."""

from __future__ import annotations

import os

import pytest
import torch

from pipelocal.config_parse import load_config
from pipelocal.data import build_loaders
from pipelocal.optim import build_optimizers
from pipelocal.runtime import build_local_net
from pipelocal.runtime.numerics import Numerics


def pytest_configure(config):
    """The CPU suite runs on the CPU on any machine: GPUs are hidden (before CUDA starts, so the torchrun jobs the
    tests start inherit it) unless the GPU tier is what was asked for (``pytest -m gpu``; tests/gpu)."""
    if (config.option.markexpr or "").strip() != "gpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def tiny_config(*overrides: str, tmp_path=None):
    """Synthetic 3x16x16 data, ResNet-8 (4 units), one thread; overrides as --key=value."""
    base = [
        "--data.name=synthetic",
        "--data.synthetic_shape=[3, 16, 16]",
        "--data.synthetic_train=512",
        "--data.synthetic_test=256",
        "--data.batch_size=64",
        "--data.eval_batch_size=256",
        "--model.depth=8",
        "--split.num_modules=2",
        "--train.epochs=1",
        "--metrics.console=none",
    ]
    if tmp_path is not None:
        base.append(f"--metrics.out_dir={tmp_path}")
    return load_config(None, base + list(overrides))


def one_process(cfg):
    """What a one-process run of ``cfg`` trains with, on CPU: its training loader, the net (in the configured
    memory format), one optimizer per module, and the numerics (precision, loss scalers)."""
    loader, _, info = build_loaders(cfg.data, torch.device("cpu"), cfg.train.seed)
    net = build_local_net(cfg, info)
    opts = build_optimizers(net.local_modules, cfg.optim)
    numerics = Numerics.of(cfg, torch.device("cpu"), len(opts))
    for module in net.local_modules:
        numerics.prepare(module)
    return loader, net, opts, numerics


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
