"""The backbone registry: name -> builder(depth=..., in_channels=..., num_classes=...)."""

from pipelocal.registry import Registry

MODELS: Registry = Registry("model")
