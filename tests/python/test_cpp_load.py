"""The C++ loader (qatkit::nn::load, csrc/nn/load.cpp) on files Python's qatkit.export wrote: the
repo's digits models at several presets give Python's outputs bit for bit from a LibTorch
program (tests/cpp/load_run.cpp, built by the test build that scripts/setup.sh runs); what the
C++ layers cannot honour is refused naming the reason."""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import qatkit
from qatkit.qat.config import LayerSpec, QATConfig, QuantSpec
from qatkit.testing.reference import same_bits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXE = os.path.join(ROOT, "build", "py", "qatkit_load_run")
pytestmark = pytest.mark.skipif(
    not os.path.exists(EXE), reason="qatkit_load_run is built only by the test build (scripts/setup.sh)"
)


def _qat_models():
    spec = importlib.util.spec_from_file_location("qat_models", os.path.join(ROOT, "scripts", "qat_models.py"))
    qm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qm)
    return qm


def _run(model_path, x, tmp_path, compute="integer"):
    """load_run on x: (result, y), or with compute="both" (result, {"y": integer, "y_float": float});
    compute="unfused": integer compute with fuse_activations=false."""
    from safetensors.torch import load_file, save_file

    inp, out = str(tmp_path / "x.safetensors"), str(tmp_path / "y.safetensors")
    save_file({"x": x.contiguous()}, inp)
    flag = {"float": ["--float"], "both": ["--both"], "unfused": ["--unfused"]}.get(compute, [])
    # a fixed MKL thread count: with MKL's dynamic threading a float GEMM's split (and bits) can vary
    # from run to run (scripts/fuzz_models.py)
    r = subprocess.run([EXE, *flag, model_path, inp, out], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MKL_DYNAMIC": "FALSE"})
    if r.returncode != 0:
        return r, None
    return r, (load_file(out) if compute == "both" else load_file(out)["y"])


def _ptq_exported(net, x, cfg, path):
    """net quantized by qatkit.ptq on x, exported to path and loaded back (qatkit.load)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(net.eval(), [x], cfg, correct_bias=None, verbose=False, progress=False)
    qatkit.export(q, path)
    return qatkit.load(path)


def _assert_cpp_gives(path, x, tmp_path, want, want_int):
    """The C++ program's outputs in float and (its default) integer compute equal Python's (one
    run of load_run --both: the file loaded in each compute, y and y_float)."""
    r, y = _run(path, x, tmp_path, "both")
    assert r.returncode == 0, r.stderr
    assert torch.equal(y["y_float"], want), "float"
    assert torch.equal(y["y"], want_int), "integer"


def _assert_cpp_resaves(path, x, tmp_path, want, want_int):
    """qatkit::nn::save of the C++ loader's model (load_run --resave) is a file Python's loader
    reads to the same outputs in float and integer compute."""
    again = str(tmp_path / "again.safetensors")
    r = subprocess.run([EXE, "--resave", path, again], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        assert torch.equal(qatkit.load(again, compute="float")(x), want)
        assert torch.equal(qatkit.load(again)(x), want_int)


@pytest.mark.parametrize("arch", ["MLP", "CNN", "DSCNN"])
@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "w4a4_lsq", "ternary_twn", "bitnet_b158", "xnor_w1a1",
                                    "int4_weight_only", "binary_weight_only", "int8_weight_only"])
def test_cpp_prints_the_python_outputs_of_exported_digits_models(arch, preset, tmp_path):
    torch.manual_seed(0)
    seq = getattr(_qat_models(), arch)().as_sequential().eval()
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(seq, list(x.split(8)), qatkit.preset(preset), correct_bias=None, verbose=False, progress=False)
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    with torch.no_grad():
        want = qatkit.load(path, compute="float")(x)
        want_int = qatkit.load(path)(x)  # integer kernels where they run a layer
    # C++'s default: the same integer kernels on the same operands, Python's outputs bit for bit
    _assert_cpp_gives(path, x, tmp_path, want, want_int)
    if preset == "w8a8":  # every layer on a kernel (int32 biases): a different function from the float one
        assert not torch.equal(want_int, want)
    # qatkit::nn::save writes the loaded model back: the same packed tensors, Python's outputs
    again = str(tmp_path / "again.safetensors")
    r = subprocess.run([EXE, "--resave", path, again], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file

    a, b = load_file(path), load_file(again)
    for k, v in a.items():
        if k.endswith((".weight_packed", ".weight_scale", ".weight_zero_point", ".bias")):
            assert torch.equal(b[k], v), k
    with torch.no_grad():
        assert torch.equal(qatkit.load(again, compute="float")(x), want)


@pytest.mark.parametrize("bits", [9, 10, 16])
def test_wide_asymmetric_weights_with_negative_zero_points_load(bits, tmp_path):
    """The loader compared an int8 zero-point tensor with the code range's Python ints, which torch
    casts to int8: a 10-bit range's -512 wrapped to 0, and every negative zero point of a valid file
    was "outside the code range". Compared in int64 now."""
    cfg = qatkit.QATConfig(default=LayerSpec(QuantSpec(bits=bits, symmetric=False, granularity="per_channel"),
                                             QuantSpec(bits=8, symmetric=False)), name=f"w{bits}")
    torch.manual_seed(1)
    q = qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), cfg)
    with torch.no_grad():
        q[0].weight.add_(0.3)  # lopsided rows: zero points far from 0, negative ones among them
    x = torch.randn(8, 16)
    q(x)
    q.eval()
    zp = qatkit.convert(q)[0].weight_zero_point
    assert int(zp.min()) < 0
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    with torch.no_grad():
        want = qatkit.convert(q)(x)
        assert torch.equal(qatkit.load(path, compute="float")(x), want)
        want_int = qatkit.load(path)(x)
    _assert_cpp_gives(path, x, tmp_path, want, want_int)


def test_a_learned_step_size_below_zero_exports_as_the_layer_uses_it(tmp_path):
    """SGD can take a dead channel's learned (LSQ) step size below zero; the op clamps it at float32's
    epsilon, and export wrote the raw value, a file qatkit.load and the C++ loader refused ("the
    input's scale must be finite and positive"). The file holds the clamped step size: Python and
    C++ give the converted model's outputs."""
    cfg = qatkit.QATConfig(
        default=LayerSpec(QuantSpec(bits=8, granularity="per_channel"),
                          QuantSpec(bits=8, symmetric=True, granularity="per_channel", axis=-1, scale="learned")),
        name="lsq_pc")
    torch.manual_seed(0)
    q = qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), cfg)
    x = torch.randn(8, 16)
    q(x)  # initializes the step sizes
    with torch.no_grad():
        q[2].input_fake_quant.scale[3] = -2.7e-4
    q.eval()
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    with torch.no_grad():
        want = qatkit.convert(q)(x)
        assert torch.equal(q(x), want)
        got = qatkit.load(path, compute="float")(x)
        want_int = qatkit.load(path)(x)
    assert torch.equal(got, want)
    _assert_cpp_gives(path, x, tmp_path, want, want_int)


@pytest.mark.parametrize("kind", ["ternary", "binary"])
@pytest.mark.parametrize("arch", ["MLP", "CNN"])
def test_per_tensor_lowbit_weights_with_static_inputs_run_on_their_kernels(kind, arch, tmp_path):
    """A per-tensor ternary / binary weight scale with a static (or learned) input range: the
    kernels take one S_x * S_w per output row, and the plan passed one for the tensor, so the first
    integer call raised ("linear_w2a8: out_scale must have shape [N] = [64], got [1]") in Python and
    C++. Both repeat it over the rows now: the converted model's integer simulation, Python's
    kernels and C++'s agree bit for bit."""
    from qatkit.qat.convert import _Quantized

    w = QuantSpec(kind=kind, bits=2 if kind == "ternary" else 1, method="absmean" if kind == "ternary" else "none")
    a = QuantSpec(kind="int", bits=8, signed=False, symmetric=False)
    torch.manual_seed(0)
    seq = getattr(_qat_models(), arch)().as_sequential().eval()
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(seq, list(x.split(8)), QATConfig(default=LayerSpec(w, a), name="pt"), correct_bias=None,
                       verbose=False, progress=False)
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    with torch.no_grad():
        loaded = qatkit.load(path)
        want_int = loaded(x)
        assert torch.equal(want_int, qatkit.convert(q, integer=True)(x))
        want = qatkit.load(path, compute="float")(x)
    kernels = {qatkit.qat.integer.kernel_for(m) for m in loaded.modules() if isinstance(m, _Quantized)}
    assert f"linear_w{2 if kind == 'ternary' else 1}a8" in kernels
    _assert_cpp_gives(path, x, tmp_path, want, want_int)


@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "w4a4_lsq", "ternary_twn", "bitnet_b158", "binary_w1a8",
                                    "xnor_w1a1", "binaryconnect", "int4_weight_only"])
