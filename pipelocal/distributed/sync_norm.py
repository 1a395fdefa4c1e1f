"""BatchNorm with statistics over the whole data-parallel batch, on CPU/gloo and CUDA/NCCL alike.

``torch.nn.SyncBatchNorm`` refuses CPU tensors, so the same code could not run on gloo. Here, in training, each
replica sums its input and its squares per channel (in fp32 at least, even under bf16 autocast) and counts its
rows (N*H*W, or N for BatchNorm1d: the aux heads' MLPs); one all-reduce with a backward (:class:`_AllReduce`)
makes them global, so shards of uneven size are weighted by their
counts and the backward is exact: gradients reach every replica's inputs through the global statistics. The
forward is a collective: every replica of the group must run the same forwards, in the same order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduce(torch.autograd.Function):
    """Sum over ``group``, forward and backward (every replica's loss depends on every replica's sums)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _SyncNorm:
    """The synchronised training forward, for BatchNorm over any input rank (channels in dimension 1).

    In eval mode, or without a group of more than one rank, it is exactly the BatchNorm it subclasses.
    """

    group: dist.ProcessGroup | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.group is None or dist.get_world_size(self.group) == 1:
            return super().forward(x)
        self._check_input_dim(x)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        mean, var, count = self._global_stats(xf)
        self._update_running_stats(mean.detach(), var.detach(), count)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale if self.bias is None else self.bias - mean * scale
        view = (-1,) + (1,) * (x.dim() - 2)
        return (xf * scale.view(view) + shift.view(view)).to(x.dtype)

    def _global_stats(self, xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-channel mean and biased variance over every replica's rows, and the global row count."""
        dims = (0, *range(2, xf.dim()))
        count = torch.full((1,), xf.numel() // xf.size(1), dtype=xf.dtype, device=xf.device)
        # One collective for all three. E[x^2] - E[x]^2 loses digits when |mean| >> std: fine for activations.
        sums = _AllReduce.apply(torch.cat([xf.sum(dims), xf.square().sum(dims), count]), self.group)
        total, sum_sq, count = sums[: self.num_features], sums[self.num_features : -1], sums[-1]
        mean = total / count
        return mean, (sum_sq / count - mean.square()).clamp_min(0), count

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """As ``nn.BatchNorm2d``: momentum (None: cumulative average), unbiased variance over the global count."""
        if not self.track_running_stats:
            return
        self.num_batches_tracked.add_(1)
        dtype = self.running_mean.dtype
        # A tensor factor for momentum=None, where nn.BatchNorm2d takes float(num_batches_tracked): no host sync.
        factor = self.momentum if self.momentum is not None else (1 / self.num_batches_tracked).to(dtype)
        self.running_mean.lerp_(mean.to(dtype), factor)
        self.running_var.lerp_((var * count / (count - 1)).to(dtype), factor)


class SyncBatchNorm(_SyncNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers, state_dict) whose training statistics span ``group``."""

    def __init__(self, *args, group: dist.ProcessGroup | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group


class SyncBatchNorm1d(_SyncNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose training statistics span ``group``."""

    def __init__(self, *args, group: dist.ProcessGroup | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group


SYNCED = {nn.BatchNorm2d: SyncBatchNorm, nn.BatchNorm1d: SyncBatchNorm1d}


def convert_sync_batchnorm(module: nn.Module, group: dist.ProcessGroup) -> nn.Module:
    """Replaces every ``nn.BatchNorm2d`` and ``nn.BatchNorm1d`` in ``module`` by its synchronised twin over ``group``
    holding the same parameter and buffer tensors (children in place); returns the module, or its replacement."""
    if type(module) in SYNCED:
        args = (module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        sync = SYNCED[type(module)](*args, group=group)
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            setattr(sync, name, tensor)
        return sync.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, group))
    return module
