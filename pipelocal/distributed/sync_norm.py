"""BatchNorm with statistics over the whole data-parallel batch, on CPU/gloo and CUDA/NCCL alike.

``torch.nn.SyncBatchNorm`` refuses CPU tensors, so the same code could not run on gloo. Here, in training, each
replica takes its rows' count (N*H*W, or N for BatchNorm1d: the aux heads' MLPs), mean and M2 (the sum of squared
deviations from that mean, two-pass: in fp32 at least, even under bf16 autocast); one all-reduce with a backward
(:class:`_AllReduce`) gathers every replica's, and they are merged as Chan et al. do (M2 = sum of the M2s + sum of
n_r (mean_r - mean)^2), so shards of uneven size are weighted by their counts, nothing cancels when |mean| >> std
(a one-pass E[x^2] - E[x]^2 in fp32 loses every digit of the variance at mean 1e4, std 1), and the backward,
autograd through the centred terms, is as exact: gradients reach every replica's inputs through the global
statistics. The forward is a collective: every replica of the group must run the same forwards, in the same order.
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
        view = (-1,) + (1,) * (x.dim() - 2)
        # Centred first, as torch's BatchNorm: x * scale + (bias - mean * scale) would cancel at |mean| >> std.
        y = (xf - mean.view(view)) * scale.view(view)
        return (y if self.bias is None else y + self.bias.view(view)).to(x.dtype)

    def _global_stats(self, xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-channel mean and biased variance over every replica's rows, and the global row count."""
        dims, c = (0, *range(2, xf.dim())), self.num_features
        view = (1, -1) + (1,) * (xf.dim() - 2)
        rows = xf.numel() // c
        mean = xf.sum(dims) / max(rows, 1)  # an empty shard adds nothing (count 0)
        m2 = (xf - mean.view(view)).square().sum(dims)
        count = torch.full((1,), rows, dtype=xf.dtype, device=xf.device)
        # Every replica's (mean, M2, count) in its own row of a table, summed over the group: one collective.
        world, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        mine = torch.cat([mean, m2, count]).unsqueeze(0)
        table = torch.zeros(world, 2 * c + 1, dtype=xf.dtype, device=xf.device)
        index = torch.tensor([rank], device=xf.device)
        table = _AllReduce.apply(table.index_copy(0, index, mine), self.group)
        means, m2s, counts = table[:, :c], table[:, c : 2 * c], table[:, 2 * c :]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        m2 = m2s.sum(0) + (counts * (means - mean).square()).sum(0)
        return mean, m2 / total, total

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
