"""ops.conv2d_int8 (8-, 2- and 1-bit weights; im2col, grouped, depthwise, channels-last and split-panel
paths) against one GEMM per group on the unfolded patches, bit for bit on every CPU ISA this machine
runs; its cached derived weights; thread splits; opcheck; errors."""

import os

import pytest
import torch

import qatkit
from qatkit import ops
from qatkit.testing.integer import (
    gauss_codes,
    isas,
    on_every_isa_and_thread_count,
    split_block_counts,
    xnor_conv_reference,
)
from qatkit.testing.reference import same_bits
from qatkit.testing.samples import conv_int8_case

# ---------------------------------------------------------------- conv2d_int8


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("geom", [dict(k=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1)), dict(k=(3, 2), s=(2, 1), p=(0, 2), d=(1, 2)),
                                  dict(k=(1, 1), s=(1, 1), p=(0, 0), d=(1, 1)), dict(k=(9, 6), s=(1, 1), p=(0, 0), d=(1, 1))])
def test_conv2d_int8_equals_the_int8_kernel_on_unfolded_patches(bits, geom):
    """The conv equals linear_int8 over F.unfold's patches of the zero-padded input (the code of 0 at
    padded positions), on every ISA, for int8, 2-bit and 1-bit weights; a NaN input makes the patch
    rows that read it NaN (linear_int8's NaN rows): the outputs whose window covers it."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(7)
    B, C, H, W, N = 3, 5, 9, 7, 20  # N: a 16-column block and a tail; k (9, 6): L = 2 (GEMV)
    x = torch.randn(B, C, H, W, generator=g) * 2
    x[1, 2, 4, 3] = float("nan")
    K = C * geom["k"][0] * geom["k"][1]
    if bits == 8:
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        packed = w
    elif bits == 2:
        w = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=g)
        packed = ops.pack_ternary_t2(w)
    else:
        w = (torch.randint(0, 2, (N, K), generator=g) * 2 - 1).to(torch.int8)
        packed = ops.pack_binary_b1(w)
    s, zp, qmin, qmax = 0.04, 9, 0, 255
    corr = (torch.randint(-300, 300, (N,), generator=g) + (128 - zp) * w.long().sum(1)).int()
    scale = torch.rand(N, generator=g) * 1e-2
    fb = torch.randn(N, generator=g)
    cols = F.unfold(x, geom["k"], dilation=geom["d"], padding=geom["p"], stride=geom["s"])  # [B, K, L]
    want = ops.linear_int8(cols.transpose(1, 2), w, corr, scale, s, zp, qmin, qmax, fb).transpose(1, 2)
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            got = ops.conv2d_int8(x, packed, bits, geom["k"], geom["s"], geom["p"], geom["d"], corr, scale, s, zp, qmin,
                                  qmax, fb)
            assert same_bits(got.reshape(B, N, -1), want), isa
            assert bool(got[1].isnan().any()) and bool(got[[0, 2]].isfinite().all()), isa
            if bits == 8 and K % 32:  # int8 rows zero-padded to a multiple of 32: the same outputs
                wp = F.pad(w, (0, -K % 32)).contiguous()
                got = ops.conv2d_int8(x, wp, 8, geom["k"], geom["s"], geom["p"], geom["d"], corr, scale, s, zp, qmin,
                                      qmax, fb)
                assert same_bits(got.reshape(B, N, -1), want), isa
            if bits == 8:  # the panel layout (what the plans give groups == 1 convs): the same outputs
                got = ops.conv2d_int8(x, ops.pack_int8_panel(w), 8, geom["k"], geom["s"], geom["p"], geom["d"], corr,
                                      scale, s, zp, qmin, qmax, fb)
                assert same_bits(got.reshape(B, N, -1), want), isa
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("B,C,N", [(2, 48, 70), (1, 48, 70), (2, 1, 20), (1, 3, 33)])
def test_conv2d_int8_panel_equals_the_unfolded_gemm_on_every_isa(B, C, N):
    """The panel layout on convs with the panel kernels' tiles: 81 positions (6-row tiles and a tail),
    70 outputs (four panels and a partial fifth), K = 432 (two K blocks), one image (the outputs in
    parallel), one input channel (the direct kernel reading the panel)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(17)
    x = torch.randn(B, C, 9, 9, generator=g) * 2
    K = C * 9
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    s, zp, qmin, qmax = 0.04, 9, 0, 255
    corr = (torch.randint(-300, 300, (N,), generator=g) + (128 - zp) * w.long().sum(1)).int()
    scale, fb = torch.rand(N, generator=g) * 1e-2, torch.randn(N, generator=g)
    cols = F.unfold(x, (3, 3), padding=(1, 1))  # [B, K, L]
    want = ops.linear_int8(cols.transpose(1, 2), w, corr, scale, s, zp, qmin, qmax, fb).transpose(1, 2)
    panel = ops.pack_int8_panel(w)
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            got = ops.conv2d_int8(x, panel, 8, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, s, zp, qmin, qmax, fb)
            assert got.shape == (B, N, 9, 9) and torch.equal(got.reshape(B, N, -1), want), isa
    finally:
        qatkit._C.set_cpu_isa(old)
    torch.library.opcheck(torch.ops.qatkit.conv2d_int8.default,
                          (x, panel, 8, [3, 3], [1, 1], [1, 1], [1, 1], corr, scale, s, zp, qmin, qmax, fb))
    if C % 3 == 0:
        with pytest.raises(ValueError, match="panel weight .* needs weight_bits 8 and groups 1"):
            ops.conv2d_int8(x, panel, 8, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, s, zp, qmin, qmax, fb, 3)


