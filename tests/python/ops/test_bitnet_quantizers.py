"""quantize_per_token, quantize_per_tensor_dynamic and ternarize (BitNet b1.58 absmean, TWN):
forward against the papers' formulas in float64, identity STE gradients, opcheck, compile and
export, bad input."""

import pytest
import torch

from qatkit import ops
from qatkit.testing.samples import DTYPES

SHAPES = [(5,), (3, 16), (2, 4, 33)]


def _x(shape, dtype, seed=0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2).to(dtype)


def per_token_ref(x, qmax, per_tensor=False):
    """BitNet recipe in float64 with the kernels' float32 scale s = max(|x|, 1e-5) / qmax."""
    amax = x.abs().amax() if per_tensor else x.abs().amax(-1, keepdim=True)
    s = (amax.float().clamp(min=1e-5) / qmax).double()
    inv = (1.0 / s.float()).double()
    prod = x.double() * inv
    if x.dtype != torch.float64:
        prod = prod.float().double()
    q = torch.round(prod).clamp(-qmax - 1, qmax)
    y = q * s
    return (y.float() if x.dtype != torch.float64 else y).to(x.dtype), q


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("qmax", [127, 7])
def test_per_token_matches_formula(dtype, shape, qmax):
    x = _x(shape, dtype)
    y = ops.quantize_per_token(x, qmax)
    ref, q = per_token_ref(x, qmax)
    assert torch.equal(y, ref)
    # each token uses the full code range: its max |x| maps to quant_max
    assert torch.equal(q.abs().amax(-1), torch.full(q.shape[:-1], float(qmax), dtype=q.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_tensor_dynamic_matches_formula(dtype):
    x = _x((6, 10), dtype, seed=3)
    assert torch.equal(ops.quantize_per_tensor_dynamic(x), per_token_ref(x, 127, per_tensor=True)[0])


def test_bitnet_snippet_agrees_to_one_ulp():
    """The public BitNet snippet divides by 127/amax; qatkit multiplies by amax/127 (1 ulp)."""
    x = _x((8, 64), torch.float32)
    s = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    snippet = (x * s).round().clamp(-128, 127) / s
    torch.testing.assert_close(ops.quantize_per_token(x), snippet, rtol=2e-7, atol=0)


@pytest.mark.parametrize("fn", [ops.quantize_per_token, ops.quantize_per_tensor_dynamic])
def test_identity_ste(fn):
    x = _x((4, 9), torch.float32).requires_grad_()
    g = torch.randn(4, 9)
    fn(x).backward(g)
    assert torch.equal(x.grad, g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, 0, -1])
def test_ternarize_absmean_matches_formula(dtype, axis):
    w = _x((12, 20), dtype, seed=5)
    y = ops.ternarize(w, "absmean", axis)
    dims = None if axis is None else (1 if axis % 2 == 0 else 0)
    mean = w.double().abs().mean() if dims is None else w.double().abs().mean(dims, keepdim=True)
    gamma = mean.clamp(min=1e-5)
    # gamma is a float32 L1 norm inside the op: compare magnitudes to 1e-6, codes exactly
    q = torch.round(w.double() / gamma).clamp(-1, 1)
    tol = 1e-6 if dtype in (torch.float32, torch.float64) else 1e-2
    torch.testing.assert_close(y.double(), q * gamma, rtol=tol, atol=0)
    assert set(torch.unique(torch.sign(y)).tolist()) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_ternarize_twn_matches_formula(axis):
    w = _x((10, 24), torch.float32, seed=7)
    y = ops.ternarize(w, "twn", axis)
    dims = (0, 1) if axis is None else (1 - axis,)
    absw = w.double().abs()
    delta = 0.7 * absw.mean(dims, keepdim=True)
    keep = absw > delta
    a = (absw * keep).sum(dims, keepdim=True) / keep.sum(dims, keepdim=True)
    ref = torch.where(keep, w.double().sign() * a, torch.zeros(()))
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-7)
    # TWN keeps roughly the largest half of the weights of a Gaussian (|w| > 0.7 E|w|)
    assert 0.4 < (y != 0).float().mean().item() < 0.7


@pytest.mark.parametrize("method", ["absmean", "twn"])
def test_ternarize_identity_ste(method):
    w = _x((6, 8), torch.float32).requires_grad_()
    g = torch.randn(6, 8)
    ops.ternarize(w, method, 0).backward(g)
    assert torch.equal(w.grad, g)


@pytest.mark.parametrize("shape", [(7,), (3, 16), (2, 0)])
def test_opcheck(shape):
    x = _x(shape, torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.qatkit.quantize_per_token.default, (x, 127))
    torch.library.opcheck(torch.ops.qatkit.quantize_per_tensor_dynamic.default, (x, 127))
    for method in ("absmean", "twn"):
        torch.library.opcheck(torch.ops.qatkit.ternarize.default, (x, method, None))
        if len(shape) > 1:
            torch.library.opcheck(torch.ops.qatkit.ternarize.default, (x, method, 0))


class BitLinearLike(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(8, 16) * 0.1)

    def forward(self, x):
        return torch.nn.functional.linear(ops.quantize_per_token(x), ops.ternarize(self.weight))


