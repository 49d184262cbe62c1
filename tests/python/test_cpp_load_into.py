"""qatkit::nn::load_into (csrc/nn/load.cpp): a file Python exported from a model with its own forward
(the repo's CIFAR ResNet-18: residual adds, BatchNorms folded into the convs) runs in a LibTorch
program that writes the same architecture with qatkit layers (tests/cpp/load_run.cpp, --resnet) and
gives Python's loaded model's outputs bit for bit at every preset; what does not fit is refused
naming the layer. And the way back: a file C++ wrote (qatkit::nn::save) loads into Python's float
model with qatkit.load_into (module_changes: the folded BatchNorm's place)."""

import copy
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import qatkit
from qatkit.testing.models import resnet18

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXE = os.path.join(ROOT, "build", "py", "qatkit_load_run")
pytestmark = pytest.mark.skipif(
    not os.path.exists(EXE), reason="qatkit_load_run is built only by the test build (scripts/setup.sh)"
)
WIDTH = 0.25  # channels 16 / 32 / 64 / 128: every kernel family at small cost
# bitnet_b158 keeps the stem conv and the classifier float (its first / last rule): the C++ model
# builds them as torch::nn::Conv2d / Linear (--float-ends), and the stem's folded BatchNorm gives
# that float conv a bias the float model's lacks (qatkit.load_into adds it: _folded_biases)
PRESETS = ["w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1", "int4_weight_only", "bitnet_b158"]
FLOAT_ENDS = {"bitnet_b158"}


def _resnet():
    return resnet18(10, width=WIDTH, small_input=True).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each preset's PTQ'd ResNet-18 exported: {preset: path}, and the input."""
    torch.manual_seed(0)
    fp = _resnet()
    calib = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    d = tmp_path_factory.mktemp("into")
    out = {}
    for preset in PRESETS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qatkit.ptq(copy.deepcopy(fp), calib, qatkit.preset(preset), verbose=False, progress=False)
        out[preset] = str(d / f"{preset}.safetensors")
        qatkit.export(q, out[preset])
    return out, torch.randn(3, 3, 32, 32)


def _run_resnet(path, x, tmp_path, *flags, width=WIDTH):
    from safetensors.torch import load_file, save_file

    inp, out = str(tmp_path / "x.safetensors"), str(tmp_path / "y.safetensors")
    save_file({"x": x.contiguous()}, inp)
    r = subprocess.run([EXE, "--resnet", str(width), *flags, path, inp, out], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "MKL_DYNAMIC": "FALSE"})
    return r, (load_file(out)["y"] if r.returncode == 0 else None)


@pytest.mark.parametrize("preset", PRESETS)
def test_cpp_resnet_gives_python_bits(files, preset, tmp_path):
    paths, x = files
    ends = ["--float-ends"] if preset in FLOAT_ENDS else []
    computes = ["integer", "float"] if preset in ("w8a8", "xnor_w1a1", "bitnet_b158") else ["integer"]
    for compute in computes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = qatkit.load_into(_resnet(), paths[preset], compute=compute)
        with torch.no_grad():
            want = m(x)
        r, y = _run_resnet(paths[preset], x, tmp_path, *ends, *(["--float"] if compute == "float" else []))
        assert r.returncode == 0, r.stderr
        n = 19 if preset in FLOAT_ENDS else 21  # convs (17 + 3 shortcuts) and the classifier
        assert f"loaded {n} layers" in r.stdout
        assert torch.equal(y, want), (compute, float((y - want).abs().max()))


def test_cpp_load_into_refuses_what_does_not_fit(files, tmp_path):
    paths, x = files
    r, _ = _run_resnet(paths["w8a8"], x, tmp_path, width=0.5)  # another width: the first layer differs
    assert r.returncode == 1
    assert ("layer 'conv1': the model's QuantConv2d has in_channels=3, out_channels=32, kernel_size=[3, 3], stride=[1, 1], "
            "padding=[1, 1], dilation=[1, 1], groups=1, bias=true, padding_mode=zeros; the file's layer has in_channels=3, "
            "out_channels=16") in r.stderr
    # float stem and classifier where the file holds them packed, and packed ones where it keeps them float
    r, _ = _run_resnet(paths["w8a8"], x, tmp_path, "--float-ends")
    assert r.returncode == 1
    assert "layer 'conv1' is a torch::nn::Conv2dImpl in the model, where the file holds a packed QuantConv2d" in r.stderr
    r, _ = _run_resnet(paths["bitnet_b158"], x, tmp_path)
    assert r.returncode == 1
    assert "the model's qatkit layers ['conv1', 'fc'] are not packed layers of the file" in r.stderr
    # another model's file: the first layer it holds that the ResNet lacks
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(mlp, [torch.randn(8, 8)], qatkit.w8a8(), verbose=False, progress=False)
    other = str(tmp_path / "mlp.safetensors")
    qatkit.export(q, other)
    r, _ = _run_resnet(other, x, tmp_path)
    assert r.returncode == 1 and "the file holds layer '0', which the model does not have" in r.stderr
    r, _ = _run_resnet(paths["w8a8"], x, tmp_path, width="wide")
    assert r.returncode == 2 and "WIDTH must be a number" in r.stderr


def test_python_load_into_a_cpp_file(tmp_path):
    """A model C++ prepared, calibrated and saved (load_run --qat-save: conv-BatchNorm-ReLU folded,
    depthwise conv, pooling, Linears) loads into Python's float twin of it with qatkit.load_into: the
    file's module_changes put an Identity where the BatchNorm was, and the outputs are Python's
    qatkit.load of the same file bit for bit."""
    from safetensors.torch import load_file, save_file

    x = torch.randn(6, 64)
    inp, path, out = (str(tmp_path / n) for n in ("x.safetensors", "m.safetensors", "y.safetensors"))
    save_file({"x": x}, inp)
    r = subprocess.run([EXE, "--qat-save", "w8a8", inp, path, out], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    twin = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 16, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 10)).eval()
    header = qatkit.serialization.read_header(path)
    assert header["module_changes"]["2"] == "Identity"  # the folded BatchNorm's place
    m = qatkit.load_into(twin, path)
    assert type(m[2]) is nn.Identity
    with torch.no_grad():
        assert torch.equal(m(x), qatkit.load(path)(x))
        # the C++ converted model computed in float (no set_compute): the float load of the same file
        assert torch.equal(qatkit.load_into(twin, path, compute="float")(x), load_file(out)["y"])


@pytest.mark.parametrize("preset", ["w8a8", "xnor_w1a1"])
def test_python_load_into_a_cpp_custom_module(preset, tmp_path):
    """The other way: the C++ ResNet-18 built with the preset's QAT layers, calibrated, converted and
    written by qatkit::nn::save (a custom module: no structure, which qatkit.load refuses naming the
    type) loads into Python's ResNet-18 with its BatchNorms as Identity (the C++ model has none) and
    gives the C++ model's outputs in integer compute bit for bit."""
    x = torch.randn(2, 3, 32, 32)
    path = str(tmp_path / "cpp.safetensors")
    r, y = _run_resnet(path, x, tmp_path, "--save", preset)
    assert r.returncode == 0, r.stderr
    header = qatkit.serialization.read_header(path)
    assert header["structure"] is None and "its own forward" in header["structure_gap"]
    assert len(header["layers"]) == 21
    with pytest.raises(ValueError, match="its own forward"):
        qatkit.load(path)
    twin = _resnet()
    for name, m in list(twin.named_modules()):
        if isinstance(m, nn.BatchNorm2d):
            parent, _, leaf = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, leaf, nn.Identity())
    m = qatkit.load_into(twin, path)
    with torch.no_grad():
        assert torch.equal(m(x), y)


