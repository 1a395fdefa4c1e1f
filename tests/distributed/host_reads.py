"""Count reads of tensor values by the host while training steps run (issue #14): on CUDA each is a
device-to-host sync that drains the queue the host had run ahead, so a stage's step must make none.

:class:`HostReads` patches ``torch.Tensor``'s host-reading methods (and ``torch.cuda.synchronize``) with
counting wrappers; :func:`count_step_reads` counts during every training step of a pipelocal run
(``StageLoop.step`` and ``StageStats.add``), not during logging, evaluation or epoch ends, which may read.
``.numpy()`` is not counted: it is the sanctioned host read of a host buffer (it raises on a CUDA tensor).
On CUDA the steps also run under ``torch.cuda.set_sync_debug_mode("error")``, which catches the syncs no
Python method shows (a copy from pageable memory, ``nonzero``).
"""

from __future__ import annotations

import threading
import traceback
from contextlib import contextmanager

import torch

from pipelocal.metrics.stats import StageStats
from pipelocal.schedules.stage_loop import StageLoop

READS = ("item", "tolist", "cpu", "__int__", "__bool__", "__float__", "__index__")
# Threads off the hot path by design, each reading host tensors it received on a gloo group: preemption.py's
# flag exchange, metrics/live.py's reporter and rank 0's collectors. Any other thread counts (replay readers).
IGNORED_THREADS = ("preemption-flags", "live-")


class HostReads:
    """While entered, every call of a host-reading method made inside a ``counting()`` window (by any thread
    but ``IGNORED_THREADS``) is recorded in ``calls`` with a short stack; the methods are restored on exit."""

    def __init__(self):
        self.calls: list[str] = []
        self._active = 0
        self._local = threading.local()  # nesting: a read inside a read counts once
        self._saved: list[tuple[object, str, object]] = []

    def __enter__(self) -> HostReads:
        for name in READS:
            self._patch(torch.Tensor, name, name)
        self._patch(torch.Tensor, "to", "to('cpu')", _names_cpu)
        self._patch(torch.cuda, "synchronize", "torch.cuda.synchronize")
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved = []

    @contextmanager
    def counting(self):
        """Count in this window; on CUDA, a sync the methods do not show raises (sync debug mode)."""
        cuda = torch.cuda.is_available()
        before = torch.cuda.get_sync_debug_mode() if cuda else 0
        self._active += 1
        if cuda:
            torch.cuda.set_sync_debug_mode("error")
        try:
            yield self
        finally:
            self._active -= 1
            if cuda:
                torch.cuda.set_sync_debug_mode(before)

    def _patch(self, owner, name: str, label: str, when=None) -> None:
        original = getattr(owner, name)
        reads = self

        def counted(*args, **kwargs):
            local, thread = reads._local, threading.current_thread().name
            outer = not getattr(local, "inside", False)
            if (
                reads._active
                and outer
                and not thread.startswith(IGNORED_THREADS)
                and (when is None or when(args, kwargs))
            ):
                stack = traceback.format_list(traceback.extract_stack(limit=5)[:-1])
                reads.calls.append(f"{label} in thread {thread}:\n" + "".join(stack))
            local.inside = True
            try:
                return original(*args, **kwargs)
            finally:
                local.inside = not outer

        self._saved.append((owner, name, original))
        setattr(owner, name, counted)


def _names_cpu(args, kwargs) -> bool:
    """``.to("cpu")`` in code is a host copy; a device object is not counted (on CPU runs it is the stage's)."""
    return any(isinstance(a, str) and a.startswith("cpu") for a in (*args[1:2], kwargs.get("device")))


def count_step_reads(run, reads: HostReads) -> tuple[object, int]:
    """``run()`` with ``reads`` counting during each training step; returns its result and the steps counted."""
    steps = 0

    def window(method, is_step: bool):
        def counted(*args, **kwargs):
            nonlocal steps
            steps += is_step
            with reads.counting():
                return method(*args, **kwargs)

        return counted

    originals = StageLoop.step, StageStats.add
    StageLoop.step, StageStats.add = window(StageLoop.step, True), window(StageStats.add, False)
    try:
        with reads:
            return run(), steps
    finally:
        StageLoop.step, StageStats.add = originals
