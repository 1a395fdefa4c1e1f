"""infopro: λ1 · reconstruction of the raw input + λ2 · a task loss, per module (Wang et al., ICLR 2021).

The reconstruction target is the *un-normalised* input in [0, 1], so the batch carries it (``raw``);
in the pipeline it travels with the activations. ``method.aux_net`` picks the aux nets: the paper's CIFAR ones
(default) or those of the authors' released ImageNet code (``Experiments on ImageNet/networks/resnet.py``).

On a ViT both aux nets run on the patch grid: the patch tokens (class token dropped) are laid back as an
(N, D, H/p, W/p) map, which the decoder upsamples to the input size and decodes to the raw image, and on which the
task head's conv runs. The token width never grows, so the "1c2f" head's conv keeps it at stride 1, as at a
ResNet's last stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelocal.methods.base import METHODS, Head, LocalMethod, NetInfo, as_maps, final_width
from pipelocal.models import init_weights
from pipelocal.options import ConfigError, option


@dataclass
class InfoProConfig:
    """InfoPro's knobs, set as ``method.<key>``."""

    loss: str = option("softmax", "task loss of the aux head", ("softmax", "contrast"))
    lambdas: list[float] = option(
        [1.0, 1.0, 0.0, 1.0], "(λ1 first, λ2 first, λ1 last, λ2 last); module i interpolates with ratio i/(K-2)"
    )
    temperature: float = option(0.07, "temperature of the contrastive task loss (loss: contrast)")
    aux_net: str = option(
        "cifar",
        "aux nets: cifar (upsample to the input, conv-BN-ReLU-conv decoder; '1c2f' task head) or imagenet (the "
        "released ImageNet code's: conv1x1, then bilinear steps to 1/4, 1/2 and the full input size, each followed by "
        "a conv; a conv1x1-conv3x3/2-conv3x3/2-conv1x1 (128-256-512-2048) task head, then a Linear)",
        ("cifar", "imagenet"),
    )

    def validate(self) -> None:
        if len(self.lambdas) != 4:
            raise ConfigError(
                f"method.lambdas={self.lambdas} needs 4 numbers: λ1 first, λ2 first, λ1 last, λ2 last "
                "(e.g. --method.lambdas=[1,1,0,1])"
            )
        if self.temperature <= 0:  # it divides the similarities
            raise ConfigError(f"method.temperature={self.temperature} must be positive (the papers use 0.07)")


