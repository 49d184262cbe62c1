"""qatkit.testing.timing: the benchmarks' allocator state (docs/benchmarks.md, seventeenth session)."""

import subprocess
import sys

import pytest

# A fresh process serves a 20 MiB block with its own mmap (glibc's threshold starts at 128 KiB and
# rises only to blocks freed before); after steady_allocator() (threshold 32 MiB) the heap serves it.
# mallinfo2's hblkhd: the bytes held in mmapped blocks.
_PROBE = r"""
import ctypes, sys
import torch
from qatkit.testing.timing import steady_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "steady":
    print(steady_allocator(), file=sys.stderr)
before = libc.mallinfo2().hblkhd
t = torch.empty(20 << 20, dtype=torch.uint8)
print((libc.mallinfo2().hblkhd - before) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2: Linux only")
def test_steady_allocator_serves_large_blocks_from_the_heap():
    """A 20 MiB tensor is a fresh mmap in a fresh process (its pages faulted in on every call that
    allocates one: the fault counts in docs/benchmarks.md) and comes from the heap after
    steady_allocator(). Each state in its own process (this one's allocator is left alone)."""
    mapped = {}
    for state in ("fresh", "steady"):
        r = subprocess.run([sys.executable, "-c", _PROBE, state], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        mapped[state] = int(r.stdout.split()[-1])
        if state == "steady":
            assert "mmap threshold 32 MiB" in r.stderr, r.stderr
    assert mapped["fresh"] >= 20, mapped  # the premise: glibc maps the block
    assert mapped["steady"] == 0, mapped


_ONE_CPU = r"""
import os, qatkit
from qatkit.testing.timing import core_to_core
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
print(qatkit._C.core_to_core_ns(), "|", core_to_core())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sched_setaffinity: Linux only")
def test_core_to_core_round_trip_on_two_cpus_and_none_on_one():
    """core_to_core_ns pins two threads to the first two CPUs the process may use and times a cache
    line's round trip between them: positive and finite with two CPUs (a round trip takes at least
    one cache-line transfer each way, far over a nanosecond on any x86), -1 with one, and the
    caller's own CPU set is left as it was. Each case in its own process where the set changes."""
    import math
    import os

    import qatkit
    from qatkit.testing.timing import core_to_core

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this process may use one CPU: the two-CPU case cannot run here")
    before = os.sched_getaffinity(0)
    ns = qatkit._C.core_to_core_ns(2000, 3)
    assert math.isfinite(ns) and ns > 5, ns
    assert os.sched_getaffinity(0) == before
    assert "round trip" in core_to_core(2000, 1) and " ns " in core_to_core(2000, 1)
    for bad in ((0, 1), (10, 0), (-3, 5)):
        with pytest.raises(ValueError, match=r"trips and repeats must be >= 1, got trips=-?\d+ and repeats=-?\d+"):
            qatkit._C.core_to_core_ns(*bad)
    r = subprocess.run([sys.executable, "-c", _ONE_CPU], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    value, text = r.stdout.split("|")
    assert float(value) == -1.0 and "not measured" in text, r.stdout
