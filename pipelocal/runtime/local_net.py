"""A backbone cut into K local modules, each a body (consecutive units) and the head that trains it."""

from __future__ import annotations

import torch
from torch import nn

from pipelocal.config import JobConfig
from pipelocal.data import DataInfo
from pipelocal.methods import METHODS, CrossEntropyHead, Head, LocalMethod, NetInfo
from pipelocal.models import Backbone, build_model
from pipelocal.options import mode_traits
from pipelocal.split import module_ranges


class LocalModule(nn.Module):
    """Units ``[start, end)`` of the backbone and their head (None: trained through a later loss)."""

    def __init__(
        self,
        index: int,
        units: list[nn.Module],
        head: Head | None,
        unit_range: tuple[int, int],
        spans: tuple[int, ...] = (1,),
        is_final: bool = False,
    ):
        super().__init__()
        self.index = index
        self.unit_range = unit_range
        self.spans = spans  # of the head's loss terms: how many modules each trains, ending here
        self.is_final = is_final
        self.body = nn.Sequential(*units)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LocalNet(nn.Module):
    """The K local modules in order. Parameter names (``local_modules.i.body/head``) are the same in every mode."""

    def __init__(self, local_modules: list[LocalModule], method: LocalMethod):
        super().__init__()
        self.local_modules = nn.ModuleList(local_modules)
        self.method = method

    @property
    def num_modules(self) -> int:
        return len(self.local_modules)

    def unit(self, u: int) -> nn.Module:
        """Backbone unit ``u`` as it lives in its module's body."""
        for module in self.local_modules:
            start, end = getattr(module, "unit_range", (0, 0))  # a pipeline stage holds only its own
            if start <= u < end:
                return module.body[u - start]
        raise IndexError(f"no module here holds unit {u}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain inference: all bodies, then the final head's logits."""
        for module in self.local_modules:
            x = module(x)
        return self.local_modules[-1].head.logits(x)


def heads_after_step(modules, live_unit) -> None:
    """After a batch's optimizer steps, every head that follows other units (MLAAN's EMA) updates: the one
    place that happens, in one process (``live_unit``: the net's units) or on a stage (its own or copies)."""
    for module in modules:
        if module.head is not None:
            module.head.after_step(live_unit)


def backbone_for(cfg: JobConfig, data: DataInfo) -> Backbone:
    """The configured backbone, initialised from ``train.seed`` (so every rank builds the same one)."""
    torch.manual_seed(cfg.train.seed)
    return build_model(cfg.model.name, cfg.model.depth, tuple(data.input_shape), data.num_classes, cfg.model.norm)


def build_local_net(cfg: JobConfig, data: DataInfo, ranges: list[tuple[int, int]] | None = None) -> LocalNet:
    """Build the backbone from ``train.seed``, cut it into ``ranges`` (default: per ``split``; profiled
    balancing is decided by the caller, see runtime/profile.py), attach the method's heads."""
    backbone = backbone_for(cfg, data)
    if mode_traits(cfg.mode).one_module:  # e2e, ddp: one process holds the whole net as one module
        ranges = [(0, backbone.num_units)]
    elif ranges is None:
        if cfg.split.balance in ("time", "memory") and cfg.split.boundaries is None:
            raise ValueError("split.balance=time|memory needs ranges from runtime.profile.plan_split")
        ranges = module_ranges(cfg.split, backbone.num_units, cfg.model.depth, backbone.positions, cfg.data.name)
    return assemble(backbone, ranges, METHODS.get(cfg.method.name), cfg, data)


def assemble(backbone: Backbone, ranges, method_cls, cfg: JobConfig, data: DataInfo) -> LocalNet:
    shapes = backbone.unit_shapes(data.input_shape)
    info = NetInfo(
        num_modules=len(ranges),
        num_classes=data.num_classes,
        input_shape=tuple(data.input_shape),
        module_shapes=tuple(shapes[end - 1] for _, end in ranges),
        final_width=shapes[-1][0],
        module_ends=tuple(end - 1 for _, end in ranges),
        backbone=backbone,
    )
    method = method_cls(cfg.method, info)
    modules = []
    for i, (start, end) in enumerate(ranges):
        is_last = i == len(ranges) - 1
        head = CrossEntropyHead(backbone.classifier) if is_last else method.build_head(i)
        spans = method.loss_spans(i)
        modules.append(LocalModule(i, list(backbone.units[start:end]), head, (start, end), spans, is_last))
    return LocalNet(modules, method)
