"""Host staging: the messages of stages that share a GPU travel over gloo through pinned host buffers.

NCCL refuses two ranks on one GPU, and gloo's point-to-point takes host memory only, so a stage on
``cuda:k`` that talks over gloo copies what it sends to a pinned host buffer, and what it receives from
one. Copies are ``non_blocking`` from and to pinned memory, on the stage's current stream, so they are
ordered with its compute without a device-wide sync:

- send: the device-to-host copy is queued after the kernels that made the tensor, then the host waits
  for that copy alone (an event) before gloo may read the buffer. The host waits here because gloo
  sends from host memory at once; with one GPU shared by several stages the others' kernels fill the gap;
- receive: gloo writes the host buffer; the host-to-device copy is queued on the stream and the compute
  that follows waits for it in stream order; an event marks when the host buffer may be written again.

On a CPU device every function here is the identity, so one code path serves both.
"""

from __future__ import annotations

import torch


def staged(channel, device: torch.device) -> bool:
    """Does this channel carry ``device`` tensors through host buffers?"""
    return bool(getattr(channel, "staged", False)) and device.type == "cuda"


def host_buffer(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host buffer for a staged message's tensor (pinned where CUDA is: the copies can be asynchronous)."""
    return torch.empty(shape, dtype=dtype, pin_memory=device.type == "cuda")


def to_host(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Pinned host copies of ``tensors``, complete when this returns (gloo reads them at once)."""
    if device.type != "cuda":
        return tensors
    copies = [host_buffer(t.shape, t.dtype, device).copy_(t, non_blocking=True) for t in tensors]
    done = torch.cuda.Event()
    done.record()
    done.synchronize()  # the copies only: kernels queued after them keep running
    return copies


class Landing:
    """The device side of a staged receive slot: host buffers gloo writes into, device buffers the compute reads.
    ``free`` waits until the last host-to-device copy out of the host buffers is done (before gloo may write
    them again)."""

    def __init__(self, device_buffers: list[torch.Tensor], device: torch.device):
        self.device = device
        self.device_buffers = device_buffers
        self.host = [host_buffer(b.shape, b.dtype, device) for b in device_buffers]
        self._copied: torch.cuda.Event | None = None

    def free(self) -> list[torch.Tensor]:
        """The host buffers, safe to post a receive into."""
        if self._copied is not None:
            self._copied.synchronize()
            self._copied = None
        return self.host

    def land(self) -> list[torch.Tensor]:
        """Queue the copies of what arrived onto the device; the stream's later compute sees them."""
        for host, dev in zip(self.host, self.device_buffers, strict=True):
            dev.copy_(host, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return self.device_buffers
