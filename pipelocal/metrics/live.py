"""Live per-stage metrics to rank 0 without a collective on the hot path (DESIGN §4, No stalls).

Every other rank ``isend``s a small float64 vector to rank 0 on the ``stats`` group, and only when its
previous report has been delivered: it never waits. Rank 0 keeps one receive posted per rank and reads
whatever has arrived when it redraws. The last report of each rank is marked final, so that at the end
no send or receive is left unmatched.
"""

from __future__ import annotations

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


class LiveReporter:
    """On ranks > 0: report when the previous report is through, else skip."""

    def __init__(self, group):
        self.group = group
        self._work = None
        self._buffer = None

    def report(self, values: dict, final: bool = False) -> None:
        if self._work is not None:
            if not final and not self._work.is_completed():
                return  # rank 0 has not read the last one yet: skip rather than wait
            self._work.wait()
        self._buffer = torch.tensor(
            [float(values.get(f, 0.0)) for f in FIELDS[:-1]] + [float(final)], dtype=torch.float64
        )
        self._work = dist.isend(self._buffer, 0, group=self.group)
        if final:
            self._work.wait()


class LiveCollector:
    """On rank 0: the newest report of every stage."""

    def __init__(self, group, num_stages: int):
        self.group = group
        self.latest: dict[int, dict] = {}
        self._buffers = {r: torch.zeros(len(FIELDS), dtype=torch.float64) for r in range(1, num_stages)}
        self._works = {r: dist.irecv(b, r, group=group) for r, b in self._buffers.items()}

    def poll(self) -> dict[int, dict]:
        for rank, work in list(self._works.items()):
            if work.is_completed():
                self._read(rank)
        return self.latest

    def drain(self) -> None:
        """Wait for every rank's final report."""
        while self._works:
            rank, work = next(iter(self._works.items()))
            work.wait()
            self._read(rank)

    def _read(self, rank: int) -> None:
        row = dict(zip(FIELDS, self._buffers[rank].tolist()))
        self.latest[rank] = row
        if row["final"]:
            del self._works[rank]
        else:
            self._works[rank] = dist.irecv(self._buffers[rank], rank, group=self.group)
