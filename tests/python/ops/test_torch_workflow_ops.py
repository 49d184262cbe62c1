"""torch's own fake-quant tests (test/quantization/core/test_workflow_ops.py, TestFakeQuantizeOps),
ported to qatkit's ops: the same cases, the same references (re-derived here from the formulas
those tests state) and the same tolerance (1e-6), plus a bit-for-bit comparison with torch's op
where one exists. Each deliberate divergence is a strict xfail with its reason."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qatkit import ops

TOL = 1e-6  # torch's `tolerance`
NP_SEED = 19


def _ref_per_tensor(x, scale, zp, qmin, qmax):
    """torch's reference: ``(clamp(round(x * (1/scale) + zp), qmin, qmax) - zp) * scale`` in float32,
    cast back (its note: scale/zero point stay float in the kernel for float16/64 too)."""
    r = (torch.clamp(torch.round(x.to(torch.float32) * (1.0 / scale) + zp), qmin, qmax) - zp) * scale
    return r.to(x.dtype)


def _ref_grad_per_tensor(dy, x, scale, zp, qmin, qmax):
    xq = torch.round(x.to(torch.float32) * (1.0 / scale) + zp)
    return torch.where((xq >= qmin) & (xq <= qmax), dy, torch.zeros_like(dy)).to(x.dtype)


def _ref_per_channel(x, scale, zp, axis, qmin, qmax):
    shape = [1] * x.dim()
    shape[axis] = -1
    s, z = scale.reshape(shape), zp.reshape(shape).to(torch.float32)
    return ((torch.clamp(torch.round(x / s + z), qmin, qmax) - z) * s).to(x.dtype)


def _ref_grad_per_channel(dy, x, scale, zp, axis, qmin, qmax):
    shape = [1] * x.dim()
    shape[axis] = -1
    xq = torch.round(x / scale.reshape(shape) + zp.reshape(shape).to(torch.float32))
    return torch.where((xq >= qmin) & (xq <= qmax), dy, torch.zeros_like(dy))


def _t(v, dtype=torch.float32):
    return torch.tensor([v], dtype=dtype)


# quint8 qparams as torch's hypothesis strategy draws them (scale a float32 in [1e-3, 1e3], zp in
# [0, 255])
_scales = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False).map(
    lambda v: float(np.float32(v))
)
_shapes = st.lists(st.integers(1, 5), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(shape=_shapes, scale=_scales, zp=st.integers(0, 255), seed=st.integers(0, 2**16))
def test_forward_per_tensor(shape, scale, zp, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape, generator=g) - 0.5) * 4 * scale * 255
    y = ops.fake_quantize(x, _t(scale), torch.tensor([zp], dtype=torch.int32), 0, 255)
    np.testing.assert_allclose(y, _ref_per_tensor(x, scale, zp, 0, 255), rtol=TOL, atol=TOL)
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255))


@settings(max_examples=60, deadline=None)
@given(shape=_shapes, scale=_scales, zp=st.integers(0, 255), seed=st.integers(0, 2**16))
def test_backward_per_tensor(shape, scale, zp, seed):
    # (torch skips its copy of this test, "temporarily"; the reference gradient still applies)
    g = torch.Generator().manual_seed(seed)
    x = ((torch.rand(shape, generator=g) - 0.5) * 4 * scale * 255).requires_grad_()
    y = ops.fake_quantize(x, _t(scale), torch.tensor([zp], dtype=torch.int32), 0, 255)
    dout = torch.rand(shape, generator=g)
    y.backward(dout)
    np.testing.assert_allclose(x.grad, _ref_grad_per_tensor(dout, x.detach(), scale, zp, 0, 255), rtol=TOL, atol=TOL)


def test_forward_per_tensor_half_precision_numerics():
    torch.manual_seed(NP_SEED)
    z = torch.tensor([0], dtype=torch.int32)
    for _ in range(20):
        x = torch.randn(5, 5).to(torch.float16)
        torch.testing.assert_close(ops.fake_quantize(x, _t(0.1), z, 0, 255), _ref_per_tensor(x, 0.1, 0, 0, 255), rtol=TOL, atol=TOL)
    x = torch.tensor([2**15 + 0.01]).to(torch.float16)  # overflow
    torch.testing.assert_close(ops.fake_quantize(x, _t(0.1), z, 0, 255), _ref_per_tensor(x, 0.1, 0, 0, 255), rtol=TOL, atol=TOL)
    x = torch.tensor([2**-24]).to(torch.float16)  # underflow
    torch.testing.assert_close(ops.fake_quantize(x, _t(10.0), z, 0, 255), _ref_per_tensor(x, 10.0, 0, 0, 255), rtol=TOL, atol=TOL)


@pytest.mark.parametrize(
    "float_type,torch_type,strided,tensor_qparams",
    list(itertools.product((torch.float32, torch.float16, torch.float64, torch.bfloat16), (torch.qint8, torch.quint8),
                           (False, True), (True, False))),
)
def test_forward_backward_per_tensor_cachemask(float_type, torch_type, strided, tensor_qparams):
    """torch's cachemask cases: every float type, signed and unsigned codes, contiguous and strided
    inputs, qparams as tensors or Python numbers; ranges from MinMaxObserver on 0.75 x (clipping)."""
    torch.manual_seed(0)
    x = (torch.randn(4, 16)[:, ::2] if strided else torch.randn(4, 8)).to(float_type)
    obs = torch.ao.quantization.MinMaxObserver(torch_type)
    obs(x * 0.75)
    scale, zp = obs.calculate_qparams()
    qmin, qmax = obs.quant_min, obs.quant_max
    s_torch, z_torch = (scale, zp) if tensor_qparams else (float(scale), int(zp))
    xt, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    yt = torch.fake_quantize_per_tensor_affine(xt, s_torch, z_torch, qmin, qmax)
    yo = ops.fake_quantize(xo, scale.float(), zp.to(torch.int32), qmin, qmax)
    if float_type == torch.float64:  # torch rounds float64 per-tensor results to float32 (README)
        torch.testing.assert_close(yo, yt, rtol=TOL, atol=TOL)
    else:
        assert torch.equal(yo, yt)
    if float_type in (torch.float32, torch.float64):  # the float32 reference formula
        torch.testing.assert_close(yo, _ref_per_tensor(x, float(scale), int(zp), qmin, qmax), rtol=TOL, atol=TOL)
    dout = torch.rand_like(x)
    yt.backward(dout)
    yo.backward(dout)
    assert torch.equal(xo.grad, xt.grad)


@pytest.mark.parametrize("float_type", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_forward_backward_per_channel(float_type, axis):
    torch.manual_seed(NP_SEED + axis)
    x = (torch.randn(3, 4, 5) * 10).to(float_type).requires_grad_()
    n = x.shape[axis]
    scale = torch.rand(n) * 0.5 + 0.05
    zp = torch.randint(0, 256, (n,), dtype=torch.int32)
    y = ops.fake_quantize(x, scale, zp, 0, 255, axis=axis)
    ref = _ref_per_channel(x.detach().float(), scale, zp, axis, 0, 255).to(float_type)
    torch.testing.assert_close(y, ref, rtol=TOL, atol=TOL)
    assert torch.equal(y, torch.fake_quantize_per_channel_affine(x.detach(), scale, zp, axis, 0, 255))
    dout = torch.rand_like(x)
    y.backward(dout)
    torch.testing.assert_close(x.grad, _ref_grad_per_channel(dout, x.detach().float(), scale, zp, axis, 0, 255).to(float_type))


def _learnable_ref_grads(dy, x, scale, zp, qmin, qmax, zp_rounding):
    """torch's LSQ / LSQ+ reference gradients (its _fake_quantize_learnable_per_tensor_affine_grad_
    reference): with ``z`` the rounded zero point and ``xq = round(x / s + z)``, the scale gets
    ``qmin - z`` below the range, ``qmax - z`` above it, ``(fq(x) - x) / s`` inside; the zero point
    gets ``-s`` where ``xq`` saturates and 0 elsewhere. ``zp_rounding`` picks how ``z`` is rounded."""
    z = zp_rounding(zp).clamp(qmin, qmax)
    xq = torch.round(x * (1.0 / scale) + z)
    below, above = xq < qmin, xq > qmax
    fq = (xq.clamp(qmin, qmax) - z) * scale
    g_scale = torch.where(below, qmin - z, torch.where(above, qmax - z, (fq - x) / scale))
    g_zp = torch.where(below | above, -scale, torch.zeros_like(x))
    return torch.where(below | above, 0.0, dy), (g_scale * dy).sum(), (g_zp * dy).sum()


@pytest.mark.parametrize("zp", [0.0, 3.0, 9.4, 12.6, -0.7])
def test_learnable_per_tensor_forward_and_backward(zp):
    torch.manual_seed(NP_SEED)
    x = (torch.randn(64) * 4).requires_grad_()
    s, z = torch.tensor([0.5], requires_grad=True), torch.tensor([zp], requires_grad=True)
    y = ops.fake_quantize_learnable(x, s, z, 0, 15)
    yt = torch._fake_quantize_learnable_per_tensor_affine(x.detach(), s.detach(), z.detach(), 0, 15, 1.0)
    assert torch.equal(y, yt)
    dy = torch.rand(64)
    y.backward(dy)
    gx, gs, gz = _learnable_ref_grads(dy, x.detach(), 0.5, torch.tensor(zp), 0, 15, torch.round)
    torch.testing.assert_close(x.grad, gx, rtol=TOL, atol=TOL)
    torch.testing.assert_close(s.grad, gs.reshape(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z.grad, gz.reshape(1), rtol=1e-5, atol=1e-5)


@pytest.mark.xfail(
    strict=True,
    reason="deliberate: torch's learnable backward rounds the zero point as trunc(z + 0.5) while its "
    "forward uses nearbyint (half to even); at z = 2.5 the forward uses 2 and torch's scale gradient "
    "uses 3. qatkit's backward uses the zero point the forward used (nearbyint), so the gradient is "
    "the gradient of what was computed",
)
def test_learnable_backward_at_a_half_integer_zero_point_equals_torch():
    x = torch.tensor([-3.0, -1.0, 0.2, 1.0, 2.6, 4.0, 30.0])
    grads = []
    for fn in (torch._fake_quantize_learnable_per_tensor_affine, None):
        s, z = torch.tensor([0.5], requires_grad=True), torch.tensor([2.5], requires_grad=True)
        y = fn(x, s, z, 0, 15, 1.0) if fn else ops.fake_quantize_learnable(x, s, z, 0, 15)
        y.sum().backward()
        grads.append(s.grad.clone())
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("axis", [0, 1])
def test_learnable_per_channel_forward_and_backward(axis):
    torch.manual_seed(NP_SEED + axis)
    x = (torch.randn(4, 6) * 3).requires_grad_()
    n = x.shape[axis]
    s = (torch.rand(n) * 0.4 + 0.1).requires_grad_()
    z = torch.tensor([0.0, 3.0, 7.2, 12.8, 1.0, 4.0][:n]).requires_grad_()
    y = ops.fake_quantize_learnable(x, s, z, 0, 15, axis=axis)
    yt = torch._fake_quantize_learnable_per_channel_affine(x.detach(), s.detach(), z.detach(), axis, 0, 15, 1.0)
    assert torch.equal(y, yt)
    dy = torch.rand_like(x)
    y.backward(dy)
    for c in range(n):
        xc, dyc = x.detach().select(axis, c), dy.select(axis, c)
        gx, gs, gz = _learnable_ref_grads(dyc, xc, s[c].detach(), z[c].detach(), 0, 15, torch.round)
        torch.testing.assert_close(x.grad.select(axis, c), gx, rtol=TOL, atol=TOL)
        torch.testing.assert_close(s.grad[c], gs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(z.grad[c], gz, rtol=1e-5, atol=1e-5)


def test_fq_module_per_tensor():
    """torch's FakeQuantize(MovingAverageMinMaxObserver) over several batches against the same
    observer + fake quant through qatkit's fused op: identical ranges, qparams and outputs."""
    torch.manual_seed(NP_SEED)
    fq = torch.ao.quantization.FakeQuantize(
        torch.ao.quantization.MovingAverageMinMaxObserver, quant_min=0, quant_max=255, averaging_constant=0.01
    )
    rmin, rmax = torch.tensor([float("inf")]), torch.tensor([float("-inf")])
    scale, zp = torch.ones(1), torch.zeros(1, dtype=torch.int32)
    on = torch.ones(1, dtype=torch.uint8)
    for i in range(5):
        x = torch.randn(8, 16) * (1 + i)
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        yt = fq(xt)
        yo = ops.fused_observe_fake_quantize(xo, rmin, rmax, scale, zp, on, on, 0.01, True, 0, 255, False)
        torch.testing.assert_close(rmin, fq.activation_post_process.min_val.reshape(1), rtol=0, atol=0)
        torch.testing.assert_close(rmax, fq.activation_post_process.max_val.reshape(1), rtol=0, atol=0)
        assert torch.equal(scale, fq.scale) and torch.equal(zp, fq.zero_point.to(torch.int32))
        assert torch.equal(yo, yt)
        dy = torch.rand_like(x)
        yt.backward(dy)
        yo.backward(dy)
        assert torch.equal(xo.grad, xt.grad)


@pytest.mark.xfail(
    strict=True,
    reason="deliberate (README, 'Differences from torch'): for a floating zero point torch computes "
    "nearbyint(x/s + z), qatkit nearbyint(x/s) + z, as for integer zero points; they differ at exact "
    ".5 ties when z is odd",
)
def test_per_channel_with_a_float_zero_point_equals_torch_at_ties():
    x, s, z = torch.tensor([[-38.25, 1.25, 2.75]]), torch.tensor([0.5]), torch.tensor([147.0])
    assert torch.equal(ops.fake_quantize(x, s, z, 0, 255, axis=0), torch.fake_quantize_per_channel_affine(x, s, z, 0, 0, 255))


@pytest.mark.xfail(
    strict=True,
    reason="deliberate (README): torch's per-tensor kernel rounds float64 results through float32 "
    "(its per-channel kernel does not); qatkit computes float64 in float64 for every granularity",
)
def test_per_tensor_float64_equals_torch_bit_for_bit():
    torch.manual_seed(0)
    x = torch.randn(4, 8, dtype=torch.float64)
    y = ops.fake_quantize(x, torch.tensor([0.0123]), torch.tensor([3], dtype=torch.int32), -128, 127)
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, 0.0123, 3, -128, 127))
