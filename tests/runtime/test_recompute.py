"""guidance.recompute: a guidance step that keeps only the module boundaries and recomputes each module in the
backward gives the same update (BatchNorm statistics included) with a fraction of the saved activations."""

import pytest
import torch

from pipelocal.metrics.memory import SavedTensorMeter
from pipelocal.runtime.spans import Guide
from pipelocal.schedules.sequential import train_step
from tests.conftest import one_process, tiny_config


def guided_step(method: str, combine: str, recompute: bool):
    cfg = tiny_config(f"--method.name={method}", "--split.num_modules=4", "--data.batch_size=32")
    loader, net, opts, numerics = one_process(cfg)
    batch = next(iter(loader))
    meter = SavedTensorMeter(net.parameters())
    result = train_step(net, batch, opts, False, meter, Guide(combine, 0.5, recompute), numerics)
    return net.state_dict(), result.saved_peak


@pytest.mark.parametrize("method, combine", [("infopro", "replace"), ("infopro", "add"), ("mlaan", "replace")])
def test_recompute_gives_the_same_step(method, combine):
    kept, kept_peaks = guided_step(method, combine, recompute=False)
    recomputed, peaks = guided_step(method, combine, recompute=True)
    assert kept.keys() == recomputed.keys()
    for name, value in kept.items():
        assert torch.allclose(recomputed[name].float(), value.float(), atol=1e-6, rtol=1e-5), name
    # Without recompute the last module runs with every earlier module's graph alive (end-to-end's peak); with
    # it, only their inputs are kept (with combine=add each module's local loss also runs its own backward first).
    assert max(peaks) < (0.6 if combine == "replace" else 0.9) * max(kept_peaks)


def test_the_config_reaches_every_guidance_step():
    from pipelocal.runtime.guidance import guide_for

    cfg = tiny_config("--guidance.every=2", "--guidance.recompute=true", "--guidance.warmup_epochs=1")
    assert guide_for(cfg.guidance, 0, 0).recompute and guide_for(cfg.guidance, 1, 1).recompute
    assert guide_for(cfg.guidance, 1, 0) is None
