"""Live per-stage metrics to rank 0 without a collective on the hot path (DESIGN §4, No stalls).

Each rank > 0 has a reporter thread that sends the newest row (a float64 vector) to rank 0 on the
``stats`` group; the training loop only drops the row into a one-slot mailbox, so it never waits and
older rows are simply replaced. Rank 0 has one receiving thread per rank keeping the newest row.
Threads are needed because gloo's point-to-point ``Work.is_completed()`` only turns true inside
``wait()`` (pytorch/pytorch#30723, #41428), so there is no polling from the loop itself. Each rank's
last row is marked final, so at the end no send or receive is left unmatched.
"""

from __future__ import annotations

import threading

import torch
import torch.distributed as dist

FIELDS = (
    "stage",
    "epoch",
    "step",
    "steps",
    "samples_per_s",
    "compute_frac",
    "recv_wait_frac",
    "send_wait_frac",
    "staleness",
    "loss",
    "saved_mib",
    "final",
)


def _row(values: dict, final: bool) -> torch.Tensor:
    return torch.tensor([float(values.get(f, 0.0)) for f in FIELDS[:-1]] + [float(final)], dtype=torch.float64)


class LiveReporter:
    """On ranks > 0: ``report`` never blocks, except the final one, which waits until rank 0 has it."""

    def __init__(self, group):
        self.group = group
        self._slot: torch.Tensor | None = None
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="live-reporter", daemon=True)
        self._thread.start()

    def report(self, values: dict, final: bool = False) -> None:
        with self._ready:
            self._slot = _row(values, final)
            self._ready.notify()
        if final:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._slot is not None)
                row, self._slot = self._slot, None
            dist.isend(row, 0, group=self.group).wait()
            if row[-1]:
                return


class LiveCollector:
    """On rank 0: the newest row of every other stage, kept by one receiving thread per rank."""

    def __init__(self, group, num_stages: int):
        self.group = group
        self.latest: dict[int, dict] = {}
        self._threads = [
            threading.Thread(target=self._run, args=(r,), name=f"live-{r}", daemon=True) for r in range(1, num_stages)
        ]
        for t in self._threads:
            t.start()

    def poll(self) -> dict[int, dict]:
        return dict(self.latest)

    def drain(self) -> None:
        """Wait for every rank's final row."""
        for t in self._threads:
            t.join()

    def _run(self, rank: int) -> None:
        buffer = torch.zeros(len(FIELDS), dtype=torch.float64)
        while True:
            dist.irecv(buffer, rank, group=self.group).wait()
            row = dict(zip(FIELDS, buffer.tolist()))
            self.latest[rank] = row
            if row["final"]:
                return
