"""train.precision / channels_last / compile in one process: what stays fp32, fp16's loss scale per optimizer,
gradients handed between modules unscaled, compiled = eager, and the refused combinations."""

import copy

import pytest
import torch

from pipelocal.config import ConfigError
from pipelocal.runtime.spans import Guide, net_spans
from pipelocal.runtime.step import LocalStep
from pipelocal.schedules.sequential import train_step
from tests.conftest import one_process, tiny_config

PLAIN_SGD = ["--optim.momentum=0", "--optim.nesterov=false", "--optim.weight_decay=0", "--optim.lr=0.5"]


def _setup(precision: str, *extra: str):
    cfg = tiny_config("--split.num_modules=4", f"--train.precision={precision}", *PLAIN_SGD, *extra)
    loader, net, opts, numerics = one_process(cfg)
    return net, opts, numerics, next(iter(loader))


def _step(net, opts, numerics, batch, guide=None, per_module=False):
    spans = net_spans(net.method, guide)
    step = LocalStep(net.local_modules, opts, per_module, spans, numerics=numerics)
    step.forward(batch.x, batch, guide)
    return step.finish()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_computes_in_half_and_keeps_the_state_fp32(precision):
    net, opts, numerics, batch = _setup(precision, "--method.name=infopro")
    result = _step(net, opts, numerics, batch)
    assert result.output.dtype == numerics.dtype  # what a stage sends
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in result.losses)
    params = [p for m in net.local_modules for p in m.parameters() if p.requires_grad]
    grads = [p.grad for p in params if p.grad is not None]  # (a decoder with weight 0 gets none)
    assert all(p.dtype == torch.float32 for p in params) and all(g.dtype == torch.float32 for g in grads)
    assert len(grads) > 0.8 * len(params)
    assert all(v.dtype == torch.float32 for opt in opts for s in opt.state.values() for v in s.values())


def test_fp16_overflow_skips_only_that_modules_step():
    """One GradScaler per optimizer: an overflow in module 1 skips its step and halves its scale, nobody else's."""
    net, opts, numerics, batch = _setup("fp16", "--method.name=greedy")
    numerics.scalers[1].update(2.0**40)  # its scaled loss overflows fp16
    before = [copy.deepcopy(m.state_dict()) for m in net.local_modules]
    _step(net, opts, numerics, batch)
    moved = [
        any(not torch.equal(v, m.state_dict()[k]) for k, v in b.items() if "weight" in k)
        for b, m in zip(before, net.local_modules)
    ]
    assert moved == [True, False, True, True]
    assert numerics.scalers[1].get_scale() == 2.0**39 and numerics.scalers[0].get_scale() == 2.0**16


@pytest.mark.parametrize("order", ["per_batch", "per_module"])
def test_gradients_cross_modules_unscaled(order):
    """A guidance step's end-to-end gradient crosses every module; with each module at its own loss scale it
    must give the fp32 step (to fp16 accuracy), and the same step whatever the scales are, also when a module
    steps (and its scale grows) before the gradient it hands back has left it (per_module)."""
    guide, step = Guide("replace"), f"--optim.step={order}"
    ref_net, ref_opts, ref_num, batch = _setup("fp32", "--method.name=greedy", step)
    _step(ref_net, ref_opts, ref_num, batch, guide, per_module=order == "per_module")
    for scales in ([2.0**16] * 4, [2.0**4, 2.0**20, 2.0**9, 2.0**14]):
        net, opts, numerics, batch = _setup("fp16", "--method.name=greedy", step)
        for scaler, scale in zip(numerics.scalers, scales):
            scaler.update(scale)
            scaler._growth_interval = 1  # every step that does not overflow doubles the scale
        _step(net, opts, numerics, batch, guide, per_module=order == "per_module")
        assert [s.get_scale() for s in numerics.scalers] == [2 * s for s in scales]
        for (name, want), got in zip(ref_net.state_dict().items(), net.state_dict().values()):
            if want.is_floating_point():
                torch.testing.assert_close(got, want, atol=3e-3, rtol=3e-2, msg=f"{name} at scales {scales}")


def test_channels_last_is_the_same_math():
    """Same outputs and losses to float tolerance (other kernels, other rounding). Weights after a step are not
    compared: a near-constant BatchNorm channel of this tiny net amplifies 1e-6 differences a thousandfold."""
    ref_net, ref_opts, ref_num, batch = _setup("fp32", "--method.name=infopro")
    net, opts, numerics, _ = _setup("fp32", "--method.name=infopro", "--train.channels_last=true")
    conv = next(p for p in net.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    want, got = _step(ref_net, ref_opts, ref_num, batch), _step(net, opts, numerics, batch)
    assert got.output.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.output, want.output, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.stack(got.losses), torch.stack(want.losses), atol=1e-5, rtol=1e-5)


def test_compiled_modules_match_eager_and_a_smaller_last_batch_compiles_nothing_new():
    """torch.compile of every body and head: the same weights as eager (float tolerance) after an epoch whose
    last batch is smaller (84 = 32 + 32 + 20 rows): its batch dimension was dynamic from the first call."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    extra = ["--data.synthetic_train=84", "--data.batch_size=32", "--split.num_modules=2", "--method.name=greedy"]
    nets = []
    for compiled in (False, True):
        cfg = tiny_config(*extra, *PLAIN_SGD, f"--train.compile={str(compiled).lower()}")
        loader, net, opts, numerics = one_process(cfg)
        if compiled:
            from pipelocal.runtime.stage import compile_modules

            compile_modules(net.local_modules)
        graphs = []
        for batch in loader:
            train_step(net, batch, opts, False, numerics=numerics)
            graphs.append(counters["stats"]["unique_graphs"])
        nets.append(net)
    assert [len(b) for b in loader] == [32, 32, 20]
    assert graphs[1] == graphs[2] > 0  # no new graph for the 20-row batch
    for name, want in nets[0].state_dict().items():
        torch.testing.assert_close(nets[1].state_dict()[name], want, atol=1e-4, rtol=1e-3, msg=name)


def test_refused_combinations_say_why():
    with pytest.raises(ConfigError, match="use train.precision=bf16"):
        tiny_config("--mode=gpipe", "--method.name=e2e", "--train.precision=fp16")
    for late in (["--guidance.every=2"], ["--method.name=mlaan"], ["--method.name=e2e"]):
        with pytest.raises(ConfigError, match="weight stashing"):
            tiny_config("--mode=pipeline", *late, "--guidance.mode=async", "--train.compile=true")
    tiny_config("--mode=pipeline", "--guidance.mode=async", "--train.compile=true")  # nothing comes late
    with pytest.raises(ConfigError, match="train.precision"):
        tiny_config("--train.precision=fp8")