@pytest.mark.parametrize("B,C,HW,N,k", [
    (1, 16, 17, 40, (1, 1)),  # 1 x 1, 289 rows: one GEMM per image on the panel as it is (split blocks)
    (1, 8, 16, 160, (3, 3)),  # 256 patch rows, one image, its rows and columns in parallel (reordered)
    (2, 32, 6, 40, (1, 1)),   # 36 rows per image: several images per GEMM in row ranges under 24 rows
    (4, 16, 8, 40, (3, 3)),   # channels-last: the reordered panel with the records of its reordered codes
])
def test_conv2d_int8_split_panel_equals_the_unfolded_gemm(B, C, HW, N, k):
    g = torch.Generator().manual_seed(B * C + N)
    x = torch.randn(B, C, HW, HW, generator=g) * 2
    K = C * k[0] * k[1]
    w = gauss_codes(N, K, g, sigma=30.0)
    w[::16, :2] = torch.tensor([120, 100], dtype=torch.int8)  # at least one unsafe pair per block
    panel = ops.pack_int8_panel(w)
    assert any(c > 0 for c in split_block_counts(panel, N, K))
    s, zp, qmin, qmax = 0.04, 9, 0, 255
    corr = (torch.randint(-300, 300, (N,), generator=g) + (128 - zp) * w.long().sum(1)).int()
    scale, fb = torch.rand(N, generator=g) * 1e-2, torch.randn(N, generator=g)
    pad = (k[0] // 2, k[1] // 2)
    want = _unfolded_conv_reference(x, w, corr, scale, (s, zp, qmin, qmax), fb, 1, k, padding=pad)
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            got = ops.conv2d_int8(x, panel, 8, k, (1, 1), pad, (1, 1), corr, scale, s, zp, qmin, qmax, fb)
            assert torch.equal(got.reshape(B, N, -1), want.reshape(B, N, -1)), isa
    finally:
        qatkit._C.set_cpu_isa(old)


def _unfolded_conv_reference(x, w, corr, scale, act, bias, groups, k, stride=(1, 1), padding=(1, 1),
                             dilation=(1, 1)):
    """The conv from linear_int8 over F.unfold's patches, group by group: what every conv2d_int8
    path must equal bit for bit. act: (act_scale, zero_point, qmin, qmax)."""
    import torch.nn.functional as F

    ng, cg = w.shape[0] // groups, x.shape[1] // groups
    return torch.cat([
        ops.linear_int8(F.unfold(x[:, i * cg:(i + 1) * cg], k, dilation=dilation, padding=padding,
                                 stride=stride).transpose(1, 2),
                        w[i * ng:(i + 1) * ng], corr[i * ng:(i + 1) * ng], scale[i * ng:(i + 1) * ng], *act,
                        None if bias is None else bias[i * ng:(i + 1) * ng]).transpose(1, 2)
        for i in range(groups)], 1)


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("C,N,groups", [(6, 6, 6), (4, 8, 4), (6, 12, 3), (4, 8, 2)])
@pytest.mark.parametrize("geom", [dict(s=(2, 1), p=(1, 1), d=(1, 1)), dict(s=(1, 2), p=(2, 0), d=(2, 1))])
def test_grouped_conv2d_int8_equals_one_gemm_per_group(bits, C, N, groups, geom):
    """groups > 1 (depthwise: groups == C, the direct kernel, with a channel multiplier too): each
    group's output channels equal linear_int8 over the unfolded patches of that group's input
    channels, on every ISA; a NaN in the last input channel makes only the last group's outputs
    whose window reads it NaN."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(17)
    B, H, W, k = 2, 7, 6, (3, 3)
    x = torch.randn(B, C, H, W, generator=g) * 2
    x[1, C - 1, 3, 2] = float("nan")
    K = C // groups * 9
    if bits == 8:
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        packed = F.pad(w, (0, -K % 32)).contiguous()
    elif bits == 2:
        w = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=g)
        packed = ops.pack_ternary_t2(w)
    else:
        w = (torch.randint(0, 2, (N, K), generator=g) * 2 - 1).to(torch.int8)
        packed = ops.pack_binary_b1(w)
    s, zp, qmin, qmax = 0.04, 9, 0, 255
    corr = (torch.randint(-300, 300, (N,), generator=g) + (128 - zp) * w.long().sum(1)).int()
    scale = torch.rand(N, generator=g) * 1e-2
    fb = torch.randn(N, generator=g)
    want = _unfolded_conv_reference(x, w, corr, scale, (s, zp, qmin, qmax), fb, groups, k, geom["s"], geom["p"],
                                    geom["d"])
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            got = ops.conv2d_int8(x, packed, bits, k, geom["s"], geom["p"], geom["d"], corr, scale, s, zp, qmin, qmax, fb,
                                  groups)
            assert same_bits(got.reshape(B, N, -1), want), isa
            nan = got.isnan()
            assert bool(nan[1, -(N // groups):].any()) and not bool(nan[0].any() or nan[1, :-(N // groups)].any()), isa
    finally:
        qatkit._C.set_cpu_isa(old)
    torch.library.opcheck(torch.ops.qatkit.conv2d_int8.default,  # (opcheck compares outputs without equal_nan)
                          (x.nan_to_num(0.5), packed, bits, [3, 3], list(geom["s"]), list(geom["p"]), list(geom["d"]), corr, scale, s, zp,
                           qmin, qmax, fb, groups))
    x1 = x[:1].contiguous()  # one image: the channels run in parallel instead of the images
    one = ops.conv2d_int8(x1, packed, bits, k, geom["s"], geom["p"], geom["d"], corr, scale, s, zp, qmin, qmax, fb, groups)
    assert torch.equal(one.reshape(1, N, -1), want[:1])
    with pytest.raises(ValueError, match=r"groups must be >= 1 and divide the input channels"):
        ops.conv2d_int8(x, packed, bits, k, (2, 1), (1, 1), (1, 1), corr, scale, s, zp, qmin, qmax, fb, 5)


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("C,N,groups,W,stride", [
    (1, 8, 1, 10, (1, 1)),   # a 1-channel input, 8 outputs: planar, 4 output planes a step (SIMD tables)
    (1, 8, 1, 6, (1, 1)),    # the same, rows under 8 pixels: channels-last, the codes repeated 8 times
    (1, 8, 1, 10, (2, 1)),   # a 1-channel input at row stride 2: channels-last on the SIMD tables
    (4, 8, 4, 10, (1, 1)),   # multiplier 2, rows of 8+ pixels, stride 1: the planar form
    (2, 6, 2, 9, (1, 1)),    # multiplier 3: output planes 2 then 1 at a time
    (3, 21, 3, 17, (1, 1)),  # multiplier 7 (4, 2, 1 at a time), rows of 16+ pixels (AVX2: row by row)
    (3, 12, 3, 9, (2, 1)),   # multiplier 4, row stride 2: planar, one output row at a time
    (4, 8, 4, 6, (1, 1)),    # rows under 8 pixels: channels-last
    (4, 8, 4, 10, (1, 2)),   # column stride 2: channels-last
])
def test_depthwise_multiplier_forms_equal_one_gemm_per_group(bits, C, N, groups, W, stride):
    """Depthwise convs with several outputs per input channel (and 1-channel inputs) run channels-last
    (each pixel's codes repeated per output) or planar by the map's shape (up to 4 output planes of
    one input plane at a time); either equals linear_int8 over each group's unfolded patches, on every
    ISA and at 1-3 threads, batched and one image alone, with and without a bias."""
    g = torch.Generator().manual_seed(18)
    B, H, k = 3, 7, (3, 3)
    x = torch.randn(B, C, H, W, generator=g) * 2
    case = conv_int8_case(bits, N, C // groups * 9, groups, g)
    w, packed, corr, scale, fb = case["w"], case["layouts"][0], case["corr"], case["scale"], case["bias"]
    s, zp, qmin, qmax = case["act"]
    want = _unfolded_conv_reference(x, w, corr, scale, (s, zp, qmin, qmax), fb, groups, k, stride, (1, 1), (1, 1))
    want_nb = _unfolded_conv_reference(x, w, corr, scale, (s, zp, qmin, qmax), None, groups, k, stride, (1, 1), (1, 1))

    def check(isa, t):  # (one image's few planes split their outputs across 2+ threads)
        got = ops.conv2d_int8(x, packed, bits, k, stride, (1, 1), (1, 1), corr, scale, s, zp, qmin, qmax, fb, groups)
        assert torch.equal(got.reshape(B, N, -1), want), (isa, t)
        one = ops.conv2d_int8(x[:1].contiguous(), packed, bits, k, stride, (1, 1), (1, 1), corr, scale, s, zp, qmin,
                              qmax, fb, groups)
        assert torch.equal(one.reshape(1, N, -1), want[:1]), (isa, t)
        nb = ops.conv2d_int8(x, packed, bits, k, stride, (1, 1), (1, 1), corr, scale, s, zp, qmin, qmax, None, groups)
        assert torch.equal(nb.reshape(B, N, -1), want_nb), (isa, t)  # no bias

    on_every_isa_and_thread_count(check)


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("B,C,HW,N,groups", [
    (2, 3, 17, 20, 1),  # 289 positions per image: one GEMM per image, the images in parallel
    (1, 3, 17, 20, 1),  # one image of 289 positions: its rows and columns in parallel
    (5, 8, 6, 20, 1),   # 36 positions: the patch rows of several images in one GEMM, channels-last
    (1, 8, 3, 40, 1),   # 9 patch rows against 40 outputs: 2 / 1 bits on the packed (reordered) codes
    (1, 8, 3, 40, 2),   # the same per group
    (3, 8, 5, 24, 2),   # channels-last per group, several images per GEMM; 2 / 1 bits widened (75 rows)
    (6, 8, 6, 16, 2),   # 2 / 1 bits widened to int8 rows, channels-last, per group
    # K = 288: past the AVX-512 table's direct route (conv_s8, K <= 256), the patch rows there too
    (2, 32, 9, 20, 1), (5, 64, 6, 24, 2), (1, 32, 3, 40, 1),
])
def test_conv2d_int8_im2col_paths_equal_the_unfolded_gemm(bits, B, C, HW, N, groups):
    """Each way conv2d_int8 runs its channels-last patch rows against the reordered weight (one
    GEMM per image, or several images' rows in one GEMM transposed into NCHW; 2- and 1-bit weights
    widened to int8 from 16 patch rows, packed below) equals linear_int8 over F.unfold's patches,
    group by group, on every ISA; the panel layout too."""

    g = torch.Generator().manual_seed(23)
    x = torch.randn(B, C, HW, HW, generator=g) * 2
    cg = C // groups
    K = cg * 9
    case = conv_int8_case(bits, N, K, groups, g)
    w, layouts, corr, scale, fb = case["w"], case["layouts"], case["corr"], case["scale"], case["bias"]
    s, zp, qmin, qmax = case["act"]
    want = _unfolded_conv_reference(x, w, corr, scale, (s, zp, qmin, qmax), fb, groups, (3, 3))
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            for packed in layouts:
                got = ops.conv2d_int8(x, packed, bits, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, s, zp, qmin, qmax,
                                      fb, groups)
                assert got.shape == (B, N, HW, HW) and torch.equal(got.reshape(B, N, -1), want), (isa, packed.shape)
    finally:
        qatkit._C.set_cpu_isa(old)


# The AVX-512 table's direct route for K <= 256 (conv_s8: the planes read straight into tiles of 16
# output pixels, one per vector lane; other tables and larger K take the patch rows): (B, C, H = W,
# N, kernel, stride, groups). Tiles along one output row (16 and 18 wide: then a tile over two rows
# and a tail), over 2 or 4 rows (8- and 4-wide outputs), across images (5 wide); column stride 2 (even
# bytes; a 7 x 7 stem over 3 channels), stride 3 (patch rows); K not a multiple of 4 (27, 147: the
# taps padded with zero weights); N = 13 leaves a channel tail past blocks of 4; grouped; 70-wide rows
# (rows of 64+ codes: quantized row by row straight into the planes).
S8_DIRECT_CASES = [(3, 3, 16, 13, 3, 1, 1), (2, 16, 18, 16, 3, 1, 1), (3, 8, 8, 16, 3, 1, 1), (5, 16, 4, 13, 3, 1, 1),
                   (3, 24, 5, 16, 3, 1, 1), (2, 3, 32, 13, 3, 2, 1), (2, 3, 23, 16, 7, 2, 1), (3, 16, 16, 16, 3, 2, 2),
                   (2, 8, 17, 13, 3, 3, 1), (4, 28, 8, 24, 3, 1, 1), (2, 3, 70, 13, 3, 1, 1)]


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("B,C,HW,N,k,stride,groups", S8_DIRECT_CASES)
def test_conv2d_int8_direct_tiles_equal_the_unfolded_gemm(bits, B, C, HW, N, k, stride, groups):
    """conv2d_int8 (padding k // 2) equals linear_int8 over F.unfold's patches, group by group, on
    every ISA at 1, 2 and 3 threads, in every weight layout and both memory formats, whichever form
    each tile of output pixels takes."""
    g = torch.Generator().manual_seed(29)
    x = torch.randn(B, C, HW, HW, generator=g) * 2
    K = C // groups * k * k
    case = conv_int8_case(bits, N, K, groups, g)
    w, layouts, corr, scale, fb = case["w"], case["layouts"], case["corr"], case["scale"], case["bias"]
    s, zp, qmin, qmax = case["act"]
    st, pad = (stride, stride), (k // 2, k // 2)
    want = _unfolded_conv_reference(x, w, corr, scale, (s, zp, qmin, qmax), fb, groups, (k, k), st, pad)
    ho = (HW + 2 * (k // 2) - k) // stride + 1

    def check(isa, t):
        for packed in layouts:
            for fmt in (torch.contiguous_format, torch.channels_last):
                got = ops.conv2d_int8(x.contiguous(memory_format=fmt), packed, bits, (k, k), st, pad, (1, 1), corr,
                                      scale, s, zp, qmin, qmax, fb, groups)
                assert got.shape == (B, N, ho, ho) and got.is_contiguous(memory_format=fmt), (isa, t, fmt)
                assert torch.equal(got.reshape(B, N, -1), want), (isa, t, packed.shape, fmt)

    on_every_isa_and_thread_count(check)


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_int8_of_no_input_channels_is_the_requantized_corr(bits, groups):
    """C = 0 (K = 0: an empty sum) gives linear_int8's output on an empty K, fp32(corr[n]) *
    out_scale[n] + bias[n], at every output position, on every ISA and thread count (it raised
    SIGFPE or SIGSEGV on every table before 2026-12-07)."""
    g = torch.Generator().manual_seed(31)
    N = 6
    corr = torch.randint(-300, 300, (N,), dtype=torch.int32, generator=g)
    scale, bias = torch.rand(N, generator=g), torch.randn(N, generator=g)
    w = torch.zeros(N, 0, dtype=torch.int8 if bits == 8 else torch.uint8)
    want = ops.linear_int8(torch.zeros(1, 0), torch.zeros(N, 0, dtype=torch.int8), corr, scale, 0.02, 9, 0, 255, bias)
    x = torch.randn(3, 0, 5, 4)

    def check(isa, t):
        y = ops.conv2d_int8(x, w, bits, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, 0.02, 9, 0, 255, bias, groups)
        assert y.shape == (3, N, 5, 4), (isa, t)
        assert torch.equal(y, want.reshape(1, N, 1, 1).expand(3, N, 5, 4)), (isa, t)

    on_every_isa_and_thread_count(check)


def _layout_like(bits, w, panel):
    """w's codes in one of conv_int8_case's layouts: int8 rows padded to 32 or (panel) the panel,
    pack_ternary_t2, pack_binary_b1."""
    import torch.nn.functional as F

    if bits == 2:
        return ops.pack_ternary_t2(w)
    if bits == 1:
        return ops.pack_binary_b1(w)
    return ops.pack_int8_panel(w) if panel else F.pad(w, (0, -w.shape[1] % 32)).contiguous()


def _non_contiguous_copy(t):
    """t's values in a tensor that is not contiguous (every other element of a twice-as-long last dim)."""
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    big[..., ::2] = t
    return big[..., ::2]


# Small maps (8 x 8: 64 patch rows per image, chunks of 8 images) with an image for every thread:
# each thread runs the batched GEMM on its own images (20 images at 2 threads: 10 each, chunks of 8
# and 2); with fewer images than threads every step is split across the threads instead
# (csrc/ops/cpu/qgemm_conv_kernel.cpp, images_by_thread).
@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("B", [1, 3, 20])
@pytest.mark.parametrize("groups", [1, 2])
def test_small_map_convs_split_images_or_steps_across_threads(bits, B, groups):
    g = torch.Generator().manual_seed(37 + B)
    C, N, HW = 8, 24, 8
    x = torch.randn(B, C, HW, HW, generator=g) * 2
    case = conv_int8_case(bits, N, C // groups * 9, groups, g)
    corr, scale, fb, act = case["corr"], case["scale"], case["bias"], case["act"]
    want = _unfolded_conv_reference(x, case["w"], corr, scale, act, fb, groups, (3, 3))

    def check(isa, t):
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            for packed in case["layouts"]:
                got = ops.conv2d_int8(xi, packed, bits, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, *act, fb, groups)
                assert torch.equal(got.reshape(B, N, -1), want), (isa, t, xi.is_contiguous(), packed.shape)

    on_every_isa_and_thread_count(check)


@pytest.mark.parametrize("B", [1, 3, 20])
def test_small_map_xnor_convs_split_images_or_steps_across_threads(B):
    """conv2d_w1a1 on 8 x 8 maps with 33-byte bit rows (the batched path at any image count), as the
    test above."""
    g = torch.Generator().manual_seed(41 + B)
    C, N = 29, 40  # K = 261 codes: bit rows of 33 bytes
    x = torch.randn(B, C, 8, 8, generator=g)
    w = (torch.randint(0, 2, (N, C, 3, 3), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    want = xnor_conv_reference(x, w, ws, fb, (1, 1), (1, 1), (1, 1))
    packed = ops.pack_binary_b1(w.reshape(N, -1))

    def check(isa, t):
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            got = ops.conv2d_w1a1(xi, packed, (3, 3), (1, 1), (1, 1), (1, 1), ws, fb)
            assert torch.equal(got, want), (isa, t, xi.is_contiguous())

    on_every_isa_and_thread_count(check)


@pytest.mark.parametrize("bits,B,C,HW,N,groups", [
    (8, 5, 8, 6, 20, 1),  # channels-last patch rows: the reordered weight (the panel's split records too)
    (8, 3, 8, 5, 24, 2),  # the same per group (int8 rows)
    (2, 6, 8, 6, 16, 2),  # ternary from 8N patch rows: widened to an int8 panel, channels-last
    (1, 6, 8, 6, 16, 1),  # binary, the same
    (8, 3, 8, 6, 8, 8),  # depthwise: the weight's codes as int16 [taps, N] (the channels-last kernel)
    (8, 3, 4, 9, 8, 4),  # depthwise, 2 outputs per channel on 9-pixel rows: [N, taps] (the planar kernel)
    (1, 3, 8, 6, 8, 8),  # binary depthwise, the same as the first
])
def test_conv2d_int8_holds_a_derived_weight_until_the_weight_changes(bits, B, C, HW, N, groups):
    """The forms conv2d_int8 derives from a constant weight (the channels-last reorder with the
    panel's split records, 2- and 1-bit weights widened to an int8 panel, a depthwise conv's weight
    codes as int16) are computed once and held
    (qatkit/weight_cache.h): the second call hits. An in-place write to the weight (its version), a
    new weight, possibly at a freed one's address (its storage), a non-contiguous or an inference
    weight (never held) each give the form of the weight the call saw: every output equals the
    unfolded GEMM of that weight."""
    g = torch.Generator().manual_seed(31)
    x = torch.randn(B, C, HW, HW, generator=g) * 2
    K = C // groups * 9
    case = conv_int8_case(bits, N, K, groups, g)
    corr, scale, fb = case["corr"], case["scale"], case["bias"]
    act = case["act"]

    def conv(packed):
        return ops.conv2d_int8(x, packed, bits, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, *act, fb, groups)

    def want(w):
        return _unfolded_conv_reference(x, w, corr, scale, act, fb, groups, (3, 3)).reshape(B, N, HW, HW)

    info = qatkit._C.derived_weight_cache_info
    layouts, case["layouts"] = case["layouts"], None
    while layouts:
        packed = layouts.pop(0)
        panel = packed.dim() == 3
        qatkit._C.clear_derived_weight_cache()
        i0 = info()
        assert i0["entries"] == 0 and i0["capacity_bytes"] > 0
        assert torch.equal(conv(packed), want(case["w"]))
        i1 = info()
        assert (i1["entries"], i1["misses"] - i0["misses"], i1["hits"] - i0["hits"]) == (1, 1, 0)
        assert torch.equal(conv(packed), want(case["w"]))
        assert info()["hits"] - i1["hits"] == 1
        # an in-place write: the next call derives the form again (the stale entry goes)
        w2 = case["w"].flip(0).contiguous()
        packed.copy_(_layout_like(bits, w2, panel))
        assert torch.equal(conv(packed), want(w2))
        assert info()["entries"] == 1 and info()["misses"] - i1["misses"] == 1
        # a new weight (after the old one is freed: often at its address)
        del packed
        w3 = case["w"].roll(1, 1).contiguous()
        packed3 = _layout_like(bits, w3, panel)
        assert torch.equal(conv(packed3), want(w3))
        # never held: a non-contiguous weight, an inference tensor
        n_before = info()["entries"]
        assert torch.equal(conv(_non_contiguous_copy(packed3)), want(w3))
        with torch.inference_mode():
            inf = packed3.clone()
        assert inf.is_inference() and torch.equal(conv(inf), want(w3))
        assert info()["entries"] == n_before
    qatkit._C.clear_derived_weight_cache()


def test_conv2d_w1a1_holds_its_reordered_weight_until_the_weight_changes():
    """conv2d_w1a1's channels-last patch rows take the weight bits reordered once and held (and,
    where the table's GEMM reads them, the reordered rows' 16-row blocks: a second entry); the second
    call derives nothing; an in-place write to the packed weight gives the new weight's conv."""
    g = torch.Generator().manual_seed(37)
    x = torch.randn(5, 8, 6, 6, generator=g)
    w = (torch.randint(0, 2, (20, 8, 3, 3), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(20, generator=g) + 0.1, torch.randn(20, generator=g)
    packed = ops.pack_binary_b1(w.reshape(20, -1))
    qatkit._C.clear_derived_weight_cache()
    seen = []
    for _ in range(2):
        got = ops.conv2d_w1a1(x, packed, (3, 3), (1, 1), (1, 1), (1, 1), ws, fb)
        assert torch.equal(got, xnor_conv_reference(x, w, ws, fb, (1, 1), (1, 1), (1, 1)))
        seen.append(qatkit._C.derived_weight_cache_info())
    assert seen[0]["entries"] in (1, 2) and seen[1]["entries"] == seen[0]["entries"]
    assert seen[1]["misses"] == seen[0]["misses"] and seen[1]["hits"] >= seen[0]["hits"] + 1
    w2 = -w
    packed.copy_(ops.pack_binary_b1(w2.reshape(20, -1)))
    got = ops.conv2d_w1a1(x, packed, (3, 3), (1, 1), (1, 1), (1, 1), ws, fb)
    assert torch.equal(got, xnor_conv_reference(x, w2, ws, fb, (1, 1), (1, 1), (1, 1)))
    qatkit._C.clear_derived_weight_cache()


def test_weight_cache_capacity_from_the_environment():
    """QATKIT_WEIGHT_CACHE_MB sets the cache's capacity; 0 holds nothing (each call derives)."""
    import subprocess
    import sys

    code = ("import torch, qatkit; from qatkit import ops; "
            "x = torch.randn(5, 8, 6, 6); w = ops.pack_int8_panel(torch.randint(-127, 128, (20, 72), dtype=torch.int8)); "
            "f = lambda: ops.conv2d_int8(x, w, 8, (3, 3), (1, 1), (1, 1), (1, 1), torch.zeros(20, dtype=torch.int32), "
            "torch.ones(20), 0.04, 0, 0, 255, None, 1); "
            "a = f(); b = f(); assert torch.equal(a, b); i = qatkit._C.derived_weight_cache_info(); "
            "print(i['capacity_bytes'], i['entries'], i['misses'])")
    for mb, want in (("0", "0 0"), ("3", f"{3 << 20} 1"), ("abc", f"{256 << 20} 1"), ("-5", f"{256 << 20} 1")):
        env = {**__import__("os").environ, "QATKIT_WEIGHT_CACHE_MB": mb}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split()[:2] == want.split(), out.stdout
        # a value it cannot use is ignored with a warning, not silently
        assert (f"QATKIT_WEIGHT_CACHE_MB='{mb}' is not a whole number" in out.stderr) == (mb in ("abc", "-5")), out.stderr


def test_an_isa_the_environment_names_that_cannot_run_warns():
    """QATKIT_CPU_ISA with a name the library does not know (or a table this CPU lacks) is ignored
    by the library: importing qatkit says so and which kernels run."""
    import subprocess
    import sys

    code = "import qatkit; print(qatkit._C.cpu_isa())"
    for value, warns in (("avx1024", "is not one of 'baseline', 'avx2', 'avx512', 'amx'"), ("baseline", None)):
        env = {**__import__("os").environ, "QATKIT_CPU_ISA": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        if warns:
            assert warns in out.stderr and f"QATKIT_CPU_ISA='{value}'" in out.stderr, out.stderr
        else:
            assert "QATKIT_CPU_ISA" not in out.stderr and out.stdout.split() == ["baseline"], (out.stdout, out.stderr)


@pytest.mark.parametrize("B,C,HW,N", [(1, 16, 3, 40), (2, 16, 17, 8), (1, 16, 17, 8), (5, 8, 6, 20), (1, 5, 3, 40),
                                     (1, 5, 17, 8),
                                     # byte runs of 3, 5, 6, 12 and 17 bytes (copy_run's overlapping copies)
                                     (2, 24, 5, 8), (2, 40, 5, 8), (1, 48, 4, 8), (2, 96, 4, 8), (1, 136, 3, 8),
                                     # a 1-channel input: the depthwise kernels on its codes
                                     (3, 1, 9, 8), (1, 1, 17, 12), (2, 1, 6, 8)])
def test_conv2d_w1a1_im2col_paths_equal_the_direct_conv_of_the_codes(B, C, HW, N):
    """conv2d_w1a1's channels-last patch rows as byte copies (C a multiple of 8: runs of C / 8 bytes
    per tap) or code by code (C = 5; C = 1 takes the depthwise kernels), 9 rows against 40 outputs or more; one GEMM per image of 289
    positions (images in parallel, or one image's rows and columns), or several small images' rows
    in one GEMM; against the float64 conv of the codes, on every ISA."""
    g = torch.Generator().manual_seed(29)
    x = torch.randn(B, C, HW, HW, generator=g)
    w = (torch.randint(0, 2, (N, C, 3, 3), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    want = xnor_conv_reference(x, w, ws, fb, (1, 1), (1, 1), (1, 1))
    packed = ops.pack_binary_b1(w.reshape(N, -1))
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            assert torch.equal(ops.conv2d_w1a1(x, packed, (3, 3), (1, 1), (1, 1), (1, 1), ws, fb), want), isa
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("B,C,HW,N,k", [
    (2, 16, 17, 40, 1),   # rows of 4 bytes (a 1x1 conv from 16 channels): 18 blocks of 16 rows, a 1-row tail
    (1, 16, 17, 40, 1),   # one image: its columns split across the threads
    (2, 16, 6, 24, 1),    # 36 rows per image (under the batched form's 256: per image as K <= 128)
    (2, 16, 17, 20, 3),   # 3 x 3, rows of 20 bytes: the transposed kernel
    (2, 512, 16, 20, 3),  # rows of 576 bytes (K = 4608): the blocked kernel's rows, transposed after
    # 1 x 1 from C a multiple of 32: the pixels' bits packed straight into the rows (no row copies)
    (2, 32, 17, 40, 1),   # an image per thread
    (1, 64, 16, 24, 1),   # one image on the calling thread
    (3, 96, 6, 24, 1),    # 36 positions an image, per image as K <= 128
    (1, 32, 8, 24, 1),    # one image of 64 positions: the batched form's rows (byte copies) instead
    # 1 x 1 from 8 or 24 channels (rows of 4 bytes, the pixel's 1 or 3 then zeros): the pixels' bits
    # packed in one call, each row widened from them
    (2, 8, 17, 40, 1),    # an image per thread
    (1, 24, 16, 24, 1),   # one image: its rows split across the threads
])
def test_conv2d_w1a1_writes_nchw_planes_directly(B, C, HW, N, k):
    """An NCHW XNOR conv of 16+ positions per image whose table writes column-major outputs
    (AVX-512 with VPOPCNTDQ: 16-row blocks transposed in registers) takes the GEMM's output
    straight into the image's planes, with no [L, N] buffer; every table and form equals the
    float64 conv of the codes, as does the channels_last input's (row-major) output."""
    g = torch.Generator().manual_seed(C + HW + N)
    x = torch.randn(B, C, HW, HW, generator=g)
    w = (torch.randint(0, 2, (N, C, k, k), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    p = (k // 2, k // 2)
    want = xnor_conv_reference(x, w, ws, fb, (1, 1), p, (1, 1))
    packed = ops.pack_binary_b1(w.reshape(N, -1))
    xc = x.contiguous(memory_format=torch.channels_last)
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            got = ops.conv2d_w1a1(x, packed, (k, k), (1, 1), p, (1, 1), ws, fb)
            assert got.is_contiguous() and torch.equal(got, want), isa
            assert torch.equal(ops.conv2d_w1a1(xc, packed, (k, k), (1, 1), p, (1, 1), ws, fb), want), isa
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("B,C", [(3, 40), (1, 40), (2, 16), (1, 7), (1, 96)])
@pytest.mark.parametrize("geom", [dict(s=(1, 1), p=(1, 1), d=(1, 1)), dict(s=(2, 2), p=(1, 1), d=(1, 1)),
                                  dict(s=(2, 1), p=(2, 0), d=(1, 2))])
@pytest.mark.parametrize("H,W", [(9, 11), (5, 6), (4, 7)])  # rows under 8 pixels: the whole image transposed
def test_depthwise_conv2d_int8_channels_last_equals_the_unfolded_gemm(bits, B, C, geom, H, W):
    """Depthwise convs with one output per input channel run channels-last (16 channels per step,
    taps in pairs; the last C % 16 channels apart; the [Ho, Wo, C] output transposed into NCHW in
    8 x 8 blocks and edges; at stride 1, one image on a table with flat planes runs planar, as in
    test_depthwise_planes_at_stride_1_equal_the_unfolded_gemm): each channel equals linear_int8 over its unfolded patches, on every ISA,
    with strides, dilations, asymmetric padding and maps whose sizes are not multiples of 8. One
    image with more threads than images splits every step across the threads (1 x 96: the
    quantization in three blocks of channels, the transposes by rows). Rows narrower than 8 pixels
    transpose the whole image at once, then copy each row into the padded layout."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(31)
    k = (3, 3)
    x = torch.randn(B, C, H, W, generator=g) * 2
    if bits == 8:
        w = torch.randint(-127, 128, (C, 9), dtype=torch.int8, generator=g)
        packed = F.pad(w, (0, 23)).contiguous()
    elif bits == 2:
        w = torch.randint(-1, 2, (C, 9), dtype=torch.int8, generator=g)
        packed = ops.pack_ternary_t2(w)
    else:
        w = (torch.randint(0, 2, (C, 9), generator=g) * 2 - 1).to(torch.int8)
        packed = ops.pack_binary_b1(w)
    s, zp, qmin, qmax = 0.04, 9, 0, 255
    corr = (torch.randint(-300, 300, (C,), generator=g) + (128 - zp) * w.long().sum(1)).int()
    scale, fb = torch.rand(C, generator=g) * 1e-2, torch.randn(C, generator=g)
    geo = (geom["s"], geom["p"], geom["d"])
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            for bias in (fb, None):
                got = ops.conv2d_int8(x, packed, bits, k, geom["s"], geom["p"], geom["d"], corr, scale, s, zp, qmin, qmax,
                                      bias, C)
                ref = _unfolded_conv_reference(x, w, corr, scale, (s, zp, qmin, qmax), bias, C, k, *geo)
                assert torch.equal(got.reshape(B, C, -1), ref), (isa, bias is None)
    finally:
        qatkit._C.set_cpu_isa(old)


def _check_depthwise_planes(bits, k, stride, p, d, H, W, mult, seed):
    """Every output channel of a 5-channel NCHW depthwise conv (mult outputs each, a NaN in the last
    image) equals linear_int8 over its unfolded patches, on every ISA, with and without a bias, three
    images and one, NCHW and channels_last; the NaN makes exactly the outputs whose window reads it NaN."""
    g = torch.Generator().manual_seed(seed)
    C = 5
    N = C * mult
    x = torch.randn(3, C, H, W, generator=g) * 2
    x[2, C - 1, H // 2, W // 2] = float("nan")
    case = conv_int8_case(bits, N, k[0] * k[1], C, g)
    w, packed, corr, scale, fb = case["w"], case["layouts"][0], case["corr"], case["scale"], case["bias"]
    act = case["act"]
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            for bias in (fb, None):
                want = _unfolded_conv_reference(x, w, corr, scale, act, bias, C, k, stride, p, d)
                assert bool(want.isnan().any()) and not bool(want[:2].isnan().any())
                for xb, wb in ((x, want), (x[:1].contiguous(), want[:1])):
                    got = ops.conv2d_int8(xb, packed, bits, k, stride, p, d, corr, scale, *act, bias, C)
                    assert same_bits(got.reshape(wb.shape), wb), (isa, bias is None, xb.shape[0])
                xc = x.contiguous(memory_format=torch.channels_last)  # the NHWC form's quantization
                got = ops.conv2d_int8(xc, packed, bits, k, stride, p, d, corr, scale, *act, bias, C)
                assert same_bits(got.reshape(want.shape), want), (isa, bias is None, "channels_last")
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("k,p,d,H,W", [
    ((3, 3), (1, 1), (1, 1), 9, 11),   # 3 x 3 (five pairs of taps): a 32-position step spans rows
    ((3, 3), (1, 1), (1, 1), 6, 17),   # the same, rows of 16+ pixels: planar with one image per thread too
    ((3, 3), (1, 1), (1, 1), 5, 30),   # padded rows of exactly 32 codes
    ((3, 3), (1, 1), (1, 1), 4, 45),   # rows longer than a step: steps within and across rows
    ((5, 5), (2, 2), (1, 1), 6, 16),   # 25 taps: pairs at run time, the odd last tap against a zero weight
    ((1, 1), (0, 0), (1, 1), 3, 20),   # one tap, no padding: the run is the plane
    ((2, 3), (1, 0), (2, 1), 8, 16),   # dilated rows, asymmetric padding, an even tap count
    ((3, 3), (0, 2), (1, 2), 5, 18),   # dilated columns
    ((13, 11), (6, 5), (1, 1), 14, 17),  # 143 taps: past the flat kernels' 64 pairs, the loop instead
    ((3, 3), (1, 1), (1, 1), 2, 16400),  # padded rows over 16384 codes (the flat kernels' int16 columns): the loop
])
@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_planes_at_stride_1_equal_the_unfolded_gemm(bits, k, p, d, H, W, mult):
    """NCHW depthwise convs at stride 1 on rows of 16+ pixels (8+ with fewer images than threads; with
    several outputs per channel, on every table) run plane by plane (runs of planes padded in a
    per-thread buffer; on AVX-512 one flat run of the padded grid, 32 positions a step, the padding
    columns' lanes dropped as the output is stored), the others channels-last: every output channel equals
    linear_int8 over its unfolded patches, on every ISA, with and without a bias, one image and
    three. A NaN input makes exactly the outputs whose window reads it NaN: the planes'
    quantization reports it (no second pass over the input), in NCHW and channels_last alike."""
    _check_depthwise_planes(bits, k, (1, 1), p, d, H, W, mult, 33 + W + mult)


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("k,p,H,W", [
    ((3, 3), (1, 1), 9, 16),    # padded rows of 18 codes: parity planes 9 wide (several outputs a channel)
    ((3, 3), (1, 1), 5, 48),    # rows of 48 pixels: one output a channel too
    ((3, 3), (1, 1), 4, 49),    # an odd padded width (51): the odd-column planes a column shorter
    ((3, 3), (0, 0), 7, 50),    # no padding, an odd row count
    ((3, 3), (0, 0), 4, 49),    # no padding, an odd width: the last even column is the input's
    ((5, 5), (2, 2), 6, 49),    # 25 taps: pairs at run time, taps two rows / columns into a plane
    ((3, 3), (1, 1), 3, 70),    # padded rows over 64 codes: the split's second step, under masks
    ((2, 3), (1, 0), 5, 48),    # an even tap count, asymmetric padding
])
@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_planes_at_stride_2_equal_the_unfolded_gemm(bits, k, p, H, W, mult):
    """NCHW depthwise convs at stride 2 (undilated) on rows of 48+ pixels (16+ with several outputs
    per channel), on a table that splits planes (AVX-512): each padded plane split into its four row /
    column parity planes, over which the conv is the stride-1 flat run (tap (i, j) reads parity plane
    (i % 2, j % 2) at row + i / 2, column + j / 2); narrower rows and the other tables channels-last.
    Every output channel equals linear_int8 over its unfolded patches, on every ISA, with and without
    a bias, one image and three, NCHW and channels_last; a NaN input makes exactly the outputs whose
    window reads it NaN."""
    _check_depthwise_planes(bits, k, (2, 2), p, (1, 1), H, W, mult, 41 + W + mult)


@pytest.mark.parametrize("B", [1, 3])
def test_depthwise_conv2d_int8_reused_buffers_hold_each_calls_padding(B):
    """The channels-last depthwise path keeps its image buffers per thread between calls and writes
    only the padding's border with the zero point's code: a call after one with no padding (whose
    image pixels fill that border's places) or another zero point still pads with its own code. One
    image (every step split across the threads) and three (one image per thread)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(32)
    C, H, W, k = 40, 9, 11, (3, 3)
    x = torch.randn(B, C, H, W, generator=g) * 2
    w = torch.randint(-127, 128, (C, 9), dtype=torch.int8, generator=g)
    packed = F.pad(w, (0, 23)).contiguous()
    scale = torch.rand(C, generator=g) * 1e-2
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            for zp, pad in [(9, (0, 0)), (200, (1, 1)), (0, (2, 1)), (9, (0, 0)), (128, (1, 2)), (255, (2, 2))]:
                corr = (torch.randint(-300, 300, (C,), generator=g) + (128 - zp) * w.long().sum(1)).int()
                got = ops.conv2d_int8(x, packed, 8, k, (1, 1), pad, (1, 1), corr, scale, 0.04, zp, 0, 255, None, C)
                ref = _unfolded_conv_reference(x, w, corr, scale, (0.04, zp, 0, 255), None, C, k, (1, 1), pad, (1, 1))
                assert torch.equal(got.reshape(B, C, -1), ref), (isa, zp, pad)
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("B,C,H,W,N,groups,k,stride", [
    (2, 16, 9, 9, 16, 16, 3, 1),   # depthwise: the NHWC rows quantized straight into the padded pixels
    (2, 33, 6, 5, 33, 33, 3, 1),   # the same with rows of 165 codes (a tail after 8-code steps)
    (2, 8, 9, 10, 24, 8, 3, 1),    # depthwise, multiplier 3: each NHWC pixel's codes repeated
    (3, 12, 5, 6, 12, 12, 3, 2),   # depthwise on a narrow map, stride 2
    (8, 16, 4, 4, 40, 1, 1, 1),    # 1x1, few positions: several images' rows in one GEMM, into the output;
                                   # unpadded: quantized straight into the layout, its pixels the GEMM rows
    (1, 32, 17, 17, 24, 1, 1, 1),  # 1x1, one image of 289 pixels: its pixels the GEMM rows, in parallel
    (1, 8, 17, 17, 20, 1, 3, 1),   # 3x3, 289 positions per image: one GEMM per image, channels-last rows
    (1, 8, 3, 3, 40, 1, 3, 1),     # 9 patch rows against 40 outputs (2 / 1 bits: the packed codes)
    (2, 8, 6, 6, 12, 2, 3, 2),     # grouped
    (2, 1, 8, 8, 8, 1, 3, 1),      # a 1-channel input: NCHW and NHWC are one layout (NCHW output)
])
def test_conv2d_int8_channels_last_input_gives_the_nchw_bits_channels_last(bits, B, C, H, W, N, groups, k, stride):
    """A channels_last input is read as NHWC (no transposes) and gives a channels_last output (the
    rule of torch's own convs: the input's suggested memory format) with the NCHW input's bits, on
    every path and ISA; opcheck holds the Meta kernel to the same strides. Padding k // 2 (1x1
    convs unpadded)."""
    g = torch.Generator().manual_seed(B * 100 + C * 10 + N)
    x = torch.randn(B, C, H, W, generator=g) * 2
    xc = x.contiguous(memory_format=torch.channels_last)
    case = conv_int8_case(bits, N, C // groups * k * k, groups, g)
    s, zp, qmin, qmax = case["act"]
    args = ((k, k), (stride, stride), (k // 2, k // 2), (1, 1), case["corr"], case["scale"], s, zp, qmin, qmax,
            case["bias"], groups)
    want_cl = C > 1  # a 1-channel channels_last tensor is NCHW-contiguous too: torch keeps NCHW
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            for packed in case["layouts"]:
                want = ops.conv2d_int8(x, packed, bits, *args)
                ops.conv2d_int8(-x, packed, bits, *args)  # the reused scratch buffers hold other codes
                got = ops.conv2d_int8(xc, packed, bits, *args)
                assert torch.equal(got, want), (isa, tuple(packed.shape))
                if want_cl:
                    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous(), got.stride()
                else:
                    assert got.is_contiguous(), got.stride()
    finally:
        qatkit._C.set_cpu_isa(old)
    torch.library.opcheck(torch.ops.qatkit.conv2d_int8.default,
                          (xc, case["layouts"][0], bits, [k, k], [stride, stride], [k // 2] * 2, [1, 1], *args[4:]))


def test_conv2d_int8_opcheck_and_errors():
    x = torch.randn(2, 3, 6, 6)
    w = torch.randint(-127, 128, (4, 27), dtype=torch.int8)
    corr, scale = torch.zeros(4, dtype=torch.int32), torch.ones(4)
    args = (x, w, 8, [3, 3], [1, 1], [1, 1], [1, 1], corr, scale, 0.1, 0, -128, 127)
    torch.library.opcheck(torch.ops.qatkit.conv2d_int8.default, args)
    with pytest.raises(ValueError, match="weight_bits must be 8, 2 or 1"):
        ops.conv2d_int8(x, w, 4, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match=r"32 bytes per row .* \(or 27\), got 20"):
        ops.conv2d_int8(x, w[:, :20], 8, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match="input must be 4-D"):
        ops.conv2d_int8(x[0], w, 8, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match="stride must be two integers >= 1"):
        ops.conv2d_int8(x, w, 8, (3, 3), (0, 1), (1, 1), (1, 1), corr, scale, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        ops.conv2d_int8(x, w, 8, (3, 3), (1, 1), (0, 0), (4, 4), corr, scale, 0.1, 0, -128, 127)


@pytest.mark.parametrize("op", ["conv2d_int8", "conv2d_w1a1"])
def test_conv_geometry_beyond_int64_or_memory_is_an_error(op):
    """A geometry whose sizes would overflow int64 (a corrupt file's padding of 2^41, the C++ loader's
    fuzz under UBSan found it) is a ValueError naming the argument; one that passes the bounds but
    does not fit in memory (padding 2^18 against stride 2^16: a 2^39-code padded image) is
    torch.OutOfMemoryError, not a std::bad_alloc or a crash; either format."""
    x = torch.randn(1, 2, 4, 4)
    codes = (torch.randint(0, 2, (3, 18)) * 2 - 1).to(torch.int8)
    if op == "conv2d_int8":
        corr, scale = torch.zeros(3, dtype=torch.int32), torch.ones(3)
        run = lambda x, k, st, p, d: ops.conv2d_int8(x, codes, 8, k, st, p, d, corr, scale, 0.1, 0, -128, 127)  # noqa: E731
    else:
        packed = ops.pack_binary_b1(codes)
        run = lambda x, k, st, p, d: ops.conv2d_w1a1(x, packed, k, st, p, d, torch.ones(3), None)  # noqa: E731
    for xf in (x, x.contiguous(memory_format=torch.channels_last)):
        with pytest.raises(ValueError, match=r"padding must be at most 16777216, got \[2199023255558, 1\]"):
            run(xf, (3, 3), (1, 1), (2199023255558, 1), (1, 1))
        with pytest.raises(ValueError, match="kernel_size must be at most 4096"):
            run(xf, (3, 5000), (1, 1), (1, 1), (1, 1))
        with pytest.raises(ValueError, match="stride must be at most 65536"):
            run(xf, (3, 3), (1 << 17, 1), (1, 1), (1, 1))
        with pytest.raises(ValueError, match="dilation must be at most 65536"):
            run(xf, (3, 3), (1, 1), (1, 1), (1 << 17, 1))
        with pytest.raises(ValueError, match="larger than 2\\^40 codes"):
            run(xf, (3, 3), (1, 1), (1 << 24, 1 << 24), (1, 1))
        # (under scripts/sanitize.sh ASan's allocator aborts on a 2^39-byte request instead of
        # letting operator new throw: that case runs in the regular build only)
        if not os.environ.get("QATKIT_SANITIZED"):
            with pytest.raises(torch.OutOfMemoryError, match=f"{op}: out of memory"):
                run(xf, (3, 3), (1 << 16, 1 << 16), (1 << 18, 1 << 18), (1, 1))
