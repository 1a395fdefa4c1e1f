"""Backbones as ordered units; no torch.distributed here."""

from pipelocal.models import resnet_cifar, resnet_imagenet, vgg, vit  # noqa: F401  (registration)
from pipelocal.models.base import (
    Backbone,
    Classifier,
    TokenClassifier,
    TokenLayout,
    TokensToGrid,
    init_weights,
)
from pipelocal.models.registry import MODELS


def build_backbone(name: str, depth: int, in_channels: int, num_classes: int, norm: str = "batch") -> Backbone:
    return MODELS.get(name)(depth=depth, in_channels=in_channels, num_classes=num_classes, norm=norm)


__all__ = [
    "MODELS",
    "Backbone",
    "Classifier",
    "TokenClassifier",
    "TokenLayout",
    "TokensToGrid",
    "build_backbone",
    "init_weights",
]
