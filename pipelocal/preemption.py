"""Preemption: SIGTERM or SIGINT, to torchrun or to any one stage, stops the whole job after one common step
with a checkpoint, then exits with :data:`PREEMPTED` (75, EX_TEMPFAIL: "try again": resume with
``--train.resume=auto``).

A signal only sets a flag. A background thread per process shares the flags with one tiny gloo all-reduce
every ``PERIOD`` seconds (its own process group, off the training path). The step strategy turns the flag
into a common step: the first stage of a pipeline marks its next training message ``halt`` and every stage
stops after training it (the mark travels with the data, so nobody waits for anybody); lockstep modes (ddp,
gpipe, 1f1b) agree per step with an all-reduce. A second signal more than 3 s later ends the process at
once (a repeat within 3 s is the same event: SLURM signals every process of a job step and torchrun
forwards its own); so does the first one after ``PIPELOCAL_PREEMPT_GRACE_S`` seconds (default 25, inside
torchrun's 30 s before SIGKILL): a stage that cannot reach a common step (a peer died or hangs) must not
outlive the job. The handler runs when the main thread is back in Python: a stage blocked in a wait on a
stuck peer sees the signal at the process-group timeout at the latest (torchrun's SIGKILL comes first).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

PREEMPTED = 75
PERIOD = 0.2  # seconds between flag exchanges
GRACE_S = float(os.environ.get("PIPELOCAL_PREEMPT_GRACE_S", "25"))
BURST_S = 3.0  # a repeat within this long is the same event arriving twice, not a user insisting


class Preempted(Exception):
    """The job stopped on a signal after writing the checkpoint ``path`` (step ``step``)."""

    def __init__(self, step: int, path):
        super().__init__(f"preempted: checkpoint of step {step} written to {path}; resume with --train.resume=auto")
        self.step, self.path = step, path


class Preemption:
    """Signal handlers of this process and, with ``group``, the thread that shares the flag with the others."""

    def __init__(self, stage_index: int, group=None):
        self.stage_index, self.group = stage_index, group
        self.local = False  # a signal reached this process
        self.remote = False  # ... or another one
        self._done = False
        self._first = 0.0  # when the first signal came
        self._timer: threading.Timer | None = None  # after a signal: the grace period to reach a common step
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        self._thread = None
        if group is not None:
            self._thread = threading.Thread(target=self._share, name="preemption-flags", daemon=True)
            self._thread.start()

    def requested(self) -> bool:
        return self.local or self.remote

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.local and time.monotonic() - self._first > BURST_S:  # a second one: no checkpoint, go now
            print(f"stage {self.stage_index}: {name} again: exiting without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        if self.local:
            return  # the same event twice (SLURM signals every process of a step, torchrun then forwards its own)
        self.local, self._first = True, time.monotonic()
        self._timer = threading.Timer(GRACE_S, _give_up, (self.stage_index, name))
        self._timer.daemon = True
        self._timer.start()
        print(  # no promise here: a stage shut down after another one failed never reaches a checkpoint
            f"stage {self.stage_index}: {name}: stopping after a step every stage shares, to write a checkpoint "
            "there (send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    def _share(self) -> None:
        """Until every process has closed: OR of the flags, and whether anyone is still running."""
        try:
            while True:
                flags = torch.tensor([int(self.local), int(not self._done)])
                dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
                self.remote |= bool(flags[0])
                if not flags[1]:
                    return
                time.sleep(PERIOD)
        except Exception:  # noqa: BLE001 (a dead peer: the main loop reports it; this thread just ends)
            return

    def close(self) -> None:
        """After training: wait until every process is done with the flags, put the old handlers back."""
        self._done = True
        if self._thread is not None:
            self._thread.join()
        self.abandon()

    def abandon(self) -> None:
        """On the way out after an error or a preemption: the old handlers back, no waiting for the others
        (a dead or stuck peer would never finish the flag exchange)."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()  # the checkpoint is written (or an error is on its way out)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _give_up(stage_index: int, name: str) -> None:
    print(
        f"stage {stage_index}: no common step within {GRACE_S:.0f} s of {name} (a peer dead or stuck?): exiting "
        "without a checkpoint",
        file=sys.stderr,
        flush=True,
    )
    os._exit(128 + signal.SIGTERM)
