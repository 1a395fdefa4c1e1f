"""train.host_allocator: reuse keeps freed blocks in the heap, so a step's activations stop faulting in."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelocal.runtime import host_memory

# 20 training steps of two small convolutions (activations of 800 KiB, over glibc's first mmap threshold): the
# page faults they cost after a first step
LOOP = """
import resource, sys, torch
from pipelocal.runtime import host_memory
if sys.argv[1] == "reuse":
    assert host_memory.keep_freed_memory()
torch.set_num_threads(1)
conv = torch.nn.Conv2d(16, 16, 3, padding=1)
x = torch.rand(16, 16, 28, 28, requires_grad=True)
def step():
    conv(conv(x)).sum().backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
ACTIVATION_PAGES = 16 * 16 * 28 * 28 * 4 // 4096


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_reuse_stops_the_page_faults_of_every_step():
    system, reuse = _faults("system"), _faults("reuse")
    # glibc's defaults: at least one activation a step is mapped (or trimmed and grown) afresh
    assert system >= 20 * ACTIVATION_PAGES, system
    # kept: the steps reuse the first one's blocks (measured 26977 against 589 on the 2-core AMD EPYC host)
    assert reuse * 10 < system, (reuse, system)


def test_the_thresholds_are_glibcs_limits():
    # mallopt refuses an mmap threshold above its maximum (and then nothing would change)
    assert host_memory.MMAP_THRESHOLD_MAX == 4 * 1024 * 1024 * 8
    if sys.platform.startswith("linux"):
        assert host_memory.keep_freed_memory()


@pytest.mark.parametrize(("allocator", "calls"), [("reuse", 1), ("system", 0)])
def test_a_cpu_job_keeps_freed_memory_unless_told_not_to(monkeypatch, allocator, calls):
    from pipelocal import job
    from pipelocal.config_parse import load_config
    from pipelocal.schedules import MODES

    made = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: made.append(1) or True)
    cfg = load_config(None, ["--mode=sequential", "--train.device=cpu", f"--train.host_allocator={allocator}"])
    job.start(cfg, MODES.get("sequential"))
    assert len(made) == calls
