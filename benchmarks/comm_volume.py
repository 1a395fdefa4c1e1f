"""Where pipelining beats data parallelism, measured: bytes on the wire and activation memory per device.

    python benchmarks/comm_volume.py            # ResNet-20/32/110 at 32x32, ResNet-18/50 at 224; B = 128, 256, 1024
    python benchmarks/comm_volume.py --quick    # ResNet-20, batch 32 (the smoke test)
    python benchmarks/comm_volume.py --dtype bf16 --method greedy --batches 256

In one process, every figure comes from tensors of real passes of the project's own nets (``build_local_net``,
K modules, uniform split, aux heads of ``--method``), never from a formula of layer shapes:

- local pipeline: the K modules run as a chain of ``LocalStep``s (one per module, so every module boundary
  is a stage boundary that can be measured); the bytes each module sends are those of its output tensor,
  plus the labels and, where the method needs it (InfoPro's raw input, as ``build_links`` decides), the
  raw batch; a guided step (``Guide``) sends gradients back across the boundaries, and their bytes are those
  of the tensors that leave each module's input. Saved-tensor hooks (``SavedTensorMeter``) give each module's
  saved bytes (body and aux head; its graph is freed by its own backward before the next module runs);
- DDP and e2e: the whole net (all bodies, the classifier, cross-entropy) forward and backward; the bytes
  DDP all-reduces are those of every parameter's ``.grad`` after the backward;
- 1F1B: each stage's units (no aux heads) on a microbatch, its input a received activation that needs grad.

Saved bytes are affine in the batch (per sample times the batch, plus a batch-independent part: BatchNorm's
saved statistics) and wire bytes exactly linear. A pass is measured at the actual batch when its saved bytes fit
``--memory-budget-gib``; otherwise at the largest halved batch that fits, and extended to the actual batch
through the line through that measurement and one at ``--probe-batch`` (never below twice the probe batch);
the output names the batch measured.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from common import hardware, results_dir, write_outputs

from pipelocal.config_parse import load_config
from pipelocal.data import Batch, DataInfo
from pipelocal.metrics.memory import SavedTensorMeter
from pipelocal.runtime import build_local_net
from pipelocal.runtime.numerics import Numerics
from pipelocal.runtime.spans import Guide, net_spans
from pipelocal.runtime.step import LocalStep
from pipelocal.split import stage_ranges

KiB, MiB = 2**10, 2**20
MODELS = {  # name: (model.name, model.depth, input shape, classes)
    "ResNet-20": ("cifar_resnet", 20, (3, 32, 32), 10),
    "ResNet-32": ("cifar_resnet", 32, (3, 32, 32), 10),
    "ResNet-110": ("cifar_resnet", 110, (3, 32, 32), 10),
    "ResNet-18": ("resnet18", 18, (3, 224, 224), 1000),
    "ResNet-50": ("resnet50", 50, (3, 224, 224), 1000),
}
COLUMNS = (
    "model|params (M)|batch|layout|devices|batch per pass|fwd KiB/sample|grads back KiB/sample|all-reduce MiB/step|"
    "all-reduce KiB/sample|sent MiB/step|act. memory MiB|memory measured at batch"
).split("|")
STAGE_COLUMNS = (
    "model|P|stage|units|sends shape/sample|activation KiB/sample|raw input KiB/sample|labels B/sample|"
    "guidance grad KiB/sample|stage grads MiB|largest module saved KiB/sample"
).split("|")


# ------------------------------------------------------------------------------------------ measuring


class Measured:
    """One kind of pass (``run(b) -> figures``), measured at the batch asked for when its saved bytes fit the
    budget, else at the largest halved batch that does and extended along the line through a second
    measurement at the probe batch (saved bytes are affine in the batch, wire bytes linear)."""

    def __init__(self, run, budget: float, probe: int):
        self.run, self.budget, self.probe = run, budget, probe
        self.cache: dict[int, dict] = {}

    def at(self, b: int) -> dict:
        if b not in self.cache:
            self.cache[b] = self.run(b)
        return self.cache[b]

    def figures(self, b: int) -> tuple[dict, int]:
        """The figures at batch ``b`` and the batch they were measured at."""
        if b <= self.probe:
            return self.at(b), b
        per_sample = self.at(self.probe)["saved"] / self.probe  # includes the constant: errs on the safe side
        measured = b
        while measured > 2 * self.probe and per_sample * measured > self.budget:
            measured //= 2
        if measured == b:
            return self.at(b), b
        hi, lo = self.at(measured), self.at(self.probe)
        return {k: hi[k] if k in FIXED else _extended(hi[k], lo[k], measured, self.probe, b) for k in hi}, measured

    def intercept(self) -> float | None:
        """The batch-independent part of the saved bytes: the line through the two smallest batches measured."""
        if len(self.cache) < 2:
            return None
        (b1, f1), (b2, f2) = sorted(self.cache.items())[:2]
        return f1["saved"] - b1 * (f2["saved"] - f1["saved"]) / (b2 - b1)


FIXED = ("grad", "shape")  # figures that do not depend on the batch


def _extended(hi, lo, b_hi: int, b_lo: int, b: int):
    if isinstance(hi, list):
        return [_extended(h, lo_, b_hi, b_lo, b) for h, lo_ in zip(hi, lo)]
    return hi + (b - b_hi) * (hi - lo) / (b_hi - b_lo)


@dataclass
class Model:
    """One network's passes, built once; figures are looked up by batch."""

    name: str
    net: torch.nn.Module
    shape: tuple[int, int, int]
    classes: int
    numerics: Numerics
    budget: float
    probe: int
    passes: dict = field(default_factory=dict)

    @property
    def modules(self):
        return self.net.local_modules

    @property
    def params(self) -> int:
        """The backbone's parameters (units and classifier, no aux heads): what DDP replicates."""
        classifier = self.modules[-1].head.parameters()
        return sum(p.numel() for m in self.modules for p in m.body.parameters()) + sum(p.numel() for p in classifier)

    def batch(self, b: int) -> Batch:
        torch.manual_seed(b)
        raw = torch.rand(b, *self.shape)
        return Batch((raw - 0.5) / 0.25, torch.randint(0, self.classes, (b,)), raw)

    def kind(self, key, run) -> Measured:
        if key not in self.passes:
            self.passes[key] = Measured(run, self.budget, self.probe)
        return self.passes[key]

    def local(self, b: int):
        return self.kind("local", lambda n: local_pass(self, n, None)).figures(b)

    def guided(self, b: int):
        return self.kind("guided", lambda n: local_pass(self, n, Guide())).figures(b)

    def stage(self, lo: int, hi: int, b: int):
        """Modules ``[lo, hi)`` end to end (no aux heads); ``(0, K)`` is the whole net of e2e and DDP."""
        return self.kind(("stage", lo, hi), lambda n: stage_pass(self, lo, hi, n)).figures(b)


