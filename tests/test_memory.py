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


def test_a_graph_kept_with_retain_graph_is_freed_when_dropped():
    # relu saves its output; a pack hook holding that output with its grad_fn would be a C++ reference
    # cycle that nothing frees after backward(retain_graph=True), the way MLAAN's heads and guidance's
    # add mode keep graphs (a leak of every step's activations before the meter detached what it holds)
    meter = SavedTensorMeter()
    x = torch.randn(1000, requires_grad=True)
    with meter.hooks():
        y = torch.relu(x * 2)
    y.sum().backward(retain_graph=True)
    assert meter.live > 0
    del y
    assert meter.live == 0


def test_the_step_of_every_method_and_guidance_frees_its_activations():
    from pipelocal.config_parse import load_config
    from pipelocal.data import Batch, DataInfo
    from pipelocal.optim import build_optimizers
    from pipelocal.runtime import build_local_net
    from pipelocal.runtime.spans import Guide
    from pipelocal.runtime.step import local_step

    raw = torch.rand(4, 1, 16, 16)
    batch = Batch(raw, torch.randint(0, 10, (4,)), raw)
    for method in ["dgl", "infopro", "auglocal", "mlaan"]:
        cfg = load_config(None, [f"--method.name={method}", "--split.num_modules=4", "--model.depth=8"])
        net = build_local_net(cfg, DataInfo(10, (1, 16, 16)))
        opts = build_optimizers(net.local_modules, cfg.optim)
        meter = SavedTensorMeter(p for m in net.local_modules for p in m.parameters())
        for guide in [None, Guide("replace"), Guide("add")]:
            local_step(net.local_modules, batch.x, batch, opts, False, meter, guide=guide)
            assert meter.live == 0, (method, guide, meter.live)


def test_static_bytes_counts_params_and_momentum():
    lin = nn.Linear(10, 10)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    lin(torch.randn(2, 10)).sum().backward()
    opt.step()
    sizes = static_bytes(lin, [opt])
    assert sizes["param_bytes"] == 110 * 4 and sizes["optim_state_bytes"] == 110 * 4
