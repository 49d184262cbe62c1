"""Property-based fuzz checks of every qatkit op, shared by tests/python/ops/test_fuzz.py (hypothesis,
bounded) and scripts/fuzz_ops.py (long runs): both import them from here (qatkit.testing.fuzz).

Each check draws an input in an odd layout (0-size, 1-element, rank 0..5, transposed, sliced with a
step, broadcast-expanded with stride 0), a dtype, and qparams at their edges, calls the op, and
compares with an independent float64 reference (values and gradients); qparams the op must reject
(subnormal scales, zero points outside the range) must raise ValueError. A check returns the number
of op calls it made.
"""

from __future__ import annotations

import math
import random

import torch

from qatkit import ops
from .reference import fake_quantize_ref

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "transposed", "sliced", "expanded"]


def draw_shape(r: random.Random, min_rank: int = 0, max_rank: int = 5) -> list:
    rank = r.randint(min_rank, max_rank)
    sizes = [0, 1, 1, 2, 3, 5, 7, 8, 16, 33]
    shape = [r.choice(sizes) for _ in range(rank)]
    if math.prod(shape) > 4096:  # keep calls cheap
        shape = [min(s, 4) for s in shape]
    return shape


def make_input(r: random.Random, shape, dtype, layout: str) -> torch.Tensor:
    """A tensor of `shape` and `dtype` whose memory layout is `layout` (values of random magnitude)."""
    g = torch.Generator().manual_seed(r.randrange(2**31))
    mag = 10 ** r.uniform(-3, 3)
    rank = len(shape)
    if layout == "transposed" and rank >= 2:
        base = torch.randn(list(reversed(shape)), generator=g) * mag
        x = base.permute(*reversed(range(rank)))
    elif layout == "sliced" and rank >= 1:
        base = torch.randn([*shape[:-1], shape[-1] * 2], generator=g) * mag
        x = base[..., ::2]
    elif layout == "expanded" and rank >= 1:
        small = [1 if (i % 2 == 0) else s for i, s in enumerate(shape)]
        x = (torch.randn(small, generator=g) * mag).expand(shape)
    else:
        x = torch.randn(shape, generator=g) * mag
    x = x.to(dtype)
    assert list(x.shape) == list(shape)
    return x


def _draw_common(r):
    shape = draw_shape(r)
    dtype = r.choice(DTYPES)
    layout = r.choice(LAYOUTS)
    return shape, dtype, layout, make_input(r, shape, dtype, layout)


def _qrange(r):
    kind = r.choice(["8bit", "1step", "16bit", "random"])
    if kind == "8bit":
        return -128, 127
    if kind == "1step":
        lo = r.randint(-5, 5)
        return lo, lo + 1
    if kind == "16bit":
        return (-32768, 32767) if r.random() < 0.5 else (0, 65535)
    bits = r.randint(2, 16)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if r.random() < 0.5 else (0, 2**bits - 1)


def _scale(r, n):
    kind = r.choice(["normal", "normal", "tiny", "huge", "subnormal"])
    if kind == "normal":
        return torch.rand(n) * 0.1 + 1e-3, True
    if kind == "tiny":
        return torch.full((n,), torch.finfo(torch.float32).tiny), True
    if kind == "huge":
        return torch.full((n,), 1e30), True
    return torch.full((n,), 1e-40), False  # subnormal: the op must refuse it


