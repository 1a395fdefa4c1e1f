"""``data.name: package.module:function``: a user's datasets, read through a DataLoader with workers.

The factory takes no arguments and returns ``(train, test, num_classes)``: two torch Datasets whose items are
``(image, label)``, the image a (C, H, W) tensor in [0, 1] (float, as torchvision's ToTensor gives; uint8 is
divided by 255) and the label an int. The user's Dataset does its own augmentation. Batches are normalised with
per-channel mean and std measured on (up to) 512 training images spread over the set, and keep the [0, 1] input
as ``raw`` (InfoPro reconstructs it). Order, sharding across replicas and mid-epoch resume are the built-in
folder loader's (:class:`EpochBatches`): a batch is fixed by (train.seed, epoch, step).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from pipelocal.config import DataConfig
from pipelocal.data.loaders import DatasetBatches
from pipelocal.data.sources import Batch, DataInfo
from pipelocal.models.user import load_factory
from pipelocal.options import ConfigError

STAT_SAMPLES = 512  # images the normalisation is measured on


def as_unit_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


class DatasetLoader(DatasetBatches):
    """Batches of a user's Dataset on ``device``: the same interface as the built-in loaders."""

    def __init__(self, dataset: Dataset, cfg: DataConfig, stats, device: torch.device, train: bool, seed: int):
        mean, std = stats
        super().__init__(dataset, cfg, device, train, seed, mean, std)

    def __iter__(self):
        for images, labels in self.loader:
            raw = as_unit_float(images.to(self.device, non_blocking=True))
            y = torch.as_tensor(labels).to(self.device, non_blocking=True).long()
            yield Batch((raw - self.mean) / self.std, y, raw)


def check_item(dataset: Dataset, which: str, name: str, num_classes: int) -> tuple[int, int, int]:
    """The image shape of item 0, after checking the item is (C x H x W tensor in [0, 1], int label)."""
    where = f"data.name={name}: the {which} dataset's item 0"
    if len(dataset) == 0:
        raise ConfigError(f"data.name={name}: the {which} dataset is empty")
    item = dataset[0]
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise ConfigError(f"{where} is {type(item).__name__}; items must be (image tensor C x H x W, int label)")
    image, label = item
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        what = f"a tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ConfigError(
            f"{where} has an image that is {what}; give a C x H x W tensor (e.g. torchvision's ToTensor(); "
            "a gray H x W image: image.unsqueeze(0))"
        )
    label = int(label)
    if not 0 <= label < num_classes:
        raise ConfigError(f"{where} has label {label}, outside 0..{num_classes - 1} (num_classes={num_classes})")
    return tuple(image.shape)


def channel_stats(dataset: Dataset, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over up to STAT_SAMPLES images spread evenly over the set; checks [0, 1]."""
    step = max(len(dataset) // STAT_SAMPLES, 1)
    images = torch.stack([as_unit_float(dataset[i][0]) for i in range(0, len(dataset), step)[:STAT_SAMPLES]])
    low, high = images.min().item(), images.max().item()
    if low < 0 or high > 1:
        raise ConfigError(
            f"data.name={name}: images hold values in [{low:.3g}, {high:.3g}]; give them in [0, 1] (ToTensor(), "
            "without Normalize: pipelocal normalises, and InfoPro reconstructs the [0, 1] image)"
        )
    return images.mean((0, 2, 3)), images.std((0, 2, 3)).clamp_min(1e-6)


def user_loaders(cfg: DataConfig, device: torch.device, seed: int):
    """Train loader, test loader and :class:`DataInfo` from the factory ``cfg.name``."""
    factory = load_factory(cfg.name, "data.name")
    try:
        out = factory()
    except TypeError as err:  # most often a factory that expects arguments
        raise ConfigError(
            f"data.name={cfg.name}: calling it without arguments failed ({err}); the factory takes none"
        ) from err
    if not isinstance(out, tuple | list) or len(out) != 3 or not isinstance(out[2], int):
        raise ConfigError(
            f"data.name={cfg.name} returned {type(out).__name__}; return (train Dataset, test Dataset, num_classes)"
        )
    train, test, classes = out
    if cfg.train_subset:
        train = Subset(train, range(min(cfg.train_subset, len(train))))
    if cfg.test_subset:
        test = Subset(test, range(min(cfg.test_subset, len(test))))
    shape = check_item(train, "train", cfg.name, classes)
    if check_item(test, "test", cfg.name, classes) != shape:
        raise ConfigError(f"data.name={cfg.name}: train and test images differ in shape; give both {shape}")
    stats = channel_stats(train, cfg.name)
    loaders = [DatasetLoader(ds, cfg, stats, device, is_train, seed) for ds, is_train in ((train, True), (test, False))]
    return loaders[0], loaders[1], DataInfo(classes, shape)
