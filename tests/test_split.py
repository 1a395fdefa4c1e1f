import pytest
import torch

from pipelocal.config import ConfigError, SplitConfig
from pipelocal.models import build_backbone
from pipelocal.split import (
    balanced_ranges,
    module_costs,
    module_ranges,
    ranges_from_boundaries,
    stage_ranges,
    table_ranges,
    uniform_ranges,
)


def _sizes(ranges):
    return [b - a for a, b in ranges]


def test_uniform_covers_every_unit_once():
    ranges = uniform_ranges(10, 4)
    assert ranges == [(0, 3), (3, 6), (6, 8), (8, 10)]


@pytest.mark.parametrize(
    "depth, k, sizes",
    [
        (32, 2, [8, 8]),  # [2,1] = unit 7
        (32, 4, [4, 4, 4, 4]),  # [1,2] [2,1] [3,0] = units 3, 7, 11
        (32, 8, [2, 2, 2, 2, 2, 2, 2, 2]),
        (32, 16, [1] * 16),
        (110, 2, [28, 27]),  # [2,8] = 1 + 18 + 8 = unit 27
        (110, 4, [13, 14, 14, 14]),  # [1,11] [2,7] [3,3] = units 12, 26, 40
        (110, 8, [6, 7, 7, 7, 7, 7, 7, 7]),
        (110, 16, [3] * 9 + [4] * 7),  # ends 2, 5, ..., 50; the last module is units 51-54
    ],
)
def test_infopro_tables(depth, k, sizes):
    net = build_backbone("cifar_resnet", depth, 3, 10)
    assert _sizes(table_ranges("infopro", depth, k, net.positions)) == sizes


def test_infopro_star_tables_put_early_cuts_first():
    net = build_backbone("cifar_resnet", 110, 3, 10)
    assert _sizes(table_ranges("infopro_star", 110, 2, net.positions, "cifar10")) == [16, 39]  # [1,14] = unit 15
    assert _sizes(table_ranges("infopro_star", 110, 3, net.positions, "cifar10")) == [11, 11, 33]  # units 10, 21
    assert _sizes(table_ranges("infopro_star", 110, 4, net.positions, "cifar10")) == [8, 8, 12, 27]  # 7, 15, 27
    assert _sizes(table_ranges("infopro_star", 110, 3, net.positions, "stl10")) == [10, 11, 34]  # [1,8] [2,1]


def test_missing_table_lists_what_exists():
    net = build_backbone("cifar_resnet", 20, 3, 10)
    with pytest.raises(ConfigError, match="infopro R-32 K=4"):
        table_ranges("infopro", 20, 4, net.positions)


def test_k_larger_than_units_is_an_error():
    with pytest.raises(ConfigError, match="larger than the backbone's 10 units"):
        module_ranges(SplitConfig(num_modules=11), 10, 20, [])


@pytest.mark.parametrize("bad", [[3, 3], [5, 2], [-1], [9]])
def test_bad_boundaries(bad):
    with pytest.raises(ConfigError, match="boundaries"):
        ranges_from_boundaries(bad, 10)


@pytest.mark.parametrize("name, depth", [("cifar_resnet", 20), ("resnet18", 0)])
def test_split_recomposition_equals_unsplit_forward(name, depth):
    torch.manual_seed(0)
    net = build_backbone(name, depth, 3, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    ranges = uniform_ranges(net.num_units, 3)
    h = x
    for start, end in ranges:
        for unit in net.units[start:end]:
            h = unit(h)
    assert torch.allclose(net.classifier(h), net(x), atol=1e-6)


def _brute_force(unit_cost, head_cost, k):
    import itertools

    n = len(unit_cost)
    best = None
    for ends in itertools.combinations(range(n - 1), k - 1):
        ranges = ranges_from_boundaries(list(ends), n)
        worst = max(module_costs(ranges, unit_cost, head_cost))
        best = worst if best is None else min(best, worst)
    return best


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_balanced_ranges_minimise_the_slowest_module(seed, k):
    gen = torch.Generator().manual_seed(seed)
    unit_cost = (torch.rand(9, generator=gen) * 10).tolist()
    head_cost = (torch.rand(9, generator=gen) * 5).tolist()
    ranges = balanced_ranges(unit_cost, head_cost, k)
    assert len(ranges) == k and ranges[0][0] == 0 and ranges[-1][1] == 9
    assert max(module_costs(ranges, unit_cost, head_cost)) == pytest.approx(_brute_force(unit_cost, head_cost, k))


def test_balance_counts_the_heads():
    """Equal units, but a costly head after unit 2 (where the even split would cut): cut elsewhere."""
    unit_cost, head_cost = [1.0] * 6, [0, 0, 10.0, 0, 0, 0]
    ranges = balanced_ranges(unit_cost, head_cost, 2)
    assert ranges != [(0, 3), (3, 6)] and max(module_costs(ranges, unit_cost, head_cost)) == 4


def test_stage_ranges():
    assert stage_ranges(4, 2) == [(0, 2), (2, 4)]
    assert stage_ranges(5, 2, [1, 4]) == [(0, 1), (1, 5)]
    with pytest.raises(ConfigError, match="every stage needs a module"):
        stage_ranges(2, 4)
    with pytest.raises(ConfigError, match="modules_per_stage"):
        stage_ranges(4, 2, [1, 1])
