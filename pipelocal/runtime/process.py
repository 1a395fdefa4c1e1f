"""How this process computes, set once at start-up, before any profile or step: its threads, the host
allocator (``train.host_allocator``) and deterministic mode. The ``pipeline.replicas: auto`` planner profiles
before the process groups exist and calls it first, so it profiles as the stages will train."""

from __future__ import annotations

import torch

from pipelocal.config import JobConfig
from pipelocal.runtime import determinism, host_memory


def configure(cfg: JobConfig, device: torch.device, multi_process: bool) -> None:
    """Threads (a stage's ``pipeline.threads`` on a CPU, torch's own on a GPU; ``train.threads`` in one
    process), the allocator and deterministic mode (both idempotent: a second call changes nothing)."""
    threads = (cfg.pipeline.threads if device.type == "cpu" else 0) if multi_process else cfg.train.threads
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cpu" and cfg.train.host_allocator == "reuse":
        host_memory.keep_freed_memory()
    determinism.configure(cfg.train.deterministic, device)
