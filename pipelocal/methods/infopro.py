"""infopro: λ1 · reconstruction of the raw input + λ2 · a task loss, per module (Wang et al., ICLR 2021).

The reconstruction target is the *un-normalised* input in [0, 1], so the batch carries it (``raw``);
in the pipeline it travels with the activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelocal.methods.base import METHODS, Head, LocalMethod
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


class InfoProHead(Head):
    """Decoder (bilinear up -> conv3x3-BN-ReLU -> conv3x3 -> sigmoid) and the "1c2f" task head."""

    def __init__(self, channels: int, final_width: int, input_shape, num_classes: int, cfg: InfoProConfig, lambdas):
        super().__init__()
        self.lambda_rec, self.lambda_task = lambdas
        self.contrast = cfg.loss == "contrast"
        self.temperature = cfg.temperature
        self.input_size = tuple(input_shape[1:])
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, 12, 3, 1, 1, bias=False),
            nn.BatchNorm2d(12),
            nn.ReLU(inplace=True),
            nn.Conv2d(12, input_shape[0], 3, 1, 1),
        )
        # Double the width with stride 2 below the last stage's width; keep it (stride 1) at the last stage.
        out_channels, stride = (channels * 2, 2) if channels < final_width else (channels, 1)
        self.task = nn.Sequential(
            nn.Conv2d(channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(out_channels, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, 128 if self.contrast else num_classes),
        )
        init_weights(self)

    def logits(self, h):
        return None if self.contrast else self.task(h)

    def forward(self, h, batch):
        out: dict[str, torch.Tensor | None] = {"logits": None}
        loss = h.new_zeros(())
        if self.lambda_rec:
            up = F.interpolate(h, size=self.input_size, mode="bilinear", align_corners=True)
            # BCE on the sigmoid output, computed from logits for numerical stability (same value).
            out["rec"] = F.binary_cross_entropy_with_logits(self.decoder(up), batch.raw)
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
        channels = self.info.module_shapes[index][0]
        return InfoProHead(
            channels, self.info.final_width, self.info.input_shape, self.info.num_classes, self.cfg, lambdas
        )
