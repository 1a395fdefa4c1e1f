"""Invariant 1 (pipeline = sequential) for networks from outside the package, as one torchrun job at P = 2: a
user's nn.Sequential (tests/user_nets.py) under InfoPro (the raw input crosses the boundary) and MLAAN (the
cascade gradient and the EMA copies' weights cross it), and timm's ResNet-18 when timm is installed."""

import importlib.util

import pytest
import torch

from pipelocal.checkpoint import load_merged
from tests.distributed.launch import TINY, runs_fixture
from tests.distributed.test_pipeline import sequential_state

USER = ["--model.name=tests.user_nets:small_cnn"]
CASES = {
    "user-infopro-K2": [*USER, "--method.name=infopro", "--split.num_modules=2"],
    "user-mlaan-K4": [*USER, "--method.name=mlaan", "--split.num_modules=4"],
}
TIMM = "timm-resnet18-dgl-K2"
if importlib.util.find_spec("timm") is not None:  # (without timm: the user cases alone; the timm one skips)
    CASES[TIMM] = ["--model.name=timm/resnet18", "--method.name=dgl", "--split.num_modules=2"]
runs = runs_fixture(2, {name: [*TINY, "--mode=pipeline", *args] for name, args in CASES.items()}, timeout=300)


@pytest.mark.parametrize("name", [*dict.fromkeys([*CASES, TIMM])])
def test_pipeline_equals_sequential_for_user_and_timm_networks(runs, name):
    if name not in CASES:
        pytest.skip("timm is not installed (pip install 'pipelocal[timm]')")
    piped = load_merged(runs / name)
    reference = sequential_state(CASES[name])
    assert piped.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.allclose(piped[key].float(), value.float(), atol=1e-5, rtol=1e-4), key
