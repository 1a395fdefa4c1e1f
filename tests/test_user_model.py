"""Networks from outside the package (model.name: package.module:function, tests/user_nets.py): cut into units
as returned, trained under every local method in one process, and refused with a one-line fix when a pipeline
could not split them."""

import pytest
import torch
from torch import nn

from pipelocal.config import ConfigError
from pipelocal.models import build_model
from pipelocal.runtime import build_local_net
from pipelocal.schedules.sequential import train_step
from tests.conftest import one_process, tiny_config
from tests.user_nets import small_cnn

SHAPE = (3, 16, 16)
USER = "--model.name=tests.user_nets:small_cnn"


def test_units_are_the_factory_children_and_compute_its_forward():
    torch.manual_seed(0)
    reference = small_cnn(in_channels=3, num_classes=10, image_size=16)
    torch.manual_seed(0)
    backbone = build_model("tests.user_nets:small_cnn", 0, SHAPE, 10, "batch")
    assert backbone.num_units == 6  # the classifier is the 7th child
    x = torch.rand(4, *SHAPE)
    assert torch.equal(backbone.eval()(x), reference.eval()(x))  # same init (same seed), same order of units
    # stages from the shapes: stem, 16 ch at 16x16, 32 at 8x8, 64 at 4x4
    assert backbone.positions == [(0, 0), (1, 0), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert backbone.unit_shapes(SHAPE)[2] == (32, 8, 8)


@pytest.mark.parametrize("method", ["greedy", "dgl", "infopro", "auglocal", "mlaan"])
def test_every_method_trains_a_user_network(method):
    cfg = tiny_config(USER, f"--method.name={method}", "--split.num_modules=4", "--optim.lr=0.05")
    loader, net, opts, numerics = one_process(cfg)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    losses = []
    for i, batch in enumerate(loader):
        if i == 3:
            break
        losses.append(train_step(net, batch, opts, False, numerics=numerics))
    state = net.state_dict()
    for m in range(net.num_modules):  # every module's body moved: each got a gradient
        key = next(k for k in state if k.startswith(f"local_modules.{m}.body.") and k.endswith("weight"))
        assert not torch.equal(state[key], before[key]), (method, key)
    assert [module.unit_range for module in net.local_modules] == [(0, 2), (2, 4), (4, 5), (5, 6)]


def test_auglocal_aux_nets_are_fresh_copies_of_later_units():
    cfg = tiny_config(USER, "--method.name=auglocal", "--split.num_modules=4", "--method.aux_depth=2")
    _, net, _, _ = one_process(cfg)
    head = net.local_modules[0].head  # after unit 1 (16 ch, 16x16); AugLocal samples units 3 and 5
    first, second = head.blocks
    live_transition = net.local_modules[1].body[0]  # unit 2: 16 -> 32 at stride 2, the nearest that fits
    assert first[0].stride == (2, 2) and first[0].weight.shape == live_transition[0].weight.shape
    assert not torch.equal(first[0].weight, live_transition[0].weight)  # re-initialised, not shared
    assert second[0].weight.shape == (64, 32, 3, 3)  # unit 4's kind: 32 -> 64, the nearest that maps 32@8 to unit 5
    assert head.logits(torch.rand(2, 16, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize(
    "factory, words",
    [
        ("no_such_module_xyz:build", ["cannot import no_such_module_xyz", "PYTHONPATH"]),
        ("tests.user_nets:missing", ["has no function missing"]),
        ("tests.user_nets:NOT_CALLABLE", ["has no function NOT_CALLABLE"]),
        ("tests.user_nets:no_keywords", ["takes those keyword arguments", "**kwargs"]),
        ("tests.user_nets:returns_dict", ["returned dict", "nn.Sequential or a list"]),
        ("tests.user_nets:tuple_unit", ["unit 0 (TwoOutputs) returns tuple, not one tensor"]),
        ("tests.user_nets:stateful", ["unit 1 (Stash) keeps a tensor in self.saved", "merge"]),
        ("tests.user_nets:shared", ["units 1 and 2 share weights", "own copy"]),
        ("tests.user_nets:flat_unit", ["unit 0 outputs (N, 768)", "classifier"]),
        ("tests.user_nets:wrong_classes", ["classifier (the last unit) outputs (N, 8)", "(N, 10)"]),
    ],
)
def test_a_network_a_pipeline_cannot_split_is_refused_with_the_fix(factory, words):
    with pytest.raises(ConfigError) as err:
        build_model(factory, 0, SHAPE, 10, "batch")
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_a_cache_that_is_not_per_sample_is_the_units_own_state():
    assert build_model("tests.user_nets:cached", 0, SHAPE, 10, "batch").num_units == 2


def test_fewer_units_than_modules_names_the_fix():
    cfg = tiny_config("--model.name=tests.user_nets:tiny_cnn", "--split.num_modules=5")
    with pytest.raises(ConfigError, match="split.num_modules=5 is larger than the backbone's 4 units"):
        one_process(cfg)


def test_tokens_layout_is_inferred_from_the_token_count():
    class Embed(nn.Module):  # 4x4 patches of 16x16 and a class token: 17 tokens of width 8
        def __init__(self):
            super().__init__()
            self.proj, self.cls = nn.Conv2d(3, 8, 4, 4), nn.Parameter(torch.zeros(1, 1, 8))

        def forward(self, x):
            x = self.proj(x).flatten(2).transpose(1, 2)
            return torch.cat([self.cls.expand(len(x), -1, -1), x], 1)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(x[:, 0])

    block = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.0)
    from pipelocal.models.user import backbone_from

    backbone = backbone_from([Embed(), block, Head()], "test", SHAPE, 10)
    assert (backbone.tokens.patch, backbone.tokens.prefix) == (4, 1)
    cfg = tiny_config("--method.name=dgl")
    from pipelocal.data import DataInfo
    from pipelocal.methods import METHODS
    from pipelocal.runtime.local_net import assemble

    net = assemble(backbone, [(0, 1), (1, 2)], METHODS.get("dgl"), cfg, DataInfo(10, SHAPE))
    assert net.local_modules[0].head(torch.rand(4, 17, 8), _Labels())["loss"].ndim == 0


class _Labels:
    y = torch.tensor([0, 1, 2, 3])


def test_build_local_net_uses_the_configs_seed_for_a_user_factory():
    cfg = tiny_config(USER)
    from pipelocal.data import DataInfo

    a, b = build_local_net(cfg, DataInfo(10, SHAPE)), build_local_net(cfg, DataInfo(10, SHAPE))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("balance", ["time", "memory"])
def test_profiled_splits_cover_a_user_network(balance):
    from pipelocal.data import DataInfo
    from pipelocal.runtime.profile import split_for

    cfg = tiny_config(USER, "--method.name=infopro", "--split.num_modules=3", f"--split.balance={balance}")
    ranges, line = split_for(cfg, DataInfo(10, SHAPE), torch.device("cpu"))
    assert len(ranges) == 3 and ranges[0][0] == 0 and ranges[-1][1] == 6, line
    assert all(a < b and b == c for (a, b), (c, _) in zip(ranges, ranges[1:])), ranges  # contiguous, none empty
