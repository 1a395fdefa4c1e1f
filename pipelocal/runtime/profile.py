"""Profile every unit with the aux head it would carry, on the real device, for ``split.balance: time|memory``.

For unit u, "its head" is the method's head as if a module ended after u (the classifier for the last
unit). Time is forward + local loss + backward at the rows a stage runs at once (``stage_rows``: the batch, a
replica's share of it, one microbatch for GPipe and 1F1B, whose per-unit costs scale differently with the
rows than the whole batch's do): the median over ``ROUNDS``
rounds of each round's median of ``REPEATS`` (a round profiles every unit once, so a burst of load on the
machine touches one round, not one unit's figure); memory is the peak bytes saved for backward. AugLocal-
style heads are costly: that is why they count.

A time split is a function of the hardware (and of its load while profiling). To make it reproducible,
splits whose slowest module is within ``TIE`` of the best are ties and the one nearest the uniform split is
taken (split.py, ``snapped_ranges``), and the chosen split is kept in the run folder (``split.json``) under
its key (model, method, K, P, batch, precision, device kind): a later run of the same key under the same
``metrics.out_dir`` reuses it instead of profiling again. ``--split.boundaries`` with the boundaries the
split line prints reproduces it anywhere.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from pipelocal.config import JobConfig
from pipelocal.data import Batch, DataInfo
from pipelocal.methods import METHODS, CrossEntropyHead, NetInfo
from pipelocal.metrics.memory import SavedTensorMeter
from pipelocal.options import mode_traits
from pipelocal.runtime.local_net import backbone_for
from pipelocal.runtime.numerics import Numerics
from pipelocal.split import balanced_ranges, boundaries_of, module_costs, module_ranges, snapped_ranges

ROUNDS, REPEATS = 3, 3
TIE = 0.05  # splits whose slowest module is within 5 % of the best one's are ties (measurement noise)


@dataclass
class UnitProfile:
    unit_s: list[float]  # forward + backward
    head_s: list[float]  # the head's forward + backward, with its input gradient
    unit_bytes: list[float]  # saved for backward
    head_bytes: list[float]
    forward_s: list[float]  # the unit's forward alone (part of unit_s), for the schedule simulator
    head_param_bytes: list[float]


def profile_units(
    cfg: JobConfig, data: DataInfo, device: torch.device, repeats: int = 5, warmup: int = 2
) -> UnitProfile:
    numerics = Numerics.of(cfg, device)  # profiled as trained: the same dtype and memory format
    backbone = numerics.prepare(backbone_for(cfg, data).to(device))
    n, k = backbone.num_units, cfg.split.num_modules
    rows = stage_rows(cfg)
    raw = torch.rand(rows, *data.input_shape, device=device)
    batch = Batch(raw, torch.randint(0, data.num_classes, (rows,), device=device), raw)
    prof = UnitProfile([], [], [], [], [], [])
    x = numerics.layout(batch.x)
    for u, unit in enumerate(backbone.units):
        head = CrossEntropyHead(backbone.classifier) if u == n - 1 else _head_at(cfg, data, backbone, u, k)
        head = numerics.prepare(head.to(device)) if head is not None else None
        t_unit, b_unit, t_head, b_head, t_fwd, x = _measure(unit, head, x, batch, device, repeats, numerics, warmup)
        prof.forward_s.append(t_fwd)
        prof.head_param_bytes.append(float(sum(p.numel() * p.element_size() for p in head.parameters())) if head else 0)
        prof.unit_s.append(t_unit)
        prof.unit_bytes.append(b_unit)
        prof.head_s.append(t_head)
        prof.head_bytes.append(b_head)
    return prof


def stage_rows(cfg: JobConfig) -> int:
    """The rows a stage's forward and backward take at once: a replica's share of the batch (the first
    replicas take one more where it does not divide), and one microbatch of it for GPipe and 1F1B."""
    rows = -(-cfg.data.batch_size // cfg.pipeline.replicas)
    return rows // cfg.pipeline.microbatches if mode_traits(cfg.mode).microbatched else rows


def _head_at(cfg: JobConfig, data: DataInfo, backbone, unit: int, num_modules: int):
    """The head a module ending at ``unit`` would get, with the index that module would likely have (for
    per-module schedules such as InfoPro's λ or AugLocal's depth)."""
    shapes = backbone.unit_shapes(data.input_shape)
    n = len(shapes)
    index = max(min(round(unit / max(n - 1, 1) * (num_modules - 1)), num_modules - 2), 0)
    info = NetInfo(
        num_modules,
        data.num_classes,
        tuple(data.input_shape),
        (shapes[unit],) * num_modules,
        shapes[-1][0],
        module_ends=(unit,) * num_modules,
        backbone=backbone,
    )
    method = METHODS.get(cfg.method.name)(cfg.method, info)
    if not method.loss_spans(index):
        # a module with no loss of its own (MLAAN's first ones): cost it as the first module that has one
        index = next((i for i in range(index, num_modules - 1) if method.loss_spans(i)), index)
    return method.build_head(index) if method.loss_spans(index) else None


def _measure(unit, head, x, batch, device, repeats, numerics, warmup):
    """(unit seconds, unit bytes, head seconds, head bytes, forward seconds, unit output) for one unit and its
    head; the forward is timed inside the unit's forward + backward (on CUDA, one more sync between them)."""
    meter = SavedTensorMeter(list(unit.parameters()) + (list(head.parameters()) if head else []))
    unit_times, head_times, forward_times = [], [], []
    for i in range(repeats + warmup):  # warm-up passes first
        xi = x.detach().requires_grad_(True)
        start = _now(device)
        meter.reset_peak()
        with meter.hooks(), numerics.autocast():
            h = numerics.boundary(unit(xi))
        forward = _now(device)
        h.float().sum().backward()
        mid = _now(device)
        unit_bytes = meter.peak
        meter.reset_peak()
        head_bytes = 0
        if head is not None:
            # the head's input needs its gradient, as in training (the local loss trains the module through it):
            # on a detached input the backward would skip the head's input gradient, a third of a conv head's cost
            with meter.hooks(), numerics.autocast():
                loss = head(h.detach().requires_grad_(True), batch)["loss"]
            head_bytes = meter.peak
            loss.backward()
        end = _now(device)
        if i >= warmup:
            unit_times.append(mid - start)
            head_times.append(end - mid)
            forward_times.append(forward - start)
    med = statistics.median
    return med(unit_times), unit_bytes, med(head_times), head_bytes, med(forward_times), h.detach()


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # a sync point, on purpose: we are timing kernels
    return time.perf_counter()


