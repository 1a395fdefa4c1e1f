"""Deterministic mode (``train.deterministic``) on every device, and the record of what could not be made so.

On CPU, ``torch.use_deterministic_algorithms(True)`` is the whole story. On CUDA three more things matter:
cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first handle is made (else deterministic mode raises
at the first matmul); TF32 (on by default for cuDNN convolutions) rounds differently from fp32, which
breaks fp32 tolerances; and some backward kernels (AdaptiveAvgPool2d, bilinear upsampling) have no
deterministic CUDA version, where torch raises. There deterministic mode runs with ``warn_only`` and
:class:`NondeterministicOps` collects the ops torch warned about, for the run log to name.
"""

from __future__ import annotations

import os
import re
import warnings

import torch

_WARNING = re.compile(r"^(\S+) does not have a deterministic implementation")


def configure(deterministic: bool, device: torch.device) -> None:
    """Set deterministic mode for ``device``; call before the first CUDA kernel of the process."""
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(deterministic, warn_only=deterministic and device.type == "cuda")
    if deterministic and device.type == "cuda":
        NONDETERMINISTIC.start()


class NondeterministicOps:
    """The ops torch reported as having no deterministic implementation (``warn_only``), each named once."""

    def __init__(self):
        self.ops: list[str] = []
        self._previous = None

    def start(self) -> None:
        if self._previous is not None:
            return
        self._previous = warnings.showwarning
        warnings.filterwarnings("always", message=r".*does not have a deterministic implementation")
        warnings.showwarning = self._show

    def _show(self, message, category, filename, lineno, file=None, line=None):
        found = _WARNING.match(str(message))
        if found is None:
            return self._previous(message, category, filename, lineno, file, line)
        if found.group(1) not in self.ops:
            self.ops.append(found.group(1))
        return None

    def line(self) -> str | None:
        """What the run log says, or None when every op ran deterministically."""
        if not self.ops:
            return None
        return (
            "deterministic mode: no deterministic CUDA kernel for " + ", ".join(self.ops) + " (run with warn_only; "
            "these ops may differ between runs)"
        )


NONDETERMINISTIC = NondeterministicOps()
