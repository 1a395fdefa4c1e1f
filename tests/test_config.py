from pathlib import Path

import pytest

from pipelocal.config import ConfigError, JobConfig
from pipelocal.config_parse import help_text, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GRIDS = sorted(CONFIG_DIR.joinpath("ablations").glob("*.yaml"))  # sweep grids, not job configs
CONFIGS = sorted(set(CONFIG_DIR.rglob("*.yaml")) - set(GRIDS))


def test_defaults_validate():
    cfg = JobConfig().validate()
    assert cfg.mode == "sequential" and cfg.split.num_modules == 4


def test_override_casting():
    cfg = load_config(
        None, ["--train.epochs=7", "--optim.lr=1", "--optim.nesterov=false", "--method.lambdas=[5,1,0,0]"]
    )
    assert cfg.train.epochs == 7 and isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert cfg.optim.nesterov is False
    assert cfg.method.lambdas == [5.0, 1.0, 0.0, 0.0]


def test_cli_beats_yaml_beats_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 5, seed: 3}\n")
    cfg = load_config(path, ["--train.epochs=9"])
    assert (cfg.train.epochs, cfg.train.seed, cfg.optim.momentum) == (9, 3, 0.9)


@pytest.mark.parametrize(
    "override, words",
    [
        ("--train.epoch=2", ["unknown key 'train.epoch'", "train.epochs"]),
        ("--trian.epochs=2", ["unknown key 'trian'", "train"]),
        ("--train.epochs=two", ["train.epochs", "integer"]),
        ("--optim.step=sometimes", ["optim.step", "per_batch", "per_module"]),
        ("--model.depth=21", ["6n+2"]),
        ("--method.name=nope", ["nope", "dgl", "e2e", "greedy", "infopro"]),
        ("--mode=e2e", ["method.name=e2e"]),
        ("--split.boundaries=[1]", ["split.boundaries", "needs 3"]),
        ("train.epochs=2", ["--section.key=value"]),
    ],
)
def test_bad_input_names_the_key_and_the_fix(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for word in words:
        assert word in str(err.value)


def test_yaml_unknown_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {batchsize: 3}\n")
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_config(path)


def test_help_lists_every_section():
    text = help_text()
    for section in ("model", "data", "split", "method", "optim", "train", "metrics"):
        assert f"\n{section}:" in text
    assert "--optim.step" in text and "per_module" in text


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONFIG_DIR)) for p in CONFIGS])
def test_shipped_configs_validate(path):
    load_config(path)


def test_there_are_shipped_configs():
    names = {p.name for p in CONFIGS}
    assert "default.yaml" in names and len(names) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONFIG_DIR)) for p in CONFIGS])
def test_shipped_configs_build(path):
    import torch

    from pipelocal.data import DataInfo
    from pipelocal.runtime import build_local_net
    from pipelocal.runtime.profile import split_for

    cfg = load_config(path, ["--data.batch_size=16"])  # profiling (balance: time) on a small batch
    size = cfg.data.image_size
    shapes = {"cifar10": (3, 32, 32), "svhn": (3, 32, 32), "stl10": (3, 96, 96), "fashion_mnist": (1, 28, 28)}
    shape = {**shapes, "imagefolder": (3, size, size)}[cfg.data.name]
    info = DataInfo(10, shape)
    ranges, _ = split_for(cfg, info, torch.device("cpu"))
    net = build_local_net(cfg, info, ranges)
    assert net.num_modules == (1 if cfg.mode == "e2e" else cfg.split.num_modules)


@pytest.mark.parametrize("path", GRIDS, ids=[p.name for p in GRIDS])
def test_every_point_of_every_shipped_grid_validates(path):
    import sys

    import yaml

    sys.path.insert(0, str(CONFIG_DIR.parent / "benchmarks"))
    from ablate import points

    spec = yaml.safe_load(path.read_text())
    for point in points(spec):
        overrides = {**spec.get("set", {}), **{k: v for k, v in point.items() if k != "nproc"}}
        load_config(CONFIG_DIR.parent / spec["base"], [f"--{k}={v}" for k, v in overrides.items()])
