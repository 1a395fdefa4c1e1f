"""Networks from outside the package: a factory ``package.module:function`` (or an object given to
``pipelocal.train``), cut into units as it comes; its shapes, stage positions and token layout found by a dry
forward, and the checks that a pipeline can split it.

The factory is called as ``factory(in_channels=C, num_classes=N, image_size=S)`` (S = H, or (H, W) when the
input is not square) and returns an ``nn.Sequential`` or a list of modules: its children are the units, the last
one the classifier. Positions (``Backbone.positions``) come from the shapes: unit 0 is the stem, unit 1 starts
stage 1, and every unit whose output shape differs from the previous unit's starts a new stage.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from collections.abc import Callable

import torch
from torch import nn

from pipelocal.models.base import Backbone, TokenLayout
from pipelocal.options import ConfigError

# Factories given as objects in this process (pipelocal.train(model=..., data=...)): name -> callable.
FACTORIES: dict[str, Callable] = {}


def is_external(name: str) -> bool:
    """A ``package.module:function`` factory or a ``timm/NAME`` model, not a registered name."""
    return ":" in name or name.startswith("timm/")


def load_factory(name: str, key: str) -> Callable:
    """The callable ``package.module:function`` names (``key`` is the config key, for the messages)."""
    if name in FACTORIES:
        return FACTORIES[name]
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}={name}: write a factory as package.module:function (e.g. mynets.cnn:build)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: a file in the folder the job starts from is found
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an ImportError, or anything the module raises while it is imported
        raise ConfigError(
            f"{key}={name}: cannot import {module_name} ({type(err).__name__}: {err}); start the job from the "
            "folder that holds it, or add that folder to PYTHONPATH"
        ) from err
    target = module
    for part in attr.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise ConfigError(f"{key}={name}: {module_name} has no function {attr}; check the name after the ':'")
    return target


def user_backbone(name: str, input_shape: tuple[int, int, int], num_classes: int) -> Backbone:
    """Call the factory ``name`` for this data and cut what it returns into a :class:`Backbone`."""
    factory = load_factory(name, "model.name")
    channels, height, width = input_shape
    size = height if height == width else (height, width)
    try:
        net = factory(in_channels=channels, num_classes=num_classes, image_size=size)
    except TypeError as err:  # most often a signature without these keywords
        raise ConfigError(
            f"model.name={name}: calling it with in_channels, num_classes and image_size failed ({err}); the factory "
            "takes those keyword arguments (add **kwargs to ignore some)"
        ) from err
    return backbone_from(net, f"model.name={name}", input_shape, num_classes)


def backbone_from(
    net, source: str, input_shape: tuple[int, ...], num_classes: int, tokens: TokenLayout | None = None
) -> Backbone:
    """Units and classifier of ``net`` (an nn.Sequential or a list of modules), checked by a dry forward."""
    if isinstance(net, nn.Sequential):
        parts = list(net)  # not children(), which skips a module that appears twice
    elif isinstance(net, list | tuple) and net and all(isinstance(m, nn.Module) for m in net):
        parts = list(net)
    else:
        raise ConfigError(
            f"{source} returned {type(net).__name__}; return an nn.Sequential or a list of nn.Modules "
            "(the units in order, the classifier last)"
        )
    if len(parts) < 2:
        raise ConfigError(f"{source} returned {len(parts)} module(s); it needs at least one unit and the classifier")
    check_shared(parts, source)
    shapes = dry_forward(parts, source, tuple(input_shape), num_classes)
    tokens = tokens or token_layout(shapes, tuple(input_shape), source)
    backbone = Backbone(parts[:-1], parts[-1], positions_of(shapes), None, tokens)
    backbone._shapes[tuple(input_shape)] = shapes  # the dry forward's, so no meta forward runs for this input
    return backbone


def check_shared(parts: list[nn.Module], source: str) -> None:
    """No parameter or module may belong to two units: each unit may live in another process."""
    owner: dict[int, int] = {}
    for i, part in enumerate(parts):
        mine = {id(t): t for t in [*part.parameters(), *part.buffers()]}
        mine.update({id(m): m for m in part.modules()})
        for key in mine:
            j = owner.setdefault(key, i)
            if j != i:
                raise ConfigError(
                    f"{source}: units {j} and {i} share weights or a module (tied across units); the pipeline puts "
                    "units in separate processes: merge them into one unit, or give each its own copy"
                )


DRY_BATCH = 3  # samples in the dry forward: an odd count, so a tensor of that many rows is an activation


def _held_tensors(part: nn.Module) -> dict[tuple[int, str], object]:
    """Plain attributes of the unit's modules that hold activations: tensors (or lists/dicts of them) with one
    row per sample. Parameters and buffers are not plain; a cache that is not per sample (a position table
    built on first use) is the unit's own state, which a pipeline keeps with the unit."""
    held = {}
    for m in part.modules():
        for key, value in vars(m).items():
            items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else [value]
            if any(isinstance(v, torch.Tensor) and v.ndim and len(v) == DRY_BATCH for v in items):
                held[(id(m), key)] = (value, len(items))
    return held


def _changed(before, after) -> bool:
    """A plain tensor attribute that appeared, was replaced, or a list/dict of tensors that grew."""
    return before is None or before[0] is not after[0] or before[1] != after[1]


