"""Process state for benchmarks (``scripts/bench_*.py``).

glibc's malloc serves a block above its mmap threshold (128 KiB in a fresh process) with a fresh
``mmap``, and gives it back to the kernel when it is freed, so every call that allocates a large
output (a conv's feature map, an encoder's activations) pays a page fault per 4 KiB page touched: on
the 2-core VMs 2153 faults and 4.5 ms for a 364 x 32 x 8 x 8 depthwise conv whose arithmetic takes
0.39 ms. The threshold rises to a freed mmapped block's size (at most 32 MiB) the first time one is
freed, so a process that has run a while (loaded a model, run a batch) serves the same blocks from
its heap, fault-free; a fresh benchmark process may or may not have reached that state, depending on
what it ran before (docs/benchmarks.md, seventeenth session). :func:`steady_allocator` fixes the
threshold at the value a warmed process reaches, for the baseline and qatkit alike.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def steady_allocator(mmap_threshold: int = 32 << 20) -> str:
    """Fix glibc malloc's mmap threshold at ``mmap_threshold`` bytes (the dynamic maximum, 32 MiB)
    and its trim threshold at twice that, as a long-running process's heap has them. Returns a short
    description for a benchmark's header ("glibc malloc: mmap threshold 32 MiB", or why not: not
    Linux / glibc)."""
    if not sys.platform.startswith("linux"):
        return "allocator unchanged (not Linux)"
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "allocator unchanged (no glibc mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, mmap_threshold) != 1 or mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold) != 1:
        return "allocator unchanged (mallopt refused)"
    return f"glibc malloc: mmap threshold {mmap_threshold >> 20} MiB"
