"""Time spent waiting on the wire, measured where the wait happens.

On CPU (gloo, or host-staged CUDA stages) a wait blocks the host: host time around it is the wait. On NCCL,
``work.wait()`` returns at once and only makes the current stream wait for the communication, so host time
would measure nothing (or the host's lead over the device). There the wait is timed on the stream, between a
CUDA event recorded before ``wait()`` and one after: the time the stage's compute stream sat waiting for the
bytes. The events are read when ``seconds`` is asked for (epoch ends, log windows), never per step, so timing
adds no device sync to the hot path.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class WaitClock:
    """Seconds waited, summed. ``on_stream``: time the current CUDA stream, not the host."""

    def __init__(self, device: torch.device, on_stream: bool = False):
        self.on_stream = on_stream and device.type == "cuda"
        self._seconds = 0.0
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._start = None

    @contextmanager
    def measure(self):
        self.begin()
        yield
        self.end()

    def begin(self) -> None:
        """A wait starts now (a later ``begin`` before ``end`` moves the start: the last one counts)."""
        if self.on_stream:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def end(self) -> None:
        """The wait begun last ends now; without a ``begin`` since the last ``end``, nothing is counted."""
        start, self._start = self._start, None
        if start is None:
            return
        if self.on_stream:
            after = torch.cuda.Event(enable_timing=True)
            after.record()
            self._pending.append((start, after))
        else:
            self._seconds += time.perf_counter() - start

    @property
    def seconds(self) -> float:
        """The total so far (on a stream: waits for the recorded events, which the stream has passed or soon will)."""
        for before, after in self._pending:
            after.synchronize()
            self._seconds += before.elapsed_time(after) / 1e3
        self._pending.clear()
        return self._seconds