def test_a_cpp_qat_model_saved_by_cpp_loads_in_python_and_cpp_bit_for_bit(preset, tmp_path):
    """qatkit::nn::save of a model prepared and calibrated in C++ (tests/cpp/load_run.cpp
    --qat-save: conv-BN (folded by convert), depthwise conv, pooling, GELU, Dropout, Linear):
    Python's qatkit.load and the C++ loader give the C++ converted model's outputs bit for bit."""
    from safetensors.torch import load_file, save_file

    x = torch.rand(16, 64, generator=torch.Generator().manual_seed(5))
    inp, path, out = (str(tmp_path / n) for n in ("x.safetensors", "m.safetensors", "y.safetensors"))
    save_file({"x": x}, inp)
    r = subprocess.run([EXE, "--qat-save", preset, inp, path, out], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    want = load_file(out)["y"]
    header = qatkit.serialization.read_header(path)
    assert header["structure"] is not None and len(header["layers"]) >= 2
    with torch.no_grad():
        assert torch.equal(qatkit.load(path, compute="float")(x), want)
    r, y = _run(path, x, tmp_path, "float")
    assert r.returncode == 0, r.stderr
    assert torch.equal(y, want)


@pytest.mark.parametrize("preset,scaling", [("w8a8", "smoothquant"), ("w4a8", "smoothquant"),
                                            ("int4_weight_only", "awq"), ("w8a8", "awq")])
def test_cpp_runs_smoothquant_and_awq_layers_bit_for_bit(preset, scaling, tmp_path):
    """Input scaling (x / smooth before the layer; SmoothQuant, AWQ): the C++ loader gives Python's
    outputs bit for bit in float and integer compute (linear_int8 divides inside its quantization
    pass, the other kernels after a division), and qatkit::nn::save writes the smoothing back."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    x[:, 5] *= 20  # an outlier channel: the smoothing is far from 1
    mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(mlp, list(x.split(8)), qatkit.preset(preset), scaling=scaling, correct_bias=None,
                       verbose=False, progress=False)
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    smooths = {k: v for k, v in load_file(path).items() if k.endswith(".smooth")}
    assert smooths and any(not torch.equal(v, torch.ones_like(v)) for v in smooths.values())
    with torch.no_grad():
        want, want_int = qatkit.load(path, compute="float")(x), qatkit.load(path)(x)
        # the smoothing matters: without it the same layers give other outputs
        plain = qatkit.load(path)
        for m in plain.modules():
            if getattr(m, "smooth", None) is not None:
                m.smooth = None
                m.__dict__.pop("_int8_plan", None)
        assert not torch.equal(plain(x), want_int)
    _assert_cpp_gives(path, x, tmp_path, want, want_int)
    again = str(tmp_path / "again.safetensors")
    r = subprocess.run([EXE, "--resave", path, again], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    b = load_file(again)
    for k, v in smooths.items():
        assert torch.equal(b[k], v), k
    with torch.no_grad():
        assert torch.equal(qatkit.load(again)(x), want_int)


def test_a_nan_input_gives_the_python_nan_pattern_in_the_cpp_program(tmp_path):
    """A NaN pixel: the C++ loader's integer layers give NaN exactly where Python's loaded model
    does (and where the QAT model does: that one image's logits), the other outputs bit for bit
    (docs/integer.md, "NaN inputs"); a reflect-padded depthwise conv and a strided conv on the way."""

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1, groups=16, padding_mode="reflect"), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x[1, 0, 2, 2] = float("nan")
    for preset in ("w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1"):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qatkit.prepare_qat(net, qatkit.preset(preset))
            qatkit.qat.calibrate(q, [torch.randn(4, 3, 8, 8)])
            path = str(tmp_path / f"{preset}.safetensors")
            qatkit.export(qatkit.convert(q), path)
        with torch.no_grad():
            want = qatkit.load(path)(x)
            qat = q.eval()(x)
        assert torch.equal(want.isnan(), qat.isnan()) and want.isnan().any(1).tolist() == [False, True, False, False]
        r, y = _run(path, x, tmp_path)
        assert r.returncode == 0, r.stderr
        assert same_bits(y, want), preset


@pytest.mark.parametrize("preset", ["w8a8", "w4a4_lsq"])
def test_a_corrupt_input_scale_is_refused_at_load_naming_the_layer(preset, tmp_path):
    """A file whose input quantizer scale is NaN, Inf, 0, negative or subnormal (or whose zero point is NaN):
    both loaders refuse it at load, naming the tensor and the layer. Before, it loaded and the first
    call raised from inside the kernel ('linear_int8: act_scale must be ...', no layer) or from
    fake_quantize."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    x = torch.randn(16, 64)
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.prepare_qat(mlp, dataclasses.replace(qatkit.preset(preset), first_last=None))
        qatkit.qat.calibrate(q, [x])
        path = str(tmp_path / "m.safetensors")
        qatkit.export(qatkit.convert(q), path)
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    keys = [k for k in tensors if k.startswith("2.input_fake_quant.") and k.rsplit(".", 1)[-1] in ("scale", "zero_point")
            and tensors[k].is_floating_point()]
    assert any(k.endswith(".scale") for k in keys), sorted(tensors)
    for key in keys:
        bads = (float("nan"),) if key.endswith("zero_point") else (float("nan"), float("inf"), 0.0, -1.0, 1e-40)
        for bad in bads:
            t = dict(tensors)
            t[key] = torch.full_like(t[key], bad)
            p = str(tmp_path / "bad.safetensors")
            save_file(t, p, metadata=meta)
            msg = "must be finite" + ("" if key.endswith("zero_point") else " and positive")
            with pytest.raises(ValueError, match=f"layer '2': {re.escape(key[2:])} .*{msg}"):
                qatkit.load(p)
            r, _ = _run(p, x, tmp_path)
            leaf = key.rsplit(".", 1)[-1]
            assert r.returncode == 1 and msg in r.stderr and "2.input_fake_quant." in r.stderr and leaf in r.stderr, \
                (key, bad, r.stderr)


def test_cpp_refuses_a_corrupt_smoothing(tmp_path):
    """A file whose smoothing is zero, non-finite or of the wrong shape: a clear error naming the
    layer (Python's loader too), never inf / NaN outputs."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    x = torch.randn(16, 64)
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(mlp, [x], qatkit.w8a8(), scaling="smoothquant", correct_bias=None, verbose=False, progress=False)
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    tensors = load_file(path)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    key = next(k for k in tensors if k.endswith(".smooth"))
    layer = key[: -len(".smooth")]
    for bad, msg in ((torch.zeros(64), "finite and positive"), (torch.full((64,), float("nan")), "finite and positive"),
                     (torch.ones(63), "shape [64]")):
        t = dict(tensors)
        t[key] = bad
        p = str(tmp_path / "bad.safetensors")
        save_file(t, p, metadata=meta)
        r, _ = _run(p, x, tmp_path)
        assert r.returncode == 1 and msg in r.stderr and layer in r.stderr, r.stderr
        with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            qatkit.load(p)


def test_cpp_refuses_what_it_cannot_honour(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(16, 64)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(64, 10)

        def forward(self, x):
            return self.a(x) * 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        custom = qatkit.ptq(Custom(), [x], qatkit.w8a8(), correct_bias=None, verbose=False, progress=False)
    cases = [(custom, "load it into a model built with its architecture: qatkit::nn::load_into (C++), qatkit.load_into (Python)")]
    for model, msg in cases:
        path = str(tmp_path / "r.safetensors")
        qatkit.export(model, path)
        r, _ = _run(path, x, tmp_path)
        assert r.returncode == 1 and msg in r.stderr, r.stderr
    bad = str(tmp_path / "bad.safetensors")
    open(bad, "wb").write(b"\x05\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    r, _ = _run(bad, x, tmp_path)
    assert r.returncode == 1 and "bad.safetensors" in r.stderr


@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16"])
def test_cpp_loads_reduced_precision_weight_scales_bit_for_bit(scale_dtype, tmp_path):
    """QuantSpec.scale_dtype: files store the rounded scales in that dtype; the C++ loader widens
    them and gives Python's outputs bit for bit (int8 per group, int4 per channel, ternary,
    binary)."""
    from qatkit.qat.config import LayerSpec, QATConfig, QuantSpec

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                      nn.Linear(64, 10))
    specs = [QuantSpec(bits=8, granularity="per_group", group_size=32, scale_dtype=scale_dtype),
             QuantSpec(bits=4, granularity="per_channel", scale_dtype=scale_dtype),
             QuantSpec(kind="ternary", method="twn", granularity="per_channel", scale_dtype=scale_dtype),
             QuantSpec(kind="binary", method="mean_abs", granularity="per_channel", scale_dtype=scale_dtype)]
    cfg = QATConfig(default=LayerSpec(weight=specs[0], activation=None),
                    overrides=tuple((str(2 * i), LayerSpec(weight=s, activation=None)) for i, s in enumerate(specs)))
    q = qatkit.prepare_qat(m, cfg)
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    x = torch.randn(6, 64)
    with torch.no_grad():
        want = qatkit.load(path, compute="float")(x)
        assert torch.equal(want, qatkit.convert(q).eval()(x))
    r, y = _run(path, x, tmp_path, "float")
    assert r.returncode == 0, r.stderr
    assert torch.equal(y, want)


@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "binary_w1a8"])
def test_cpp_integer_convs_and_conv1d_match_python(preset, tmp_path):
    """Padded, strided, dilated, 1x1 and 1-d convs on C++'s integer kernels: Python's loaded model bit for bit
    (string padding and padding modes: test_cpp_loads_string_padding_and_padding_modes)."""
    torch.manual_seed(1)
    nets = [
        (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2,
                       padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 5)),
         (6, 3, 8, 8)),
        (nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 8, 3,
                       dilation=2), nn.ReLU(), nn.Conv1d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10, 5)),
         (6, 4, 16)),
    ]
    for net, shape in nets:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qatkit.ptq(net.eval(), [x], qatkit.preset(preset), correct_bias=None, verbose=False, progress=False)
        path = str(tmp_path / "c.safetensors")
        qatkit.export(q, path)
        loaded = qatkit.load(path)
        assert sum(r[1] is not None for r in loaded.compute_report) >= 3  # the convs run on kernels
        with torch.no_grad():
            want = loaded(x)
        r, y = _run(path, x, tmp_path)
        assert r.returncode == 0, r.stderr
        assert torch.equal(y, want)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "xnor_w1a1"])
def test_cpp_loads_string_padding_and_padding_modes(preset, tmp_path):
    """Convs with padding='same' (odd and even totals) / 'valid' and reflect / replicate / circular
    padding modes, packed and float (the first and last layers), from Python's files: the C++
    loader gives Python's loaded outputs bit for bit in float and integer compute (XNOR's uneven
    'same' and reflect convs keep float math in both), and qatkit::nn::save writes them back as
    Python reads them."""
    import dataclasses

    from qatkit.qat import integer

    torch.manual_seed(8)
    nets = [
        (nn.Sequential(nn.Conv2d(4, 32, 3, padding="same", padding_mode="reflect"), nn.ReLU(),
                       nn.Conv2d(32, 32, 2, padding="same"), nn.ReLU(),
                       nn.Conv2d(32, 32, 3, padding="same", dilation=2, padding_mode="replicate"), nn.ReLU(),
                       nn.Conv2d(32, 32, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                       nn.Conv2d(32, 32, 1, padding="valid"), nn.ReLU(),
                       nn.Conv2d(32, 8, 3, padding="same", padding_mode="reflect"), nn.Flatten(),
                       nn.Linear(8 * 7 * 6, 5)), (5, 4, 7, 6)),
        (nn.Sequential(nn.Conv1d(4, 32, 4, padding="same"), nn.ReLU(), nn.Conv1d(32, 32, 3, padding="same",
                       padding_mode="reflect"), nn.ReLU(), nn.Conv1d(32, 8, 2, padding="valid"), nn.Flatten(),
                       nn.Linear(8 * 10, 5)), (5, 4, 11)),
    ]
    for net, shape in nets:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(9))
        cfg = qatkit.preset(preset)
        if preset == "xnor_w1a1":
            cfg = dataclasses.replace(cfg, first_last="float")
        path = str(tmp_path / "p.safetensors")
        loaded = _ptq_exported(net, x, cfg, path)
        mods = dict(loaded.named_modules())
        on = [integer.kernel_for(mods[n]) for n, form, _ in loaded.compute_report if form is not None]
        assert len(on) >= (1 if preset == "xnor_w1a1" else 2) and all(on), loaded.compute_report
        with torch.no_grad():
            want, want_int = qatkit.load(path, compute="float")(x), loaded(x)
        _assert_cpp_gives(path, x, tmp_path, want, want_int)
        _assert_cpp_resaves(path, x, tmp_path, want, want_int)


def test_a_reversed_padding_its_padding_does_not_give_is_refused(tmp_path):
    """A reflect / replicate / circular conv pads by reversed_padding in Python's layer and by the
    pads its padding gives in the C++ loader: a header whose reversed_padding alone was edited
    (fuzz_load.py --pool layers, seed 45: 'same' with [1, 1, 1, 2^26]) loaded and ran in C++ and
    failed in Python's forward. Both loaders refuse the pair, and export refuses a conv whose
    padding was changed after it was built (nn.ConvNd keeps the pads of its construction)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_serialization import _rewrite_header

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 8, 3, padding="same", padding_mode="reflect"), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=(1, 2), padding_mode="circular"), nn.Flatten(),
                        nn.Linear(8 * 6 * 8, 4)).eval()
    x = torch.randn(4, 2, 6, 6)
    path, bad = str(tmp_path / "p.safetensors"), str(tmp_path / "bad.safetensors")
    _ptq_exported(net, x, dataclasses.replace(qatkit.w8a8(), first_last=None), path)
    cases = (("0", [1, 1, 1, 2**26], 'reversed_padding [1, 1, 1, 67108864] is not what padding "same" gives'),
             ("2", [1, 1, 2, 2], "reversed_padding [1, 1, 2, 2] is not what padding [1, 2] gives"),
             ("2", None, "reversed_padding None is not what padding [1, 2] gives"))
    for layer, rp, msg in cases:
        _rewrite_header(path, bad,
                        lambda meta, head: meta["layers"][layer]["params"].__setitem__("reversed_padding", rp))
        with pytest.raises(ValueError, match=re.escape(msg)):
            qatkit.load(bad)
        r, _ = _run(bad, x, tmp_path)
        assert r.returncode == 1 and "reversed_padding" in r.stderr and "is not what padding" in r.stderr, r.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(net, [x], dataclasses.replace(qatkit.w8a8(), first_last=None), correct_bias=None, verbose=False,
                       progress=False)
    q[2].padding = (2, 1)  # its _reversed_padding_repeated_twice stays (2, 2, 1, 1), as nn.Conv2d's would
    with pytest.raises(ValueError, match=re.escape("not the [1, 1, 2, 2] its padding gives: was .padding changed")):
        qatkit.export(q, path)


