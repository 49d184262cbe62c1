"""The C++ qatkit::nn::ptq equals Python's qatkit.ptq (with the data-aware steps off, which stay
Python-only) bit for bit on a Conv+BN+ReLU / Linear model: same BatchNorm folding, min/max
calibration and round-to-nearest. The C++ side is tests/cpp/ptq_crosscheck.cpp (test build)."""

import os
import subprocess

import pytest
import torch
import torch.jit._pickle
from torch import nn

import qatkit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
EXE = os.path.join(ROOT, "build", "py", "qatkit_ptq_crosscheck")

pytestmark = pytest.mark.skipif(
    not os.path.exists(EXE), reason="qatkit_ptq_crosscheck is built only by the test build (scripts/setup.sh)"
)


def model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 10),
    )


@pytest.mark.parametrize("preset", ["w8a8", "int8_weight_only", "w4a8", "ternary_weight_only"])
def test_cpp_ptq_equals_python_ptq(tmp_path, preset):
    torch.manual_seed(0)
    m = model()
    for bn in (m[1], m[4]):  # non-trivial statistics and affine parameters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    m.eval()
    calib = [torch.randn(16, 3, 6, 6) for _ in range(3)]
    x = torch.randn(5, 3, 6, 6)
    state = {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state": state, "calib": calib, "x": x}, tmp_path / "in.pt")
    r = subprocess.run([EXE, str(tmp_path / "in.pt"), str(tmp_path / "out.pt"), preset], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with torch.serialization.safe_globals([torch.jit._pickle.restore_type_tag]):
        cpp = torch.load(tmp_path / "out.pt")[0]
    q = qatkit.ptq(m, calib, qatkit.preset(preset), equalize=False, absorb_bias=False, correct_bias=None,
                   threshold_search=False, verbose=False, progress=False)
    with torch.no_grad():
        py = q(x)
    assert torch.equal(py, cpp), f"max diff {(py - cpp).abs().max().item()}"