def profile_rounds(cfg: JobConfig, data: DataInfo, device: torch.device, rounds: int = ROUNDS) -> UnitProfile:
    """``rounds`` profiles, each unit's figures their median (memory does not vary; time does)."""
    # 3 rounds of 3 timed passes (warm-up in the first round only): 11 passes per unit, against 7 for one round
    runs = [profile_units(cfg, data, device, REPEATS, 2 if r == 0 else 0) for r in range(rounds)]
    return UnitProfile(
        *(list(map(statistics.median, zip(*(getattr(r, f) for r in runs)))) for f in UnitProfile.__dataclass_fields__)
    )


def plan_split(
    cfg: JobConfig,
    data: DataInfo,
    device: torch.device,
    num_units: int,
    positions,
    stages: int = 1,
    run_dir=None,
    prof: UnitProfile | None = None,
) -> tuple[list, str]:
    """The module ranges the config asks for, and a line describing the choice (with predicted costs).
    ``prof``: a time profile already taken at ``stage_rows(cfg)`` (the mesh planner's), used instead of another."""
    if _fixed(cfg):
        ranges = profiled_ranges(cfg, None, num_units, positions, data)
        return ranges, f"split ({cfg.split.balance if cfg.split.boundaries is None else 'boundaries'}): {ranges}"
    key = split_key(cfg, data, device, stages)
    cached = find_cached(Path(cfg.metrics.out_dir), key) if cfg.split.balance == "time" else None
    if cached is not None:
        ranges, where = [tuple(r) for r in cached[0]], cached[1]
        line = f"split (balance=time, as profiled for {where.parent.name}, same model, K, P and {key['device']}): "
    else:
        ranges, line = _profiled(cfg, data, device, num_units, positions, prof)
    if run_dir is not None:
        record = {"key": key, "ranges": ranges, "boundaries": boundaries_of(ranges)}
        (Path(run_dir) / "split.json").write_text(json.dumps(record, indent=1))
    return ranges, f"{line}{ranges if cached else ''} (--split.boundaries={boundaries_of(ranges)} reproduces it)"


