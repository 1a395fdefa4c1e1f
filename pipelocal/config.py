"""The job configuration: a dataclass tree (the schema), YAML values, dotted CLI overrides, validation.

Precedence is CLI > YAML > defaults. Unknown keys and bad values raise :class:`ConfigError` naming the
key and what is allowed. Every field carries its help text, so ``--help`` and docs/configuration.md stay honest.
The ``method`` section is assembled from the methods' own ``Config`` classes, and mode names and rules come
from the registered modes (both tables in options.py, filled when pipelocal imports methods/ and schedules/).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# ConfigError, option and MethodConfig are defined in options.py, the leaf the methods' own Configs import;
# importing them from here keeps working. The method section comes from options.py's table, filled as the
# methods register: this module never imports the methods (nor the schedules, for the modes).
from pipelocal.options import (
    METHOD_OPTIONS,
    MODE_TRAITS,
    ConfigError,
    MethodConfig,
    check_choices,
    method_config,
    method_options,
    mode_traits,
    option,
)


class OrFactory(tuple):
    """Choices that also admit any ``package.module:function`` (a user's factory, models/user.py)."""

    def __contains__(self, value) -> bool:
        return (isinstance(value, str) and ":" in value) or super().__contains__(value)


@dataclass
class ModelConfig:
    name: str = option(
        "cifar_resnet",
        "backbone: cifar_resnet (depth 6n+2); resnet18, resnet34, resnet50, resnet101, resnet152, resnext101_32x8d; "
        "cifar_vgg (VGG-BN, depth 11/13/16/19, global pool -> Linear); vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn "
        "(torchvision's, 224); vit_tiny_p4 (width 192, 3 heads, 4x4 patches, depth blocks: 28x28/32x32 inputs); "
        "vit_tiny, vit_small, vit_base (ViT-Ti/S/B with 16x16 patches, 224); a ViT name + _gap pools the mean of the "
        "tokens instead of a class token; timm/NAME (a timm model, pip install pipelocal[timm]); "
        "package.module:function (your factory: called with in_channels, num_classes, image_size, returns an "
        "nn.Sequential of units, the classifier last; docs/own-model.md)",
    )
    depth: int = option(
        20,
        "cifar_resnet: 6n+2 (20, 32, 56, 110); cifar_vgg: 11, 13, 16, 19; vit_tiny_p4(_gap): transformer blocks; "
        "fixed by the name for the others",
    )
    norm: str = option(
        "batch",
        "normalisation in the conv backbones: batch (as published), group (8 groups; independent of batch and "
        "microbatch size, so DDP/GPipe gradients equal single-process ones exactly), none; ViTs use LayerNorm",
        ("batch", "group", "none"),
    )


@dataclass
class DataConfig:
    name: str = option(
        "fashion_mnist",
        "dataset, or package.module:function returning (train Dataset, test Dataset, num_classes) (docs/own-model.md)",
        OrFactory(("fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "stl10", "imagefolder", "synthetic")),
    )
    root: str | None = option(None, "dataset folder; default: the usual places (docs/methods.md#data)")
    download: bool = option(False, "let torchvision download the dataset into root (or ./data)")
    batch_size: int = option(128, "training batch size")
    eval_batch_size: int = option(512, "evaluation batch size")
    augment: bool = option(True, "random crop (+ flip where the recipe has it), docs/methods.md#recipes")
    workers: int = option(2, "DataLoader workers for datasets read per sample (imagefolder, package.module:function)")
    train_subset: int | None = option(None, "use only the first N training samples (quick runs; 0 or unset: all)")
    test_subset: int | None = option(None, "use only the first N test samples (quick runs; 0 or unset: all)")
    drop_last: bool = option(False, "drop the last, smaller training batch of an epoch")
    image_size: int = option(224, "imagefolder: crop size")
    synthetic_shape: list[int] = option([3, 32, 32], "synthetic: C, H, W")
    synthetic_classes: int = option(10, "synthetic: number of classes")
    synthetic_train: int = option(2048, "synthetic: training samples")
    synthetic_test: int = option(512, "synthetic: test samples")
    synthetic_noise: float = option(0.35, "synthetic: noise std around each class prototype (in [0,1] pixels)")


@dataclass
class SplitConfig:
    num_modules: int = option(4, "K, the number of gradient-isolated local modules")
    balance: str = option(
        "uniform",
        "module boundaries: uniform unit counts, the papers' table, or profiled on this device to minimise the "
        "slowest module (time) or the largest activation memory (memory), aux heads included",
        ("uniform", "table", "time", "memory"),
    )
    table: str = option(
        "infopro", "balance=table: InfoPro's split tables (docs/methods.md#splits)", ("infopro", "infopro_star")
    )
    boundaries: list[int] | None = option(
        None, "explicit unit indices after which a module ends (K-1 of them); overrides balance"
    )


@dataclass
class GuidanceConfig:
    every: int = option(0, "periodic global guidance (PGL): one end-to-end step every N steps (0: off)")
    burst: int = option(1, "M: each guidance point is M consecutive end-to-end steps (the last M of every N)")
    every_end: int | None = option(
        None,
        "the guidance period at the last epoch: `every` at the first, interpolated linearly per epoch (dense "
        "early and sparse late, or the reverse); None: `every` throughout",
    )
    every_epochs: int = option(0, "every k-th epoch is trained end to end (all its steps guidance steps); 0: off")
    mode: str = option(
        "sync", "pipeline: wait for the guidance gradient (sync) or apply it late (async)", ("sync", "async")
    )
    combine: str = option(
        "replace",
        "at a guidance step: only the end-to-end gradient (replace), or local + weight * end-to-end (add)",
        ("replace", "add"),
    )
    weight: float = option(1.0, "scale of the end-to-end gradient at a guidance step")
    warmup_epochs: int = option(0, "train end-to-end only (every step a guidance step) for the first N epochs")
    until_epoch: int | None = option(None, "no guidance from this epoch on (0-based; None: to the end)")
    recompute: bool = option(
        False,
        "a guidance step keeps only the module boundaries and recomputes each module in its backward "
        "(one module's activations alive instead of every module's; one more forward)",
    )

    @property
    def on(self) -> bool:
        """Some training step is a guidance step."""
        return bool(self.every or self.warmup_epochs or self.every_epochs)


@dataclass
class OptimConfig:
    name: str = option(
        "sgd",
        "optimizer per module: sgd (every published local-learning recipe) or adamw (decoupled weight decay; what "
        "ViTs are trained with: e.g. lr 1e-3, weight_decay 0.05)",
        ("sgd", "adamw"),
    )
    lr: float = option(0.1, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum (SGD)")
    betas: list[float] = option([0.9, 0.999], "AdamW's (beta1, beta2)")
    weight_decay: float = option(1e-4, "weight decay (AdamW: decoupled)")
    step: str = option(
        "per_batch",
        "per_batch: step every module after the whole batch (InfoPro lineage); per_module: after its backward (DGL)",
        ("per_batch", "per_module"),
    )
    schedule: str = option(
        "cosine",
        "learning-rate schedule: cosine (linear warm-up, then a cosine over the remaining epochs), cosine_blend "
        "(the InfoPro/AugLocal/MLAAN code's: one cosine over all epochs, e = epoch + 1, with the warm-up blended "
        "into its first warmup_epochs; set once per epoch there, per_step: false) or constant (after warm-up)",
        ("cosine", "cosine_blend", "constant"),
    )
    warmup_epochs: float = option(0.0, "warm-up length in epochs (the CIFAR recipe uses 10)")
    warmup_lr: float = option(0.01, "learning rate at the start of warm-up (the CIFAR recipe uses 0.01)")
    per_step: bool = option(True, "update the schedule every step (fractional epochs) instead of once per epoch")


@dataclass
class TrainConfig:
    epochs: int = option(3, "training epochs")
    seed: int = option(0, "seed for model init and data order")
    device: str = option(
        "auto",
        "auto: cuda if available, else cpu (under torchrun too: cpu means CPU and gloo)",
        ("auto", "cpu", "cuda"),
    )
    threads: int = option(0, "CPU threads for this process (0: torch's default)")
    max_steps: int | None = option(None, "stop each epoch after this many steps (quick runs, tests)")
    eval_every: int = option(1, "evaluate every N epochs (and always after the last)")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms (tests, invariants)")
    precision: str = option(
        "fp32",
        "compute dtype of forwards and losses (torch.autocast): fp32, bf16 (no loss scaling), fp16 (one GradScaler "
        "per optimizer); weights, gradients and optimizer state stay fp32; activations cross stages in it",
        ("fp32", "bf16", "fp16"),
    )
    channels_last: bool = option(False, "channels_last memory format for weights and activations (faster convs)")
    compile: bool = option(False, "torch.compile each local module's body and head (the batch dimension dynamic)")
    resume: str | None = option(
        None,
        "continue a run: auto (the newest complete checkpoint of this run folder, or start fresh; without "
        "metrics.run_name, of the newest <mode>-<method>-* run folder whose config equals this one) or a "
        "checkpoint/run folder PATH",
    )
    resume_override: str = option(
        "",
        "comma-separated keys a resume may change although they affect the math (optim.lr,train.seed); "
        "recorded in the run folder (resumes.jsonl) with the step they took effect at",
    )
    nan_policy: str = option(
        "stop",
        "a non-finite loss or gradient: stop (one line naming stage, module and step; no checkpoint of it), "
        "skip (the step is dropped on the device and counted) or off",
        ("stop", "skip", "off"),
    )


@dataclass
class SlowdownConfig:
    stage: int | None = option(None, "straggler injection: this stage takes `factor` x its compute time per step")
    factor: float = option(1.0, "straggler injection: >= 1; the stage sleeps (factor - 1) x its measured compute")


@dataclass
class PipelineConfig:
    queue_depth: int = option(2, "batches a stage may send ahead of the next stage's consumption (bounded buffer)")
    stage_order: str = option(
        "interleaved",
        "several modules on a stage: interleaved (each module's backward before the next forward: one graph "
        "alive) or forward_first (all forwards, send, then backwards: sends sooner)",
        ("interleaved", "forward_first"),
    )
    modules_per_stage: list[int] | None = option(None, "modules on each stage (P numbers summing to K); default even")
    timeout_s: float = option(300.0, "process-group timeout: a stuck peer surfaces as an error after this long")
    threads: int = option(1, "CPU threads per stage process (0: torch's default)")
    live_every: int = option(0, "rank 0 redraws the all-stage table every N steps (0: metrics.log_every)")
    microbatches: int = option(4, "gpipe/1f1b: microbatches per batch (data.batch_size must divide by it)")
    buffer: str = option(
        "fifo",
        "between stages: fifo (bounded queue with backpressure, every batch used once) or replay (a consumer "
        "that would wait trains again on a buffered batch; the producer never blocks, the oldest entry is dropped)",
        ("fifo", "replay"),
    )
    buffer_size: int = option(4, "replay: M, batches a consumer keeps")
    sampling: str = option(
        "least_used_freshest", "replay: which buffered batch to train on", ("least_used_freshest", "uniform")
    )
    max_reuse: int | None = option(None, "replay: most times one batch is trained on (None: no cap)")
    slowdown: SlowdownConfig = field(default_factory=SlowdownConfig)
    replicas: int = option(
        1,
        "R, data-parallel replicas of the pipeline: torchrun starts P x R processes, each replica a full P-stage "
        "pipeline training its shard of every batch; a stage's replicas average gradients "
        "(docs/scale-out.md#the-p-x-r-mesh)",
    )
    sync_batchnorm: bool = option(
        False, "BatchNorm statistics over the whole batch, all-reduced across a stage's replicas (R = 1: no effect)"
    )


@dataclass
class DistributedConfig:
    backend: str = option(
        "auto",
        "what carries stage messages under torchrun: auto (nccl when every process of a node has a GPU of its own; "
        "stages sharing GPUs send through pinned host buffers over gloo; gloo on CPU), nccl, or gloo "
        "(docs/gpus.md)",
        ("auto", "nccl", "gloo"),
    )


@dataclass
class MetricsConfig:
    out_dir: str = option("runs", "parent folder of run directories")
    run_name: str | None = option(None, "run directory name (default: <mode>-<method>-<time>)")
    log_every: int = option(50, "steps between JSONL/console log lines")
    console: str = option("auto", "auto: rich on a terminal, plain lines otherwise", ("auto", "rich", "plain", "none"))
    memory: bool = option(True, "count bytes saved for backward with saved-tensor hooks (small CPU cost)")
    timeline: list[int] | None = option(
        None,
        "[first, last] training steps to record per-stage spans for (forward, backward, send, waits, steps, "
        "evaluation, checkpoints): rank 0 writes timeline.json (Perfetto/chrome://tracing) and timeline.png",
    )
    profile: list[int] | None = option(
        None,
        "[first, last] training steps to run torch.profiler over (CPU, and CUDA on a GPU), on every rank: one trace "
        "per process in <run dir>/profile (TensorBoard's profiler plugin, or https://ui.perfetto.dev)",
    )
    tensorboard: bool = option(
        False,
        "rank 0 also writes per-stage scalars to <run dir>/tensorboard at each epoch end and log interval "
        "(needs pip install pipelocal[tensorboard]; metrics.jsonl stays the record)",
    )

    def validate(self) -> None:
        """The step windows (raises ConfigError). (TensorBoard's package is checked where the writer opens.)"""
        for name in ("timeline", "profile"):
            window = getattr(self, name)
            if window is not None and (len(window) != 2 or not 0 <= window[0] <= window[1]):
                raise ConfigError(f"metrics.{name}={window}: give [first, last] training steps, 0 <= first <= last")


@dataclass
class CheckpointConfig:
    every_epochs: int = option(1, "checkpoint after every N epochs (0: never; the final one is always written)")
    every_steps: int = option(0, "also checkpoint every N training steps, mid-epoch (0: off)")
    keep: int = option(2, "keep the newest N checkpoints (0: all)")
    final: bool = option(True, "write a checkpoint at the end of the run")


@dataclass
class JobConfig:
    # The allowed values are the registry itself (a live view: a mode registered later is allowed too).
    mode: str = option("sequential", "execution mode (docs/design.md#modes)", MODE_TRAITS)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    method: MethodConfig = field(default_factory=method_config)  # name + every method's knobs (options.py)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> JobConfig:
        """Check every choice and the cross-field rules; return self."""
        check_choices(self, "")
        _positive(self, ["data.batch_size", "data.eval_batch_size", "split.num_modules", "train.epochs"])
        _check_numbers(self)
        if self.model.name == "cifar_resnet" and (self.model.depth - 2) % 6:
            raise ConfigError(f"model.depth={self.model.depth}: cifar_resnet depth must be 6n+2 (20, 32, 56, 110)")
        if len(self.data.synthetic_shape) != 3:
            raise ConfigError("data.synthetic_shape needs 3 numbers: C, H, W")
        if len(self.optim.betas) != 2:
            raise ConfigError(
                f"optim.betas={self.optim.betas} needs 2 numbers, (beta1, beta2): --optim.betas=[0.9,0.999]"
            )
        if self.split.boundaries is not None and len(self.split.boundaries) != self.split.num_modules - 1:
            raise ConfigError(
                f"split.boundaries has {len(self.split.boundaries)} entries but split.num_modules="
                f"{self.split.num_modules} needs {self.split.num_modules - 1}"
            )
        _check_method(self)
        mode = mode_traits(self.mode)
        if self.guidance.on and mode.end_to_end:
            raise ConfigError(
                f"guidance adds end-to-end steps to local learning; mode={self.mode} is end-to-end already. "
                "Set guidance.every=0 and guidance.warmup_epochs=0, or use mode=sequential with a local method"
            )
        _check_guidance(self.guidance)
        if self.pipeline.buffer_size < 1 or (self.pipeline.max_reuse is not None and self.pipeline.max_reuse < 1):
            raise ConfigError("pipeline.buffer_size and pipeline.max_reuse must be at least 1")
        if self.pipeline.slowdown.factor < 1:
            raise ConfigError(f"pipeline.slowdown.factor={self.pipeline.slowdown.factor} must be >= 1 (1: off)")
        if self.pipeline.queue_depth < 1:
            raise ConfigError(f"pipeline.queue_depth={self.pipeline.queue_depth} must be at least 1")
        if mode.end_to_end and self.method.name != "e2e":
            raise ConfigError(
                f"mode={self.mode} trains end to end (plain backprop) but method.name='{self.method.name}'; "
                "set method.name=e2e, or mode=sequential (pipeline) for local learning"
            )
        if min(self.checkpoint.every_epochs, self.checkpoint.every_steps, self.checkpoint.keep) < 0:
            raise ConfigError("checkpoint.every_epochs, checkpoint.every_steps and checkpoint.keep must be >= 0")
        if self.checkpoint.every_steps and self.pipeline.buffer == "replay":
            raise ConfigError(
                "checkpoint.every_steps: a replay pipeline's stages train unplanned numbers of steps, so they have "
                "no common mid-epoch step; use checkpoint.every_epochs with pipeline.buffer=replay"
            )
        crossing = self.guidance.on or method_options(self.method.name).cross_module
        if self.train.compile and self.guidance.mode == "async" and crossing and self.mode == "pipeline":
            raise ConfigError(
                "train.compile with guidance.mode=async: a pipeline stage then runs each step whose gradient comes "
                "late on a copy of its weights (weight stashing, torch.func.functional_call), a path not tested "
                "with compiled modules; use guidance.mode=sync or train.compile=false"
            )
        _check_replicas(self)
        self.metrics.validate()
        if mode.check is not None:
            mode.check(self)
        return self


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


def _check_replicas(cfg: JobConfig) -> None:
    """``pipeline.replicas``: what data parallelism of a local pipeline can serve."""
    replicas = cfg.pipeline.replicas
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


# ---------------------------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that 1e-3 and 5E4 are numbers (YAML 1.1 wants 1.0e-3): the values
    people type for learning rates, in a file or on the command line."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def read_yaml(text: str) -> Any:
    """Parse YAML text as config values (scientific notation as numbers)."""
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Defaults, then the YAML file, then ``--section.key=value`` overrides; validated."""
    cfg = JobConfig()
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"config file {path}: {err.strerror} (check the --config path)") from err
        try:
            values = read_yaml(text) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"config file {path}{where}: YAML syntax error: {problem}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(values).__name__}")
        _merge(cfg, values, prefix="")
    for item in overrides or []:
        key, value = _split_override(item)
        set_key(cfg, key, read_yaml(value) if value != "" else None)
    return cfg.validate()


def set_key(cfg: JobConfig, dotted: str, value: Any) -> None:
    """Set ``section.key`` (or a top-level key) on ``cfg``, casting and checking the name."""
    *parents, leaf = dotted.split(".")
    node, prefix = cfg, ""
    for part in parents:
        node = getattr(node, _known(node, part, prefix))
        prefix += part + "."
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"'{prefix.rstrip('.')}' is a value, not a section")
    _set_on(node, leaf, value, prefix)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: JobConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def help_text(cfg: JobConfig | None = None, width: int = 100) -> str:
    """Every key with its value in ``cfg`` (default: the dataclass defaults), choices and help (cli.py's)."""
    from pipelocal.cli import help_text as text  # cli.py imports this module

    return text(cfg, width)


def _merge(node: Any, values: dict, prefix: str) -> None:
    for key, value in values.items():
        _set_on(node, key, value, prefix)


def _set_on(node: Any, key: str, value: Any, prefix: str) -> None:
    name = _known(node, key, prefix)
    current = getattr(node, name)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"'{prefix}{name}' is a section; give it a mapping, got {value!r}")
        _merge(current, value, f"{prefix}{name}.")
    else:
        setattr(node, name, _cast(value, typing.get_type_hints(type(node))[name], f"{prefix}{name}"))


def _known(node: Any, key: str, prefix: str) -> str:
    names = [f.name for f in dataclasses.fields(node)]
    if key in names:
        return key
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
    raise ConfigError(f"unknown key '{prefix}{key}'{hint} (keys of {where}: {', '.join(names)})")


def _split_override(item: str) -> tuple[str, str]:
    if not item.startswith("--") or "=" not in item:
        raise ConfigError(f"override '{item}' must look like --section.key=value")
    key, value = item[2:].split("=", 1)
    return key, value


def _cast(value: Any, hint: Any, key: str) -> Any:
    """Cast a YAML value to a field's annotated type, or raise naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _cast(value, inner[0], key)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"'{key}' needs a list, got {value!r}")
        return [_cast(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' needs true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"'{key}' needs an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"'{key}' needs a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if value is False:  # YAML 1.1 reads a bare off (no, false) as False: the choice "off" of a string key
            return "off"
        raise ConfigError(f"'{key}' needs a string, got {value!r}")
    return value


def _positive(cfg: JobConfig, keys: list[str]) -> None:
    for key in keys:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < 1:
            raise ConfigError(f"{key}={value} must be at least 1")
