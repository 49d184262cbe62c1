"""The quantize family: quantize_affine / dequantize_affine against the fake-quant forward (bit
for bit, including the sign of zero), a float64 reference, torch's quantize_per_channel, every code
dtype, bad input, opcheck and torch.compile; ternary_codes / binary_codes against ternarize /
binarize."""

import pytest
import torch

from qatkit import ops
from qatkit.testing.samples import Sample, make_qparams, sample_inputs

# every dtype, granularity, odd/empty/non-contiguous shape of the fake-quant sample factory
SAMPLES = [s for s in sample_inputs() if s.quant_max - s.quant_min <= 255][::3]


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bits (so -0.0 != +0.0 and NaN payloads count)."""
    view = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
            torch.bfloat16: torch.int16}[t.dtype]
    return t.contiguous().view(view)


def code_dtype(qmin: int, qmax: int) -> torch.dtype:
    return torch.uint8 if qmin >= 0 else torch.int8


def test_samples_cover_dtypes_and_granularities():
    assert {s.input.dtype for s in SAMPLES} == {torch.float32, torch.float64, torch.float16, torch.bfloat16}
    assert any(s.axis is not None for s in SAMPLES) and any(s.group_size is not None for s in SAMPLES)
    assert any(s.input.numel() == 0 for s in SAMPLES) and any(not s.input.is_contiguous() for s in SAMPLES)


@pytest.mark.parametrize("sample", SAMPLES, ids=repr)
def test_dequantize_of_codes_is_fake_quantize_bit_for_bit(sample: Sample):
    x, s, z, qmin, qmax, axis, gs = sample.args()
    dt = code_dtype(qmin, qmax)
    codes = ops.quantize_affine(x, s, z, qmin, qmax, axis, gs, dtype=dt)
    assert codes.dtype == dt and codes.shape == x.shape and codes.is_contiguous()
    if codes.numel():
        assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    y = ops.dequantize_affine(codes, s, z, axis, gs, output_dtype=x.dtype)
    fq = ops.fake_quantize(x, s, z, qmin, qmax, axis, gs)
    finite = torch.isfinite(x)  # NaN codes as the zero point (documented); fake quant keeps NaN
    assert torch.equal(bits(y)[finite], bits(fq)[finite])


@pytest.mark.parametrize("sample", SAMPLES[::4], ids=repr)
def test_codes_match_a_float64_reference(sample: Sample):
    x, s, z, qmin, qmax, axis, gs = sample.args()
    codes = ops.quantize_affine(x, s, z, qmin, qmax, axis, gs, dtype=torch.int32)
    # reference: broadcast qparams, float32 reciprocal as ATen, round half to even in float64
    xf = x.double()
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        sb, zb = s.view(shape), z.view(shape)
    elif gs is not None:
        sb = s.repeat_interleave(gs, dim=-1)
        zb = z.repeat_interleave(gs, dim=-1)
    else:
        sb, zb = s.reshape(()), z.reshape(())
    inv = (1.0 / sb.float()).double()
    ref = (torch.round(xf * inv) + zb.double()).clamp(qmin, qmax).to(torch.int32)
    # float32 / half inputs multiply in float32: compare where float32 and float64 products round alike
    same = torch.round((x.float() * inv.float()).double()) == torch.round(xf * inv)
    assert torch.equal(codes[same], ref[same])


def test_matches_torch_quantize_per_channel():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 40, generator=g)
    s, z = make_qparams(w, -128, 127, (16,), g, symmetric=False)
    q = torch.quantize_per_channel(w, s.double(), z.long(), 0, torch.qint8)
    codes = ops.quantize_affine(w, s, z, -128, 127, axis=0)
    assert torch.equal(codes, q.int_repr())
    assert torch.equal(ops.dequantize_affine(codes, s, z, axis=0), q.dequantize())


def test_special_values_and_code_dtypes():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.01, 0.26, 1e30])
    s, z = torch.tensor([0.5]), torch.tensor([3])
    codes = ops.quantize_affine(x, s, z, -8, 7)
    assert codes.tolist() == [3, 7, -8, 3, 4, 7]  # NaN -> z, +-Inf saturate, -0.02 -> z, 0.52 rounds to 1
    y = ops.dequantize_affine(codes, s, z)
    assert bits(y)[3] == 0  # +0.0, as torch's (q - z) * s
    for dt, (lo, hi) in [(torch.uint8, (0, 255)), (torch.int16, (-32768, 32767)), (torch.int32, (-65535, 0))]:
        v = torch.linspace(-3e4, 3e4, 101)
        sc = torch.tensor([1.0])
        zp = torch.tensor([(lo + hi + 1) // 2 if lo >= 0 else 0])
        c = ops.quantize_affine(v, sc, zp, lo, hi, dtype=dt)
        assert c.dtype == dt
        assert torch.equal(ops.dequantize_affine(c, sc, zp), ops.fake_quantize(v, sc, zp, lo, hi))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda x, s, z: ops.quantize_affine(x, s, z, -8, 300), ValueError, "must fit the code dtype"),
        (lambda x, s, z: ops.quantize_affine(x, s, z, -8, 7, dtype=torch.float32), TypeError, "dtype must be int8"),
        (lambda x, s, z: ops.quantize_affine(x, s, z, -8, 7, axis=0), ValueError, "scale must have 4 elements"),
        (lambda x, s, z: ops.quantize_affine(x, -s, z, -8, 7), ValueError, "scale must be positive"),
        (lambda x, s, z: ops.dequantize_affine(x, s, z), TypeError, "codes must be int8"),
        (lambda x, s, z: ops.dequantize_affine(x.to(torch.int8), s, z, output_dtype=torch.int32), TypeError,
         "output_dtype must be"),
        (lambda x, s, z: ops.dequantize_affine(x.to(torch.int8), s, z, group_size=3), ValueError, "group_size must"),
        (lambda x, s, z: ops.ternary_codes(x, "bogus"), ValueError, "method must be one of"),
        (lambda x, s, z: ops.binary_codes(x, "bogus"), ValueError, "scaling"),
    ],
)
def test_bad_input(call, exc, match):
    x, s, z = torch.randn(4, 8), torch.tensor([0.1]), torch.tensor([0])
    with pytest.raises(exc, match=match):
        call(x, s, z)


@pytest.mark.parametrize("sample", SAMPLES[::6], ids=repr)
def test_opcheck(sample: Sample):
    x, s, z, qmin, qmax, axis, gs = sample.args()
    dt = code_dtype(qmin, qmax)
    torch.library.opcheck(torch.ops.qatkit.quantize_affine.default, (x, s, z, qmin, qmax, axis, gs, dt))
    codes = ops.quantize_affine(x, s, z, qmin, qmax, axis, gs, dtype=dt)
    torch.library.opcheck(torch.ops.qatkit.dequantize_affine.default, (codes, s, z, axis, gs, x.dtype))


WEIGHTS = [
    torch.randn(8, 33, generator=torch.Generator().manual_seed(1)),
    torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16),
    torch.randn(5, 7, generator=torch.Generator().manual_seed(3)).double().t(),  # non-contiguous
]


@pytest.mark.parametrize("w", WEIGHTS, ids=lambda w: f"{tuple(w.shape)}-{w.dtype}")
@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("method", ["absmean", "twn"])
def test_ternary_codes_times_scale_is_ternarize(w, axis, method):
    codes, scale = ops.ternary_codes(w, method, axis)
    assert codes.dtype == torch.int8 and set(codes.unique().tolist()) <= {-1, 0, 1}
    assert scale.dtype == torch.float32 and scale.numel() == (w.shape[0] if axis == 0 else 1)
    shape = [-1] + [1] * (w.dim() - 1) if axis == 0 else []
    y = (codes.float() * scale.view(shape)).to(w.dtype)
    assert torch.equal(bits(y), bits(ops.ternarize(w, method, axis)))
    torch.library.opcheck(torch.ops.qatkit.ternary_codes.default, (w, method, axis))


@pytest.mark.parametrize("w", WEIGHTS, ids=lambda w: f"{tuple(w.shape)}-{w.dtype}")
@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("scaling", ["none", "mean_abs", "bitnet"])
def test_binary_codes_times_scale_is_binarize(w, axis, scaling):
    codes, scale = ops.binary_codes(w, scaling, axis)
    assert codes.dtype == torch.int8 and set(codes.unique().tolist()) <= {-1, 1}
    shape = [-1] + [1] * (w.dim() - 1) if axis == 0 else []
    y = (codes.float() * scale.view(shape)).to(w.dtype)
    assert torch.equal(bits(y), bits(ops.binarize(w, scaling, axis)))
    torch.library.opcheck(torch.ops.qatkit.binary_codes.default, (w, scaling, axis))


def test_compile_fullgraph():
    w = torch.randn(8, 32)
    s, z = ops.choose_qparams(w, -8, 7, symmetric=True, group_size=8)

    def f(w):
        c = ops.quantize_affine(w, s, z, -8, 7, group_size=8)
        return ops.dequantize_affine(c, s, z, group_size=8), ops.ternary_codes(w)[0]

    eager = f(w)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(w)
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("scaling", ["none", "mean_abs", "bitnet"])
def test_binary_codes_special_values_against_the_sign_formula(dtype, axis, scaling):
    """binary_codes' codes against sign(x - center) in the kernel's arithmetic (float32, float64 for
    double input; the center is binarize's: the mean over the non-axis dims, rounded to float32, for
    "bitnet", else 0): +1 / -1, zero (x == center, +-0) to -1 for "bitnet" and +1 otherwise, NaN to 0;
    +-inf, subnormals, and a channel whose elements all equal its mean, with the channel along a
    middle dim (runs of `inner` elements)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 5, 4, generator=g).to(dtype)
    x[0, 1, :] = 0.75  # a constant slice: along axis 0 / 1 a channel may equal its mean exactly
    x[1] = 0.5  # channel 1 of axis 0: all equal, v == 0 everywhere
    x[2, 0, 0], x[2, 0, 1], x[2, 1, 0], x[2, 1, 1] = 0.0, -0.0, float("inf"), float("-inf")
    x[2, 2, 0], x[2, 2, 1] = 1e-40 if dtype != torch.float16 else 1e-7, float("nan")
    codes, scale = ops.binary_codes(x, scaling, axis)
    c = torch.float64 if dtype == torch.float64 else torch.float32
    if scaling == "bitnet":
        dims = [d for d in range(x.dim()) if axis is None or d != axis % x.dim()]
        center = x.mean(dims, keepdim=True, dtype=c).float().to(c)
    else:
        center = torch.zeros((), dtype=c)
    v = x.to(c) - center
    at_zero = -1 if scaling == "bitnet" else 1
    want = torch.where(v > 0, 1, torch.where(v < 0, -1, at_zero))
    want = torch.where(v.isnan(), 0, want).to(torch.int8)
    assert codes.dtype == torch.int8 and torch.equal(codes, want)
    assert scale.dtype == torch.float32 and scale.numel() == (1 if axis is None else x.shape[axis])
