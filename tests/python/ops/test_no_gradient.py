"""Ops without a gradient say so (csrc/ops/autograd/no_gradient_kernel.cpp, docs/integer.md): the
integer kernels, the code producers, dequantize_affine and the internal statistics ops run on
tensors that require grad, give the same values, and a backward through their float outputs raises
NotImplementedError naming the op, instead of torch's fallback for custom ops, which only warned and
returned no gradient. out= overloads refuse tensors that require grad, as torch's own do."""

import dataclasses
import re
import warnings

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import qatkit
from qatkit import ops

# presets whose converted integer models put every integer kernel on the call path
PRESETS = ["w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1", "bitnet_b158", "int4_weight_only",
           "int8_weight_only"]
KERNELS = {"linear_int8", "linear_dynamic_int8", "linear_w4a8", "linear_w2a8", "linear_w1a8", "linear_w1a1",
           "linear_w4_weight_only", "linear_w8_weight_only", "conv2d_int8", "conv2d_w1a1", "conv2d_w4a8"}


class _Record(TorchDispatchMode):
    """Records every qatkit op call (below autograd: the tensors as the kernels get them)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "qatkit":
            self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def _integer_model(preset):
    torch.manual_seed(0)
    linear_only = preset in ("bitnet_b158",)  # per-token activations: Linear layers only (docs/integer.md)
    # the 2 x 2 conv's K = 16 * 4 = 64 takes w4a8's per-group weights (conv2d_w4a8)
    layers = [] if linear_only else [nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1,
                                                                                         groups=16), nn.ReLU(),
                                     nn.Conv2d(16, 16, 2), nn.ReLU()]
    layers += [nn.Flatten(), nn.Linear(16 * 3 * 3 if not linear_only else 48, 64), nn.ReLU(), nn.Linear(64, 32)]
    shape = (4, 48) if linear_only else (4, 3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = qatkit.preset(preset)
        if getattr(cfg, "first_last", None) is not None:  # every layer on its kernel
            cfg = dataclasses.replace(cfg, first_last=None)
        q = qatkit.prepare_qat(nn.Sequential(*layers), cfg)
        if any(getattr(m, "input_fake_quant", None) is not None for m in q.modules()):
            qatkit.qat.calibrate(q, [torch.randn(shape) for _ in range(2)])
        return qatkit.convert(q, integer=True).eval(), shape


def _kernel_calls(preset):
    model, shape = _integer_model(preset)
    x = torch.randn(shape)
    rec = _Record()
    with torch.no_grad(), rec:
        model(x)
    return model, x, [(f, a, k) for f, a, k in rec.calls if f._opname in KERNELS]


def _with_grad_input(args):
    """args with the first float tensor (the activations) replaced by a leaf that requires grad."""
    out, done = [], False
    for a in args:
        if not done and isinstance(a, torch.Tensor) and a.is_floating_point():
            a, done = a.detach().clone().requires_grad_(), True
        out.append(a)
    assert done, "the call has no float tensor argument"
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_integer_kernels_run_with_grad_and_raise_at_backward(preset):
    _, _, calls = _kernel_calls(preset)
    assert calls, f"{preset}: no integer kernel ran (the test would check nothing)"
    for func, args, kwargs in calls:
        want = func(*args, **kwargs)
        ga = _with_grad_input(args)
        got = func(*ga, **kwargs)
        assert torch.equal(got, want), f"{func}: values change when the input requires grad"
        assert got.requires_grad and got.grad_fn is not None, f"{func}: the output has no graph to raise from"
        with pytest.raises(NotImplementedError, match=rf"qatkit::{func._opname} has no gradient: the integer "
                                                      r"kernels are inference only.*torch\.no_grad"):
            got.sum().backward()
        with torch.no_grad():
            assert not func(*ga, **kwargs).requires_grad


def test_every_integer_kernel_is_covered():
    seen = {f._opname for p in PRESETS for f, _, _ in _kernel_calls(p)[2]}
    assert seen == KERNELS, f"kernels no preset model reached: {sorted(KERNELS - seen)}"


@pytest.mark.parametrize("preset", ["w8a8", "xnor_w1a1"])
def test_a_loss_through_a_converted_integer_model_raises_instead_of_training_nothing(preset):
    model, x, _ = _kernel_calls(preset)
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) or hasattr(m, "weight_int"))
    xg = x.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's warn-only fallback would fail here
        y = model(xg)
        with pytest.raises(NotImplementedError, match=r"qatkit::\w+ has no gradient"):
            y.square().mean().backward()
    assert xg.grad is None and first is not None
    with torch.no_grad():
        assert torch.equal(model(x), y.detach())


def test_opcheck_with_inputs_that_require_grad():
    """torch.library.opcheck's autograd-registration check holds with grad-requiring inputs."""
    for func, args, kwargs in _kernel_calls("w8a8")[2][:2] + _kernel_calls("xnor_w1a1")[2][:1]:
        torch.library.opcheck(func, tuple(_with_grad_input(args)), kwargs,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def _codes_calls():
    x = torch.randn(6, 40)
    codes = torch.randint(-8, 8, (6, 40), dtype=torch.int8)
    return [
        ("binary_codes", lambda t: ops.binary_codes(t, "bitnet", 0)[1], r"qatkit::binarize is the differentiable"),
        ("ternary_codes", lambda t: ops.ternary_codes(t, "absmean", 0)[1], r"qatkit::ternarize is the differentiable"),
        ("_mean_abs", lambda t: torch.ops.qatkit._mean_abs(t, 0), r"internal op"),
        ("_mean_and_mean_abs", lambda t: torch.ops.qatkit._mean_and_mean_abs(t, 0)[0], r"internal op"),
        ("dequantize_affine",
         lambda t: ops.dequantize_affine(codes, t[:, 0].abs() + 0.1,
                                         torch.zeros(6, dtype=torch.int32), axis=0),
         r"fake_quantize_learnable"),
    ], x


@pytest.mark.parametrize("i", range(5))
def test_code_and_statistics_ops_raise_at_backward_with_their_hint(i):
    calls, x = _codes_calls()
    name, fn, hint = calls[i]
    want = fn(x)
    xg = x.clone().requires_grad_()
    got = fn(xg)
    assert torch.equal(got, want) and got.requires_grad
    with pytest.raises(NotImplementedError, match=rf"qatkit::{name} has no gradient: .*{hint}"):
        got.sum().backward()


def test_the_differentiable_ops_still_differentiate():
    """binarize / ternarize / fake_quantize keep their straight-through gradients (not this kernel)."""
    x = torch.randn(5, 32, requires_grad=True)
    (ops.binarize(x).sum() + ops.ternarize(x).sum()
     + ops.fake_quantize(x, torch.tensor([0.05]), torch.tensor([0], dtype=torch.int32), -8, 7).sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["fake_quantize", "binarize", "ternarize", "quantize_per_token"])
def test_out_overloads_refuse_tensors_that_require_grad(name):
    x = torch.randn(4, 16)
    call = {"fake_quantize": lambda t, o: ops.fake_quantize(t, torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32),
                                                            -8, 7, out=o),
            "binarize": lambda t, o: ops.binarize(t, out=o),
            "ternarize": lambda t, o: ops.ternarize(t, out=o),
            "quantize_per_token": lambda t, o: ops.quantize_per_token(t, out=o)}[name]
    out = torch.empty(4, 16)
    with pytest.raises(RuntimeError, match=re.escape(f"qatkit::{name}.out: functions with out=... arguments don't "
                                                     "support automatic differentiation")):
        call(x.clone().requires_grad_(), out)
    want = call(x, torch.empty(4, 16))
    with torch.no_grad():
        assert torch.equal(call(x.clone().requires_grad_(), out), want)


