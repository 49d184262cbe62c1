"""binarize: scalings (none, XNOR mean_abs, BitNet) against the papers' formulas, every estimator's
gradient against its formula and a float64 detach-trick reference, SignSwish's surrogate as a
true derivative (gradcheck), stochastic BinaryConnect statistics and reproducibility, opcheck,
compile and export, bad input."""

import math

import pytest
import torch

import qatkit
from qatkit import ops
from qatkit.testing.samples import DTYPES

COMPOSITE = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
SHAPES = [(), (7,), (6, 10), (3, 4, 5)]
ESTIMATORS = ["identity", "clipped_ste", "approx_sign", "swish_sign"]


def _x(shape, dtype=torch.float32, seed=0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 1.5).to(dtype)


def ref_forward(x, scaling, axis):
    x64 = x.double()
    dims = tuple(range(x.dim())) if axis is None else tuple(d for d in range(x.dim()) if d != axis % x.dim())
    if scaling == "none":
        return torch.where(x64 >= 0, 1.0, -1.0).double()
    alpha = x64.abs().mean(dims, keepdim=True) if x.dim() else x64.abs()
    if scaling == "mean_abs":
        return torch.where(x64 >= 0, 1.0, -1.0).double() * alpha
    center = x64.mean(dims, keepdim=True) if x.dim() else x64
    return torch.where(x64 - center > 0, 1.0, -1.0).double() * alpha


def estimator_grad(v, est, beta):
    """d sign / dv surrogates, float64 (the papers' formulas)."""
    a = v.abs()
    if est == "identity":
        return torch.ones_like(v)
    if est == "clipped_ste":
        return (a <= 1).double()
    if est == "approx_sign":
        return torch.where(a < 1, 2 - 2 * a, torch.zeros_like(v))
    bv = beta * v
    return beta * (2 - bv * torch.tanh(bv / 2)) / (1 + torch.cosh(bv))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scaling", ["none", "mean_abs", "bitnet"])
def test_forward_matches_formula(dtype, shape, scaling):
    x = _x(shape, dtype)
    for axis in [None] + ([0, -1] if len(shape) >= 2 else []):
        y = ops.binarize(x, scaling, axis)
        ref = ref_forward(x, scaling, axis)
        tol = 1e-6 if dtype in (torch.float32, torch.float64) else 1e-2
        torch.testing.assert_close(y.double(), ref.to(y.dtype).double(), rtol=tol, atol=0)


def test_sign_of_zero():
    z = torch.zeros(4)
    assert torch.equal(ops.binarize(z), torch.ones(4))  # sign(0) = +1
    w = torch.tensor([1.0, -1.0, 3.0, -3.0])  # mean 0: W - mean W = W, no zeros; make one zero:
    w0 = torch.tensor([2.0, 0.0, -2.0])  # mean 0 -> v = 0 for the middle: BitNet Sign(0) = -1
    y = ops.binarize(w0, "bitnet")
    assert y[1].item() == -w0.abs().mean().item()
    assert ops.binarize(w, "bitnet").abs().unique().numel() == 1


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("scaling", ["none", "mean_abs", "bitnet"])
@pytest.mark.parametrize("axis", [None, 0])
def test_gradient_matches_estimator_formula_and_reference(estimator, scaling, axis):
    x = _x((8, 12), seed=2).requires_grad_()
    g = torch.randn(8, 12)
    ops.binarize(x, scaling, axis, estimator, 1.7).backward(g)
    x64 = x.detach().double()
    center = 0.0
    if scaling == "bitnet":
        center = x64.mean() if axis is None else x64.mean(1, keepdim=True)
    expected = g.double() * estimator_grad(x64 - center, estimator, 1.7)
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-5, atol=1e-6)
    # detach trick: y = surrogate(v) + (q - surrogate(v)).detach(); autograd gives the same gradient
    if estimator == "clipped_ste":
        xr = x.detach().double().requires_grad_()
        v = xr - (center if isinstance(center, float) else center.detach())
        surrogate = torch.clamp(v, -1, 1)
        y = surrogate + (ref_forward(x.detach(), scaling, axis) - surrogate).detach()
        y.backward(g.double())
        torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-6, atol=1e-7)


