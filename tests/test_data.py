import os
from pathlib import Path

import pytest
import torch

from pipelocal.config import DataConfig
from pipelocal.data import RECIPES, DatasetNotFoundError, Split, TensorLoader, augment, build_loaders
from pipelocal.data.loaders import augment_draws

CPU = torch.device("cpu")


def test_synthetic_is_deterministic_and_shaped():
    cfg = DataConfig(name="synthetic", synthetic_shape=[1, 12, 10], synthetic_train=100, synthetic_test=20)
    a, _, info = build_loaders(cfg, CPU)
    b, _, _ = build_loaders(cfg, CPU)
    assert info.input_shape == (1, 12, 10) and info.num_classes == 10
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.uint8


def test_batches_carry_normalised_and_raw_input():
    cfg = DataConfig(name="synthetic", synthetic_train=64, batch_size=16, augment=False)
    train, _, _ = build_loaders(cfg, CPU)
    batch = next(iter(train))
    assert batch.raw.min() >= 0 and batch.raw.max() <= 1
    mean = torch.tensor(RECIPES["synthetic"].mean).view(1, -1, 1, 1)
    std = torch.tensor(RECIPES["synthetic"].std).view(1, -1, 1, 1)
    assert torch.allclose(batch.x, (batch.raw - mean) / std)


def test_epoch_order_is_seeded_and_changes_per_epoch():
    split = Split(
        torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous(), torch.arange(40)
    )
    loader = TensorLoader(split, RECIPES["synthetic"], 10, CPU, train=True, seed=3)
    first = torch.cat([b.y for b in loader])
    again = torch.cat([b.y for b in loader])
    loader.set_epoch(1)
    second = torch.cat([b.y for b in loader])
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert sorted(first.tolist()) == list(range(40))


def test_last_partial_batch_and_drop_last():
    split = Split(torch.zeros(25, 1, 4, 4, dtype=torch.uint8), torch.zeros(25, dtype=torch.long))
    assert [len(b) for b in TensorLoader(split, RECIPES["synthetic"], 10, CPU, True)] == [10, 10, 5]
    assert len(TensorLoader(split, RECIPES["synthetic"], 10, CPU, True, drop_last=True)) == 2


def test_crop_and_flip_keep_shape_and_content():
    raw = torch.rand(6, 3, 8, 8)
    out = augment(
        raw, RECIPES["cifar10"], augment_draws(len(raw), RECIPES["cifar10"], torch.Generator().manual_seed(0))
    )
    assert out.shape == raw.shape and not torch.equal(out, raw)
    # Every output is a window of the reflect-padded (maybe flipped) image: check sample 0 against all windows.
    padded = torch.nn.functional.pad(raw[:1], (4, 4, 4, 4), mode="reflect")[0]
    windows = [padded[:, i : i + 8, j : j + 8] for i in range(9) for j in range(9)]
    windows += [w.flip(2) for w in windows]
    assert any(torch.equal(out[0], w) for w in windows)


@pytest.mark.parametrize(
    "name, mean, std, pad, flip, pad_mode",
    [
        ("cifar10", (125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255), 4, True, "reflect"),
        ("svhn", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 2, False, "constant"),
        ("stl10", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 4, True, "constant"),
    ],
)
def test_recipes_follow_the_authors_code(name, mean, std, pad, flip, pad_mode):
    """InfoPro's/AugLocal's train.py: CIFAR reflect-pads; SVHN and STL-10 use RandomCrop(padding=...) (zeros) and
    mean = std = 127.5/255."""
    recipe = RECIPES[name]
    assert recipe.mean == pytest.approx(mean) and recipe.std == pytest.approx(std)
    assert (recipe.pad, recipe.flip, recipe.pad_mode) == (pad, flip, pad_mode)


def test_zero_padding_crops_show_black_borders():
    raw = torch.rand(64, 3, 8, 8) * 0.5 + 0.5  # no pixel is 0, so any 0 is padding
    recipe = RECIPES["stl10"]
    draws = augment_draws(len(raw), recipe, torch.Generator().manual_seed(0))
    out = augment(raw, recipe, draws)
    shifted = (draws["top"] != 4) | (draws["left"] != 4)  # a window off the centre takes in some padding
    assert shifted.any() and torch.equal(out.eq(0).flatten(1).any(1), shifted)
    padded = torch.nn.functional.pad(raw[:1], (4, 4, 4, 4))[0]
    windows = [padded[:, i : i + 8, j : j + 8] for i in range(9) for j in range(9)]
    assert any(torch.equal(out[0], w) or torch.equal(out[0], w.flip(2)) for w in windows)


def test_missing_dataset_names_every_path_and_the_fix(tmp_path):
    cfg = DataConfig(name="cifar10", root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as err:
        build_loaders(cfg, CPU)
    text = str(err.value)
    assert "cifar10" in text and str(tmp_path / "nowhere") in text and "--data.download=true" in text


def test_fashion_mnist_from_the_debian_package():
    if not Path("/usr/share/datasets/fashion-mnist").exists() and not os.environ.get("CI"):
        pytest.skip("dataset-fashion-mnist is not installed (.ci/run installs it)")
    train, test, info = build_loaders(DataConfig(name="fashion_mnist", batch_size=256), CPU)
    assert info.input_shape == (1, 28, 28) and info.num_classes == 10
    assert len(train.labels) == 60000 and len(test.labels) == 10000
    assert torch.bincount(test.labels).tolist() == [1000] * 10