def _fixed(cfg: JobConfig) -> bool:
    """A split that needs no profile: explicit boundaries, uniform, or a published table."""
    return cfg.split.boundaries is not None or cfg.split.balance in ("uniform", "table")


def profiled_ranges(cfg: JobConfig, prof: UnitProfile | None, num_units: int, positions, data: DataInfo) -> list:
    """The split ``cfg`` asks for, on ``prof`` where it balances by profile: time (ties snapped to the split
    nearest the uniform one) or memory; the fixed splits (boundaries, uniform, table) ignore ``prof``."""
    if _fixed(cfg):
        return module_ranges(cfg.split, num_units, cfg.model.depth, positions, cfg.data.name)
    if cfg.split.balance == "time":
        return snapped_ranges(prof.unit_s, prof.head_s, cfg.split.num_modules, TIE)
    return balanced_ranges(prof.unit_bytes, prof.head_bytes, cfg.split.num_modules)


def _profiled(
    cfg: JobConfig, data: DataInfo, device: torch.device, num_units: int, positions, prof: UnitProfile | None = None
) -> tuple[list, str]:
    if prof is None:
        prof = profile_rounds(cfg, data, device) if cfg.split.balance == "time" else profile_units(cfg, data, device)
    ranges = profiled_ranges(cfg, prof, num_units, positions, data)
    if cfg.split.balance == "time":
        unit_cost, head_cost, unit, scale = prof.unit_s, prof.head_s, "ms", 1e3
    else:
        unit_cost, head_cost, unit, scale = prof.unit_bytes, prof.head_bytes, "MiB", 1 / 2**20
    costs = [round(c * scale, 1) for c in module_costs(ranges, unit_cost, head_cost)]
    uniform = module_ranges(replace(cfg.split, balance="uniform"), num_units, cfg.model.depth, positions, cfg.data.name)
    uniform_costs = [round(c * scale, 1) for c in module_costs(uniform, unit_cost, head_cost)]
    return ranges, (
        f"split (balance={cfg.split.balance}, profiled on {device} at {stage_rows(cfg)} rows): {ranges}, "
        f"predicted per-module {unit} "
        f"{costs} (uniform {uniform} would be {uniform_costs})"
    )


def split_key(cfg: JobConfig, data: DataInfo, device: torch.device, stages: int) -> dict:
    """What a profiled time split depends on: the network and its heads, the batch, the numerics, the device."""
    t = cfg.train
    return {
        "model": asdict(cfg.model),
        "method": asdict(cfg.method),
        "K": cfg.split.num_modules,
        "P": stages,
        "batch": cfg.data.batch_size,
        "rows": stage_rows(cfg),  # what was profiled: the batch, a replica's share, a microbatch
        "input": list(data.input_shape),
        "numerics": [t.precision, t.channels_last, t.compile],
        "device": device_kind(device),
        "threads": cfg.pipeline.threads if stages > 1 else t.threads,
    }


def device_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    except OSError:
        names = []
    return f"cpu {names[0] if names else platform.processor() or platform.machine()}"


def find_cached(out_dir: Path, key: dict, name: str = "split.json", field: str | None = "ranges") -> tuple | None:
    """(``field`` of the record, or the whole record for None; its path) of the newest run under ``out_dir``
    whose ``name`` record has ``key``."""
    found = []
    for path in out_dir.glob(f"*/{name}"):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("key") == json.loads(json.dumps(key)):
            found.append((path.stat().st_mtime, str(path), record if field is None else record[field]))
    if not found:
        return None
    _, path, value = max(found)
    return value, Path(path)


def split_for(cfg: JobConfig, data: DataInfo, device: torch.device, stages: int = 1, run_dir=None, prof=None):
    """``plan_split`` for the configured backbone (None: e2e, one module), and its line."""
    if mode_traits(cfg.mode).one_module:
        return None, f"split: one module ({cfg.mode}: the whole net in every process)"
    backbone = backbone_for(cfg, data)
    return plan_split(cfg, data, device, backbone.num_units, backbone.positions, stages, run_dir, prof)