@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "int8_weight_only"])
def test_cpp_loads_and_saves_every_activation_pooling_and_float_module_python_does(preset, tmp_path):
    """qatkit.testing.models.leaf_zoo (ReLU6, LeakyReLU, PReLU, ELU, Hardtanh, Hardswish,
    Hardsigmoid, Mish, Softmax, LogSoftmax, 1-d pooling, a ceil-mode max pool, an average pool with
    divisor_override, a float Embedding with max_norm): the C++ loader gives Python's loaded
    outputs bit for bit in float and integer compute, qatkit::nn::save writes the modules back as
    Python reads them, and a file C++ cannot rebuild is refused naming the module."""
    import dataclasses

    from qatkit.testing.models import leaf_zoo

    for name, net, x, xt in leaf_zoo():
        cfg = dataclasses.replace(qatkit.preset(preset), first_last=None)
        path = str(tmp_path / f"{name}.safetensors")
        loaded = _ptq_exported(net, x, cfg, path)
        with torch.no_grad():
            want, want_int = qatkit.load(path, compute="float")(xt), loaded(xt)
        _assert_cpp_gives(path, xt, tmp_path, want, want_int)
        _assert_cpp_resaves(path, xt, tmp_path, want, want_int)
    net = nn.Sequential(nn.Linear(16, 16), nn.Softsign(), nn.Linear(16, 4)).eval()
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    path = str(tmp_path / "softsign.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(net, [x], dataclasses.replace(qatkit.w8a8(), first_last=None), verbose=False, progress=False)
    qatkit.export(q, path)
    r, _ = _run(path, x, tmp_path)
    assert r.returncode != 0 and "module '1' is a Softsign, which qatkit.load does not rebuild" in r.stderr, r.stderr


def test_cpp_refuses_a_size_in_a_corrupt_header_before_it_allocates(tmp_path):
    """The C++ loader checks the sizes a header names against the file's tensors before it builds
    a module: a packed Linear whose header says 2^26 input features (a 2 GiB float weight in
    QuantLinear's constructor) and an unfolded BatchNorm1d of 2^26 features are refused naming
    the tensor. Before 2026-12-05 it built them first: at 2^28 features the program was killed
    for memory (24 GiB RSS, exit 137) on this 24 GiB machine. The program's peak RSS is read from
    a fresh Python parent (RUSAGE_CHILDREN holds only its one child)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_serialization import _oversized_files

    from safetensors.torch import save_file

    inp = str(tmp_path / "x.safetensors")
    save_file({"x": torch.randn(2, 8)}, inp)
    want = {"bn": "tensor '0.weight' has shape [8], the header's module needs [67108864]",
            "linear": "tensor '1.weight_packed' has shape [8, 8], the header's module needs [8, 67108864]"}
    for path, key in zip(_oversized_files(tmp_path), ("bn", "linear")):
        code = ("import resource, subprocess, sys\n"
                "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
                "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
                "print(r.stderr)\n")
        r = subprocess.run([sys.executable, "-c", code, EXE, path, inp, str(tmp_path / "y.safetensors")],
                           capture_output=True, text=True, timeout=300)
        rc, rss = (int(v) for v in r.stdout.split("\n")[0].split())
        assert rc == 1 and want[key] in r.stdout, r.stdout
        assert rss < 600, f"peak RSS {rss} MB: something of the header's size was allocated"


def test_conv_geometry_past_the_loaders_bounds_is_refused_in_python_and_cpp(tmp_path):
    """A header edited to a conv padding of 2^40, or a stride of 0 (of a packed conv or a float one
    of the structure), is refused by both loaders naming the parameter (Python's bounds: kernel_size, stride and dilation >= 1, padding >= 0,
    each below 2^31; the C++ loader took any int until 2026-12-07, scripts/fuzz_load.py --cpp
    seed 4141). Inside the bounds a padding of 2^28 loads in both, and LibTorch's float conv
    (a weight-only layer's) refuses the forward: a RuntimeError in Python, exit 1 with oneDNN's
    message in the C++ program, where its dnnl::error (no c10::Error) had ended the program."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_serialization import _rewrite_header

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
    x = torch.randn(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(net, [x], qatkit.preset("int8_weight_only"), correct_bias=None, verbose=False, progress=False)
    path, bad = str(tmp_path / "ok.safetensors"), str(tmp_path / "bad.safetensors")
    qatkit.export(q, path)

    def conv_param(key, value):
        _rewrite_header(path, bad, lambda meta, head: meta["layers"]["0"]["params"].__setitem__(key, value))

    for key, value, msg in [("padding", [2**40, 2**40], "padding must be 2 int(s) >= 0"),
                            ("stride", [0, 1], "stride must be 2 int(s) >= 1"),
                            ("dilation", [1, 2**31], "dilation must be 2 int(s) >= 1"),
                            ("reversed_padding", [1], "bad reversed_padding"),
                            ("reversed_padding", [1, 1, 1, True], "bad reversed_padding"),  # (a bool is no int)
                            # (Python took any string: its kernels padded by reversed_padding)
                            ("padding", "nan", "padding: expected numbers, 'same' or 'valid', got 'nan'")]:
        conv_param(key, value)
        with pytest.raises(ValueError, match=re.escape(msg)):
            qatkit.load(bad)
        r, _ = _run(bad, x, tmp_path)
        assert r.returncode == 1 and f"layer '0': {msg}" in r.stderr, (r.returncode, r.stderr)
    # an int for every dim, as nn.Conv2d takes it: both loaders compute what [1, 1] computes (Python's
    # raised a TypeError on it; a list of one for a 2-d conv is refused by both; fuzz_load --agree)
    conv_param("padding", 1)
    want = qatkit.load(path)(x)
    assert torch.equal(qatkit.load(bad)(x), want)
    r, y = _run(bad, x, tmp_path)
    assert r.returncode == 0 and torch.equal(y, want), r.stderr
    def same_strided(meta, head):
        meta["layers"]["0"]["params"].update(padding="same", stride=[1, 2])

    _rewrite_header(path, bad, same_strided)
    with pytest.raises(ValueError, match=re.escape("padding 'same' needs stride 1, got stride [1, 2]")):
        qatkit.load(bad)
    r, _ = _run(bad, x, tmp_path)
    assert r.returncode == 1 and "layer '0': padding 'same' needs stride 1, got stride [1, 2]" in r.stderr, r.stderr
    conv_param("stride", [1])
    with pytest.raises(ValueError, match=re.escape("stride must be 2 int(s)")):
        qatkit.load(bad)
    r, _ = _run(bad, x, tmp_path)
    assert r.returncode == 1 and "layer '0': stride must be 2 int(s)" in r.stderr, (r.returncode, r.stderr)
    _rewrite_header(path, bad, lambda meta, head: meta["layers"]["0"]["params"].pop("reversed_padding"))
    with pytest.raises(ValueError, match=re.escape("missing key 'reversed_padding'")):
        qatkit.load(bad)
    r, _ = _run(bad, x, tmp_path)
    assert r.returncode == 1 and "layer '0': missing key 'reversed_padding'" in r.stderr, (r.returncode, r.stderr)
    conv_param("padding", [2**28, 2**28])
    loaded = qatkit.load(bad)
    with pytest.raises(RuntimeError):
        loaded(x)
    r, _ = _run(bad, x, tmp_path)
    assert r.returncode == 1 and r.stderr.strip(), (r.returncode, r.stderr)

    # a float conv of the structure (first_last="float"): a stride of 0 refused by both as well
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(net, [x], dataclasses.replace(qatkit.w8a8(), first_last="float"), correct_bias=None,
                       verbose=False, progress=False)
    qatkit.export(q, path)
    _rewrite_header(path, bad, lambda meta, head: meta["structure"]["children"][0][1]["args"].__setitem__("stride", [1, 0]))
    with pytest.raises(ValueError, match=re.escape("Conv2d argument stride=[1, 0] must be >= 1")):
        qatkit.load(bad)
    r, _ = _run(bad, x, tmp_path)
    assert r.returncode == 1 and "stride must be 2 int(s) >= 1" in r.stderr, (r.returncode, r.stderr)


def test_corrupt_weight_entries_are_refused_alike_in_python_and_cpp(tmp_path):
    """Header and code edits that scripts/fuzz_load.py --cpp --many N --agree found the C++ loader
    running (2026-12-07) while Python refused them: a ternary code of 2 (a 2-bit 3), an offset or
    width the spec does not imply, a zero point the header does not announce, an axis past the
    weight's dims, an input spec its quantizer's record was not saved with, a malformed header. Both loaders now refuse each with the same words. A BitLinear whose RMSNorm eps
    is not the 1e-6 the C++ layer computes with loads in Python (which honours it) and is refused in
    C++, not run with another eps."""
    import json
    import struct

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_serialization import _rewrite_header

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.randn(4, 64)
    tern, w8, bad = (str(tmp_path / n) for n in ("t.safetensors", "w8.safetensors", "bad.safetensors"))
    _ptq_exported(net, x, dataclasses.replace(qatkit.preset("ternary_twn"), first_last=None), tern)
    _ptq_exported(net, x, dataclasses.replace(qatkit.w8a8(), first_last=None), w8)

    def refused_alike(msg):
        with pytest.raises(ValueError, match=re.escape(msg)):
            qatkit.load(bad)
        r, _ = _run(bad, x, tmp_path)
        assert r.returncode == 1 and msg in r.stderr, (r.returncode, r.stderr)

    raw = bytearray(open(tern, "rb").read())
    n = struct.unpack("<Q", raw[:8])[0]
    begin = json.loads(raw[8:8 + n])["0.weight_packed"]["data_offsets"][0]
    raw[8 + n + begin] = 0xFF  # four 2-bit 3s: code 2
    open(bad, "wb").write(raw)
    refused_alike("weight codes must lie in [-1, 1] (the spec's range), got [-1, 2]")

    def weight(key, value, src=w8):
        _rewrite_header(src, bad, lambda meta, head: meta["layers"]["0"]["weight"].__setitem__(key, value))

    weight("offset", 100)
    refused_alike("packing 'offset' with 8 bit(s) and offset 100 does not match the spec")
    weight("zero_point", True)
    refused_alike("weight_zero_point presence does not match the header")
    weight("axis", 5)
    refused_alike("bad axis 5")
    # the header's input spec no longer the one the quantizer's record (its _extra_state) was saved with
    _rewrite_header(w8, bad, lambda meta, head: meta["layers"]["0"]["input"]["spec"].__setitem__("symmetric", True))
    refused_alike("holds a quantizer saved with another spec (fields ['symmetric']")
    _rewrite_header(w8, bad, lambda meta, head: meta.__setitem__("float_tensors", "0.bias"))
    refused_alike("the header needs 'layers' (object) and 'float_tensors' (list)")
    _rewrite_header(w8, bad, lambda meta, head: meta.__setitem__("float_tensors", [1]))
    refused_alike("float_tensors must be a list of tensor names")

    bit_path = str(tmp_path / "bit.safetensors")  # bitnet_b158 makes the Linears BitLinears
    _ptq_exported(net, x, dataclasses.replace(qatkit.bitnet_b158(), first_last=None), bit_path)
    _rewrite_header(bit_path, bad, lambda meta, head: meta["layers"]["0"]["params"].__setitem__("eps", 1e-5))
    assert qatkit.load(bad)[0].eps == 1e-5
    r, _ = _run(bad, x, tmp_path)
    assert r.returncode == 1 and "a BitLinear with RMSNorm eps 1e-05; the C++ BitLinear computes with 1e-6" in r.stderr, \
        r.stderr


def test_header_edits_one_loader_took_are_refused_by_both(tmp_path):
    """What scripts/fuzz_load.py --cpp --many N --agree found one loader taking and the other
    refusing (2026-12-07, seed 42): an 'input' key lost to corruption (Python dropped the input
    quantizer and its tensors without a word: the layer computed on float inputs), tensors the
    header does not describe, a bias flag of 1, an input quantizer without its channels or with a
    tensor of another shape, a structure's child named by a number, arguments that are not an
    object, missing or unexpected, and a header that is not UTF-8. Both loaders refuse each."""
    import struct

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_serialization import _rewrite_header

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.randn(4, 64)
    w8, bad = str(tmp_path / "w8.safetensors"), str(tmp_path / "bad.safetensors")
    _ptq_exported(net, x, dataclasses.replace(qatkit.w8a8(), first_last=None), w8)

    def refused(edit, py_msg, cpp_msg=None):
        _rewrite_header(w8, bad, edit)
        with pytest.raises(ValueError, match=re.escape(py_msg)):
            qatkit.load(bad)
        r, _ = _run(bad, x, tmp_path)
        assert r.returncode == 1 and (cpp_msg or py_msg) in r.stderr, (py_msg, r.returncode, r.stderr)

    layer = lambda meta: meta["layers"]["0"]  # noqa: E731
    refused(lambda meta, head: layer(meta).__setitem__("junk", layer(meta).pop("input")), "missing key 'input'")
    refused(lambda meta, head: layer(meta).__setitem__("input", None),
            "tensors ['0.input_fake_quant._extra_state', '0.input_fake_quant.fake_quant_on'")
    refused(lambda meta, head: layer(meta).__setitem__("bias", 1), "the bias flag must be a bool, got 1")
    refused(lambda meta, head: layer(meta)["input"].pop("channels"), "the input's channels must be a positive int, got None")
    refused(lambda meta, head: head["0.input_fake_quant.observer.running_max"].__setitem__("shape", []),
            "size mismatch for observer.running_max", "tensor '0.input_fake_quant.observer.running_max' has shape []")
    refused(lambda meta, head: meta["structure"]["children"][1].__setitem__(0, 1), "must be a string")
    refused(lambda meta, head: meta["structure"]["children"][1][1].__setitem__("args", [8]),
            "ReLU arguments must be an object")
    refused(lambda meta, head: meta["structure"]["children"][1].__setitem__(1, {"type": "Flatten", "args": {"end_dim": -1}}),
            "Flatten arguments ['start_dim'] are missing")
    refused(lambda meta, head: meta["structure"]["children"][1][1].__setitem__("args", {"inplace": False}),
            "unexpected arguments ['inplace'] for ReLU")
    # an argument of the wrong type: Python's check by name, mirrored in C++ (which took an int for
    # Unflatten's sizes and failed only in the forward)
    refused(lambda meta, head: meta["structure"]["children"][1].__setitem__(
        1, {"type": "Unflatten", "args": {"dim": 1, "unflattened_size": 0}}),
        "Unflatten argument unflattened_size=0 has the wrong type or is out of range")
    # numbers as Python's json reads them (2026-12-07): an int written as a float (64.0) was taken
    # by C++ everywhere and by Python where it compared with == (in_features: loaded; a weight's
    # bits: a RuntimeError from the unpacking op); NaN / Infinity, Python's json extension, reached
    # Python's field checks while C++ refused the JSON
    refused(lambda meta, head: layer(meta)["params"].__setitem__("in_features", 64.0),
            "in/out features must be ints, got 64.0",
            "layer '0' in_features must be an integer, got 64 (written as a float)")
    refused(lambda meta, head: layer(meta)["weight"].__setitem__("bits", 8.0), "packing 'offset' with 8.0 bit(s)",
            "layer '0' weight bits must be an integer, got 8 (written as a float)")
    refused(lambda meta, head: layer(meta)["weight"]["spec"].__setitem__("bits", 8.0),
            "QuantSpec.bits must be an int, got float 8.0",
            "QuantSpec.bits must be an integer, got 8 (written as a float)")
    refused(lambda meta, head: layer(meta)["params"].__setitem__("eps", float("nan")),
            "the qatkit header is not valid JSON (NaN is not JSON", "qatkit header: malformed JSON at byte")
    refused(lambda meta, head: layer(meta)["input"]["spec"].__setitem__("momentum", float("-inf")),
            "the qatkit header is not valid JSON (-Infinity is not JSON", "qatkit header: malformed JSON at byte")
    # a bool where a number belongs (Python's isinstance(True, int) held): a shape's dim of 1 given as
    # true (the layer loaded), a format_version of true (read as version 1)
    refused(lambda meta, head: layer(meta)["weight"]["shape"].__setitem__(0, True), "bad weight shape [True, 64]",
            "layer '0' weight shape must be a number, got a bool")
    refused(lambda meta, head: meta.__setitem__("format_version", True),
            "format_version must be a positive int, got True",
            "format_version must be a number, got a bool")
    # nesting: C++ refuses a value inside more than 64 arrays / objects; Python loaded a header with
    # an unknown key nested 100 deep and raised RecursionError (no ValueError) from ~1,000
    def nested(depth):
        v = []
        for _ in range(depth - 1):
            v = [v]
        return v

    _rewrite_header(w8, bad, lambda meta, head: meta.__setitem__("junk", nested(64)))  # (unknown keys: ignored)
    qatkit.load(bad)
    assert _run(bad, x, tmp_path)[0].returncode == 0
    refused(lambda meta, head: meta.__setitem__("junk", nested(65)),
            "the qatkit header is not valid JSON (nesting deeper than 64 levels)", "nesting deeper than 64 levels")
    raw = open(w8, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    table = json.loads(raw[8 : 8 + n])
    deep = "[" * 5000 + "]" * 5000
    table["__metadata__"]["qatkit"] = table["__metadata__"]["qatkit"][:-1] + ', "junk": ' + deep + "}"
    blob = json.dumps(table).encode()
    blob += b" " * (-len(blob) % 8)
    open(bad, "wb").write(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])
    with pytest.raises(ValueError, match=re.escape("the qatkit header is not valid JSON (nesting deeper than 64")):
        qatkit.load(bad)
    r, _ = _run(bad, x, tmp_path)
    assert r.returncode == 1 and "nesting deeper than 64 levels" in r.stderr, r.stderr
    # a key twice in an object (Python's json and safetensors' reader kept the last; C++ refused):
    # in the qatkit header, and in the safetensors tensor table
    raw = open(w8, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = raw[8 : 8 + n].decode()

    def with_header(text):
        b = text.encode()
        b += b" " * (-len(b) % 8)
        open(bad, "wb").write(struct.pack("<Q", len(b)) + b + raw[8 + n :])

    def both_refuse(py_msg, cpp_msg):
        with pytest.raises(ValueError, match=re.escape(py_msg)):
            qatkit.load(bad)
        r, _ = _run(bad, x, tmp_path)
        assert r.returncode == 1 and cpp_msg in r.stderr, (cpp_msg, r.stderr)

    flag = '\\"bias\\": true'
    with_header(head.replace(flag, flag + ", " + flag, 1))
    both_refuse("the qatkit header is not valid JSON (duplicate key 'bias')", "duplicate key 'bias'")
    table = json.loads(head)
    name = next(k for k in table if k != "__metadata__")
    with_header(head.replace("{", "{" + json.dumps(name) + ": " + json.dumps(table[name]) + ", ", 1))
    both_refuse(f"its header is not valid JSON (duplicate key '{name}')", f"duplicate key '{name}'")
    # a weight axis the layout does not read (per group), out of range; a quantizer record holding
    # a field QuantSpec does not have (Python's message listed "[] differ")
    g4 = str(tmp_path / "g4.safetensors")
    _ptq_exported(net, x, dataclasses.replace(qatkit.w4a8(), first_last=None), g4)
    _rewrite_header(g4, bad, lambda meta, head: meta["layers"]["0"]["weight"].__setitem__("axis", -(2**40)))
    with pytest.raises(ValueError, match=re.escape(f"bad axis {-(2**40)}")):
        qatkit.load(bad)
    r, _ = _run(bad, x, tmp_path)
    assert r.returncode == 1 and f"bad axis {-(2**40)} for a 2-d weight" in r.stderr, r.stderr
    def patched(find, new, in_header=False):  # w8's bytes with `new` over the first `find` (same length)
        raw = bytearray(open(w8, "rb").read())
        n = struct.unpack("<Q", raw[:8])[0]
        at = raw.index(find, 8, 8 + n) if in_header else raw.index(find, 8 + n)  # (else: a record's bytes)
        raw[at : at + len(new)] = new
        open(bad, "wb").write(raw)

    patched(b'"granularity"', b'"granusarity"')
    both_refuse("holds a quantizer saved with another spec (fields ['granusarity'] differ",
                "(fields ['granusarity'] differ)")
    # an int field of the record written as a float (same length: two spaces dropped): Python's ==
    # took 8.0 for 8, C++ compared the record's text (2026-12-07)
    patched(b'"axis": 0, "bits": 8', b'"axis":0, "bits":8.0')
    both_refuse("(fields ['bits'] differ", "(fields ['bits'] differ)")
    patched(b"AffineStaticActQuantizer", b"A\x84", in_header=True)  # a continuation byte with no lead byte
    both_refuse("invalid UTF-8", "the header is not valid UTF-8 (byte ")


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_an_integral_float_in_the_input_spec_loads_in_python_and_cpp(momentum, tmp_path):
    """An input quantizer spec with momentum 0.0 or 1.0: its record holds "1.0", the header's spec as
    C++ rewrites it prints 1; the two are the same field (the record's comparison is by value; only
    an int field written as a float, 8.0 for bits, differs)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(6, 16)
    base = qatkit.w8a8()
    act = dataclasses.replace(base.default.activation, momentum=momentum)
    cfg = dataclasses.replace(base, first_last=None, default=dataclasses.replace(base.default, activation=act))
    path = str(tmp_path / "m.safetensors")
    loaded = _ptq_exported(net, x, cfg, path)
    assert b'"momentum": ' + str(momentum).encode() in open(path, "rb").read()  # the record's float literal
    r, y = _run(path, x, tmp_path)
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        assert torch.equal(y, loaded(x))


def test_packed_embedding_header_edits_are_refused_by_both(tmp_path):
    """A packed Embedding's params (a seed pool of embedding models, 2026-12-07): a norm_type missing
    (the C++ loader did not read it and loaded) or true (both took it), a padding_idx past the table
    or written as a float, a max_norm string. The file itself loads in both, with Python's outputs,
    and so does one with max_norm (which the C++ loader refused as unsupported)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_serialization import _rewrite_header

    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(20, 8, padding_idx=0), nn.Flatten(), nn.Linear(48, 10)).eval()
    xi = torch.randint(0, 20, (16, 6))
    path, bad = str(tmp_path / "e.safetensors"), str(tmp_path / "bad.safetensors")
    loaded = _ptq_exported(net, xi, dataclasses.replace(qatkit.w8a8(), embeddings=True, first_last=None), path)
    assert type(loaded[0]).__name__ == "PackedEmbedding"
    r, y = _run(path, xi, tmp_path)
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        assert torch.equal(y, loaded(xi))

    def refused(edit, py_msg, cpp_msg=None):
        _rewrite_header(path, bad, lambda meta, head: edit(meta["layers"]["0"]["params"]))
        with pytest.raises(ValueError, match=re.escape(py_msg)):
            qatkit.load(bad)
        r, _ = _run(bad, xi, tmp_path)
        assert r.returncode == 1 and (cpp_msg or py_msg) in r.stderr, (py_msg, r.returncode, r.stderr)

    refused(lambda p: p.pop("norm_type"), "bad norm_type", "missing key 'norm_type'")
    refused(lambda p: p.__setitem__("norm_type", True), "bad norm_type")
    refused(lambda p: p.__setitem__("padding_idx", 20), "bad padding_idx")
    refused(lambda p: p.__setitem__("padding_idx", -21), "bad padding_idx")
    refused(lambda p: p.__setitem__("padding_idx", 2.0), "bad padding_idx",
            "padding_idx must be an integer, got 2 (written as a float)")
    refused(lambda p: p.__setitem__("max_norm", "1"), "bad max_norm")
    # max_norm on a packed table (the C++ loader refused it as unsupported, and qatkit::nn::save had
    # no form for it; QuantEmbedding renormalizes the looked-up rows of its temporary dequantized
    # table as Python's PackedEmbedding does): Python's outputs in float and integer compute, twice
    # (the stored codes are not renormalized in place), and written back by qatkit::nn::save
    for preset in ("w8a8", "int4_weight_only"):
        torch.manual_seed(1)
        net = nn.Sequential(nn.Embedding(20, 8, padding_idx=0, max_norm=0.5, norm_type=1.5), nn.Flatten(),
                            nn.Linear(48, 10)).eval()
        cfg = dataclasses.replace(qatkit.preset(preset), embeddings=True, first_last=None)
        # (calibrated on rows 0-9: F.embedding renormalizes the float table's looked-up rows in place
        # then; the test looks up rows 10-19 too, which keep norms above max_norm)
        loaded = _ptq_exported(net, xi % 10, cfg, path)
        assert type(loaded[0]).__name__ == "PackedEmbedding" and loaded[0].max_norm == 0.5
        with torch.no_grad():
            want, want_int = qatkit.load(path, compute="float")(xi), loaded(xi)
            assert torch.equal(loaded(xi), want_int)
            _rewrite_header(path, bad, lambda meta, head: meta["layers"]["0"]["params"].__setitem__("max_norm", None))
            assert not torch.equal(qatkit.load(bad)(xi), want_int)  # (the rows looked up are renormalized)
        _assert_cpp_gives(path, xi, tmp_path, want, want_int)
        _assert_cpp_resaves(path, xi, tmp_path, want, want_int)


def test_layers_named_outside_ascii_load_in_cpp(tmp_path):
    """Module names outside ASCII ("capa_\u00f1", CJK and an emoji): Python's header escapes them
    (json.dumps' ensure_ascii: "capa_\\u00f1", a surrogate pair for the emoji), which the C++ JSON
    reader refused ("only ASCII \\u escapes are supported") before 2026-12-07. The C++ program gives
    Python's outputs bit for bit, and qatkit::nn::save writes the names back (as UTF-8) for Python."""
    import collections

    torch.manual_seed(0)
    names = ("capa_\u00f1", "relu", "\u51fa\u529b\U0001F600")
    layers = (nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    net = nn.Sequential(collections.OrderedDict(zip(names, layers, strict=True)))
    x = torch.randn(6, 16)
    path = str(tmp_path / "names.safetensors")
    loaded = _ptq_exported(net.eval(), x, dataclasses.replace(qatkit.w8a8(), first_last=None), path)
    assert list(qatkit.serialization.read_header(path)["layers"]) == [names[0], names[2]]
    assert b"capa_\\\\u00f1" in open(path, "rb").read()  # (escaped inside the escaped metadata string)
    with torch.no_grad():
        want, want_int = qatkit.load(path, compute="float")(x), loaded(x)
    _assert_cpp_gives(path, x, tmp_path, want, want_int)
    _assert_cpp_resaves(path, x, tmp_path, want, want_int)


@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "int4_weight_only", "ternary_twn", "xnor_w1a1", "bitnet_b158"])
def test_one_loaded_model_serves_many_threads_in_cpp(preset, tmp_path):
    """A server's pattern: one qatkit::nn::load model, 8 threads each running 20 forwards on 1, 8
    and 16 rows (the GEMV, register-tile and panel paths) at once; every output equals the one
    computed first on one thread (load_run --threads). The forward keeps no state a concurrent
    call could race on: the plans are built at load, per-thread scratch (Python threads: the same,
    by a /tmp script, 2026-12-07)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    seq = _qat_models().CNN().as_sequential().eval()
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    path, inp = str(tmp_path / "m.safetensors"), str(tmp_path / "x.safetensors")
    _ptq_exported(seq, x, qatkit.preset(preset), path)
    save_file({"x": x}, inp)
    r = subprocess.run([EXE, "--threads", "8", path, inp], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "threads 8: 160 forwards equal" in r.stdout, r.stdout + r.stderr


def test_a_program_under_a_decimal_comma_locale_loads_the_file(tmp_path):
    """A LibTorch program that sets the user's locale (load_run calls setlocale(LC_ALL, "")) under
    de_DE: the C++ JSON reader parsed numbers with strtod, which read the header's "momentum": 0.01
    as 0 and stopped at the '.', so every file was "malformed JSON". std::from_chars reads JSON's
    '.' in any locale; the outputs are Python's bit for bit."""
    import shutil

    if shutil.which("localedef") is None:
        pytest.skip("localedef (glibc's locale compiler, in Debian's libc-bin) is missing: no de_DE locale to build")
    loc = tmp_path / "locales"
    loc.mkdir()
    made = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", str(loc / "de_DE.UTF-8")], capture_output=True,
                          text=True, timeout=60)
    if made.returncode != 0 or not (loc / "de_DE.UTF-8").exists():
        pytest.skip(f"localedef could not build de_DE.UTF-8 here (no locale sources?): {made.stderr[-200:]}")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(6, 16)
    path = str(tmp_path / "m.safetensors")
    loaded = _ptq_exported(net, x, dataclasses.replace(qatkit.w8a8(), first_last=None), path)
    from safetensors.torch import load_file, save_file

    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    env = {**os.environ, "LOCPATH": str(loc), "LC_ALL": "de_DE.UTF-8", "MKL_DYNAMIC": "FALSE"}
    # (the locale takes in a process with this environment: setlocale(LC_ALL, "") gives a decimal comma)
    point = subprocess.run([sys.executable, "-c", "import locale; locale.setlocale(locale.LC_ALL, ''); "
                            "print(locale.localeconv()['decimal_point'])"], capture_output=True, text=True, env=env)
    assert point.stdout.strip() == ",", point.stdout + point.stderr
    r = subprocess.run([EXE, path, str(tmp_path / "x.safetensors"), str(tmp_path / "y.safetensors")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        assert torch.equal(load_file(str(tmp_path / "y.safetensors"))["y"], loaded(x))


def test_a_directory_or_device_given_as_the_file_is_refused_not_a_crash(tmp_path):
    """qatkit::nn::load of a directory ended the program (std::bad_alloc: the stream reported a
    size near 2^63, exit -6); like Python's loader it refuses it, and a device, as no file."""
    x = torch.randn(2, 4)
    for path in (str(tmp_path), "/dev/null"):
        with pytest.raises(ValueError, match="is not a file"):
            qatkit.load(path)
        r, _ = _run(path, x, tmp_path)
        assert r.returncode == 1 and f"read_safetensors: '{path}' is not a file" in r.stderr, (r.returncode, r.stderr)


def test_many_each_prints_every_files_outcome(tmp_path):
    """qatkit_load_run --many --each (what scripts/fuzz_load.py --cpp --many N --agree reads): a line
    per file, "<outcome> <path> [<the error's first line>]", then the counts."""
    from safetensors.torch import save_file

    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x = torch.randn(5, 8)
    ok, short, wide, xin = (str(tmp_path / n) for n in ("ok.safetensors", "short.safetensors", "wide.safetensors",
                                                        "x.safetensors"))
    _ptq_exported(net, x, dataclasses.replace(qatkit.w8a8(), first_last=None), ok)
    raw = open(ok, "rb").read()
    open(short, "wb").write(raw[:100])
    _ptq_exported(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).eval(), torch.randn(5, 6),
                  dataclasses.replace(qatkit.w8a8(), first_last=None), wide)
    save_file({"x": x}, xin)
    r = subprocess.run([EXE, "--many", "--each", xin, ok, short, wide], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().split("\n")
    assert lines[0] == f"loaded {ok}"
    assert lines[1].startswith(f"refused {short} ") and "header length" in lines[1], lines[1]
    assert lines[2].startswith(f"forward_refused {wide} ") and "last dim" in lines[2], lines[2]
    assert lines[3] == "loaded 1 refused 1 forward_refused 1"


def test_a_short_fuzz_run_of_the_cpp_loader_finds_nothing(tmp_path):
    """scripts/fuzz_load.py --cpp --many (byte flips, truncations, header edits, sizes every range
    check admits) for 2,000 inputs through qatkit::nn::load and a forward in 4 processes: each
    input loads and runs or is refused with a ValueError, no process crashes, and the peak RSS
    stays under 1 GiB (no size from a corrupt header was allocated). With --agree: each file's
    outcome (refused, loaded and ran, forward refused) is Python's (qatkit.load and a forward), as
    on 21,000 files at seeds 5, 7, 11, 13, 17, 19 and 42 on 2026-12-07; also 500 files of each of the
    other seed pools (the other leaf kinds; Embedding tables on int64 inputs)."""
    for pool, n in (("cnn", 2000), ("layers", 500), ("embedding", 500)):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fuzz_load.py"), "--cpp", "--many", "500",
                            "--inputs", str(n), "--seed", "2", "--agree", "--pool", pool, "--exe", EXE],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert r.returncode == 0 and "no crash" in r.stdout, (pool, r.stdout + r.stderr)


def test_cpp_loads_a_module_used_at_two_places_at_both(tmp_path):
    """The structure names a shared activation and a shared packed layer at each place: the C++
    loader builds them at both (as two modules with the same tensors) and gives Python's loaded
    outputs bit for bit."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_serialization import _shared_modules_net

    import dataclasses

    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    path = str(tmp_path / "shared.safetensors")
    loaded = _ptq_exported(_shared_modules_net(), x, dataclasses.replace(qatkit.w8a8(), first_last=None), path)
    with torch.no_grad():
        want, want_int = qatkit.load(path, compute="float")(x), loaded(x)
    _assert_cpp_gives(path, x, tmp_path, want, want_int)


def test_a_short_fuzz_run_over_random_models_finds_nothing(tmp_path):
    """scripts/fuzz_models.py --cpp for 20 random nn.Sequential models (every module load rebuilds,
    random arguments, nesting, shared modules, torch.nn.utils.prune on some layers, random presets,
    PTQ or three QAT steps): the converted model gives the QAT model's bits, Python's loaded model
    the converted model's in float and integer compute, and the C++ loader Python's."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fuzz_models.py"), "--models", "20", "--seed", "7",
                        "--cpp", "--exe", EXE], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0 and "loaded bit for bit" in r.stdout, r.stdout + r.stderr
    assert re.search(r"\(([1-9]\d*) with pruned layers", r.stdout), r.stdout  # the seed covers pruning


