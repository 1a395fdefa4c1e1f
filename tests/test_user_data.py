"""data.name: package.module:function (tests/user_nets.py:squares): batches, normalisation, seeded order,
sharding across replicas and mid-epoch resume as the built-in loaders have them; the API, pipelocal.train."""

import pytest
import torch

import pipelocal
from pipelocal.config import ConfigError
from pipelocal.config_parse import load_config
from pipelocal.data import build_loaders
from tests.user_nets import Squares, small_cnn, squares

CPU = torch.device("cpu")


def loaders(*overrides):
    cfg = load_config(None, ["--data.name=tests.user_nets:squares", "--data.batch_size=16", "--data.workers=0"])
    for item in overrides:
        key, value = item.split("=")
        setattr(cfg.data, key, int(value))
    return build_loaders(cfg.data, CPU, seed=3)


def test_batches_are_the_datasets_images_in_the_seeded_order():
    train, test, info = loaders()
    assert (info.num_classes, info.input_shape) == (4, (1, 12, 12))
    assert (train.num_samples, test.num_samples, len(train), len(test)) == (96, 40, 6, 1)
    dataset = Squares(96, 0)
    train.set_epoch(2)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(3 * 100_003 + 2))  # (seed, epoch) alone
    batch = next(iter(train))
    assert torch.equal(batch.raw, dataset.images[order[:16]])
    assert torch.equal(batch.y, dataset.labels[order[:16]])
    picked = torch.stack([dataset[i][0] for i in range(96)])  # 96 < 512: every image measured
    mean, std = picked.mean((0, 2, 3)), picked.std((0, 2, 3))
    assert torch.allclose(batch.x, (batch.raw - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))


def test_replicas_split_every_batch_and_resume_continues_mid_epoch():
    whole, _, _ = loaders()
    parts = [loaders()[0] for _ in range(2)]
    for r, part in enumerate(parts):
        part.shard(r, 2)
    whole.set_epoch(1)
    for part in parts:
        part.set_epoch(1)
    full = list(whole)
    halves = list(zip(*parts))
    assert len(halves) == len(full)
    for batch, (a, b) in zip(full, halves):
        assert torch.equal(torch.cat([a.y, b.y]), batch.y) and torch.equal(torch.cat([a.raw, b.raw]), batch.raw)
    resumed, _, _ = loaders()
    resumed.set_epoch(1, start=4)  # a run stopped after step 4 of epoch 1
    rest = list(resumed)
    assert len(rest) == 2 and all(torch.equal(a.raw, b.raw) for a, b in zip(rest, full[4:]))


@pytest.mark.parametrize(
    "factory, words",
    [
        ("squares_out_of_range", ["images hold values in [", "255]", "give them in [0, 1]"]),
        ("squares_flat", ["tensor of shape (12, 12)", "unsqueeze(0)"]),
        ("squares_pair", ["returned tuple", "(train Dataset, test Dataset, num_classes)"]),
    ],
)
def test_bad_user_data_is_refused_with_the_fix(factory, words):
    cfg = load_config(None, [f"--data.name=tests.user_nets:{factory}", "--data.workers=0"])
    with pytest.raises(ConfigError) as err:
        build_loaders(cfg.data, CPU)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_api_trains_a_sequential_on_a_dataset_factory(tmp_path):
    torch.manual_seed(0)
    net = small_cnn(in_channels=1, num_classes=4, image_size=12, width=8)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    overrides = [
        "mode=sequential",
        "data.batch_size=16",
        "data.workers=0",
        "split.num_modules=3",
        "split.balance=uniform",  # (the default job profiles the split: timing, which a loaded host varies)
        "train.epochs=4",
        "metrics.console=none",
    ]
    summary = pipelocal.train(
        overrides=[*overrides, f"metrics.out_dir={tmp_path}", "metrics.run_name=api", "method.name=greedy"],
        model=net,
        data=squares,
    )
    assert summary["method"] == "greedy" and summary["num_modules"] == 3 and summary["steps"] == 24
    assert summary["final_top1"] > 0.5  # 4 classes: chance is 0.25; the squares are easy
    assert summary["config"]["data"]["name"] == "tests.user_nets:squares"
    assert all(torch.equal(v, initial[k]) for k, v in net.state_dict().items())  # the caller's net is untouched
    assert (tmp_path / "api" / "summary.json").is_file()


def test_a_user_network_resumes_and_exports(tmp_path):
    """A run of a factory network on factory data, continued from its checkpoint, exported as a plain backbone
    whose forward is the trained LocalNet's."""
    from pipelocal.checkpoint import load_model_state, resolve
    from pipelocal.export import export_backbone
    from pipelocal.models import build_model
    from pipelocal.runtime import build_local_net

    common = [
        "mode=sequential",
        "model.name=tests.user_nets:small_cnn",
        "data.name=tests.user_nets:squares",
        "data.batch_size=32",
        "data.workers=0",
        "split.num_modules=2",
        "split.balance=uniform",
        "method.name=infopro",
        "metrics.console=none",
        f"metrics.out_dir={tmp_path}",
    ]
    first = pipelocal.train(overrides=[*common, "train.epochs=1", "metrics.run_name=run"])
    # a finished run is never rewritten (docs/failures.md): it trains on into a run of its own
    resume = [f"train.resume={tmp_path / 'run'}", "metrics.run_name=continued"]
    second = pipelocal.train(overrides=[*common, "train.epochs=2", *resume])
    assert first["steps"] == 3 and second["steps"] == 6  # the resumed run counts on from its checkpoint
    run = tmp_path / "continued"
    out = export_backbone(run, say=lambda line: None)
    cfg = load_config(None, [f"--{item}" for item in common])
    train, _, info = build_loaders(cfg.data, CPU)
    backbone = build_model(cfg.model.name, 0, info.input_shape, info.num_classes, "batch")
    backbone.load_state_dict(torch.load(out), strict=True)
    net = build_local_net(cfg, info, [(0, 3), (3, 6)])
    net.load_state_dict(load_model_state(resolve(run)), strict=True)
    x = next(iter(train)).x
    assert torch.equal(backbone.eval()(x), net.eval()(x))


def test_api_takes_a_config_object_and_a_factory_function(tmp_path):
    from tests.conftest import tiny_config
    from tests.user_nets import tiny_cnn

    cfg = tiny_config("--train.max_steps=2", tmp_path=tmp_path)
    summary = pipelocal.train(config=cfg, overrides=["split.num_modules=3", "method.name=dgl"], model=tiny_cnn)
    assert summary["config"]["model"]["name"] == "tests.user_nets:tiny_cnn"  # module:qualname of the function
    assert summary["num_modules"] == 3 and summary["module_units"] == [[0, 2], [2, 3], [3, 4]]
    assert cfg.split.num_modules == 2 and cfg.model.name == "cifar_resnet"  # the caller's config is untouched
    with pytest.raises(ConfigError, match="config=int: give a YAML path, a JobConfig or None"):
        pipelocal.train(config=42)
    with pytest.raises(ConfigError, match="model=int: give a factory, an nn.Sequential or a list of modules"):
        pipelocal.train(config=cfg, model=42)
