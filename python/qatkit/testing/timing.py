"""Process and machine state for benchmarks (``scripts/bench_*.py``).

glibc's malloc serves a block above its mmap threshold (128 KiB in a fresh process) with a fresh
``mmap``, and gives it back to the kernel when it is freed, so every call that allocates a large
output (a conv's feature map, an encoder's activations) pays a page fault per 4 KiB page touched: on
the 2-core VMs 2153 faults and 4.5 ms for a 364 x 32 x 8 x 8 depthwise conv whose arithmetic takes
0.39 ms. The threshold rises to a freed mmapped block's size (at most 32 MiB) the first time one is
freed, so a process that has run a while (loaded a model, run a batch) serves the same blocks from
its heap, fault-free; a fresh benchmark process may or may not have reached that state, depending on
what it ran before (docs/benchmarks.md, seventeenth session). :func:`steady_allocator` fixes the
threshold at the value a warmed process reaches, for the baseline and qatkit alike.

:func:`core_to_core` reports where the VM's first two CPUs sit: the round trip of one cache line
between threads pinned to them. On the project's 2-vCPU VMs it is ~60-130 ns when they share an L3
and ~400 ns when they do not; the host moves them, within a process too, and the integer kernels'
speed on small layers moved with it by up to 1.7x before their threads kept to their own rows
(docs/benchmarks.md, twenty-third session). The benchmark scripts print it with their tables.
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


def core_to_core(trips: int = 20000, repeats: int = 5) -> str:
    """A benchmark header's line: the round trip of one cache line between threads pinned to the
    first two CPUs this process may use (``qatkit._C.core_to_core_ns``: the median of ``repeats``
    runs of ``trips``), or why it was not measured."""
    from .. import _C

    ns = _C.core_to_core_ns(trips, repeats)
    if ns < 0:
        return "core-to-core round trip: not measured (fewer than two CPUs to pin, or not Linux)"
    return f"CPUs' round trip {ns:.0f} ns (shared L3: ~60-130 ns; not: ~400 ns)"