def test_a_short_fuzz_run_over_random_specs_finds_nothing(tmp_path):
    """scripts/fuzz_specs.py --cpp for 40 random weight / input QuantSpec draws on MLPs, conv nets
    and Embedding + Conv1d nets (three SGD steps each): convert gives the QAT model's bits, the
    float load convert's, the integer load convert's kernels', and the C++ loader Python's integer
    bits; with onnxruntime installed (--onnx), export_onnx's graph convert's outputs within 2 %."""
    import importlib.util

    onnx = ["--onnx"] if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx") else []
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fuzz_specs.py"), "--models", "40", "--seed", "2",
                        "--cpp", "--no-progress", *onnx], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    n = int(re.search(r"(\d+) models bit for bit", r.stdout).group(1))
    assert n >= 20, r.stdout  # the seed draws enough valid specs


def test_cpp_grouped_xnor_convs_match_python(tmp_path):
    """Grouped and depthwise XNOR convs run on conv2d_w1a1's grouped form in C++ as in Python:
    Python's loaded outputs bit for bit. The first and last layers stay
    float, so the last XNOR conv's outputs reach the logits through float math (an int8 layer's input
    quantization would absorb a last-bit difference)."""
    import dataclasses

    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, groups=4), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), nn.Flatten(), nn.Linear(16 * 4 * 4, 5))
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    cfg = dataclasses.replace(qatkit.preset("xnor_w1a1"), first_last="float")
    path = str(tmp_path / "g.safetensors")
    loaded = _ptq_exported(net, x, cfg, path)
    from qatkit.qat import integer

    mods = dict(loaded.named_modules())
    assert [integer.kernel_for(mods[r[0]]) for r in loaded.compute_report] == ["linear_w1a1"] * 2
    with torch.no_grad():
        want = loaded(x)
    r, y = _run(path, x, tmp_path)
    assert r.returncode == 0, r.stderr
    assert torch.equal(y, want)


