"""Networks defined outside the package, for tests/test_user_model.py: one good factory and one per mistake."""

import torch
from torch import nn

from examples.small_cnn import conv_unit, small_cnn  # noqa: F401  (the good one: tests.user_nets:small_cnn)


def tiny_cnn(in_channels: int, num_classes: int, image_size: int) -> list[nn.Module]:
    """A list of modules (the other accepted return type): 4 units at 2 resolutions, then the classifier."""
    return [
        conv_unit(in_channels, 8),
        conv_unit(8, 8),
        conv_unit(8, 16, stride=2),
        conv_unit(16, 16),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes)),
    ]


def returns_dict(in_channels, num_classes, image_size):
    return {"body": conv_unit(in_channels, 8)}


class TwoOutputs(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.conv = conv_unit(cin, 8)

    def forward(self, x):
        y = self.conv(x)
        return y, x


def tuple_unit(in_channels, num_classes, image_size):
    return nn.Sequential(TwoOutputs(in_channels), nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes)))


class Stash(nn.Module):
    """Keeps its input for a later unit: a skip connection across units."""

    def forward(self, x):
        self.saved = x
        return x


def stateful(in_channels, num_classes, image_size):
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    return nn.Sequential(conv_unit(in_channels, 8), Stash(), conv_unit(8, 8), head)


def shared(in_channels, num_classes, image_size):
    unit = conv_unit(8, 8)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    return nn.Sequential(conv_unit(in_channels, 8), unit, unit, head)


def flat_unit(in_channels, num_classes, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, 8), nn.Linear(8, num_classes))


def wrong_classes(in_channels, num_classes, image_size):
    return nn.Sequential(conv_unit(in_channels, 8), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))


NOT_CALLABLE = torch.zeros(1)


class Squares(torch.utils.data.Dataset):
    """n gray 12x12 images of class k: a bright square at one of 4 places (k), plus noise; in [0, 1]."""

    def __init__(self, n: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=gen)
        self.images = torch.rand(n, 1, 12, 12, generator=gen) * 0.3
        for i, k in enumerate(self.labels.tolist()):
            row, col = divmod(k, 2)
            self.images[i, 0, 6 * row : 6 * row + 6, 6 * col : 6 * col + 6] += 0.7

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def squares():
    """The data factory: (train, test, num_classes)."""
    return Squares(96, 0), Squares(40, 1), 4


def squares_out_of_range():
    train, test, _ = squares()
    train.images = train.images * 255
    return train, test, 4


def squares_flat():
    train, test, _ = squares()
    train.images = train.images[:, 0]
    return train, test, 4


def squares_pair():
    return squares()[:2]


class LazyTable(nn.Module):
    """Caches a table on first use that is not per sample: the unit's own state, allowed."""

    def forward(self, x):
        if not hasattr(self, "table"):
            self.table = torch.ones(x.shape[1:])
        return x * self.table


def cached(in_channels, num_classes, image_size):
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    return nn.Sequential(conv_unit(in_channels, 8), LazyTable(), head)


def no_keywords(channels):
    return small_cnn(channels, 10, 16)
