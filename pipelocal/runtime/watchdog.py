"""A stage's watchdog: a stalled stage (SIGSTOPped, frozen) ends within ``pipeline.timeout_s`` plus a second.

A stopped process runs no code at all, not even a thread, so the watchdog is a separate tiny process (no
torch: it starts in milliseconds) that a thread of the stage feeds a byte every ``BEAT_S`` through a pipe. A
training step that takes long still beats (the thread runs beside it); only a process that is not scheduled
at all falls silent. When no byte has come for ``timeout_s``, the watchdog says so in one line and SIGKILLs
the stage's process group (under torchrun each worker leads its own: the stage, its data workers and the
watchdog), so torchrun sees that stage fail first and names it, instead of waiting out its own 30 s grace
for a process that cannot hear its SIGTERM. When the stage exits in any way, the pipe closes and the
watchdog ends with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

BEAT_S = 0.5

_SCRIPT = r"""
import os, select, signal, sys
fd, limit, pid, stage = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the stage's to handle (a checkpoint), not ours
while True:
    ready, _, _ = select.select([fd], [], [], limit)
    if ready:
        if not os.read(fd, 4096):
            sys.exit(0)  # the stage exited
        continue
    print(f"stage {stage} stopped responding for {limit:.0f} s (stopped or frozen; pipeline.timeout_s): "
          "its watchdog ends it", file=sys.stderr, flush=True)
    os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
    sys.exit(0)
"""


class Watchdog:
    """Started by a stage of a multi-process job; nothing to stop (it ends when the stage does)."""

    def __init__(self, timeout_s: float, stage_index: int):
        read, self._write = os.pipe()
        args = [sys.executable, "-c", _SCRIPT, str(read), str(timeout_s), str(os.getpid()), str(stage_index)]
        self.process = subprocess.Popen(args, pass_fds=(read,), stdin=subprocess.DEVNULL)
        os.close(read)
        self._lock, self._closed = threading.Lock(), False  # never a write to a closed (reused) descriptor
        self._thread = threading.Thread(target=self._beat, name="watchdog-beat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                try:
                    os.write(self._write, b".")
                except OSError:  # the watchdog is gone (EPIPE): nothing left to feed
                    return
            time.sleep(BEAT_S)

    def close(self) -> None:
        """At the end of a job: the watchdog exits (a closed pipe), and is waited for."""
        with self._lock:
            self._closed = True
            os.close(self._write)
        self.process.wait(timeout=5)
