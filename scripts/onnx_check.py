"""ONNX export check (issue 12): the repo's digits models (MLP, CNN, DS-CNN; FP32-trained on the
training folds, then PTQ at every preset and, for the presets that quantize activations or
weights below 4 bits, a short QAT fine-tune from the PTQ model) exported with qatkit.export_onnx and run in onnxruntime
(all graph optimizations, session.qdq_matmulnbits_accuracy_level=0) against qatkit's converted
model (integer-exact by default, ``--compute float`` for the QAT model's float math) on the held-out fold: top-1 agreement, max |difference| of the logits (absolute and
relative to the largest logit), both accuracies, the file size, and the node types onnxruntime's
optimized graph holds (MatMulNBits, QLinearConv, ...).

    python3 scripts/onnx_check.py [--folds 5] [--qat-epochs 5] [--presets w8a8,w4a8_g32] [--md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qat_models as qm  # noqa: E402

import qatkit  # noqa: E402

PRESETS = {
    "w8a8": lambda: qatkit.w8a8(),
    "w4a8_g32": lambda: qatkit.w4a8(group_size=32),
    "w4a4_lsq": lambda: qatkit.w4a4_lsq(),
    "ternary_twn": lambda: qatkit.ternary_twn(),
    "bitnet_b158": lambda: qatkit.bitnet_b158(),
    "binary_w1a8": lambda: qatkit.binary_w1a8(),
    "xnor_w1a1": lambda: qatkit.xnor_w1a1(),
    "binaryconnect": lambda: qatkit.binaryconnect(),
    "int8_weight_only": lambda: qatkit.int8_weight_only(),
    "int4_weight_only_g32": lambda: qatkit.int4_weight_only(group_size=32),
    "int4_weight_only_g32_asym": lambda: qatkit.int4_weight_only(group_size=32, symmetric=False),
    "ternary_weight_only": lambda: qatkit.ternary_weight_only(),
    "binary_weight_only": lambda: qatkit.binary_weight_only(),
}
EPOCHS = {"MLP": 10, "CNN": 10, "DSCNN": 20}
#: PTQ is the whole story for these; the others are QAT presets (fine-tuned after PTQ)
PTQ_ONLY = {"int8_weight_only", "int4_weight_only_g32", "int4_weight_only_g32_asym"}


def quantized(model, preset: str, x, y, qat_epochs: int, seed: int = 0, compute: str = "integer"):
    """The converted model of ``preset``: PTQ on 512 training images, then (QAT presets) a short
    fine-tune from there."""
    calib = list(x[:512].split(128))
    q = qatkit.ptq(model, calib, PRESETS[preset](), verbose=False, progress=False)
    if preset not in PTQ_ONLY and qat_epochs > 0:
        q = qm.train_classifier(q, x, y, qat_epochs, seed=seed, lr=1e-3)
    return qatkit.convert(q, integer=compute == "integer").eval()


def ort_session(path: str, optimized: str | None = None, level: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def compare(converted, x: torch.Tensor, path: str, tmp: str) -> dict:
    """Run ``path`` in onnxruntime on ``x`` and compare with ``converted(x)``."""
    import onnx

    opt = os.path.join(tmp, "optimized.onnx")
    sess = ort_session(path, opt)
    out = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        ref = converted(x)
    diff = (out - ref).abs().max().item()
    return {
        "out": out,
        "ref": ref,
        "agree": float((out.argmax(1) == ref.argmax(1)).float().mean()),
        "max_abs": diff,
        "rel": diff / max(ref.abs().max().item(), 1e-30),
        "nodes": sorted({n.op_type for n in onnx.load(opt).graph.node}),
        "bytes": os.path.getsize(path),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=qm.number_arg(int, 1, hi=5), default=5, help="run the first N of the 5 folds")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--archs", default="MLP,CNN,DSCNN")
    ap.add_argument("--qat-epochs", type=qm.number_arg(int, 1), default=5)
    ap.add_argument("--md", action="store_true", help="print a markdown table")
    ap.add_argument("--compute", choices=("integer", "float"), default="integer",
                    help="qatkit's reference: the integer-exact converted model (what the integer kernels compute; "
                         "default) or the float one (what the QAT model computed)")
    ap.add_argument("--int8-weights", choices=("auto", "int8", "uint8"), default="auto",
                    help="export_onnx's int8_weights: how 8-bit weight codes are stored (int8 runs onnxruntime's "
                         "uint8 x int8 kernels, which saturate on CPUs without VNNI)")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    x, y = qm.load_digits()
    folds = qm.stratified_folds(y, 5)[: a.folds]
    rows = []
    t0 = time.time()
    from tqdm import tqdm

    jobs = [(arch, p, f) for arch in a.archs.split(",") for f in range(len(folds)) for p in a.presets.split(",")]
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, preset, f in tqdm(jobs, desc="onnx_check", leave=False):
            tr, te = folds[f]
            if (arch, f) not in models:
                torch.manual_seed(f)
                models[arch, f] = qm.train_classifier(getattr(qm, arch)(), x[tr], y[tr], EPOCHS[arch], seed=f)
            seq = models[arch, f].as_sequential().eval()
            c = quantized(seq, preset, x[tr], y[tr], a.qat_epochs, seed=f, compute=a.compute)
            path = os.path.join(tmp, "m.onnx")
            qatkit.export_onnx(c, x[:4], path, int8_weights=a.int8_weights)
            r = compare(c, x[te], path, tmp)
            r.update(arch=arch, preset=preset, fold=f,
                     acc_qatkit=float((r["ref"].argmax(1) == y[te]).float().mean() * 100),
                     acc_ort=float((r["out"].argmax(1) == y[te]).float().mean() * 100))
            rows.append(r)
    # one line per (arch, preset): worst agreement / difference over the folds
    print(f"onnx_check: {len(rows)} exports in {time.time() - t0:.0f} s ({a.folds} folds, test split of each; "
          f"qatkit computes {a.compute}; int8_weights={a.int8_weights})")
    head = ["model", "preset", "top-1 agree (min)", "max |diff|", "max rel", "acc qatkit", "acc ORT", "KiB",
            "ORT nodes (quantized compute)"]
    lines = []
    for arch in a.archs.split(","):
        for p in a.presets.split(","):
            rs = [r for r in rows if r["arch"] == arch and r["preset"] == p]
            if not rs:
                continue
            nodes = sorted({n for r in rs for n in r["nodes"] if n in ("MatMulNBits", "QLinearConv", "QLinearMatMul",
                                                                          "MatMulInteger", "ConvInteger", "QGemm",
                                                                          "DynamicQuantizeMatMul")})
            lines.append([arch, p, f"{min(r['agree'] for r in rs) * 100:.2f}", f"{max(r['max_abs'] for r in rs):.2e}",
                          f"{max(r['rel'] for r in rs):.1e}", f"{sum(r['acc_qatkit'] for r in rs) / len(rs):.2f}",
                          f"{sum(r['acc_ort'] for r in rs) / len(rs):.2f}", f"{rs[0]['bytes'] / 1024:.1f}",
                          " ".join(nodes) or "-"])
    qm.print_table(head, lines, a.md)
    worst = min(r["agree"] for r in rows)
    print(f"worst top-1 agreement {worst * 100:.2f} % (goal >= 99.5 %)")


if __name__ == "__main__":
    main()
