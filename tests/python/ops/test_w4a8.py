"""W4A8 (4-bit weights in groups, 8-bit activations): ops.linear_w4a8 and ops.conv2d_w4a8 against the
float64 group reference bit for bit on every CPU ISA this machine runs; packing; opcheck; errors."""

import os

import pytest
import torch

import qatkit
from qatkit import ops
from qatkit.testing.integer import (
    isas,
    on_every_isa_and_thread_count,
    w4a8_reference,
)
from qatkit.testing.reference import same_bits

# ---------------------------------------------------------------- W4A8, group-wise scales


# shapes cover the AVX-512 kernel's 16-row blocks (N % 16 tails), its 4-row activation tiles (M % 4
# tails) and its masked 64-byte K steps (K / 2 % 64 tails); zp = 128 on [0, 255] has no zero-point term.
# Batches of 1-3 rows on the panel run four blocks at a time (w4_gemv_blocks) where a thread has four
# or more: 130 and 250 rows end in a partial block inside such a run, 200 in a run's leftover blocks;
# where N is a multiple of 16 the panel also runs with its blocked scales (block_w4_scales). From 4
# rows, two blocks run at once (w4_panel_tile: 6- and 4-row tiles, a partial second block at N = 24 and
# 40, a single block left at 40 and 48, single rows left at 7 and 13).
@pytest.mark.parametrize("M,N,K,gs", [(7, 24, 96, 32), (13, 48, 256, 64), (10, 40, 128, 32), (16, 64, 192, 96),
                                      (1, 37, 128, 32), (5, 16, 64, 64), (3, 9, 96, 32), (2, 64, 1024, 128), (3, 7, 320, 32),
                                      (0, 8, 32, 32), (4, 5, 512, 256), (2, 3, 1024, 512), (9, 33, 224, 32),
                                      (6, 48, 384, 96), (1, 130, 128, 64), (3, 250, 160, 32), (2, 200, 64, 32),
                                      (1, 192, 64, 32), (3, 128, 96, 32)])