def check_fake_quantize(r: random.Random) -> int:
    shape, dtype, layout, x = _draw_common(r)
    qmin, qmax = _qrange(r)
    rank = len(shape)
    gran = r.choice(["tensor", "channel", "group"]) if rank else "tensor"
    axis = group_size = None
    if gran == "channel":
        axis = r.randrange(rank) - (rank if r.random() < 0.5 else 0)
        n = shape[axis]
        qshape = (n,)
    elif gran == "group":
        last = shape[-1]
        divisors = [d for d in range(1, max(last, 1) + 1) if last % d == 0] or [1]
        group_size = r.choice([1, last if last else 1, r.choice(divisors)])
        if last == 0:
            group_size = 1
        qshape = (*shape[:-1], last // group_size if group_size else 0)
    else:
        qshape = (1,)
    n = math.prod(qshape)
    s, valid = _scale(r, n)
    s = s.reshape(qshape)
    z = torch.randint(qmin, qmax + 1, qshape, dtype=torch.int32)
    if r.random() < 0.3:
        z = torch.full(qshape, r.choice([qmin, qmax]), dtype=torch.int32)
    if r.random() < 0.05 and n > 0:
        z = torch.full(qshape, qmax + 1, dtype=torch.int32)  # out of range: must be refused
        valid = False
    if not valid and n > 0 and x.numel() > 0:
        try:
            ops.fake_quantize(x, s, z, qmin, qmax, axis, group_size)
        except ValueError:
            return 1
        raise AssertionError("invalid qparams were accepted")
    if not valid:
        return 0
    xg = x.detach().clone().requires_grad_(dtype in (torch.float32, torch.float64))
    y = ops.fake_quantize(xg, s, z, qmin, qmax, axis, group_size)
    ref, mask = fake_quantize_ref(x, s, z, qmin, qmax, axis, group_size)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(y.nan_to_num(), ref.nan_to_num())
    calls = 1
    if xg.requires_grad and x.numel():
        g = torch.randn(x.shape, dtype=dtype)
        y.backward(g)
        assert torch.equal(xg.grad, torch.where(mask, g, torch.zeros_like(g)))
        calls += 1
    return calls


def check_fake_quantize_learnable(r: random.Random) -> int:
    from .reference import lsq_ref

    shape = draw_shape(r, 1, 4)
    dtype = r.choice([torch.float32, torch.float64])
    x = make_input(r, shape, dtype, r.choice(LAYOUTS))
    qmin, qmax = r.choice([(-128, 127), (0, 255), (-8, 7), (0, 1), (-2, 1)])
    axis = r.randrange(len(shape)) if r.random() < 0.5 else None
    n = shape[axis] if axis is not None else 1
    amax = float(x.detach().abs().amax()) if x.numel() else 1.0
    s = (torch.rand(n) + 0.5) * max(amax, 1e-6) / max(qmax, 1)
    z = torch.randint(qmin, qmax + 1, (n,)).float()
    xg, sg, zg = x.clone().requires_grad_(), s.clone().requires_grad_(), z.clone().requires_grad_()
    y = ops.fake_quantize_learnable(xg, sg, zg, qmin, qmax, axis)
    ref, s_leaf, z_leaf = lsq_ref(x, s, z, qmin, qmax, axis)
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6 * max(amax, 1e-30))
    if x.numel():
        g = torch.randn(x.shape, dtype=dtype)
        y.backward(g)
        ref.backward(g.double())
        # The qparam gradients are sums of g * (per-element term) over each channel; the kernel forms
        # the terms in the input's precision. Where the terms cancel, a relative bound on the sum
        # means nothing (it missed by 2e-4 relative at rare draws, on one CPU and not another), so
        # each sum is also allowed the rounding of its terms: 16 eps * sum |g| (|x| / s + |q|max + 1).
        view = [-1 if d == axis else 1 for d in range(x.dim())] if axis is not None else [1] * x.dim()
        terms = g.double().abs() * (x.detach().double().abs() / s.double().reshape(view) + max(abs(qmin), abs(qmax)) + 1)
        dims = [d for d in range(x.dim()) if d != axis]
        cond = (terms.sum(dims) if dims else terms).reshape(-1)
        bound = 16 * torch.finfo(dtype).eps * cond
        for got, want in ((sg.grad.double(), s_leaf.grad), (zg.grad.double(), z_leaf.grad)):
            err = (got - want).abs().reshape(-1)
            loose = 1e-4 * want.abs().reshape(-1) + 1e-4 * max(1.0, amax)
            assert bool((err <= torch.maximum(loose, bound)).all()), (got, want, bound)
        return 2
    return 1


def check_choose_qparams(r: random.Random) -> int:
    from .reference import choose_qparams_ref

    shape = draw_shape(r, 1, 4)
    shape[0] = max(shape[0], 1)
    x = make_input(r, shape, torch.float32, r.choice(LAYOUTS))
    qmin, qmax = _qrange(r)
    sym = r.random() < 0.5
    s, z = ops.choose_qparams(x, qmin, qmax, sym, axis=0)
    rows = x.reshape(shape[0], -1) if x.numel() else torch.zeros(shape[0], 1)
    rs, rz = choose_qparams_ref(rows, qmin, qmax, sym)
    torch.testing.assert_close(s, rs, rtol=1e-6, atol=0)
    assert torch.equal(z, rz)
    return 1


