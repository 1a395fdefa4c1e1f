"""MLAAN against the authors' released code: copy tables per split, the K = 15 layout, the EMA recipes of the
shipped configs, and MLAAN as a plug-in on DGL's and InfoPro's heads (method.base)."""

from pathlib import Path

import pytest
import torch

from pipelocal.config_parse import load_config
from pipelocal.data import Batch, DataInfo
from pipelocal.methods import METHODS
from pipelocal.methods.mlaan import MLAANHead, derived_units, lam_units
from pipelocal.models import build_backbone
from pipelocal.optim import build_optimizers
from pipelocal.runtime import build_local_net
from pipelocal.schedules.sequential import train_step
from tests.conftest import one_process, tiny_config
from tests.methods.test_auglocal_mlaan import papers_gradients

CIFAR10 = Path(__file__).resolve().parents[2] / "configs" / "cifar10"
CIFAR = DataInfo(num_classes=10, input_shape=(3, 32, 32))
_SMALL = DataInfo(num_classes=10, input_shape=(3, 16, 16))  # tiny_config's synthetic data
R32 = build_backbone("cifar_resnet", 32, 3, 10).positions
R110 = build_backbone("cifar_resnet", 110, 3, 10).positions

S1, S1B = [(2, 0), (3, 0), (3, 2), (3, 4)], [(2, 0), (3, 0), (3, 3), (3, 4)]
S2 = [(3, 0), (3, 2), (3, 3), (3, 4)]
# configAuxPlus_new.py, InfoPro_Aux['resnet32'][K][i] for modules i = 1..K-2, keyed by where module i ends
AUTHORS_K8 = {
    (1, 2): S1,
    (1, 4): S1B,
    (2, 1): S2,
    (2, 3): S2,
    (3, 0): [(3, 2), (3, 3), (3, 4)],
    (3, 2): [(3, 3), (3, 4)],
}
AUTHORS_K15 = {
    **{(1, 1): S1, (1, 2): S1B, (1, 3): S1, (1, 4): S1B},
    **{(2, b): S2 for b in range(5)},
    **{(3, 0): [(3, 1), (3, 2), (3, 4)], (3, 1): [(3, 2), (3, 3), (3, 4)], (3, 2): [(3, 3), (3, 4)], (3, 3): [(3, 4)]},
}


def _copies(net):
    """Module end -> the positions its LAM copies, for every module with an MLAAN head."""
    pos = net.method.info.backbone.positions
    return {
        pos[m.unit_range[1] - 1]: [pos[u] for u in m.head.units]
        for m in net.local_modules
        if isinstance(m.head, MLAANHead)
    }


@pytest.mark.parametrize(
    "name, table", [("resnet32_mlaan_k8.yaml", AUTHORS_K8), ("resnet32_mlaan_k15.yaml", AUTHORS_K15)]
)
def test_shipped_r32_configs_copy_the_authors_tables(name, table):
    net = build_local_net(load_config(CIFAR10 / name, ["--data.batch_size=16"]), CIFAR)
    assert _copies(net) == table


def test_the_k15_layout_keeps_the_stem_with_the_first_block():
    net = build_local_net(load_config(CIFAR10 / "resnet32_mlaan_k15.yaml", ["--data.batch_size=16"]), CIFAR)
    assert [m.unit_range for m in net.local_modules] == [(0, 2)] + [(u, u + 1) for u in range(2, 16)]
    assert net.local_modules[0].head is None  # the stem and [1,0] learn through module 1's cascade
    assert all(isinstance(m.head, MLAANHead) for m in net.local_modules[1:-1])


def test_r110_tables_are_keyed_by_their_split():
    k54 = list(range(1, 54))  # one block per module (the default split of lam_units)
    k32 = [R110.index(p) for p in [(s, b) for s in (1, 2) for b in (1, 2, 4, 5, 7, 9, 11, 13, 14, 16, 17)]]
    k32 += [R110.index((3, b)) for b in (1, 3, 4, 6, 7, 9, 11, 13, 15)]
    rows = {  # (end, split) -> copies, from InfoPro_Aux['resnet110'][32 | 54]
        ((1, 5), "k32"): [(2, 0), (3, 0), (3, 2), (3, 17)],
        ((2, 17), "k32"): [(3, 0), (3, 3), (3, 4), (3, 17)],
        ((3, 6), "k32"): [(3, 8), (3, 17)],
        ((3, 15), "k32"): [(3, 17)],
        ((3, 10), "k54"): [(3, 14), (3, 17)],
        ((3, 15), "k54"): [(3, 16), (3, 17)],
        ((3, 16), "k54"): [(3, 17)],
    }
    for (end, split), want in rows.items():
        ends = {"k32": k32, "k54": k54}[split]
        assert [R110[u] for u in lam_units(R110.index(end), R110, ends)] == want, (end, split)


