"""A small lab CNN defined outside pipelocal: a factory returning an nn.Sequential whose children are the units.

pipelocal calls ``small_cnn(in_channels=..., num_classes=..., image_size=...)`` with the data's numbers; every
child but the last is a unit a local module can hold, the last is the classifier. Train it with
``--model.name=examples.small_cnn:small_cnn`` (see examples/own_model.sh) or ``pipelocal.train(model=small_cnn)``.
"""

from torch import nn


def conv_unit(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def small_cnn(in_channels: int, num_classes: int, image_size: int, width: int = 16) -> nn.Sequential:
    """Six conv units (the resolution halves twice, the width doubles with it), then pool + Linear."""
    del image_size  # global pooling makes the net size-agnostic
    return nn.Sequential(
        conv_unit(in_channels, width),
        conv_unit(width, width),
        conv_unit(width, 2 * width, stride=2),
        conv_unit(2 * width, 2 * width),
        conv_unit(2 * width, 4 * width, stride=2),
        conv_unit(4 * width, 4 * width),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes)),
    )
