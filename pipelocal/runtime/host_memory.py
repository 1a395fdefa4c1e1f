"""The host allocator of a CPU run (``train.host_allocator``): keep freed memory for the next step.

glibc's malloc serves a block over its mmap threshold (128 KiB to start, raised as big blocks are freed) with a
fresh ``mmap`` and returns it with ``munmap``; it also trims the heap's top back to the OS past 128 KiB. A
training step on the CPU allocates and frees megabytes of activations and gradients, so with those defaults
every step faults its pages in again (the kernel zeroes each one), and how many it faults depends on what the
process freed before: the same convolution loop measured 40 ms or 100 ms in one process, 2.4x apart, on this
project's 2-core AMD EPYC host (2026-12-05). Raising the mmap threshold to its maximum and the trim threshold
out of reach keeps freed blocks in the heap for reuse: a ResNet-20 step at 128 rows went from 0.55-0.57 s to
0.44 s on one thread there. The cost is that a process keeps its peak heap until it ends, which a training
process reaches every step anyway. ``mallopt`` is glibc's; elsewhere (macOS, musl) nothing is changed.
PyTorch's CPU tuning guide gives the same advice in another form (preload jemalloc or tcmalloc); mallopt
needs nothing installed and acts from inside the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit hosts (4 MiB x sizeof(long))
TRIM_THRESHOLD = 1 << 30  # a freed gigabyte at the heap's top stays


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks (no mmap under 32 MiB, no trim under 1 GiB); True when it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
