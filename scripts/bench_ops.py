"""Benchmark qatkit's fake-quantize ops against torch's, in one process, interleaved, after warm-up.

    python scripts/bench_ops.py [--rows 2048 --cols 4096 --threads 2 --rounds 30 --json]

Each row times a baseline and qatkit alternately (A, B, A, B, ...), reports the median time of
each and the ratio baseline / qatkit (> 1 means qatkit is faster), and checks the goal of the row.
Rows that compare against memory bandwidth use preallocated outputs: a fresh 32 MiB allocation
is an mmap whose page faults can cost more than the kernel itself.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

import qatkit
from qatkit import ops
from qatkit.testing.timing import core_to_core, steady_allocator
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the scripts' shared helpers
from qat_models import number_arg  # noqa: E402


def interleaved(fn_a, fn_b, rounds: int, warmup: int = 3):
    for _ in range(warmup):
        fn_a()
        fn_b()
    ta, tb = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn_a()
        t1 = time.perf_counter()
        fn_b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=number_arg(int, 1), default=2048)
    p.add_argument("--cols", type=number_arg(int, 1), default=4096)
    p.add_argument("--threads", type=number_arg(int, 1), default=2)
    p.add_argument("--rounds", type=number_arg(int, 1), default=30)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    # large outputs from the heap, as in a warmed process (qatkit.testing.timing)
    print(f"# {steady_allocator()}")
    print(f"# {core_to_core()}")
    torch.manual_seed(0)
    R, C = a.rows, a.cols
    x = torch.randn(R, C)
    g = torch.randn(R, C)
    s_t, z_t = torch.tensor([0.02]), torch.tensor([3], dtype=torch.int32)
    s_c = torch.rand(R) * 0.02 + 0.01
    z_c = torch.randint(-5, 5, (R,), dtype=torch.int32)
    s_f, z_f = float(s_t), int(z_t)
    out = torch.empty_like(x)
    dst = torch.empty_like(x)
    xb, outb = x.bfloat16(), torch.empty(R, C, dtype=torch.bfloat16)
    has_torch_fq = hasattr(torch, "fake_quantize_per_channel_affine")

    def fwd_bwd(fn):
        def run():
            xi = x.detach().requires_grad_()
            fn(xi).backward(g)

        return run

    rows = []

    def add(name, base_name, fa, fb, goal_desc, goal_ok):
        ta, tb = interleaved(fa, fb, a.rounds)
        ratio = ta / tb
        rows.append(
            {
                "case": name,
                "baseline": base_name,
                "baseline_ms": round(ta * 1e3, 3),
                "qatkit_ms": round(tb * 1e3, 3),
                "ratio": round(ratio, 3),
                "goal": goal_desc,
                "met": bool(goal_ok(ratio)),
            }
        )

    if has_torch_fq:
        add(
            "per-channel fwd+bwd (end to end)",
            "torch.fake_quantize_per_channel_affine",
            fwd_bwd(lambda xi: torch.fake_quantize_per_channel_affine(xi, s_c, z_c, 0, -128, 127)),
            fwd_bwd(lambda xi: ops.fake_quantize(xi, s_c, z_c, -128, 127, axis=0)),
            ">= 2.0x",
            lambda r: r >= 2.0,
        )
        add(
            "per-tensor fwd+bwd (end to end)",
            "torch.fake_quantize_per_tensor_affine",
            fwd_bwd(lambda xi: torch.fake_quantize_per_tensor_affine(xi, s_f, z_f, -128, 127)),
            fwd_bwd(lambda xi: ops.fake_quantize(xi, s_t, z_t, -128, 127)),
            ">= 1.5x",
            lambda r: r >= 1.5,
        )
        s_l, z_l = torch.tensor([0.02]), torch.tensor([3.0])
        s_lc, z_lc = s_c.clone(), z_c.float()

        def lsq(fn, s0, z0):
            def run():
                xi, si, zi = x.detach().requires_grad_(), s0.detach().requires_grad_(), z0.detach().requires_grad_()
                fn(xi, si, zi).backward(g)

            return run

        add(
            "LSQ per-tensor fwd+bwd (x, scale, zp grads)",
            "torch._fake_quantize_learnable_per_tensor",
            lsq(
                lambda xi, si, zi: torch._fake_quantize_learnable_per_tensor_affine(xi, si, zi, -128, 127, 1.0),
                s_l,
                z_l,
            ),
            lsq(lambda xi, si, zi: ops.fake_quantize_learnable(xi, si, zi, -128, 127), s_l, z_l),
            ">= 2.0x",
            lambda r: r >= 2.0,
        )
        add(
            "LSQ per-channel fwd+bwd (x, scale, zp grads)",
            "torch._fake_quantize_learnable_per_channel",
            lsq(
                lambda xi, si, zi: torch._fake_quantize_learnable_per_channel_affine(xi, si, zi, 0, -128, 127, 1.0),
                s_lc,
                z_lc,
            ),
            lsq(lambda xi, si, zi: ops.fake_quantize_learnable(xi, si, zi, -128, 127, axis=0), s_lc, z_lc),
            ">= 2.0x",
            lambda r: r >= 2.0,
        )
        add(
            "per-channel fwd (allocating)",
            "torch.fake_quantize_per_channel_affine",
            lambda: torch.fake_quantize_per_channel_affine(x, s_c, z_c, 0, -128, 127),
            lambda: ops.fake_quantize(x, s_c, z_c, -128, 127, axis=0),
            "(info)",
            lambda r: True,
        )
    else:
        print("torch ships no fake_quantize_per_*_affine: compare against an eager reference of torch primitives")
        add(
            "per-channel fwd+bwd (end to end)",
            "eager torch primitives",
            fwd_bwd(
                lambda xi: (
                    xi
                    + (
                        (torch.clamp(torch.round(xi / s_c[:, None]) + z_c[:, None], -128, 127) - z_c[:, None])
                        * s_c[:, None]
                        - xi
                    ).detach()
                )
            ),
            fwd_bwd(lambda xi: ops.fake_quantize(xi, s_c, z_c, -128, 127, axis=0)),
            ">= 2.0x",
            lambda r: r >= 2.0,
        )
    add(
        "per-channel fwd into preallocated out",
        "dst.copy_(x)",
        lambda: dst.copy_(x),
        lambda: ops.fake_quantize(x, s_c, z_c, -128, 127, axis=0, out=out),
        "qatkit <= 1.3x copy time (ratio >= 0.77)",
        lambda r: r >= 1 / 1.3,
    )
    s_g = torch.rand(R, C // 128) * 0.1 + 0.01
    z_g = torch.zeros(R, C // 128, dtype=torch.int32)
    add(
        "per-group(128) fwd into preallocated out",
        "dst.copy_(x)",
        lambda: dst.copy_(x),
        lambda: ops.fake_quantize(x, s_g, z_g, -8, 7, group_size=128, out=out),
        "(info)",
        lambda r: True,
    )
    add(
        "bf16 vs fp32 per-channel fwd, preallocated",
        "qatkit float32",
        lambda: ops.fake_quantize(x, s_c, z_c, -128, 127, axis=0, out=out),
        lambda: ops.fake_quantize(xb, s_c, z_c, -128, 127, axis=0, out=outb),
        "bf16 <= 0.65x fp32 time (ratio >= 1.54)",
        lambda r: r >= 1 / 0.65,
    )
    if hasattr(torch, "fused_moving_avg_obs_fake_quant"):
        on = torch.tensor([1])
        ours_buf = [
            torch.tensor([float("inf")]),
            torch.tensor([float("-inf")]),
            torch.ones(1),
            torch.zeros(1, dtype=torch.int32),
        ]
        theirs_buf = [t.clone() for t in ours_buf]
        add(
            "fused observer + fake quant fwd+bwd (per-tensor)",
            "torch.fused_moving_avg_obs_fake_quant",
            fwd_bwd(
                lambda xi: torch.fused_moving_avg_obs_fake_quant(xi, on, on, *theirs_buf, 0.01, 0, 255, 0, False, False)
            ),
            fwd_bwd(lambda xi: ops.fused_observe_fake_quantize(xi, *ours_buf, on, on, 0.01, True, 0, 255)),
            "(compare)",
            lambda r: True,
        )
    # Effective bandwidth rows: ratio * (bytes the algorithm must move / copy's 8 B) = share of
    # copy's bandwidth. Per-token and absmean read x twice (statistic, quantize) and write once
    # (12 B/element); TWN and BitNet's centred sign need two statistic passes (16 B/element); the
    # binarize backward reads x and dy and writes dx (12 B/element). The ternarize and per-token
    # backwards are the identity STE: autograd passes dy through, no kernel runs.
    for name, fn, nbytes in (
        ("quantize_per_token fwd into preallocated out", lambda: ops.quantize_per_token(x, out=out), 12),
        ("quantize_per_token fwd (allocating)", lambda: ops.quantize_per_token(x), 12),
        ("ternarize absmean fwd into preallocated out", lambda: ops.ternarize(x, "absmean", out=out), 12),
        ("ternarize absmean fwd (allocating)", lambda: ops.ternarize(x, "absmean"), 12),
        ("ternarize twn fwd into preallocated out", lambda: ops.ternarize(x, "twn", out=out), 16),
        ("ternarize twn per-channel fwd into preallocated out", lambda: ops.ternarize(x, "twn", 0, out=out), 16),
        ("ternarize twn fwd (allocating)", lambda: ops.ternarize(x, "twn"), 16),
        ("binarize mean_abs fwd into preallocated out", lambda: ops.binarize(x, "mean_abs", out=out), 12),
        ("binarize bitnet per-channel fwd into preallocated out", lambda: ops.binarize(x, "bitnet", 0, out=out), 16),
        ("binarize mean_abs fwd (allocating)", lambda: ops.binarize(x, "mean_abs"), 12),
        (
            "binarize bwd approx_sign into preallocated out",
            lambda: torch.ops.qatkit._binarize_backward.out(g, x, None, None, "approx_sign", 1.0, grad_input=out),
            12,
        ),
        (
            "binarize bwd approx_sign (allocating)",
            lambda: torch.ops.qatkit._binarize_backward(g, x, None, None, "approx_sign", 1.0),
            12,
        ),
    ):
        add(
            f"{name}, eff. BW share = ratio x {nbytes}/8",
            "dst.copy_(x)",
            lambda: dst.copy_(x),
            fn,
            "(info: allocating)" if "allocating" in name else "effective BW >= 80% of copy",
            lambda r, nb=nbytes: r * nb / 8 >= 0.8,
        )
    mask = torch.ops.qatkit._fake_quantize_with_mask(x, s_c, z_c, -128, 127, 0, None)[1]
    byte_mask = (torch.rand(R, C) > 0.1).float()
    add(
        "STE backward (bit mask) vs dY*mask (byte mask)",
        "g * byte_mask",
        lambda: torch.mul(g, byte_mask, out=dst),
        lambda: torch.ops.qatkit._fake_quantize_backward(g, mask),
        "(info)",
        lambda r: True,
    )

    info = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "qatkit": qatkit.build_info(),
        "shape": [R, C],
        "rounds": a.rounds,
    }
    if a.json:
        print(json.dumps({"info": info, "rows": rows}, indent=2))
        return
    print(
        f"qatkit {info['qatkit']['version']} (cpu isa {info['qatkit']['cpu_isa']}) vs torch {info['torch']}, "
        f"{R}x{C} float32, {torch.get_num_threads()} threads, median of {a.rounds} interleaved rounds\n"
    )
    hdr = f"| {'case':<58} | {'baseline':<42} | {'base ms':>8} | {'qatkit ms':>9} | {'ratio':>6} | goal"
    print(hdr)
    print("|" + "-" * 60 + "|" + "-" * 44 + "|" + "-" * 10 + "|" + "-" * 11 + "|" + "-" * 8 + "|------")
    for r in rows:
        mark = "" if r["goal"].startswith("(") else (" MET" if r["met"] else " MISSED")
        print(
            f"| {r['case']:<58} | {r['baseline']:<42} | {r['baseline_ms']:>8.3f} | {r['qatkit_ms']:>9.3f} | "
            f"{r['ratio']:>6.2f} | {r['goal']}{mark}"
        )


if __name__ == "__main__":
    main()
