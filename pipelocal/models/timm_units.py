"""``model.name: timm/NAME``: a timm model (``pretrained=False``; nothing here downloads) cut into units: the stem,
each block of each stage, then pooling and the classifier. Needs ``pip install pipelocal[timm]``.

Three families are cut: ResNets (timm's ResNet class: resnet*, resnext*, wide_resnet*, ...; stem = conv1, bn1,
act, max-pool), ConvNeXts (a stage's downsampling joins its first block) and Vision Transformers (the stem is the
patch embedding with the class/register tokens and position table; activations are (N, T, D) tokens). A unit
is built from the model's own submodules and runs the model class's own code on them (:class:`Part`), so the
units in order compute what ``model(x)`` computes.
"""

from __future__ import annotations

import difflib

from torch import nn

from pipelocal.models.base import Backbone, TokenLayout
from pipelocal.models.user import backbone_from
from pipelocal.options import ConfigError


class Part(nn.Module):
    """Some submodules and parameters of ``model`` (its plain attributes too: flags, pool type, prefix count),
    run by ``run(self, x)``, which may call the model class's methods with this part as ``self``."""

    def __init__(self, model: nn.Module, names: list[str], run):
        super().__init__()
        for key, value in vars(model).items():
            if not key.startswith("_") and key != "training":
                object.__setattr__(self, key, value)
        for name in names:
            setattr(self, name, getattr(model, name))
        self.owner, self.run = type(model), run

    def forward(self, x):
        return self.run(self, x)


def _resnet_head(part, x):
    return part.owner.forward_head(part, x)


def _vit_stem(part, x):
    x = part.owner._pos_embed(part, part.patch_embed(x))
    return part.norm_pre(part.patch_drop(x))


def _vit_head(part, x):
    x = part.owner.pool(part, part.norm(x))
    return part.head(part.head_drop(part.fc_norm(x)))


def cut(model: nn.Module, arch: str) -> tuple[list[nn.Module], TokenLayout | None]:
    """[units..., classifier] and the token layout (None on maps) of a timm model of a known family."""
    if all(hasattr(model, a) for a in ("conv1", "bn1", "act1", "maxpool", "layer4", "global_pool", "fc")):
        stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
        blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
        return [stem, *blocks, Part(model, ["global_pool", "fc"], _resnet_head)], None
    stages = getattr(model, "stages", None)
    if hasattr(model, "stem") and stages is not None and all(hasattr(s, "downsample") for s in stages):
        units = [model.stem]
        for stage in stages:
            blocks = list(stage.blocks)
            units += [nn.Sequential(stage.downsample, blocks[0]), *blocks[1:]]
        return [*units, nn.Sequential(model.norm_pre, model.head)], None
    if all(hasattr(model, a) for a in ("patch_embed", "_pos_embed", "blocks", "pool", "fc_norm", "head")):
        stem_parts = ["patch_embed", "pos_drop", "patch_drop", "norm_pre", "cls_token", "reg_token", "pos_embed"]
        stem = Part(
            model, [n for n in stem_parts if isinstance(getattr(model, n, None), nn.Module | nn.Parameter)], _vit_stem
        )
        head = Part(model, ["norm", "attn_pool", "fc_norm", "head_drop", "head"], _vit_head)
        layout = TokenLayout(model.patch_embed.patch_size[0], model.num_prefix_tokens)
        return [stem, *model.blocks, head], layout
    raise ConfigError(
        f"model.name=timm/{arch}: no rule here cuts a {type(model).__name__} into units (cut: timm's ResNet, "
        "ConvNeXt and VisionTransformer families); wrap it in a factory of your own returning its units as an "
        "nn.Sequential (model.name=package.module:function)"
    )


def create(arch: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"model.name=timm/{arch} needs timm: pip install 'pipelocal[timm]' (or pip install timm)"
        ) from None
    names = timm.list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (timm.list_models() lists them)"
        raise ConfigError(f"model.name=timm/{arch}: timm has no model '{arch}'{hint}")
    channels, height, width = input_shape
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": channels}
    try:
        return timm.create_model(arch, img_size=(height, width), **kwargs)  # ViTs size their position table
    except TypeError:  # a conv net takes any size and no img_size
        return timm.create_model(arch, **kwargs)


def timm_backbone(name: str, input_shape: tuple[int, int, int], num_classes: int) -> Backbone:
    arch = name.removeprefix("timm/")
    parts, layout = cut(create(arch, input_shape, num_classes), arch)
    return backbone_from(parts, f"model.name={name}", input_shape, num_classes, layout)
