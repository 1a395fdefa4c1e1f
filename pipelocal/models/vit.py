"""Vision Transformers as ordered units: the patch embedding, then one unit per pre-norm transformer block; the
classifier is the final LayerNorm + Linear on the class token or on the mean of the tokens. Activations between
units are tokens (N, T, D).

Sizes (timm's): ``vit_tiny`` (ViT-Ti/16: width 192, 12 blocks, 3 heads), ``vit_small`` (ViT-S/16: 384, 12, 6),
``vit_base`` (ViT-B/16: 768, 12, 12), all with 16x16 patches for 224 inputs; ``vit_tiny_p4``: ViT-Ti's width and
heads with 4x4 patches for 28x28/32x32 inputs and ``model.depth`` blocks (CPU-sized). ``*_gap`` names pool the mean
of the tokens and have no class token (timm's ``global_pool='avg', class_token=False``); the others classify the
class token. Positions: the embedding is the stem ``(0, 0)``, blocks are ``(1, b)``: one stage, every block alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipelocal.models.base import Backbone, TokenClassifier, TokenLayout
from pipelocal.models.registry import MODELS
from pipelocal.options import ConfigError


class PatchEmbed(nn.Module):
    """Unit 0: conv p x p, stride p -> (N, T, D) patch tokens, [a learned class token first], + a learned position
    table. The table is sized for the nominal ``image`` (224, or 32 for 4x4 patches); another input size
    resamples it bicubically to the actual grid in every forward (timm's ``dynamic_img_size``)."""

    def __init__(self, in_channels: int, width: int, patch: int, image: int, class_token: bool):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, patch, patch)
        self.grid = image // patch
        self.prefix = int(class_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.prefix + self.grid**2, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        return x + self.positions(grid)

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == (self.grid, self.grid):
            return self.pos_embed
        prefix, patches = self.pos_embed[:, : self.prefix], self.pos_embed[:, self.prefix :]
        d = patches.shape[-1]
        patches = patches.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([prefix, patches.flatten(2).transpose(1, 2)], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention: one qkv Linear, scaled dot-product attention per head, an output Linear."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"ViT width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # fused kernels on GPU; the math path on CPU
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)), the MLP Linear(D -> 4D)-GELU-Linear."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_vit(module: nn.Module) -> None:
    """timm's ViT init: Linear weights truncated N(0, 0.02), biases 0; LayerNorm 1/0; position table truncated
    N(0, 0.02), class token N(0, 1e-6); the patch conv keeps PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, PatchEmbed):
            nn.init.trunc_normal_(m.pos_embed, std=0.02)
            if m.cls_token is not None:
                nn.init.normal_(m.cls_token, std=1e-6)


def build_vit(
    in_channels: int, num_classes: int, width: int, depth: int, heads: int, patch: int, image: int, pool: str
) -> Backbone:
    if depth < 1:
        raise ConfigError(f"model.depth={depth}: a ViT needs at least one transformer block")
    embed = PatchEmbed(in_channels, width, patch, image, class_token=pool == "cls")
    units: list[nn.Module] = [embed, *(Block(width, heads) for _ in range(depth))]
    positions = [(0, 0)] + [(1, b) for b in range(depth)]

    def new_block(in_width: int, out_width: int, stride: int) -> Block:
        """A fresh transformer block (AugLocal); every block keeps the width and the tokens."""
        if in_width != width or out_width != width or stride != 1:
            raise ValueError(f"a ViT block maps {width} -> {width} at stride 1, not {in_width} -> {out_width}/{stride}")
        block = Block(width, heads)
        init_vit(block)
        return block

    head = TokenClassifier(width, num_classes, pool)
    net = Backbone(units, head, positions, new_block, TokenLayout(patch, embed.prefix))
    init_vit(net)
    return net


# name -> (width, blocks (None: model.depth), heads, patch, nominal image size)
SIZES = {
    "vit_tiny_p4": (192, None, 3, 4, 32),
    "vit_tiny": (192, 12, 3, 16, 224),
    "vit_small": (384, 12, 6, 16, 224),
    "vit_base": (768, 12, 12, 16, 224),
}


def _register(name: str, pool: str):
    width, blocks, heads, patch, image = SIZES[name]

    def build(depth: int, in_channels: int, num_classes: int, norm: str = "batch") -> Backbone:
        del norm  # transformers use LayerNorm whatever model.norm says (it applies to conv backbones)
        return build_vit(in_channels, num_classes, width, blocks or depth, heads, patch, image, pool)

    depth_text = f"{blocks} blocks" if blocks else "model.depth blocks"
    build.__doc__ = f"ViT, width {width}, {depth_text}, {heads} heads, {patch}x{patch} patches, {pool} pooling."
    suffix = "_gap" if pool == "mean" else ""
    return MODELS.register(name + suffix)(build)


for _name in SIZES:
    _register(_name, "cls")
    _register(_name, "mean")
