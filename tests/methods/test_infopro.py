import pytest
import torch
import torch.nn.functional as F

from pipelocal.config import ConfigError
from pipelocal.data import Batch, DataInfo
from pipelocal.methods.infopro import interpolate_lambdas, supervised_contrastive
from pipelocal.runtime import build_local_net
from tests.conftest import tiny_config


def test_lambda_interpolation():
    lam = [6.0, 0.0, 1.0, 2.0]  # CIFAR-10 R-32 K=4
    assert interpolate_lambdas(lam, 0, 4) == (6.0, 0.0)
    assert interpolate_lambdas(lam, 1, 4) == (3.5, 1.0)
    assert interpolate_lambdas(lam, 2, 4) == (1.0, 2.0)
    assert interpolate_lambdas([5.0, 1.0, 0.0, 0.0], 0, 2) == (5.0, 1.0)  # K = 2: ratio 0


def test_all_zero_lambdas_is_an_error():
    with pytest.raises(ConfigError, match="no loss"):
        build_local_net(tiny_config("--method.lambdas=[0,0,0,0]"), DataInfo(5, (3, 16, 16)))


def test_supcon_prefers_clustered_embeddings():
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0], [1, 0.01], [0, 1], [0.01, 1]])
    mixed = torch.tensor([[1.0, 0], [0, 1], [1, 0.01], [0.01, 1]])
    assert supervised_contrastive(clustered, labels, 0.07) < supervised_contrastive(mixed, labels, 0.07)


def test_reconstruction_targets_the_unnormalised_input():
    cfg = tiny_config("--method.name=infopro", "--method.lambdas=[1,0,1,0]")
    net = build_local_net(cfg, DataInfo(5, (3, 16, 16)))
    head = net.local_modules[0].head
    raw = torch.rand(4, 3, 16, 16)
    h = net.local_modules[0](raw)
    out = head(h, Batch(x=(raw - 0.5) / 0.25, y=torch.zeros(4, dtype=torch.long), raw=raw))
    up = F.interpolate(h, size=(16, 16), mode="bilinear", align_corners=True)
    expected = F.binary_cross_entropy(torch.sigmoid(head.decoder(up)), raw)
    assert torch.allclose(out["rec"], expected, atol=1e-5) and out["loss"] == out["rec"]


def test_contrast_head_has_no_logits():
    cfg = tiny_config("--method.name=infopro", "--method.loss=contrast")
    net = build_local_net(cfg, DataInfo(5, (3, 16, 16)))
    assert net.local_modules[0].head.logits(torch.randn(4, 16, 16, 16)) is None
