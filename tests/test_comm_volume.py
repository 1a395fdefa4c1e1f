"""Smoke test of benchmarks/comm_volume.py: its figures against counts made here independently."""

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import torch

from pipelocal.models import build_backbone
from pipelocal.split import stage_ranges

ROOT = Path(__file__).resolve().parent.parent
KiB, MiB = 2**10, 2**20


def test_comm_volume_quick_agrees_with_independent_counts(tmp_path):
    cmd = [sys.executable, "benchmarks/comm_volume.py", "--quick", "--threads", "1", "--out", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    for stem in ("comm_volume", "comm_volume_stages"):
        assert all((tmp_path / f"{stem}.{ext}").exists() for ext in ("md", "json", "csv"))
    assert (tmp_path / "comm_volume.png").stat().st_size > 0
    result = json.loads((tmp_path / "comm_volume.json").read_text())
    meta, rows = result["models"]["ResNet-20"], {r[3]: r for r in result["rows"]}
    assert all(r[2] == 32 for r in result["rows"]) and result["reading"]

    # DDP all-reduces every parameter's gradient: 4 bytes per trainable parameter of the whole net.
    backbone = build_backbone("cifar_resnet", 20, 3, 10)
    params = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    assert meta["params"] == params and meta["ddp_grad_bytes"] == 4 * params
    assert rows["ddp R=2"][8] == round(meta["ddp_grad_bytes"] / MiB, 3)  # ring: 2 (R - 1) / R x the bytes
    assert rows["ddp R=4"][8] == round(1.5 * meta["ddp_grad_bytes"] / MiB, 3)

    # What crosses a boundary: 4 bytes per element of that unit's output, from a plain forward of the backbone.
    x, outputs = torch.randn(2, 3, 32, 32), []
    with torch.no_grad():
        for unit in backbone.units:
            x = unit(x)
            outputs.append(x[0].numel())
    for module in meta["modules"]:
        assert module["out_bytes_per_sample"] == 4 * outputs[module["units"][1] - 1]
    assert meta["labels_bytes_per_sample"] == 8 and meta["raw_bytes_per_sample"] == 4 * 3 * 32 * 32

    # P = 2: stage 0 sends its last module's output, the labels and InfoPro's raw input; a guided step sends
    # back a gradient of the activation's size.
    boundary = meta["modules"][stage_ranges(4, 2)[0][1] - 1]["out_bytes_per_sample"]
    stages = [r for r in json.loads((tmp_path / "comm_volume_stages.json").read_text())["rows"] if r[1] == 2]
    assert stages[0][5] == round(boundary / KiB, 2) and stages[0][8] == 0 and stages[1][5] == 0
    assert stages[1][8] == round(boundary / KiB, 2)
    assert rows["local 2x1"][6] == round((boundary + 4 * 3 * 32 * 32 + 8) / KiB, 2)
    assert rows["local 2x1"][7] == round(boundary / KiB, 2)

    # Activation memory: the local pipeline holds one module's graph, e2e the whole net's.
    assert 0 < rows["local 2x1"][11] < rows["e2e"][11] and 0 < rows["local 4x1"][11] < rows["e2e"][11]
    assert rows["ddp R=2"][11] < rows["e2e"][11] and all(r[12] == "actual" for r in rows.values())


def test_comm_volume_wire_bytes_are_linear_and_saved_bytes_affine_in_the_batch(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    cv = importlib.import_module("comm_volume")
    torch.set_num_threads(1)
    args = argparse.Namespace(modules=4, method="infopro", dtype="fp32", memory_budget_gib=1.0, probe_batch=2)
    model = cv.build_model("ResNet-20", args)
    local = {b: cv.local_pass(model, b, None) for b in (2, 4, 8)}
    whole = {b: cv.stage_pass(model, 0, 4, b) for b in (2, 4, 8)}
    # What goes on the wire: exactly linear; parameter gradients: independent of the batch.
    for key in ("labels", "raw"):
        assert local[8][key] == 2 * local[4][key] == 4 * local[2][key]
    assert local[8]["out"] == [2 * o for o in local[4]["out"]] == [4 * o for o in local[2]["out"]]
    assert local[2]["grad"] == local[8]["grad"] and whole[2]["grad"] == whole[8]["grad"]
    # Saved bytes: affine (the same step from 4 to 8 samples as twice the step from 2 to 4).
    for j in range(4):
        assert local[8]["peak"][j] - local[4]["peak"][j] == 2 * (local[4]["peak"][j] - local[2]["peak"][j])
    assert whole[8]["saved"] - whole[4]["saved"] == 2 * (whole[4]["saved"] - whole[2]["saved"])

    # A batch over the budget is measured at a halved one and extended: the same figures as measuring it.
    kind = cv.Measured(lambda b: cv.local_pass(model, b, None), budget=local[2]["saved"] / 2 * 4, probe=2)
    extended, measured_at = kind.figures(8)
    assert measured_at == 4 and sorted(kind.cache) == [2, 4]
    assert extended["peak"] == local[8]["peak"] and extended["out"] == local[8]["out"]
    assert extended["grad"] == local[8]["grad"] and extended["shape"] == local[8]["shape"]
