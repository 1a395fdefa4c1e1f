"""Every registered method, through the same tests (timm style): a new method is tested by existing tests."""

import math

import pytest
import torch

from pipelocal.data import Batch, DataInfo
from pipelocal.methods import METHODS
from pipelocal.runtime import build_local_net
from tests.conftest import tiny_config

INFO = DataInfo(num_classes=5, input_shape=(3, 16, 16))


def _batch(n=8):
    gen = torch.Generator().manual_seed(0)
    raw = torch.rand(n, 3, 16, 16, generator=gen)
    return Batch((raw - 0.5) / 0.25, torch.arange(n) % 5, raw)


def _net(name, k=3, *extra):
    mode = "--mode=e2e" if name == "e2e" else "--mode=sequential"
    return build_local_net(tiny_config(f"--method.name={name}", f"--split.num_modules={k}", mode, *extra), INFO)


@pytest.mark.parametrize("name", METHODS.names())
def test_losses_are_finite_scalars(name):
    net, batch = _net(name), _batch()
    x = batch.x
    for module in net.local_modules:
        h = module(x)
        if module.head is not None:
            out = module.head(h, batch)
            assert out["loss"].shape == () and math.isfinite(out["loss"].item())
            if out["logits"] is not None:
                assert out["logits"].shape == (len(batch), INFO.num_classes)
        x = h


@pytest.mark.parametrize("name", METHODS.names())
def test_each_loss_reaches_only_the_modules_in_its_span(name):
    """Each loss term reaches its own head and the `span` modules ending at its own, nothing else, even when
    the graph is not cut between modules (so the span is the head's own doing, not the step's detach)."""
    net, batch = _net(name, 4), _batch()
    x, outputs = batch.x, []
    for module in net.local_modules:
        x = module(x)
        outputs.append(x)
    for i, module in enumerate(net.local_modules):
        if not module.spans:
            assert module.head is None
            continue
        out = module.head(outputs[i], batch)
        terms = out.get("terms") or [(out["loss"], module.spans[0])]
        assert [span for _, span in terms] == list(module.spans)
        for k, (loss, span) in enumerate(terms):
            net.zero_grad(set_to_none=True)
            if span < i + 1:  # cut the chain where the span ends, as the step does
                loss = _cut_at(net, batch, i - span + 1, i, module.head, k)
            loss.backward(retain_graph=True)
            for j, other in enumerate(net.local_modules):
                touched = any(p.grad is not None and p.grad.abs().sum() > 0 for p in other.body.parameters())
                assert touched == (i - span < j <= i), f"loss of module {i} (span {span}) vs body of module {j}"
                head_touched = other.head is not None and any(p.grad is not None for p in other.head.parameters())
                assert head_touched == (j == i), f"loss of module {i} vs head of module {j}"


def _cut_at(net, batch, first, last, head, k):
    """Recompute term ``k`` of module ``last`` with the graph starting at module ``first``'s (detached) input."""
    x = batch.x
    for module in net.local_modules[:first]:
        x = module(x)
    x = x.detach()
    for module in net.local_modules[first : last + 1]:
        x = module(x)
    again = head(x, batch)
    return (again.get("terms") or [(again["loss"], None)])[k][0]


@pytest.mark.parametrize("name", METHODS.names())
def test_final_module_uses_the_real_classifier(name):
    net = _net(name)
    assert net.local_modules[-1].head.logits(torch.randn(2, 64, 4, 4)).shape == (2, INFO.num_classes)


def test_e2e_is_plain_backprop():
    net = _net("e2e", 1)
    assert net.num_modules == 1 and net.method.span() == 1
    net3 = _net("e2e", 3, "--mode=sequential")
    assert net3.method.span() == 3 and all(m.head is None for m in net3.local_modules[:-1])
    assert [m.spans for m in net3.local_modules] == [(), (), (3,)]
