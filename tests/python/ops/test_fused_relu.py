"""The convs' fused ReLU (``relu=True`` on conv2d_int8, conv2d_w4a8 and conv2d_w1a1): torch.relu of
the unfused op's output bit for bit (NaN and -0.0 kept), on every CPU ISA and thread count (the
per-image forms apply it image by image, the others in one pass at the end); opcheck with it."""

import pytest
import torch

from qatkit import ops
from qatkit.testing.integer import on_every_isa_and_thread_count
from qatkit.testing.samples import conv_int8_case


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit: the float32 words (so -0.0 differs from 0.0, and a NaN's payload counts)."""
    return a.shape == b.shape and a.stride() == b.stride() and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _inputs(B, C, H, W, g):
    x = torch.randn(B, C, H, W, generator=g) * 2
    x[0, 0, 0, 0] = float("nan")  # NaN windows: NaN through the ReLU
    return [x, x.contiguous(memory_format=torch.channels_last)]


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
def test_conv2d_int8_relu_is_torch_relu_of_the_conv(geom, bits):
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
                want = torch.relu(ops.conv2d_int8(*args))
                got = ops.conv2d_int8(*args, relu=True)
                assert _bits_equal(got, want), (isa, t, x.is_contiguous(), w.shape)
                assert bool((got.nan_to_num(0) >= 0).all()) and bool(got.isnan().any())

    on_every_isa_and_thread_count(check)


@pytest.mark.parametrize("geom", GEOMS)
def test_conv2d_w1a1_relu_is_torch_relu_of_the_conv(geom):
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
                want = torch.relu(ops.conv2d_w1a1(*args))
                got = ops.conv2d_w1a1(*args, relu=True)
                assert _bits_equal(got, want), (isa, t, x.is_contiguous(), b is None)

    on_every_isa_and_thread_count(check)


# conv2d_w4a8 takes K = C / groups * kh * kw and the group size as multiples of 32
W4_GEOMS = [(5, 32, 6, 5, 24, 3, 1, 1, 1), (1, 32, 6, 5, 24, 1, 1, 0, 1), (5, 64, 7, 7, 16, 3, 2, 1, 2)]


@pytest.mark.parametrize("geom", W4_GEOMS)
def test_conv2d_w4a8_relu_is_torch_relu_of_the_conv(geom):
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
            want = torch.relu(ops.conv2d_w4a8(*args))
            got = ops.conv2d_w4a8(*args, relu=True)
            assert _bits_equal(got, want), (isa, t, x.is_contiguous())

    on_every_isa_and_thread_count(check)


def test_fused_relu_keeps_negative_zero_and_passes_opcheck():
    """relu(-0.0) is -0.0 in torch (y < 0 is false): a conv whose outputs are -0.0 (a zero sum
    times a negative scale) keeps them, as torch.relu does; opcheck with relu=True (the meta kernel
    and the schema's default)."""
    C, N = 4, 3
    x = torch.zeros(2, C, 5, 5)  # one code everywhere: every output's sum is the same integer
    w = torch.randint(-127, 128, (N, C), dtype=torch.int8)
    conv = lambda corr, scale, relu: ops.conv2d_int8(  # noqa: E731
        x, w, 8, (1, 1), (1, 1), (0, 0), (1, 1), corr, scale, 0.1, 0, -128, 127, None, 1, relu=relu)
    acc = conv(torch.zeros(N, dtype=torch.int32), torch.ones(N), False)[0, :, 0, 0]  # each row's sum
    corr = (-acc).int()  # sums of 0, times a scale of -1: -0.0 everywhere
    y0, y = conv(corr, -torch.ones(N), False), conv(corr, -torch.ones(N), True)
    assert bool((y0 == 0).all()) and bool(torch.signbit(y0).all())
    assert _bits_equal(y, torch.relu(y0)) and bool(torch.signbit(y).all())
    torch.library.opcheck(torch.ops.qatkit.conv2d_int8.default,
                          (torch.randn(2, C, 5, 5), w, 8, [1, 1], [1, 1], [0, 0], [1, 1], corr, torch.rand(N),
                           0.1, 0, -128, 127, None, 1, True))
    wb = ops.pack_binary_b1((torch.randint(0, 2, (N, C * 9)) * 2 - 1).to(torch.int8))
    torch.library.opcheck(torch.ops.qatkit.conv2d_w1a1.default,
                          (torch.randn(2, C, 5, 5), wb, [3, 3], [1, 1], [1, 1], [1, 1], torch.rand(N), None, 1, True))
