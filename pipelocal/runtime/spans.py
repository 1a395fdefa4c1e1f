"""Loss spans (docs/design.md#spans): which loss terms a module backpropagates on a batch, how far each reaches, and
which gradients cross a stage boundary; the planning, apart from its execution (runtime/step.py).

Every loss term has a *span*: how many modules it trains, ending at its own. A guidance step (``Guide``) replaces
or adds the final loss with span = every module. Every rank derives the same spans from the method and the plan,
so a stage knows, before a batch runs, which gradients it will receive and send (``crossing_spans``) and how
long each module's graph must live (``SpanPlan``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Guide:
    """This batch is a guidance step (PGL): the final loss trains every module, no detach."""

    combine: str = "replace"  # replace: only the end-to-end gradient; add: local + weight * end-to-end
    weight: float = 1.0
    recompute: bool = False  # keep only the module boundaries; recompute each module in the backward


def guided_spans(spans: tuple[int, ...], index: int, is_final: bool, guide: Guide | None) -> tuple[int, ...]:
    """Spans of the loss terms module ``index`` backpropagates on a batch with ``guide``."""
    if guide is None:
        return spans
    if not is_final:
        return () if guide.combine == "replace" else spans
    end_to_end = (index + 1,)
    return end_to_end if guide.combine == "replace" else spans + end_to_end


def net_spans(method, guide: Guide | None) -> list[tuple[int, ...]]:
    """Every module's term spans on a batch with ``guide``: what each stage needs to know of the others."""
    k = method.info.num_modules
    return [guided_spans(method.loss_spans(i), i, i == k - 1, guide) for i in range(k)]


def crossing_spans(spans: list[tuple[int, ...]], boundary: int) -> list[int]:
    """Gradients that cross from module ``boundary`` into module ``boundary - 1``, by the span they have left
    there (each becomes one tensor of a GRAD message between stages; equal ones are summed)."""
    return sorted(
        {s - (o - boundary + 1) for o in range(boundary, len(spans)) for s in spans[o] if s > o - boundary + 1}
    )


@dataclass
class SpanPlan:
    """What a run of consecutive modules ``first..last`` does with its graphs on one batch, from every module's
    term spans (``net_spans``): ``incoming``, the gradients that reach its last module from later stages (by the
    span they have left); per module of the run, ``uses`` (backward passes through its graph), ``reach`` (a
    gradient leaves it by its input: the input requires grad) and ``late`` (reached by a gradient from a later
    stage: its graph outlives the step)."""

    incoming: list[int]
    uses: list[int]
    reach: list[bool]
    late: list[bool]

    @classmethod
    def of(cls, spans: list[tuple[int, ...]], first: int, last: int) -> SpanPlan:
        n = last - first + 1
        own = spans[first : last + 1]
        incoming = crossing_spans(spans, last + 1)
        uses, reach, late = [len(set(own[j])) for j in range(n)], [False] * n, [False] * n
        for o in range(n):  # module o of the run: each of its spans reaches back over the modules before it
            for s in set(own[o]):
                for j in range(max(o - s + 1, 0), o + 1):
                    uses[j] += j < o
                    reach[j] |= j > o - s + 1
        for r in incoming:  # arrives at the last module with r modules still to train
            for j in range(max(n - r, 0), n):
                uses[j] += 1
                reach[j] |= j > n - r
                late[j] = True
        return cls(incoming, uses, reach, late)


def loss_groups(module, h, batch, guide, spans, losses) -> dict[int, torch.Tensor]:
    """Run the head (if this batch needs it) and sum its loss terms by span."""
    if not spans:
        return {}
    out = module.head(h, batch)
    losses.append(out["loss"].detach())
    terms = out.get("terms") or ([(out["loss"], module.spans[0])] if module.spans else [])
    if guide is not None and module.is_final:
        terms = [] if guide.combine == "replace" else list(terms)
        terms.append((guide.weight * out["loss"], module.index + 1))
    elif guide is not None and guide.combine == "replace":
        terms = []
    groups: dict[int, torch.Tensor] = {}
    for loss, span in terms:
        groups[span] = groups[span] + loss if span in groups else loss
    return dict(sorted(groups.items()))