def build_model(name: str, args) -> Model:
    model, depth, shape, classes = MODELS[name]
    overrides = [f"--model.name={model}", f"--model.depth={depth}", f"--split.num_modules={args.modules}"]
    overrides += [f"--method.name={args.method}", "--split.balance=uniform", "--data.name=synthetic"]
    overrides += [f"--data.synthetic_shape={list(shape)}", f"--train.precision={args.dtype}"]
    cfg = load_config(None, overrides)
    net = build_local_net(cfg, DataInfo(classes, shape), None)
    numerics = Numerics.of(cfg, torch.device("cpu"))
    return Model(name, net, shape, classes, numerics, args.memory_budget_gib * 2**30, args.probe_batch)


def local_pass(model: Model, b: int, guide: Guide | None) -> dict:
    """One step of the local modules on ``b`` samples, each module its own ``LocalStep`` (a stage of one
    module, so every module boundary is a wire): saved bytes per module, bytes of every output, of the
    gradients leaving each module's input (a guided step), of each module's parameter gradients."""
    batch, modules = model.batch(b), list(model.modules)
    meter = SavedTensorMeter(model.net.parameters())
    model.net.zero_grad(set_to_none=True)
    spans = net_spans(model.net.method, guide)
    steps, x = [], batch.x
    for m in modules:
        step = LocalStep([m], [], False, spans, meter, numerics=model.numerics)
        step.forward(x, batch, guide)
        steps.append(step)
        x = step.output
    kept = meter.live  # a guided step keeps every graph until the gradient has come back through it
    for j in reversed(range(len(modules))):
        if j + 1 < len(modules):
            steps[j].receive(steps[j + 1].upstream)
        steps[j].finish()
    return {
        "saved": kept if guide else max(s.peaks[0] for s in steps),
        "peak": [s.peaks[0] for s in steps],
        "out": [_nbytes(s.output) for s in steps],
        "back": [sum(_nbytes(g) for g in s.upstream.values()) for s in steps],  # into module j - 1
        "grad": [sum(_nbytes(p.grad) for p in m.parameters() if p.grad is not None) for m in modules],
        "labels": _nbytes(batch.y),
        "raw": _nbytes(batch.raw),
        "shape": [list(s.output.shape[1:]) for s in steps],
    }


