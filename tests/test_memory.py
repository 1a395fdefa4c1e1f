import torch
from torch import nn

from pipelocal.metrics.memory import SavedTensorMeter, static_bytes


def test_counts_saved_activations_and_frees_them_after_backward():
    lin = nn.Linear(256, 256, bias=False)
    meter = SavedTensorMeter(lin.parameters())
    x = torch.randn(64, 256, requires_grad=True)
    with meter.hooks():
        y = torch.relu(lin(x))  # saves x (for the weight grad) and relu's output; the weight is excluded
    assert meter.live == 2 * 64 * 256 * 4
    y.sum().backward()
    del y
    assert meter.live == 0 and meter.peak == 2 * 64 * 256 * 4


def test_a_storage_saved_twice_counts_once():
    meter = SavedTensorMeter()
    x = torch.randn(1000, requires_grad=True)
    with meter.hooks():
        y = x * x  # mul saves both operands: the same storage
    assert meter.live == 1000 * 4
    del y
    assert meter.live == 0


def test_static_bytes_counts_params_and_momentum():
    lin = nn.Linear(10, 10)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    lin(torch.randn(2, 10)).sum().backward()
    opt.step()
    sizes = static_bytes(lin, [opt])
    assert sizes["param_bytes"] == 110 * 4 and sizes["optim_state_bytes"] == 110 * 4