def test_compile_and_export():
    m = BitLinearLike()
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
    "fn,args,exc,fragment",
    [
        (ops.ternarize, (torch.randn(4), "bitnet"), ValueError, "method must be one of 'absmean', 'twn', got 'bitnet'"),
        (ops.ternarize, (torch.randn(4, 4), "absmean", 2), ValueError, "axis must be in [-2, 2)"),
        (ops.ternarize, (torch.randn(4).int(),), TypeError, "input must be float32"),
        (ops.quantize_per_token, (torch.tensor(1.0),), ValueError, "needs at least 1 dim"),
        (ops.quantize_per_token, (torch.randn(3), 0), ValueError, "quant_max must be in [1, 32767]"),
        (ops.quantize_per_token, (torch.tensor([1.0, float("nan")]),), ValueError, "input must be finite"),
        (ops.quantize_per_tensor_dynamic, (torch.tensor([float("inf")]),), ValueError, "input must be finite"),
        (ops.ternarize, (torch.tensor([1.0, float("nan")]),), ValueError, "input must be finite"),
    ],
)
def test_bad_input(fn, args, exc, fragment):
    with pytest.raises(exc) as info:
        fn(*args)
    assert fragment in str(info.value)


def test_per_token_out_variant():
    x = _x((6, 40), torch.float32)
    expected = ops.quantize_per_token(x)
    out = torch.empty(6, 40)
    assert ops.quantize_per_token(x, out=out) is out and torch.equal(out, expected)
    strided = torch.empty(40, 6).t()
    ops.quantize_per_token(x, out=strided)
    assert torch.equal(strided, expected)
    resized = torch.empty(0)
    ops.quantize_per_token(x, out=resized)
    assert torch.equal(resized, expected)
    with pytest.raises(TypeError, match="out must have input's dtype"):
        ops.quantize_per_token(x, out=torch.empty(6, 40, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="unsupported operation"):
        ops.quantize_per_token(x, out=x)


def test_per_token_out_opcheck_and_compile():
    x = _x((3, 16), torch.float32)
    torch.library.opcheck(torch.ops.qatkit.quantize_per_token.out, (x, 127), {"out": torch.empty(3, 16)})

    def f(x, buf):
        ops.quantize_per_token(x, out=buf)
        return buf * 2

    torch._dynamo.reset()
    buf = torch.empty(3, 16)
    y = torch.compile(f, backend="aot_eager", fullgraph=True)(x, buf)
    assert torch.equal(y, ops.quantize_per_token(x) * 2) and torch.equal(buf, ops.quantize_per_token(x))


@pytest.mark.parametrize("method", ["absmean", "twn"])
@pytest.mark.parametrize("axis", [None, 0])
def test_ternarize_out_variant(method, axis):
    w = _x((8, 24), torch.float32, seed=9)
    expected = ops.ternarize(w, method, axis)
    out = torch.empty(8, 24)
    assert ops.ternarize(w, method, axis, out=out) is out and torch.equal(out, expected)
    strided = torch.empty(24, 8).t()
    ops.ternarize(w, method, axis, out=strided)
    assert torch.equal(strided, expected)
    torch.library.opcheck(torch.ops.qatkit.ternarize.out, (w, method, axis), {"out": torch.empty(8, 24)})
    with pytest.raises(TypeError, match="out must have input's dtype"):
        ops.ternarize(w, method, axis, out=torch.empty(8, 24, dtype=torch.float64))


def twn_ref(w, axis):
    """TWN in float64 (docs/papers.md §5) with the op's float32 threshold rounded to w's dtype."""
    dims = tuple(range(w.dim())) if axis is None else tuple(d for d in range(w.dim()) if d != axis % w.dim())
    absw = w.double().abs()
    delta = (absw.mean(dims, keepdim=True).float() * 0.7).to(w.dtype).double()
    keep = absw > delta
    a = (absw * keep).sum(dims, keepdim=True) / keep.sum(dims, keepdim=True).clamp(min=1)
    return torch.where(keep, w.double().sign() * a, torch.zeros(())), keep


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_ternarize_twn_dtypes_and_layouts(dtype, axis):
    """The fused CPU kernels follow the formula per tensor and along any axis; codes exactly,
    magnitudes to the dtype's rounding."""
    w = _x((16, 40), dtype, seed=11)
    y = ops.ternarize(w, "twn", axis)
    ref, keep = twn_ref(w, axis)
    assert y.dtype == dtype
    assert torch.equal(y != 0, keep)
    # the magnitude is a float32 statistic for every dtype (as the per-channel alpha of binarize)
    tol = 1e-6 if dtype in (torch.float32, torch.float64) else 1e-2
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=0)


def test_ternarize_twn_any_axis_agrees():
    """axis 0 and axis 1 of the transpose (its channel axis moved to the front for the statistic
    pass) give the same codes and magnitudes."""
    w = _x((24, 300), torch.float32, seed=12)
    fused = ops.ternarize(w, "twn", 0)
    composite = ops.ternarize(w.t().contiguous(), "twn", 1).t()
    assert torch.equal(fused != 0, composite != 0)
    torch.testing.assert_close(fused, composite, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", ["absmean", "twn"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_ternarize_rejects_non_finite(method, bad):
    w = _x((4, 8), torch.float32)
    w[1, 3] = bad
    with pytest.raises(ValueError, match="input must be finite"):
        ops.ternarize(w, method, 0)


@pytest.mark.parametrize("method", ["absmean", "twn"])
def test_ternarize_per_channel_along_the_only_axis(method):
    """Regression (found by the fuzzer): per channel along a 1-d tensor's only axis, every element is
    its own channel; the composite path reduced over everything (an empty dim list)."""
    w = _x((9,), torch.float32, seed=13)
    y = ops.ternarize(w, method, 0)
    torch.testing.assert_close(y, w, rtol=1e-6, atol=0)  # |w| > 0.7 |w| and a = |w|; absmean: round(1) = 1
