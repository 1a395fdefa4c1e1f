"""Live per-stage metrics to rank 0 without a collective on the hot path (docs/pipeline.md#no-stalls-from-bookkeeping).

Each rank > 0 has a reporter thread that sends its rows (float64 vectors) to rank 0 on the ``stats`` group, in
order; the training loop only appends the row to a queue, so it never waits, and no row is dropped. Rank 0 has one
receiving thread per rank keeping the newest row (the console's table) and every row not yet taken: live.jsonl gets
each row once. (It used to get a snapshot of the newest rows at rank 0's own intervals, so a stage that lags rank 0
appeared late, twice when no newer row had come, and not at all when two had come between rank 0's intervals, with a
one-slot mailbox replacing a row its reporter had not sent yet: the default job's stage 2 skipped step 100 and wrote
150 twice.)
Threads are needed because gloo's point-to-point ``Work.is_completed()`` only turns true inside
``wait()`` (pytorch/pytorch#30723, #41428), so there is no polling from the loop itself. Each rank's
last row is marked final, so at the end no send or receive is left unmatched.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipelocal.metrics.console import stage_row


@dataclass
class LiveRow:
    """A stage's newest figures in the epoch so far (fractions of its wall time since the epoch began)."""

    stage: int
    epoch: int
    step: int
    steps: int  # of the epoch (the plan's; a replay consumer may take more)
    samples_per_s: float
    compute_frac: float
    recv_wait_frac: float
    send_wait_frac: float
    staleness: float  # mean so far
    loss: float  # the stage's last head, this step (0.0 where the stage computes no loss)
    saved_mib: float
    lr: float = 0.0  # the stage's learning rate at this step

    def cells(self) -> list:
        return stage_row(
            self.stage,
            self.samples_per_s,
            self.compute_frac,
            self.recv_wait_frac,
            self.send_wait_frac,
            self.staleness,
            self.loss,
            self.saved_mib,
        )

    def to_tensor(self, final: bool) -> torch.Tensor:
        values = [float(getattr(self, f.name)) for f in dataclasses.fields(self)]
        return torch.tensor(values + [float(final)], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, row: torch.Tensor) -> tuple[LiveRow, bool]:
        *values, final = row.tolist()
        kinds = [f.type for f in dataclasses.fields(cls)]
        return cls(*[int(v) if k == "int" else v for v, k in zip(values, kinds)]), bool(final)

    @classmethod
    def size(cls) -> int:
        return len(dataclasses.fields(cls)) + 1  # + the final flag


class LiveReporter:
    """On ranks > 0: ``report`` never blocks, except the final one, which waits until rank 0 has it."""

    def __init__(self, group):
        self.group = group
        self._queue: collections.deque[torch.Tensor] = collections.deque()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="live-reporter", daemon=True)
        self._thread.start()

    def report(self, row: LiveRow | None, final: bool = False) -> None:
        """Queue a row; ``final`` (row may be None then) ends the thread once rank 0 has every row."""
        with self._ready:
            self._queue.append((row or LiveRow(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)).to_tensor(final))
            self._ready.notify()
        if final:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: bool(self._queue))
                row = self._queue.popleft()
            dist.isend(row, 0, group=self.group).wait()
            if row[-1]:
                return


class LiveCollector:
    """On rank 0: the newest row of every other stage, and the rows not yet taken, by one receiving thread per rank."""

    def __init__(self, group, ranks: list[int]):
        self.group = group
        self.latest: dict[int, LiveRow] = {}
        self._fresh: list[LiveRow] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(r,), name=f"live-{r}", daemon=True) for r in ranks]
        for t in self._threads:
            t.start()

    def poll(self) -> dict[int, LiveRow]:
        return dict(self.latest)

    def take(self) -> list[LiveRow]:
        """The rows received since the last call (each row once, in arrival order)."""
        with self._lock:
            rows, self._fresh = self._fresh, []
        return rows

    def drain(self) -> None:
        """Wait for every rank's final row."""
        for t in self._threads:
            t.join()

    def _run(self, rank: int) -> None:
        buffer = torch.zeros(LiveRow.size(), dtype=torch.float64)
        while True:
            dist.irecv(buffer, rank, group=self.group).wait()
            row, final = LiveRow.from_tensor(buffer)
            if final:
                return
            with self._lock:
                self._fresh.append(row)
            self.latest[rank] = row