def dry_forward(parts: list[nn.Module], source: str, input_shape: tuple, num_classes: int) -> list[tuple]:
    """Per-unit output shapes (classifier excluded) from a real forward of a copy on three random samples, in
    training mode, checking that every unit returns one tensor and keeps nothing for a later unit."""
    copies = copy.deepcopy(nn.ModuleList(parts)).to("cpu").train()
    x = torch.rand(DRY_BATCH, *input_shape, device="cpu")
    shapes = []
    with torch.no_grad():
        for i, part in enumerate(copies):
            what = f"{source}: {'the classifier' if i == len(parts) - 1 else f'unit {i}'} ({type(part).__name__})"
            before = _held_tensors(part)
            try:
                y = part(x)
            except Exception as err:
                raise ConfigError(
                    f"{what} fails on an input of shape {tuple(x.shape)}: {type(err).__name__}: {err}"
                ) from err
            if not isinstance(y, torch.Tensor):
                raise ConfigError(
                    f"{what} returns {type(y).__name__}, not one tensor; every unit takes one tensor and returns "
                    "one: put the parts that pass several values between them into one unit"
                )
            after = _held_tensors(part)
            stored = [key for (m, key), held in after.items() if _changed(before.get((m, key)), held)]
            if stored:
                raise ConfigError(
                    f"{what} keeps a tensor in self.{stored[0]} during forward (state between units), which a "
                    "pipeline cannot split across processes: pass it in the unit's output, or merge the units that "
                    "share it into one"
                )
            shapes.append(tuple(y.shape[1:]))
            x = y
    if shapes[-1] != (num_classes,):
        raise ConfigError(
            f"{source}: the classifier (the last unit) outputs (N, {', '.join(map(str, shapes[-1]))}); it must output "
            f"(N, {num_classes}), one score per class"
        )
    for i, shape in enumerate(shapes[:-1]):
        if len(shape) not in (2, 3):
            raise ConfigError(
                f"{source}: unit {i} outputs (N, {', '.join(map(str, shape))}); units pass (N, C, H, W) maps or "
                "(N, T, D) tokens: move the pooling and flattening into the classifier (the last unit)"
            )
    return shapes[:-1]


def positions_of(shapes: list[tuple]) -> list[tuple[int, int]]:
    """(stage, block) per unit: the stem, then a new stage at unit 1 and wherever the output shape changes."""
    positions, stage, block = [(0, 0)], 0, 0
    for u in range(1, len(shapes)):
        if u == 1 or shapes[u] != shapes[u - 1]:
            stage, block = stage + 1, 0
        else:
            block += 1
        positions.append((stage, block))
    return positions


def token_layout(shapes: list[tuple], input_shape: tuple, source: str) -> TokenLayout | None:
    """None for (C, H, W) maps; for (T, D) tokens, the patch size and prefix tokens that fit T (the smallest
    prefix: T = prefix + (H/p)(W/p))."""
    ranks = {len(s) for s in shapes}
    if ranks == {3}:
        return None
    counts = {s[0] for s in shapes}
    if ranks != {2} or len(counts) != 1:
        raise ConfigError(
            f"{source}: the units' outputs mix (C, H, W) maps and (T, D) tokens, or change the token count "
            f"({shapes}); keep one kind throughout (a ViT's embedding is its first unit)"
        )
    tokens, height, width = counts.pop(), input_shape[1], input_shape[2]
    fits = [
        (tokens - (height // p) * (width // p), p)
        for p in range(1, min(height, width) + 1)
        if height % p == 0 and width % p == 0 and 0 <= tokens - (height // p) * (width // p) <= 16
    ]
    if not fits:
        raise ConfigError(
            f"{source}: {tokens} tokens are not a patch grid of the {height}x{width} input plus a few prefix tokens"
        )
    prefix, patch = min(fits)
    return TokenLayout(patch, prefix)


def fresh_copies(backbone: Backbone, after: int, targets: list[int], input_shape: tuple) -> list[nn.Module]:
    """AugLocal's aux blocks on a network without a block builder: for each mimicked unit u, a re-initialised
    copy of a unit that maps the running shape to u's output shape: u itself when its input is the running shape,
    else the nearest unit that does (a stage's first block), else u behind an adapter (resample + 1x1 conv or a
    Linear on tokens) that brings the running shape to u's input."""
    shapes = backbone.unit_shapes(input_shape)
    inputs = [tuple(input_shape), *shapes[:-1]]
    running, blocks = shapes[after], []
    for u in targets:
        fits = [v for v in range(len(shapes)) if inputs[v] == running and shapes[v] == shapes[u]]
        if fits:
            blocks.append(reinitialised(backbone.units[min(fits, key=lambda v: (abs(v - u), v))]))
        else:
            blocks.append(nn.Sequential(adapter(running, inputs[u]), reinitialised(backbone.units[u])))
        running = shapes[u]
    return blocks


def reinitialised(unit: nn.Module) -> nn.Module:
    """A copy of ``unit`` with fresh weights (each layer's own ``reset_parameters``): AugLocal shares none."""
    fresh = copy.deepcopy(unit)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh


def adapter(have: tuple, want: tuple) -> nn.Module:
    if len(have) == 3 and len(want) == 3:
        return nn.Sequential(nn.AdaptiveAvgPool2d(want[1:]), nn.Conv2d(have[0], want[0], 1, bias=False))
    if len(have) == 2 and len(want) == 2 and have[0] == want[0]:
        return nn.Linear(have[1], want[1])
    raise ConfigError(f"auglocal: no adapter from a unit's output {have} to the input {want} of the unit it mimics")
