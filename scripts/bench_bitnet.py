"""BitNet b1.58 end to end on the loaded model (issue 13): a stack of BitLinear feed-forward blocks
(RMSNorm, absmean ternary weights, per-token int8 inputs: the bitnet_b158 preset; the first and last
layers stay float as the preset says) exported with qatkit.export and loaded back with
qatkit.load — on ops.linear_dynamic_int8 (the default, integer) and with compute="float" (what the
QAT model computes, fake-quantized float math) — against the FP32 model, in one process,
interleaved, medians over rounds, reported as ratios to FP32. Checks first that the loaded integer
model gives convert(integer=True)'s outputs bit for bit.

    python3 scripts/bench_bitnet.py [--dim 1024 --ffn 4096 --blocks 4] [--tokens 1,32] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from torch import nn
from tqdm import tqdm

import qatkit
from qatkit.testing.timing import core_to_core, steady_allocator
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the scripts' shared helpers
from qat_models import number_arg  # noqa: E402


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown CPU"


def ffn_stack(dim: int, ffn: int, blocks: int) -> nn.Sequential:
    layers = [nn.Linear(dim, dim)]  # the float first layer (bitnet_b158 keeps first / last float)
    for _ in range(blocks):
        layers += [nn.Linear(dim, ffn), nn.ReLU(), nn.Linear(ffn, dim), nn.ReLU()]
    layers.append(nn.Linear(dim, 64))
    return nn.Sequential(*layers)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=number_arg(int, 1), default=1024)
    ap.add_argument("--ffn", type=number_arg(int, 1), default=4096)
    ap.add_argument("--blocks", type=number_arg(int, 1), default=4)
    ap.add_argument("--tokens", default="1,32")
    ap.add_argument("--rounds", type=number_arg(int, 1), default=9)
    ap.add_argument("--calls", type=number_arg(int, 1), default=10)
    ap.add_argument("--threads", type=number_arg(int, 1), default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    # large outputs from the heap, as in a warmed process (qatkit.testing.timing)
    print(f"# {steady_allocator()}")
    print(f"# {core_to_core()}")
    torch.manual_seed(0)
    fp32 = ffn_stack(a.dim, a.ffn, a.blocks).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.prepare_qat(fp32, qatkit.preset("bitnet_b158"))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bitnet.qatkit.safetensors")
        qatkit.export(q, path)
        size = os.path.getsize(path)
        on_kernels = qatkit.load(path).eval()
        float_form = qatkit.load(path, compute="float").eval()
    float_reasons = sorted({r for _, f, r in on_kernels.compute_report if f is None})
    ran = [n for n, f, _ in on_kernels.compute_report if f is not None]
    x = torch.randn(4, a.dim)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same = torch.equal(on_kernels(x), qatkit.convert(q, integer=True)(x))
    print(f"# BitNet FFN stack: dim {a.dim}, ffn {a.ffn}, {a.blocks} blocks ({len(ran)} BitLinear layers on "
          f"linear_dynamic_int8; float layers: {float_reasons or 'none'}), file {size / 2**20:.1f} MiB vs FP32 "
          f"{sum(p.numel() for p in fp32.parameters()) * 4 / 2**20:.1f} MiB; loaded == convert(integer=True) "
          f"bit for bit: {same}")
    print(f"# {_cpu_model()}, qatkit ISA {qatkit._C.cpu_isa()}, {a.threads} threads, torch {torch.__version__}, "
          f"medians of {a.rounds} interleaved rounds of {a.calls} calls")
    variants = {"FP32": fp32, "loaded, compute=float": float_form, "loaded, integer (default)": on_kernels}
    print("| tokens | variant | ms / forward | vs FP32 |")
    print("|---|---|---|---|")
    for t in [int(v) for v in a.tokens.split(",")]:
        xt = torch.randn(t, a.dim)
        times = {k: [] for k in variants}
        with torch.no_grad():
            for m in variants.values():
                m(xt)
            for r in tqdm(range(a.rounds), desc=f"{t} tokens", leave=False):
                order = list(variants.items())
                for name, m in order if r % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    for _ in range(a.calls):
                        m(xt)
                    times[name].append((time.perf_counter() - t0) / a.calls)
        base = statistics.median(times["FP32"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"| {t} | {name} | {med * 1e3:.2f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
