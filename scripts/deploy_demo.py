"""The deployment half of the demo (issue 13): FP32 digits MLP -> PTQ int8 and QAT int4 / ternary /
binary -> qatkit.export -> qatkit.load on the integer kernels -> one table of accuracy, file size
and speed per variant, and the LibTorch C++ program (tests/cpp/load_run.cpp, built by
scripts/setup.sh) reading one of the files.

    python3 scripts/deploy_demo.py [--qat-epochs 10]

One train / test split (fold 0 of 5) of scikit-learn's digits. Speed: the whole test split (364
images) per call, median of interleaved rounds, against the FP32 model in the same process; the
digits MLP is small (64-256-256-10), so call overheads weigh as much as the weight bytes —
scripts/bench_inference.py measures the kernels on 4096 x 4096 layers.
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
from collections import Counter

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qat_models as qm  # noqa: E402

import qatkit  # noqa: E402
from qatkit.qat import integer  # noqa: E402
from qatkit.qat.convert import _Quantized  # noqa: E402
from qatkit.testing.timing import core_to_core, steady_allocator  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXE = os.path.join(ROOT, "build", "py", "qatkit_load_run")

VARIANTS = [  # (label, preset, QAT?)
    ("PTQ int8 (w8a8)", lambda: qatkit.w8a8(), False),
    ("QAT int4 (w4a8_g32)", lambda: qatkit.w4a8(group_size=32), True),
    ("QAT ternary (ternary_twn)", lambda: qatkit.ternary_twn(), True),
    ("QAT binary (binary_w1a8)", lambda: qatkit.binary_w1a8(), True),
]


def _time(fns, x, rounds=15, calls=20):
    out = {k: [] for k in fns}
    with torch.no_grad():
        for f in fns.values():
            f(x)
        for _ in range(rounds):
            for k, f in fns.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    f(x)
                out[k].append((time.perf_counter() - t0) / calls)
    return {k: statistics.median(v) for k, v in out.items()}


def deploy(qat_epochs: int = 10, seed: int = 0) -> list:
    x, y = qm.load_digits()
    tr, te = qm.stratified_folds(y, 5)[0]
    torch.manual_seed(seed)
    fp = qm.train_classifier(qm.MLP(), x[tr], y[tr], 40, seed=seed).as_sequential().eval()
    xt, yt = x[te], y[te]
    acc = lambda m: float((m(xt).argmax(1) == yt).float().mean() * 100)  # noqa: E731
    rows, models = [], {"FP32": fp}
    with torch.no_grad():
        fp_acc = acc(fp)
    fp_kib = sum(t.numel() * t.element_size() for t in fp.state_dict().values()) / 1024
    rows.append({"variant": "FP32", "acc": fp_acc, "kib": fp_kib, "kernels": "MKL sgemm", "agree": 100.0})
    tmp = tempfile.mkdtemp(prefix="qatkit_demo_")
    paths = {}
    for label, cfg, qat in VARIANTS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qatkit.ptq(fp, list(x[tr][:512].split(128)), cfg(), verbose=False, progress=False)
            if qat:
                q = qm.train_classifier(q, x[tr], y[tr], qat_epochs, seed=seed, lr=1e-3)
        path = os.path.join(tmp, label.split()[1] + ".safetensors")
        qatkit.export(q, path)
        paths[label] = path
        loaded = qatkit.load(path)  # integer kernels where they exist; compute_report names the rest
        kernels = Counter(integer.kernel_for(m) or "float" for m in loaded.modules()
                          if isinstance(m, _Quantized))
        with torch.no_grad():
            agree = float((loaded(xt).argmax(1) == q.eval()(xt).argmax(1)).float().mean() * 100)
            rows.append({"variant": label, "acc": acc(loaded), "kib": os.path.getsize(path) / 1024,
                         "kernels": ", ".join(f"{n} {k}" for k, n in sorted(kernels.items())), "agree": agree})
        models[label] = loaded
    alloc = steady_allocator()  # large outputs from the heap, as in a warmed process (qatkit.testing.timing)
    t = _time(models, xt)
    for r in rows:
        r["ms"] = t[r["variant"]] * 1e3
        r["speed"] = t["FP32"] / t[r["variant"]]
    print(f"\nDeployment: export -> qatkit.load (integer kernels) — digits MLP, fold 0 ({len(te)} test images; "
          f"{alloc}; {core_to_core()})")
    head = ["variant", "acc %", "agree w/ QAT %", "file KiB", f"ms / {len(te)} imgs", "vs FP32", "layers on"]
    lines = [[r["variant"], f"{r['acc']:.2f}", f"{r['agree']:.2f}", f"{r['kib']:.1f}", f"{r['ms']:.2f}",
              f"{r['speed']:.2f}x", r["kernels"]] for r in rows]
    qm.print_table(head, lines)
    _cpp(paths["QAT ternary (ternary_twn)"], xt)
    return rows


def _cpp(path: str, x: torch.Tensor) -> None:
    """The LibTorch C++ program loads the same file and prints its logits."""
    if not os.path.exists(EXE):
        print(f"C++: {EXE} not built (scripts/setup.sh builds it); skipped")
        return
    from safetensors.torch import load_file, save_file

    d = os.path.dirname(path)
    inp, out = os.path.join(d, "x.safetensors"), os.path.join(d, "y.safetensors")
    save_file({"x": x.contiguous()}, inp)
    r = subprocess.run([EXE, path, inp, out], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        print(f"C++: qatkit_load_run failed: {r.stderr.strip()[:300]}")
        return
    y = load_file(out)["y"]
    with torch.no_grad():
        same = torch.equal(y, qatkit.load(path)(x))
    print(f"C++ (qatkit::nn::load in a LibTorch program, integer kernels) on {os.path.basename(path)}: logits "
          f"{tuple(y.shape)}, equal to Python's loaded model bit for bit: {same}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qat-epochs", type=qm.number_arg(int, 1), default=10)
    a = ap.parse_args()
    torch.set_num_threads(2)
    deploy(a.qat_epochs)


if __name__ == "__main__":
    main()
