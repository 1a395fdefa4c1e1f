"""Datasets: where each one is found on disk (or downloaded), read into memory as uint8, and its recipe
(augmentation and normalisation, docs/methods.md#recipes). The loaders that turn them into batches are in loaders.py."""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipelocal.config import DataConfig
from pipelocal.registry import Registry


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk; the message names every path tried and how to get it."""


class DataFileError(ValueError):
    """A data file is there but unreadable (truncated, corrupt, of another format); the message names it."""


@dataclass
class Batch:
    x: torch.Tensor  # normalised input
    y: torch.Tensor  # int64 labels
    raw: torch.Tensor  # input in [0, 1] before normalisation

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Recipe:
    """Augmentation and normalisation of one dataset (docs/methods.md#recipes)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 0  # random crop after padding by this much (0: no crop)
    flip: bool = False
    pad_mode: str = "reflect"  # how the crop pads, as F.pad names it: "reflect" or "constant" (zeros)


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    files: tuple[str, ...] = ()  # what was read from disk (printed and recorded: data.json in the run folder)


@dataclass
class DataInfo:
    num_classes: int
    input_shape: tuple[int, int, int]
    files: tuple[str, ...] = ()  # every file or folder the run read its data from


SOURCES: Registry = Registry("dataset")

CIFAR_RECIPE = Recipe((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255), pad=4, flip=True)
# SVHN and STL-10 as the InfoPro/AugLocal code has them: mean = std = 127.5/255 for every channel, and
# torchvision's RandomCrop(padding=...), which pads with zeros (only CIFAR reflect-pads there).
HALF = (0.5, 0.5, 0.5)
RECIPES = {
    "fashion_mnist": Recipe((0.2860,), (0.3530,), pad=2, flip=True),
    "mnist": Recipe((0.1307,), (0.3081,), pad=2),
    "cifar10": CIFAR_RECIPE,
    "cifar100": CIFAR_RECIPE,
    "svhn": Recipe(HALF, HALF, pad=2, pad_mode="constant"),
    "stl10": Recipe(HALF, HALF, pad=4, flip=True, pad_mode="constant"),
    "synthetic": Recipe((0.5,), (0.25,)),
    "imagefolder": Recipe((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def candidate_roots(cfg: DataConfig, *subdirs: str) -> list[Path]:
    """Where a dataset may be: the user's ``data.root`` only (an explicit root never falls back to another
    copy), else ./data, $PIPELOCAL_DATA, /usr/share/datasets (Debian)."""
    if cfg.root:
        bases = [Path(cfg.root).expanduser()]
    else:
        bases = [Path("data"), Path(os.environ.get("PIPELOCAL_DATA", "~/.cache/pipelocal")).expanduser()]
        bases.append(Path("/usr/share/datasets"))
    return [base / sub for base in bases for sub in subdirs] + bases


def not_found(name: str, tried: list[Path], extra: str = "") -> DatasetNotFoundError:
    paths = ", ".join(str(p) for p in tried)
    return DatasetNotFoundError(
        f"dataset '{name}' not found; tried {paths}. "
        f"Fix: point --data.root at a folder that holds it, or pass --data.download=true to let torchvision "
        f"fetch it into --data.root (default ./data).{extra.replace(chr(10), ' ')}"
    )


# ----------------------------------------------------------------------------------- MNIST-format files


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (uint8), checked against its own header: a short or damaged file is named, not reshaped."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # gzip: BadGzipFile (an OSError) or EOFError on a cut stream
        raise DataFileError(f"data file {path} cannot be read ({type(err).__name__}: {err}); fetch it again") from err
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4]) if len(data) >= 4 else (1, 0, 0)
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
        raise DataFileError(f"data file {path} is not an idx file of bytes (bad header); fetch it again")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    want, have = int(np.prod(shape)), len(data) - 4 - 4 * ndim
    if have != want:
        raise DataFileError(
            f"data file {path} is truncated or corrupt: its header says {want} bytes of data, it holds {have}; "
            "fetch it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_dataset(name: str, cfg: DataConfig, subdirs: list[str], torchvision_cls: str, extra: str = ""):
    files = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    if cfg.download:
        import torchvision.datasets as tvd

        root = Path(cfg.root or "data")
        for train in (True, False):
            getattr(tvd, torchvision_cls)(str(root), train=train, download=True)
    tried = candidate_roots(cfg, *subdirs)
    for folder in tried:
        found = {}
        for split, (images, labels) in files.items():
            paths = [_first_existing(folder, stem) for stem in (images, labels)]
            if None in paths:
                break
            x, y = (_read_idx(p) for p in paths)
            if len(x) != len(y):
                raise DataFileError(f"data files {paths[0]} and {paths[1]} hold {len(x)} images but {len(y)} labels")
            images, labels = torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))
            found[split] = Split(images, labels, tuple(str(p) for p in paths))
        if len(found) == 2:
            return found["train"], found["test"], 10
    raise not_found(name, tried, extra)


def _first_existing(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


@SOURCES.register("fashion_mnist")
def fashion_mnist(cfg: DataConfig):
    hint = (
        "\nOn Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist)."
    )
    return _idx_dataset("fashion_mnist", cfg, ["fashion-mnist", "FashionMNIST/raw"], "FashionMNIST", hint)


@SOURCES.register("mnist")
def mnist(cfg: DataConfig):
    return _idx_dataset("mnist", cfg, ["mnist", "MNIST/raw"], "MNIST")


# ------------------------------------------------------------------------------ torchvision in-memory sets


def _torchvision_split(name: str, cfg: DataConfig, cls_name: str, split_kw: dict, labels_attr: str):
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    tried = [Path(cfg.root or "data").expanduser()] if cfg.download else candidate_roots(cfg)
    errors = []
    for root in tried:
        try:
            ds = cls(str(root), download=cfg.download, **split_kw)
        except (RuntimeError, FileNotFoundError) as err:  # torchvision: "Dataset not found or corrupted"
            errors.append(f"{root}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
            continue
        images = torch.from_numpy(np.ascontiguousarray(ds.data))
        if images.ndim == 4 and images.shape[-1] == 3:  # CIFAR stores NHWC
            images = images.permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(np.asarray(getattr(ds, labels_attr)), dtype=torch.int64)
        return Split(images, labels, (str(Path(ds.root) / getattr(ds, "base_folder", "")),))
    raise not_found(name, tried, f" (torchvision said: {'; '.join(errors[:3])})" if errors else "")


def _register_torchvision(name: str, cls_name: str, train_kw: dict, test_kw: dict, labels_attr: str, classes: int):
    @SOURCES.register(name)
    def source(cfg: DataConfig):
        train = _torchvision_split(name, cfg, cls_name, train_kw, labels_attr)
        test = _torchvision_split(name, cfg, cls_name, test_kw, labels_attr)
        return train, test, classes

    return source


_register_torchvision("cifar10", "CIFAR10", {"train": True}, {"train": False}, "targets", 10)
_register_torchvision("cifar100", "CIFAR100", {"train": True}, {"train": False}, "targets", 100)
_register_torchvision("svhn", "SVHN", {"split": "train"}, {"split": "test"}, "labels", 10)
_register_torchvision("stl10", "STL10", {"split": "train"}, {"split": "test"}, "labels", 10)


@SOURCES.register("synthetic")
def synthetic(cfg: DataConfig):
    """Deterministic and learnable: smooth random class prototypes plus Gaussian noise, any shape."""
    gen = torch.Generator().manual_seed(1234)  # the data never depends on train.seed
    channels, height, width = cfg.synthetic_shape
    classes = cfg.synthetic_classes
    coarse = torch.rand(classes, channels, max(height // 4, 1), max(width // 4, 1), generator=gen)
    prototypes = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)

    def draw(n: int) -> Split:
        labels = torch.randint(0, classes, (n,), generator=gen)
        noise = torch.randn(n, channels, height, width, generator=gen) * cfg.synthetic_noise
        images = ((prototypes[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
        return Split(images, labels, ("synthetic (generated, no file)",))

    return draw(cfg.synthetic_train), draw(cfg.synthetic_test), classes
