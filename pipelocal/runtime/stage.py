"""A stage: its consecutive local modules, their optimizers, and what it does with one batch."""

from __future__ import annotations

import copy

import torch
from torch import nn

from pipelocal import checkpoint
from pipelocal.config import JobConfig
from pipelocal.distributed.sync_norm import convert_sync_batchnorm
from pipelocal.metrics.memory import SavedTensorMeter, static_bytes
from pipelocal.optim import build_optimizers
from pipelocal.runtime.evaluation import score_heads
from pipelocal.runtime.local_net import LocalNet, heads_after_step
from pipelocal.runtime.numerics import Numerics
from pipelocal.runtime.step import LocalStep


class Stage:
    """Modules ``[first, last)`` of a LocalNet built identically on every rank; the rest are dropped.

    State-dict keys keep the full net's names (``local_modules.i.*``), so a stage's checkpoint and a
    sequential run's are interchangeable. Backbone units that this stage's heads follow but other stages
    own (MLAAN's EMA sources) are kept as copies, refreshed by the stage loop from their owners.
    """

    def __init__(
        self, net: LocalNet, module_range: tuple[int, int], cfg: JobConfig, device: torch.device, replicas=None
    ):
        self.first, self.last = module_range
        self.indices = list(range(self.first, self.last))
        self.output_shape = net.method.info.module_shapes[self.last - 1]  # from the build's dry forward
        own_units = range(net.local_modules[self.first].unit_range[0], net.local_modules[self.last - 1].unit_range[1])
        self.followed = sorted({u for i in self.indices for u in _followed(net.local_modules[i])})
        self.copies = {u: copy.deepcopy(net.unit(u)).to(device) for u in self.followed if u not in own_units}
        self.module_units = [list(m.unit_range) for m in net.local_modules]  # of every module, for the record
        for i in range(net.num_modules):
            if i not in self.indices:
                net.local_modules[i] = nn.Identity()  # free what other stages own
        self.net = net
        self.modules = [net.local_modules[i].to(device) for i in self.indices]
        self.replicas = replicas  # distributed/data_parallel.py: this stage's replicas (None: R = 1)
        if replicas is not None and cfg.pipeline.sync_batchnorm:
            for m in self.modules:
                convert_sync_batchnorm(m, replicas.group)
        self.method = net.method
        self.optimizers = build_optimizers(self.modules, cfg.optim)
        self.numerics = Numerics.of(cfg, device, len(self.optimizers))
        for m in [*self.modules, *self.copies.values()]:
            self.numerics.prepare(m)
        if replicas is not None:  # gradients as views of all-reduce buckets, in the params' final memory format
            for j, m in enumerate(self.modules):
                replicas.attach(j, [p for p in m.parameters() if p.requires_grad])
        if cfg.train.compile:
            compile_modules(self.modules)
        self.per_module = cfg.optim.step == "per_module"
        self.forward_first = cfg.pipeline.stage_order == "forward_first"
        self.asynchronous = cfg.guidance.mode == "async"
        self.meter = SavedTensorMeter(p for m in self.modules for p in m.parameters()) if cfg.metrics.memory else None
        self.device = device

    def begin(self, spans, weight: float = 1.0) -> LocalStep:
        """A training step of this stage's modules, given every module's term spans on this batch (and, with
        replicas, this replica's share of the global batch)."""
        return LocalStep(
            self.modules,
            self.optimizers,
            self.per_module,
            spans,
            self.meter,
            self.forward_first,
            self.asynchronous,
            self.numerics,
            self.replicas,
            weight,
        )

    def unit(self, u: int) -> nn.Module:
        """Backbone unit ``u``: live when this stage owns it, else the latest copy received."""
        return self.copies[u] if u in self.copies else self.net.unit(u)

    def after_step(self) -> None:
        heads_after_step(self.modules, self.unit)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        return score_heads(self.modules, x, y, correct, self.numerics)

    def set_mode(self, training: bool) -> None:
        for m in self.modules:
            m.train(training)

    def static_bytes(self) -> dict[str, int]:
        """Bytes of this stage's parameters, gradients and optimizer state."""
        return static_bytes(nn.ModuleList(self.modules), self.optimizers)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"local_modules.{i}.{k}": v.detach().cpu()
            for i, m in zip(self.indices, self.modules)
            for k, v in m.state_dict().items()
        }

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """This stage's keys of a checkpoint (pipelocal/checkpoint.py): the live tensors, under full-net names."""
        state = {}
        for i, module, opt in zip(self.indices, self.modules, self.optimizers):
            state |= {f"model.local_modules.{i}.{k}": v for k, v in module.state_dict().items()}
            names = {p: n for n, p in module.named_parameters()}
            for p, entries in opt.state.items():
                state |= {
                    f"optim.local_modules.{i}.{names[p]}.{k}": v for k, v in entries.items() if torch.is_tensor(v)
                }
        for u, unit in self.copies.items():
            state |= {f"ema.unit{u}.{k}": v for k, v in unit.state_dict().items()}
        return state

    def load_checkpoint(self, path, group=None) -> None:
        """Fill this stage's modules, optimizer state and unit copies from checkpoint ``path``, whatever the
        stage layout it was written with. A different network is refused, naming the keys that differ."""
        stored = checkpoint.stored_metadata(path)
        want = {}
        for i, module, opt in zip(self.indices, self.modules, self.optimizers):
            own = {f"model.local_modules.{i}.{k}": v for k, v in module.state_dict().items()}
            checkpoint.check_keys(path, own, stored, f"model.local_modules.{i}.")
            want |= own
            params = dict(module.named_parameters())
            prefix = f"optim.local_modules.{i}."
            for key, (shape, dtype) in stored.items():
                if key.startswith(prefix) and shape is not None:
                    name, entry = key[len(prefix) :].rsplit(".", 1)
                    tensor = torch.empty(shape, dtype=dtype, device=self.device if shape else "cpu")
                    opt.state[params[name]][entry] = want[key] = tensor
        for u, unit in self.copies.items():
            # Saved beside the follower (a pipeline run), else the owner's unit itself (saved in one process).
            start, i = next((a, i) for i, (a, b) in enumerate(self.module_units) if a <= u < b)
            for k, v in unit.state_dict().items():
                key = f"ema.unit{u}.{k}"
                want[key if key in stored else f"model.local_modules.{i}.body.{u - start}.{k}"] = v
        checkpoint.load(path, want, group)


