"""The job configuration's schema: a dataclass tree, one section per concern, every field with its default, its
choices and its help (``option``), so ``--help`` and docs/configuration.md stay honest.

Reading values into it (YAML, ``--section.key=value``, precedence CLI > YAML > defaults) is config_parse.py's;
the rules across fields are config_policy.py's. The ``method`` section is assembled from the methods' own
``Config`` classes, and mode names and rules come from the registered modes (both tables in options.py, filled
when pipelocal imports methods/ and schedules/). This is the one file of the package over 300 lines: one
field a line, the whole schema in one place, as users read it (docs/design.md#rooms).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelocal.config_policy import validate

# ConfigError, option and MethodConfig are defined in options.py, the leaf the methods' own Configs import;
# importing them from here keeps working. The method section comes from options.py's table, filled as the
# methods register: this module never imports the methods (nor the schedules, for the modes).
from pipelocal.options import MODE_TRAITS, ConfigError, MethodConfig, method_config, option

__all__ = ["ConfigError", "JobConfig", "MethodConfig"]


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
    host_allocator: str = option(
        "reuse",
        "CPU runs on glibc: reuse keeps freed blocks for the next step (mallopt; no page faults per step, 10-20 % "
        "faster here), system keeps glibc's defaults (runtime/host_memory.py)",
        ("reuse", "system"),
    )
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
    allreduce_s: float = option(
        0.0, "slow-network injection (replicas): each all-reduce takes at least this long, one after another"
    )


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
    replicas: int | str = option(
        1,
        "R, data-parallel replicas of the pipeline: torchrun starts P x R processes, each replica a full P-stage "
        "pipeline training its shard of every batch; a stage's replicas average gradients "
        "(docs/scale-out.md#the-p-x-r-mesh); auto: the layout of the started processes that simulates fastest "
        "on this device's profile (docs/simulator.md#choosing-p-x-r-at-start-up)",
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
        """Check every choice and the cross-field rules (config_policy.py); return self."""
        return validate(self)
