"""A stage's links to its neighbours, each a small object over the transport (docs/design.md#process-groups).

- :class:`ForwardIn` / :class:`ForwardOut`: the planned, checked DATA/GUIDE/EVAL/STOP stream on the
  ``forward`` channel (its data group and the gloo twin its headers take; fifo: bounded queue with
  backpressure, every batch used once);
- :class:`ReplayIn` / :class:`ReplayOut`: a replay stream on a ``links`` channel (schedules/replay.py): the
  producer never blocks, the consumer trains on what its buffer offers;
- gradient links (schedules/grad_links.py) and MLAAN's weight links (schedules/ema_links.py).

:class:`Links` holds what one stage has; ``schedules/build.py`` makes them from the plan. A stage with no
links at all is sequential mode: the loop is the same, so pipeline = sequential is a statement about links.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pipelocal.data import Batch
from pipelocal.distributed.transport import Receiver, Sender
from pipelocal.distributed.wire import Kind, WireError, pad_rows
from pipelocal.schedules.ema_links import EmaLinks
from pipelocal.schedules.grad_links import GradLinks
from pipelocal.schedules.replay import Entry, LinkReader, ReplayBuffer


def batch_of(header, tensors) -> Batch:
    """A received message as a batch: the activation, its labels (received beside it, on its device), the context."""
    raw = tensors[1] if len(tensors) > 1 else None
    return Batch(tensors[0], header.labels, raw)


class ForwardIn:
    """The planned stream from the previous stage: every message pre-posted, checked against the plan."""

    def __init__(self, receiver: Receiver):
        self.receiver = receiver
        self.halt = False  # the last message received was marked as the last before a preemption checkpoint

    def recv(self) -> tuple[Batch, int]:
        """The next message as a batch, and its staleness (how many later ones have already landed)."""
        header, tensors, staleness = self.receiver.recv()
        self.halt = header.halt
        return batch_of(header, tensors), staleness

    def stop(self) -> None:
        self.receiver.recv()  # STOP, checked like any other planned message

    @property
    def wait_s(self) -> float:
        return self.receiver.wait_s


class _Outbound:
    """What the outgoing streams share: the activation and the context on the wire, STOP, the time waited."""

    def __init__(self, sender: Sender, context: tuple[str, ...]):
        self.sender, self.context = sender, context

    def _tensors(self, batch: Batch, h: torch.Tensor, rows: int, with_context: bool = True) -> list[torch.Tensor]:
        tensors = [pad_rows(h, rows)]
        if with_context:
            # A copy: a relayed context tensor is a view of a receive buffer that is reused later.
            tensors += [pad_rows(getattr(batch, name), rows, copy=True) for name in self.context]
        return tensors

    def stop(self) -> None:
        self.sender.send(Kind.STOP, 0, 0, [], None, ())
        self.sender.flush()

    @property
    def wait_s(self) -> float:
        return self.sender.wait_s


class ForwardOut(_Outbound):
    """The planned stream to the next stage: the activation, and the context fields later stages read."""

    def __init__(self, sender: Sender, metas: dict, context: tuple[str, ...], batch_size: int, eval_batch_size: int):
        super().__init__(sender, context)
        self.metas = metas
        self.rows = {Kind.DATA: batch_size, Kind.GUIDE: batch_size, Kind.EVAL: eval_batch_size}

    def send(self, kind: Kind, step: int, batch: Batch, h: torch.Tensor, halt: bool = False) -> None:
        tensors = self._tensors(batch, h, self.rows[kind], with_context=kind != Kind.EVAL)
        self.sender.send(kind, step, len(batch), tensors, batch.y, self.metas[kind], halt)


class ReplayOut(_Outbound):
    """A producer's training stream on a replay link: numbered by the producer, closed by EPOCH, then STOP."""

    def __init__(self, sender: Sender, metas, context: tuple[str, ...], rows: int):
        super().__init__(sender, context)
        self.metas, self.rows = metas, rows
        self.sent = 0  # training messages sent, across epochs

    def send(self, batch: Batch, h: torch.Tensor) -> None:
        self.sender.send(Kind.DATA, self.sent, len(batch), self._tensors(batch, h, self.rows), batch.y, self.metas)
        self.sent += 1

    def end_epoch(self, epoch: int) -> None:
        self.sender.send(Kind.EPOCH, epoch, 0, [], None, ())


