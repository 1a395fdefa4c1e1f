"""How a stage computes (``train.precision``, ``train.channels_last``, ``train.compile``): the compute dtype
(autocast), fp16 loss scaling, memory format, compilation.

``train.precision`` picks the dtype ``torch.autocast`` runs forwards and losses in (``fp32``: autocast off).
Autocast wraps only forward and loss; backward follows the forward's dtypes by itself, and parameters,
gradients, losses and optimizer state stay fp32 (mixed precision, not half-precision training).

Every module's output is cast to the compute dtype as it leaves the module (``boundary``), in every mode:
that is what a pipeline sends (bf16 halves the bytes on the wire), and doing the same cast in one process
keeps pipeline = sequential exact in bf16 (invariant 1: same ops on the same dtypes). Gradients crossing a
module boundary are handed over *unscaled* in ``grad_dtype``: bf16 needs no loss scaling (fp32's exponent
range), fp16 does, and each local module has its own optimizer stepping on its own, so each gets its own
``GradScaler`` (``scalers``); an fp16 gradient is unscaled as it leaves one module (into fp32, where small
values survive) and scaled by the next module's factor as it enters, so modules never see each other's scale.
An overflow in a gradient that crosses modules makes the module it came from skip its step and back off; the
modules it reaches are non-finite too, so they skip their step and halve their scale as well (conservative:
one backs off that need not have).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Numerics:
    """One stage's: ``precision`` (fp32|bf16|fp16) on ``device``, ``channels_last``, ``compiled`` modules, one
    loss scaler per optimizer (fp16 only; None otherwise)."""

    def __init__(
        self,
        precision: str,
        device: torch.device,
        channels_last: bool = False,
        num_optimizers: int = 0,
        compiled: bool = False,
    ):
        self.name, self.dtype, self.device_type = precision, DTYPES[precision], device.type
        self.channels_last, self.compiled = channels_last, compiled
        self.scalers = [torch.amp.GradScaler(device.type) for _ in range(num_optimizers)] if self.fp16 else None
        self.guard = None  # train.nan_policy (runtime/guard.py), set by the trainer: sees every optimizer step
        for scaler in self.scalers or []:
            scaler.scale(torch.zeros((), device=device))  # makes its scale tensor now (torch makes it lazily)

    @classmethod
    def of(cls, cfg, device: torch.device, num_optimizers: int = 0) -> Numerics:
        t = cfg.train
        return cls(t.precision, device, t.channels_last, num_optimizers, t.compile)

    @property
    def fp16(self) -> bool:
        return self.dtype == torch.float16

    @property
    def grad_dtype(self) -> torch.dtype:
        """Gradients between modules (and on the wire): unscaled, so fp16's go as fp32."""
        return torch.float32 if self.fp16 else self.dtype

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def boundary(self, h: torch.Tensor) -> torch.Tensor:
        """A module's output as the next module (or stage) receives it."""
        return h.to(self.dtype) if h.is_floating_point() else h

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """An input entering a stage: channels_last when asked (a no-op when it already is)."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def dynamic_rows(self, *tensors) -> None:
        """Compiled modules see these tensors' batch dimension as dynamic from the first call, so the last,
        smaller batch of an epoch reuses the graph instead of compiling a second one."""
        if self.compiled:
            for t in tensors:
                if t is not None:
                    torch._dynamo.maybe_mark_dynamic(t, 0)

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Parameters in the chosen memory format (4-D weights only; the rest is unchanged)."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    # ---------------------------------------------------------------- loss scaling (fp16), per optimizer

    def scale(self, j: int, loss: torch.Tensor) -> torch.Tensor:
        return self.scalers[j].scale(loss) if self.scalers else loss

    def grad_out(self, j: int, g: torch.Tensor, params=()) -> torch.Tensor:
        """A gradient leaving optimizer ``j``'s module by its input: unscaled. With fp16, an overflow in it is
        this module's too: a non-finite ``g`` turns one of its ``params``' gradients non-finite (on the device,
        ``+ 0 * sum(g)``), so its scaler skips the step and backs off, as it would for its own overflow."""
        if not self.scalers:
            return g
        poison = g.float().sum() * 0  # 0, or NaN when g holds an inf or NaN
        held = next((p for p in params if p.grad is not None), None)
        if held is not None:
            held.grad.add_(poison)
        return g.float() / self._factor(j)

    def grad_in(self, j: int, g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """An unscaled gradient entering optimizer ``j``'s module at its output ``like``."""
        if self.scalers:
            g = g * self._factor(j)
        return g.to(like.dtype)

    def _factor(self, j: int) -> torch.Tensor:
        # The scale as a device tensor (no host read); GradScaler has no public accessor that does not sync.
        return self.scalers[j]._get_scale_async()

    def step(self, j: int, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer ``j``'s step; with fp16 skipped when its gradients overflowed, and its scale updated.
        (GradScaler decides on the host: one read of its overflow flag per optimizer step, in fp16 only.)"""
        if self.guard is not None:
            self.guard.optimizer_step(j, optimizer)
        if not self.scalers:
            optimizer.step()
            return
        if all(p.grad is None for group in optimizer.param_groups for p in group["params"]):
            return  # nothing reached this module on this batch (GradScaler refuses a step without gradients)
        self.scalers[j].step(optimizer)
        self.scalers[j].update()

    def state_dict(self) -> list[dict]:
        return [s.state_dict() for s in self.scalers] if self.scalers else []

    def load_state_dict(self, states: list[dict]) -> None:
        for scaler, state in zip(self.scalers or [], states or [], strict=False):
            scaler.load_state_dict(state)


FP32 = Numerics("fp32", torch.device("cpu"))  # the default: autocast off, no scaling, memory format as is
