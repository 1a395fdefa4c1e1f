"""A stage: its consecutive local modules, their optimizers, and what it does with one batch."""

from __future__ import annotations

import torch
from torch import nn

from pipelocal.config import JobConfig
from pipelocal.data import Batch
from pipelocal.metrics.memory import SavedTensorMeter
from pipelocal.optim import build_optimizers
from pipelocal.runtime.local_net import LocalNet
from pipelocal.runtime.step import StepResult, eval_step, local_step


class Stage:
    """Modules ``[first, last)`` of a LocalNet built identically on every rank; the rest are dropped.

    State-dict keys keep the full net's names (``local_modules.i.*``), so a stage's checkpoint and a
    sequential run's are interchangeable.
    """

    def __init__(self, net: LocalNet, module_range: tuple[int, int], cfg: JobConfig, device: torch.device):
        self.first, self.last = module_range
        self.indices = list(range(self.first, self.last))
        self.output_shape = net.method.info.module_shapes[self.last - 1]  # from the build's dry forward
        for i in range(net.num_modules):
            if i not in self.indices:
                net.local_modules[i] = nn.Identity()  # free what other stages own
        self.modules = [net.local_modules[i].to(device) for i in self.indices]
        self.method = net.method
        self.optimizers = build_optimizers(self.modules, cfg.optim)
        self.per_module = cfg.optim.step == "per_module"
        self.forward_first = cfg.pipeline.stage_order == "forward_first"
        self.meter = SavedTensorMeter(p for m in self.modules for p in m.parameters()) if cfg.metrics.memory else None
        self.device = device

    def train(self, batch: Batch, on_output=None) -> StepResult:
        return local_step(
            self.modules, batch.x, batch, self.optimizers, self.per_module, self.meter, self.forward_first, on_output
        )

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        return eval_step(self.modules, x, y, correct)

    def set_mode(self, training: bool) -> None:
        for m in self.modules:
            m.train(training)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"local_modules.{i}.{k}": v.detach().cpu()
            for i, m in zip(self.indices, self.modules)
            for k, v in m.state_dict().items()
        }
