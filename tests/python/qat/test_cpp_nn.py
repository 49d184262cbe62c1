"""The C++ QAT layers (qatkit/nn.h) and the Python ones give identical outputs and weight gradients
for the same weights and inputs: three training-mode forwards (observers updating), the first
one's weight gradient, one eval forward; then convert on both sides gives the same integer codes,
scales and zero points and the same converted output, bit for bit. The C++ side runs in tests/cpp/nn_crosscheck.cpp, built
with the test build (QATKIT_BUILD_TESTS=1, which scripts/setup.sh sets)."""

import dataclasses
import json
import os
import subprocess
import zlib

import pytest
import torch
import torch.jit._pickle
from torch import nn

import qatkit
from qatkit.qat import BitLinear, QuantConv1d, QuantConv2d, QuantConvBn2d, QuantLinear

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
EXE = os.path.join(ROOT, "build", "py", "qatkit_nn_crosscheck")

pytestmark = pytest.mark.skipif(
    not os.path.exists(EXE), reason="qatkit_nn_crosscheck is built only by the test build (scripts/setup.sh)"
)

CASES = [
    ("linear", "w8a8"),
    ("linear", "w4a8"),
    ("linear", "w4a4_lsq"),
    ("linear", "ternary_twn"),
    ("linear", "binary_w1a8"),
    ("linear", "xnor_w1a1"),
    ("bitlinear", "bitnet_b158"),
    ("conv2d", "w8a8"),
    ("conv2d", "ternary_twn"),
    ("conv2d_dw", "w8a8"),
    ("linear", "binaryconnect"),
    ("linear", "binaryconnect", {"stochastic": True}),  # same seeds (the step buffer) on both sides
    ("conv2d", "w4a8", {"group_size": 18}),
    ("conv1d", "w8a8"),
    ("conv1d", "w4a4_lsq"),
    ("convbn", "w8a8"),
    ("convbn", "w4a8", {"group_size": 18}),
    ("convbn", "ternary_twn"),
    ("convbn", "xnor_w1a1"),
    # QuantSpec.scale_dtype: weight scales rounded to float16 / bfloat16 on both sides
    ("linear", "w8a8", {"scale_dtype": "float16"}),
    ("linear", "w4a8", {"scale_dtype": "bfloat16"}),
    ("linear", "ternary_twn", {"scale_dtype": "float16"}),
    ("linear", "binary_w1a8", {"scale_dtype": "float16"}),
    ("convbn", "w8a8", {"scale_dtype": "float16"}),
]


def python_layer(layer, preset, w, b, params, bn_affine=None):
    if isinstance(preset, qatkit.LayerSpec):
        spec = preset
    else:
        params = dict(params)
        scale_dtype = params.pop("scale_dtype", None)
        spec = qatkit.preset(preset, **params).default
        if scale_dtype is not None:
            spec = dataclasses.replace(spec, weight=dataclasses.replace(spec.weight, scale_dtype=scale_dtype))
    if layer == "conv1d":
        conv = nn.Conv1d(w.shape[1], w.shape[0], w.shape[2], padding=1)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        return QuantConv1d.from_float(conv, spec), conv.weight
    if layer == "convbn":
        conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), padding=1)
        bn = nn.BatchNorm2d(w.shape[0])
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
            bn.weight.copy_(bn_affine[0])
            bn.bias.copy_(bn_affine[1])
        return QuantConvBn2d.from_float(conv, bn, spec), conv.weight
    if layer in ("linear", "bitlinear"):
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        return (BitLinear if layer == "bitlinear" else QuantLinear).from_float(lin, spec), lin.weight
    groups = w.shape[0] if layer == "conv2d_dw" else 1
    conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), padding=1, groups=groups)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    return QuantConv2d.from_float(conv, spec), conv.weight


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x) for x in c))
def test_cpp_and_python_layers_agree(tmp_path, case):
    layer, preset = case[:2]
    params = case[2] if len(case) > 2 else {}
    _crosscheck(tmp_path, layer, preset, params)


