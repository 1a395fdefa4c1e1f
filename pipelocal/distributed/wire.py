"""The wire format between stages (docs/design.md#the-wire): message kinds, the fixed-size int64 header and its
checks; how messages travel (pre-posted receives, bounded sends, waits) is transport.py's.

Header layout (int64, ``HEADER_SIZE`` words): ``[kind | halt << 8, step, valid_rows, num_tensors,
(dtype, ndim, d0..d4) * MAX_TENSORS]``. It is built on the host from ints the sender knows and read on the host
with ``.numpy()`` (which raises on a device tensor, so it can never hide a sync). DATA/GUIDE/EVAL messages carry
their labels as one more int64 tensor of the message's padded rows (``labels_meta``). ``halt`` marks a training
message as the last before a preemption checkpoint. Every header is checked against what the plan expected
(invariant 5): on gloo a wrong dtype of the same byte count would otherwise be reinterpreted silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch
import torch.nn.functional as F

MAX_TENSORS = 4
MAX_DIMS = 5
HEADER_SIZE = 4 + MAX_TENSORS * (2 + MAX_DIMS)
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


LABELLED = frozenset({Kind.DATA, Kind.GUIDE, Kind.EVAL})  # messages whose labels travel beside their tensors


class WireError(RuntimeError):
    """A received message is not what the protocol says it must be; names both stages."""


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
    labels: torch.Tensor | None = None  # received: the labels' rows ``[:valid]``, on the device (LABELLED kinds)
    halt: bool = False


def pad_rows(t: torch.Tensor, rows: int, copy: bool = False) -> torch.Tensor:
    """The wire carries full batches; the last, smaller one is zero-padded and its header says how many rows count.
    ``copy``: a tensor of its own even when no padding is needed (a relayed view of a receive buffer).
    Always contiguous: the wire takes nothing else (a channels_last activation is converted here)."""
    if len(t) == rows:
        return t.contiguous().clone() if copy else t.contiguous()
    return F.pad(t, (0, 0) * (t.dim() - 1) + (0, rows - len(t))).contiguous()


def labels_meta(kind: Kind, metas: tuple[TensorMeta, ...]) -> tuple[TensorMeta, ...]:
    """The labels' tensor on the wire after ``metas``: one int64 per padded row of a LABELLED message, else none."""
    return (TensorMeta(torch.int64, metas[0].shape[:1]),) if kind in LABELLED else ()


def encode_header(kind: Kind, step: int, valid: int, metas, halt: bool = False) -> torch.Tensor:
    """The header as a host tensor, from ints alone (no tensor of the message is read)."""
    if len(metas) > MAX_TENSORS or any(len(m.shape) > MAX_DIMS for m in metas):
        raise ValueError(f"a message carries at most {MAX_TENSORS} tensors of at most {MAX_DIMS} dims: {metas}")
    words = [int(kind) | (HALT_BIT if halt else 0), step, valid, len(metas)]
    for meta in metas:
        words += [DTYPE_CODES[meta.dtype], len(meta.shape), *meta.shape] + [0] * (MAX_DIMS - len(meta.shape))
    return torch.tensor(words + [0] * (HEADER_SIZE - len(words)), dtype=torch.int64)


def decode_header(header: torch.Tensor) -> Header:
    """The fields of a received header. ``.numpy()`` reads host memory only (it raises on a device tensor)."""
    values = header.numpy().tolist()
    word, step, valid, count = values[:4]
    kind, halt = word & (HALT_BIT - 1), bool(word & HALT_BIT)
    metas = []
    for i in range(min(count, MAX_TENSORS)):
        base = 4 + i * (2 + MAX_DIMS)
        code, ndim = values[base], values[base + 1]
        metas.append(TensorMeta(CODE_DTYPES.get(code, torch.int8), tuple(values[base + 2 : base + 2 + ndim])))
    return Header(Kind(kind) if kind in Kind._value2member_map_ else kind, step, valid, tuple(metas), halt=halt)


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
