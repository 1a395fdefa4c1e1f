"""Each method owns its knobs (a Config beside its code) and checks them when it is built."""

import pytest

from pipelocal.config import ConfigError
from pipelocal.data import DataInfo
from pipelocal.methods import METHODS
from pipelocal.methods.auglocal import AugLocalConfig
from pipelocal.methods.infopro import InfoProConfig
from pipelocal.methods.mlaan import MLAANConfig
from pipelocal.runtime import build_local_net
from tests.conftest import tiny_config

INFO = DataInfo(num_classes=5, input_shape=(3, 16, 16))


@pytest.mark.parametrize(
    "name, key, bad, words",
    [
        ("infopro", "lambdas", [1.0, 1.0], ["method.lambdas", "4 numbers"]),
        ("infopro", "temperature", 0.0, ["method.temperature", "positive"]),
        ("infopro", "loss", "hinge", ["method.loss", "softmax, contrast"]),
        ("auglocal", "aux_depth", 0, ["method.aux_depth", "at least 1"]),
        ("mlaan", "cascade_span", 4, ["method.cascade_span", "2 or 3"]),
        ("mlaan", "ema_sync_every", 0, ["method.ema_sync_every", "at least 1"]),
    ],
)
def test_a_bad_knob_is_reported_when_the_method_is_built(name, key, bad, words):
    cfg = tiny_config(f"--method.name={name}", "--split.num_modules=3")
    setattr(cfg.method, key, bad)  # past load_config's check: the method's own check must catch it
    with pytest.raises(ConfigError) as err:
        build_local_net(cfg, INFO)
    for word in words:
        assert word in str(err.value)


def test_a_method_holds_its_own_config():
    net = build_local_net(tiny_config("--method.name=mlaan", "--method.wx=0.25", "--split.num_modules=3"), INFO)
    assert net.method.cfg == MLAANConfig(wx=0.25)
    assert METHODS.get("infopro").Config is InfoProConfig and METHODS.get("auglocal").Config is AugLocalConfig


@pytest.mark.parametrize("name", ["greedy", "e2e"])
def test_methods_without_knobs_have_no_config(name):
    mode = "--mode=e2e" if name == "e2e" else "--mode=sequential"
    assert METHODS.get(name).Config is None
    assert build_local_net(tiny_config(f"--method.name={name}", mode), INFO).method.cfg is None