def test_swish_sign_surrogate_is_a_true_derivative():
    """SignSwish SS(v) = 2 sigmoid(bv) (1 + bv (1 - sigmoid(bv))) - 1 is smooth: gradcheck its
    derivative against the estimator the op applies."""
    beta = 1.3
    v = torch.linspace(-4, 4, 41, dtype=torch.float64, requires_grad=True)

    def ss(t):
        s = torch.sigmoid(beta * t)
        return 2 * s * (1 + beta * t * (1 - s)) - 1

    assert torch.autograd.gradcheck(ss, (v,))
    (auto,) = torch.autograd.grad(ss(v).sum(), v)
    x = v.detach().float().requires_grad_()
    ops.binarize(x, "none", None, "swish_sign", beta).sum().backward()
    torch.testing.assert_close(x.grad.double(), auto, rtol=1e-5, atol=1e-6)


def test_stochastic_binaryconnect_statistics_and_reproducibility():
    n = 200_000
    seed = torch.tensor([1234])
    for value in (-0.6, 0.0, 0.3, 0.9, 1.5):
        x = torch.full((n,), value)
        y = ops.binarize(x, seed=seed)
        p = min(max((value + 1) / 2, 0.0), 1.0)
        tol = 5 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-9  # five standard errors
        assert abs((y > 0).float().mean().item() - p) <= tol, (value, (y > 0).float().mean().item(), p)
        assert torch.equal(y, ops.binarize(x, seed=seed))  # same seed, same bits
    a = ops.binarize(torch.zeros(1000), seed=torch.tensor([1]))
    b = ops.binarize(torch.zeros(1000), seed=torch.tensor([2]))
    assert not torch.equal(a, b)
    # the same draws whatever the thread count (counter = element index)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.binarize(torch.zeros(100_000), seed=seed)
        torch.set_num_threads(2)
        two = ops.binarize(torch.zeros(100_000), seed=seed)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


def test_nan_propagates():
    y = ops.binarize(torch.tensor([float("nan"), 1.0]))
    assert torch.isnan(y[0]) and y[1].item() == 1.0


@pytest.mark.parametrize("shape", [(7,), (3, 16), (0, 4)])
@pytest.mark.parametrize("scaling", ["none", "bitnet"])
def test_opcheck(shape, scaling):
    x = _x(shape).requires_grad_()
    torch.library.opcheck(torch.ops.qatkit.binarize.default, (x, scaling, None, "approx_sign", 1.0, None))
    torch.library.opcheck(torch.ops.qatkit.binarize.default, (x, scaling, None, "clipped_ste", 1.0, torch.tensor([3])))
    torch.library.opcheck(
        torch.ops.qatkit._binarize_backward.default, (torch.randn(shape), x.detach(), None, None, "swish_sign", 2.0)
    )


def test_compile_and_export():
    class XnorLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(8, 16))

        def forward(self, x):
            w = ops.binarize(self.weight, "mean_abs", 0)
            return torch.nn.functional.linear(ops.binarize(x, estimator="approx_sign"), w)

    m = XnorLinear()
    x = torch.randn(4, 16)
    torch._dynamo.reset()
    c = torch.compile(m, backend="aot_eager", fullgraph=True)
    y = c(x)
    y.sum().backward()
    g = m.weight.grad.clone()
    m.weight.grad = None
    m(x).sum().backward()
    assert torch.equal(y, m(x)) and torch.equal(g, m.weight.grad)
    ep = torch.export.export(m, (x,))
    assert torch.equal(ep.module()(x), m(x))


@pytest.mark.parametrize(
    "kwargs,exc,fragment",
    [
        ({"scaling": "xnor"}, ValueError, "scaling must be one of 'none', 'mean_abs', 'bitnet', got 'xnor'"),
        (
            {"estimator": "ste"},
            ValueError,
            "estimator must be one of 'identity', 'clipped_ste', 'approx_sign', 'swish_sign', got 'ste'",
        ),
        ({"beta": 0.0}, ValueError, "beta must be positive and finite, got 0"),
        ({"axis": 3}, ValueError, "axis must be in [-2, 2)"),
        ({"seed": torch.tensor([1.0])}, TypeError, "seed must be an int64 tensor, got Float"),
        ({"seed": torch.tensor([1, 2])}, ValueError, "seed must have 1 element, got 2"),
    ],
)
def test_bad_input(kwargs, exc, fragment):
    with pytest.raises(exc) as info:
        ops.binarize(torch.randn(3, 4), **kwargs)
    assert fragment in str(info.value)


