"""Fuzz the deployment path over random QuantSpecs (where ``scripts/fuzz_models.py`` draws random
models at the presets): a random weight spec and input spec per draw (int 2-16 bits, signed /
unsigned, symmetric / affine, narrow range, per tensor / channel / group, static / learned /
dynamic scales, every observer, float16 / bfloat16 weight scales; ternary absmean / TWN, binary
with and without scales, stochastic; binary inputs), on an MLP (now and then with BitLinear), a
conv net (grouped and depthwise convs) or an Embedding + Conv1d net over token ids (the table
quantized or not), with ``first_last`` None / float / int8 and, in 40 % of the draws, random
per-layer overrides (mixed precision, as ``choose_bits`` writes), three SGD steps, then:

- ``qatkit.convert(model)`` must give the QAT model's eval outputs bit for bit;
- ``qatkit.load(path, compute="float")`` must give the converted model's outputs bit for bit, and
  ``qatkit.load(path)`` (integer kernels) those of the converted model after
  ``set_compute(..., "integer", kernels_only=True)``;
- with ``--onnx``, ``qatkit.export_onnx`` run in onnxruntime (graph optimizations off) on 32 rows
  must give the converted model's outputs within 2 % of the largest (as in fuzz_models.py), but for
  rows where an input quantizer sees a value at a rounding tie (``_ties``: onnxruntime's float math
  can put that code one step apart); it found unsigned 16-bit static inputs refused ("fit no ONNX
  integer type");
- with ``--cpp``, the C++ loader (``build/py/qatkit_load_run``) must give Python's integer outputs
  bit for bit, and its float outputs within 1e-4 of the largest (torch's CPU GEMM rounds by the
  input buffer's alignment, which differs between the two programs).

Specs ``QuantSpec`` / ``prepare_qat`` refuse are drawn again (counted). It found a per-tensor
ternary / binary layer with a static input range that failed at its first integer call, the KL
observer's IndexError at 12+ bits, refused 9/10-bit files with negative zero points, and learned
step sizes below zero that were exported raw (docs/benchmarks.md, thirty-second session).

    python3 scripts/fuzz_specs.py [--models 200] [--seed 0] [--cpp] [--onnx]

Exits non-zero on the first mismatch, printing the seed and draw that reproduce it.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the scripts' shared helpers (onnx_check)

import qatkit
from qatkit.qat.config import LayerSpec, QATConfig, QuantSpec

EXE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "py", "qatkit_load_run")


def weight_spec(r: random.Random) -> QuantSpec:
    kind = r.choice(["int"] * 4 + ["ternary", "binary"])
    if kind == "int":  # (mostly valid combinations; QuantSpec refuses the rest, counted)
        signed, symmetric = r.random() < 0.8, r.random() < 0.6
        gran, scale = r.choice(["per_tensor", "per_channel", "per_group"]), r.choice(["static", "static", "learned"])
        return QuantSpec(kind="int", bits=r.choice([2, 3, 4, 5, 6, 8, 10, 16]), signed=signed, symmetric=symmetric,
                         narrow_range=signed and symmetric and r.random() < 0.3, granularity=gran, axis=0,
                         group_size=r.choice([8, 16, 32]) if gran == "per_group" else None,
                         scale=scale if gran != "per_group" or r.random() < 0.1 else "static",
                         scale_dtype=r.choice(["float32", "float32", "float16", "bfloat16"]) if scale == "static" else "float32")
    if kind == "ternary":
        return QuantSpec(kind="ternary", bits=2, method=r.choice(["absmean", "twn"]),
                         granularity=r.choice(["per_tensor", "per_channel"]), axis=0)
    return QuantSpec(kind="binary", bits=1, method=r.choice(["none", "mean_abs"]),
                     granularity=r.choice(["per_tensor", "per_channel"]), axis=0,
                     estimator=r.choice(["identity", "clipped_ste"]), stochastic=r.random() < 0.2)


def input_spec(r: random.Random, conv: bool):
    kind = r.choice(["int"] * 5 + ["binary", None])
    if kind is None:
        return None
    if kind == "binary":
        return QuantSpec(kind="binary", bits=1, method="none", estimator=r.choice(["identity", "clipped_ste"]))
    scale = r.choice(["static", "static", "dynamic", "learned"])
    gran = r.choice(["per_tensor", "per_tensor", "per_channel"]) if scale != "dynamic" else r.choice(["per_tensor", "per_token"])
    signed = r.random() < 0.5 or scale == "dynamic"
    symmetric = r.random() < 0.4 or scale == "dynamic"
    return QuantSpec(kind="int", bits=r.choice([4, 6, 8, 8, 12, 16]), signed=signed,
                     symmetric=symmetric, narrow_range=signed and symmetric and r.random() < 0.2, granularity=gran,
                     axis=(1 if conv else -1) if gran == "per_channel" else 0, scale=scale,
                     observer=r.choice(["moving_average", "minmax", "percentile", "mse", "kl"]))


def _cpp(path: str, x: torch.Tensor, tmp: str, compute: str):
    from safetensors.torch import load_file, save_file

    inp, out = os.path.join(tmp, "x.safetensors"), os.path.join(tmp, "y.safetensors")
    save_file({"x": x.contiguous()}, inp)
    flag = ["--float"] if compute == "float" else []
    r = subprocess.run([EXE, *flag, path, inp, out], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return r.stderr[-400:]
    return load_file(out)["y"]


def _onnx(converted: nn.Module, gen, tmp: str, spec) -> str | None:
    """None, "no onnx form", or how onnxruntime's outputs differ from convert()'s (2 % of the largest,
    as in fuzz_models.py: onnxruntime rounds x / scale where qatkit rounds x * (1 / scale))."""
    from onnx_check import ort_session

    path = os.path.join(tmp, "m.onnx")
    try:
        qatkit.export_onnx(converted, gen()[:1], path)
    except ValueError as e:
        if "no ONNX form" in str(e) or "fit no ONNX integer type" in str(e) or "no inference form" in str(e):
            return "no onnx form"
        return f"export_onnx raised {e} ({spec})"
    x = torch.cat([gen() for _ in range(8)])
    with torch.no_grad():
        ref = converted(x)
    got = torch.from_numpy(ort_session(path, None, "none").run(None, {"input": x.numpy()})[0])
    big = float(ref.abs().max())
    if got.shape != ref.shape:
        return f"onnxruntime's output has shape {tuple(got.shape)}, convert()'s {tuple(ref.shape)} ({spec})"
    rows = ((got - ref).abs().reshape(len(x), -1).amax(1) > 0.02 * big + 1e-30).nonzero().reshape(-1)
    if len(rows):
        if not _ties(converted, x, rows):
            return f"onnxruntime differs from convert() by {float((got - ref).abs().max()):.3g} of {big:.3g} ({spec})"
        TIES[0] += 1
    return None


TIES = [0]  # draws whose onnxruntime rows beyond 2 % all hold a rounding tie (counted in the summary)


def _ties(converted: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> bool:
    """Whether every differing row holds, at some input quantizer, a value at a rounding tie: a
    binary input within 1e-4 of its largest from zero, or a static / learned / dynamic integer input
    within 1e-4 code steps (plus 2e-5 of its size in steps) of a rounding boundary. onnxruntime's float
    math differs from torch's there (its Gelu by 1e-5 relative; x / scale where qatkit takes
    x * (1 / scale); summation order), so such a code can land one step apart and move the output
    by a whole step (seed 32: a binary input 3.3e-6 from zero, output 16 % apart; seed 34: a
    4-bit input 9e-6 steps from a boundary behind BitLinear's RMSNorm, 3 %)."""
    from qatkit.qat.quantizers import (AffineDynamicActQuantizer, AffineLearnedActQuantizer, AffineStaticActQuantizer,
                                       BinaryActQuantizer)

    near = torch.zeros(len(x), dtype=torch.bool)

    def check(mod, args):
        v = args[0].detach().float()
        if isinstance(mod, BinaryActQuantizer):
            hit = v.abs() < 1e-4 * float(v.abs().max())
        elif isinstance(mod, AffineDynamicActQuantizer):  # s = max(absmax, 1e-5) / qmax, per row or tensor
            m = v.abs().amax(-1, keepdim=True) if mod.spec.granularity == "per_token" else v.abs().max()
            t = v / (m.clamp(min=1e-5) / mod.spec.quant_max)
            hit = ((t - t.floor()) - 0.5).abs() < 1e-4 + 2e-5 * t.abs()
        else:
            scale, _ = mod.frozen_qparams()
            scale = scale.detach().float().reshape(-1)
            if scale.numel() > 1:
                shape = [1] * v.dim()
                shape[mod.axis % v.dim()] = -1
                scale = scale.reshape(shape)
            t = v / scale
            hit = ((t - t.floor()) - 0.5).abs() < 1e-4 + 2e-5 * t.abs()
        near.__ior__(hit.reshape(len(x), -1).any(1))

    hooks = [m.register_forward_pre_hook(check) for m in converted.modules()
             if isinstance(m, (BinaryActQuantizer, AffineStaticActQuantizer, AffineLearnedActQuantizer,
                               AffineDynamicActQuantizer))]
    try:
        with torch.no_grad():
            converted(x)
    finally:
        for h in hooks:
            h.remove()
    return bool(near[rows].all())


def check(r: random.Random, draw: int, tmp: str, cpp: bool, onnx: bool = False):
    """None when the draw passes or its spec is refused ("refused"), else what differs."""
    kind = r.choice(["mlp", "conv", "seq"])  # seq: an Embedding and a Conv1d over tokens
    conv = kind != "mlp"
    groups = r.choice([1, 2, 16])
    try:
        spec = LayerSpec(weight_spec(r), input_spec(r, conv))
    except (ValueError, TypeError):
        return "refused"
    extra = dict(first_last=r.choice([None, None, "float", "int8"]), bitlinear=kind == "mlp" and r.random() < 0.15,
                 embeddings=kind == "seq" and r.random() < 0.7)
    torch.manual_seed(draw)
    if kind == "conv":
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=groups),
                              nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 5))
        gen = lambda: torch.randn(4, 3, 4, 4)  # noqa: E731
    elif kind == "seq":  # [B, 6] token ids -> [B, 6, 16]: a Conv1d with the 6 tokens as channels
        model = nn.Sequential(nn.Embedding(40, 16, padding_idx=r.choice([None, 0])),
                              nn.Conv1d(6, 16, 3, padding=1, groups=r.choice([1, 2])), nn.ReLU(),
                              nn.Conv1d(16, 16, 3, padding=1, groups=groups), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 5))
        gen = lambda: torch.randint(0, 40, (4, 6))  # noqa: E731
    else:
        model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))
        gen = lambda: torch.randn(6, 32)  # noqa: E731
    if r.random() < 0.4:  # mixed precision: some layers their own random spec (as choose_bits' configs)
        overrides = []
        for name, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)) and r.random() < 0.5:
                try:
                    overrides.append((name, LayerSpec(weight_spec(r), input_spec(r, isinstance(m, (nn.Conv1d, nn.Conv2d))))))
                except (ValueError, TypeError):
                    pass
        extra["overrides"] = tuple(overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            q = qatkit.prepare_qat(model, QATConfig(default=spec, name="fuzz", **extra))
        except (ValueError, TypeError):
            return "refused"
        opt = torch.optim.SGD(q.parameters(), lr=0.01)
        for _ in range(3):
            loss = q(gen()).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        qatkit.qat.clip_latent_weights(q)
        q.eval()
        x = gen()
        path = os.path.join(tmp, "m.safetensors")
        with torch.no_grad():
            y = q(x)
            converted = qatkit.convert(q)
            yc = converted(x)
            qatkit.export(converted, path)
            yl = qatkit.load(path, compute="float")(x)
            on_kernels = qatkit.convert(q)
            qatkit.qat.set_compute(on_kernels, "integer", warn=False, kernels_only=True)
            yi, want_i = qatkit.load(path)(x), on_kernels(x)
    for what, got, want in (("convert differs from the QAT model", yc, y), ("the float load differs from convert", yl, yc),
                            ("the integer load differs from convert's kernels", yi, want_i)):
        if not torch.equal(got, want):
            return f"{what} by {(got - want).abs().max().item():.3g} ({spec})"
    no_form = False
    if onnx:
        res = _onnx(converted, gen, tmp, spec)
        if res is not None and res != "no onnx form":
            return res
        no_form = res == "no onnx form"
    if cpp:
        got = _cpp(path, x, tmp, "integer")
        if not isinstance(got, torch.Tensor) or not torch.equal(got, yi):
            return f"C++ integer: {got if not isinstance(got, torch.Tensor) else (got - yi).abs().max().item()} ({spec})"
        got = _cpp(path, x, tmp, "float")
        if not isinstance(got, torch.Tensor) or not torch.allclose(got, yl, rtol=0, atol=1e-4 * float(yl.abs().max()) + 1e-30):
            return f"C++ float: {got if not isinstance(got, torch.Tensor) else (got - yl).abs().max().item()} ({spec})"
    return "no onnx form" if no_form else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=200, help="draws (refused specs count)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpp", action="store_true", help="also run the C++ loader (build/py/qatkit_load_run)")
    ap.add_argument("--onnx", action="store_true", help="also run export_onnx in onnxruntime (within 2 %%)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.models < 1:
        ap.error(f"--models must be >= 1, got {args.models}")
    if args.cpp and not os.path.exists(EXE):
        ap.error(f"--cpp needs {EXE} (built by scripts/setup.sh)")
    from tqdm import tqdm

    r = random.Random(args.seed)
    t0, passed, refused, no_form = time.time(), 0, 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for draw in tqdm(range(args.models), desc="fuzz_specs", disable=args.no_progress):
            res = check(r, draw, tmp, args.cpp, args.onnx)
            if res == "refused":
                refused += 1
            elif res == "no onnx form":
                passed, no_form = passed + 1, no_form + 1
            elif res is not None:
                print(f"fuzz_specs: draw {draw} of seed {args.seed}: {res}", file=sys.stderr)
                return 1
            else:
                passed += 1
    print(f"fuzz_specs: {args.models} draws in {time.time() - t0:.0f} s, seed {args.seed}: {passed} models bit for bit "
          f"(QAT = convert = float load; integer load = convert's kernels{'; C++ integer equal, float within 1e-4' if args.cpp else ''}"
          f"{f'; onnxruntime within 2 % but {TIES[0]} at rounding ties, {no_form} with no ONNX form' if args.onnx else ''}), "
          f"{refused} specs refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
