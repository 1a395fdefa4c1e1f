"""Memory accounting that works on any device: bytes alive in tensors saved for backward (docs/design.md).

``SavedTensorMeter`` wraps forward passes in ``torch.autograd.graph.saved_tensors_hooks``. Each saved
tensor is held by a small token whose release (when autograd frees the graph after backward) lowers the
live count, so ``peak`` is the true high-water mark of activation memory. Storages are counted once, and
parameters (which autograd also saves) are excluded: they are counted by ``static_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class _Saved:
    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: torch.Tensor, key, meter: SavedTensorMeter):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self):
        self.meter._release(self.key)


class SavedTensorMeter:
    """Live and peak bytes of activations saved for backward."""

    def __init__(self, parameters: Iterable[torch.Tensor] = ()):
        self.live = 0
        self.peak = 0
        self._storages: dict[tuple, list[int]] = {}  # key -> [references, bytes]
        self._excluded = {_key(p) for p in parameters}

    def hooks(self):
        """Context manager: count what autograd saves inside it."""
        return torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def reset_peak(self) -> None:
        self.peak = self.live

    def _pack(self, tensor: torch.Tensor):
        key = _key(tensor)
        if key in self._excluded:
            return tensor
        entry = self._storages.get(key)
        if entry is None:
            nbytes = tensor.untyped_storage().nbytes()
            self._storages[key] = [1, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        else:
            entry[0] += 1
        # Detached: the hook sees the live tensor with its grad_fn, and holding that for a saved output is a
        # cycle through C++ (output -> grad_fn -> saved variable -> token -> output) that no gc can free once
        # a graph is kept with retain_graph=True and never walked again (a head's graph under MLAAN's cascade
        # or guidance's add). Autograd puts the grad_fn back on unpack, so detaching loses nothing.
        return _Saved(tensor.detach(), key, self)

    def _release(self, key) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._storages[key]


def _unpack(saved):
    return saved.tensor if isinstance(saved, _Saved) else saved


def _key(tensor: torch.Tensor) -> tuple:
    return (tensor.device, tensor.untyped_storage().data_ptr())


def static_bytes(module: nn.Module, optimizers: Iterable[torch.optim.Optimizer] = ()) -> dict[str, int]:
    """Bytes of parameters, their gradients, and optimizer state."""
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    grads = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    state = 0
    for opt in optimizers:
        for per_param in opt.state.values():
            state += sum(v.numel() * v.element_size() for v in per_param.values() if torch.is_tensor(v))
    return {"param_bytes": params, "grad_bytes": grads, "optim_state_bytes": state}


def cuda_peak_bytes(device: torch.device) -> int | None:
    """``torch.cuda.max_memory_allocated`` on CUDA, else None."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
