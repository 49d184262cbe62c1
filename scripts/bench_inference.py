"""Integer inference benchmark (issue 13): one N x K Linear layer (default 4096 x 4096) at batch 1
and 64, qatkit's integer kernels against fp32 ``F.linear`` and the peers at equal bits, in the same
process, interleaved, medians over rounds, reported as ratios to fp32.

DRAM regime (default): every variant cycles through enough distinct copies of its layer that the
weights it reads per cycle exceed the last-level cache ``--llc-factor`` times, so each call streams
its weight from memory as a model's layers do. ``--hot``: one layer called repeatedly (its weight
stays in cache as far as it fits).

    python3 scripts/bench_inference.py [--n 4096 --k 4096] [--batch 1,64] [--rounds 7] [--hot] [--json]

Variants: fp32 (F.linear, MKL; and oneDNN's Linear through torch.utils.mkldnn, the faster of the two
on AMD CPUs, where MKL's sgemm runs at 256-bit FMA rates: "vs best fp32" divides by the faster), qatkit w8a8 (ops.linear_int8 on the pack_int8_panel layout, as
qatkit.load gives a Linear: quantize + int8 GEMM + requantize; "row layout": the same op on the
plain [N, K] codes),
qatkit w4a8 g32 (ops.linear_w4a8: 4-bit weights, a scale per group of 32, 8-bit activations) against
torch._weight_int4pack_mm_for_cpu (4-bit weights, groups of 32, bf16 activations), qatkit w4
weight-only g32 (ops.linear_w4_weight_only: the same 4-bit weights dequantized in registers, fp32
activations and FMAs; on the "amx" table AMX-BF16 tiles, and then "avx512 table" runs the register
tiles in the same process), qatkit w8 weight-only (ops.linear_w8_weight_only: int8 per-channel weights, fp32 activations, what
qatkit.load gives int8_weight_only Linears) against torchao's Int8WeightOnlyConfig and
torch._weight_int8pack_mm, qatkit ternary / binary weight-only (linear_w4_weight_only with one group per row:
TWN / sign codes in its 4-bit layout with per-channel scales, what qatkit.load gives
ternary_weight_only, binary_weight_only and BinaryConnect Linears),
qatkit ternary w2a8 (ops.linear_w2a8: 2-bit TWN weights, 8-bit activations; no peer runs ternary),
qatkit binary w1a8 (ops.linear_w1a8 on the pack_binary_panel layout, as qatkit.load gives a Linear:
1-bit weights, 8-bit activations, the lookup-table kernel; "row layout": the same op on
pack_binary_b1's rows; no peer runs it),
qatkit xnor w1a1 (ops.linear_w1a1: 1-bit weights and activations binarized per sample, XNOR +
popcount; no peer runs it), qatkit bitnet w2a8 per-token (ops.linear_dynamic_int8: BitLinear's
absmean ternary weights with per-token dynamic int8 activations, what bitnet_b158 layers load onto;
no peer runs it) and qatkit w8a8 per-token dynamic (the same op on int8 per-channel weights) against
torchao's Int8DynamicActivationInt8WeightConfig (the same scheme),
torch._int_mm (int8 activations quantized the same way, int32 out, scaled), torch._weight_int8pack_mm
(int8 weight-only, bf16 activations: its fp32 path is not vectorized on x86), torch.ao dynamic
quantized Linear (fbgemm, int8 per-tensor weights and dynamic int8 activations), onnxruntime
(CPUExecutionProvider, same thread count) running a one-layer ONNX graph: MatMulInteger (dynamic
W8A8, as its quantize_dynamic writes it) and MatMulNBits (4-bit weights, blocks of 32; accuracy
level 0 = fp32 compute, 4 = int8 compute on dynamically quantized activations).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F

import qatkit
from qatkit import ops
from qatkit.testing.timing import core_to_core, steady_allocator
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the scripts' shared helpers
from qat_models import number_arg  # noqa: E402


def _llc_bytes() -> int:
    try:
        out = subprocess.run(["lscpu", "-B"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("L3 cache:"):
                return int(line.split(":")[1].split()[0])
    except (OSError, ValueError):
        pass
    return 32 << 20


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---------------------------------------------------------------- variants: make(w_fp32) -> (fn(x), weight bytes)


def v_fp32(w):
    w = w.clone()
    return (lambda x: F.linear(x, w)), w.numel() * 4


def v_fp32_onednn(w):
    # torch's other fp32 Linear: oneDNN (torch.utils.mkldnn), the kernel torch.compile's freezing
    # picks for Linear on CPU. On AMD CPUs MKL's sgemm runs at 256-bit FMA rates (Zen 5: ~220 GFLOPS on
    # 2 cores against oneDNN's ~450 at 416 x 1536 x 384; docs/benchmarks.md, forty-fourth session),
    # so "vs best fp32" divides by the faster of the two.
    from torch.utils import mkldnn as mkldnn_utils
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    m = mkldnn_utils.to_mkldnn(lin.eval())

    def f(x):
        with torch.no_grad():
            return m(x)
    return f, w.numel() * 4


def _int8_weight(w):
    s = w.abs().amax(1) / 127
    q = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
    return q, s


def v_qatkit_w8a8(w, panel=True):
    q, s = _int8_weight(w)
    sx, zp = 4.0 / 255, 128  # a static input range [-2, 2] as calibration would give for N(0, 1) inputs
    corr = ((128 - zp) * q.long().sum(1)).to(torch.int32)
    scale = (torch.tensor(sx, dtype=torch.float32) * s).float()
    wq = ops.pack_int8_panel(q) if panel else q  # the panel layout: what qatkit.load gives a Linear
    return (lambda x: ops.linear_int8(x, wq, corr, scale, sx, zp, 0, 255)), q.numel() + 8 * q.shape[0]


def v_qatkit_w8a8_rows(w):
    return v_qatkit_w8a8(w, panel=False)


def v_qatkit_w2a8(w):
    a = w.abs().mean(1, keepdim=True) * 0.7  # TWN's threshold and scale
    t = torch.where(w > a, 1, torch.where(w < -a, -1, 0)).to(torch.int8)
    alpha = (w.abs() * (t != 0)).sum(1) / (t != 0).sum(1).clamp(min=1)
    sx, zp = 4.0 / 255, 128
    corr = ((128 - zp) * t.long().sum(1)).to(torch.int32)
    scale = (torch.tensor(sx, dtype=torch.float32) * alpha).float()
    packed = ops.pack_ternary_t2(t)
    return (lambda x: ops.linear_w2a8(x, packed, corr, scale, sx, zp, 0, 255)), packed.numel() + 8 * t.shape[0]


def v_qatkit_w1a8(w, panel=True):
    t = torch.where(w >= 0, 1, -1).to(torch.int8)
    alpha = w.abs().mean(1)  # XNOR-Net's weight scale
    sx, zp = 4.0 / 255, 128
    corr = ((128 - zp) * t.long().sum(1)).to(torch.int32)
    scale = (torch.tensor(sx, dtype=torch.float32) * alpha).float()
    packed = ops.pack_binary_b1(t)
    if panel:
        packed = ops.pack_binary_panel(packed)
    return (lambda x: ops.linear_w1a8(x, packed, corr, scale, sx, zp, 0, 255)), packed.numel() + 8 * t.shape[0]


def v_qatkit_w1a8_rows(w):
    return v_qatkit_w1a8(w, panel=False)


def v_qatkit_xnor(w):
    t = torch.where(w >= 0, 1, -1).to(torch.int8)
    alpha = w.abs().mean(1).float().contiguous()
    packed = ops.pack_binary_b1(t)
    return (lambda x: ops.linear_w1a1(x, packed, alpha)), packed.numel() + 4 * t.shape[0]


def v_qatkit_bitnet(w):
    """BitLinear (bitnet_b158): absmean ternary weights, per-token dynamic int8 activations."""
    s = w.abs().mean().clamp(min=1e-5)
    t = torch.round(w / s).clamp(-1, 1).to(torch.int8)
    packed, ws = ops.pack_ternary_t2(t), s.expand(w.shape[0]).float().contiguous()
    return (lambda x: ops.linear_dynamic_int8(x, packed, 2, ws)), packed.numel() + 4


def v_qatkit_w8a8_per_token(w):
    """int8 per-channel weights, per-token dynamic int8 activations (the panel layout)."""
    q, s = _int8_weight(w)
    packed, ws = ops.pack_int8_panel(q), s.float().contiguous()
    return (lambda x: ops.linear_dynamic_int8(x, packed, 8, ws)), q.numel() + 4 * q.shape[0]


def _torchao_linear(w, config_name):
    """One bias-free Linear quantized by torchao's quantize_ with the named config."""
    import torchao.quantization as tq

    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    m = torch.nn.Sequential(lin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.quantize_(m, getattr(tq, config_name)())
        m(torch.randn(2, w.shape[1]))  # fails here (not mid-benchmark) where this install cannot run it
    return torch.no_grad()(m), w.numel() + 4 * w.shape[0]


def v_torchao_w8a8_per_token(w):
    """torchao's Int8DynamicActivationInt8WeightConfig: per-token dynamic int8 activations, int8
    per-channel weights (the same scheme as qatkit w8a8 per-token)."""
    return _torchao_linear(w, "Int8DynamicActivationInt8WeightConfig")


def _int4_groups(w, gs=32):
    n, k = w.shape
    s = (w.reshape(n, k // gs, gs).abs().amax(2) / 7).clamp(min=1e-8)
    q = torch.round(w.reshape(n, k // gs, gs) / s[..., None]).clamp(-8, 7).reshape(n, k).to(torch.int8)
    return q, s


def v_qatkit_w4a8(w):
    q, s = _int4_groups(w)
    sx, zp = 4.0 / 255, 128
    packed = ops.pack_int4_panel(ops.pack_int4_w4(q))  # the layout qatkit.load gives its W4A8 Linears
    s = s.float().contiguous()
    s = ops.block_w4_scales(s) if s.shape[0] % 16 == 0 else s  # and their scales in the panel's blocks
    return (lambda x: ops.linear_w4a8(x, packed, s, 32, sx, zp, 0, 255)), packed.numel() + 4 * s.numel()


def v_qatkit_w4_weight_only(w):
    """int4_weight_only g32 as qatkit.load gives it: the panel layout and the scales in its blocks."""
    q, s = _int4_groups(w)
    packed = ops.pack_int4_panel(ops.pack_int4_w4(q))
    s = s.float().contiguous()
    s = ops.block_w4_scales(s) if s.shape[0] % 16 == 0 else s
    return (lambda x: ops.linear_w4_weight_only(x, packed, s, 32)), packed.numel() + 4 * s.numel()


def v_qatkit_w4_weight_only_avx512(w):
    """The same op and layout on the AVX-512 table's register tiles, where the active table is "amx"
    (whose AMX-BF16 tiles run it): the table switched for each call and back, so both run in one
    process, interleaved."""
    if qatkit._C.cpu_isa() != "amx" or not qatkit.build_info()["amx_bf16"]:
        raise NotImplementedError("the active table is not amx with AMX-BF16 tiles: the plain variant is this one")
    fn, nbytes = v_qatkit_w4_weight_only(w)

    def call(x):
        qatkit._C.set_cpu_isa("avx512")
        try:
            return fn(x)
        finally:
            qatkit._C.set_cpu_isa("amx")

    return call, nbytes


def v_qatkit_w4_weight_only_rows(w):
    """The same op on pack_int4_w4's row layout with [N, G] scales (rearranged per call)."""
    q, s = _int4_groups(w)
    packed = ops.pack_int4_w4(q)
    s = s.float().contiguous()
    return (lambda x: ops.linear_w4_weight_only(x, packed, s, 32)), packed.numel() + 4 * s.numel()


def _row_weight_only(codes, scale):
    """ops.linear_w4_weight_only with one group per row (per-channel scales), the layout qatkit.load
    gives ternary / binary weight-only Linears: the panel, its blocked scales."""
    n, k = codes.shape
    packed = ops.pack_int4_panel(ops.pack_int4_w4(codes))
    s = ops.block_w4_scales(scale.float().reshape(n, 1).contiguous())
    return (lambda x: ops.linear_w4_weight_only(x, packed, s, k)), packed.numel() + 4 * n


def v_qatkit_w8_weight_only(w):
    """int8_weight_only as qatkit.load gives it: ops.linear_w8_weight_only, per-channel scales."""
    q, s = _int8_weight(w)
    s = s.float().contiguous()
    return (lambda x: ops.linear_w8_weight_only(x, q, s)), q.numel() + 4 * q.shape[0]


def v_torchao_w8_weight_only(w):
    """torchao's Int8WeightOnlyConfig (int8 per-channel weights, float activations)."""
    return _torchao_linear(w, "Int8WeightOnlyConfig")


def v_qatkit_ternary_weight_only(w):
    a = w.abs().mean(1, keepdim=True) * 0.7  # TWN's threshold and scale
    t = torch.where(w > a, 1, torch.where(w < -a, -1, 0)).to(torch.int8)
    alpha = (w.abs() * (t != 0)).sum(1) / (t != 0).sum(1).clamp(min=1)
    return _row_weight_only(t, alpha)


def v_qatkit_binary_weight_only(w):
    return _row_weight_only(torch.where(w >= 0, 1, -1).to(torch.int8), w.abs().mean(1))


def v_int4pack(w):
    q, s = _int4_groups(w)
    packed = torch._convert_weight_to_int4pack_for_cpu((q.to(torch.int32) + 8), 2)
    sz = torch.stack([s.t(), torch.zeros_like(s.t())], 2).to(torch.bfloat16).contiguous()  # [K/32, N, 2]
    return (lambda x: torch._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), packed, 32, sz)), packed.numel() + 2 * sz.numel()


def v_int_mm(w):
    q, s = _int8_weight(w)
    qt = q.t()  # _int_mm takes [K, N]
    sx = 4.0 / 255
    scale = (sx * s).float()

    def f(x):
        a = torch.round(x * (1.0 / sx)).clamp(-128, 127).to(torch.int8)
        return torch._int_mm(a, qt).float() * scale

    return f, q.numel() + 4 * q.shape[0]


def v_weight_int8pack(w):
    q, s = _int8_weight(w)
    sb = s.to(torch.bfloat16)
    return (lambda x: torch._weight_int8pack_mm(x.to(torch.bfloat16), q, sb)), q.numel() + 2 * q.shape[0]


def v_ao_dynamic(w):
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    return m, w.numel() + 4 * w.shape[0]


def _ort_session(nodes, inits, k, n, opset_extra=()):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), *opset_extra])
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    # idle onnxruntime threads must not spin: they would take the cores from the interleaved variants
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": x.numpy()})[0]


