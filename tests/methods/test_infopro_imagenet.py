"""InfoPro's ImageNet aux nets (method.aux_net=imagenet) and the ImageNet configs (InfoPro* K=2)."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from pipelocal.config import ConfigError
from pipelocal.config_parse import load_config
from pipelocal.data import DataInfo
from pipelocal.methods.base import NetInfo
from pipelocal.methods.infopro import InfoProConfig, imagenet_aux_nets
from pipelocal.models import build_backbone
from pipelocal.runtime import build_local_net
from pipelocal.schedules.sequential import train_step
from tests.conftest import one_process

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "imagenet"


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_imagenet_aux_nets_have_the_released_shapes():
    """The released Decoder(512) and head at 224x224 with h = layer2's 512x28x28 (Experiments on ImageNet)."""
    info = NetInfo(2, 1000, (3, 224, 224), ((512, 28, 28), (2048, 7, 7)), 2048)
    decoder, task = imagenet_aux_nets(512, info, 1000)
    sizes = [m.size for m in decoder if isinstance(m, nn.Upsample)]
    assert sizes == [(56, 56), (112, 112), (224, 224)]
    # conv1x1 512->128 (+bias), 3x3 128->32, 3x3 32->12, 3x3 12->3 (all with bias) + three BNs
    convs = (512 * 128 + 128) + (128 * 32 * 9 + 32) + (32 * 12 * 9 + 12) + (12 * 3 * 9 + 3)
    assert _count(decoder) == convs + 2 * (128 + 32 + 12)
    # 1x1 512->128, 3x3 128->256, 3x3 256->512, 1x1 512->2048 (no bias) + BNs, Linear 2048->1000
    convs = 512 * 128 + 128 * 256 * 9 + 256 * 512 * 9 + 512 * 2048
    assert _count(task) == convs + 2 * (128 + 256 + 512 + 2048) + 2048 * 1000 + 1000
    h = torch.randn(2, 512, 28, 28)
    assert decoder(h).shape == (2, 3, 224, 224) and task(h).shape == (2, 1000)


def test_default_aux_nets_are_cifars():
    assert InfoProConfig().aux_net == "cifar"
    cfg = load_config(None, ["--model.depth=8", "--split.num_modules=2", "--method.name=infopro"])
    head = build_local_net(cfg, DataInfo(5, (3, 16, 16))).local_modules[0].head
    assert [type(m) for m in head.decoder] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]


def test_unknown_aux_net_names_the_choices():
    with pytest.raises(ConfigError, match="cifar, imagenet"):
        load_config(None, ["--method.aux_net=mnist"])


def test_resnet101_with_imagenet_heads_trains_one_local_step():
    cfg = load_config(
        None,
        [
            "--model.name=resnet101",
            "--data.name=synthetic",
            "--data.synthetic_shape=[3, 64, 64]",
            "--data.synthetic_train=2",
            "--data.synthetic_test=2",
            "--data.batch_size=2",
            "--split.num_modules=2",
            "--split.boundaries=[4]",  # the released ResNet-101 split: after layer2[0]
            "--method.name=infopro",
            "--method.aux_net=imagenet",
            "--method.lambdas=[5, 0.75, 0, 0]",
            "--metrics.console=none",
        ],
    )
    loader, net, opts, numerics = one_process(cfg)
    head = net.local_modules[0].head
    assert head.decoder[0].in_channels == 512 and head.task[-1].out_features == cfg.data.synthetic_classes
    watched = [head.decoder[0].weight, head.task[0].weight, net.local_modules[0].body[0][0].weight]  # + stem conv
    before = [w.detach().clone() for w in watched]
    batch = next(iter(loader))
    result = train_step(net, batch, opts, per_module=False, numerics=numerics)
    assert len(result.losses) == 2 and all(math.isfinite(loss.item()) for loss in result.losses)
    assert all(not torch.equal(b, w) for b, w in zip(before, watched))  # the local loss trained head and module 0


@pytest.mark.parametrize("name, position", [("resnet101", (2, 0)), ("resnet152", (2, 5)), ("resnext101_32x8d", (2, 2))])
def test_imagenet_configs_cut_where_the_released_code_does(name, position):
    """Module 0 ends after layer2[k2_infopro] (the released code's table: 0, 5, 2)."""
    path = CONFIGS / f"{name.split('_')[0]}_infopro_k2.yaml"
    cfg = load_config(path)
    assert (cfg.model.name, cfg.data.name, cfg.split.num_modules, cfg.method.aux_net) == (
        name,
        "imagefolder",
        2,
        "imagenet",
    )
    with torch.device("meta"):
        positions = build_backbone(name, 0, 3, 1000).positions
    assert positions[cfg.split.boundaries[0]] == position
