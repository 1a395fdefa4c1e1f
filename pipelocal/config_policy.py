"""The job configuration's cross-field rules: what a config must satisfy beyond each field's own type and choices,
each broken rule one :class:`ConfigError` that names the keys and the fix. ``JobConfig.validate`` runs them.

Apart from the schema (config.py) so that the schema reads as the list of keys users set, and the rules as the
list of what cannot go together. Written against the schema's attributes; it imports nothing of config.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pipelocal.options import METHOD_OPTIONS, ConfigError, check_choices, method_options, mode_traits

if TYPE_CHECKING:
    from pipelocal.config import GuidanceConfig, JobConfig


def validate(cfg: JobConfig) -> JobConfig:
    """Check every choice and the cross-field rules; return ``cfg``."""
    check_choices(cfg, "")
    _positive(cfg, ["data.batch_size", "data.eval_batch_size", "split.num_modules", "train.epochs"])
    _check_numbers(cfg)
    if cfg.model.name == "cifar_resnet" and (cfg.model.depth - 2) % 6:
        raise ConfigError(f"model.depth={cfg.model.depth}: cifar_resnet depth must be 6n+2 (20, 32, 56, 110)")
    if len(cfg.data.synthetic_shape) != 3:
        raise ConfigError("data.synthetic_shape needs 3 numbers: C, H, W")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas={cfg.optim.betas} needs 2 numbers, (beta1, beta2): --optim.betas=[0.9,0.999]")
    if cfg.split.boundaries is not None and len(cfg.split.boundaries) != cfg.split.num_modules - 1:
        raise ConfigError(
            f"split.boundaries has {len(cfg.split.boundaries)} entries but split.num_modules="
            f"{cfg.split.num_modules} needs {cfg.split.num_modules - 1}"
        )
    _check_method(cfg)
    mode = mode_traits(cfg.mode)
    if cfg.guidance.on and mode.end_to_end:
        raise ConfigError(
            f"guidance adds end-to-end steps to local learning; mode={cfg.mode} is end-to-end already. "
            "Set guidance.every=0 and guidance.warmup_epochs=0, or use mode=sequential with a local method"
        )
    _check_guidance(cfg.guidance)
    if cfg.pipeline.buffer_size < 1 or (cfg.pipeline.max_reuse is not None and cfg.pipeline.max_reuse < 1):
        raise ConfigError("pipeline.buffer_size and pipeline.max_reuse must be at least 1")
    if cfg.pipeline.slowdown.allreduce_s < 0:
        raise ConfigError(f"pipeline.slowdown.allreduce_s={cfg.pipeline.slowdown.allreduce_s} must be >= 0 (0: off)")
    if cfg.pipeline.slowdown.factor < 1:
        raise ConfigError(f"pipeline.slowdown.factor={cfg.pipeline.slowdown.factor} must be >= 1 (1: off)")
    if cfg.pipeline.queue_depth < 1:
        raise ConfigError(f"pipeline.queue_depth={cfg.pipeline.queue_depth} must be at least 1")
    if mode.end_to_end and cfg.method.name != "e2e":
        raise ConfigError(
            f"mode={cfg.mode} trains end to end (plain backprop) but method.name='{cfg.method.name}'; "
            "set method.name=e2e, or mode=sequential (pipeline) for local learning"
        )
    if min(cfg.checkpoint.every_epochs, cfg.checkpoint.every_steps, cfg.checkpoint.keep) < 0:
        raise ConfigError("checkpoint.every_epochs, checkpoint.every_steps and checkpoint.keep must be >= 0")
    if cfg.checkpoint.every_steps and cfg.pipeline.buffer == "replay":
        raise ConfigError(
            "checkpoint.every_steps: a replay pipeline's stages train unplanned numbers of steps, so they have "
            "no common mid-epoch step; use checkpoint.every_epochs with pipeline.buffer=replay"
        )
    crossing = cfg.guidance.on or method_options(cfg.method.name).cross_module
    if cfg.train.compile and cfg.guidance.mode == "async" and crossing and cfg.mode == "pipeline":
        raise ConfigError(
            "train.compile with guidance.mode=async: a pipeline stage then runs each step whose gradient comes "
            "late on a copy of its weights (weight stashing, torch.func.functional_call), a path not tested "
            "with compiled modules; use guidance.mode=sync or train.compile=false"
        )
    check_replicas(cfg)
    cfg.metrics.validate()
    if mode.check is not None:
        mode.check(cfg)
    return cfg


def _check_numbers(cfg: JobConfig) -> None:
    """Values that would train silently wrong: a learning rate that is not a finite positive number, a
    negative subset (Python slicing would read -5 as "all but 5")."""
    o = cfg.optim
    if not (math.isfinite(o.lr) and o.lr > 0):
        raise ConfigError(f"optim.lr={o.lr} must be a finite number > 0 (e.g. --optim.lr=0.1)")
    if not (math.isfinite(o.warmup_lr) and o.warmup_lr >= 0) or not (
        math.isfinite(o.weight_decay) and o.weight_decay >= 0
    ):
        raise ConfigError(
            f"optim.warmup_lr={o.warmup_lr} and optim.weight_decay={o.weight_decay} must be finite and >= 0"
        )
    for key in ("train_subset", "test_subset"):
        value = getattr(cfg.data, key)
        if value is not None and value < 0:
            raise ConfigError(f"data.{key}={value} must be >= 1 (the first N samples), or 0/unset for the full set")


def _check_guidance(g: GuidanceConfig) -> None:
    if min(g.every, g.warmup_epochs, g.every_epochs) < 0:
        raise ConfigError(
            "guidance.every, guidance.warmup_epochs and guidance.every_epochs must be 0 (off) or positive"
        )
    periods = [g.every] + ([g.every_end] if g.every_end is not None else [])
    if g.every_end is not None and (not g.every or g.every_end < 1):
        raise ConfigError(f"guidance.every_end={g.every_end} needs guidance.every > 0 and a period >= 1")
    if g.burst < 1 or (g.every and g.burst > min(periods)):
        raise ConfigError(
            f"guidance.burst={g.burst} must be at least 1 and at most the period ({min(periods)}): a burst of M "
            "end-to-end steps is the last M steps of every period"
        )


def check_replicas(cfg: JobConfig) -> None:
    """``pipeline.replicas``: what data parallelism of a local pipeline can serve."""
    replicas = cfg.pipeline.replicas
    if replicas == "auto":
        if cfg.mode != "pipeline":
            raise ConfigError(
                f"pipeline.replicas=auto chooses the P x R layout of a local pipeline (mode=pipeline), not of "
                f"mode={cfg.mode}: set mode=pipeline, or leave pipeline.replicas at 1"
            )
        return
    if isinstance(replicas, str):
        raise ConfigError(f"pipeline.replicas={replicas!r} must be a number of replicas (1, 2, ...) or auto")
    if replicas < 1:
        raise ConfigError(f"pipeline.replicas={replicas} must be at least 1")
    if replicas == 1:
        return  # (sync_batchnorm: one replica's batch is the whole batch already)
    if cfg.mode != "pipeline":
        raise ConfigError(
            f"pipeline.replicas={replicas} replicates a local pipeline (mode=pipeline); mode={cfg.mode} "
            + (
                "is data parallel already: its replicas are the processes torchrun starts"
                if cfg.mode == "ddp"
                else "does not take replicas: use mode=pipeline, or mode=ddp for data-parallel backprop"
            )
        )
    if cfg.pipeline.buffer == "replay":
        raise ConfigError(
            "pipeline.buffer=replay with pipeline.replicas > 1: a replay stage trains as many steps as its buffer "
            "allows, so a stage's replicas would not take the same steps and could not average their gradients; "
            "use pipeline.buffer=fifo, or pipeline.replicas=1"
        )
    if cfg.data.batch_size < replicas or cfg.data.eval_batch_size < replicas:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} (eval {cfg.data.eval_batch_size}) cannot give each of "
            f"pipeline.replicas={replicas} replicas a row; use larger batches or fewer replicas"
        )
    if cfg.pipeline.sync_batchnorm and cfg.model.norm != "batch":
        raise ConfigError(f"pipeline.sync_batchnorm=true needs model.norm=batch (it is {cfg.model.norm})")
    method = cfg.method
    infopro_heads = method.name == "infopro" or (method.name == "mlaan" and getattr(method, "base", "") == "infopro")
    if infopro_heads and getattr(method, "loss", "") == "contrast":
        # Its pairs would be taken within each replica's shard, not over the global batch: another loss.
        raise ConfigError(
            f"method.loss=contrast with pipeline.replicas={replicas}: each replica would contrast only its own "
            "shard of the batch; use method.loss=softmax, or pipeline.replicas=1"
        )


def _check_method(cfg: JobConfig) -> None:
    """The method's name and knobs (its own ``Config.validate``), and whether replay can serve it."""
    method = method_options(cfg.method.name)
    method.check(cfg.method)
    if cfg.pipeline.buffer == "replay" and (cfg.guidance.on or method.cross_module):
        local = ", ".join(name for name, m in sorted(METHOD_OPTIONS.items()) if not m.cross_module)
        raise ConfigError(
            "pipeline.buffer=replay trains stages on reused batches, which no gradient from a later stage can "
            f"follow; use it with a local method ({local}) and guidance.every=0"
        )


def _positive(cfg: JobConfig, keys: list[str]) -> None:
    for key in keys:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < 1:
            raise ConfigError(f"{key}={value} must be at least 1")