def v_ort_matmulinteger(w):
    """onnxruntime's dynamic W8A8 (what its quantize_dynamic writes): DynamicQuantizeLinear on the
    input, MatMulInteger against int8 weights, Cast, one Mul by x_scale * w_scale[n]."""
    from onnx import numpy_helper

    q, s = _int8_weight(w)
    k, n = w.shape[1], w.shape[0]
    from onnx import helper

    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "wq", "xz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=1),
             helper.make_node("Mul", ["xs", "ws"], ["sc"]),
             helper.make_node("Mul", ["accf", "sc"], ["y"])]
    inits = [numpy_helper.from_array(q.t().contiguous().numpy(), "wq"), numpy_helper.from_array(s.float().numpy(), "ws")]
    return _ort_session(nodes, inits, k, n), q.numel() + 4 * n


def _ort_nbits(w, accuracy_level):
    from onnx import helper, numpy_helper

    q, s = _int4_groups(w)
    n, k = w.shape
    u = (q.to(torch.int16) + 8).to(torch.uint8).reshape(n, k // 32, 16, 2)  # element 2j low nibble, 2j + 1 high
    packed = (u[..., 0] | (u[..., 1] << 4)).contiguous()
    node = helper.make_node("MatMulNBits", ["x", "wq", "ws"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=32, accuracy_level=accuracy_level)
    inits = [numpy_helper.from_array(packed.numpy(), "wq"), numpy_helper.from_array(s.float().reshape(-1).numpy(), "ws")]
    return _ort_session([node], inits, k, n, [helper.make_opsetid("com.microsoft", 1)]), packed.numel() + 4 * s.numel()


def v_ort_nbits_fp32(w):
    return _ort_nbits(w, 0)


def v_ort_nbits_int8(w):
    return _ort_nbits(w, 4)


VARIANTS = {
    "fp32 F.linear": v_fp32,
    "fp32 oneDNN Linear (torch.utils.mkldnn)": v_fp32_onednn,
    "qatkit w8a8": v_qatkit_w8a8,
    "qatkit w8a8 (row layout)": v_qatkit_w8a8_rows,
    "qatkit w4a8 g32": v_qatkit_w4a8,
    "qatkit w4 weight-only g32 (fp32 act)": v_qatkit_w4_weight_only,
    "qatkit w4 weight-only g32 (fp32 act; row layout)": v_qatkit_w4_weight_only_rows,
    "qatkit w4 weight-only g32 (fp32 act; avx512 table)": v_qatkit_w4_weight_only_avx512,
    "qatkit w8 weight-only (fp32 act)": v_qatkit_w8_weight_only,
    "torchao int8 weight-only (fp32 act)": v_torchao_w8_weight_only,
    "qatkit ternary weight-only (fp32 act)": v_qatkit_ternary_weight_only,
    "qatkit binary weight-only (fp32 act)": v_qatkit_binary_weight_only,
    "torch._weight_int4pack_mm_for_cpu (w4 g32 bf16-act)": v_int4pack,
    "qatkit ternary w2a8": v_qatkit_w2a8,
    "qatkit binary w1a8": v_qatkit_w1a8,
    "qatkit binary w1a8 (row layout)": v_qatkit_w1a8_rows,
    "qatkit xnor w1a1": v_qatkit_xnor,
    "qatkit bitnet w2a8 per-token (BitLinear)": v_qatkit_bitnet,
    "qatkit w8a8 per-token dynamic": v_qatkit_w8a8_per_token,
    "torchao int8 dynamic per-token (w8a8)": v_torchao_w8a8_per_token,
    "torch._int_mm (w8a8)": v_int_mm,
    "torch._weight_int8pack_mm (w8 bf16-act)": v_weight_int8pack,
    "torch.ao dynamic Linear (w8a8)": v_ao_dynamic,
    "onnxruntime MatMulInteger (w8a8 dynamic)": v_ort_matmulinteger,
    "onnxruntime MatMulNBits (w4 g32 fp32-compute)": v_ort_nbits_fp32,
    "onnxruntime MatMulNBits (w4 g32 int8-compute)": v_ort_nbits_int8,
}


def bench(names, n, k, batches, rounds, hot, llc_factor, calls):
    llc = _llc_bytes()
    torch.manual_seed(0)
    results = {}
    layers = {}
    for name in names:
        copies = []
        total = 0
        target = 1 if hot else None
        while True:
            w = torch.randn(n, k) / k**0.5
            try:
                fn, nbytes = VARIANTS[name](w)
            except (RuntimeError, AttributeError, ImportError, NotImplementedError, TypeError) as e:  # a peer this install lacks
                print(f"  {name}: unavailable ({type(e).__name__}: {str(e).splitlines()[0][:100]})")
                copies = None
                break
            copies.append(fn)
            total += nbytes
            if (target and len(copies) >= target) or (not target and total >= llc_factor * llc):
                break
        if copies:
            layers[name] = (copies, nbytes)
    for b in batches:
        x = torch.randn(b, k)
        for name, (copies, _) in layers.items():  # warm-up (and a first call that may pack weights)
            for fn in copies:
                fn(x)
        times = {name: [] for name in layers}
        for _ in range(rounds):
            for name, (copies, _) in layers.items():
                reps = max(calls, len(copies))
                t0 = time.perf_counter()
                for i in range(reps):
                    copies[i % len(copies)](x)
                times[name].append((time.perf_counter() - t0) / reps)
        base = statistics.median(times[names[0]])
        best_fp32 = min((statistics.median(times[name]) for name in layers if name.startswith("fp32")), default=base)
        for name in layers:
            med = statistics.median(times[name])
            results[(name, b)] = {"variant": name, "batch": b, "us": med * 1e6, "ratio": base / med,
                                  "ratio_best_fp32": best_fp32 / med,
                                  "gbs": layers[name][1] / med / 1e9, "copies": len(layers[name][0])}
    return results, llc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=number_arg(int, 1), default=4096)
    ap.add_argument("--k", type=number_arg(int, 1), default=4096)
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--rounds", type=number_arg(int, 1), default=7)
    ap.add_argument("--calls", type=number_arg(int, 1), default=16, help="calls per variant per round (at least one per copy)")
    ap.add_argument("--threads", type=number_arg(int, 1), default=2)
    ap.add_argument("--hot", action="store_true", help="one layer, called repeatedly (cache-resident as far as it fits)")
    ap.add_argument("--llc-factor", type=number_arg(float, 0, strict=True), default=4.0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    # large outputs from the heap, as in a warmed process (qatkit.testing.timing)
    print(f"# {steady_allocator()}")
    print(f"# {core_to_core()}")
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        ap.error(f"--variants: expected a comma-separated list of {', '.join(VARIANTS)}; got {unknown or a.variants!r}")
    try:
        batches = [int(b) for b in a.batch.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        ap.error(f"--batch: expected a comma-separated list of integers >= 1, got {a.batch!r}")
    res, llc = bench(names, a.n, a.k, batches, a.rounds, a.hot, a.llc_factor, a.calls)
    info = {"cpu": _cpu_model(), "isa": qatkit._C.cpu_isa(), "threads": a.threads, "torch": torch.__version__,
            "llc_mib": llc >> 20, "regime": "hot" if a.hot else f"DRAM (weights per cycle >= {a.llc_factor:g} x LLC)",
            "shape": f"{a.n} x {a.k}"}
    if a.json:
        print(json.dumps({"info": info, "rows": list(res.values())}, indent=1))
        return
    print(f"# {info['shape']} Linear, {info['regime']}, {info['threads']} threads, {info['cpu']} (qatkit ISA "
          f"{info['isa']}), torch {info['torch']}, medians of {a.rounds} interleaved rounds")
    # "vs fp32": against the first variant (fp32 F.linear by default); "vs best fp32": against the
    # fastest fp32 variant in the run (F.linear or oneDNN), per batch
    print(f"| variant | batch | us / call | weight GB/s | vs {names[0]} | vs best fp32 | copies |")
    print("|---|---|---|---|---|---|---|")
    for r in res.values():
        print(f"| {r['variant']} | {r['batch']} | {r['us']:.0f} | {r['gbs']:.1f} | {r['ratio']:.2f}x | "
              f"{r['ratio_best_fp32']:.2f}x | {r['copies']} |")
    print(f"# at the end: {core_to_core()}")


if __name__ == "__main__":
    main()
