"""Every shipped config that splits by a published table gets the authors' table for its network and dataset.

The tables below are transcribed from InfoPro's released code (blackfeather-wang/InfoPro-Pytorch, "Experiments on
CIFAR-SVHN-STL10/networks/configs.py": InfoPro, and InfoPro_balanced_memory, which the authors index by dataset),
kept apart from pipelocal/split.py so that a slip in either shows."""

from pathlib import Path

import pytest

from pipelocal.config import ConfigError
from pipelocal.config_parse import load_config
from pipelocal.models import build_backbone
from pipelocal.split import module_ranges

INFOPRO = {
    "resnet32": {
        2: [[2, 1]],
        3: [[1, 4], [2, 4]],
        4: [[1, 2], [2, 1], [3, 0]],
        8: [[1, 0], [1, 2], [1, 4], [2, 1], [2, 3], [3, 0], [3, 2]],
        16: [[0, 0], [1, 0], [1, 1], [1, 2], [1, 3], [1, 4], [2, 0], [2, 1], [2, 2], [2, 3], [2, 4]]
        + [[3, 0], [3, 1], [3, 2], [3, 3]],
    },
    "resnet110": {
        2: [[2, 8]],
        3: [[1, 17], [2, 17]],
        4: [[1, 11], [2, 7], [3, 3]],
        8: [[1, 4], [1, 11], [2, 0], [2, 7], [2, 14], [3, 3], [3, 10]],
        16: [[1, 1], [1, 4], [1, 7], [1, 10], [1, 13], [1, 16], [2, 1], [2, 4], [2, 7], [2, 11], [2, 15]]
        + [[3, 1], [3, 5], [3, 9], [3, 13]],
    },
}
INFOPRO_BALANCED_MEMORY = {
    "resnet110": {
        "cifar10": {2: [[1, 14]], 3: [[1, 9], [2, 2]], 4: [[1, 6], [1, 14], [2, 8]]},
        "stl10": {2: [[1, 14]], 3: [[1, 8], [2, 1]], 4: [[1, 6], [1, 14], [2, 8]]},
    }
}
CONFIGS = sorted(
    p for p in Path(__file__).parents[1].joinpath("configs").rglob("*.yaml") if "balance: table" in p.read_text()
)


def _ends(cfg) -> list[list[int]]:
    """The (stage, block) positions the config's modules end at (all but the last)."""
    net = build_backbone(cfg.model.name, cfg.model.depth, 3, 10)
    ranges = module_ranges(cfg.split, net.num_units, cfg.model.depth, net.positions, cfg.data.name)
    return [list(net.positions[stop - 1]) for _, stop in ranges[:-1]]


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.stem}" for p in CONFIGS])
def test_a_shipped_table_split_is_the_authors_table_for_its_dataset(path):
    cfg = load_config(path)
    arch, k = f"resnet{cfg.model.depth}", cfg.split.num_modules
    if cfg.split.table == "infopro_star":
        want = INFOPRO_BALANCED_MEMORY[arch][cfg.data.name][k]
    else:
        want = INFOPRO[arch][k]
    assert _ends(cfg) == want


def test_the_shipped_configs_cover_both_infopro_star_datasets():
    star = {(load_config(p).data.name, load_config(p).split.num_modules) for p in CONFIGS if "star" in p.stem}
    assert {("stl10", 3), ("cifar10", 3)} <= star


def test_infopro_star_on_a_dataset_without_an_authors_table_is_refused():
    cfg = load_config(CONFIGS[0], ["--split.table=infopro_star", "--model.depth=110", "--data.name=svhn"])
    with pytest.raises(ConfigError, match="cifar10, stl10 only, not for data.name=svhn"):
        _ends(cfg)