@pytest.mark.parametrize("qrange,zp", [((0, 255), 3), ((-128, 127), -7), ((0, 255), 128), ((0, 15), 0)])
def test_w4a8_equals_the_group_reference_on_every_isa(M, N, K, gs, qrange, zp):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(M, K, generator=g) * 3
    w = torch.randint(-8, 8, (N, K), dtype=torch.int8, generator=g)
    gscale = torch.rand(N, K // gs, generator=g) * 0.1
    qmin, qmax = qrange
    packed = ops.pack_int4_w4(w)
    panel = ops.pack_int4_panel(packed)
    layouts = [(packed, gscale), (panel, gscale)] + ([(panel, ops.block_w4_scales(gscale))] if N % 16 == 0 else [])
    for bias in (None, torch.randn(N, generator=g)):
        want = w4a8_reference(x, w, gscale, gs, 0.05, zp, qmin, qmax, bias)
        old = qatkit._C.cpu_isa()
        try:
            for isa in isas():
                qatkit._C.set_cpu_isa(isa)
                for layout, scales in layouts:
                    got = ops.linear_w4a8(x, layout, scales, gs, 0.05, zp, qmin, qmax, bias)
                    assert torch.equal(got, want), (isa, layout.dim(), scales.dim())
        finally:
            qatkit._C.set_cpu_isa(old)


def test_w4a8_packing_opcheck_and_errors():
    w = torch.randint(-8, 8, (4, 64), dtype=torch.int8)
    p = ops.pack_int4_w4(w)
    assert p.shape == (4, 32)
    assert all(int(p[1, 32 * 0 + j] & 15) == int(w[1, j]) + 8 and int(p[1, j] >> 4) == int(w[1, j + 16]) + 8
               for j in range(16))
    x, gs = torch.randn(3, 64), torch.rand(4, 2)
    torch.library.opcheck(torch.ops.qatkit.linear_w4a8.default, (x, p, gs, 32, 0.1, 0, -128, 127))
    with pytest.raises(ValueError, match="group_size must be a multiple of 32"):
        ops.linear_w4a8(x, p, gs, 16, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match="group_scale must have shape"):
        ops.linear_w4a8(x, p, gs[:, :1], 32, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match="K / 2 = 32 bytes"):
        ops.linear_w4a8(x, p[:, :16], gs, 32, 0.1, 0, -128, 127)
    panel = ops.pack_int4_panel(p)
    assert panel.shape == (1, 1, 1024) and panel.dtype == torch.uint8
    # lane r of dword e holds row r's bytes 4e .. 4e + 3; rows past N are zero
    assert torch.equal(panel[0, 0].reshape(16, 16, 4)[:8].permute(1, 0, 2)[:4].reshape(4, 32), p)
    assert int(panel[0, 0].reshape(16, 16, 4)[:, 4:].abs().sum()) == 0
    torch.library.opcheck(torch.ops.qatkit.pack_int4_panel.default, (p,))
    torch.library.opcheck(torch.ops.qatkit.linear_w4a8.default, (x, panel, gs, 32, 0.1, 0, -128, 127))
    with pytest.raises(ValueError, match=r"panel weight .* must have shape \[1, 1, 1024\]"):
        ops.linear_w4a8(x, panel[:, :, :512], gs, 32, 0.1, 0, -128, 127)
    # the panel's blocked scales [N / 16, G, 16]: 16 rows, their output 16 wide (rows past 4 are zero
    # codes with the scales given), the same outputs for the first 4
    gs16 = torch.cat([gs, torch.rand(12, 2)])
    blocked = ops.block_w4_scales(gs16)
    assert blocked.shape == (1, 2, 16) and torch.equal(blocked[0, 1], gs16[:, 1])
    torch.library.opcheck(torch.ops.qatkit.linear_w4a8.default, (x, panel, blocked, 32, 0.1, 0, -128, 127))
    yb = ops.linear_w4a8(x, panel, blocked, 32, 0.1, 0, -128, 127)
    assert yb.shape == (3, 16) and torch.equal(yb[:, :4], ops.linear_w4a8(x, panel, gs, 32, 0.1, 0, -128, 127))
    with pytest.raises(ValueError, match="a 3-D group_scale .* needs a panel weight .* got a 2-D weight"):
        ops.linear_w4a8(x, p, blocked, 32, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match=r"group_scale must have the blocked shape \[1, 2, 16\], got \[1, 1, 16\]"):
        ops.linear_w4a8(x, panel, blocked[:, :1], 32, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match=r"panel weight .* for N = 32 .* must have shape \[2, 1, 1024\]"):
        ops.linear_w4a8(x, panel, torch.cat([blocked, blocked]), 32, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match="K a multiple of 32"):
        ops.pack_int4_panel(p[:, :8])
    big = 2**18  # beyond the exact int32 group sums
    with pytest.raises(ValueError, match="group_size must be at most 131072"):
        ops.linear_w4a8(torch.randn(1, big), torch.zeros(1, big // 2, dtype=torch.uint8), torch.ones(1, 1), big, 0.1, 0,
                        -128, 127)
    with pytest.raises(ValueError, match="must lie in"):
        ops.pack_int4_w4(torch.full((1, 32), 9, dtype=torch.int8))


# ---------------------------------------------------------------- W4A8 convs (conv2d_w4a8)


def _w4_conv_reference(x, codes, gscale, gs, s, zp, qmin, qmax, bias, stride, padding, dilation, groups):
    """The "static_group" form of a conv in float64 (docs/integer.md): per weight group of K = C /
    groups * kh * kw (PyTorch's flattening of the weight), the exact conv of the centred input codes
    (zero padding: a centred 0) with that group's codes, times its scale, summed in group order; times
    s, one rounding to float32, then + bias."""
    inv = torch.tensor(1.0) / torch.tensor(s, dtype=torch.float32)
    r = torch.round(x * inv)  # NaN stays NaN: outputs whose window reads one are NaN, as in the float layer
    q = ((r + zp).clamp(qmin, qmax) - zp).double()
    n, k = codes.shape[0], codes[0].numel()
    wf = codes.reshape(n, k).double()
    t = None
    for g in range(k // gs):
        wi = torch.zeros_like(wf)
        wi[:, g * gs:(g + 1) * gs] = wf[:, g * gs:(g + 1) * gs]
        acc = torch.nn.functional.conv2d(q, wi.reshape(codes.shape), None, stride, padding, dilation, groups)  # exact
        term = acc * gscale[:, g].double().reshape(1, -1, 1, 1)
        t = term if t is None else t + term
    y = (t * float(torch.tensor(s, dtype=torch.float32))).float()
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


# (kernel, stride, padding, dilation) x (C, N, groups, group_size): 3 x 3 with groups spanning 3.5
# channels' taps, strided and asymmetric padding, dilation, 1 x 1 (rows are pixels: quantized
# straight into the rows from channels_last, transposed from NCHW planes), 1 x 10 (runs longer than
# the 8-byte copies), grouped convs (row layout), groups of 96 and 64 codes
W4_CONV_CASES = [
    (((3, 3), (1, 1), (1, 1), (1, 1)), (32, 24, 1, 32)), (((3, 3), (2, 1), (1, 2), (1, 1)), (64, 20, 2, 96)),
    (((2, 2), (1, 1), (0, 0), (2, 3)), (96, 12, 3, 64)), (((1, 1), (1, 1), (0, 0), (1, 1)), (64, 40, 1, 64)),
    (((1, 10), (1, 3), (0, 4), (1, 1)), (16, 8, 1, 32)), (((3, 3), (1, 2), (2, 0), (2, 1)), (64, 16, 2, 288)),
    # pointwise: grouped (each image's [Cg, pixels] codes transposed into the rows, either format), strided
    (((1, 1), (1, 1), (0, 0), (1, 1)), (64, 18, 2, 32)), (((1, 1), (2, 2), (0, 0), (1, 1)), (32, 8, 1, 32)),
    # stride 1: dilated and grouped; K = 4608 (144 groups of 32 per row)
    (((3, 3), (1, 1), (2, 1), (2, 1)), (64, 16, 2, 32)), (((3, 3), (1, 1), (1, 1), (1, 1)), (512, 8, 1, 64)),
]


@pytest.mark.parametrize("geom,chans", W4_CONV_CASES)
@pytest.mark.parametrize("qrange,zp", [((0, 255), 37), ((-128, 127), -5)])
def test_conv2d_w4a8_equals_the_group_reference_on_every_isa(geom, chans, qrange, zp):
    """conv2d_w4a8 (row and panel layouts, NCHW and channels_last inputs) gives the float64 group
    reference's bits on every ISA at 1, 2 and 3 threads; an input with NaN and +-Inf (their codes:
    quantize_affine's; outputs whose window reads the NaN are NaN); the output keeps the input's memory format."""
    (kh, kw), st, pad, dil = geom
    C, N, groups, gs = chans
    K = C // groups * kh * kw
    assert K % gs == 0
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, C, 7, 11, generator=g) * 3
    x[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    codes = torch.randint(-8, 8, (N, C // groups, kh, kw), dtype=torch.int8, generator=g)
    gscale = torch.rand(N, K // gs, generator=g) * 0.1
    bias = torch.randn(N, generator=g)
    qmin, qmax = qrange
    w4 = ops.pack_int4_w4(codes.reshape(N, K))
    layouts = [w4] + ([ops.pack_int4_panel(w4)] if groups == 1 else [])
    want = _w4_conv_reference(x, codes, gscale, gs, 0.05, zp, qmin, qmax, bias, st, pad, dil, groups)

    def check(isa, t):
        for w in layouts:
            for fmt in (torch.contiguous_format, torch.channels_last):
                got = ops.conv2d_w4a8(x.contiguous(memory_format=fmt), w, (kh, kw), st, pad, dil, gscale, gs, 0.05, zp,
                                      qmin, qmax, bias, groups)
                assert got.is_contiguous(memory_format=fmt), (isa, t, fmt)
                assert same_bits(got, want), (isa, t, w.dim(), fmt)

    on_every_isa_and_thread_count(check)


# The AVX-512 table's direct route (conv_w4: the planes read straight into tiles of 16 output pixels,
# one per vector lane; other tables build patch rows): (input H = W, stride, C, N, group size). Tiles
# along one output row (16 and 18 wide: 16 contiguous codes per tap, then a tile over two rows and a
# tail), over 2 or 4 rows of an 8- or 4-wide output (two 8-byte or four 4-byte loads), across images
# (5 wide, 3 images); at column stride 2 the even bytes of 32 (16, 8 and 4 wide outputs) or byte by
# byte (5 wide); stride 3 takes the patch rows. N = 13 leaves a channel tail past blocks of 4 (N = 16:
# none; channels_last outputs then go as 4 channels per pixel), K = 2304 fills more than one chunk of
# tiles on one thread, groups of 64 run the quads of a group in a loop; 66-wide rows (64+ codes)
# are quantized row by row straight into the planes.
W4_DIRECT_CASES = [(16, 1, 32, 13, 32), (18, 1, 32, 16, 32), (8, 1, 64, 16, 32), (4, 1, 32, 13, 32),
                   (5, 1, 64, 16, 64), (32, 2, 32, 13, 32), (16, 2, 32, 16, 32), (8, 2, 64, 13, 32),
                   (10, 2, 32, 16, 32), (17, 3, 32, 13, 32), (8, 1, 256, 16, 32), (66, 1, 32, 13, 32)]


@pytest.mark.parametrize("hw,stride,C,N,gs", W4_DIRECT_CASES)
def test_conv2d_w4a8_direct_tiles_on_every_isa(hw, stride, C, N, gs):
    """conv2d_w4a8 3 x 3 convs (padding 1, 3 images) give the float64 group reference's bits on every
    ISA at 1, 2 and 3 threads, in both weight layouts and memory formats, whichever form each tile of
    output pixels takes."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(3, C, hw, hw, generator=g) * 2
    K = C * 9
    codes = torch.randint(-8, 8, (N, C, 3, 3), dtype=torch.int8, generator=g)
    gscale = torch.rand(N, K // gs, generator=g) * 0.1
    bias = torch.randn(N, generator=g)
    w4 = ops.pack_int4_w4(codes.reshape(N, K))
    st = (stride, stride)
    want = _w4_conv_reference(x, codes, gscale, gs, 0.05, 9, 0, 255, bias, st, (1, 1), (1, 1), 1)

    def check(isa, t):
        for w in (w4, ops.pack_int4_panel(w4)):
            for fmt in (torch.contiguous_format, torch.channels_last):
                got = ops.conv2d_w4a8(x.contiguous(memory_format=fmt), w, (3, 3), st, (1, 1), (1, 1), gscale, gs, 0.05,
                                      9, 0, 255, bias)
                assert got.is_contiguous(memory_format=fmt), (isa, t, fmt)
                assert same_bits(got, want), (isa, t, w.dim(), fmt)

    on_every_isa_and_thread_count(check)


def test_conv2d_w4a8_blocks_of_rows_empty_inputs_and_no_channels():
    """More patch rows per thread than one block (4 MiB of codes: 16384 rows of K = 288 here; a
    channels_last pointwise conv's 133120 rows of K = 32; planes past the kept scratch's 16 MiB)
    give the reference's bits; an empty batch gives an empty output; C = 0 (K = 0, an empty sum)
    gives the bias."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(4, 32, 64, 64, generator=g)
    codes = torch.randint(-8, 8, (16, 32, 3, 3), dtype=torch.int8, generator=g)
    gscale, bias = torch.rand(16, 9, generator=g) * 0.1, torch.randn(16, generator=g)
    w4 = ops.pack_int4_panel(ops.pack_int4_w4(codes.reshape(16, 288)))
    want = _w4_conv_reference(x, codes, gscale, 32, 0.05, 3, 0, 255, bias, (1, 1), (1, 1), (1, 1), 1)
    before = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            assert torch.equal(ops.conv2d_w4a8(x, w4, (3, 3), (1, 1), (1, 1), (1, 1), gscale, 32, 0.05, 3, 0, 255, bias),
                               want)
        # a pointwise conv of a channels_last input (its pixels' rows quantized straight into the
        # patch rows): 133120 rows of K = 32, two blocks on one thread
        xp = torch.randn(8, 32, 128, 130, generator=g).contiguous(memory_format=torch.channels_last)
        c1 = torch.randint(-8, 8, (16, 32, 1, 1), dtype=torch.int8, generator=g)
        g1 = torch.rand(16, 1, generator=g) * 0.1
        want1 = _w4_conv_reference(xp, c1, g1, 32, 0.05, 3, 0, 255, bias, (1, 1), (0, 0), (1, 1), 1)
        w1 = ops.pack_int4_w4(c1.reshape(16, 32))
        for t in (1, 2):
            torch.set_num_threads(t)
            got = ops.conv2d_w4a8(xp, w1, (1, 1), (1, 1), (0, 0), (1, 1), g1, 32, 0.05, 3, 0, 255, bias)
            assert torch.equal(got, want1) and got.is_contiguous(memory_format=torch.channels_last)
        # planes of more than 16 MiB of codes (a call's own buffer, not the thread's kept scratch): a
        # 1 x 1 conv with stride 2 (planes, not the pointwise paths) of a 726 x 726 image (16.9 M codes: past 16 MiB)
        xb = torch.randn(1, 32, 726, 726, generator=g)
        wantb = _w4_conv_reference(xb, c1, g1, 32, 0.05, 3, 0, 255, bias, (2, 2), (0, 0), (1, 1), 1)
        torch.set_num_threads(2)
        assert torch.equal(ops.conv2d_w4a8(xb, w1, (1, 1), (2, 2), (0, 0), (1, 1), g1, 32, 0.05, 3, 0, 255, bias), wantb)
    finally:
        torch.set_num_threads(before)
    y = ops.conv2d_w4a8(x[:0], w4, (3, 3), (1, 1), (1, 1), (1, 1), gscale, 32, 0.05, 3, 0, 255, bias)
    assert y.shape == (0, 16, 64, 64)
    y = ops.conv2d_w4a8(torch.randn(2, 0, 5, 5), torch.zeros(16, 0, dtype=torch.uint8), (3, 3), (1, 1), (1, 1), (1, 1),
                        torch.ones(16, 0), 32, 0.05, 3, 0, 255, bias)
    assert torch.equal(y, bias.reshape(1, -1, 1, 1).expand(2, 16, 5, 5))


def test_conv2d_w4a8_opcheck_and_errors():
    x = torch.randn(2, 32, 6, 6)
    w = ops.pack_int4_w4(torch.randint(-8, 8, (8, 288), dtype=torch.int8))
    gs, b = torch.rand(8, 9), torch.randn(8)
    geom = ([3, 3], [1, 1], [1, 1], [1, 1])
    for xi in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.library.opcheck(torch.ops.qatkit.conv2d_w4a8.default, (xi, w, *geom, gs, 32, 0.1, 3, 0, 255, b))
        torch.library.opcheck(torch.ops.qatkit.conv2d_w4a8.default,
                              (xi, ops.pack_int4_panel(w), *geom, gs, 32, 0.1, 3, 0, 255, None))
    run = lambda *a, **k: ops.conv2d_w4a8(*a, **k)  # noqa: E731
    with pytest.raises(TypeError, match="conv2d_w4a8: input must be float32, got Double"):
        run(x.double(), w, *geom, gs, 32, 0.1, 3, 0, 255)
    with pytest.raises(ValueError, match="conv2d_w4a8: input must be 4-D"):
        run(x[0], w, *geom, gs, 32, 0.1, 3, 0, 255)
    with pytest.raises(ValueError, match="conv2d_w4a8: stride must be two integers >= 1"):
        run(x, w, [3, 3], [0, 1], [1, 1], [1, 1], gs, 32, 0.1, 3, 0, 255)
    with pytest.raises(ValueError, match="conv2d_w4a8: group_size must be a multiple of 32 that divides K = 288, got 64"):
        run(x, w, *geom, torch.rand(8, 4), 64, 0.1, 3, 0, 255)
    with pytest.raises(ValueError, match=r"conv2d_w4a8: group_scale must have shape \[8, 9\]"):
        run(x, w, *geom, gs[:, :4], 32, 0.1, 3, 0, 255)
    with pytest.raises(ValueError, match="conv2d_w4a8: weight must have K / 2 = 144 bytes per row, got 72"):
        run(x, w[:, :72], *geom, gs, 32, 0.1, 3, 0, 255)
    with pytest.raises(ValueError, match="conv2d_w4a8: groups must be >= 1 and divide the input channels 32 and the "
                                         "output channels 8"):
        run(x, w, *geom, gs, 32, 0.1, 3, 0, 255, None, 3)
    with pytest.raises(ValueError, match="conv2d_w4a8: a 3-D panel weight .* needs groups 1, got 2"):
        run(x, ops.pack_int4_panel(w), *geom, gs, 32, 0.1, 3, 0, 255, None, 2)
    with pytest.raises(ValueError, match=r"conv2d_w4a8: act_zero_point must lie in \[0, 255\], got 300"):
        run(x, w, *geom, gs, 32, 0.1, 300, 0, 255)
    with pytest.raises(ValueError, match="conv2d_w4a8: act_scale must be a finite float32 > 0"):
        run(x, w, *geom, gs, 32, float("nan"), 3, 0, 255)
    with pytest.raises(ValueError, match=r"conv2d_w4a8: bias must be float32 \[8\]"):
        run(x, w, *geom, gs, 32, 0.1, 3, 0, 255, torch.randn(9))
    with pytest.raises(ValueError, match="conv2d_w4a8: padding must be at most 16777216"):
        run(x, w, [3, 3], [1, 1], [1 << 30, 1], [1, 1], gs, 32, 0.1, 3, 0, 255)
    # (under scripts/sanitize.sh ASan's allocator aborts on a 2^39-byte request instead of letting
    # operator new throw: that case runs in the regular build only)
    if not os.environ.get("QATKIT_SANITIZED"):
        with pytest.raises(torch.OutOfMemoryError, match="conv2d_w4a8: out of memory"):
            run(torch.randn(1, 32, 4, 4), w, [3, 3], [1 << 16, 1 << 16], [1 << 16, 1 << 16], [1, 1], gs, 32, 0.1, 3, 0,
                255)
