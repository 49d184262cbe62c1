"""Fuzz the whole deployment path on random models: random ``nn.Sequential`` trees of Linear / Conv1d /
Conv2d layers (strides, dilations, groups, every padding mode) and every activation, pooling and
float module ``qatkit.load`` rebuilds (random arguments, nested Sequentials, one activation object
used at several places, one layer applied twice, BatchNorms, LayerNorms with and without bias;
in a third of them some layers pruned with ``torch.nn.utils.prune``), quantized at a random preset (first and last layers kept float or not) by ``qatkit.ptq`` or by
``prepare_qat`` and three SGD steps, then:

- ``qatkit.convert(model)`` must give the QAT model's outputs (eval mode) bit for bit;
- ``qatkit.load(path, compute="float")`` must give ``qatkit.convert(model)``'s outputs bit for bit,
  and ``qatkit.load(path)`` (integer kernels) those of the converted model after
  ``qatkit.qat.set_compute(..., "integer", kernels_only=True)`` (``convert(model, integer=True)``'s
  where every layer has a kernel);
- with ``--cpp``, the C++ loader (``build/py/qatkit_load_run``, qatkit::nn::load) must give
  Python's loaded outputs bit for bit in both computes;
- with ``--onnx``, ``qatkit.export_onnx`` run in onnxruntime (graph optimizations off) on 64 rows
  must give the converted model's outputs within 2 % of the largest (onnxruntime divides by a
  scale where qatkit multiplies by its reciprocal, and its activations differ by an ulp here and
  there, which moves an activation code now and then: 0.5 % at most on 150 models; a module left
  out moved them by 5 %). Models with a module export_onnx has no form for are counted apart.

The test input differs from the calibration batch (batch sizes 1-5). Models ptq refuses (every
layer kept float) are skipped and counted.

    python3 scripts/fuzz_models.py [--models 200] [--seed 0] [--cpp] [--onnx]

Exits non-zero on the first mismatch, printing the seed that reproduces it (``--seed S --models 1``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from torch import nn
from tqdm import tqdm

import qatkit
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the scripts' shared helpers
from qat_models import number_arg  # noqa: E402

PRESETS = ["w8a8", "w4a8", "w4a4_lsq", "ternary_twn", "bitnet_b158", "binary_w1a8", "xnor_w1a1", "binaryconnect",
           "int8_weight_only", "int4_weight_only"]
ACTIVATIONS = [
    lambda r, c: nn.ReLU(), lambda r, c: nn.ReLU6(), lambda r, c: nn.LeakyReLU(r.choice([0.01, 0.2])),
    lambda r, c: nn.PReLU(r.choice([1, c])), lambda r, c: nn.ELU(r.choice([0.5, 1.0])),
    lambda r, c: nn.Hardtanh(-r.random(), 1 + r.random()), lambda r, c: nn.Hardswish(), lambda r, c: nn.Hardsigmoid(),
    lambda r, c: nn.GELU(r.choice(["none", "tanh"])), lambda r, c: nn.SiLU(), lambda r, c: nn.Mish(),
    lambda r, c: nn.Tanh(), lambda r, c: nn.Sigmoid(), lambda r, c: nn.Identity(), lambda r, c: nn.Dropout(0.1),
]


def random_model(r: random.Random):
    """(model in eval mode, input shape)."""
    nd = r.choice([0, 1, 2])
    shared_act = r.choice(ACTIVATIONS)(r, 1) if r.random() < 0.5 else None

    def act(c):
        return shared_act if shared_act is not None and r.random() < 0.5 else r.choice(ACTIVATIONS)(r, c)

    layers = []
    if nd == 0:
        c = r.choice([8, 16])
        shape = (r.randint(1, 5), c)
        if r.random() < 0.3:
            layers.append(nn.LayerNorm(c, bias=r.random() < 0.5))
        for _ in range(r.randint(2, 4)):
            o = r.choice([8, 16, 24])
            lin = nn.Linear(c, o, bias=r.random() < 0.8)
            layers += [lin, act(o)]
            if r.random() < 0.2:
                layers.append(nn.BatchNorm1d(o))
            if c == o and r.random() < 0.3:
                layers += [lin, nn.ReLU()]  # the same layer applied again
            c = o
        if r.random() < 0.3:
            layers.append(r.choice([nn.Softmax(dim=-1), nn.LogSoftmax(dim=1)]))
    else:
        conv = nn.Conv1d if nd == 1 else nn.Conv2d
        c, size = r.choice([1, 3, 4]), r.randint(12, 20)
        shape = (r.randint(1, 4), c) + (size,) * nd
        for _ in range(r.randint(2, 3)):
            o, k, pad = r.choice([4, 8]), r.choice([1, 3]), 1 if r.random() < 0.7 else 0
            groups = r.choice([1, 2]) if c % 2 == 0 else 1
            stride, dilation = r.choice([1, 1, 2]), r.choice([1, 1, 2])
            if size + 2 * pad < dilation * (k - 1) + 1 + 2 or size < 4:  # the window must fit
                k, dilation, stride = 1, 1, 1
            mode = r.choice(["zeros", "zeros", "reflect", "replicate", "circular"]) if pad else "zeros"
            layers.append(conv(c, o, k, stride=stride, padding=pad, dilation=dilation, groups=groups, padding_mode=mode))
            size = (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1
            if nd == 2 and r.random() < 0.4:
                layers.append(nn.BatchNorm2d(o))
            layers.append(act(o))
            if r.random() < 0.3 and size >= 6:
                size //= 2
                ceil = r.random() < 0.5
                layers.append(r.choice([nn.MaxPool1d(2, ceil_mode=ceil), nn.AvgPool1d(2, ceil_mode=ceil)]) if nd == 1 else
                              r.choice([nn.MaxPool2d(2, ceil_mode=ceil), nn.AvgPool2d(2, divisor_override=r.choice([None, 3]))]))
            c = o
        layers += [nn.AdaptiveAvgPool1d(2) if nd == 1 else nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(c * 2**nd, 8)]
    if r.random() < 0.4 and len(layers) > 3:  # a nested Sequential
        k = r.randint(1, len(layers) - 2)
        layers = layers[:k] + [nn.Sequential(*layers[k:k + 2])] + layers[k + 2:]
    return nn.Sequential(*layers).eval(), shape


def check_onnx(c: nn.Module, x: torch.Tensor, shape, tmp: str, what: str) -> str:
    """'ok', 'no onnx form', or a description of the mismatch (see the module docstring)."""
    from onnx_check import ort_session

    path = os.path.join(tmp, "m.onnx")
    try:
        qatkit.export_onnx(c, x[:1], path)
    except ValueError as e:
        if "no ONNX form" in str(e) or "not a fixed window" in str(e):
            return "no onnx form"
        raise
    xo = torch.randn((64,) + tuple(shape[1:]))
    with torch.no_grad():
        ref = c(xo)
    got = torch.from_numpy(ort_session(path, None, "none").run(None, {"input": xo.numpy()})[0])
    big = float(ref.abs().max())
    if got.shape != ref.shape or float((got - ref).abs().max()) > 0.02 * big:
        return f"onnxruntime != convert(): max |diff| {float((got - ref).abs().max())} of {big}; {what}"
    return "ok"


def prune_some(net: nn.Module, r: random.Random) -> list:
    """In a third of the models, prune some Linear / Conv layers with ``torch.nn.utils.prune``
    (L1 or random, 10-70 %; now and then twice): QAT keeps the mask, ptq makes it permanent.
    Returns the pruned layers' names. A separate random stream: the models themselves do not
    change with it."""
    from torch.nn.utils import prune

    if r.random() >= 1 / 3:
        return []
    names = []
    for name, m in net.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and name not in names and r.random() < 0.5:
            for _ in range(1 + (r.random() < 0.2)):
                how = prune.l1_unstructured if r.random() < 0.7 else prune.random_unstructured
                how(m, "weight", amount=r.uniform(0.1, 0.7))
            names.append(name)
    return names


def check_one(seed: int, tmp: str, exe, onnx: bool = False) -> str:
    """'ok', 'skip', 'no onnx form', or a description of the mismatch."""
    from safetensors.torch import load_file, save_file

    r = random.Random(seed)
    torch.manual_seed(seed)
    net, shape = random_model(r)
    pruned = prune_some(net, random.Random(seed ^ 0x5EED))
    preset = r.choice(PRESETS)
    cfg = dataclasses.replace(qatkit.preset(preset), first_last=r.choice([None, "float"]))
    x, xt = torch.randn(shape), torch.randn(shape)
    try:
        if r.random() < 0.5:
            q = qatkit.ptq(net, [x], cfg, verbose=False, progress=False)
        else:  # QAT: a few SGD steps (BatchNorm folded with its batch statistics, learned scales move)
            xb = torch.randn((max(shape[0], 4),) + tuple(shape[1:]))  # (BatchNorm trains on 2+ rows)
            q = qatkit.prepare_qat(net, cfg, example_inputs=xb).train()
            opt = torch.optim.SGD(q.parameters(), lr=1e-2)
            for _ in range(3):
                loss = q(xb).float().square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                qatkit.qat.clip_latent_weights(q)
            qatkit.qat.disable_observer(q)
            qatkit.qat.freeze_bn(q)
            q.eval()
    except ValueError as e:
        if "every supported layer was skipped" in str(e):
            return "skip"
        raise
    path = os.path.join(tmp, "m.safetensors")
    with torch.no_grad():
        want = qatkit.convert(q).eval()(xt)
        qat = q.eval()(xt)
        # what qatkit.load computes: integer where a kernel runs the layer, float math elsewhere
        # (an XNOR conv with a reflect / replicate / circular padding mode has no kernel)
        on_kernels = qatkit.convert(q).eval()
        qatkit.qat.set_compute(on_kernels, "integer", warn=False, kernels_only=True)
        want_int = on_kernels(xt)
        header = qatkit.export(q, path)
        if header["structure"] is None:
            return f"the file has no structure ({header.get('structure_gap')})"
        got, got_int = qatkit.load(path, compute="float")(xt), qatkit.load(path)(xt)
    what = f"seed {seed}, preset {preset}, pruned {pruned or 'none'}, model {net}"
    if not torch.equal(want, qat):
        return f"convert() != the QAT model: max |diff| {float((want - qat).abs().max())}; {what}"
    if not torch.equal(got, want):
        return f"load(compute='float') != convert(): max |diff| {float((got - want).abs().max())}; {what}"
    if not torch.equal(got_int, want_int):
        return f"load() != the converted model on its kernels: max |diff| {float((got_int - want_int).abs().max())}; {what}"
    if onnx:
        res = check_onnx(qatkit.convert(q).eval(), xt, shape, tmp, what)
        if res != "ok":
            return res
    if exe is None:
        return "ok"
    xin, yout = os.path.join(tmp, "x.safetensors"), os.path.join(tmp, "y.safetensors")
    save_file({"x": xt.contiguous()}, xin)
    for flag, expected in (([], got_int), (["--float"], got)):
        # MKL_DYNAMIC=FALSE: with MKL's dynamic threading an MKL GEMM in the C++ program's float
        # forward split over 1 or 2 threads by the timing of the OpenMP pool (a 361 x 8 x 4 conv
        # GEMM came out an ulp apart in ~1 run in 8; Python's own forward, with more time between
        # its ops, did not): the float compute is bit for bit at a fixed thread count
        run = subprocess.run([exe, *flag, path, xin, yout], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "MKL_DYNAMIC": "FALSE"})
        if run.returncode != 0:
            return f"the C++ loader {flag} failed: {run.stderr[-400:]}; {what}"
        y = load_file(yout)["y"].clone()
        if not torch.equal(y, expected):
            return f"C++ {flag or ['integer']} != Python: max |diff| {float((y - expected).abs().max())}; {what}"
    return "ok"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=number_arg(int, 1), default=200)
    ap.add_argument("--seed", type=int, default=0, help="the first model's seed (model i uses seed + i)")
    ap.add_argument("--cpp", action="store_true", help="also run the C++ loader (build/py/qatkit_load_run)")
    ap.add_argument("--exe", default=None, help="with --cpp: the qatkit_load_run to run (default build/py's)")
    ap.add_argument("--onnx", action="store_true", help="also run export_onnx in onnxruntime (within 2 %%)")
    a = ap.parse_args()
    exe = None
    if a.cpp:
        exe = a.exe or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "py",
                                    "qatkit_load_run")
        if not os.path.exists(exe):
            sys.exit(f"{exe} is missing: the test build (scripts/setup.sh) makes it")
    warnings.simplefilter("ignore")
    counts = {"ok": 0, "skip": 0, "no onnx form": 0}
    pruned = 0  # of the models loaded bit for bit, those with pruned layers
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for i in tqdm(range(a.models), desc="models", disable=not sys.stderr.isatty()):
            res = check_one(a.seed + i, tmp, exe, a.onnx)
            if res not in counts:
                print(f"model {i}: {res}\n(replay: python3 scripts/fuzz_models.py --seed {a.seed + i} --models 1"
                      f"{' --cpp' if a.cpp else ''}{' --onnx' if a.onnx else ''})")
                sys.exit(1)
            counts[res] += 1
            pruned += res == "ok" and bool(prune_some(random_model(random.Random(a.seed + i))[0],
                                                       random.Random((a.seed + i) ^ 0x5EED)))
    onnx = f", onnxruntime within 2 %; {counts['no onnx form']} with a module export_onnx has no form for" if a.onnx else ""
    print(f"fuzz_models: {a.models} models in {time.time() - t0:.0f} s, seed {a.seed}: {counts['ok']} loaded bit for bit "
          f"({pruned} with pruned layers; Python float and integer{', C++ both' if a.cpp else ''}{onnx}), "
          f"{counts['skip']} skipped (every layer kept float)")


if __name__ == "__main__":
    main()