def test_integer_input_rejected():
    with pytest.raises(TypeError, match="input must be float32"):
        ops.binarize(torch.ones(3, dtype=torch.int32))


@pytest.mark.parametrize("shape,axis", [((7,), None), ((6, 33), 0), ((6, 33), 1), ((2, 3, 4), None), ((0, 5), None)])
def test_mean_abs_statistic(shape, axis):
    x = _x(shape)
    got = torch.ops.qatkit._mean_abs(x, axis)
    if x.numel():
        dims = tuple(range(x.dim())) if axis is None else tuple(d for d in range(x.dim()) if d != axis)
        torch.testing.assert_close(got.double(), x.double().abs().mean(dims).reshape(-1), rtol=1e-6, atol=1e-7)
        torch.library.opcheck(torch.ops.qatkit._mean_abs.default, (x, axis))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,axis", [((7,), None), ((7,), 0), ((6, 33), 0), ((6, 33), 1), ((2, 3, 4), None),
                                        ((3, 5, 7, 9), 0), ((3, 40000), 0), ((70001,), None), ((0, 5), 0)])
def test_mean_and_mean_abs_statistic(dtype, shape, axis):
    """_mean_and_mean_abs (the 'bitnet' centre and scale): the mean within half an ulp of float32 (plus
    a hair) of the float64 mean, from one float64 pass; the scale is _mean_abs's bits; the composite
    (CUDA's and Meta's kernel) within an ulp of the CPU kernel; opcheck."""
    x = (_x(shape, seed=3) * 2 + 0.7).to(dtype)
    mean, mabs = torch.ops.qatkit._mean_and_mean_abs(x, axis)
    assert mean.dtype == mabs.dtype == torch.float32
    assert torch.equal(mabs, torch.ops.qatkit._mean_abs(x, axis))
    if not x.numel():
        return
    dims = tuple(range(x.dim())) if axis is None else tuple(d for d in range(x.dim()) if d != axis)
    ref = x.double().mean(dims).reshape(-1) if dims else x.double().reshape(-1)
    ulp = torch.finfo(torch.float32).eps * ref.abs().float().double().clamp_min(torch.finfo(torch.float32).tiny)
    assert bool(((mean.double() - ref).abs() <= 0.5001 * ulp + 1e-300).all())
    composite = torch.ops.qatkit._mean_and_mean_abs.default.redispatch(COMPOSITE, x, axis)
    torch.testing.assert_close(composite[0], mean, rtol=2 ** -23, atol=0)
    torch.testing.assert_close(composite[1], mabs, rtol=2 ** -23, atol=0)
    if x.numel() < 1000:
        torch.library.opcheck(torch.ops.qatkit._mean_and_mean_abs.default, (x, axis))