def test_other_splits_follow_the_rule_not_another_splits_table():
    k16 = build_local_net(load_config(CIFAR10 / "resnet32_mlaan_k16.yaml", ["--data.batch_size=16"]), CIFAR)
    copies = _copies(k16)
    assert copies[(3, 0)] == [(3, 2), (3, 3), (3, 4)]  # not K = 15's [3,1] [3,2] [3,4]
    assert copies[(1, 0)] == S1 and copies[(2, 4)] == S2 and copies[(3, 3)] == [(3, 4)]
    k4 = [R32.index(p) for p in [(1, 2), (2, 1), (3, 0)]]  # InfoPro's K = 4
    assert [[R32[u] for u in lam_units(e, R32, k4)] for e in k4[1:]] == [S2, [(3, 2), (3, 3), (3, 4)]]
    r20 = build_backbone("cifar_resnet", 20, 3, 10).positions  # a short last stage: [3,1] fills in
    assert [r20[u] for u in derived_units(r20.index((1, 1)), r20)] == [(2, 0), (3, 0), (3, 1), (3, 2)]


def test_the_rule_departs_from_the_r32_tables_only_where_the_docstring_says():
    for table, departs in ((AUTHORS_K8, {(1, 4)}), (AUTHORS_K15, {(1, 2), (1, 4), (3, 0)})):
        rule = {end: [R32[u] for u in derived_units(R32.index(end), R32)] for end in table}
        assert {end for end in table if rule[end] != table[end]} == departs


def test_published_recipes_refresh_the_last_ema_and_paper_variants_every_one():
    paths = sorted(CIFAR10.glob("*mlaan*.yaml"))
    assert {"resnet32_mlaan_k15_paper.yaml", "resnet32_mlaan_k8_paper.yaml"} <= {p.name for p in paths}
    for path in paths:
        want = "all" if path.stem.endswith("_paper") else "last"
        assert load_config(path).method.ema_update == want, path.name


def test_cascade_span_3_leaves_the_first_two_modules_to_the_first_cascade():
    net = build_local_net(
        tiny_config("--method.name=mlaan", "--method.cascade_span=3", "--split.num_modules=4"), _SMALL
    )
    assert [m.spans for m in net.local_modules] == [(), (), (1, 3), (3,)]
    assert [m.head is None for m in net.local_modules] == [True, True, False, False]


BASES = {"mlaan": [], "dgl": ["--method.cascade_span=3"], "infopro": ["--method.cascade_span=3"]}


@pytest.mark.parametrize("base", BASES)
def test_each_base_builds_and_trains_one_step(base):
    cfg = tiny_config("--method.name=mlaan", f"--method.base={base}", "--split.num_modules=4", *BASES[base])
    loader, net, opts, numerics = one_process(cfg)
    assert net.method.needs == (("raw",) if base == "infopro" else ())
    heads = [m.head for m in net.local_modules if isinstance(m.head, MLAANHead)]
    own = METHODS.get(base) if base != "mlaan" else None
    if own is not None:  # the base method's own head type, for the probe and the LAM's output alike
        kind = type(own(cfg.method, net.method.info).build_head(1))
        assert all(type(h.probe) is kind and type(h.classifier) is kind for h in heads)
    before = [p.detach().clone() for p in net.parameters()]
    ema = [h.ema.state_dict()["conv1.weight"].clone() for h in heads]
    result = train_step(net, next(iter(loader)), opts, per_module=False, numerics=numerics)
    assert all(torch.isfinite(loss) for loss in result.losses)
    assert sum(not torch.equal(b, p) for b, p in zip(before, net.parameters())) > len(before) // 2
    last = heads[-1]  # the module before the final one: its EMA follows its live block
    assert not torch.equal(last.ema.state_dict()["conv1.weight"], ema[-1])


def test_dgl_base_heads_cost_dgl_heads_plus_mlaans_extras():
    args = ("--model.depth=20", "--split.num_modules=4", "--split.balance=uniform")
    mlaan = build_local_net(tiny_config("--method.name=mlaan", "--method.base=dgl", *args), _SMALL)
    dgl = build_local_net(tiny_config("--method.name=dgl", *args), _SMALL)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    lam_head = count(dgl.local_modules[2].head)  # module 2 ends at [3,0]: (64, 4, 4), the LAM's output shape
    assert mlaan.method.info.module_shapes[2] == mlaan.method.info.module_shapes[3]
    for i in (1, 2):
        head = mlaan.local_modules[i].head
        copies = sum(count(mlaan.unit(u)) for u in head.units) + count(mlaan.unit(head.units[0]))  # + EMA copy
        assert count(head) == count(dgl.local_modules[i].head) + copies + lam_head


def test_dgl_base_span_3_step_equals_the_papers_recomputation():
    """Each module's gradient equals the sum of its losses, each recomputed over its span from a detached input."""
    cfg = tiny_config("--method.name=mlaan", "--method.base=dgl", "--method.cascade_span=3", "--split.num_modules=4")
    cfg.optim.lr = 0.0
    net = build_local_net(cfg, _SMALL)
    gen = torch.Generator().manual_seed(1)
    raw = torch.rand(16, 3, 16, 16, generator=gen)
    batch = Batch((raw - 0.5) / 0.25, torch.arange(16) % 10, raw)
    train_step(net, batch, build_optimizers(net.local_modules, cfg.optim), per_module=False)
    got = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    want = papers_gradients(net, batch)
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
