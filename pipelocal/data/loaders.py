"""Loaders: shuffled, augmented, normalised batches on the training device.

Small datasets live in memory as uint8 tensors on the device; batches are cropped, flipped and normalised
there in one vectorised step, so the loader costs no per-sample Python and no host-to-device copy per
batch. ImageNet-style folders stream through a DataLoader with workers (and pinned memory on CUDA).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from pipelocal.config import DataConfig
from pipelocal.data.sources import (
    RECIPES,
    SOURCES,
    Batch,
    DataFileError,
    DataInfo,
    Recipe,
    Split,
    candidate_roots,
    not_found,
)


class TensorLoader:
    """Shuffled batches from an in-memory uint8 split, augmented and normalised on ``device``."""

    def __init__(
        self,
        split: Split,
        recipe: Recipe,
        batch_size: int,
        device: torch.device,
        train: bool,
        seed: int = 0,
        drop_last: bool = False,
    ):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.recipe = recipe
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.seed = seed
        self.drop_last = drop_last
        self.epoch, self.start = 0, 0
        self.replica, self.replicas = 0, 1
        self.mean = torch.tensor(recipe.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(recipe.std, device=device).view(1, -1, 1, 1)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def shard(self, replica: int, replicas: int) -> None:
        """Yield replica ``replica``'s part of every batch (training) or every ``replicas``-th batch (evaluation)."""
        self.replica, self.replicas = replica, replicas

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next iteration is epoch ``epoch``'s, from batch ``start`` on (a resumed run): the order and the
        augmentation of every batch are those of an uninterrupted epoch."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            draws = augment_draws(len(index), self.recipe, gen) if self.train else {}
            if i < self.start or (not self.train and i % self.replicas != self.replica):
                continue  # skipped, but its random draws are taken, so later batches are the same
            if self.train and self.replicas > 1:
                index = index.tensor_split(self.replicas)[self.replica]
                draws = {name: d.tensor_split(self.replicas)[self.replica] for name, d in draws.items()}
            index = to_device(index, self.device)
            draws = {name: to_device(d, self.device) for name, d in draws.items()}
            raw = self.images[index].float().div_(255)
            if self.train:
                raw = augment(raw, self.recipe, draws)
            yield Batch((raw - self.mean) / self.std, self.labels[index], raw)
        self.start = 0


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without a sync per batch: on CUDA a copy from pageable memory waits for
    everything queued on the stream before it; one from pinned memory is queued like a kernel."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def augment_draws(n: int, recipe: Recipe, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The random numbers of one batch's augmentation, in a fixed order (a skipped batch takes them too)."""
    draws = {}
    if recipe.pad:
        draws["top"] = torch.randint(0, 2 * recipe.pad + 1, (n,), generator=gen)
        draws["left"] = torch.randint(0, 2 * recipe.pad + 1, (n,), generator=gen)
    if recipe.flip:
        draws["flip"] = torch.rand(n, generator=gen) < 0.5
    return draws


def augment(raw: torch.Tensor, recipe: Recipe, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    """Random crop after padding (reflect or zeros, ``recipe.pad_mode``), and horizontal flip, for a whole batch
    at once. Padding the raw [0, 1] input with zeros pads black pixels, as torchvision's RandomCrop does."""
    n, channels, height, width = raw.shape
    if recipe.pad:
        p = recipe.pad
        padded = F.pad(raw, (p, p, p, p), mode=recipe.pad_mode)
        top, left = draws["top"].to(raw.device), draws["left"].to(raw.device)
        rows = (top[:, None] + torch.arange(height, device=raw.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(width, device=raw.device))[:, None, None, :]
        batch = torch.arange(n, device=raw.device)[:, None, None, None]
        chan = torch.arange(channels, device=raw.device)[None, :, None, None]
        raw = padded[batch, chan, rows, cols]
    if recipe.flip:
        flip = draws["flip"].to(raw.device)[:, None, None, None]
        raw = torch.where(flip, raw.flip(3), raw)
    return raw


class DatasetBatches:
    """A torch Dataset's batches on ``device`` through a DataLoader with workers, normalised by ``mean``/``std``:
    the order, shards and mid-epoch resume of :class:`EpochBatches`. Subclasses say how a batch is made."""

    def __init__(self, dataset, cfg: DataConfig, device: torch.device, train: bool, seed: int, mean, std):
        self.dataset, self.device = dataset, device
        self.mean = torch.as_tensor(mean, dtype=torch.float32).to(device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).to(device).view(1, -1, 1, 1)
        batch_size = cfg.batch_size if train else cfg.eval_batch_size
        self.batches = EpochBatches(len(dataset), batch_size, train, seed, train and cfg.drop_last)
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.batches,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=cfg.workers > 0,
        )

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def shard(self, replica: int, replicas: int) -> None:
        self.batches.shard(replica, replicas)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.batches)


