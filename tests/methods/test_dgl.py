"""DGL's MLP-SR head in both forms: AugLocal's re-implementation (2 hidden layers) and eugenium/DGL's (3)."""

import pytest
import torch
from torch import nn

from pipelocal.config import ConfigError
from pipelocal.data import DataInfo
from pipelocal.methods import METHODS
from pipelocal.methods.dgl import DGLConfig, mlp_sr
from pipelocal.runtime import build_local_net
from tests.conftest import tiny_config


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    "head, hidden, bias, params",
    [
        # C = 16 at S = 32 (a CIFAR ResNet's first stage): 3 conv1x1 + BN = 3 * (256 + 32) = 864; flat = 4C = 64;
        # each hidden Linear-BN is 64 * 64 (+ 64 bias) + 128; the classifier 64 * 10 + 10 = 650.
        ("auglocal", 2, False, 864 + 2 * (4096 + 128) + 650),
        ("dgl", 3, True, 864 + 3 * (4096 + 64 + 128) + 650),
    ],
)
def test_head_structure_and_parameter_count(head, hidden, bias, params):
    net = mlp_sr(16, 32, 10, head)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert len(linears) == hidden + 1 and linears[-1].out_features == 10
    assert all((m.bias is not None) == bias and m.in_features == m.out_features == 64 for m in linears[:-1])
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net) == hidden
    assert sum(isinstance(m, nn.Conv2d) for m in net) == 3
    assert [m.output_size for m in net if isinstance(m, nn.AdaptiveAvgPool2d)] == [8, 2]
    assert _count(net) == params == {"auglocal": 9962, "dgl": 14378}[head]
    assert net(torch.randn(4, 16, 32, 32)).shape == (4, 10)


def test_the_knob_reaches_the_heads_and_defaults_to_auglocal():
    info = DataInfo(num_classes=5, input_shape=(3, 16, 16))

    def hidden_linears(*extra):
        net = build_local_net(tiny_config("--method.name=dgl", "--split.num_modules=3", *extra), info)
        heads = [m.head for m in net.local_modules[:-1]]  # the last module's head is the classifier
        return [sum(isinstance(x, nn.Linear) for x in h.modules()) - 1 for h in heads], net.method.cfg

    assert hidden_linears() == ([2, 2], DGLConfig(head="auglocal"))
    assert hidden_linears("--method.head=dgl") == ([3, 3], DGLConfig(head="dgl"))
    assert METHODS.get("dgl").Config is DGLConfig


def test_an_unknown_head_names_the_choices():
    with pytest.raises(ConfigError) as err:
        tiny_config("--method.name=dgl", "--method.head=mlp")
    assert "method.head" in str(err.value) and "auglocal, dgl" in str(err.value)
