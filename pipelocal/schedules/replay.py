"""Replay buffers between stages, for asynchronous-module ablations (DGL, Belilovsky et al. 2020, §4.3).

With ``pipeline.buffer: replay`` a consumer stage keeps the last M batches its producer sent (activations,
labels and context, on its own device). A reading thread receives everything the producer sends as soon as
it lands, so the producer never blocks: a full buffer drops its oldest entry (counted). The stage trains on
a buffered batch instead of waiting: the least used one, the freshest among those (``least_used_freshest``)
or one at random (``uniform``), at most ``max_reuse`` times each; it waits only when nothing is eligible.

Because a replaying stage trains (and so sends downstream) a number of times no one can plan, training
traffic on a replay link is a stream of same-shaped messages numbered by the producer (checked: kind,
consecutive numbers, shapes), closed per epoch by an EPOCH message and at the end by STOP. Evaluation keeps
its planned, checked messages on the forward group.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from pipelocal.data import Batch
from pipelocal.distributed.staging import staged
from pipelocal.distributed.transport import Channel, PeerError
from pipelocal.distributed.wire import HEADER_SIZE, Expected, Kind, WireError, check_header, decode_header, labels_meta


@dataclass
class Entry:
    step: int  # the producer's message number (its training steps, counted across epochs)
    batch: Batch
    uses: int = 0

    @property
    def nbytes(self) -> int:
        tensors = [self.batch.x, self.batch.y] + ([self.batch.raw] if self.batch.raw is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


class ReplayBuffer:
    """At most ``size`` entries; ``pick`` chooses what to train on next (None: nothing eligible, wait)."""

    def __init__(self, size: int, sampling: str, max_reuse: int | None, seed: int):
        self.size, self.sampling, self.max_reuse = size, sampling, max_reuse
        self.entries: list[Entry] = []
        self.dropped = 0  # entries pushed out by newer ones
        self.dropped_unused = 0  # ... of which never trained on
        self.generator = torch.Generator().manual_seed(seed)
        self.bytes_peak = 0

    def add(self, entry: Entry) -> None:
        if len(self.entries) == self.size:
            oldest = min(self.entries, key=lambda e: e.step)
            self.entries.remove(oldest)
            self.dropped += 1
            self.dropped_unused += oldest.uses == 0
        self.entries.append(entry)
        self.bytes_peak = max(self.bytes_peak, self.bytes)

    @property
    def bytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def has_unused(self) -> bool:
        return any(e.uses == 0 for e in self.entries)

    def pick(self) -> Entry | None:
        eligible = [e for e in self.entries if self.max_reuse is None or e.uses < self.max_reuse]
        if not eligible:
            return None
        if self.sampling == "uniform":
            choice = eligible[int(torch.randint(len(eligible), (), generator=self.generator))]
        else:
            choice = min(eligible, key=lambda e: (e.uses, -e.step))
        choice.uses += 1
        return choice

    def clear(self) -> None:
        self.entries = []


class LinkReader:
    """A thread that receives every training message of a replay link into a queue, as soon as it lands."""

    def __init__(self, channel: Channel, src: int, dst: int, metas, device):
        self.channel, self.src, self.dst, self.metas, self.device = channel, src, dst, metas, device
        self.items: queue.Queue = queue.Queue()  # (header, tensors) | exception
        self._next_step = 0
        self.thread = threading.Thread(target=self._run, name=f"replay-reader-{src}->{dst}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                header_buf = torch.empty(HEADER_SIZE, dtype=torch.int64)  # host memory: decoding it is no sync
                dist.irecv(header_buf, self.src, group=self.channel.headers).wait()
                header = decode_header(header_buf)
                self._check(header)
                tensors = []
                if header.kind == Kind.DATA:
                    wire = self.metas + labels_meta(Kind.DATA, self.metas)
                    host = staged(self.channel, self.device)  # stages sharing a GPU: gloo lands it in host memory
                    where = "cpu" if host else self.device
                    tensors = [torch.empty(m.shape, dtype=m.dtype, device=where) for m in wire]
                    works = [dist.irecv(t, self.src, group=self.channel.data) for t in tensors]
                    for work in works:
                        work.wait()
                    if host:
                        tensors = [t.to(self.device) for t in tensors]  # this reader thread's own copy, blocking
                    tensors = [t[: header.valid] for t in tensors]
                    header = replace(header, labels=tensors.pop())
                self.items.put((header, tensors))
                if header.kind == Kind.STOP:
                    return
        except WireError as err:  # a bad message, a dead or stuck producer: the main loop raises it
            self.items.put(err)
        except Exception as err:  # noqa: BLE001 (the thread must hand every failure to the main loop)
            self.items.put(PeerError(f"stage {self.dst} lost its replay link from stage {self.src}: {err}"))

    def _check(self, header) -> None:
        """EPOCH and STOP close a stream; anything else must be the next DATA message, of the agreed shapes."""
        if header.kind in (Kind.EPOCH, Kind.STOP):
            return
        check_header(header, Expected(Kind.DATA, self._next_step, header.valid, self.metas), self.src, self.dst)
        self._next_step += 1

    def get(self, block: bool):
        """The next item, or None when none is waiting and ``block`` is False; raises what the thread hit."""
        try:
            item = self.items.get(block=block)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        return item
