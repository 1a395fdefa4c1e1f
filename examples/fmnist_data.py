"""A dataset factory of a user's: Fashion-MNIST read from its idx files into a torch Dataset that augments
per sample (random flip and 2-pixel shift), the way one's own data usually arrives.

pipelocal calls ``fashion_mnist()`` (``--data.name=examples.fmnist_data:fashion_mnist``, or
``pipelocal.train(data=fashion_mnist)``) and reads the Datasets through a DataLoader with ``data.workers``.
Set FMNIST_DIR to the folder with the four ``*-ubyte.gz`` files (default: the Debian package's folder).
"""

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

ROOT = Path(os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class FashionMNIST(Dataset):
    """(1 x 28 x 28 float image in [0, 1], int label); training items flipped and shifted at random."""

    def __init__(self, split: str, augment: bool):
        self.images = torch.from_numpy(read_idx(ROOT / f"{split}-images-idx3-ubyte.gz").copy())
        self.labels = torch.from_numpy(read_idx(ROOT / f"{split}-labels-idx1-ubyte.gz").astype(np.int64))
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i].float().div(255).unsqueeze(0)
        if self.augment:
            if torch.rand(()) < 0.5:
                image = image.flip(2)
            dy, dx = torch.randint(-2, 3, (2,)).tolist()
            image = torch.roll(image, (dy, dx), (1, 2))
        return image, int(self.labels[i])


def fashion_mnist():
    """The factory pipelocal calls: (train Dataset, test Dataset, number of classes)."""
    return FashionMNIST("train", augment=True), FashionMNIST("t10k", augment=False), 10