def test_cpp_w4a8_convs_match_python(tmp_path):
    """Convs with per-group 4-bit weights (w4a8: K = C / groups * kh * kw a multiple of 32) run on
    conv2d_w4a8 in C++ as in Python, padded, strided, dilated, grouped and 1-d: Python's loaded
    outputs bit for bit."""
    from qatkit.qat import integer

    torch.manual_seed(6)
    nets = [
        (nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                       nn.Conv2d(64, 32, 3, padding=2, dilation=2, groups=2), nn.ReLU(), nn.Conv2d(32, 16, 2),
                       nn.ReLU(), nn.Flatten(), nn.Linear(16 * 3 * 3, 5)), (6, 3, 8, 8), 3),
        (nn.Sequential(nn.Conv1d(4, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 32, 2, stride=2), nn.ReLU(),
                       nn.Flatten(), nn.Linear(32 * 8, 5)), (6, 4, 16), 1),
    ]
    for net, shape, n_w4 in nets:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(7))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qatkit.ptq(net.eval(), [x], qatkit.preset("w4a8"), correct_bias=None, verbose=False, progress=False)
        path = str(tmp_path / "w4c.safetensors")
        qatkit.export(q, path)
        loaded = qatkit.load(path)
        mods = dict(loaded.named_modules())
        convs = [n for n, m in mods.items() if isinstance(m, (nn.Conv1d, nn.Conv2d)) or hasattr(m, "kernel_size")]
        assert sum(integer.kernel_for(mods[n]) == "linear_w4a8" for n in convs) == n_w4
        with torch.no_grad():
            want = loaded(x)
        r, y = _run(path, x, tmp_path)
        assert r.returncode == 0, r.stderr
        assert torch.equal(y, want)


