"""QAT model vs integer-exact model (issue 13, docs/integer.md) on the repo's digits models: for
every preset with an integer form, the converted model in float compute (bit for bit the QAT
model) against the same model in integer compute, on each held-out fold: top-1 agreement, and per
layer how many of the next layer's activation codes the integer arithmetic moves (and by how many
LSB) given the same input (qatkit.qat.integer.code_moves). Models as in scripts/onnx_check.py
(FP32-trained, PTQ, then a short QAT fine-tune).

    python3 scripts/integer_check.py [--folds 5] [--qat-epochs 5] [--md]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnx_check as oc  # noqa: E402
import qat_models as qm  # noqa: E402

from qatkit.qat import integer, set_compute  # noqa: E402

PRESETS = ["w8a8", "w4a8_g32", "w4a4_lsq", "ternary_twn", "bitnet_b158", "binary_w1a8", "xnor_w1a1"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=qm.number_arg(int, 1, hi=5), default=5, help="run the first N of the 5 folds")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--archs", default="MLP,CNN,DSCNN")
    ap.add_argument("--qat-epochs", type=qm.number_arg(int, 1), default=5)
    ap.add_argument("--md", action="store_true")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    x, y = qm.load_digits()
    folds = qm.stratified_folds(y, 5)[: a.folds]
    from tqdm import tqdm

    t0 = time.time()
    jobs = [(arch, p, f) for arch in a.archs.split(",") for f in range(len(folds)) for p in a.presets.split(",")]
    models, rows = {}, []
    for arch, preset, f in tqdm(jobs, desc="integer_check", leave=False):
        tr, te = folds[f]
        if (arch, f) not in models:
            torch.manual_seed(f)
            models[arch, f] = qm.train_classifier(getattr(qm, arch)(), x[tr], y[tr], oc.EPOCHS[arch], seed=f)
        seq = models[arch, f].as_sequential().eval()
        c = oc.quantized(seq, preset, x[tr], y[tr], a.qat_epochs, seed=f, compute="float")
        ci = copy.deepcopy(c)
        rep = set_compute(ci, "integer", warn=False)
        with torch.no_grad():
            yf, yi = c(x[te]), ci(x[te])
            moves = integer.code_moves(c, ci, x[te])
        rows.append({
            "arch": arch, "preset": preset, "fold": f,
            "integer_layers": sum(1 for _, form, _ in rep if form is not None), "layers": len(rep),
            "agree": float((yf.argmax(1) == yi.argmax(1)).float().mean()),
            "acc_qat": float((yf.argmax(1) == y[te]).float().mean() * 100),
            "acc_int": float((yi.argmax(1) == y[te]).float().mean() * 100),
            "moved": sum(r["moved"] for r in moves), "codes": sum(r["codes"] for r in moves),
            "max_lsb": max([r["max_lsb"] for r in moves], default=0),
        })
    print(f"integer_check: {len(rows)} models in {time.time() - t0:.0f} s ({a.folds} folds, test split of each)")
    head = ["model", "preset", "integer layers", "top-1 agree QAT/int (min)", "codes moved", "max LSB",
            "acc QAT", "acc int"]
    lines = []
    for arch in a.archs.split(","):
        for p in a.presets.split(","):
            rs = [r for r in rows if r["arch"] == arch and r["preset"] == p]
            if not rs:
                continue
            moved, codes = sum(r["moved"] for r in rs), sum(r["codes"] for r in rs)
            lines.append([arch, p, f"{rs[0]['integer_layers']}/{rs[0]['layers']}",
                          f"{min(r['agree'] for r in rs) * 100:.2f}",
                          f"{moved / max(codes, 1):.1e}" if codes else "-", str(max(r["max_lsb"] for r in rs)),
                          f"{sum(r['acc_qat'] for r in rs) / len(rs):.2f}", f"{sum(r['acc_int'] for r in rs) / len(rs):.2f}"])
    qm.print_table(head, lines, a.md)
    print(f"worst top-1 agreement {min(r['agree'] for r in rows) * 100:.2f} % (goal >= 99.5 %)")


if __name__ == "__main__":
    main()
