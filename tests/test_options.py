"""The method section assembled from the methods' own Configs (options.py), and config.py's independence of them."""

import ast
import dataclasses
import pickle
from pathlib import Path

import pytest

from pipelocal.config import ConfigError, JobConfig
from pipelocal.config_parse import help_text, load_config, to_dict
from pipelocal.methods import METHODS
from pipelocal.options import METHOD_OPTIONS, add_method_options, option

PACKAGE = Path(__file__).resolve().parent.parent / "pipelocal"
KNOBS = [
    (name, f)
    for name in METHODS.names()
    if METHODS.get(name).Config
    for f in dataclasses.fields(METHODS.get(name).Config)
]


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names += [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize("module", ["config.py", "options.py"])
def test_the_schema_never_imports_the_methods(module):
    source = (PACKAGE / module).read_text()
    assert not [m for m in _imported_modules(PACKAGE / module) if m.startswith("pipelocal.methods")]
    assert "importlib" not in source and "__import__" not in source  # not even lazily


def test_options_is_a_leaf():
    assert not [m for m in _imported_modules(PACKAGE / "options.py") if m.startswith("pipelocal")]


@pytest.mark.parametrize("name, knob", KNOBS, ids=[f"{n}.{f.name}" for n, f in KNOBS])
def test_every_knob_is_a_flat_method_key_with_its_help(name, knob):
    section = JobConfig().method
    want = knob.default_factory() if knob.default_factory is not dataclasses.MISSING else knob.default
    assert getattr(section, knob.name) == want
    text = " ".join(help_text().split())  # wrapped to the terminal: compare the words
    assert f"--method.{knob.name}=" in text and " ".join(f"{name}: {knob.metadata['help']}".split()) in text


def test_the_section_dumps_flat_with_the_same_keys():
    # Run directories and benchmarks read these keys from config.yaml; the order of the groups may change.
    keys = (
        "name loss lambdas temperature aux_net aux_depth depth_decay wx wy cascade_span ema_momentum ema_sync_every "
        "ema_update ema_timing base head"
    )
    assert sorted(to_dict(JobConfig())["method"]) == sorted(keys.split())


def test_the_section_pickles_and_copies_by_value():
    cfg = load_config(None, ["--method.name=mlaan", "--method.wx=0.5"])
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg and again.method.wx == 0.5 and type(again.method) is type(cfg.method)


def test_knob_names_are_unique_across_methods():
    @dataclasses.dataclass
    class Clash:
        lambdas: list[float] = option([1.0], "infopro has this key already")

    with pytest.raises(KeyError, match="lambdas"):
        add_method_options("clash", Clash, cross_module=False)
    assert "clash" not in METHOD_OPTIONS


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["--method.lambda=[1,1,0,1]"], ["unknown key 'method.lambda'", "did you mean 'method.lambdas'"]),
        (["--method.lambdas=[1,1]"], ["method.lambdas", "4 numbers"]),
        (["--method.name=mlaan", "--method.cascade_span=4"], ["method.cascade_span", "2 or 3"]),
        (["--method.name=auglocal", "--method.aux_depth=0"], ["method.aux_depth", "at least 1"]),
        (["--method.ema_update=sometimes"], ["method.ema_update", "all, last"]),
        (["--pipeline.buffer=replay", "--method.name=e2e"], ["replay", "auglocal, dgl, greedy, infopro"]),
    ],
)
def test_bad_method_keys_fail_at_load(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    for word in words:
        assert word in str(err.value)