class FolderLoader(DatasetBatches):
    """ImageNet-style ``train/`` and ``val/`` folders through a DataLoader with workers."""

    def __init__(self, root: Path, cfg: DataConfig, recipe: Recipe, device: torch.device, train: bool, seed: int):
        import torchvision.transforms as T

        size = cfg.image_size
        if train:
            tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])
        else:
            tf = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor()])
        super().__init__(_image_folder(root, train, tf), cfg, device, train, seed, recipe.mean, recipe.std)

    def __iter__(self):
        for raw, y in self.loader:
            raw = raw.to(self.device, non_blocking=True)
            yield Batch((raw - self.mean) / self.std, y.to(self.device, non_blocking=True), raw)


class EpochBatches(torch.utils.data.Sampler):
    """The batches of an epoch from (seed, epoch) alone, from batch ``start`` on: a resumed run reads the same
    samples in the same order. With replicas (``shard``): this replica's part of every training batch, or every
    ``replicas``-th evaluation batch, as TensorLoader. (Workers' augmentation draws are not replayed: a resumed
    folder run sees the same images, differently cropped.)"""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool):
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.epoch, self.start = 0, 0
        self.replica, self.replicas = 0, 1

    def shard(self, replica: int, replicas: int) -> None:
        self.replica, self.replicas = replica, replicas

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _batches(self) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=gen) if self.shuffle else torch.arange(self.n)
        batches = list(order.split(self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        batches = batches[self.start :]
        if not self.shuffle:
            return batches[self.replica :: self.replicas]
        return [b.tensor_split(self.replicas)[self.replica] for b in batches]

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self):
        batches, self.start = self._batches(), 0
        return iter(b.tolist() for b in batches)


def _image_folder(root: Path, train: bool, transform):
    """train/ or val/ as an ImageFolder whose labels are train/'s class indices: a class missing from val/
    keeps its index (torchvision would renumber the rest); one that train/ lacks is an error."""
    import torchvision.datasets as tvd

    classes = sorted(e.name for e in (root / "train").iterdir() if e.is_dir())
    if not classes:
        raise DataFileError(f"{root / 'train'} has no class folders (it needs one subfolder per class)")

    class Indexed(tvd.ImageFolder):
        def find_classes(self, directory):
            found = sorted(e.name for e in Path(directory).iterdir() if e.is_dir())
            extra = sorted(set(found) - set(classes))
            if extra:
                raise DataFileError(
                    f"{directory} has classes that {root / 'train'} lacks: {', '.join(extra)}; a model cannot "
                    "learn them (remove them, or add them to train/)"
                )
            return classes, {name: i for i, name in enumerate(classes)}

    try:
        return Indexed(str(root / ("train" if train else "val")), transform=transform, allow_empty=not train)
    except FileNotFoundError as err:  # a train/ class without images
        raise DataFileError(f"{root / 'train'}: {err}") from err


def _folder_loaders(cfg: DataConfig, device: torch.device, seed: int):
    tried = candidate_roots(cfg, "imagenet")
    for root in tried:
        if (root / "train").is_dir() and (root / "val").is_dir():
            recipe = RECIPES["imagefolder"]
            train = FolderLoader(root, cfg, recipe, device, True, seed)
            test = FolderLoader(root, cfg, recipe, device, False, seed)
            files = (str(root / "train"), str(root / "val"))
            info = DataInfo(len(train.dataset.classes), (3, cfg.image_size, cfg.image_size), files)
            return train, test, info
    raise not_found("imagefolder", tried, " The folder needs train/ and val/ with one subfolder per class.")


def build_loaders(cfg: DataConfig, device: torch.device, seed: int = 0):
    """Train loader, test loader and :class:`DataInfo` for ``cfg``."""
    if cfg.name == "imagefolder":
        return _folder_loaders(cfg, device, seed)
    if ":" in cfg.name:  # package.module:function, the user's datasets
        from pipelocal.data.user import user_loaders

        return user_loaders(cfg, device, seed)
    train, test, classes = SOURCES.get(cfg.name)(cfg)
    if cfg.train_subset:  # (validated >= 0; 0 or None: the full set)
        train = Split(train.images[: cfg.train_subset], train.labels[: cfg.train_subset], train.files)
    if cfg.test_subset:
        test = Split(test.images[: cfg.test_subset], test.labels[: cfg.test_subset], test.files)
    recipe = RECIPES[cfg.name] if cfg.augment else _no_augment(RECIPES[cfg.name])
    files = tuple(dict.fromkeys(train.files + test.files))
    info = DataInfo(classes, tuple(train.images.shape[1:]), files)
    train_loader = TensorLoader(train, recipe, cfg.batch_size, device, True, seed, cfg.drop_last)
    test_loader = TensorLoader(test, recipe, cfg.eval_batch_size, device, False)
    return train_loader, test_loader, info


def _no_augment(recipe: Recipe) -> Recipe:
    return Recipe(recipe.mean, recipe.std)
