"""Integer convolutions (issue 13): ``ops.conv2d_int8`` (W8A8, im2col on the codes, the ISA's int8
GEMM on the ``pack_int8_panel`` layout that the plans give groups == 1 convs; also on the row layout) and ``ops.conv2d_w1a1`` (XNOR) against ``F.conv2d`` (oneDNN fp32) on the same input, 3x3,
padding 1, groups 1, in the same process, interleaved, medians; ratios to fp32. A second table:
depthwise 3x3 convs (groups = C) on ``ops.conv2d_int8`` (one GEMM per group) against oneDNN's fp32
depthwise conv.

    python3 scripts/bench_conv_int8.py [--rounds 9] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import qatkit
from qatkit import ops

SHAPES = [(364, 1, 8, 32), (364, 32, 8, 64), (364, 64, 4, 64), (8, 256, 28, 256), (1, 256, 28, 256)]
DEPTHWISE = [(364, 32, 8), (364, 64, 4), (8, 256, 28), (1, 256, 28)]


def _medians(fns: dict, rounds: int) -> dict:
    for f in fns.values():
        f()
    times = {k_: [] for k_ in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            reps = 3
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            times[name].append((time.perf_counter() - t0) / reps)
    return {k_: statistics.median(v) * 1e3 for k_, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"# 3x3 convs, padding 1, {a.threads} threads, qatkit ISA {qatkit._C.cpu_isa()}, torch {torch.__version__}, "
          f"medians of {a.rounds} interleaved rounds")
    print("| input (B, C, H=W) -> N | fp32 ms | int8 ms | int8 vs fp32 | int8 row layout vs fp32 | xnor ms | xnor vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for b, c, hw, n in SHAPES:
        x = torch.randn(b, c, hw, hw)
        w = torch.randn(n, c, 3, 3)
        k = c * 9
        q8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        q = F.pad(q8, (0, -k % 32)).contiguous()  # the row layout (zero-padded to 32)
        qp = ops.pack_int8_panel(q8)  # the panel layout: what the plans give groups == 1 convs
        corr, scale = torch.zeros(n, dtype=torch.int32), torch.rand(n) * 1e-3
        pb = ops.pack_binary_b1(torch.where(torch.randn(n, k) >= 0, 1, -1).to(torch.int8))
        ws = torch.rand(n) + 0.1
        fns = {
            "fp32": lambda: F.conv2d(x, w, None, 1, 1),
            "int8": lambda: ops.conv2d_int8(x, qp, 8, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, 0.02, 128, 0, 255),
            "int8 rows": lambda: ops.conv2d_int8(x, q, 8, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, 0.02, 128, 0,
                                                 255),
            "xnor": lambda: ops.conv2d_w1a1(x, pb, (3, 3), (1, 1), (1, 1), (1, 1), ws),
        }
        med = _medians(fns, a.rounds)
        print(f"| {b}, {c}, {hw} -> {n} | {med['fp32']:.2f} | {med['int8']:.2f} | {med['fp32'] / med['int8']:.2f}x | "
              f"{med['fp32'] / med['int8 rows']:.2f}x | {med['xnor']:.2f} | {med['fp32'] / med['xnor']:.2f}x |")
    print("\n| depthwise input (B, C, H=W) | fp32 ms | int8 ms | int8 vs fp32 |")
    print("|---|---|---|---|")
    for b, c, hw in DEPTHWISE:
        x = torch.randn(b, c, hw, hw)
        w = torch.randn(c, 1, 3, 3)
        q = F.pad(torch.randint(-127, 128, (c, 9), dtype=torch.int8), (0, 23)).contiguous()
        corr, scale = torch.zeros(c, dtype=torch.int32), torch.rand(c) * 1e-3
        fns = {
            "fp32": lambda: F.conv2d(x, w, None, 1, 1, 1, c),
            "int8": lambda: ops.conv2d_int8(x, q, 8, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, 0.02, 128, 0, 255,
                                            None, c),
        }
        med = _medians(fns, a.rounds)
        print(f"| {b}, {c}, {hw} | {med['fp32']:.2f} | {med['int8']:.2f} | {med['fp32'] / med['int8']:.2f}x |")


if __name__ == "__main__":
    main()
