"""model.name: timm/NAME: timm's ResNet-18/50, a ViT and a ConvNeXt cut into units that compute the model's own
forward, trained under every local method in one process (tiny inputs). Skipped without timm (pipelocal[timm])."""

import sys

import pytest
import torch

from pipelocal.config import ConfigError
from pipelocal.models import build_model
from pipelocal.models.user import backbone_from
from pipelocal.schedules.sequential import train_step
from tests.conftest import one_process, tiny_config

SHAPE = (3, 32, 32)
MODELS = {  # timm name -> units: the stem, every block, (the classifier apart)
    "resnet18": 1 + 8,
    "resnet50": 1 + 16,
    "vit_tiny_patch16_224": 1 + 12,
    "convnext_atto": 1 + 12,
}
METHODS = ["greedy", "dgl", "infopro", "auglocal", "mlaan"]


def _timm():
    return pytest.importorskip("timm", reason="timm is not installed (pip install 'pipelocal[timm]')")


@pytest.mark.parametrize("name", MODELS)
def test_units_compute_the_timm_models_forward(name):
    _timm()
    from pipelocal.models.timm_units import create, cut

    torch.manual_seed(0)
    model = create(name, SHAPE, 10).eval()
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        expected = model(x)  # timm's own forward, before the model is taken apart
        parts, layout = cut(model, name)
        backbone = backbone_from(parts, name, SHAPE, 10, layout).eval()
        assert backbone.num_units == MODELS[name]
        assert torch.equal(backbone(x), expected)
    assert sum(p.numel() for p in backbone.parameters()) == sum(p.numel() for p in model.parameters())
    assert (layout is not None) == name.startswith("vit")


@pytest.mark.parametrize("name", MODELS)
def test_every_method_trains_a_timm_model(name):
    _timm()
    for method in METHODS:
        cfg = tiny_config(
            f"--model.name=timm/{name}",
            f"--method.name={method}",
            "--split.num_modules=4",
            "--data.synthetic_shape=[3, 32, 32]",
            "--data.synthetic_train=16",
            "--data.batch_size=8",
        )
        loader, net, opts, numerics = one_process(cfg)
        before = {k: v.clone() for k, v in net.state_dict().items() if ".body." in k}
        loss = train_step(net, next(iter(loader)), opts, False, numerics=numerics)
        state = net.state_dict()
        moved = {k.split(".")[1] for k, v in before.items() if v.is_floating_point() and not torch.equal(v, state[k])}
        assert moved == {"0", "1", "2", "3"}, (name, method, loss)  # every module's body got a gradient


def test_timm_missing_or_unknown_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what an environment without timm imports
    with pytest.raises(ConfigError, match=r"needs timm: pip install 'pipelocal\[timm\]'"):
        build_model("timm/resnet18", 0, SHAPE, 10, "batch")
    monkeypatch.undo()
    _timm()
    with pytest.raises(ConfigError, match="timm has no model 'resnet19'; did you mean"):
        build_model("timm/resnet19", 0, SHAPE, 10, "batch")
