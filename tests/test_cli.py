"""The command line as people type it (cli.py) and where --config finds its file (config_files.py)."""

import re
from pathlib import Path

import pytest
import yaml

from pipelocal.cli import config_from_argv, help_page, parse_command
from pipelocal.config import JobConfig
from pipelocal.config_files import packaged_names, resolve_config
from pipelocal.config_parse import load_config
from pipelocal.options import ConfigError

CHECKOUT_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_scientific_notation_is_a_number_on_the_command_line_and_in_yaml(tmp_path):
    cfg = load_config(None, ["--optim.lr=1e-3", "--optim.warmup_lr=1E-5", "--guidance.weight=5e+1"])
    assert (cfg.optim.lr, cfg.optim.warmup_lr, cfg.guidance.weight) == (0.001, 0.00001, 50.0)
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 3e-4, weight_decay: 5e-2}\ntrain: {epochs: 1e1}\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.epochs) == (0.0003, 0.05, 10)


def test_what_vit_e2e_suggests_runs():
    # The command this shipped config's own comment suggests (it failed with "needs a number" before).
    text = (CHECKOUT_CONFIGS / "fmnist" / "vit_e2e.yaml").read_text()
    assert "--optim.warmup_lr=1e-5" in text
    assert config_from_argv(["--config", "fmnist/vit_e2e.yaml", "--optim.warmup_lr=1e-5"]).optim.warmup_lr == 1e-5


def test_space_separated_values_and_bare_booleans():
    config, wants_help, overrides = parse_command(
        ["--config", "x.yaml", "--train.epochs", "1", "--train.channels_last", "--optim.lr=-1", "--data.drop_last"]
    )
    assert (config, wants_help) == ("x.yaml", False)
    assert overrides == ["--train.epochs=1", "--train.channels_last=true", "--optim.lr=-1", "--data.drop_last=true"]
    cfg = config_from_argv(["--mode", "sequential", "--train.epochs", "1", "--train.channels_last", "--optim.nesterov"])
    assert (cfg.mode, cfg.train.epochs, cfg.train.channels_last) == ("sequential", 1, True)
    cfg = config_from_argv(["--mode=sequential", "--train.channels_last", "false"])
    assert cfg.train.channels_last is False


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--train.epochs"], ["--train.epochs needs a value", "--train.epochs=VALUE"]),
        (["--config"], ["--config needs a value"]),
        (["train.epochs=2"], ["'train.epochs=2' is not an option"]),
        (["--train.epoch", "2"], ["unknown key 'train.epoch'", "did you mean 'train.epochs'"]),
        (["--train.chanels_last"], ["unknown key 'train.chanels_last'", "did you mean 'train.channels_last'"]),
    ],
)
def test_bad_command_lines_are_one_line_naming_the_fix(argv, words):
    with pytest.raises(ConfigError) as err:
        config_from_argv(argv)
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_config_resolves_a_path_first_then_a_packaged_name(tmp_path, monkeypatch):
    assert resolve_config(None) == CHECKOUT_CONFIGS / "default.yaml"
    for name in ("fmnist/infopro_k4.yaml", "fmnist/infopro_k4", "configs/fmnist/infopro_k4.yaml"):
        assert resolve_config(name).resolve() == CHECKOUT_CONFIGS / "fmnist" / "infopro_k4.yaml"
    monkeypatch.chdir(tmp_path)  # a file of the same name here wins over the packaged one
    (tmp_path / "fmnist").mkdir()
    (tmp_path / "fmnist" / "infopro_k4.yaml").write_text("train: {epochs: 7}\n")
    assert resolve_config("fmnist/infopro_k4.yaml") == Path("fmnist/infopro_k4.yaml")
    assert config_from_argv(["--config", "fmnist/infopro_k4.yaml", "--mode=sequential"]).train.epochs == 7
    with pytest.raises(ConfigError, match=r"nor a packaged config name; did you mean 'fmnist/dgl_k4.yaml'"):
        resolve_config("fmnist/dgl_k5.yaml")
    assert len(packaged_names()) == len(list(CHECKOUT_CONFIGS.rglob("*.yaml")))


def _help_values(text: str) -> dict[str, str]:
    return dict(re.findall(r"^  --([\w.]+)=(.*)$", text, flags=re.M))


def test_help_shows_the_values_this_command_runs_with():
    default = yaml.safe_load((CHECKOUT_CONFIGS / "default.yaml").read_text())  # read apart from config.py
    with pytest.raises(SystemExit) as done:
        config_from_argv(["--help"])
    assert done.value.code == 0
    values = _help_values(help_page(config_from_argv([]), "the default job"))
    assert values["mode"] == default["mode"] != JobConfig().mode
    assert values["train.epochs"] == str(default["train"]["epochs"])
    assert values["split.balance"] == default["split"]["balance"]
    given = yaml.safe_load((CHECKOUT_CONFIGS / "fmnist" / "vit_e2e.yaml").read_text())
    cfg = config_from_argv(["--config", "fmnist/vit_e2e.yaml", "--train.epochs", "9"])
    values = _help_values(help_page(cfg, "--config fmnist/vit_e2e.yaml"))
    assert values["model.name"] == given["model"]["name"] and values["train.epochs"] == "9"


def test_help_has_every_nested_key_the_choices_and_fits_the_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = help_page(JobConfig(), "x")
    keys = set(_help_values(text))
    assert {"pipeline.slowdown.stage", "pipeline.slowdown.factor", "pipeline.replicas"} <= keys
    method = re.search(r"^  --method\.name=.*\n(.*)$", text, flags=re.M).group(1)
    for name in ("auglocal", "dgl", "e2e", "greedy", "infopro", "mlaan"):
        assert name in method
    assert "{1f1b, ddp, e2e, gpipe, pipeline, sequential}" in text
    assert max(len(line) for line in text.splitlines()) <= 100  # the terminal's width
    assert text.index("--pipeline.replicas=") < text.index("\npipeline.slowdown:")  # a section's keys stay under it