def stage_pass(model: Model, lo: int, hi: int, b: int) -> dict:
    """Modules ``lo..hi-1`` end to end on ``b`` samples as a stage of an E2E pipeline (or the whole net):
    its input is the activation the previous stage sends; the last stage ends in the classifier's loss."""
    batch, modules, numerics = model.batch(b), list(model.modules), model.numerics
    model.net.zero_grad(set_to_none=True)
    with torch.no_grad(), numerics.autocast():
        x = batch.x
        for m in modules[:lo]:
            x = numerics.boundary(m(x))
    received = x.detach().requires_grad_(lo > 0)
    meter = SavedTensorMeter(model.net.parameters())
    x, last = received, hi == len(modules)
    with meter.hooks(), numerics.autocast():
        for m in modules[lo:hi]:
            x = numerics.boundary(m(x))
        out = F.cross_entropy(modules[-1].head.logits(x).float(), batch.y) if last else x
    saved = meter.peak
    out.backward(None if last else torch.randn_like(out))  # a stage before the last: the gradient from downstream
    return {
        "saved": saved,
        "out": 0 if last else _nbytes(out),  # sent forward
        "back": _nbytes(received.grad) if lo else 0,  # sent back, the gradient of what it received
        "grad": sum(_nbytes(p.grad) for p in model.net.parameters() if p.grad is not None),
    }


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# ------------------------------------------------------------------------------------------ layouts


@dataclass
class Layout:
    """One layout at one global batch: per step, each figure the largest over its devices."""

    name: str
    devices: int
    per_device: int  # samples in one pass on a device (1F1B: a microbatch)
    fwd: float  # activations (and labels, raw input) sent forward
    back: float  # gradients sent back: local, on a guided step only; 1F1B, every step
    allreduce: float  # what a device sends in a ring all-reduce of gradients: 2 (R - 1) / R x their bytes
    sent: float  # everything a device sends on an ordinary step (no guidance)
    memory: float  # saved activation bytes at a device's peak
    measured_at: int  # the batch the memory figure was measured at


def carries_raw(model: Model, ranges, into: int) -> bool:
    """Does the raw input flow into stage ``into``? As ``build_links`` decides: when the method needs it
    and that stage or a later one holds a module that is not the last (whose aux head reads it)."""
    k = len(model.modules)
    return "raw" in model.net.method.needs and any(ranges[s][0] < k - 1 for s in range(into, len(ranges)))


def ring(r: int, grad_bytes: float) -> float:
    return 2 * (r - 1) / r * grad_bytes


