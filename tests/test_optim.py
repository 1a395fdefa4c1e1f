import math

import pytest

from pipelocal.config import OptimConfig
from pipelocal.optim import lr_at


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
