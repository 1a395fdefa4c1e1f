"""One batch of the sequential protocol (the papers', on one device), as a plain function: the reference the
invariant tests compare the pipeline with, and what step benchmarks time. Sequential *mode* runs the same
``LocalStep`` through the stage loop (schedules/stage_loop.py) with one stage and no links.

Per batch, module by module: forward on the detached output of the one before, its local loss, its
backward at once (so one module's graph is alive at a time), then the next module.
"""

from __future__ import annotations

import torch

from pipelocal.data import Batch
from pipelocal.metrics.memory import SavedTensorMeter
from pipelocal.runtime import LocalNet
from pipelocal.runtime.local_net import heads_after_step
from pipelocal.runtime.numerics import FP32, Numerics
from pipelocal.runtime.spans import Guide
from pipelocal.runtime.step import StepResult, local_step


def train_step(
    net: LocalNet,
    batch: Batch,
    optimizers: list[torch.optim.Optimizer],
    per_module: bool,
    meter: SavedTensorMeter | None = None,
    guide: Guide | None = None,
    numerics: Numerics = FP32,
) -> StepResult:
    """One batch through every module; ``per_module`` steps each optimizer right after its last backward
    (DGL); ``guide`` makes it a guidance step; ``numerics``: precision, loss scaling, memory format. Heads that
    follow other units (MLAAN's EMA) update after."""
    result = local_step(
        net.local_modules, batch.x, batch, optimizers, per_module, meter, guide=guide, numerics=numerics
    )
    heads_after_step(net.local_modules, net.unit)
    return result
