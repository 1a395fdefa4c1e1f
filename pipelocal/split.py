"""Units -> K local modules: the papers' tables, a uniform rule, or explicit boundaries (docs/methods.md#splits).

A split is data: a list of ``(start, end)`` unit ranges, end exclusive, covering every unit once.
"""

from __future__ import annotations

from pipelocal.config import ConfigError, SplitConfig

Range = tuple[int, int]

# InfoPro's tables (its released code, networks/configs.py; docs/methods.md#splits): a module ends after each
# listed (stage, block) position.
_R32 = {
    2: [(2, 1)],
    3: [(1, 4), (2, 4)],
    4: [(1, 2), (2, 1), (3, 0)],
    8: [(1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2)],
    16: [(0, 0)] + [(1, b) for b in range(5)] + [(2, b) for b in range(5)] + [(3, b) for b in range(4)],
}
_R110 = {
    2: [(2, 8)],
    3: [(1, 17), (2, 17)],
    4: [(1, 11), (2, 7), (3, 3)],
    8: [(1, 4), (1, 11), (2, 0), (2, 7), (2, 14), (3, 3), (3, 10)],
    16: [(1, 1), (1, 4), (1, 7), (1, 10), (1, 13), (1, 16), (2, 1), (2, 4), (2, 7), (2, 11), (2, 15)]
    + [(3, 1), (3, 5), (3, 9), (3, 13)],
}
# InfoPro* (memory-balanced, InfoPro_balanced_memory there): one table per dataset; they differ at K = 3.
_R110_STAR = {
    "cifar10": {2: [(1, 14)], 3: [(1, 9), (2, 2)], 4: [(1, 6), (1, 14), (2, 8)]},
    "stl10": {2: [(1, 14)], 3: [(1, 8), (2, 1)], 4: [(1, 6), (1, 14), (2, 8)]},
}

# (table, depth) -> K -> ends, the same for every dataset; or -> dataset -> K -> ends (PER_DATASET).
TABLES: dict[tuple[str, int], dict] = {
    ("infopro", 32): _R32,
    ("infopro", 110): _R110,
    ("infopro_star", 110): _R110_STAR,
}
PER_DATASET = {"infopro_star"}


def ranges_from_boundaries(boundaries: list[int], num_units: int) -> list[Range]:
    """Module i ends after unit ``boundaries[i]``; the last module takes the rest."""
    ends = list(boundaries)
    for a, b in zip(ends, ends[1:]):
        if b <= a:
            raise ConfigError(f"split boundaries must increase strictly, got {boundaries}")
    if ends and (ends[0] < 0 or ends[-1] >= num_units - 1):
        raise ConfigError(
            f"split boundaries {boundaries} must lie in 0..{num_units - 2} (a module ends after that unit; "
            f"the backbone has {num_units} units and the last module needs at least one)"
        )
    starts = [0] + [e + 1 for e in ends]
    stops = [e + 1 for e in ends] + [num_units]
    return list(zip(starts, stops))


def uniform_ranges(num_units: int, num_modules: int) -> list[Range]:
    """K runs of consecutive units, as equal in count as possible (earlier modules get the extra unit)."""
    check_k(num_units, num_modules)
    base, extra = divmod(num_units, num_modules)
    sizes = [base + (1 if i < extra else 0) for i in range(num_modules)]
    ends = [sum(sizes[: i + 1]) - 1 for i in range(num_modules - 1)]
    return ranges_from_boundaries(ends, num_units)


def published_ends(table: str, depth: int, dataset: str | None) -> dict[int, list[tuple[int, int]]] | None:
    """K -> the (stage, block) positions modules end at, as the authors published ``table`` for ``depth`` (and,
    for a per-dataset table, ``dataset``); None where they published none."""
    known = TABLES.get((table, depth))
    if known is None or table not in PER_DATASET:
        return known
    if dataset not in known:
        raise ConfigError(
            f"split.table={table}: the authors published it for {', '.join(sorted(known))} only, not for "
            f"data.name={dataset}; use split.table=infopro, split.balance=memory or split.boundaries"
        )
    return known[dataset]


def table_ranges(
    table: str, depth: int, num_modules: int, positions: list[tuple[int, int]], dataset: str | None = None
) -> list[Range]:
    """The published split of ``table`` for a ResNet of ``depth`` at K = ``num_modules`` (on ``dataset``)."""
    known = published_ends(table, depth, dataset)
    if known is None or num_modules not in known:
        have = sorted(f"{t} R-{d} K={k}" for (t, d), ks in TABLES.items() for k in _ks(t, ks))
        raise ConfigError(
            f"no split table '{table}' for depth {depth} at K={num_modules}; tables exist for: {', '.join(have)}. "
            "Use split.balance=uniform or split.boundaries instead"
        )
    blocks = (depth - 2) // 6
    if list(positions) != [(0, 0)] + [(stage, b) for stage in (1, 2, 3) for b in range(blocks)]:
        raise ConfigError(
            f"split.balance=table: the tables are for the CIFAR ResNet-{depth} (model.name=cifar_resnet), and this "
            "backbone's units are laid out otherwise; use split.balance=uniform|time|memory or split.boundaries"
        )
    index = {pos: i for i, pos in enumerate(positions)}
    return ranges_from_boundaries([index[pos] for pos in known[num_modules]], len(positions))


def _ks(table: str, known: dict) -> set[int]:
    return {k for d in known.values() for k in d} if table in PER_DATASET else set(known)