@pytest.mark.parametrize("granularity,wkind", [("per_token", "int"), ("per_tensor", "int"), ("per_token", "binary")])
def test_cpp_dynamic_input_linears_match_python(granularity, wkind, tmp_path):
    """Linears with dynamic int8 inputs (per token, per tensor) run on C++'s linear_dynamic_int8 as on
    Python's (int8 / binary weights; BitLinear is covered above): Python's loaded outputs bit for bit,
    and not the float form's."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(40, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 5))
    weight = (qatkit.QuantSpec(bits=8, symmetric=True, narrow_range=True, granularity="per_channel") if wkind == "int"
              else qatkit.QuantSpec(kind="binary", method="mean_abs", granularity="per_channel"))
    cfg = qatkit.QATConfig(default=qatkit.LayerSpec(
        weight=weight, activation=qatkit.QuantSpec(bits=8, granularity=granularity, scale="dynamic")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.prepare_qat(net, cfg)
    path = str(tmp_path / "d.safetensors")
    qatkit.export(q, path)
    loaded = qatkit.load(path)
    assert [f for _, f, _ in loaded.compute_report] == ["row"] * 3, loaded.compute_report
    x = torch.randn(7, 40, generator=torch.Generator().manual_seed(5)) * 2
    with torch.no_grad():
        want, flt = loaded(x), qatkit.load(path, compute="float")(x)
    assert not torch.equal(want, flt)
    r, y = _run(path, x, tmp_path)
    assert r.returncode == 0, r.stderr
    assert torch.equal(y, want)


@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1", "bitnet_b158",
                                    "int4_weight_only"])
def test_unbatched_inputs_give_the_batch_of_ones_bits_in_python_and_cpp(preset, tmp_path):
    """torch's convs take an unbatched (C, L) / (C, H, W) input and Linear a 1-D one. The QAT, the
    converted and the loaded layers (Python and C++) compute it as a batch of one: XNOR's per-sample
    input binarization saw the channels as the batch (0.2-0.4 off), and a loaded integer conv raised
    a broadcasting error, before. Every output equals the batched one's row bit for bit."""
    import dataclasses

    cfg = dataclasses.replace(qatkit.preset(preset), first_last=None)
    g = torch.Generator().manual_seed(7)
    nets = [(nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 16, 3, padding=1)),
             torch.randn(4, 8, 7, 7, generator=g)),
            (nn.Sequential(nn.Conv1d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 16, 3, padding=1)),
             torch.randn(4, 8, 9, generator=g)),
            (nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16)), torch.randn(4, 8, generator=g))]
    for i, (net, x) in enumerate(nets):
        torch.manual_seed(i)
        net = net.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qatkit.ptq(net, [x], cfg, verbose=False, progress=False).eval()
        path = str(tmp_path / f"m{i}.safetensors")
        qatkit.export(q, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = qatkit.load(path)
        xu = x[1]
        with torch.no_grad():
            for tag, m in (("qat", q), ("converted", qatkit.convert(q)), ("loaded", loaded)):
                yu = m(xu)
                assert yu.shape == net(xu).shape and torch.equal(yu, m(xu.unsqueeze(0))[0]), (tag, i)
            want = loaded(xu)
        r, y = _run(path, xu, tmp_path)
        assert r.returncode == 0, r.stderr
        assert torch.equal(y, want), i


@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1"])
def test_an_input_a_few_features_short_or_long_raises_in_python_and_cpp(preset, tmp_path):
    """The packed layouts pad K (to 4, 32 or 128 codes), so the kernels alone took a Linear input of
    71 features for 72, or 65 for 64, and a 1 x 1 conv's channels alike, and returned numbers: a
    silent wrong answer where torch's layer raises. The loaded layers (Python and C++) check the
    input's features / channels and raise ValueError naming both sizes."""
    import dataclasses

    cfg = dataclasses.replace(qatkit.preset(preset), first_last=None)
    g = torch.Generator().manual_seed(2)
    for i, (K, bad) in enumerate([(72, 71), (64, 63), (64, 65)]):
        for kind in ("linear", "conv"):
            torch.manual_seed(i)
            if kind == "linear":
                net, x, xb = (nn.Sequential(nn.Linear(K, 32), nn.ReLU(), nn.Linear(32, 16)),
                              torch.randn(4, K, generator=g), torch.randn(4, bad, generator=g))
            else:
                net, x, xb = (nn.Sequential(nn.Conv2d(K, 32, 1), nn.ReLU(), nn.Conv2d(32, 16, 1)),
                              torch.randn(4, K, 3, 3, generator=g), torch.randn(4, bad, 3, 3, generator=g))
            path = str(tmp_path / f"{kind}{i}.safetensors")
            loaded = _ptq_exported(net, x, cfg, path)
            what = "last dim (features)" if kind == "linear" else "dim 1 (channels)"
            for inp in (xb, xb.contiguous(memory_format=torch.channels_last)) if kind == "conv" else (xb,):
                with torch.no_grad(), pytest.raises(ValueError, match=rf"input's {re.escape(what)} is {bad}, "
                                                                      rf"the layer takes {K}"):
                    loaded(inp)
            r, _ = _run(path, xb, tmp_path)
            assert r.returncode == 1 and f"is {bad}, the layer takes {K}" in r.stderr, r.stderr
            with torch.no_grad():
                _, y = _run(path, x, tmp_path)
                assert torch.equal(y, loaded(x))  # the right size still runs, Python's bits


@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1", "bitnet_b158",
                                    "int8_weight_only"])
