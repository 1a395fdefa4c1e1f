"""Messages between adjacent stages: a header, then the tensors (docs/design.md#the-wire; the format and its
checks are wire.py's).

Each link is a :class:`Channel` of two process groups: the header travels on its gloo ``headers`` group, into
host buffers; the tensors travel on its ``data`` group (the backend's: NCCL on GPU), labels beside the
activations in the same message. So no message costs a device-to-host sync on either end, and labels can never
drift from their activations. ``halt`` marks a training message as the last before a preemption checkpoint
(job.py): every stage trains it, then all of them stop at the same step without any collective on the way.

Every message a stage will receive is known in advance (the plan every rank derives from the same numbers), so
receives are pre-posted into fixed buffers, ``queue_depth`` ahead, and every header is checked against what was
expected (invariant 5). The sender checks its own tensors against the agreed shapes before sending, because on
gloo a too-large message aborts the receiving process. The receiver checks the host header before it waits for
the tensors, so a bad message is named, not read.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from pipelocal.distributed.staging import Landing, staged, to_host
from pipelocal.distributed.waits import WaitClock
from pipelocal.distributed.wire import (
    HEADER_SIZE,
    LABELLED,
    Expected,
    Header,
    Kind,
    TensorMeta,
    WireError,
    check_header,
    decode_header,
    encode_header,
    labels_meta,
    pad_rows,
)


class PeerError(RuntimeError):
    """A neighbour stage died or stopped answering (connection closed, or the process-group timeout)."""


def _wait(works, what: str) -> None:
    try:
        for work in works:
            work.wait()
    except RuntimeError as err:
        raise PeerError(f"{what}: {type(err).__name__}: {err}".strip()) from err


@dataclass(frozen=True)
class Channel:
    """The process groups of one kind of link: the tensors on ``data`` (the backend's), their headers on
    ``headers`` (gloo, into host buffers: reading a header is never a device read). See distributed/setup.py."""

    data: dist.ProcessGroup
    headers: dist.ProcessGroup
    staged: bool = False  # gloo ``data`` for CUDA tensors: they travel through host buffers (staging.py)


class Sender:
    """Sends messages to stage ``dst`` over ``channel``, keeping at most ``depth`` unfinished sends (backpressure)."""

    def __init__(self, channel: Channel, src: int, dst: int, depth: int, device: torch.device):
        self.channel, self.src, self.dst, self.depth = channel, src, dst, depth
        self.device = device  # NCCL sends only device tensors: the labels travel where the activations are
        self._outstanding: deque = deque()  # (works, tensors kept alive until the send completes)
        self._staged = staged(channel, device)
        self.clock = WaitClock(device, on_stream=device.type == "cuda" and not self._staged)

    @property
    def wait_s(self) -> float:
        return self.clock.seconds

    def send(
        self,
        kind: Kind,
        step: int,
        valid: int,
        tensors: list[torch.Tensor],
        labels: torch.Tensor | None,
        metas: tuple[TensorMeta, ...],
        halt: bool = False,
    ) -> None:
        """Send one message; the tensors must not be modified until it completes (they are kept here).
        ``labels`` (``valid`` of them) travel with LABELLED kinds only."""
        for t, meta in zip(tensors, metas, strict=True):
            if t.dtype != meta.dtype or tuple(t.shape) != meta.shape:
                raise WireError(
                    f"stage {self.src} would send {t.dtype}{list(t.shape)} to stage {self.dst}, which agreed at "
                    f"start-up to receive {meta.describe()}"
                )
        if kind in LABELLED:
            if labels is None or len(labels) != valid:
                raise WireError(f"stage {self.src} would send {valid} rows to stage {self.dst} without their labels")
            # A copy: relayed labels are a view of a receive buffer that is reused later.
            rows = labels_meta(kind, metas)[0].shape[0]
            tensors = [*tensors, pad_rows(labels.to(self.device, torch.int64), rows, copy=True)]
        while len(self._outstanding) >= self.depth:
            self._wait_oldest()
        header = encode_header(kind, step, valid, metas, halt)
        if self._staged:
            tensors = to_host(tensors, self.device)
        works = [dist.isend(header, self.dst, group=self.channel.headers)]
        works += [dist.isend(t, self.dst, group=self.channel.data) for t in tensors]
        self._outstanding.append((works, (header, tensors)))

    def _wait_oldest(self) -> None:
        works, _ = self._outstanding.popleft()
        with self.clock.measure():
            _wait(works, f"stage {self.src} could not send to stage {self.dst} (dead or stuck?)")

    def flush(self) -> None:
        while self._outstanding:
            self._wait_oldest()


class Receiver:
    """Receives the planned messages from stage ``src`` over ``channel`` in order, ``depth`` of them posted ahead.

    Each message lands in a fixed buffer slot (one ring per message kind, ``depth + 1`` slots): its header in
    host memory, its tensors (and labels) on ``device``, reused only after the step that consumed it has finished.
    """

    def __init__(self, channel: Channel, src: int, dst: int, plan: list[Expected], depth: int, device):
        self.channel, self.src, self.dst, self.plan, self.depth, self.device = channel, src, dst, plan, depth, device
        self._slots: dict[tuple, list] = {}  # (kind, metas) -> ring of buffer lists
        self._counts: dict[tuple, int] = {}
        self._posted: deque = deque()  # (plan index, [header, *tensor buffers, labels?], works)
        self._next_post = 0
        self._staged = staged(channel, device)
        self.host_clock = WaitClock(device, on_stream=False)  # headers: gloo, the host waits
        self.clock = WaitClock(device, on_stream=device.type == "cuda" and not self._staged)  # tensors
        for _ in range(depth):
            self._post()

    def _post(self) -> None:
        if self._next_post >= len(self.plan):
            return
        expected = self.plan[self._next_post]
        key = (expected.kind, expected.metas)
        ring = self._slots.setdefault(key, [None] * (self.depth + 1))
        slot = self._counts.get(key, 0) % (self.depth + 1)
        self._counts[key] = self._counts.get(key, 0) + 1
        if ring[slot] is None:
            wire = expected.metas + labels_meta(expected.kind, expected.metas)
            buffers = [torch.empty(m.shape, dtype=m.dtype, device=self.device) for m in wire]
            ring[slot] = [torch.empty(HEADER_SIZE, dtype=torch.int64)] + (
                [Landing(buffers, self.device)] if self._staged else buffers
            )
        header, *tensors = ring[slot]
        if self._staged:
            tensors = tensors[0].free()  # gloo writes the host side; recv() lands it on the device
        header[0] = 0  # kind 0 = "not arrived yet"; see arrived()
        works = [dist.irecv(header, self.src, group=self.channel.headers)]
        works += [dist.irecv(b, self.src, group=self.channel.data) for b in tensors]
        self._posted.append((self._next_post, ring[slot], works))
        self._next_post += 1

    @property
    def wait_s(self) -> float:
        return self.host_clock.seconds + self.clock.seconds

    def ready(self) -> bool:
        """Has the next planned message's header landed? (Polling for late gradients; never for correctness.)"""
        if not self._posted:
            return False
        _, buffers, works = self._posted[0]
        return _arrived(buffers[0], works[0])

    def arrived(self) -> int:
        """How many of the next planned messages have landed, in order (their headers: as ``ready``)."""
        count = 0
        for _, buffers, works in self._posted:
            if not _arrived(buffers[0], works[0]):
                break
            count += 1
        return count

    def recv(self) -> tuple[Header, list[torch.Tensor], int]:
        """The next planned message: checked header (with its labels), its tensors (views of fixed buffers),
        and staleness: how many later messages have already arrived (the producer's lead, from the headers)."""
        index, buffers, works = self._posted.popleft()
        expected, what = self.plan[index], f"message {index} from stage {self.src} (dead or stuck?)"
        with self.host_clock.measure():
            _wait(works[:1], f"stage {self.dst} got no {what}")
        header = decode_header(buffers[0])
        check_header(header, expected, self.src, self.dst)  # the host header only: a bad message is never read
        with self.clock.measure():  # NCCL: the stream waits, not the host (timed with CUDA events)
            _wait(works[1:], f"stage {self.dst} got no tensors of {what}")
        landed = buffers[1].land() if self._staged else buffers[1:]
        staleness = sum(1 for _, b, w in self._posted if _arrived(b[0], w[0]))
        self._post()
        tensors = [b[: header.valid] for b in landed]
        if expected.kind in LABELLED:
            header = replace(header, labels=tensors.pop())
        return header, tensors, staleness


def _arrived(header: torch.Tensor, work) -> bool:
    """Has this posted header landed? For staleness only, never for correctness.

    Headers travel on gloo into host buffers, so this reads no device memory. gloo's point-to-point
    ``is_completed`` only turns true inside ``wait()`` (pytorch/pytorch#30723), but gloo writes into the
    buffer as the bytes arrive, and a header's kind is never 0: a non-zero kind word means the producer has
    sent that step.
    """
    return work.is_completed() or bool(header.numpy()[0])
