"""The convs' fused activation (``clamp_min`` / ``clamp_max`` on conv2d_int8, conv2d_w4a8 and
conv2d_w1a1): torch.relu, F.relu6, F.hardtanh and torch.clamp_max of the unfused op's output bit for
bit (NaN and -0.0 kept), on every CPU ISA and thread count (the per-image forms apply it image by
image, the others in one pass at the end); opcheck with it; bad bounds raise."""

import pytest
import torch
import torch.nn.functional as F

from qatkit import ops
from qatkit.testing.integer import on_every_isa_and_thread_count
from qatkit.testing.samples import conv_int8_case


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit: the float32 words (so -0.0 differs from 0.0, and a NaN's payload counts)."""
    return a.shape == b.shape and a.stride() == b.stride() and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _inputs(B, C, H, W, g):
    x = torch.randn(B, C, H, W, generator=g) * 2
    x[0, 0, 0, 0] = float("nan")  # NaN windows: NaN through the clamp
    return [x, x.contiguous(memory_format=torch.channels_last)]


def _check_clamps(conv, where):
    """conv(clamp_min, clamp_max) -> the op's output: each fused activation against torch's own
    function of the unfused output (ReLU, ReLU6, a Hardtanh between the output's quartiles, so it
    clamps on both sides, and an upper bound alone), word for word."""
    y = conv(None, None)
    finite = y[y.isfinite()]  # (none: XNOR's one image with a NaN, whose alpha is NaN)
    lo, hi = (float(v) for v in torch.quantile(finite, torch.tensor([0.25, 0.75]))) if finite.numel() else (-0.5, 0.5)
    for bounds, ref in [((0.0, None), torch.relu), ((0.0, 6.0), F.relu6),
                        ((lo, hi), lambda t: F.hardtanh(t, lo, hi)), ((None, hi), lambda t: torch.clamp_max(t, hi))]:
        got = conv(*bounds)
        assert _bits_equal(got, ref(y)), (where, bounds)
    assert bool(got.isnan().any())
    assert finite.numel() == 0 or (bool((y < lo).any()) and bool((y > hi).any()))


# (B, C, H, W, N, k, stride, padding, groups): dense 3x3, pointwise (the channels_last per-image form
# from 32 channels, the narrow rows from 16), depthwise at strides 1 and 2 (channels-last pixels,
# planar planes), a grouped conv, one image (the threads split the image) and five
GEOMS = [
    (5, 6, 9, 7, 10, 3, 1, 1, 1),
    (5, 32, 6, 5, 24, 1, 1, 0, 1),
    (1, 16, 6, 5, 24, 1, 1, 0, 1),
    (5, 12, 9, 18, 12, 3, 1, 1, 12),
    (5, 12, 10, 20, 12, 3, 2, 1, 12),
    (1, 12, 9, 7, 12, 3, 1, 1, 12),
    (5, 8, 7, 7, 12, 3, 1, 1, 2),
]


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("bits", [8, 1])
def test_conv2d_int8_clamp_is_torch_activation_of_the_conv(geom, bits):
    B, C, H, W, N, k, s, p, groups = geom
    g = torch.Generator().manual_seed(sum(geom) + bits)
    case = conv_int8_case(bits, N, C // groups * k * k, groups, g)
    case["bias"][: N // 2] -= 3  # outputs on both sides of 0
    xs = _inputs(B, C, H, W, g)

    def check(isa, t):
        for x in xs:
            for w in case["layouts"]:
                args = (x, w, bits, (k, k), (s, s), (p, p), (1, 1), case["corr"], case["scale"], *case["act"],
                        case["bias"], groups)
                _check_clamps(lambda lo, hi: ops.conv2d_int8(*args, clamp_min=lo, clamp_max=hi),
                              (isa, t, x.is_contiguous(), w.shape))

    on_every_isa_and_thread_count(check)


@pytest.mark.parametrize("geom", GEOMS)
def test_conv2d_w1a1_clamp_is_torch_activation_of_the_conv(geom):
    B, C, H, W, N, k, s, p, groups = geom
    g = torch.Generator().manual_seed(sum(geom))
    w = (torch.randint(0, 2, (N, C // groups, k, k), generator=g) * 2 - 1).to(torch.int8)
    packed = ops.pack_binary_b1(w.reshape(N, -1))
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    xs = _inputs(B, C, H, W, g)

    def check(isa, t):
        for x in xs:
            for b in (fb, None):
                args = (x, packed, (k, k), (s, s), (p, p), (1, 1), ws, b, groups)
                _check_clamps(lambda lo, hi: ops.conv2d_w1a1(*args, clamp_min=lo, clamp_max=hi),
                              (isa, t, x.is_contiguous(), b is None))

    on_every_isa_and_thread_count(check)


# conv2d_w4a8 takes K = C / groups * kh * kw and the group size as multiples of 32
W4_GEOMS = [(5, 32, 6, 5, 24, 3, 1, 1, 1), (1, 32, 6, 5, 24, 1, 1, 0, 1), (5, 64, 7, 7, 16, 3, 2, 1, 2)]


@pytest.mark.parametrize("geom", W4_GEOMS)
def test_conv2d_w4a8_clamp_is_torch_activation_of_the_conv(geom):
    B, C, H, W, N, k, s, p, groups = geom
    K, gs = C // groups * k * k, 32
    g = torch.Generator().manual_seed(sum(geom) + 4)
    codes = torch.randint(-8, 8, (N, K), dtype=torch.int8, generator=g)
    gscale = torch.rand(N, K // gs, generator=g) * 0.1
    bias = torch.randn(N, generator=g)
    w4 = ops.pack_int4_w4(codes)
    xs = _inputs(B, C, H, W, g)

    def check(isa, t):
        for x in xs:
            args = (x, w4, (k, k), (s, s), (p, p), (1, 1), gscale, gs, 0.05, 3, 0, 255, bias, groups)
            _check_clamps(lambda lo, hi: ops.conv2d_w4a8(*args, clamp_min=lo, clamp_max=hi), (isa, t, x.is_contiguous()))

    on_every_isa_and_thread_count(check)


def test_fused_clamp_keeps_negative_zero_and_passes_opcheck():
    """relu(-0.0) is -0.0 in torch (y < 0 is false), and so is hardtanh's: a conv whose outputs are
    -0.0 (a zero sum times a negative scale) keeps them under each clamp that holds 0, as torch does;
    opcheck with the bounds (the meta kernel and the schema's defaults)."""
    C, N = 4, 3
    x = torch.zeros(2, C, 5, 5)  # one code everywhere: every output's sum is the same integer
    w = torch.randint(-127, 128, (N, C), dtype=torch.int8)
    conv = lambda corr, scale, lo=None, hi=None: ops.conv2d_int8(  # noqa: E731
        x, w, 8, (1, 1), (1, 1), (0, 0), (1, 1), corr, scale, 0.1, 0, -128, 127, None, 1, clamp_min=lo, clamp_max=hi)
    acc = conv(torch.zeros(N, dtype=torch.int32), torch.ones(N))[0, :, 0, 0]  # each row's sum
    corr = (-acc).int()  # sums of 0, times a scale of -1: -0.0 everywhere
    y0 = conv(corr, -torch.ones(N))
    assert bool((y0 == 0).all()) and bool(torch.signbit(y0).all())
    for lo, hi, ref in [(0.0, None, torch.relu), (0.0, 6.0, F.relu6), (-1.0, 1.0, lambda t: F.hardtanh(t, -1.0, 1.0))]:
        y = conv(corr, -torch.ones(N), lo, hi)
        assert _bits_equal(y, ref(y0)) and bool(torch.signbit(y).all()), (lo, hi)
    torch.library.opcheck(torch.ops.qatkit.conv2d_int8.default,
                          (torch.randn(2, C, 5, 5), w, 8, [1, 1], [1, 1], [0, 0], [1, 1], corr, torch.rand(N),
                           0.1, 0, -128, 127, None, 1, 0.0, 6.0))
    wb = ops.pack_binary_b1((torch.randint(0, 2, (N, C * 9)) * 2 - 1).to(torch.int8))
    torch.library.opcheck(torch.ops.qatkit.conv2d_w1a1.default,
                          (torch.randn(2, C, 5, 5), wb, [3, 3], [1, 1], [1, 1], [1, 1], torch.rand(N), None, 1, 0.0))
    w4 = ops.pack_int4_w4(torch.randint(-8, 8, (N, 32), dtype=torch.int8))
    torch.library.opcheck(torch.ops.qatkit.conv2d_w4a8.default,
                          (torch.randn(2, 32, 5, 5), w4, [1, 1], [1, 1], [0, 0], [1, 1], torch.rand(N, 1), 32, 0.05,
                           3, 0, 255, None, 1, None, 0.5))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_fused_clamp_rejects_nan_and_unordered_bounds(device):
    """A NaN bound, or clamp_min > clamp_max, is a ValueError naming the op and the bounds (CPU and
    Meta alike, so torch.compile reports it too); equal bounds are a constant output."""
    x = torch.randn(2, 4, 5, 5, device=device)
    w = torch.randint(-127, 128, (3, 4), dtype=torch.int8).to(device)
    corr, scale = torch.zeros(3, dtype=torch.int32, device=device), torch.ones(3, device=device)
    conv = lambda lo, hi: ops.conv2d_int8(  # noqa: E731
        x, w, 8, (1, 1), (1, 1), (0, 0), (1, 1), corr, scale, 0.1, 0, -128, 127, None, 1, clamp_min=lo, clamp_max=hi)
    with pytest.raises(ValueError, match=r"conv2d_int8: clamp_min \(1\) must be at most clamp_max \(0.5\)"):
        conv(1.0, 0.5)
    with pytest.raises(ValueError, match="conv2d_int8: clamp_min and clamp_max must not be NaN, got nan and None"):
        conv(float("nan"), None)
    with pytest.raises(ValueError, match="clamp_min and clamp_max must not be NaN"):
        ops.conv2d_w1a1(x, ops.pack_binary_b1(torch.ones(3, 4, dtype=torch.int8)).to(device), (1, 1), (1, 1), (0, 0),
                        (1, 1), scale, None, 1, None, float("nan"))
    y = conv(0.25, 0.25)
    if device == "cpu":
        assert bool((y == 0.25).all())
