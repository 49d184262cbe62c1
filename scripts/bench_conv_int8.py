"""Integer convolutions (issue 13): ``ops.conv2d_int8`` (W8A8, im2col on the codes, the ISA's int8
GEMM on the ``pack_int8_panel`` layout that the plans give groups == 1 convs; also on the row
layout; ternary and binary W1A8 weights on their packed layouts), ``ops.conv2d_w1a1`` (XNOR) and
``ops.conv2d_w4a8`` (W4A8, groups of 32 along PyTorch's (c, i, j) order)
against ``F.conv2d`` (oneDNN fp32) on the same input, 3x3, padding 1, groups 1, in the same
process, interleaved, medians; ratios to fp32. A second table: depthwise 3x3 convs (groups = C) on
``ops.conv2d_int8`` against oneDNN's fp32 depthwise conv, NCHW and channels_last inputs. A third: whole CNNs (ResNet-18 and
MobileNetV2 in torchvision's layout, CIFAR stems, 32 x 32 inputs, batch 8; random weights,
calibrated on random batches: speed only) FP32 against the same model PTQ'd, exported and loaded
back on the integer kernels (``qatkit.load_into``) at w8a8, w4a8, ternary_twn, binary_w1a8 and xnor_w1a1,
with the layers' kernels and the cosine of the loaded model's logits to the PTQ (fake-quant) model's;
each also with channels_last inputs (FP32 converted with ``.to(memory_format=torch.channels_last)``;
the integer convs follow their input's format). ``load_into`` fuses each ReLU / ReLU6 after a conv in
an ``nn.Sequential`` into the conv's kernel (``qatkit.fuse_activations``: MobileNetV2's 35; ResNet-18's
blocks have their own forward): where it fused any, the same file loaded with
``fuse_activations=False`` is timed too, in the same rounds, and the table gives the fusion's gain.

    python3 scripts/bench_conv_int8.py [--rounds 9] [--threads 2] [--no-models]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import qatkit
from qatkit import ops
from qatkit.testing.timing import core_to_core, steady_allocator
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the scripts' shared helpers
from qat_models import number_arg  # noqa: E402

SHAPES = [(364, 1, 8, 32), (8, 1, 28, 32), (364, 32, 8, 64), (364, 64, 4, 64), (8, 256, 28, 256), (1, 256, 28, 256)]
# (B, C, H=W, stride): NCHW inputs of 16+ pixels a row at stride 1 (8+ for one image) run planar,
# the others channels-last (docs/integer.md)
DEPTHWISE = [(364, 32, 8, 1), (364, 64, 4, 1), (8, 256, 28, 1), (1, 256, 28, 1), (8, 144, 32, 1), (8, 96, 32, 2),
             (8, 96, 112, 2)]


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
    ap.add_argument("--rounds", type=number_arg(int, 1), default=9)
    ap.add_argument("--threads", type=number_arg(int, 1), default=2)
    ap.add_argument("--no-models", action="store_true", help="skip the whole-model table (PTQ + export + load)")
    ap.add_argument("--no-equalize", action="store_true",
                    help="PTQ without cross-layer equalization, which keeps MobileNetV2's ReLU6s as a QAT model "
                         "keeps them (equalization turns 34 of its 35 into ReLUs); both fuse into the convs")
    ap.add_argument("--model", choices=["all", "resnet18", "mobilenet_v2"], default="all",
                    help="the whole-model table's models")
    ap.add_argument("--no-shapes", action="store_true", help="skip the per-shape table")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    # large outputs from the heap, as in a warmed process (qatkit.testing.timing)
    print(f"# {steady_allocator()}")
    print(f"# {core_to_core()}")
    torch.manual_seed(0)
    print(f"# 3x3 convs, padding 1, {a.threads} threads, qatkit ISA {qatkit._C.cpu_isa()}, torch {torch.__version__}, "
          f"medians of {a.rounds} interleaved rounds")
    if a.no_shapes:
        return None if a.no_models else _models(a.rounds, a.no_equalize, a.model)
    print("| input (B, C, H=W) -> N | fp32 ms | int8 ms | int8 vs fp32 | int8 row layout vs fp32 | ternary vs fp32 | "
          "binary W1A8 vs fp32 | xnor ms | xnor vs fp32 | w4a8 g32 vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for b, c, hw, n in SHAPES:
        x = torch.randn(b, c, hw, hw)
        w = torch.randn(n, c, 3, 3)
        k = c * 9
        q8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        q = F.pad(q8, (0, -k % 32)).contiguous()  # the row layout (zero-padded to 32)
        qp = ops.pack_int8_panel(q8)  # the panel layout: what the plans give groups == 1 convs
        corr, scale = torch.zeros(n, dtype=torch.int32), torch.rand(n) * 1e-3
        pt = ops.pack_ternary_t2(torch.randint(-1, 2, (n, k), dtype=torch.int8))
        pb = ops.pack_binary_b1(torch.where(torch.randn(n, k) >= 0, 1, -1).to(torch.int8))
        ws = torch.rand(n) + 0.1
        act = (corr, scale, 0.02, 128, 0, 255)
        fns = {
            "fp32": lambda: F.conv2d(x, w, None, 1, 1),
            "int8": lambda: ops.conv2d_int8(x, qp, 8, (3, 3), (1, 1), (1, 1), (1, 1), *act),
            "int8 rows": lambda: ops.conv2d_int8(x, q, 8, (3, 3), (1, 1), (1, 1), (1, 1), *act),
            "ternary": lambda: ops.conv2d_int8(x, pt, 2, (3, 3), (1, 1), (1, 1), (1, 1), *act),
            "binary": lambda: ops.conv2d_int8(x, pb, 1, (3, 3), (1, 1), (1, 1), (1, 1), *act),
            "xnor": lambda: ops.conv2d_w1a1(x, pb, (3, 3), (1, 1), (1, 1), (1, 1), ws),
        }
        if k % 32 == 0:  # W4A8 with groups of 32 along (c, i, j): the panel layout the plans give
            p4 = ops.pack_int4_panel(ops.pack_int4_w4(torch.randint(-8, 8, (n, k), dtype=torch.int8)))
            gs4 = torch.rand(n, k // 32) * 1e-2
            fns["w4a8"] = lambda: ops.conv2d_w4a8(x, p4, (3, 3), (1, 1), (1, 1), (1, 1), gs4, 32, 0.02, 128, 0, 255)
        med = _medians(fns, a.rounds)
        r = {k_: med["fp32"] / v for k_, v in med.items()}
        w4 = f"{r['w4a8']:.2f}x" if "w4a8" in r else "- (K = 9 C: no groups of 32)"
        print(f"| {b}, {c}, {hw} -> {n} | {med['fp32']:.2f} | {med['int8']:.2f} | {r['int8']:.2f}x | "
              f"{r['int8 rows']:.2f}x | {r['ternary']:.2f}x | {r['binary']:.2f}x | {med['xnor']:.2f} | "
              f"{r['xnor']:.2f}x | {w4} |")
    print("\n| depthwise input (B, C, H=W), stride | fp32 ms | int8 ms | int8 vs fp32 | "
          "channels_last: fp32 ms | int8 ms | int8 vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for b, c, hw, st in DEPTHWISE:
        x = torch.randn(b, c, hw, hw)
        xc = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, 1, 3, 3)
        q = F.pad(torch.randint(-127, 128, (c, 9), dtype=torch.int8), (0, 23)).contiguous()
        corr, scale = torch.zeros(c, dtype=torch.int32), torch.rand(c) * 1e-3
        fns = {}
        for key, xi in (("", x), (" cl", xc)):  # NCHW (planar or channels-last form), then NHWC
            fns["fp32" + key] = lambda xi=xi: F.conv2d(xi, w, None, st, 1, 1, c)
            fns["int8" + key] = lambda xi=xi: ops.conv2d_int8(xi, q, 8, (3, 3), (st, st), (1, 1), (1, 1), corr, scale,
                                                              0.02, 128, 0, 255, None, c)
        med = _medians(fns, a.rounds)
        print(f"| {b}, {c}, {hw}, {st} | {med['fp32']:.2f} | {med['int8']:.2f} | {med['fp32'] / med['int8']:.2f}x | "
              f"{med['fp32 cl']:.2f} | {med['int8 cl']:.2f} | {med['fp32 cl'] / med['int8 cl']:.2f}x |")
    if not a.no_models:
        _models(a.rounds, a.no_equalize, a.model)
    print(f"# at the end: {core_to_core()}")


MODEL_PRESETS = ["w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1"]


def _models(rounds: int, no_equalize: bool = False, which: str = "all") -> None:
    """Whole CNNs: FP32 against each preset's exported file loaded back on the integer kernels."""
    import copy
    import os
    import tempfile
    import warnings
    from collections import Counter

    from tqdm import tqdm

    from qatkit.qat import integer
    from qatkit.qat.convert import _Quantized
    from qatkit.testing.models import mobilenet_v2, resnet18

    tmp = tempfile.mkdtemp(prefix="qatkit_bench_conv_")
    lines = []
    models = [("ResNet-18", lambda: resnet18(10, small_input=True)),
              ("MobileNetV2", lambda: mobilenet_v2(10, small_input=True))]
    models = [m for m in models if which == "all" or m[0].lower().replace("-", "") == which.replace("_", "")]
    bar = tqdm(total=len(models) * len(MODEL_PRESETS), desc="PTQ + export + load", leave=False)
    for name, make in models:
        torch.manual_seed(0)
        fp = make().eval()
        calib = [torch.randn(16, 3, 32, 32) for _ in range(4)]
        x = torch.randn(8, 3, 32, 32)
        fns, notes = {"fp32": fp}, {}
        for preset in MODEL_PRESETS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = qatkit.ptq(copy.deepcopy(fp), calib, qatkit.preset(preset), verbose=False, progress=False,
                               equalize=not no_equalize)
                path = os.path.join(tmp, f"{name}_{preset}.safetensors")
                qatkit.export(q, path)
                loaded = qatkit.load_into(make().eval(), path)
                if loaded.fusion_report["fused"]:  # the same file with its activations as modules
                    fns[f"{preset} unfused"] = qatkit.load_into(make().eval(), path, fuse_activations=False)
            kernels = Counter(integer.kernel_for(m) or "float" for m in loaded.modules() if isinstance(m, _Quantized))
            with torch.no_grad():
                cos = float(F.cosine_similarity(loaded(x).flatten(), q.eval()(x).flatten(), 0))
            notes[preset] = (", ".join(f"{k_} {n_}" for k_, n_ in sorted(kernels.items())), cos,
                             len(loaded.fusion_report["fused"]))
            fns[preset] = loaded
            bar.update()
        # channels_last (model.to(memory_format=torch.channels_last) for FP32; the loaded model's
        # integer convs follow their input's format): the same models, NHWC inputs
        xc = x.contiguous(memory_format=torch.channels_last)
        fpc = copy.deepcopy(fp).to(memory_format=torch.channels_last)
        calls = {k_: (lambda m=m: m(x)) for k_, m in fns.items()}
        calls.update({f"{k_} cl": (lambda m=m: m(xc)) for k_, m in fns.items() if k_ != "fp32"})
        calls["fp32 cl"] = lambda: fpc(xc)
        with torch.no_grad():
            med = _medians(calls, rounds)
        for preset in MODEL_PRESETS:
            un = f"{preset} unfused"
            gain = (f"{med[un] / med[preset]:.2f}x / {med[un + ' cl'] / med[preset + ' cl']:.2f}x" if un in med
                    else "-")
            lines.append(f"| {name} | {preset} | {med['fp32']:.2f} | {med[preset]:.2f} | "
                         f"{med['fp32'] / med[preset]:.2f}x | {med['fp32 cl']:.2f} | {med[preset + ' cl']:.2f} | "
                         f"{med['fp32 cl'] / med[preset + ' cl']:.2f}x | {notes[preset][2]} | {gain} | "
                         f"{notes[preset][0]} | {notes[preset][1]:.5f} |")
    bar.close()
    eq = "without cross-layer equalization (ReLU6s kept)" if no_equalize else "with cross-layer equalization"
    print(f"\n# PTQ {eq}")
    print("\n| model (batch 8, 32 x 32) | preset | fp32 ms | loaded ms | vs fp32 | channels_last: fp32 ms | "
          "loaded ms | vs fp32 | activations fused | fused vs unfused (NCHW / cl) | layers on | cosine to the PTQ model |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
