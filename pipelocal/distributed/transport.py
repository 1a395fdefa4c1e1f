"""Messages between adjacent stages: a fixed-size int64 header, then the tensors (DESIGN §4, Messages).

Header layout (int64): ``[kind | halt << 8, step, valid_rows, num_tensors, (dtype, ndim, d0..d4) * MAX_TENSORS,
labels * max_rows]``. Labels ride in the header so they can never drift from their activations.
``halt`` marks a training message as the last before a preemption checkpoint (job.py): every stage trains
it, then all of them stop at the same step without any collective on the way.

Every message a stage will receive is known in advance (the :class:`StreamPlan` every rank derives
from the same numbers), so receives are pre-posted into fixed buffers, ``queue_depth`` ahead, and
every header is checked against what was expected (invariant 5): on gloo a wrong dtype of the same
byte count would otherwise be reinterpreted silently. The sender checks its own tensors against the
agreed shapes before sending, because on gloo a too-large message aborts the receiving process.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

import torch
import torch.distributed as dist
import torch.nn.functional as F

MAX_TENSORS = 4
MAX_DIMS = 5
_FIXED = 4 + MAX_TENSORS * (2 + MAX_DIMS)
HALT_BIT = 1 << 8
DTYPE_CODES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.int64: 4, torch.uint8: 5, torch.float64: 6}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}


class Kind(IntEnum):
    DATA = 1
    EVAL = 2
    GUIDE = 3
    GRAD = 4
    STOP = 5
    EPOCH = 6  # replay streams: the producer's epoch is over


class WireError(RuntimeError):
    """A received message is not what the protocol says it must be; names both stages."""


class PeerError(RuntimeError):
    """A neighbour stage died or stopped answering (connection closed, or the process-group timeout)."""


def _wait(works, what: str) -> None:
    try:
        for work in works:
            work.wait()
    except RuntimeError as err:
        raise PeerError(f"{what}: {type(err).__name__}: {err}".strip()) from err


@dataclass(frozen=True)
class TensorMeta:
    dtype: torch.dtype
    shape: tuple[int, ...]  # full shape, batch rows included (padded)

    def describe(self) -> str:
        return f"{str(self.dtype).replace('torch.', '')}{list(self.shape)}"


@dataclass(frozen=True)
class Header:
    kind: Kind
    step: int
    valid: int
    metas: tuple[TensorMeta, ...]
    labels: torch.Tensor
    halt: bool = False


def pad_rows(t: torch.Tensor, rows: int, copy: bool = False) -> torch.Tensor:
    """The wire carries full batches; the last, smaller one is zero-padded and its header says how many rows count.
    ``copy``: a tensor of its own even when no padding is needed (a relayed view of a receive buffer)."""
    if len(t) == rows:
        return t.contiguous().clone() if copy else t.contiguous()
    return F.pad(t, (0, 0) * (t.dim() - 1) + (0, rows - len(t)))


def header_size(max_rows: int) -> int:
    return _FIXED + max_rows


def encode_header(
    kind: Kind, step: int, valid: int, metas, labels: torch.Tensor, max_rows: int, halt: bool = False
) -> torch.Tensor:
    # Built on the host. On CUDA, labels.to("cpu") below is a device-to-host sync point per message, and so
    # is decode_header's tolist(): free under gloo, a lost CPU run-ahead under NCCL. Known, not yet mended
    # (pinned buffers and a side-stream copy, or headers over the gloo control group, would remove it).
    header = torch.zeros(header_size(max_rows), dtype=torch.int64)
    header[:4] = torch.tensor([int(kind) | (HALT_BIT if halt else 0), step, valid, len(metas)])
    for i, meta in enumerate(metas):
        base = 4 + i * (2 + MAX_DIMS)
        header[base] = DTYPE_CODES[meta.dtype]
        header[base + 1] = len(meta.shape)
        header[base + 2 : base + 2 + len(meta.shape)] = torch.tensor(meta.shape)
    header[_FIXED : _FIXED + len(labels)] = labels.to("cpu", torch.int64)
    return header


def decode_header(header: torch.Tensor) -> Header:
    values = header.tolist()
    word, step, valid, count = values[:4]
    kind, halt = word & (HALT_BIT - 1), bool(word & HALT_BIT)
    metas = []
    for i in range(min(count, MAX_TENSORS)):
        base = 4 + i * (2 + MAX_DIMS)
        code, ndim = values[base], values[base + 1]
        metas.append(TensorMeta(CODE_DTYPES.get(code, torch.int8), tuple(values[base + 2 : base + 2 + ndim])))
    return Header(
        Kind(kind) if kind in Kind._value2member_map_ else kind,
        step,
        valid,
        tuple(metas),
        header[_FIXED : _FIXED + max(valid, 0)].clone(),
        halt,
    )


def check_header(header: Header, expected: Expected, src: int, dst: int) -> None:
    """Raise :class:`WireError` naming both stages when ``header`` is not ``expected``."""
    problems = []
    if header.kind != expected.kind:
        problems.append(f"kind {header.kind!r} (expected {expected.kind.name})")
    if header.step != expected.step:
        problems.append(f"step {header.step} (expected {expected.step})")
    if header.valid != expected.valid:
        problems.append(f"{header.valid} valid rows (expected {expected.valid})")
    got = [m.describe() for m in header.metas]
    want = [m.describe() for m in expected.metas]
    if got != want:
        problems.append(f"tensors {got} (expected {want})")
    if problems:
        raise WireError(
            f"stage {dst} received a bad message from stage {src}: " + "; ".join(problems) + ". Both stages must "
            "be built from the same config and code; a dtype or shape change upstream must be agreed at start-up"
        )


@dataclass(frozen=True)
class Expected:
    kind: Kind
    step: int
    valid: int
    metas: tuple[TensorMeta, ...]


class Sender:
    """Sends messages to stage ``dst``, keeping at most ``depth`` unfinished sends (backpressure)."""

    def __init__(self, group, src: int, dst: int, depth: int, max_rows: int, device: torch.device):
        self.group, self.src, self.dst, self.depth, self.max_rows = group, src, dst, depth, max_rows
        self.device = device  # NCCL sends only device tensors: the header lives where the activations do
        self._outstanding: deque = deque()  # (works, tensors kept alive until the send completes)
        self.wait_s = 0.0

    def send(
        self,
        kind: Kind,
        step: int,
        valid: int,
        tensors: list[torch.Tensor],
        labels: torch.Tensor,
        metas: tuple[TensorMeta, ...],
        halt: bool = False,
    ) -> None:
        """Send one message; the tensors must not be modified until it completes (they are kept here)."""
        for t, meta in zip(tensors, metas, strict=True):
            if t.dtype != meta.dtype or tuple(t.shape) != meta.shape:
                raise WireError(
                    f"stage {self.src} would send {t.dtype}{list(t.shape)} to stage {self.dst}, which agreed at "
                    f"start-up to receive {meta.describe()}"
                )
        while len(self._outstanding) >= self.depth:
            self._wait_oldest()
        header = encode_header(kind, step, valid, metas, labels, self.max_rows, halt).to(self.device)
        works = [dist.isend(header, self.dst, group=self.group)]
        works += [dist.isend(t, self.dst, group=self.group) for t in tensors]
        self._outstanding.append((works, (header, tensors)))

    def _wait_oldest(self) -> None:
        start = time.perf_counter()
        works, _ = self._outstanding.popleft()
        _wait(works, f"stage {self.src} could not send to stage {self.dst} (dead or stuck?)")
        self.wait_s += time.perf_counter() - start

    def flush(self) -> None:
        while self._outstanding:
            self._wait_oldest()


class Receiver:
    """Receives the planned messages from stage ``src`` in order, ``depth`` of them posted ahead.

    Each message lands in a fixed buffer slot (one ring per message kind, ``depth + 1`` slots), reused
    only after the step that consumed it has finished.
    """

    def __init__(self, group, src: int, dst: int, plan: list[Expected], depth: int, device, max_rows: int):
        self.group, self.src, self.dst, self.plan, self.depth = group, src, dst, plan, depth
        self.device, self.max_rows = device, max_rows
        self._slots: dict[tuple, list] = {}  # (kind, metas) -> ring of buffer lists
        self._counts: dict[tuple, int] = {}
        self._posted: deque = deque()  # (plan index, [header, *tensor buffers], works)
        self._next_post = 0
        self.wait_s = 0.0
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
            ring[slot] = [torch.empty(header_size(self.max_rows), dtype=torch.int64, device=self.device)] + [
                torch.empty(m.shape, dtype=m.dtype, device=self.device) for m in expected.metas
            ]
        buffers = ring[slot]
        buffers[0][0] = 0  # kind 0 = "not arrived yet"; see arrived()
        works = [dist.irecv(b, self.src, group=self.group) for b in buffers]
        self._posted.append((self._next_post, buffers, works))
        self._next_post += 1

    def ready(self) -> bool:
        """Has the next planned message's header landed? (Polling for late gradients; never for correctness.)"""
        if not self._posted:
            return False
        _, buffers, works = self._posted[0]
        return _arrived(buffers[0], works[0])

    def recv(self) -> tuple[Header, list[torch.Tensor], int]:
        """The next planned message: checked header, its tensors (views of fixed buffers), and staleness.

        Staleness is how many later messages have already arrived (the producer's lead, from the headers).
        """
        index, buffers, works = self._posted.popleft()
        start = time.perf_counter()
        _wait(works, f"stage {self.dst} got no message {index} from stage {self.src} (dead or stuck?)")
        self.wait_s += time.perf_counter() - start
        header = decode_header(buffers[0])
        check_header(header, self.plan[index], self.src, self.dst)
        staleness = sum(1 for _, b, w in self._posted if _arrived(b[0], w[0]))
        self._post()
        return header, [b[: header.valid] for b in buffers[1:]], staleness


def _arrived(header: torch.Tensor, work) -> bool:
    """Has this posted header landed? For staleness only, never for correctness.

    NCCL's ``is_completed`` is exact. gloo's point-to-point ``is_completed`` only turns true inside
    ``wait()`` (pytorch/pytorch#30723), but gloo writes into the CPU buffer as the bytes arrive, and a
    header's kind is never 0: a non-zero kind word means the producer has sent that step.
    """
    if header.device.type == "cpu":
        return work.is_completed() or int(header[0]) != 0
    return work.is_completed()