def test_files_lay_tensors_out_aligned(tmp_path):
    """qatkit::nn::save lays the data out by element size (largest first, as the safetensors library
    does), so every tensor of a C++ file starts at a multiple of its element size and a reader that
    maps the file gets aligned pointers; a file that is not so laid out (C++'s before 2026-12-08, or
    another writer's) still loads in Python with aligned tensors (copied), the same outputs."""
    import json
    import struct

    from safetensors.torch import save_file

    x = torch.randn(6, 64)
    inp, path, out = (str(tmp_path / n) for n in ("x.safetensors", "m.safetensors", "y.safetensors"))
    save_file({"x": x}, inp)
    r = subprocess.run([EXE, "--qat-save", "w4a8", inp, path, out], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    table = json.loads(raw[8:8 + n])
    size = {"F32": 4, "F64": 8, "I32": 4, "I64": 8, "F16": 2, "BF16": 2, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
    entries = {k: v for k, v in table.items() if k != "__metadata__"}
    assert any(v["dtype"] == "U8" and (v["data_offsets"][1] - v["data_offsets"][0]) % 4 for v in entries.values()), \
        "the test needs an odd-sized byte tensor (the case that misaligned the floats after it)"
    assert (8 + n) % 8 == 0
    for k, v in entries.items():
        assert v["data_offsets"][0] % size[v["dtype"]] == 0, (k, v)
    # the same tensors laid out in the header's order (the old layout: floats after odd byte tensors)
    body = raw[8 + n:]
    pieces, at = [], 0
    for k, v in entries.items():
        b, e = v["data_offsets"]
        pieces.append(body[b:e])
        v["data_offsets"] = [at, at + e - b]
        at += e - b
    assert any(v["data_offsets"][0] % size[v["dtype"]] for v in entries.values())  # misaligned now
    text = json.dumps({"__metadata__": table["__metadata__"], **entries}).encode()
    text += b" " * (-len(text) % 8)
    old = str(tmp_path / "old.safetensors")
    with open(old, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(pieces))
    from qatkit import serialization as S

    assert all(t.data_ptr() % t.element_size() == 0 for t in S._tensors(old).values())
    with torch.no_grad():
        assert torch.equal(qatkit.load(old)(x), qatkit.load(path)(x))


def test_a_short_fuzz_run_of_load_into_finds_nothing(tmp_path):
    """scripts/fuzz_load.py --pool resnet (byte flips, truncations, header and tensor-table edits of the
    ResNet-18 files) through qatkit::nn::load_into into the C++ program's ResNet and a forward, 600
    inputs in 2 processes, and through Python's load / load_into, 300 inputs: each input loads and
    runs or is refused with a ValueError; no crash, no other exception. (No --agree: Python's
    load_into takes the file's options, C++'s checks them against the model it fills.)"""
    fuzz = os.path.join(ROOT, "scripts", "fuzz_load.py")
    rss = ["--max-rss-mb", "0"] if os.environ.get("QATKIT_SANITIZED") else []  # (ASan's shadow memory counts)
    r = subprocess.run([sys.executable, fuzz, "--cpp", "--many", "300", "--inputs", "600", "--seed", "6", "--pool",
                        "resnet", "--exe", EXE, *rss], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0 and "no crash" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, fuzz, "--inputs", "300", "--seed", "6", "--pool", "resnet", *rss],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0 and "0 other exceptions" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, fuzz, "--cpp", "--many", "10", "--agree", "--pool", "resnet"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "--pool resnet" in r.stderr
