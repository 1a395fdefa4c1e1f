"""torch.profiler over a window of training steps, on every rank: one trace per process, for TensorBoard or Perfetto.

``metrics.profile: [first, last]`` records this process's global training steps ``first`` to ``last`` (CPU
ops, and CUDA on a GPU; no shapes, no stacks), each marked ``ProfilerStep#<step>``. What happens between
epochs (evaluation, checkpoints) is left out: collection pauses at an epoch's end and resumes at its next
step inside the window. The trace is ``<run dir>/profile/stage<s>-replica<r>.<time>.pt.trace.json``
(torch.profiler's TensorBoard naming; a resumed run adds its own file beside the first).

When it is written: a one-stage process writes it once step ``last`` is done. A pipeline stage writes it
when the run ends, because its receives are posted ahead and some posted inside the window complete after
it: torch.profiler must outlive them (each holds a record of the profiler's, which it fills in when it
completes; stopping the profiler earlier frees that record and the write corrupts the heap). Until the end,
collection is merely off (torch then warns, each time, that toggling CPU collection may misplace GPU events).
A run that ends by an error or a preemption before its trace is written leaves none.
Off, the trainer holds no profiler and its loop pays one ``is None`` test per step.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function, tensorboard_trace_handler


class StepProfiler:
    """This process's profiler window: ``at(step)`` before each training step, ``pause`` at an epoch's end,
    ``close`` at the run's end. ``defer``: write the trace at ``close`` only (a pipeline stage)."""

    def __init__(self, window: list[int], folder: Path, worker: str, device: torch.device, defer: bool = False):
        self.first, self.last = window
        self.folder, self.worker, self.defer = Path(folder), worker, defer
        self.activities = [ProfilerActivity.CPU]
        if device.type == "cuda" and torch.cuda.is_available():
            self.activities.append(ProfilerActivity.CUDA)
        self._prof: profile | None = None  # from the window's first step until the trace is written
        self._marker: record_function | None = None  # the open ProfilerStep#<step>
        self.recording = False
        self.done = False  # the window's last step is done: nothing more is recorded
        self.written = False

    @classmethod
    def of(cls, window: list[int] | None, run_dir: Path, place) -> StepProfiler | None:
        """The profiler of this process (``place``: metrics.run_log.Place), or None when ``window`` is None (off)."""
        if window is None:
            return None
        worker = f"stage{place.stage_index}-replica{place.replica}"
        return cls(window, Path(run_dir) / "profile", worker, place.device, defer=place.num_stages > 1)

    def at(self, step: int) -> None:
        """Before training step ``step`` (this process's global count): record it if it is in the window."""
        if self.done or step < self.first:
            return
        if step > self.last:
            self._finish()
            return
        if self._prof is None:
            self._prof = profile(
                activities=self.activities,
                on_trace_ready=tensorboard_trace_handler(str(self.folder), worker_name=self.worker),
                record_shapes=False,
            )
            self._prof.start()
        elif not self.recording:
            self._prof.toggle_collection_dynamic(True, self.activities)
        self.recording = True
        self._end_marker()
        self._marker = record_function(f"ProfilerStep#{step}")
        self._marker.__enter__()

    def pause(self, step: int) -> None:
        """At an epoch's end, ``step`` being the next one: stop collecting (the window is finished if ``step`` is
        past it)."""
        if step > self.last:
            self._finish()
        elif self.recording:
            self._end_marker()
            self._prof.toggle_collection_dynamic(False, self.activities)
            self.recording = False

    def close(self) -> None:
        """The run's end: write the trace if it is not yet written (a pipeline stage's, or a window the run cut)."""
        self._finish()
        if self._prof is not None and not self.written:
            self._write()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._end_marker()
        if self._prof is not None and not self.defer:
            self._write()
        elif self.recording:
            self._prof.toggle_collection_dynamic(False, self.activities)
        self.recording = False

    def _write(self) -> None:
        self.written = True
        self._prof.stop()  # calls on_trace_ready: exports the trace (a CUDA sync, outside any timed step)

    def _end_marker(self) -> None:
        if self._marker is not None:
            self._marker.__exit__(None, None, None)
            self._marker = None