def test_bitnet_centre_is_the_float64_mean_rounded():
    """The 'bitnet' centre where a float32 sum strays: 8 x 30,000 heavy-tailed elements (cubed normals
    x 100, + 0.37). torch.mean in float32 lands more than half an ulp from the float64 mean on most
    of these rows (torch 2.13 on Zen 4: 4-8 of 8 for each of 20 seeds); the centre, a float64 sum
    rounded once, stays within half an ulp. binary_codes' signs follow that centre: every code
    agrees with the float64 comparison except where an element lies within an ulp of the mean."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(8, 30_000, generator=g) ** 3 * 100 + 0.37
    mean, _ = torch.ops.qatkit._mean_and_mean_abs(x, 0)
    ref = x.double().mean(1)
    ulp = torch.finfo(torch.float32).eps * ref.abs()
    assert bool(((mean.double() - ref).abs() <= 0.5001 * ulp).all())
    codes, _ = ops.binary_codes(x, "bitnet", 0)
    want = torch.where(x.double() > ref[:, None], 1, -1).to(torch.int8)
    near = (x.double() - ref[:, None]).abs() <= ulp[:, None]
    assert torch.equal(codes[~near], want[~near])


@pytest.mark.parametrize("scaling", ["none", "mean_abs", "bitnet"])
def test_out_variant(scaling):
    x = _x((6, 20), seed=4)
    for seed in (None, torch.tensor([7])):
        expected = ops.binarize(x, scaling, 0, seed=seed)
        out = torch.empty(6, 20)
        assert ops.binarize(x, scaling, 0, seed=seed, out=out) is out and torch.equal(out, expected)
        strided = torch.empty(20, 6).t()
        ops.binarize(x, scaling, 0, seed=seed, out=strided)
        assert torch.equal(strided, expected)
    torch.library.opcheck(
        torch.ops.qatkit.binarize.out, (x, scaling, 0, "clipped_ste", 1.0, None), {"out": torch.empty(6, 20)}
    )
    with pytest.raises(TypeError, match="out must have input's dtype"):
        ops.binarize(x, scaling, out=torch.empty(6, 20, dtype=torch.float16))


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("axis", [None, 0])
def test_backward_out_variant(estimator, axis):
    """_binarize_backward.out writes the estimator gradient (the formula) into a given buffer."""
    x, g = _x((6, 20), seed=5), _x((6, 20), seed=6)
    center = x.mean(1) if axis == 0 else None
    bwd = torch.ops.qatkit._binarize_backward
    expected = bwd(g, x, center, axis, estimator, 1.5)
    v = x.double() - (center.double()[:, None] if center is not None else 0)
    torch.testing.assert_close(expected.double(), g.double() * estimator_grad(v, estimator, 1.5), rtol=1e-5, atol=1e-6)
    out = torch.empty(6, 20)
    assert bwd.out(g, x, center, axis, estimator, 1.5, grad_input=out) is out and torch.equal(out, expected)
    strided = torch.empty(20, 6).t()
    bwd.out(g, x, center, axis, estimator, 1.5, grad_input=strided)
    assert torch.equal(strided, expected)
    resized = torch.empty(0)
    bwd.out(g, x, center, axis, estimator, 1.5, grad_input=resized)
    assert resized.shape == (6, 20) and torch.equal(resized, expected)
    torch.library.opcheck(bwd.out, (g, x, center, axis, estimator, 1.5), {"grad_input": torch.empty(6, 20)})
    with pytest.raises(TypeError, match="out must have input's dtype"):
        bwd.out(g, x, center, axis, estimator, 1.5, grad_input=torch.empty(6, 20, dtype=torch.float64))
    with pytest.raises(ValueError, match="estimator must be one of"):
        bwd.out(g, x, center, axis, "sign", 1.5, grad_input=out)


def test_both_isas_give_identical_bits():
    """The binarize loops are built per ISA (baseline SSE2 / AVX2 blends / AVX-512): the same bits
    from each; the statistics' float64 chains too (AVX-512: rows, and a whole tensor's 2^15-element
    blocks, two side by side: 33 rows, 3 blocks)."""
    x, g = _x((33, 70), seed=8), _x((33, 70), seed=9)
    big = _x((3, 33000), seed=10) * 3 + 0.25
    old = qatkit.build_info()["cpu_isa"]
    isas = ["baseline"] + [i for i in ("avx2", "avx512") if qatkit._C.set_cpu_isa(i)]
    try:
        results = []
        for isa in isas:
            assert qatkit._C.set_cpu_isa(isa)
            results.append(
                [ops.binarize(x, s, 0) for s in ("none", "mean_abs", "bitnet")]
                + [torch.ops.qatkit._binarize_backward(g, x, None, None, e, 1.0) for e in ESTIMATORS]
                + [ops.ternarize(x, "twn", a) for a in (None, 0)]
                + [t for a in (None, 0, 1) for t in torch.ops.qatkit._mean_and_mean_abs(big, a)]
            )
    finally:
        qatkit._C.set_cpu_isa(old)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def test_bitnet_per_channel_along_the_only_axis():
    """Regression (found by the fuzzer): the per-channel center of a 1-d tensor along its only axis is
    the element itself, so BitNet's Sign(0) = -1 gives -|x|; it used to fail on a 1-element center."""
    x = _x((8,), seed=11)
    assert torch.equal(ops.binarize(x, "bitnet", 0), -x.abs())
    assert torch.equal(ops.binarize(x, "mean_abs", 0), torch.where(x >= 0, x.abs(), -x.abs()))