def whole_net(model: Model, b: int, r: int) -> Layout:
    """e2e (r = 1) or DDP with r replicas: the whole net on b / r samples per device."""
    fig, at = model.stage(0, len(model.modules), b // r)
    allreduce = ring(r, fig["grad"])
    return Layout("e2e" if r == 1 else f"ddp R={r}", r, b // r, 0, 0, allreduce, allreduce, fig["saved"], at)


def one_f_one_b(model: Model, b: int, p: int, m: int) -> Layout:
    """1F1B, p stages, m microbatches: stage s sends every microbatch's activation forward and its gradient
    back, and holds at most min(p - s, m) microbatches' graphs of its own units."""
    figs = [model.stage(lo, hi, b // m) for lo, hi in stage_ranges(len(model.modules), p, None)]
    fwd, back = [m * f["out"] for f, _ in figs], [m * f["back"] for f, _ in figs]
    memory = max(min(p - s, m) * f["saved"] for s, (f, _) in enumerate(figs))
    sent = max(f + g for f, g in zip(fwd, back))
    return Layout(f"1f1b P={p} M={m}", p, b // m, max(fwd), max(back), 0, sent, memory, min(at for _, at in figs))


def local_stages(model: Model, p: int, d: int) -> tuple[list[dict], int]:
    """Per stage of the local pipeline with p stages on d samples per device: the bytes it sends forward
    (activation, raw input, labels), of gradients it sends back on a guided step, of its parameters'
    gradients, and its activation peak (its largest module's graph plus the output waiting to be sent)."""
    fig, at = model.local(d)
    back = model.guided(d)[0]["back"]
    ranges = stage_ranges(len(model.modules), p, None)
    stages = []
    for s, (lo, hi) in enumerate(ranges):
        last = s == p - 1
        act = 0 if last else fig["out"][hi - 1]
        raw = fig["raw"] if not last and carries_raw(model, ranges, s + 1) else 0
        units = (model.modules[lo].unit_range[0], model.modules[hi - 1].unit_range[1])
        stage = dict(units=units, shape=None if last else fig["shape"][hi - 1], act=act, raw=raw)
        stage.update(labels=0 if last else fig["labels"], back=back[lo] if s else 0)  # back: to stage s - 1
        stages.append(dict(stage, grad=sum(fig["grad"][lo:hi]), peak=max(fig["peak"][lo:hi]) + act))
    return stages, at


def local_pipeline(model: Model, b: int, p: int, r: int) -> Layout:
    """The local pipeline, p stages x r replicas (each stage's replicas all-reduce that stage's gradients)."""
    stages, at = local_stages(model, p, b // r)
    fwd = [st["act"] + st["raw"] + st["labels"] for st in stages]
    allreduce = [ring(r, st["grad"]) for st in stages]
    sent = max(f + a for f, a in zip(fwd, allreduce))
    back, memory = max(st["back"] for st in stages), max(st["peak"] for st in stages)
    return Layout(f"local {p}x{r}", p * r, b // r, max(fwd), back, max(allreduce), sent, memory, at)


def layouts(model: Model, b: int, args) -> list[Layout]:
    out = [whole_net(model, b, 1)] + [whole_net(model, b, r) for r in args.replicas if b % r == 0]
    for p in args.stages:
        if b % args.microbatches == 0:
            out.append(one_f_one_b(model, b, p, args.microbatches))
        out += [local_pipeline(model, b, p, r) for r in (1, *args.replicas) if b % r == 0 and p * r <= args.max_devices]
    return out


def row(name: str, params: int, b: int, lay: Layout) -> list:
    return [
        name,
        round(params / 1e6, 3),
        b,
        lay.name,
        lay.devices,
        lay.per_device,
        round(lay.fwd / b / KiB, 2),
        round(lay.back / b / KiB, 2),
        round(lay.allreduce / MiB, 3),
        round(lay.allreduce / b / KiB, 2),
        round(lay.sent / MiB, 2),
        round(lay.memory / MiB, 1),
        "actual" if lay.measured_at == lay.per_device else lay.measured_at,
    ]


def model_meta(model: Model, d: int) -> dict:
    """Exact figures for the JSON (and the tests): parameters, DDP's gradient bytes, each module's output."""
    fig, _ = model.local(d)
    return {
        "params": model.params,
        "ddp_grad_bytes": model.stage(0, len(model.modules), d)[0]["grad"],
        "modules": [
            {"units": list(m.unit_range), "out_shape": fig["shape"][j], "out_bytes_per_sample": fig["out"][j] / d}
            for j, m in enumerate(model.modules)
        ],
        "labels_bytes_per_sample": fig["labels"] / d,
        "raw_bytes_per_sample": fig["raw"] / d,
        "passes measured at": {str(key): sorted(kind.cache) for key, kind in model.passes.items()},
        "saved bytes independent of the batch": {str(key): kind.intercept() for key, kind in model.passes.items()},
    }


def stage_rows(model: Model, p: int, d: int) -> list[list]:
    """Per stage, per sample, at d samples per device (wire bytes are exactly linear in the batch)."""
    stages, at = local_stages(model, p, d)
    out = []
    for s, st in enumerate(stages):
        shape = "x".join(map(str, st["shape"])) if st["shape"] else "-"
        figures = [st["act"] / d / KiB, st["raw"] / d / KiB, st["labels"] / d, st["back"] / d / KiB]
        out.append([model.name, p, s, f"[{st['units'][0]}, {st['units'][1]})", shape] + [round(v, 2) for v in figures])
        out[-1] += [round(st["grad"] / MiB, 3), round((st["peak"] - st["act"]) / d / KiB, 1)]
    return out


# ------------------------------------------------------------------------------------------ reading


def _find(lays: list[Layout], name: str) -> Layout | None:
    return next((lay for lay in lays if lay.name == name), None)


def comm_reading(name: str, results: dict, batches: list[int], d: int, every: int) -> str | None:
    """Local pipeline with d stages against DDP with d replicas: the same devices, the same global batch."""
    pairs = [(b, _find(results[name, b], f"local {d}x1"), _find(results[name, b], f"ddp R={d}")) for b in batches]
    pairs = [(b, lo, dp) for b, lo, dp in pairs if lo and dp]
    if not pairs:
        return None
    b0, lo0, dp0 = pairs[0]
    wire, back = lo0.fwd / b0, lo0.back / b0  # per sample; exactly linear in the batch
    crossover, guided = dp0.allreduce / wire, dp0.allreduce / (wire + back / every)
    ddp = " / ".join(f"{dp.allreduce / b / KiB:.2f}" for b, _, dp in pairs)
    wins = [b for b, lo, dp in pairs if lo.sent < dp.sent]
    verdict = f"the pipeline sends less at B = {', '.join(map(str, wins))}" if wins else "DDP sends less at every B"
    return (
        f"- {name}, {d} devices: the local pipeline's busiest device sends {wire / KiB:.1f} KiB per sample forward "
        f"(+{back / KiB:.1f} KiB of gradients back on a guided step); DDP R={d} all-reduces "
        f"{dp0.allreduce / MiB:.2f} MiB per device per step = {ddp} KiB per sample at B = "
        f"{' / '.join(str(b) for b, _, _ in pairs)}. DDP sends fewer bytes per device per step once B > "
        f"{crossover:.0f} ({guided:.0f} with guidance every {every} steps): {verdict}."
    )


def mixed_reading(name: str, results: dict, batches: list[int], replicas: list[int]) -> list[str]:
    """Local P x R (R > 1) against DDP on as many devices: bytes each sends per device per step."""
    lines = []
    for lay in results[name, batches[0]]:
        r = lay.name.partition("x")[2]
        if not lay.name.startswith("local ") or r == "1" or lay.devices not in replicas:
            continue
        pairs = [(_find(results[name, b], lay.name), _find(results[name, b], f"ddp R={lay.devices}")) for b in batches]
        figures = " / ".join(f"{lo.sent / MiB:.2f} vs {dp.sent / MiB:.2f}" for lo, dp in pairs if lo and dp)
        lines.append(
            f"- {name}, {lay.name} vs ddp R={lay.devices}: {figures} MiB per device per step at B = "
            f"{' / '.join(map(str, batches))}."
        )
    return lines


def memory_reading(name: str, results: dict, b: int, d: int, m: int) -> str | None:
    lays = results[name, b]
    local, e2e = _find(lays, f"local {d}x1"), _find(lays, "e2e")
    others = [x for x in (e2e, _find(lays, f"ddp R={d}"), _find(lays, f"1f1b P={d} M={m}")) if x]
    if local is None or not others:
        return None
    vs = ", ".join(f"{x.name} {x.memory / MiB:.0f} MiB ({local.memory / x.memory:.2f}x)" for x in others)
    return f"- {name}, B = {b}: local {d}x1 peaks at {local.memory / MiB:.0f} MiB per device; against {vs}."


def reading(models: list[str], results: dict, args) -> list[str]:
    devices = [d for d in args.stages if d in args.replicas]
    lines = ["Communication (same devices D, same global batch B; bytes per device per step):"]
    lines += [x for n in models for d in devices if (x := comm_reading(n, results, args.batches, d, args.every))]
    lines += [x for n in models for x in mixed_reading(n, results, args.batches, args.replicas)]
    lines += [
        "",
        "Activation memory per device at the largest batch (local Dx1 against the others, ratio = local/other):",
    ]
    b = max(args.batches)
    lines += [x for n in models for d in args.stages if (x := memory_reading(n, results, b, d, args.microbatches))]
    return lines


# ------------------------------------------------------------------------------------------ output


def _bars(ax, groups: list[str], series: dict[str, list[float]]) -> None:
    width = 0.85 / len(series)
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=label)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2)


def plot(folder: Path, models: list[str], results: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    b0, comm = args.batches[0], {}
    for p in args.stages:
        comm[f"local {p}x1 (any B)"] = [_find(results[n, b0], f"local {p}x1").fwd / b0 / KiB for n in models]
    for r in args.replicas:
        for b in args.batches:
            comm[f"ddp R={r}, B={b}"] = [_find(results[n, b], f"ddp R={r}").allreduce / b / KiB for n in models]
    _bars(axes[0], models, comm)
    axes[0].set_ylabel("KiB per sample, busiest device")
    axes[0].set_title("sent per step / global batch: local pipeline (forward) vs DDP (ring all-reduce)")
    b = max(args.batches)
    names = [lay.name for lay in results[models[0], b]]
    memory = {name: [_find(results[n, b], name).memory / MiB for n in models] for name in names}
    _bars(axes[1], models, memory)
    axes[1].set_ylabel("MiB saved for backward, largest device")
    axes[1].set_title(f"activation memory per device, B = {b}")
    fig.suptitle(f"communication and activation memory, {args.method} K={args.modules}, {args.dtype}, {hardware()}")
    fig.tight_layout()
    fig.savefig(folder / "comm_volume.png", dpi=110)


def header(args, seconds: float, lines: list[str], meta: dict) -> str:
    constant = max(abs(v or 0) for m in meta.values() for v in m["saved bytes independent of the batch"].values())
    return (
        f"# Bytes on the wire and activation memory per device: local pipeline vs DDP vs 1F1B\n\n"
        f"hardware: {hardware()}, {args.threads} threads, torch {torch.__version__}; measured in {seconds:.0f} s.\n"
        f"Nets: the project's LocalNet, method {args.method}, K = {args.modules} modules (uniform split), "
        f"{args.dtype} activations (parameter gradients fp32); synthetic inputs of each net's shape.\n\n"
        "What and how: every byte count is that of a tensor of a real forward/backward pass: module outputs, "
        "labels and the raw input (sent forward where the method needs it, as build_links decides), gradients "
        "leaving a module's input on a guided step (local) or every step (1F1B), every parameter's .grad after "
        "a backward (DDP, and each stage's replicas in local PxR). Activation memory: bytes saved for backward "
        "(saved-tensor hooks): e2e the whole net at B; DDP at B/R; 1F1B stage s holds min(P - s, M) microbatches "
        "(B/M) of its units' graphs, max over stages; local PxR the largest module's graph (aux head included) "
        "at B/R plus the output being sent, max over stages. Wire bytes are exactly linear in the batch; saved "
        f"bytes affine (the batch-independent part, BatchNorm's saved statistics, measured at most "
        f"{constant / KiB:.1f} KiB per pass); a pass whose saved bytes exceed "
        f"{args.memory_budget_gib} GiB is measured at a halved batch (column 'memory measured at batch') and "
        f"extended along the line through it and a pass at batch {args.probe_batch}.\n\n"
        "Columns are per device and step, each the largest over the layout's devices; 'KiB/sample' divides by "
        "the global batch B; 'batch per pass': B, B/R, or 1F1B's microbatch B/M. "
        "fwd: activations + labels + raw input sent forward; grads back: local, on a guided step only, 1F1B, "
        "every step; all-reduce: ring, 2(R-1)/R x gradient bytes; sent: an ordinary step's total. The message "
        "headers (fixed size per message, not per sample) are not counted.\n\n## Reading\n\n" + "\n".join(lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="*", type=int, default=[128, 256, 1024], help="global batch sizes")
    parser.add_argument("--modules", type=int, default=4, help="K local modules")
    parser.add_argument("--stages", nargs="*", type=int, default=[2, 4], help="pipeline stages P")
    parser.add_argument("--replicas", nargs="*", type=int, default=[2, 4], help="DDP replicas R")
    parser.add_argument("--microbatches", type=int, default=8, help="1F1B microbatches M")
    parser.add_argument("--max-devices", type=int, default=4, help="local P x R layouts up to this many devices")
    parser.add_argument("--method", default="infopro")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="compute and wire dtype")
    parser.add_argument("--every", type=int, default=10, help="guidance every N steps, for the reading")
    parser.add_argument("--memory-budget-gib", type=float, default=4.0, help="largest saved bytes of one pass")
    parser.add_argument("--probe-batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="ResNet-20 at batch 32 only (smoke test)")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/<hardware>-<date>/comm_volume)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batches = ["ResNet-20"], [32]
    torch.set_num_threads(args.threads)
    start, results, stage_table, meta = time.perf_counter(), {}, [], {}
    for name in args.models:
        model = build_model(name, args)
        for b in args.batches:
            results[name, b] = layouts(model, b, args)
        stage_table += [r for p in args.stages for r in stage_rows(model, p, min(args.batches))]
        meta[name] = model_meta(model, min(args.batches))
        print(f"{name}: measured ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    lines = reading(args.models, results, args)
    table = [row(name, meta[name]["params"], b, lay) for (name, b), lays in results.items() for lay in lays]
    folder, text = results_dir("comm_volume", args.out), header(args, seconds, lines, meta)
    info = {"hardware": hardware(), "torch": torch.__version__, "args": vars(args), "seconds": seconds}
    info.update(reading=lines, models=meta)
    print(write_outputs(folder, "comm_volume", COLUMNS, table, info, text))
    stages_header = text.split("\n\n## Reading")[0].replace(
        "# Bytes", "# Per stage of the local pipeline, per sample: bytes"
    )
    write_outputs(folder, "comm_volume_stages", STAGE_COLUMNS, stage_table, info, stages_header)
    plot(folder, args.models, results, args)
    print(f"written to {folder} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
