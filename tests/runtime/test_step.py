"""LocalStep's cross-stage mechanics in one process: gradients in and out, and weight stashing."""

import copy

import torch

from pipelocal.data import DataInfo
from pipelocal.runtime import build_local_net
from pipelocal.runtime.spans import crossing_spans, net_spans
from pipelocal.runtime.step import LocalStep
from tests.conftest import tiny_config

INFO = DataInfo(num_classes=5, input_shape=(3, 16, 16))


def _net(*extra):
    return build_local_net(tiny_config("--split.num_modules=4", *extra), INFO)


def test_crossing_spans_of_mlaan_and_guidance():
    mlaan = _net("--method.name=mlaan").method
    assert [crossing_spans(net_spans(mlaan, None), b) for b in (1, 2, 3)] == [[1], [1], [1]]
    from pipelocal.runtime.spans import Guide

    greedy = _net("--method.name=greedy").method
    assert crossing_spans(net_spans(greedy, None), 2) == []
    assert crossing_spans(net_spans(greedy, Guide("replace")), 2) == [2]  # two modules left to train
    assert crossing_spans(net_spans(greedy, Guide("add")), 3) == [3]  # modules 2, 1, 0


def test_a_late_gradient_meets_the_weights_and_input_it_was_made_with():
    """Async: after the step, the optimizer changes the weights and the receive buffer is overwritten;
    the late gradient must still be the one of the original weights and input (stash + private copy)."""
    net = _net("--method.name=e2e", "--mode=sequential")
    stage = [net.local_modules[1]]  # a middle stage: its output's gradient comes from later stages
    spans = net_spans(net.method, None)
    original = copy.deepcopy(stage[0])
    opt = torch.optim.SGD(stage[0].parameters(), lr=1.0)
    buffer = torch.randn(4, *net.method.info.module_shapes[0])
    x0 = buffer.clone()
    step = LocalStep(stage, [opt], False, spans, stash=True)
    assert step.incoming == [2]  # modules 1 and 0 left to train
    step.forward(buffer, None, None)
    step.finish()
    with torch.no_grad():
        for p in stage[0].parameters():
            p.add_(1.0)  # other updates happened meanwhile
        buffer.normal_()  # the receive slot was reused by a later message
    before = [p.detach().clone() for p in stage[0].parameters()]
    g = torch.randn_like(step.output)
    step.receive({2: g})
    step.finish_late()
    want = torch.autograd.grad(original(x0.requires_grad_()), list(original.parameters()) + [x0], g)
    for b, p, w in zip(before, stage[0].parameters(), want):
        torch.testing.assert_close(b - p.detach(), w, rtol=1e-4, atol=1e-5)  # lr 1: the step is the gradient
    torch.testing.assert_close(step.upstream[1], want[-1], rtol=1e-4, atol=1e-5)  # and it goes on upstream
