"""A device model of pipelocal's own nets: per-unit forward, backward and aux-head time from a roofline per op.

Every leaf module the unit (or its head) runs is one op: a convolution or linear layer costs its FLOPs over
peak x ``matmul_efficiency`` or its bytes over bandwidth x ``memory_efficiency``, whichever is longer; any other
layer (normalisation, activation, pooling) its bytes. Layers narrower than a tensor-core tile (TILE output
channels) pay for the whole tile. No op takes less than ``op_floor_s``, the host's
dispatch of one eager op, which bounds small nets at small batches. A backward costs twice the forward's
FLOPs and bytes in two ops. Shapes come from one forward at 2 rows on the CPU, scaled to the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipelocal.data import Batch, DataInfo
from pipelocal.methods import CrossEntropyHead
from pipelocal.runtime.local_net import backbone_for
from pipelocal.runtime.profile import _head_at
from pipelocal.sim.schedules import Units

PROBE_ROWS = 2
# A GEMM tile's width on tensor cores: a layer with fewer output channels leaves the rest of the tile idle, so
# its FLOPs count as if it had TILE (CIFAR's 16-channel convolutions run at a quarter of the matmul efficiency)
TILE = 64


@dataclass(frozen=True)
class Device:
    name: str
    peak_flops: float  # dense bf16 tensor-core FLOP/s
    memory_bandwidth: float  # bytes/s
    memory_bytes: float
    source: str


@dataclass(frozen=True)
class Efficiency:
    """How close to the roofline eager PyTorch gets: assumptions, stated in docs/simulator.md."""

    matmul: float = 0.4  # convolutions and linear layers, of peak FLOP/s
    memory: float = 0.7  # element-wise layers, of peak bandwidth
    op_floor_s: float = 10e-6  # the host's dispatch of one eager op (5-25 us per op)
    dtype_bytes: int = 2  # bf16 activations
    param_bytes: int = 4  # fp32 weights (and fp32 gradients, momentum)


A100 = Device(
    "A100-SXM4-80GB", 312e12, 2.039e12, 80e9, "NVIDIA A100 datasheet (BF16 dense 312 TFLOP/s, HBM2e 2.039 TB/s)"
)
H100 = Device(
    "H100-SXM5-80GB", 989.4e12, 3.35e12, 80e9, "NVIDIA H100 datasheet (BF16 dense 989 TFLOP/s, HBM3 3.35 TB/s)"
)


@dataclass
class Op:
    kind: str  # matmul | memory
    flops: float  # at PROBE_ROWS rows
    numel: float  # input + output elements at PROBE_ROWS rows
    saved: float  # elements kept for backward


def leaf_ops(module: nn.Module, run) -> list[Op]:
    """The leaf modules ``run()`` calls inside ``module``, as ops (forward hooks, no gradients)."""
    ops: list[Op] = []

    def hook(mod, args, out):
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if not isinstance(out, torch.Tensor):
            return
        n_in = x.numel() if x is not None else 0
        if isinstance(mod, nn.Conv2d | nn.Conv1d | nn.ConvTranspose2d):
            fan = mod.in_channels // mod.groups * int(torch.tensor(mod.kernel_size).prod())
            fill = min(1.0, mod.out_channels / TILE)
            ops.append(Op("matmul", 2.0 * out.numel() * fan / fill, n_in + out.numel(), n_in))
        elif isinstance(mod, nn.Linear):
            fill = min(1.0, mod.out_features / TILE)
            ops.append(Op("matmul", 2.0 * out.numel() * mod.in_features / fill, n_in + out.numel(), n_in))
        else:
            ops.append(Op("memory", 0.0, n_in + out.numel(), n_in))

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return ops


def op_seconds(ops: list[Op], rows: int, dev: Device, eff: Efficiency, backward: bool = False) -> float:
    scale, times = rows / PROBE_ROWS * (2 if backward else 1), []
    for op in ops:
        mem = op.numel * scale * eff.dtype_bytes / (dev.memory_bandwidth * eff.memory)
        compute = op.flops * scale / (dev.peak_flops * eff.matmul)
        per_op = eff.op_floor_s * (2 if backward else 1)  # a backward is two ops (input and weight gradients)
        times.append(max(compute, mem, per_op))
    return sum(times)


class NetModel:
    """The unit and head ops of one configured net and method, probed once; :meth:`units` at any batch.
    ``like``: a model of the same net (another method or K) whose unit probes are reused."""

    def __init__(self, cfg, data: DataInfo, like: NetModel | None = None):
        if like is None:
            self.backbone = backbone_for(cfg, data).eval()
            self.unit_ops, self.out_numel, self.params, self.outputs = [], [], [], []
            x = torch.rand(PROBE_ROWS, *data.input_shape)
            for unit in self.backbone.units:
                holder = {}
                self.unit_ops.append(leaf_ops(unit, lambda: holder.setdefault("y", unit(x))))  # noqa: B023
                x = holder["y"]
                self.outputs.append(x)
                self.out_numel.append(x.numel() / PROBE_ROWS)
                self.params.append(sum(p.numel() for p in unit.parameters()))
        else:
            self.backbone, self.unit_ops, self.out_numel = like.backbone, like.unit_ops, like.out_numel
            self.params, self.outputs = like.params, like.outputs
        raw = torch.rand(PROBE_ROWS, *data.input_shape)
        batch = Batch(raw, torch.randint(0, data.num_classes, (PROBE_ROWS,)), raw)
        n, k = self.backbone.num_units, cfg.split.num_modules
        self.head_ops, self.head_params = [], []
        for u, y in enumerate(self.outputs):
            head = (
                CrossEntropyHead(self.backbone.classifier) if u == n - 1 else _head_at(cfg, data, self.backbone, u, k)
            )
            if head is None:
                self.head_ops.append([])
                self.head_params.append(0)
                continue
            head.eval()
            self.head_ops.append(leaf_ops(head, lambda: head(y, batch)))  # noqa: B023
            self.head_params.append(sum(p.numel() for p in head.parameters()))

    def units(self, rows: int, dev: Device, eff: Efficiency) -> Units:
        per_row = eff.dtype_bytes * rows / PROBE_ROWS
        return Units(
            rows=rows,
            fwd=[op_seconds(ops, rows, dev, eff) for ops in self.unit_ops],
            bwd=[op_seconds(ops, rows, dev, eff, backward=True) for ops in self.unit_ops],
            head=[op_seconds(o, rows, dev, eff) + op_seconds(o, rows, dev, eff, True) for o in self.head_ops],
            out_bytes=[n * rows * eff.dtype_bytes for n in self.out_numel],
            param_bytes=[p * eff.param_bytes for p in self.params],
            saved_bytes=[sum(op.saved for op in ops) * per_row for ops in self.unit_ops],
            head_saved_bytes=[sum(op.saved for op in ops) * per_row for ops in self.head_ops],
            head_param_bytes=[p * eff.param_bytes for p in self.head_params],
            # SGD with momentum reads weight, gradient and momentum and writes two: 5 passes per parameter byte
            optimizer_s_per_byte=5 / (dev.memory_bandwidth * eff.memory),
        )
