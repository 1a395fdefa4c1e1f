"""The message plan every rank derives from the config: each training and evaluation step, its kind
(DATA, GUIDE, EVAL, STOP), its valid rows and the tensors it carries, and the GRAD messages that come back
over a link. Because every rank builds the same plan, each can pre-post every receive and check every
header (docs/design.md#the-wire)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelocal.distributed.data_parallel import shard_rows, shard_weight
from pipelocal.distributed.wire import Expected, Kind, TensorMeta
from pipelocal.runtime.guidance import guide_for
from pipelocal.runtime.numerics import Numerics
from pipelocal.runtime.spans import crossing_spans, net_spans


@dataclass(frozen=True)
class Plan:
    """The message schedule of the whole run: valid rows of every train/eval step, and which epochs evaluate."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    train_rows: tuple[int, ...]  # per step of one epoch
    eval_rows: tuple[int, ...]  # per step of one evaluation
    eval_epochs: tuple[int, ...]
    guides: tuple = ()  # per global training step: its Guide, or None
    start: int = 0  # the first training step of this job (a resumed run starts where its checkpoint was taken)
    dtype: torch.dtype = torch.float32  # of activations between stages (the compute dtype, runtime/numerics.py)
    grad_dtype: torch.dtype = torch.float32  # of gradients between stages (unscaled)
    global_rows: tuple[int, ...] = ()  # per step of one epoch: the whole batch's rows (R > 1: train_rows is a shard)

    @classmethod
    def build(cls, cfg, train_len: int, test_len: int, start: int = 0, shard: tuple[int, int] = (0, 1)) -> Plan:
        """``shard``: (replica, replicas) of a replicated pipeline: each training batch is split over the
        replicas (a last batch with fewer rows than replicas is dropped), the test set's batches are dealt out
        in turn (each counted once)."""
        replica, replicas = shard
        train = _rows(train_len, cfg.data.batch_size, cfg.data.drop_last)[: cfg.train.max_steps or None]
        if train and train[-1] < replicas:
            train = train[:-1]
        tests = _rows(test_len, cfg.data.eval_batch_size, False)
        epochs, every = cfg.train.epochs, cfg.train.eval_every
        evals = tuple(e for e in range(epochs) if (e + 1) % every == 0 or e + 1 == epochs)
        steps = len(train)
        guides = tuple(guide_for(cfg.guidance, t // steps, t, epochs) for t in range(epochs * steps))
        numerics = Numerics(cfg.train.precision, torch.device("cpu"))
        return cls(
            epochs,
            -(-cfg.data.batch_size // replicas),
            cfg.data.eval_batch_size,
            tuple(shard_rows(rows, replicas)[replica] for rows in train),
            tests[replica::replicas],
            evals,
            guides,
            start,
            numerics.dtype,
            numerics.grad_dtype,
            train,
        )

    def weight(self, step: int) -> float:
        """This replica's share of training step ``step``'s batch (1 without replicas)."""
        i = step % len(self.train_rows)
        return shard_weight(self.train_rows[i], self.global_rows[i]) if self.global_rows else 1.0

    def train_kind(self, step: int) -> Kind:
        return Kind.GUIDE if self.guides[step] is not None else Kind.DATA

    def train_steps(self) -> list[tuple[int, int]]:
        """(global step, valid rows) of every training step of this job (from ``start``)."""
        steps = [(e * len(self.train_rows) + i, r) for e in range(self.epochs) for i, r in enumerate(self.train_rows)]
        return steps[self.start :]

    @property
    def start_epoch(self) -> int:
        return self.start // len(self.train_rows)

    @property
    def eval_steps_before(self) -> int:
        """Evaluation messages of the epochs before ``start_epoch`` (their numbering goes on across a resume)."""
        return sum(len(self.eval_rows) for e in self.eval_epochs if e < self.start_epoch)

    def messages(self) -> list[tuple[Kind, int, int]]:
        """Every message of this job in order: (kind, step, valid rows); DATA/GUIDE steps count across epochs.
        A resumed job's start after its checkpoint: an epoch's evaluation belongs to it if the epoch does."""
        out, eval_step = [], self.eval_steps_before
        for epoch in range(self.start_epoch, self.epochs):
            base = epoch * len(self.train_rows)
            out += [
                (self.train_kind(base + i), base + i, r)
                for i, r in enumerate(self.train_rows)
                if base + i >= self.start
            ]
            if epoch in self.eval_epochs:
                out += [(Kind.EVAL, eval_step + j, r) for j, r in enumerate(self.eval_rows)]
                eval_step += len(self.eval_rows)
        return out + [(Kind.STOP, 0, 0)]


def _rows(n: int, batch: int, drop_last: bool) -> tuple[int, ...]:
    full, rest = divmod(n, batch)
    return (batch,) * full + ((rest,) if rest and not drop_last else ())


def link_metas(plan: Plan, shape: tuple[int, ...], context_shapes: dict[str, tuple[int, ...]]):
    """Tensors on the wire into a stage: DATA carries the activation (in the compute dtype) and the context
    (input data: fp32); EVAL the activation."""
    data = [TensorMeta(plan.dtype, (plan.batch_size, *shape))]
    data += [TensorMeta(torch.float32, (plan.batch_size, *s)) for s in context_shapes.values()]
    return {
        Kind.DATA: tuple(data),
        Kind.GUIDE: tuple(data),
        Kind.EVAL: (TensorMeta(plan.dtype, (plan.eval_batch_size, *shape)),),
        Kind.STOP: (),
    }


def expectations(plan: Plan, metas) -> list[Expected]:
    return [Expected(kind, step, valid, metas[kind]) for kind, step, valid in plan.messages()]


def grad_keys(plan: Plan, method, boundary: int, step: int) -> list[int]:
    """Spans left of the gradients crossing into module ``boundary - 1`` on training step ``step``."""
    return crossing_spans(net_spans(method, plan.guides[step]), boundary)


def grad_expectations(plan: Plan, method, boundary: int, shape) -> list[Expected]:
    """GRAD messages on the link into module ``boundary - 1``: one per step that has gradients crossing it."""
    out = []
    for step, rows in plan.train_steps():
        keys = grad_keys(plan, method, boundary, step)
        if keys:
            out.append(
                Expected(Kind.GRAD, step, rows, (TensorMeta(plan.grad_dtype, (plan.batch_size, *shape)),) * len(keys))
            )
    return out