def _crosscheck(tmp_path, layer, preset, params, seed=None):
    """Run the layer on both sides (see the module docstring); ``preset`` a preset name or a
    LayerSpec (passed to C++ as QuantSpec JSON)."""
    if seed is None:
        seed = zlib.crc32(f"{layer}-{preset}-{params}".encode()) % 1000
    g = torch.Generator().manual_seed(seed)
    extra = {}
    if layer in ("linear", "bitlinear"):
        w, b = torch.randn(24, 64, generator=g) * 0.1, torch.randn(24, generator=g) * 0.1
        xs = [torch.randn(5, 64, generator=g) * (1 + i) for i in range(3)]
    elif layer == "conv1d":
        w, b = torch.randn(8, 6, 3, generator=g) * 0.2, torch.randn(8, generator=g) * 0.1
        xs = [torch.randn(2, 6, 9, generator=g) * (1 + i) for i in range(3)]
    else:
        cin = 1 if layer == "conv2d_dw" else 6
        w, b = torch.randn(8, cin, 3, 3, generator=g) * 0.2, torch.randn(8, generator=g) * 0.1
        xs = [torch.randn(2, 6 if cin == 6 else 8, 7, 7, generator=g) * (1 + i) for i in range(3)]
    if layer == "convbn":  # gamma of both signs: the fold's factor flips some channels
        extra = {"bn_weight": torch.randn(8, generator=g), "bn_bias": torch.randn(8, generator=g) * 0.1}
    torch.save({"weight": w, "bias": b, "x": xs, **extra}, tmp_path / "in.pt")
    if isinstance(preset, qatkit.LayerSpec):
        args = ["spec"] + [json.dumps(dataclasses.asdict(s)) if s is not None else "null"
                           for s in (preset.weight, preset.activation)]
    else:
        preset_params = {k: v for k, v in params.items() if k != "scale_dtype"}
        args = [preset, json.dumps(preset_params)] + ([params["scale_dtype"]] if "scale_dtype" in params else [])
    r = subprocess.run([EXE, str(tmp_path / "in.pt"), str(tmp_path / "out.pt"), layer, *args], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    # torch::pickle_save tags the list's element type with a helper torch.load allows explicitly
    with torch.serialization.safe_globals([torch.jit._pickle.restore_type_tag]):
        cpp = torch.load(tmp_path / "out.pt")
    q, weight = python_layer(layer, preset, w, b, params, (extra.get("bn_weight"), extra.get("bn_bias")))
    q.train()
    py = []
    for i, x in enumerate(xs):
        y = q(x)
        if i == 0:
            y.sum().backward()
            py.append(weight.grad.clone())
        py.append(y.detach())
    q.eval()
    py.append(q(xs[0]).detach())
    c = qatkit.convert(q)
    py += [c.weight_int, c.weight_scale, c.weight_zero_point, c(xs[0]).detach()]
    assert len(cpp) == len(py)
    for k, (a, c) in enumerate(zip(py, cpp, strict=True)):
        assert torch.equal(a, c), f"result {k} differs (max {(a - c).abs().max().item()}; {preset})"


def _random_specs(n, seed):
    """n (layer, LayerSpec) draws of scripts/fuzz_specs.py's random weight / input specs that
    QuantSpec accepts (every bit width, sign, symmetry, granularity, scale kind; the min/max
    observers)."""
    import random
    import sys

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import fuzz_specs

    r, out = random.Random(seed), []
    while len(out) < n:
        layer = r.choice(["linear", "linear", "conv2d", "conv2d_dw", "conv1d", "convbn"])
        try:
            spec = qatkit.LayerSpec(fuzz_specs.weight_spec(r), fuzz_specs.input_spec(r, layer != "linear"))
        except (ValueError, TypeError):
            continue
        if spec.activation is not None and spec.activation.granularity == "per_channel" and layer != "linear":
            spec = dataclasses.replace(spec, activation=dataclasses.replace(spec.activation, axis=1))
        if spec.activation is not None and spec.activation.observer not in ("minmax", "moving_average"):
            # the histogram observers (percentile, mse, kl) are Python's; C++ refuses them by name
            spec = dataclasses.replace(spec, activation=dataclasses.replace(
                spec.activation, observer=r.choice(["minmax", "moving_average"])))
        out.append((layer, spec))
    return out


@pytest.mark.parametrize("i,case", list(enumerate(_random_specs(24, seed=7))),
                         ids=lambda c: str(c) if isinstance(c, int) else "")
def test_cpp_and_python_layers_agree_on_random_specs(tmp_path, i, case):
    """The crosscheck above for QuantSpec pairs outside the presets (passed to C++ as
    QuantSpec JSON): training forwards, the weight gradient, the eval forward, convert's codes,
    scales and zero points and its output, bit for bit."""
    layer, spec = case
    try:
        shape = {"linear": (24, 64), "conv1d": (8, 6, 3), "conv2d_dw": (8, 1, 3, 3)}.get(layer, (8, 6, 3, 3))
        python_layer(layer, spec, torch.zeros(shape), torch.zeros(shape[0]), {}, (torch.ones(8), torch.zeros(8)))
    except (ValueError, TypeError) as e:  # specs a layer refuses (Python's message; C++ must refuse too)
        pytest.skip(f"Python refuses this spec for {layer}: {e}")
    _crosscheck(tmp_path, layer, spec, {}, seed=100 + i)