def test_a_float64_or_half_input_to_an_integer_layer_raises_naming_it_in_python_and_cpp(preset, tmp_path):
    """A float32 layer in integer compute quantizes float32 inputs. A float64 / bfloat16 / float16
    input gave a float32 output through the simulation (w8a8, ternary, binary...) or torch's 'mat1
    and mat2 must have the same dtype' (per-token, weight-only): one silent dtype change, one message
    naming no layer. The float layer and the QAT model raise on such an input; the loaded layers
    (Python, whose converted layers share the forward, and C++) now raise TypeError naming the layer
    and the dtype. A model cast to the dtype computes in float math in it."""
    import dataclasses

    cfg = dataclasses.replace(qatkit.preset(preset), first_last=None)
    g = torch.Generator().manual_seed(4)
    skipped = []
    for kind in ("linear", "conv"):
        torch.manual_seed(1)
        if kind == "linear":
            net, x = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 8)), torch.randn(6, 40, generator=g)
            what = r"PackedLinear\(in_features=40\)"
        else:
            net, x = (nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)),
                      torch.randn(2, 4, 5, 5, generator=g))
            what = r"PackedConv2d\(in_channels=4\)"
        path = str(tmp_path / f"{kind}.safetensors")
        loaded = _ptq_exported(net, x, cfg, path)
        first = next(m for m in loaded.modules() if hasattr(m, "_integer_form"))
        if first._integer_form is None:  # no kernel for the first layer here: float math, torch's rules
            skipped.append((preset, kind))
            continue
        with torch.no_grad():
            want = loaded(x)
            for dt in (torch.float64, torch.bfloat16, torch.float16):
                with pytest.raises(TypeError, match=rf"{what} computes in integer form from float32 inputs, "
                                                    rf"got a {dt} input"):
                    loaded(x.to(dt))
                r, _ = _run(path, x.to(dt), tmp_path)
                name = {torch.float64: "Double", torch.bfloat16: "BFloat16", torch.float16: "Half"}[dt]
                assert r.returncode == 1 and f"from float32 inputs, got a {name} input" in r.stderr, r.stderr
            assert torch.equal(loaded(x), want)  # float32 still runs
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the cast's warning: float math in float64 now
                y64 = loaded.double()(x.double())
            assert y64.dtype == torch.float64 and y64.shape == want.shape
    assert len(skipped) < 2, skipped
    print("float math, torch's dtype rules:", skipped)


