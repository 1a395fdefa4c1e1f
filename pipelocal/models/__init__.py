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
from pipelocal.models.user import FACTORIES, is_external, user_backbone


def build_backbone(name: str, depth: int, in_channels: int, num_classes: int, norm: str = "batch") -> Backbone:
    return MODELS.get(name)(depth=depth, in_channels=in_channels, num_classes=num_classes, norm=norm)


def build_model(name: str, depth: int, input_shape: tuple[int, int, int], num_classes: int, norm: str) -> Backbone:
    """The backbone ``model.name`` names for this data: registered, ``timm/NAME`` or ``package.module:function``
    (those two see the data's shape; ``depth`` and ``norm`` apply to the registered ones)."""
    if name.startswith("timm/"):
        from pipelocal.models.timm_units import timm_backbone  # timm is optional: imported only when asked for

        return timm_backbone(name, tuple(input_shape), num_classes)
    if ":" in name:
        return user_backbone(name, tuple(input_shape), num_classes)
    return build_backbone(name, depth, input_shape[0], num_classes, norm)


__all__ = [
    "MODELS",
    "Backbone",
    "Classifier",
    "TokenClassifier",
    "TokenLayout",
    "TokensToGrid",
    "FACTORIES",
    "build_backbone",
    "build_model",
    "is_external",
    "init_weights",
]
