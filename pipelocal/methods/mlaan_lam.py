"""Which backbone blocks an MLAAN leap augmented module copies: the authors' tables and the rule they follow."""

from __future__ import annotations

Pos = tuple[int, int]


def _rows(ends: list[Pos], copies) -> dict[Pos, list[Pos]]:
    """The module ending at ``ends[i]`` copies ``copies(ends[i])``; module 0 (no head) is left out."""
    return {end: copies(end) for end in ends[1:]}


def _r110(end: Pos, stage3: dict[int, int]) -> list[Pos]:
    """R-110 rows: the same for stages 1 and 2 at K = 32 and 54; in stage 3 two blocks, the first taken from
    ``stage3`` (the last end block of a run of modules -> the block they copy first)."""
    stage, block = end
    if stage == 1:
        return [(2, 0), (3, 0), (3, 2), (3, 17)]
    if stage == 2:
        return [(3, 0), (3, 3), (3, 4), (3, 17)] if block == 17 else [(3, 0), (3, 2), (3, 3), (3, 17)]
    first = stage3[min(b for b in stage3 if b >= block)]
    return [(3, first), (3, 17)] if first < 17 else [(3, 17)]


_R32_K8 = [(1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2)]  # InfoPro's K = 8 table
_R32_K15 = [(s, b) for s in (1, 2, 3) for b in range(5)][:-1]  # one block per module, the stem with the first
_R110_K32 = [(s, b) for s in (1, 2) for b in (1, 2, 4, 5, 7, 9, 11, 13, 14, 16, 17)]
_R110_K32 += [(3, b) for b in (1, 3, 4, 6, 7, 9, 11, 13, 15)]
_R110_K54 = [(s, b) for s in (1, 2, 3) for b in range(18)][:-1]
_STAGE2_R32 = [(3, 0), (3, 2), (3, 3), (3, 4)]

# The authors' copy tables (released CIFAR code, networks/configAuxPlus_new.py, for R-32 K = 8, 15 and R-110
# K = 32, 54; K as they count it, the stem outside), keyed by the split they were written for: (blocks per stage,
# the positions the non-final modules end at). Value: module end -> copied positions.
PUBLISHED_LAM: dict[tuple[tuple[int, ...], tuple[Pos, ...]], dict[Pos, list[Pos]]] = {
    ((5, 5, 5), tuple(_R32_K8)): {
        (1, 2): [(2, 0), (3, 0), (3, 2), (3, 4)],
        (1, 4): [(2, 0), (3, 0), (3, 3), (3, 4)],
        (2, 1): _STAGE2_R32,
        (2, 3): _STAGE2_R32,
        (3, 0): [(3, 2), (3, 3), (3, 4)],
        (3, 2): [(3, 3), (3, 4)],
    },
    ((5, 5, 5), tuple(_R32_K15)): {
        (1, 1): [(2, 0), (3, 0), (3, 2), (3, 4)],
        (1, 2): [(2, 0), (3, 0), (3, 3), (3, 4)],
        (1, 3): [(2, 0), (3, 0), (3, 2), (3, 4)],
        (1, 4): [(2, 0), (3, 0), (3, 3), (3, 4)],
        **{(2, b): _STAGE2_R32 for b in range(5)},
        (3, 0): [(3, 1), (3, 2), (3, 4)],
        (3, 1): [(3, 2), (3, 3), (3, 4)],
        (3, 2): [(3, 3), (3, 4)],
        (3, 3): [(3, 4)],
    },
    ((18, 18, 18), tuple(_R110_K32)): _rows(_R110_K32, lambda e: _r110(e, {6: 8, 9: 14, 11: 15, 13: 16, 15: 17})),
    ((18, 18, 18), tuple(_R110_K54)): _rows(_R110_K54, lambda e: _r110(e, {6: 8, 10: 14, 12: 15, 15: 16, 16: 17})),
}


def lam_units(after: int, positions: list[Pos], ends: list[int] | None = None) -> list[int]:
    """Units the LAM of the module ending at unit ``after`` copies, in a split whose non-final modules end at
    units ``ends`` (default: one module per block, the stem with the first: the authors' R-32 K = 15).

    The authors' table where they published one for this split (:data:`PUBLISHED_LAM`); elsewhere their rule as
    those tables show it. From a stage before the last: the transition block of each later stage, then the last
    stage's blocks from its third on (its second only when too few), then its last block, 4 blocks where the net
    has room. From the last stage: its last 3 blocks (fewer near the end). The rule gives the tables' rows but
    for a few (R-32: [3,3] for [3,2] in some stage-1 rows, K = 15's [3,1] [3,2] [3,4] after [3,0]; R-110: the
    row after [2,17], and the last stage, where the tables copy 2 blocks: a later middle block and the last)."""
    if ends is None:
        ends = list(range(1, len(positions) - 1))
    blocks = tuple(sum(1 for s, _ in positions if s == t) for t in range(1, positions[-1][0] + 1))
    table = PUBLISHED_LAM.get((blocks, tuple(positions[u] for u in ends)))
    if table is not None and positions[after] in table:
        return [positions.index(p) for p in table[positions[after]]]
    return derived_units(after, positions)


def derived_units(after: int, positions: list[Pos]) -> list[int]:
    """The rule of :func:`lam_units`, for splits without a published table."""
    last = len(positions) - 1
    stage, last_stage = positions[after][0], positions[-1][0]
    if stage == last_stage:
        return list(range(max(after + 1, last - 2), last + 1))
    transitions = [positions.index((t, 0)) for t in range(stage + 1, last_stage + 1)]
    between = range(transitions[-1] + 1, last)  # the last stage's blocks between its transition and its end
    middle = sorted(sorted(between, key=lambda u: (positions[u][1] == 1, u))[: max(3 - len(transitions), 0)])
    return list(dict.fromkeys([*transitions, *middle, last]))  # a 1-block last stage: its transition is last
