"""``pipelocal.train(...)``: a job from a notebook or a script, with the network and data as Python objects.

Under torchrun, every process runs the same script and so the same call; each trains its own stage, and the
coordinator (rank 0) returns the summary.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from torch import nn

from pipelocal.config import ConfigError, JobConfig
from pipelocal.config_files import resolve_config
from pipelocal.config_parse import load_config, set_key
from pipelocal.models.user import FACTORIES


def train(
    config: str | Path | JobConfig | None = None,
    overrides: list[str] | None = None,
    model: str | Callable | nn.Sequential | list[nn.Module] | None = None,
    data: str | Callable | None = None,
) -> dict | None:
    """Run one job; return its summary as a dict (the fields of the run folder's summary.json: accuracy, samples/s,
    per-stage figures, the config; None on the processes of a multi-process job other than rank 0).

    ``config``: a YAML path, a :class:`JobConfig`, or None for the default job. ``overrides``: ``section.key=value``
    strings, applied after it (``--`` in front is optional). ``model``: a ``model.name`` string, a factory
    ``f(in_channels, num_classes, image_size)`` returning an nn.Sequential (or a list of modules), or such an
    nn.Sequential itself, whose weights are the initial ones (under torchrun build it alike on every process, e.g.
    after ``torch.manual_seed``). ``data``: a ``data.name`` string or a factory returning ``(train Dataset, test
    Dataset, num_classes)``.
    """
    from pipelocal.job import run_job  # the training stack is imported when a job runs, not with pipelocal

    cfg = job_config(config, overrides)
    if model is not None:
        cfg.model.name = model if isinstance(model, str) else register(model, "model")
    if data is not None:
        cfg.data.name = data if isinstance(data, str) else register(data, "data")
    summary = run_job(cfg.validate())
    return summary.to_dict() if summary is not None else None


def job_config(config, overrides: list[str] | None) -> JobConfig:
    """``config`` (a path or packaged name as ``--config`` takes it, a JobConfig, or None: the default job) with
    ``overrides`` applied."""
    items = [item if item.startswith("--") else f"--{item}" for item in overrides or []]
    if config is None or isinstance(config, str | Path):
        return load_config(resolve_config(config), items)
    if not isinstance(config, JobConfig):
        raise ConfigError(f"config={type(config).__name__}: give a YAML path, a JobConfig or None (the default job)")
    cfg = copy.deepcopy(config)  # the caller's object stays as it was
    for item in items:
        set_key(cfg, *_parse(item))  # names and casts checked as the CLI's are
    return cfg.validate()


def _parse(item: str):
    import yaml

    key, _, value = item[2:].partition("=")
    return key, yaml.safe_load(value) if value != "" else None


def register(obj, kind: str) -> str:
    """A name for ``obj`` (``module:qualname`` of a function, ``object:Class`` of a network), under which this
    process's builders find it (models/user.py's FACTORIES)."""
    if isinstance(obj, nn.Module | list | tuple) and kind == "model":
        name, factory = f"object:{type(obj).__name__}", _fixed(obj)
    elif callable(obj):
        module, qualname = getattr(obj, "__module__", "object"), getattr(obj, "__qualname__", type(obj).__name__)
        name, factory = f"{module}:{qualname}", obj
    else:
        expected = "a factory, an nn.Sequential or a list of modules" if kind == "model" else "a dataset factory"
        raise ConfigError(f"{kind}={type(obj).__name__}: give {expected}, or a {kind}.name string")
    FACTORIES[name] = factory
    return name


def _fixed(net) -> Callable:
    """A factory returning a fresh copy of ``net`` each time (a job may build the net more than once)."""

    def build(in_channels: int, num_classes: int, image_size) -> nn.Module | list:
        return copy.deepcopy(net)

    return build
