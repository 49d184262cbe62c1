"""qatkit.testing.timing: the benchmarks' allocator state (docs/benchmarks.md, seventeenth session)."""

import subprocess
import sys

import pytest

_PROBE = r"""
import resource, sys
import torch
from qatkit.testing.timing import steady_allocator

def faults_per_call(n=10):
    # oneDNN's depthwise conv: a 3 MiB output and its scratch per call
    x, w = torch.randn(364, 32, 8, 8), torch.randn(32, 1, 3, 3)
    torch.nn.functional.conv2d(x, w, None, 1, 1, 1, 32)
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.nn.functional.conv2d(x, w, None, 1, 1, 1, 32)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / n

if sys.argv[1] == "steady":
    print(steady_allocator(), file=sys.stderr)
print(faults_per_call())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_steady_allocator_serves_large_blocks_without_page_faults():
    """In a fresh process a depthwise conv's 3 MiB output and scratch are mapped anew on every call
    (a page fault per 4 KiB page written: ~2000 per call on the 2-core VMs); after
    steady_allocator() the heap keeps them (the faults vanish). Each state in its own process
    (this one's allocator is left alone)."""
    out = {}
    for state in ("fresh", "steady"):
        r = subprocess.run([sys.executable, "-c", _PROBE, state], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out[state] = float(r.stdout.split()[-1])
        if state == "steady":
            assert "mmap threshold 32 MiB" in r.stderr, r.stderr
    assert out["fresh"] > 500, out  # the premise: glibc maps the blocks anew in a fresh process
    assert out["steady"] < out["fresh"] / 10, out
