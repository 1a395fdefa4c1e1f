"""Datasets and loaders.

Small datasets (Fashion-MNIST, MNIST, CIFAR, SVHN, STL-10, synthetic) live in memory as uint8 tensors on
the training device; batches are cropped, flipped and normalised there in one vectorised step, so the
loader costs no per-sample Python and no host-to-device copy per batch. ImageNet-style folders stream
through a DataLoader with workers (and pinned memory on CUDA).

Every batch carries ``raw``, the augmented input in [0, 1] before normalisation, for methods that
reconstruct it (InfoPro).
"""

from pipelocal.data.loaders import FolderLoader, TensorLoader, augment, build_loaders
from pipelocal.data.sources import (
    RECIPES,
    SOURCES,
    Batch,
    DataFileError,
    DataInfo,
    DatasetNotFoundError,
    Recipe,
    Split,
)

__all__ = [
    "RECIPES",
    "SOURCES",
    "Batch",
    "DataFileError",
    "DataInfo",
    "DatasetNotFoundError",
    "FolderLoader",
    "Recipe",
    "Split",
    "TensorLoader",
    "augment",
    "build_loaders",
]