def _mean(v: torch.Tensor, dims) -> torch.Tensor:
    """mean over `dims` keeping them; no dims (per channel over the only axis) is the identity
    (torch reads an empty dim list as "all dims")."""
    return v.mean(dims, keepdim=True) if dims else v


def _sign(v, zero_negative=False):
    one = torch.ones_like(v)
    pos = v > 0 if zero_negative else v >= 0
    return torch.where(pos, one, -one)


def check_binarize(r: random.Random) -> int:
    shape, dtype, layout, x = _draw_common(r)
    scaling = r.choice(["none", "mean_abs", "bitnet"])
    axis = r.randrange(len(shape)) if shape and r.random() < 0.5 else None
    est = r.choice(["identity", "clipped_ste", "approx_sign", "swish_sign"])
    y = ops.binarize(x, scaling, axis, est)
    x64 = x.double()
    if x.numel() == 0:
        assert y.shape == x.shape
        return 1
    dims = tuple(range(x.dim())) if axis is None else tuple(d for d in range(x.dim()) if d != axis)
    if scaling == "none":
        ref = _sign(x64)
    else:
        alpha = _mean(x64.abs(), dims)
        if scaling == "mean_abs":
            ref = _sign(x64) * alpha
        else:
            center = _mean(x64, dims)
            ref = _sign(x64 - center, zero_negative=True) * alpha
    tol = 1e-6 if dtype in (torch.float32, torch.float64) else 1e-2
    # codes exactly, magnitudes to the dtype's rounding — except where x sits within the float32
    # rounding of BitNet's center (a sign at a near-tie is decided by the op's float32 mean)
    ok = torch.ones_like(x64, dtype=torch.bool)
    if scaling == "bitnet":
        ok = (x64 - center).abs() > 1e-5 * (center.abs() + x64.abs())
    torch.testing.assert_close(y.double()[ok], ref.to(dtype).double()[ok], rtol=tol, atol=0)
    assert torch.equal(ops.binarize(x.contiguous(), scaling, axis, est), y)  # layout-independent
    return 2


def check_ternarize(r: random.Random) -> int:
    shape = draw_shape(r, 1, 4)
    dtype = r.choice(DTYPES)
    x = make_input(r, shape, dtype, r.choice(LAYOUTS))
    method = r.choice(["absmean", "twn"])
    axis = r.randrange(len(shape)) if r.random() < 0.5 else None
    y = ops.ternarize(x, method, axis)
    if x.numel() == 0:
        return 1
    x64 = x.double()
    dims = tuple(range(x.dim())) if axis is None else tuple(d for d in range(x.dim()) if d != axis)
    m = _mean(x64.abs(), dims)
    if method == "absmean":
        gamma = m.float().clamp(min=1e-5).double()
        prod = x64 * (1.0 / gamma.float()).double()
        if dtype != torch.float64:
            prod = prod.float().double()  # the op's float32 product: ties round as the kernel's do
        q = torch.round(prod).clamp(-1, 1)
        ref = q * gamma
    else:
        delta = (m.float() * 0.7).to(dtype).double()
        keep = x64.abs() > delta
        kept = (x64.abs() * keep, keep.double())
        a = (kept[0].sum(dims, keepdim=True) / kept[1].sum(dims, keepdim=True).clamp(min=1)) if dims else kept[0]
        ref = torch.where(keep, torch.sign(x64) * a, torch.zeros(()))
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2
    assert torch.equal(y != 0, ref != 0) or method == "absmean"
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * float(m.max()))
    assert torch.equal(ops.ternarize(x.contiguous(), method, axis), y)  # layout-independent
    return 2


def check_quantize_per_token(r: random.Random) -> int:
    shape = draw_shape(r, 1, 4)
    dtype = r.choice([torch.float32, torch.float64])
    x = make_input(r, shape, dtype, r.choice(LAYOUTS))
    qmax = r.choice([127, 7, 1, 32767])
    y = ops.quantize_per_token(x, qmax)
    if x.numel() == 0:
        return 1
    amax = x.abs().amax(-1, keepdim=True)
    s = (amax.float().clamp(min=1e-5) / qmax).double()
    inv = (1.0 / s.float()).double()
    prod = x.double() * inv
    if dtype != torch.float64:
        prod = prod.float().double()
    ref = torch.round(prod).clamp(-qmax - 1, qmax) * s
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=0)
    return 1