def test_an_input_a_layer_refuses_names_the_layer_in_converted_and_loaded_models(tmp_path):
    """The ops cannot know which of a model's layers called them: a loaded bitnet model fed an Inf
    said 'linear_dynamic_int8: input row 0 ... holds NaN or Inf', and a loaded model's input
    quantizers had no name ('quantize_per_token: input must be finite'), where the QAT model's say
    "'body.1.input_fake_quant': ...". Converted and loaded layers now put their name in front of
    a ValueError their forward raises (an op refusing the input, the features check) and in the
    dtype TypeError; a message that already starts with it (an input quantizer's) keeps one."""
    import dataclasses

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(24, 32), nn.Sequential(nn.ReLU(), nn.Linear(32, 32), nn.ReLU()), nn.Linear(32, 4))
    x = torch.randn(6, 24)
    cases = {"bitnet_b158": r"'1\.1': linear_dynamic_int8: input row 0 .* holds NaN or Inf",
             "w8a8": None}
    for preset, inf_msg in cases.items():
        cfg = dataclasses.replace(qatkit.preset(preset), first_last=None)
        path = str(tmp_path / f"{preset}.safetensors")
        loaded = _ptq_exported(net, x, cfg, path)
        assert loaded[1][1].qualified_name == "1.1"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qatkit.ptq(net.eval(), [x], cfg, correct_bias=None, verbose=False, progress=False)
            conv = qatkit.convert(q, integer=True)
        assert conv[1][1].qualified_name == "1.1"
        xi = x.clone()
        xi[0, 3] = float("inf")  # the first layer's output row 0 saturates: finite, or Inf for bitnet's
        with torch.no_grad():
            h = loaded[1][0](loaded[0](x))
            hi = h.clone()
            hi[0, 5] = float("inf")
            for model in (loaded, conv):
                if preset == "w8a8":  # (bitnet's RMSNorm raises torch's RuntimeError first, as in the QAT model)
                    with pytest.raises(ValueError, match=r"^'0': (Packed|Quantized)Linear\(in_features=24\): the input's"):
                        model(torch.randn(6, 23))
                with pytest.raises(TypeError, match=r"^'1\.1': (Packed|Quantized)Linear\(in_features=32\) computes"):
                    model[1][1](h.double())
                if inf_msg:
                    with pytest.raises(ValueError, match=inf_msg):
                        model[1][1](hi)
                    with pytest.raises(ValueError, match=r"^'1\.1': linear_dynamic_int8"):  # one name, not two
                        model[1][1](hi)
                else:
                    assert bool(model[1][1](hi).isfinite().all())  # saturates, as fake quantization
        # a layer left in float math: its input quantizer names itself, once
        fl = qatkit.load(path, compute="float")
        if preset == "bitnet_b158":
            with torch.no_grad(), pytest.raises(ValueError, match=r"^'1\.1\.input_fake_quant': quantize_per_token"):
                fl[1][1](hi)


@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "bitnet_b158", "int8_weight_only"])
def test_under_autocast_an_integer_layer_takes_the_bfloat16_of_a_float_layer_before_it(preset, tmp_path):
    """Under torch.autocast a float layer outputs bfloat16, and the integer layer after it would
    meet the dtype TypeError. Autocast widens the inputs of its float32 ops; an integer layer
    does the same (bfloat16 -> float32 is exact) and returns float32: the loaded model under
    autocast equals its layers run by hand (the float ones under autocast, the integer one on the
    widened input). Outside autocast, a bfloat16 input still raises, and a float64 one does inside."""
    import dataclasses

    cfg = dataclasses.replace(qatkit.preset(preset), first_last="float")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 8))
    x = torch.randn(12, 32)
    path = str(tmp_path / "m.safetensors")
    loaded = _ptq_exported(net, x, cfg, path)
    assert isinstance(loaded[0], nn.Linear) and loaded[2]._integer_form is not None
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = loaded(x)
            h = loaded[1](loaded[0](x))
        assert h.dtype == torch.bfloat16
        mid = loaded[3](loaded[2](h.float()))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = loaded[4](mid)
        assert torch.equal(y, want)
        with pytest.raises(TypeError, match="computes in integer form from float32 inputs, got a torch.bfloat16"):
            loaded[2](h)
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="got a torch.float64"):
            loaded[2](h.double())


@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "bitnet_b158", "xnor_w1a1", "int4_weight_only"])
def test_an_empty_batch_gives_an_empty_output_in_python_and_cpp(preset, tmp_path):
    """A batch of 0 rows (the last, empty shard of a split) gives (0, classes) as torch's layers
    do, from the loaded model and from the C++ program (which printed its first row and failed)."""
    import dataclasses

    cfg = dataclasses.replace(qatkit.preset(preset), first_last=None)
    for i, (net, shape) in enumerate([
            (nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), (16, 64)),
            (nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                           nn.Flatten(), nn.Linear(16 * 64, 10)), (4, 4, 8, 8))]):
        torch.manual_seed(i)
        path = str(tmp_path / f"m{i}.safetensors")
        loaded = _ptq_exported(net.eval(), torch.randn(shape), cfg, path)
        empty = torch.zeros((0,) + shape[1:])
        with torch.no_grad():
            assert loaded(empty).shape == (0, 10)
        r, y = _run(path, empty, tmp_path)
        assert r.returncode == 0, r.stderr
        assert y.shape == (0, 10)


@pytest.mark.parametrize("preset", ["binaryconnect", "binary_w1a8", "xnor_w1a1", "binary_weight_only"])
def test_an_all_zero_binary_channel_is_zero_in_python_and_cpp(preset, tmp_path):
    """A binary layer's output channel whose weights are all zero (structurally pruned, dead)
    fake-quantizes to sign * mean|w| = +-0. convert stored scale 1 there (binary codes are never
    0), so the converted layer computed with +-1 weights, 0.32 off the QAT model in a fuzzed model;
    and the loaders refused scale 0. It is kept now: convert, load and qatkit::nn::load agree."""
    from torch.nn.utils import prune

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, 4))
    prune.ln_structured(net[2], "weight", amount=0.25, n=1, dim=0)  # 4 whole output channels
    with torch.no_grad():
        net[5].weight[7].zero_()  # a dead row
    cfg = dataclasses.replace(qatkit.preset(preset), first_last=None)
    q = qatkit.prepare_qat(net, cfg)
    q(torch.randn(16, 3, 4, 4))
    q.eval()
    x = torch.randn(5, 3, 4, 4)
    c = qatkit.convert(q)
    assert int((c[2].weight_scale == 0).sum()) == 4 and float(c[5].weight_scale[7]) == 0.0
    assert torch.equal(c(x), q(x))
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    want, want_int = qatkit.load(path, compute="float")(x), qatkit.load(path)(x)
    assert torch.equal(want, c(x)) and torch.equal(want_int, qatkit.convert(q, integer=True)(x))
    _assert_cpp_gives(path, x, tmp_path, want, want_int)


def test_cpp_load_fuses_conv_and_linear_activations_as_python_does(tmp_path):
    """qatkit::nn::load fuses each ReLU / ReLU6 / Hardtanh after a packed conv or Linear into it
    (integer compute, fuse_activations=true, as Python's qatkit.load): the same pairs as Python (a LeakyReLU,
    a conv placed twice and a Hardtanh with a -0.0 bound left alone), the outputs Python's fused and
    unfused loads' bits, NCHW and channels_last; --unfused keeps the modules; save writes the
    activations back (the file Python's export of the same model writes)."""
    torch.manual_seed(7)
    shared = nn.Conv2d(8, 8, 1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6(),
        nn.Conv2d(8, 8, 1), nn.Hardtanh(-0.5, 0.75),
        nn.Conv2d(8, 8, 1), nn.LeakyReLU(0.1),
        shared, nn.ReLU(), shared,  # placed twice: not fused
        nn.Conv2d(8, 8, 1), nn.Hardtanh(-1.0, -0.0),  # a -0.0 bound: not fused
        nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 5))  # a Linear's ReLU: fused too
    x = torch.randn(4, 3, 6, 6) * 2
    path = str(tmp_path / "m.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(net.eval(), [x], qatkit.preset("w8a8"), equalize=False, verbose=False, progress=False)
    qatkit.export(q, path)
    py = qatkit.load(path)
    assert py.fusion_report["fused"] == [("0", "2"), ("3", "4"), ("5", "6"), ("15", "16")]
    for xi in (x, x.contiguous(memory_format=torch.channels_last)):
        r, y = _run(path, xi, tmp_path)
        assert r.returncode == 0 and "fused 4" in r.stdout, r.stdout + r.stderr
        ru, yu = _run(path, xi, tmp_path, compute="unfused")
        assert ru.returncode == 0 and "fused 0" in ru.stdout, ru.stdout + ru.stderr
        with torch.no_grad():
            want = py(xi)
            assert same_bits(y, want) and same_bits(yu, want)
            assert same_bits(want, qatkit.load(path, fuse_activations=False)(xi))
    again = str(tmp_path / "again.safetensors")
    r = subprocess.run([EXE, "--resave", path, again], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    kinds = lambda p: [(c[1]["type"], c[1].get("args")) for c in  # noqa: E731
                       qatkit.serialization.read_header(p)["structure"]["children"]]
    assert kinds(again) == kinds(path)
    assert [k for k, _ in kinds(again)][:9] == ["packed", "Identity", "ReLU", "packed", "ReLU6", "packed", "Hardtanh",
                                                "packed", "LeakyReLU"]