class ReplayIn:
    """A consumer's replay link: a reading thread fills the buffer; ``next`` picks what to train on, waiting
    only when nothing is eligible, and ends the epoch once the producer's is over and nothing unused is left."""

    def __init__(self, reader: LinkReader, buffer: ReplayBuffer, stage_index: int):
        self.reader, self.buffer, self.stage_index = reader, buffer, stage_index
        self.latest = -1  # newest producer message number received
        self._epoch_over = False
        self._dropped = (0, 0)

    def start_epoch(self) -> None:
        self.buffer.clear()
        self._epoch_over = False
        self._dropped = (self.buffer.dropped, self.buffer.dropped_unused)

    def next(self, stats) -> Batch | None:
        """The batch to train on next, or None: the epoch is over for this stage."""
        while True:
            if not self._epoch_over:
                self._epoch_over = self._drain(block=False)
            if self._epoch_over and not self.buffer.has_unused():
                return None  # the producer's epoch is over and every batch it sent was used or dropped
            entry = self.buffer.pick()
            if entry is not None:
                break
            if self._epoch_over:
                return None
            stats.recv_wait_s += self._wait()
        stats.staleness.append(self.latest - entry.step)
        stats.reuse[entry.uses] = stats.reuse.get(entry.uses, 0) + 1
        stats.fresh += entry.uses == 1
        return entry.batch

    def _wait(self) -> float:
        begin = time.perf_counter()
        self._epoch_over = self._drain(block=True)
        return time.perf_counter() - begin

    def end_epoch(self, stats) -> None:
        stats.dropped = self.buffer.dropped - self._dropped[0]
        stats.dropped_unused = self.buffer.dropped_unused - self._dropped[1]
        stats.buffer_bytes_peak = self.buffer.bytes_peak

    def _drain(self, block: bool) -> bool:
        """Move what the reading thread received into the buffer; True once the producer's epoch is over
        (what follows its EPOCH stays queued for the next epoch)."""
        while True:
            item = self.reader.get(block)
            if item is None:
                return False
            block = False
            header, tensors = item
            if header.kind == Kind.EPOCH:
                return True
            if header.kind == Kind.STOP:
                raise WireError(f"stage {self.stage_index}: the replay link from the previous stage stopped mid-epoch")
            self.latest = header.step
            self.buffer.add(Entry(header.step, batch_of(header, tensors)))

    def stop(self) -> None:
        if self.reader.get(block=True)[0].kind != Kind.STOP:
            raise WireError(f"stage {self.stage_index}: the replay link sent more after its last epoch")
        self.reader.thread.join()


@dataclass
class Links:
    """Everything one stage sends and receives through; None where it has no such link."""

    forward_in: ForwardIn | None = None
    forward_out: ForwardOut | None = None
    replay_in: ReplayIn | None = None
    replay_out: ReplayOut | None = None
    grads: GradLinks | None = None
    ema: EmaLinks | None = None

    @property
    def planned(self) -> bool:
        """Training traffic follows the plan (fifo); a replay stream trains an unplanned number of times."""
        return self.replay_in is None and self.replay_out is None

    def waits(self) -> tuple[float, float]:
        """Seconds waited so far to receive (forward stream) and to send (the training stream out)."""
        out = self.replay_out or self.forward_out
        return (self.forward_in.wait_s if self.forward_in else 0.0, out.wait_s if out else 0.0)

    def stop(self) -> None:
        """STOP flows downstream: receive it (unless first), pass it on (unless last), finish every send."""
        if self.forward_in is not None:
            self.forward_in.stop()
        if self.forward_out is not None:
            self.forward_out.stop()
        if self.grads is not None:
            self.grads.flush()
        if self.ema is not None:
            self.ema.flush()
        if self.replay_out is not None:
            self.replay_out.stop()
        if self.replay_in is not None:
            self.replay_in.stop()
