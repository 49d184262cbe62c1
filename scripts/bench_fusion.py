"""What fusing the activations after the quantized layers saves (``qatkit.fuse_activations``, the
default of ``qatkit.load``): the repo's digits MLP (64 -> 256 -> 256 -> 10, BatchNorm folded, a ReLU
after each hidden Linear) PTQ'd at each preset, exported, and loaded twice from the same file: fused
(the default) and with ``fuse_activations=False``. Both are timed in the same process, interleaved
round by round (min of each round's mean per call), and checked to give the same bits. The last
column removes the unfused model's ReLUs (wrong values): the most any fusion could save.

    python3 scripts/bench_fusion.py [--rounds 15] [--calls 200] [--threads 2]

CNNs: ``scripts/bench_conv_int8.py`` (its "fused vs unfused" column; ``--no-equalize`` keeps
MobileNetV2's ReLU6s).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

import qatkit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qat_models import MLP, number_arg  # noqa: E402

PRESETS = ["w8a8", "w4a8", "ternary_twn", "xnor_w1a1", "int4_weight_only"]
BATCHES = [1, 32, 256]


def _cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return ", ".join(f"{k} {info[k].strip()}" for k in ("Model name", "CPU family", "Model") if k in info)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=number_arg(int, 1), default=15)
    ap.add_argument("--calls", type=number_arg(int, 1), default=200)
    ap.add_argument("--threads", type=number_arg(int, 1), default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# {_cpu()}; {a.threads} threads, qatkit ISA {qatkit._C.cpu_isa()}, torch {torch.__version__}; "
          f"min over {a.rounds} interleaved rounds of {a.calls} calls")
    print("| preset | batch | fused us | unfused us | fused vs unfused | unfused, ReLUs removed us (the bound) |")
    print("|---|---|---|---|---|---|")
    tmp = tempfile.mkdtemp(prefix="qatkit_bench_fusion_")
    torch.manual_seed(0)
    net = MLP().eval().as_sequential()
    x = torch.randn(max(BATCHES), 64)
    for preset in PRESETS:
        path = os.path.join(tmp, f"{preset}.safetensors")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qatkit.ptq(copy.deepcopy(net), [x], qatkit.preset(preset), verbose=False, progress=False)
            qatkit.export(q, path)
            fused, plain = qatkit.load(path), qatkit.load(path, fuse_activations=False)
        bound = nn.Sequential(*[m for m in plain if not isinstance(m, nn.ReLU)])
        n_fused = len(fused.fusion_report["fused"])
        for b in BATCHES:
            xb = x[:b].contiguous()
            fns = {"fused": fused, "unfused": plain, "bound": bound}
            best = {k: float("inf") for k in fns}
            with torch.no_grad():
                if not torch.equal(fused(xb).view(torch.int32), plain(xb).view(torch.int32)):
                    raise SystemExit(f"{preset} batch {b}: the fused model's bits differ from the unfused one's")
                for _ in range(a.rounds):
                    for k, f in fns.items():
                        for _ in range(5):
                            f(xb)
                        t = time.perf_counter()
                        for _ in range(a.calls):
                            f(xb)
                        best[k] = min(best[k], (time.perf_counter() - t) / a.calls * 1e6)
            print(f"| {preset} ({n_fused} fused) | {b} | {best['fused']:.1f} | {best['unfused']:.1f} | "
                  f"{best['unfused'] / best['fused']:.2f}x | {best['bound']:.1f} |")


if __name__ == "__main__":
    main()