def check_k(num_units: int, num_modules: int) -> None:
    if num_modules > num_units:
        raise ConfigError(
            f"split.num_modules={num_modules} is larger than the backbone's {num_units} units; "
            f"use at most {num_units} (or a deeper model)"
        )


def module_ranges(
    cfg: SplitConfig, num_units: int, depth: int, positions: list[tuple[int, int]], dataset: str | None = None
) -> list[Range]:
    """The split the config asks for (``dataset``: data.name, which picks a per-dataset table)."""
    check_k(num_units, cfg.num_modules)
    if cfg.boundaries is not None:
        return ranges_from_boundaries(cfg.boundaries, num_units)
    if cfg.balance == "table":
        return table_ranges(cfg.table, depth, cfg.num_modules, positions, dataset)
    return uniform_ranges(num_units, cfg.num_modules)


def stage_ranges(num_modules: int, num_stages: int, modules_per_stage: list[int] | None = None) -> list[Range]:
    """K modules -> P stages of consecutive modules: ``modules_per_stage`` if given, else as even as possible."""
    if num_stages > num_modules:
        raise ConfigError(
            f"{num_stages} stages but split.num_modules={num_modules}: every stage needs a module; "
            f"set --split.num_modules={num_stages} (or more), or start fewer processes"
        )
    if modules_per_stage is None:
        return uniform_ranges(num_modules, num_stages)
    if len(modules_per_stage) != num_stages or sum(modules_per_stage) != num_modules or min(modules_per_stage) < 1:
        raise ConfigError(
            f"pipeline.modules_per_stage={modules_per_stage} must give each of the {num_stages} stages at least one "
            f"module and sum to split.num_modules={num_modules}"
        )
    ends = [sum(modules_per_stage[: i + 1]) - 1 for i in range(num_stages - 1)]
    return ranges_from_boundaries(ends, num_modules)


def balanced_ranges(unit_cost: list[float], head_cost: list[float], num_modules: int) -> list[Range]:
    """Contiguous K-way split of the units minimising the costliest module (dynamic programming, O(K n^2)).

    A module over units ``[a, b)`` costs ``sum(unit_cost[a:b]) + head_cost[b - 1]``: its units plus the head
    that sits on its last unit (for the last module, the classifier, ``head_cost[-1]``).
    """
    n = len(unit_cost)
    check_k(n, num_modules)
    prefix = [0.0]
    for c in unit_cost:
        prefix.append(prefix[-1] + c)

    def cost(a: int, b: int) -> float:
        return prefix[b] - prefix[a] + head_cost[b - 1]

    inf = float("inf")
    # best[k][b]: the smallest max-cost of splitting units [0, b) into k modules; cut[k][b]: where the last starts
    best = [[inf] * (n + 1) for _ in range(num_modules + 1)]
    cut = [[0] * (n + 1) for _ in range(num_modules + 1)]
    best[0][0] = 0.0
    for k in range(1, num_modules + 1):
        for b in range(k, n + 1):
            for a in range(k - 1, b):
                value = max(best[k - 1][a], cost(a, b))
                if value < best[k][b]:
                    best[k][b], cut[k][b] = value, a
    ends, b = [], n
    for k in range(num_modules, 0, -1):
        a = cut[k][b]
        ends.append(a - 1)
        b = a
    return ranges_from_boundaries(sorted(ends)[1:], n)


def module_costs(ranges: list[Range], unit_cost: list[float], head_cost: list[float]) -> list[float]:
    """The predicted cost of each module of a split (same model as :func:`balanced_ranges`)."""
    return [sum(unit_cost[a:b]) + head_cost[b - 1] for a, b in ranges]


def snapped_ranges(unit_cost: list[float], head_cost: list[float], num_modules: int, tie: float) -> list[Range]:
    """A split whose costliest module is within ``tie`` (a fraction) of the best one's, chosen by a fixed rule:
    the one nearest the uniform split (least squared distance of its boundaries from uniform's; then the
    earliest boundaries). Measured costs wobble by a few percent from run to run; splits that differ by less
    than that are ties, and the rule picks the same one of them every time."""
    n = len(unit_cost)
    best = max(module_costs(balanced_ranges(unit_cost, head_cost, num_modules), unit_cost, head_cost))
    bound = best * (1 + tie)
    prefix = [0.0]
    for c in unit_cost:
        prefix.append(prefix[-1] + c)
    anchor = [b for _, b in uniform_ranges(n, num_modules)]  # uniform's module ends (exclusive)
    inf = (float("inf"), ())
    # best_to[k][b]: (distance, ends) of the nearest feasible split of units [0, b) into k modules
    best_to = [[inf] * (n + 1) for _ in range(num_modules + 1)]
    best_to[0][0] = (0.0, ())
    for k in range(1, num_modules + 1):
        for b in range(k, n + 1):
            for a in range(k - 1, b):
                dist, ends = best_to[k - 1][a]
                if dist == inf[0] or prefix[b] - prefix[a] + head_cost[b - 1] > bound:
                    continue
                candidate = (dist + (b - anchor[k - 1]) ** 2, (*ends, b))
                if candidate < best_to[k][b]:
                    best_to[k][b] = candidate
    ends = best_to[num_modules][n][1]
    return ranges_from_boundaries([e - 1 for e in ends[:-1]], n)


def boundaries_of(ranges: list[Range]) -> list[int]:
    """The ``split.boundaries`` that give ``ranges`` back (module i ends after unit ``boundaries[i]``)."""
    return [end - 1 for _, end in ranges[:-1]]
