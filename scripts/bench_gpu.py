"""GPU benchmark: effective bandwidth of qatkit's fake-quantize forward and STE backward against a
device-to-device copy in the same run, on tensors of at least 2^28 elements.

    python scripts/bench_gpu.py [--log 28] [--json]

Effective bandwidth = bytes the algorithm must move / time: forward reads x and writes y
(+ 1/8 byte of mask when training), backward reads dY and the bit mask and writes dX. The copy
reads and writes one tensor. Goal: >= 85 % of the copy's bandwidth. torch's own fake quant is
timed alongside for reference.
"""

import argparse
import json

import torch

import qatkit
from qatkit import ops


def cuda_time(fn, iters=20, warmup=3):
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3  # seconds


def bench_dtype(dtype: torch.dtype, n: int) -> list:
    """Rows for one dtype: qatkit forward/backward (and torch's forward for float32) vs copy."""
    es = torch.tensor([], dtype=dtype).element_size()
    x = torch.randn(n, device="cuda").to(dtype)
    rows = 1 << 14
    xc = x.view(rows, -1)
    s = torch.rand(rows, device="cuda") * 0.02 + 0.01
    z = torch.zeros(rows, device="cuda", dtype=torch.int32)
    out = torch.empty_like(xc)
    dst = torch.empty_like(x)
    g = torch.randn_like(xc)
    mask = torch.ops.qatkit._fake_quantize_with_mask(xc, s, z, -128, 127, 0, None)[1]
    t_copy = cuda_time(lambda: dst.copy_(x))
    bw_copy = 2 * n * es / t_copy
    cases = [
        ("fwd per-channel, out=", lambda: ops.fake_quantize(xc, s, z, -128, 127, axis=0, out=out), 2 * es),
        (
            "fwd per-channel + bit mask",
            lambda: torch.ops.qatkit._fake_quantize_with_mask(xc, s, z, -128, 127, 0, None),
            2 * es + 0.125,
        ),
        ("bwd STE from bit mask", lambda: torch.ops.qatkit._fake_quantize_backward(g, mask), 2 * es + 0.125),
    ]
    s1 = torch.full((1,), 0.02, device="cuda")
    z1 = torch.zeros(1, device="cuda")
    cases.append(
        (
            "LSQ bwd per-tensor (dX + reduced dS, dZ)",
            lambda: torch.ops.qatkit._fake_quantize_learnable_backward(g, xc, s1, z1, -128, 127, None, None, 1.0),
            3 * es,
        )
    )
    cases.append(
        (
            "LSQ bwd per-channel (dX + reduced dS, dZ)",
            lambda: torch.ops.qatkit._fake_quantize_learnable_backward(g, xc, s, z.float(), -128, 127, 0, None, 1.0),
            3 * es,
        )
    )
    if dtype == torch.float32:
        cases.append(
            (
                "torch per-channel fwd (cachemask)",
                lambda: torch.fake_quantize_per_channel_affine(xc, s, z, 0, -128, 127),
                2 * es,
            )
        )
    result = []
    for name, fn, bytes_per in cases:
        t = cuda_time(fn)
        bw = n * bytes_per / t
        result.append(
            {
                "dtype": str(dtype).split(".")[1],
                "case": name,
                "ms": round(t * 1e3, 4),
                "GBps": round(bw / 1e9, 1),
                "copy_GBps": round(bw_copy / 1e9, 1),
                "pct_of_copy": round(100 * bw / bw_copy, 1),
            }
        )
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", type=int, default=28, help="log2 of the element count")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    n = 1 << a.log
    props = torch.cuda.get_device_properties(0)
    rows_out = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        rows_out += bench_dtype(dtype, n)
        torch.cuda.empty_cache()
    info = {
        "device": props.name,
        "memory_GiB": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "qatkit": qatkit.build_info(),
        "elements": n,
    }
    if a.json:
        print(json.dumps({"info": info, "rows": rows_out}, indent=2))
        return
    print(f"{info['device']}, torch {info['torch']}, {n:,} elements per tensor\n")
    print(f"| {'dtype':<8} | {'case':<34} | {'ms':>8} | {'GB/s':>7} | {'copy GB/s':>9} | {'% of copy':>9} |")
    print("|" + "-" * 10 + "|" + "-" * 36 + "|" + "-" * 10 + "|" + "-" * 9 + "|" + "-" * 11 + "|" + "-" * 11 + "|")
    for r in rows_out:
        print(
            f"| {r['dtype']:<8} | {r['case']:<34} | {r['ms']:>8.3f} | {r['GBps']:>7.1f} | {r['copy_GBps']:>9.1f} | "
            f"{r['pct_of_copy']:>9.1f} |"
        )


if __name__ == "__main__":
    main()