def supervised_contrastive(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon with one view: positives are the other samples of the same label; anchors without one are skipped."""
    z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(1)
    has_pos = count > 0
    mean_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)[has_pos] / count[has_pos]
    return -mean_log_prob.mean()


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class UpsampleThen(nn.Sequential):
    """Bilinear upsampling to ``size`` (align_corners=True), then the layers: the CIFAR decoder. (Upsampling
    in forward, not as a layer, keeps the layers' state-dict keys those of earlier checkpoints.)"""

    def __init__(self, size: tuple[int, int], *layers: nn.Module):
        super().__init__(*layers)
        self.size = size

    def forward(self, h):
        return super().forward(F.interpolate(h, size=self.size, mode="bilinear", align_corners=True))


def cifar_aux_nets(channels: int, info: NetInfo, out_features: int) -> tuple[nn.Module, nn.Module]:
    """Decoder = upsample to the input, conv3x3(C->12)-BN-ReLU, conv3x3(12->in); task head "1c2f"
    (docs/methods.md#the-methods)."""
    in_channels, height, width = info.input_shape
    decoder = UpsampleThen((height, width), *_conv_bn_relu(channels, 12, 3), nn.Conv2d(12, in_channels, 3, 1, 1))
    # Double the width with stride 2 below the last stage's width; keep it (stride 1) at the last stage.
    out_channels, stride = (channels * 2, 2) if channels < final_width(info) else (channels, 1)
    task = nn.Sequential(
        *_conv_bn_relu(channels, out_channels, 3, stride),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(out_channels, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, out_features),
    )
    return decoder, task


def imagenet_aux_nets(channels: int, info: NetInfo, out_features: int) -> tuple[nn.Module, nn.Module]:
    """The released ImageNet code's aux nets (``Decoder`` and ``self.head``), sizes relative to the input.

    Decoder: conv1x1(C->128)-BN-ReLU at h's resolution, then three bilinear steps to 1/4, 1/2 and the full input
    size (56, 112, 224 at 224; the released code asserts a 28x28 h), each followed by conv3x3 (128->32-BN-ReLU,
    32->12-BN-ReLU, 12->in). Its convs keep their biases, as released. Task head: conv1x1(C->128), conv3x3(->256,
    stride 2), conv3x3(->512, stride 2), conv1x1(->2048), each no bias + BN + ReLU, avg pool, Linear(2048->out).
    Working at h's resolution first keeps it cheap: the CIFAR decoder would run a C-channel conv at 224x224.
    """
    in_channels, height, width = info.input_shape
    up = [(height // 4, width // 4), (height // 2, width // 2), (height, width)]
    decoder = nn.Sequential(
        *_conv_bn_relu(channels, 128, 1, bias=True),
        nn.Upsample(size=up[0], mode="bilinear", align_corners=True),
        *_conv_bn_relu(128, 32, 3, bias=True),
        nn.Upsample(size=up[1], mode="bilinear", align_corners=True),
        *_conv_bn_relu(32, 12, 3, bias=True),
        nn.Upsample(size=up[2], mode="bilinear", align_corners=True),
        nn.Conv2d(12, in_channels, 3, 1, 1),
    )
    task = nn.Sequential(
        *_conv_bn_relu(channels, 128, 1),
        *_conv_bn_relu(128, 256, 3, 2),
        *_conv_bn_relu(256, 512, 3, 2),
        *_conv_bn_relu(512, 2048, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2048, out_features),
    )
    return decoder, task


AUX_NETS = {"cifar": cifar_aux_nets, "imagenet": imagenet_aux_nets}


class InfoProHead(Head):
    """``decoder(h)``: reconstruction logits at the input size (BCE against the raw input); ``task(h)``: class
    scores (softmax) or a 128-d embedding (contrast). ``to_maps``: tokens -> patch grid first (None on maps)."""

    def __init__(self, channels: int, info: NetInfo, cfg: InfoProConfig, lambdas, to_maps: nn.Module | None = None):
        super().__init__()
        self.lambda_rec, self.lambda_task = lambdas
        self.contrast = cfg.loss == "contrast"
        self.temperature = cfg.temperature
        out_features = 128 if self.contrast else info.num_classes
        self.to_maps = nn.Identity() if to_maps is None else to_maps  # no parameters: state-dict keys as before
        self.decoder, self.task = AUX_NETS[cfg.aux_net](channels, info, out_features)
        init_weights(self)

    def logits(self, h):
        return None if self.contrast else self.task(self.to_maps(h))

    def forward(self, h, batch):
        h = self.to_maps(h)
        out: dict[str, torch.Tensor | None] = {"logits": None}
        loss = h.new_zeros(())
        if self.lambda_rec:
            # BCE on the sigmoid output, computed from logits for numerical stability (same value).
            out["rec"] = F.binary_cross_entropy_with_logits(self.decoder(h), batch.raw)
            loss = loss + self.lambda_rec * out["rec"]
        if self.lambda_task:
            scores = self.task(h)
            if self.contrast:
                out["task"] = supervised_contrastive(scores, batch.y, self.temperature)
            else:
                out["task"] = F.cross_entropy(scores, batch.y)
                out["logits"] = scores
            loss = loss + self.lambda_task * out["task"]
        out["loss"] = loss
        return out


def interpolate_lambdas(lambdas: list[float], index: int, num_modules: int) -> tuple[float, float]:
    """Module ``index`` of K: linear from the first module's (λ1, λ2) to module K-2's, ratio i/(K-2)."""
    first_rec, first_task, last_rec, last_task = lambdas
    ratio = index / (num_modules - 2) if num_modules > 2 else 0.0
    return first_rec + (last_rec - first_rec) * ratio, first_task + (last_task - first_task) * ratio


@METHODS.register("infopro")
class InfoPro(LocalMethod):
    name = "infopro"
    needs = ("raw",)
    Config = InfoProConfig

    def build_head(self, index):
        lambdas = interpolate_lambdas(self.cfg.lambdas, index, self.info.num_modules)
        if not any(lambdas):
            raise ConfigError(
                f"method.lambdas={self.cfg.lambdas} gives module {index} λ1 = λ2 = 0: it would have no loss"
            )
        to_maps, shape = as_maps(self.info, self.info.module_shapes[index])
        return InfoProHead(shape[0], self.info, self.cfg, lambdas, to_maps)
