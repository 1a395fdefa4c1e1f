import math

import pytest
import torch

from pipelocal.config import ConfigError, OptimConfig
from pipelocal.optim import build_optimizers, lr_at
from tests.conftest import tiny_config


def test_cosine_with_warmup():
    cfg = OptimConfig(lr=0.8, warmup_epochs=10, warmup_lr=0.01)
    assert lr_at(0, cfg, 160) == pytest.approx(0.01)
    assert lr_at(5, cfg, 160) == pytest.approx(0.01 + 0.79 * 0.5)
    assert lr_at(10, cfg, 160) == pytest.approx(0.8)
    assert lr_at(85, cfg, 160) == pytest.approx(0.4)
    assert lr_at(160, cfg, 160) == pytest.approx(0.0, abs=1e-12)


def test_cosine_without_warmup_matches_infopro_formula():
    cfg = OptimConfig(lr=0.1, warmup_epochs=0)
    for e in range(5):
        assert lr_at(e, cfg, 5) == pytest.approx(0.5 * 0.1 * (1 + math.cos(math.pi * e / 5)))


def test_constant():
    assert lr_at(3.5, OptimConfig(lr=0.2, schedule="constant"), 10) == 0.2


# The authors' formula (InfoPro/AugLocal/MLAAN code), lr0 = 0.8, E = 400; keys are e = epoch + 1.
AUTHORS_VALUES = {1: 0.01, 2: 0.089, 5: 0.32588, 10: 0.71989, 11: 0.79851, 200: 0.4}


def test_cosine_blend_reproduces_the_authors_code():
    cfg = OptimConfig(lr=0.8, schedule="cosine_blend", warmup_epochs=10, warmup_lr=0.01)
    for e, lr in AUTHORS_VALUES.items():
        assert lr_at(e - 1, cfg, 400) == pytest.approx(lr, abs=5e-6), f"e = {e}"
    assert lr_at(399, cfg, 400) == pytest.approx(0.0, abs=1e-12)  # their last epoch runs at 0
    assert lr_at(10, OptimConfig(lr=0.8, warmup_epochs=10), 400) == pytest.approx(0.8)  # `cosine` is higher


def test_cosine_blend_per_step_is_continuous_and_meets_the_epoch_values():
    cfg = OptimConfig(lr=0.8, schedule="cosine_blend", warmup_epochs=10, warmup_lr=0.01)
    for epoch in (0, 4, 9, 10, 200):
        assert lr_at(epoch + 0.999999, cfg, 400) == pytest.approx(lr_at(epoch + 1, cfg, 400), abs=1e-5)
    assert lr_at(0.5, cfg, 400) == pytest.approx((lr_at(0, cfg, 400) + lr_at(1, cfg, 400)) / 2, abs=1e-3)


def test_cosine_blend_without_warmup_is_the_plain_cosine_of_e():
    cfg = OptimConfig(lr=0.1, schedule="cosine_blend", warmup_epochs=0)
    for epoch in range(5):
        assert lr_at(epoch, cfg, 5) == pytest.approx(0.5 * 0.1 * (1 + math.cos(math.pi * (epoch + 1) / 5)))


def test_adamw_per_module_is_one_adamw_over_all_parameters():
    torch.manual_seed(0)
    modules = [torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)]
    twins = [torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)]
    for m, t in zip(modules, twins):
        t.load_state_dict(m.state_dict())
    cfg = OptimConfig(name="adamw", lr=0.01, betas=[0.8, 0.99], weight_decay=0.05)
    per_module = build_optimizers(modules, cfg)
    assert all(isinstance(o, torch.optim.AdamW) for o in per_module)
    assert per_module[0].defaults["betas"] == (0.8, 0.99) and per_module[0].defaults["weight_decay"] == 0.05
    one = torch.optim.AdamW([p for t in twins for p in t.parameters()], lr=0.01, betas=(0.8, 0.99), weight_decay=0.05)
    for _ in range(3):
        x = torch.randn(8, 4)
        for net, opts in ((modules, per_module), (twins, [one])):
            net[1](net[0](x)).square().mean().backward()
            for o in opts:
                o.step()
                o.zero_grad()
    for m, t in zip(modules, twins):
        for a, b in zip(m.parameters(), t.parameters()):
            assert torch.equal(a, b)


def test_sgd_is_the_default_and_bad_betas_are_named():
    assert isinstance(build_optimizers([torch.nn.Linear(2, 2)], OptimConfig())[0], torch.optim.SGD)
    with pytest.raises(ConfigError, match="optim.betas"):
        tiny_config("--optim.name=adamw", "--optim.betas=[0.9]")