def compile_modules(modules) -> None:
    """torch.compile each module's body and head in place (parameter names unchanged). The batch dimension is
    compiled dynamic from the first call (``mark_dynamic`` in the step), so the last, smaller batch of an epoch
    reuses the graph instead of compiling again. Modules compiled in place share dynamo's cache: a body takes up
    to three entries (training with its input requiring grad or not, evaluation), a head one or two, beyond
    dynamo's default limit of 8 from a few modules on; the limit is raised to fit (with a margin), so nothing
    falls back to eager."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 5 * len(modules) + 8)
    for m in modules:
        m.body.compile(dynamic=None)
        if m.head is not None:
            m.head.compile(dynamic=None)


def _followed(module) -> list[int]:
    """Units whose live weights this module's head follows (MLAAN: the EMA copy's source)."""
    head = module.head
    return [head.units[0]] if head is not None and getattr(head, "follow_ema", False) else []


def flat_state(module: nn.Module) -> torch.Tensor:
    """The floating tensors of ``module``'s state, in one vector (what travels on the weights channel)."""
    return torch.cat([t.detach().reshape(-1) for t in module.state_dict().values() if t.dtype.is_floating_point])


@torch.no_grad()
def load_flat_state(module: nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    for t in module.state_dict().values():
        if t.dtype.is_floating_point:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
