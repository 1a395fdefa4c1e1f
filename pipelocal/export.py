"""A checkpoint as a plain backbone file for inference, and its test accuracy per head.

``python -m pipelocal.export RUN_DIR [--out FILE] [--evaluate] [--device cpu]`` writes the trained backbone
(units and classifier, no auxiliary heads) as a ``torch.save`` state dict under the backbone class's own names,
so ``build_backbone(...)`` of the run's model config and ``load_state_dict(sd, strict=True)`` give the net.
The classifier is the backbone's own: the final module's head wraps it (runtime/local_net.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pipelocal.checkpoint import CheckpointError, load_model_state, read_meta, resolve
from pipelocal.config import ConfigError, JobConfig
from pipelocal.config_parse import _merge
from pipelocal.data import DatasetNotFoundError, build_loaders
from pipelocal.models import build_backbone, build_model, is_external
from pipelocal.runtime import build_local_net
from pipelocal.runtime.evaluation import count_correct, score_heads
from pipelocal.runtime.numerics import Numerics


def config_of(ckpt: Path) -> JobConfig:
    """The resolved config the checkpoint was written with (meta.json), validated."""
    meta = read_meta(ckpt)
    if "config" not in meta:
        raise CheckpointError(f"{ckpt}/meta.json has no 'config': not written by a pipelocal run")
    cfg = JobConfig()
    _merge(cfg, meta["config"], "")
    return cfg.validate()


def backbone_names(state: dict[str, torch.Tensor], ranges) -> dict[str, torch.Tensor]:
    """LocalNet names -> the backbone's: ``local_modules.i.body.j.*`` is ``units.<start_i + j>.*`` and the final
    head's ``net.*`` is ``classifier.*``; aux heads are dropped. ``ranges`` None: one module (e2e, ddp)."""
    num_modules = 1 + max(int(key.split(".")[1]) for key in state)
    starts = [start for start, _ in ranges] if ranges else [0]
    if len(starts) != num_modules:
        raise CheckpointError(f"checkpoint holds {num_modules} modules but its meta.json lists {len(starts)} ranges")
    out = {}
    for key, value in state.items():
        _, i, part, *rest = key.split(".")
        if part == "body":
            out[".".join(["units", str(starts[int(i)] + int(rest[0])), *rest[1:]])] = value
        elif part == "head" and int(i) == num_modules - 1 and rest[0] == "net":
            out[".".join(["classifier", *rest[1:]])] = value
    return out


def export_backbone(path: str | Path, out: str | Path | None = None, say=print) -> Path:
    """Write the backbone of the newest intact checkpoint at ``path``; default ``backbone.pt`` in the run dir."""
    ckpt = resolve(path, say)
    meta, cfg = read_meta(ckpt), config_of(ckpt)
    state = backbone_names(load_model_state(ckpt), meta.get("module_units") or meta.get("ranges"))
    # The input channels and classes are in the weights; the stem's first conv and the classifier's Linear.
    in_channels = next((v.shape[1] for k, v in state.items() if k.startswith("units.0.") and v.ndim == 4), None)
    num_classes = next(v.shape[0] for k, v in state.items() if k.startswith("classifier.") and v.ndim == 2)
    if is_external(cfg.model.name):  # a factory or timm model is built for the data's shape, on the CPU
        info = build_loaders(cfg.data, torch.device("cpu"), cfg.train.seed)[2]
        backbone = build_model(cfg.model.name, cfg.model.depth, info.input_shape, num_classes, cfg.model.norm)
    else:
        with torch.device("meta"):  # only the names and shapes are needed: allocate and initialise nothing
            backbone = build_backbone(cfg.model.name, cfg.model.depth, in_channels, num_classes, cfg.model.norm)
    try:
        backbone.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"{ckpt} does not fit a {cfg.model.name}-{cfg.model.depth} backbone: {err}") from None
    state = backbone.state_dict()  # the backbone's own key order
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    out = Path(out) if out is not None else run_dir / "backbone.pt"
    torch.save(state, out)
    say(
        f"wrote {out} ({cfg.model.name}-{cfg.model.depth} backbone, {in_channels} channels in, {num_classes} "
        f"classes) from {ckpt.name} (step {meta.get('step')}, epoch {meta.get('epoch')}): "
        f"{len(state)} tensors, {out.stat().st_size:,} bytes"
    )
    return out


def evaluate_checkpoint(path: str | Path, device: str = "cpu", say=print) -> list[float | None]:
    """Test top-1 of every module's head (None: no logits) of the checkpoint at ``path``; the last is the net's.
    Under the run's ``train.precision`` and ``train.channels_last``, as its own evaluation was."""
    ckpt = resolve(path, say)
    meta, cfg = read_meta(ckpt), config_of(ckpt)
    device = torch.device(device)
    _, test_loader, info = build_loaders(cfg.data, device, cfg.train.seed)
    net = build_local_net(cfg, info, meta.get("module_units") or meta.get("ranges"))
    try:
        net.load_state_dict(load_model_state(ckpt), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{ckpt} does not fit the network its config builds: {err}") from None
    net.to(device)
    numerics = Numerics(cfg.train.precision, device, cfg.train.channels_last)  # as the run trained and evaluated
    modules = [numerics.prepare(m) for m in net.local_modules]

    def score(batch, correct) -> int:
        score_heads(modules, batch.x, batch.y, correct, numerics)
        return len(batch)

    correct, samples = count_correct(modules, test_loader, score, net.num_modules, device)
    top1 = [None if c < 0 else c / samples for c in correct.tolist()]  # one host sync, at the end
    per_module = " ".join("-" if a is None else f"{a:.4f}" for a in top1)
    say(
        f"test top-1 {top1[-1]:.4f} (final head), per module: {per_module} "
        f"({samples} {cfg.data.name} test samples, {ckpt.name}, epoch {meta.get('epoch')})"
    )
    return top1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelocal.export", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="run directory, its checkpoints folder, or one checkpoint folder")
    parser.add_argument("--out", help="output file (default: backbone.pt in the run directory)")
    parser.add_argument("--evaluate", action="store_true", help="also print the test top-1 of every head")
    parser.add_argument("--device", default="cpu", help="device for --evaluate: cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    try:
        ckpt = resolve(args.path)  # once: a damaged newer checkpoint is reported once
        export_backbone(ckpt, args.out)
        if args.evaluate:
            evaluate_checkpoint(ckpt, args.device)
    except (CheckpointError, ConfigError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
