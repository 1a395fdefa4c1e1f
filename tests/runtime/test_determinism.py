"""Deterministic mode's record of ops without a deterministic kernel, and the wait clock (docs/gpus.md)."""

import time
import warnings

import torch

from pipelocal.distributed.waits import WaitClock
from pipelocal.runtime import determinism
from pipelocal.runtime.determinism import NondeterministicOps


def test_ops_without_a_deterministic_kernel_are_named_once_and_other_warnings_pass():
    ops = NondeterministicOps()
    seen = []
    previous = warnings.showwarning
    warnings.showwarning = lambda *args, **kwargs: seen.append(str(args[0]))
    try:
        ops.start()
        assert ops.line() is None
        for _ in range(2):  # torch's words (aten/src/ATen/Context.cpp, alertNotDeterministic)
            warnings.warn(
                "adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation", stacklevel=1
            )
        warnings.warn(
            "upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation", stacklevel=1
        )
        warnings.warn("something else entirely", stacklevel=1)
    finally:
        warnings.showwarning = previous
    assert ops.ops == ["adaptive_avg_pool2d_backward_cuda", "upsample_bilinear2d_backward_out_cuda"]
    assert "adaptive_avg_pool2d_backward_cuda, upsample_bilinear2d_backward_out_cuda" in ops.line()
    assert seen == ["something else entirely"]


def test_cpu_deterministic_mode_is_strict():
    determinism.configure(True, torch.device("cpu"))
    try:
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()  # on CPU: raise, never warn
    finally:
        determinism.configure(False, torch.device("cpu"))
    assert not torch.are_deterministic_algorithms_enabled()


def test_wait_clock_on_the_host_sums_the_waits():
    clock = WaitClock(torch.device("cpu"), on_stream=True)  # on_stream means nothing without CUDA: host time
    assert not clock.on_stream
    with clock.measure():
        time.sleep(0.05)
    with clock.measure():
        pass
    assert 0.05 <= clock.seconds < 1.0
