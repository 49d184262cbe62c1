"""GPU benchmark: effective bandwidth of qatkit's fake-quantize forward and STE backward against a
device-to-device copy in the same run, on tensors of at least 2^28 elements.

    python scripts/bench_gpu.py [--log 28] [--json]

Effective bandwidth = bytes the algorithm must move / time: forward reads x and writes y
(+ 1/8 byte of mask when training), backward reads dY and the bit mask and writes dX. The copy
reads and writes one tensor. Goal: >= 85 % of the copy's bandwidth. torch's own fake quant is
timed alongside for reference.

Integer GEMV rows (issue 13): one 4096 x 4096 Linear at batch 1 and 64 on qatkit's CUDA integer
kernels (linear_int8, linear_w4a8 in the panel layout, linear_w4_weight_only, linear_w8_weight_only,
linear_dynamic_int8 (BitLinear's per-token inputs), linear_w2a8,
linear_w1a8) against fp32 ``F.linear`` (cuBLAS) and ``torch._int_mm`` in the same run, as ratios.
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


def bench_integer(n: int = 4096, k: int = 4096) -> list:
    """The integer kernels against F.linear (fp32) and torch._int_mm, batch 1 and 64: time and ratio."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g)
    s8 = w.abs().amax(1) / 127
    q8 = torch.round(w / s8[:, None]).clamp(-127, 127).to(torch.int8)
    gs4 = (w.reshape(n, k // 32, 32).abs().amax(2) / 7).clamp(min=1e-8)
    q4 = torch.round(w.reshape(n, k // 32, 32) / gs4[..., None]).clamp(-8, 7).reshape(n, k).to(torch.int8)
    t2 = torch.where(w > 0.5, 1, torch.where(w < -0.5, -1, 0)).to(torch.int8)
    b1 = torch.where(w >= 0, 1, -1).to(torch.int8)
    dev = "cuda"
    wf, q8d = w.to(dev), q8.to(dev)
    corr, oscale = torch.zeros(n, dtype=torch.int32, device=dev), (s8 * 0.02).to(dev)
    s8d = s8.float().to(dev)
    p4 = ops.pack_int4_w4(q4)
    panel, rows4, gsd = ops.pack_int4_panel(p4).to(dev), p4.to(dev), gs4.float().to(dev)
    t2p, b1p = ops.pack_ternary_t2(t2).to(dev), ops.pack_binary_b1(b1).to(dev)
    out = []
    for m in (1, 64):
        x = torch.randn(m, k, device=dev)
        xq = torch.randint(-127, 128, (max(m, 17), k), dtype=torch.int8, device=dev)  # _int_mm needs M > 16
        cases = {
            "fp32 F.linear (cuBLAS)": lambda: torch.nn.functional.linear(x, wf),
            "torch._int_mm (int8, M >= 17)": lambda: torch._int_mm(xq, q8d.t()),
            "qatkit linear_int8": lambda: ops.linear_int8(x, q8d, corr, oscale, 0.02, 0, -128, 127),
            "qatkit linear_w4a8 (panel)": lambda: ops.linear_w4a8(x, panel, gsd, 32, 0.02, 0, -128, 127),
            "qatkit linear_w4_weight_only": lambda: ops.linear_w4_weight_only(x, rows4, gsd, 32),
            "qatkit linear_w2a8": lambda: ops.linear_w2a8(x, t2p, corr, oscale, 0.02, 0, -128, 127),
            "qatkit linear_w1a8": lambda: ops.linear_w1a8(x, b1p, corr, oscale, 0.02, 0, -128, 127),
            "qatkit linear_dynamic_int8 (ternary, per-token: BitLinear)": lambda: ops.linear_dynamic_int8(x, t2p, 2, s8d),
            "qatkit linear_w8_weight_only": lambda: ops.linear_w8_weight_only(x, q8d, s8d),
        }
        times = {name: cuda_time(fn) for name, fn in cases.items()}
        base = times["fp32 F.linear (cuBLAS)"]
        out += [{"batch": m, "case": name, "us": round(t * 1e6, 1), "vs_fp32": round(base / t, 2)} for name, t in times.items()]
    return out


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
    integer_rows = bench_integer()
    if a.json:
        print(json.dumps({"info": info, "rows": rows_out, "integer": integer_rows}, indent=2))
        return
    print(f"{info['device']}, torch {info['torch']}, {n:,} elements per tensor\n")
    print(f"| {'dtype':<8} | {'case':<34} | {'ms':>8} | {'GB/s':>7} | {'copy GB/s':>9} | {'% of copy':>9} |")
    print("|" + "-" * 10 + "|" + "-" * 36 + "|" + "-" * 10 + "|" + "-" * 9 + "|" + "-" * 11 + "|" + "-" * 11 + "|")
    for r in rows_out:
        print(
            f"| {r['dtype']:<8} | {r['case']:<34} | {r['ms']:>8.3f} | {r['GBps']:>7.1f} | {r['copy_GBps']:>9.1f} | "
            f"{r['pct_of_copy']:>9.1f} |"
        )

    print("\n| batch | integer GEMV (4096 x 4096) | us | vs fp32 |")
    print("|---|---|---|---|")
    for r in integer_rows:
        print(f"| {r['batch']} | {r['case']} | {r['us']:.1f} | {r['vs_fp32']:.2f}x |")


if __name__ == "__main__":
    main()