def test_forward_mode_ad_raises_at_the_call():
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        xd = fwAD.make_dual(torch.randn(4, 16), torch.randn(4, 16))
        with pytest.raises(NotImplementedError, match=r"qatkit::binary_codes: forward-mode AD"):
            ops.binary_codes(xd, "bitnet", 0)


def test_compiled_forward_on_tensors_that_require_grad_works_and_its_backward_raises():
    """torch.compile traces the backward of such a forward (AOTAutograd): the error is recorded in it
    through _no_gradient, so the compiled forward gives the eager values and the compiled backward
    raises when it runs (torch's own _weight_int8pack_mm fails the compile instead)."""
    torch._dynamo.reset()
    model, x, _ = _kernel_calls("w8a8")
    xg = x.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = torch.compile(model)(xg)
    with torch.no_grad():
        assert torch.equal(y.detach(), model(x))
    assert y.requires_grad
    with pytest.raises(NotImplementedError, match=r"qatkit::linear_int8 has no gradient"):
        y.sum().backward()
    torch._dynamo.reset()


def test_no_gradient_op_raises_on_cpu_and_gives_the_input_shape_on_meta():
    g = torch.randn(3, 5)
    with pytest.raises(NotImplementedError, match=r"qatkit::conv2d_int8 has no gradient: the integer kernels"):
        torch.ops.qatkit._no_gradient(g, "conv2d_int8", [2, 7], torch.float32)
    out = torch.ops.qatkit._no_gradient(g.to("meta"), "conv2d_int8", [2, 7], torch.float64)
    assert out.device.type == "meta" and out.shape == (2, 7) and out.dtype == torch.float64
