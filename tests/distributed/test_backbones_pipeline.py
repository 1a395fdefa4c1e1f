"""Invariant 1 (pipeline = sequential) beyond ResNets, as one torchrun job at P = 2: a tiny ViT (tokens (N, T, D)
cross the stage boundary, InfoPro's raw input travels with them; MLAAN's cascade and EMA weights cross it too) and
a tiny VGG."""

import pytest
import torch

from pipelocal.checkpoint import load_merged
from tests.distributed.launch import TINY, runs_fixture
from tests.distributed.test_pipeline import sequential_state

VIT = ["--model.name=vit_tiny_p4", "--model.depth=3"]
CASES = {
    "vit-infopro-K2": [*VIT, "--method.name=infopro", "--split.num_modules=2"],
    "vit-mlaan-K4": [*VIT, "--method.name=mlaan", "--split.num_modules=4"],
    "vgg-dgl-K2": [
        "--model.name=cifar_vgg",
        "--model.depth=11",
        "--method.name=dgl",
        "--split.num_modules=2",
        "--optim.step=per_module",
    ],
}
runs = runs_fixture(2, {name: [*TINY, "--mode=pipeline", *args] for name, args in CASES.items()}, timeout=120)


@pytest.mark.parametrize("name", CASES)
def test_pipeline_equals_sequential_beyond_resnets(runs, name):
    piped = load_merged(runs / name)
    reference = sequential_state(CASES[name])
    assert piped.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.allclose(piped[key].float(), value.float(), atol=1e-5, rtol=1e-4), key