def check_pact(r: random.Random) -> int:
    shape = draw_shape(r, 0, 4)
    x = make_input(r, shape, torch.float32, r.choice(LAYOUTS))
    qmax = r.choice([1, 3, 15, 255])
    alpha = torch.tensor([10 ** r.uniform(-2, 2)])
    y = ops.pact_quantize(x, alpha, qmax)
    s = alpha / qmax
    ref, _ = fake_quantize_ref(x, s, torch.zeros(1, dtype=torch.int32), 0, qmax)
    assert torch.equal(y, ref)
    return 1


def check_fused_observer(r: random.Random) -> int:
    shape = draw_shape(r, 1, 4)
    x = make_input(r, shape, torch.float32, r.choice(LAYOUTS))
    if x.numel() == 0:
        return 0
    mom = r.choice([0.01, 0.5, 1.0])
    qmin, qmax = r.choice([(0, 255), (-128, 127), (-8, 7)])
    sym = r.random() < 0.5
    rmin, rmax = torch.tensor([float("inf")]), torch.tensor([float("-inf")])
    s, z = torch.ones(1), torch.zeros(1, dtype=torch.int32)
    on = torch.tensor([1])
    ref_lo, ref_hi = None, None
    calls = 0
    for k in range(2):
        xk = x * (k + 1)
        y = ops.fused_observe_fake_quantize(xk, rmin, rmax, s, z, on, on, mom, True, qmin, qmax, sym)
        lo, hi = float(xk.min()), float(xk.max())
        ref_lo = lo if ref_lo is None else ref_lo + mom * (lo - ref_lo)
        ref_hi = hi if ref_hi is None else ref_hi + mom * (hi - ref_hi)
        assert math.isclose(float(rmin), ref_lo, rel_tol=1e-6, abs_tol=1e-30)
        assert math.isclose(float(rmax), ref_hi, rel_tol=1e-6, abs_tol=1e-30)
        assert torch.equal(y, fake_quantize_ref(xk, s, z, qmin, qmax)[0])
        calls += 1
    return calls


def check_out_variants(r: random.Random) -> int:
    """out= into an overlapping, mis-shaped or mis-typed tensor errors (or resizes) as ATen's do."""
    x = make_input(r, [4, 8], torch.float32, "contiguous")
    s, z = torch.tensor([0.05]), torch.tensor([0], dtype=torch.int32)
    calls = [
        lambda o: ops.fake_quantize(x, s, z, -8, 7, out=o),
        lambda o: ops.ternarize(x, out=o),
        lambda o: ops.binarize(x, out=o),
        lambda o: ops.quantize_per_token(x, out=o),
    ]
    call = r.choice(calls)
    case = r.choice(["overlap", "dtype", "empty", "fresh"])
    if case == "overlap":
        try:
            call(x)
        except RuntimeError as e:
            assert "refer to a single memory location" in str(e)
            return 1
        raise AssertionError("out overlapping the input was accepted")
    if case == "dtype":
        try:
            call(torch.empty(4, 8, dtype=torch.float64))
        except TypeError as e:
            assert "out must have input's dtype" in str(e)
            return 1
        raise AssertionError("out of the wrong dtype was accepted")
    o = torch.empty(0) if case == "empty" else torch.empty(4, 8)
    expected = call(torch.empty(4, 8))
    assert call(o) is o and o.shape == (4, 8) and torch.equal(o, expected)
    return 2


CHECKS = {
    "fake_quantize": check_fake_quantize,
    "fake_quantize_learnable": check_fake_quantize_learnable,
    "choose_qparams": check_choose_qparams,
    "binarize": check_binarize,
    "ternarize": check_ternarize,
    "quantize_per_token": check_quantize_per_token,
    "pact_quantize": check_pact,
    "fused_observe_fake_quantize": check_fused_observer,
    "out_variants": check_out_variants,
}

# the integer kernels' checks (docs/integer.md): pure-integer references, every ISA, CUDA too
from .fuzz_integer import INTEGER_CHECKS  # noqa: E402

CHECKS.update(INTEGER_CHECKS)
