"""The low-bit integer Linears: ternary W2A8 (ops.linear_w2a8), binary W1A8 (ops.linear_w1a8) and
XNOR W1A1 (ops.linear_w1a1, ops.conv2d_w1a1): bit for bit against the int8 kernel on the unpacked
codes or the integer formula, on every CPU ISA this machine runs; packing; opcheck; errors."""


import pytest
import torch

import qatkit
from qatkit import ops
from qatkit.testing.integer import (
    isas,
    linear_int8_case,
    linear_int8_reference,
    on_every_isa_and_thread_count,
    xnor_conv_reference,
)

# ---------------------------------------------------------------- ternary W2A8


@pytest.mark.parametrize("M,N,K", [(1, 4, 128), (1, 37, 133), (5, 16, 64), (3, 9, 1), (2, 64, 257), (0, 8, 16),
                                   (4, 5, 384), (1, 70, 1000), (3, 33, 512)])
@pytest.mark.parametrize("qrange,zp", [((0, 255), 3), ((-128, 127), -7)])
def test_w2a8_equals_the_int8_kernel_on_the_unpacked_codes(M, N, K, qrange, zp):
    x, _, _, scale, s, zp, qmin, qmax, bias_q = linear_int8_case(M, N, K, qrange, zp)
    g = torch.Generator().manual_seed(5)
    w = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=g)
    shift = 128 if qmin >= 0 else 0
    corr = (bias_q.long() + (shift - zp) * w.long().sum(1)).int()
    want = linear_int8_reference(x, w, bias_q, scale, s, zp, qmin, qmax)
    fb = torch.randn(N, generator=g)
    want_b = linear_int8_reference(x, w, torch.zeros_like(bias_q), scale, s, zp, qmin, qmax) + fb
    corr0 = ((shift - zp) * w.long().sum(1)).int()
    packed = ops.pack_ternary_t2(w)
    assert packed.dtype == torch.uint8 and packed.shape == (N, (K + 127) // 128 * 32)
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            assert torch.equal(ops.linear_w2a8(x, packed, corr, scale, s, zp, qmin, qmax), want), isa
            # float bias after the requantization (layers narrower than W8A8): multiply, then add
            assert torch.equal(ops.linear_w2a8(x, packed, corr0, scale, s, zp, qmin, qmax, fb), want_b), isa
            assert torch.equal(ops.linear_int8(x, w, corr0, scale, s, zp, qmin, qmax, fb), want_b), isa
    finally:
        qatkit._C.set_cpu_isa(old)


def test_pack_ternary_t2_layout_and_errors():
    w = torch.tensor([[-1, 0, 1] * 43 + [1]], dtype=torch.int8)  # K = 130 -> K_pad = 256
    p = ops.pack_ternary_t2(w)
    assert p.shape == (1, 64)
    c = (w.long() + 1)[0]
    for k in range(130):  # block b, byte j, bits 2i: k = 128 b + 32 i + j
        b, r = divmod(k, 128)
        i, j = divmod(r, 32)
        assert (int(p[0, b * 32 + j]) >> (2 * i)) & 3 == int(c[k]), k
    assert all((int(p[0, 32 + j]) >> (2 * i)) & 3 == 1 for j in range(32) for i in range(4) if 128 + 32 * i + j >= 130)
    with pytest.raises(ValueError, match="must lie in"):
        ops.pack_ternary_t2(torch.tensor([[2]], dtype=torch.int8))
    with pytest.raises(ValueError, match="must be 2-D"):
        ops.pack_ternary_t2(torch.zeros(3, dtype=torch.int8))


def test_w2a8_opcheck_and_errors():
    x, _, _, scale, s, zp, qmin, qmax, _ = linear_int8_case(3, 8, 130)
    w = torch.randint(-1, 2, (8, 130), dtype=torch.int8)
    p, corr = ops.pack_ternary_t2(w), torch.zeros(8, dtype=torch.int32)
    torch.library.opcheck(torch.ops.qatkit.linear_w2a8.default, (x, p, corr, scale, s, zp, qmin, qmax))
    with pytest.raises(TypeError, match="weight must be uint8"):
        ops.linear_w2a8(x, w, corr, scale, s, zp, qmin, qmax)
    with pytest.raises(ValueError, match="rounded up to a multiple of 128"):
        ops.linear_w2a8(x, p[:, :32], corr, scale, s, zp, qmin, qmax)
    with pytest.raises(ValueError, match="rounded up to a multiple of 128"):
        ops.linear_w2a8(x[:, :2], p, corr, scale, s, zp, qmin, qmax)


# ---------------------------------------------------------------- binary W1A8


# (8, 33, 64), (9, 40, 300), (12, 64, 2080): the AVX-512 panel kernel's 8- and 4-row tiles and single
# rows; (1, 70, 4000): the lookup-table kernel's int16 sums widened every 32 steps (K 256)
@pytest.mark.parametrize("M,N,K", [(1, 4, 32), (1, 37, 133), (5, 16, 64), (3, 9, 1), (2, 64, 600), (0, 8, 16),
                                   (4, 5, 256), (1, 70, 4000), (3, 33, 96), (8, 33, 64), (9, 40, 300), (12, 64, 2080)])
@pytest.mark.parametrize("qrange,zp", [((0, 255), 3), ((-128, 127), -7)])
def test_w1a8_equals_the_int8_kernel_on_the_unpacked_codes(M, N, K, qrange, zp):
    x, _, _, scale, s, zp, qmin, qmax, bias_q = linear_int8_case(M, N, K, qrange, zp)
    g = torch.Generator().manual_seed(6)
    w = (torch.randint(0, 2, (N, K), generator=g) * 2 - 1).to(torch.int8)
    shift = 128 if qmin >= 0 else 0
    corr = (bias_q.long() + (shift - zp) * w.long().sum(1)).int()
    want = linear_int8_reference(x, w, bias_q, scale, s, zp, qmin, qmax)
    fb = torch.randn(N, generator=g)
    corr0 = ((shift - zp) * w.long().sum(1)).int()
    want_b = linear_int8_reference(x, w, torch.zeros_like(bias_q), scale, s, zp, qmin, qmax) + fb
    packed = ops.pack_binary_b1(w)
    assert packed.dtype == torch.uint8 and packed.shape == (N, (K + 31) // 32 * 4)
    # the kernel layout is the file's 1-bit packing (pack_weights, bits=1, sign), padded to 32
    if K % 32 == 0 and N:
        assert torch.equal(packed, qatkit.ops.pack_weights(w, 1, 0, "sign"))
    panel = ops.pack_binary_panel(packed)  # what the loaders give a Linear
    assert panel.shape == ((N + 31) // 32, packed.shape[1], 32)
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            assert torch.equal(ops.linear_w1a8(x, packed, corr, scale, s, zp, qmin, qmax), want), isa
            assert torch.equal(ops.linear_w1a8(x, packed, corr0, scale, s, zp, qmin, qmax, fb), want_b), isa
            assert torch.equal(ops.linear_w1a8(x, panel, corr, scale, s, zp, qmin, qmax), want), isa
            assert torch.equal(ops.linear_w1a8(x, panel, corr0, scale, s, zp, qmin, qmax, fb), want_b), isa
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("M", [1, 4, 8])
@pytest.mark.parametrize("fill", [-1e9, 1e9])
@pytest.mark.parametrize("sign", [1, -1])
def test_w1a8_panel_at_the_extremes(M, fill, sign):
    """Every weight one sign and every code at the range's end over K = 8192: the lookup-table
    kernel's int16 step sums reach -32768 (codes -128 on +1 bits) and 32512 (codes 127) before they
    widen; equal to the float64 value (exact: |acc| <= 2^20) on every ISA."""
    N, K = 40, 8192
    x = torch.full((M, K), fill)
    w = torch.full((N, K), sign, dtype=torch.int8)
    panel = ops.pack_binary_panel(ops.pack_binary_b1(w))
    corr, scale = torch.zeros(N, dtype=torch.int32), torch.ones(N)
    code = -128 if fill < 0 else 127
    want = torch.full((M, N), float(sign * code * K))
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            assert torch.equal(ops.linear_w1a8(x, panel, corr, scale, 1.0, 0, -128, 127), want), isa
    finally:
        qatkit._C.set_cpu_isa(old)


def test_w1a8_opcheck_packing_and_errors():
    x, _, _, scale, s, zp, qmin, qmax, _ = linear_int8_case(3, 8, 70)
    w = (torch.randint(0, 2, (8, 70)) * 2 - 1).to(torch.int8)
    p, corr = ops.pack_binary_b1(w), torch.zeros(8, dtype=torch.int32)
    torch.library.opcheck(torch.ops.qatkit.linear_w1a8.default, (x, p, corr, scale, s, zp, qmin, qmax))
    with pytest.raises(ValueError, match="multiple of 32"):
        ops.linear_w1a8(x, p[:, :4], corr, scale, s, zp, qmin, qmax)
    with pytest.raises(TypeError, match="1-bit codes, packed"):
        ops.linear_w1a8(x, w, corr, scale, s, zp, qmin, qmax)
    with pytest.raises(ValueError, match="must lie in"):
        ops.pack_binary_b1(torch.zeros(2, 3, dtype=torch.int8))
    panel = ops.pack_binary_panel(p)
    torch.library.opcheck(torch.ops.qatkit.linear_w1a8.default, (x, panel, corr, scale, s, zp, qmin, qmax))
    torch.library.opcheck(torch.ops.qatkit.pack_binary_panel.default, (p,))
    with pytest.raises(ValueError, match=r"pack_binary_panel\) for N = 9 .* must have shape \[1, K_pad / 8, 32\]"):
        ops.linear_w1a8(x, panel[:, :, :16], torch.zeros(9, dtype=torch.int32), scale.repeat(2)[:9], s, zp, qmin, qmax)
    with pytest.raises(ValueError, match="multiple of 32"):
        ops.linear_w1a8(x, panel[:, :2], corr, scale, s, zp, qmin, qmax)
    with pytest.raises(TypeError, match="pack_binary_panel: weight must be uint8"):
        ops.pack_binary_panel(w)
    with pytest.raises(ValueError, match="K_pad a multiple of 32"):
        ops.pack_binary_panel(p[:, :3])


# ---------------------------------------------------------------- XNOR W1A1


def _xnor_reference(x, w, wscale, bias):
    """The "row" form from its formula: codes and alphas of binary_codes('bitnet', axis 0), int64
    sums of the codes, fp32(acc) * fp32(alpha[b] * wscale[n]) + bias."""
    q, alpha = ops.binary_codes(x, "bitnet", 0)
    acc = q.long() @ w.long().t()  # [B, ..., N]
    a = alpha.reshape([-1] + [1] * (acc.dim() - 1))
    y = acc.float() * (a * wscale)
    return y + bias if bias is not None else y


@pytest.mark.parametrize("shape,N", [((1, 32), 4), ((1, 133), 37), ((5, 64), 16), ((3, 1), 9), ((2, 600), 64),
                                     ((0, 16), 8), ((4, 2048), 5), ((3, 4, 96), 7), ((2, 1055), 3),
                                     ((40, 270), 37), ((33, 1100), 20), ((48, 4200), 3), ((3, 16500), 5),
                                     ((34, 16500), 3)])
def test_w1a1_equals_the_integer_reference_on_every_isa(shape, N):
    """Every ISA against the formula. AVX-512's kernels (VPOPCNTDQ): the qword-transposed one on the
    weight's held 16-row blocks for rows of up to 2048 bytes from 1 row (rows of 12 and 36 bytes with
    a 4-byte tail: (3, 4, 96), (40, 270); a partial 16-row block: (33, 1100)), the 64-byte-step
    blocks past that ((3, 16500), (34, 16500): 2063 bytes)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=g) + 0.3
    K = shape[-1]
    w = (torch.randint(0, 2, (N, K), generator=g) * 2 - 1).to(torch.int8)
    ws = torch.rand(N, generator=g) + 0.1
    fb = torch.randn(N, generator=g)
    packed = ops.pack_binary_b1(w)
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            for b in (None, fb):
                got = ops.linear_w1a1(x, packed, ws, b)
                assert got.shape == (*shape[:-1], N) and torch.equal(got, _xnor_reference(x, w, ws, b)), isa
    finally:
        qatkit._C.set_cpu_isa(old)


def _xnor_linear_case(shape, N, g, offset):
    """linear_w1a1 operands drawn from g: input (randn + offset), sign codes [N, K], weight scales,
    float bias, pack_binary_b1 of the codes."""
    x = torch.randn(shape, generator=g) + offset
    w = (torch.randint(0, 2, (N, shape[-1]), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    return x, w, ws, fb, ops.pack_binary_b1(w)


@pytest.mark.parametrize("shape,N", [((67, 1000), 70), ((4, 17, 1000), 70), ((90, 300), 40)])
def test_w1a1_row_chunks_across_threads_equal_the_reference(shape, N):
    """From 32 rows with at most 128 KiB of weight bits the threads split linear_w1a1's rows (each
    packs its rows' bits and runs every output column on them): [67, 1000] x 70 in chunks of 34 / 33
    at 2 threads (the 32-row kernel) and 23 / 23 / 21 at 3 (the 4-row one); a [4, 17, K] input's
    samples (one alpha each) cross the chunks; 1 thread runs the column blocks. Every ISA, against
    the formula."""
    x, w, ws, fb, packed = _xnor_linear_case(shape, N, torch.Generator().manual_seed(12), 0.3)
    want = _xnor_reference(x, w, ws, fb)

    def check(isa, t):
        assert torch.equal(ops.linear_w1a1(x, packed, ws, fb), want), (isa, t)

    on_every_isa_and_thread_count(check)


@pytest.mark.parametrize("shape,N", [((33, 1100), 20), ((40, 270), 37), ((6, 96), 16)])
def test_w1a1_held_weight_blocks_follow_in_place_writes(shape, N):
    """Where the table's XNOR GEMM reads the weight in 16-row blocks (QGemmKernels::xnor_blocks_max_kb:
    AVX-512 with VPOPCNTDQ), linear_w1a1 and conv2d_w1a1 hold them per weight: the second call derives
    nothing new, and an in-place write to the packed weight gives the new weight's result (a partial
    last block: N = 20, 37; rows of 138, 36 and 12 bytes); an inference tensor is not held. Against
    the formula on every ISA."""
    g = torch.Generator().manual_seed(14)
    x, w, ws, fb, packed = _xnor_linear_case(shape, N, g, 0.3)
    qatkit._C.clear_derived_weight_cache()
    seen = []
    for _ in range(2):
        assert torch.equal(ops.linear_w1a1(x, packed, ws, fb), _xnor_reference(x, w, ws, fb))
        seen.append(qatkit._C.derived_weight_cache_info())
    assert seen[1]["misses"] == seen[0]["misses"] and seen[1]["entries"] == seen[0]["entries"]
    w2 = w.flip(0)
    packed.copy_(ops.pack_binary_b1(w2))

    def check(isa, t):
        assert torch.equal(ops.linear_w1a1(x, packed, ws, fb), _xnor_reference(x, w2, ws, fb)), (isa, t)

    on_every_isa_and_thread_count(check)
    # an inference tensor is never held: the kernels build the blocks as they go, the same bits
    n_entries = qatkit._C.derived_weight_cache_info()["entries"]
    with torch.inference_mode():
        inf = packed.clone()
    assert torch.equal(ops.linear_w1a1(x, inf, ws, fb), _xnor_reference(x, w2, ws, fb))
    assert qatkit._C.derived_weight_cache_info()["entries"] == n_entries
    # a 1 x 1 conv on 2 x 2 maps (4 rows an image) on the same weight, NCHW and channels_last
    xc = torch.randn(3, shape[-1], 2, 2, generator=g)
    want = xnor_conv_reference(xc, w2.reshape(N, -1, 1, 1), ws, fb, (1, 1), (0, 0), (1, 1))
    for xi in (xc, xc.contiguous(memory_format=torch.channels_last)):
        for _ in range(2):
            assert torch.equal(ops.conv2d_w1a1(xi, packed, (1, 1), (1, 1), (0, 0), (1, 1), ws, fb), want)
    qatkit._C.clear_derived_weight_cache()


def test_w1a1_nan_codes_are_left_out_of_the_sum():
    """A NaN input codes as 0 (binary_codes), which has no bit: the zero mask keeps it out of the
    popcount sum, on every ISA (rows with and without NaN in one batch)."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(4, 300, generator=g)
    x[1, 5] = float("nan")
    x[1, 299] = float("nan")
    x[3, 0] = float("nan")
    w = (torch.randint(0, 2, (10, 300), generator=g) * 2 - 1).to(torch.int8)
    ws = torch.rand(10, generator=g) + 0.1
    q, _ = ops.binary_codes(x, "bitnet", 0)
    assert int((q == 0).sum()) >= 3  # the case this test is about
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            got = ops.linear_w1a1(x, ops.pack_binary_b1(w), ws)
            want = _xnor_reference(x, w, ws, None)
            assert torch.equal(torch.nan_to_num(got, 123.0), torch.nan_to_num(want, 123.0)), isa
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("C,HW,N,k", [(16, 32, 21, 1), (24, 9, 13, 1), (3, 16, 8, 1), (200, 11, 9, 1), (8, 5, 3, 1),
                                     (16, 32, 21, 3), (24, 9, 13, 3), (3, 16, 8, 3), (8, 5, 3, 3)])
def test_conv2d_w1a1_short_rows_on_every_isa(C, HW, N, k):
    """XNOR convs whose rows are under 32 bytes (K = C k^2 < 256 bits: AVX2's eight outputs per
    vector), as one GEMM per image (rows in the lanes: 1024 / 256 / 121 positions) and as several
    small images' rows in one GEMM (columns in the lanes: 81 / 25 positions), with partial blocks of
    8 rows and columns, zero padding's zero-code masks (k = 3) and an image whose NaN makes every
    code 0 (binary_codes' "bitnet" centre is NaN). Every ISA against the formula."""
    assert C * k * k < 256
    g = torch.Generator().manual_seed(31)
    x = torch.randn(3, C, HW, HW, generator=g)
    x[2, 0, 0, 0] = float("nan")
    w = (torch.randint(0, 2, (N, C, k, k), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    q, _ = ops.binary_codes(x, "bitnet", 0)
    assert bool((q[2] == 0).all()) and bool((q[:2] != 0).all())
    p = k // 2
    want = xnor_conv_reference(x, w, ws, fb, (1, 1), (p, p), (1, 1))
    packed = ops.pack_binary_b1(w.reshape(N, -1))
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            got = ops.conv2d_w1a1(x, packed, (k, k), (1, 1), (p, p), (1, 1), ws, fb)
            assert torch.equal(got[:2], want[:2]) and bool(got[2].isnan().all()), isa
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("geom", [dict(k=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1)), dict(k=(3, 2), s=(2, 1), p=(0, 2), d=(1, 2)),
                                  dict(k=(1, 1), s=(1, 1), p=(0, 0), d=(1, 1)), dict(k=(5, 5), s=(1, 1), p=(2, 2), d=(1, 1))])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("C", [5, 16])
def test_conv2d_w1a1_equals_the_direct_conv_of_the_codes(geom, B, C):
    """conv2d_w1a1 equals the float64 conv of the binarized input's codes (zero padding: code 0)
    times the binary weight codes, requantized by the "row" rule, on every ISA. C = 16: each
    pixel's bits are whole bytes (the rows are byte copies; the padding's zero masks too); C = 5: the
    rows packed code by code."""
    g = torch.Generator().manual_seed(13)
    H, W, N = 9, 7, 6
    x = torch.randn(B, C, H, W, generator=g)
    kh, kw = geom["k"]
    w = (torch.randint(0, 2, (N, C, kh, kw), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    want = xnor_conv_reference(x, w, ws, fb, geom["s"], geom["p"], geom["d"])
    packed = ops.pack_binary_b1(w.reshape(N, -1))
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            got = ops.conv2d_w1a1(x, packed, geom["k"], geom["s"], geom["p"], geom["d"], ws, fb)
            assert torch.equal(got, want), isa
    finally:
        qatkit._C.set_cpu_isa(old)


def _grouped_xnor_conv_reference(x, w, ws, bias, stride, padding, dilation, groups):
    """conv2d_w1a1 with groups from its formula: the float64 grouped conv of the binarized input's
    codes (zero padding: code 0) and the weight codes, fp32(acc) * fp32(alpha[b] * ws[n]) (+ bias)."""
    import torch.nn.functional as F

    q, alpha = ops.binary_codes(x, "bitnet", 0)
    acc = F.conv2d(q.double(), w.double(), None, stride, padding, dilation, groups).float()
    y = acc * (alpha.reshape(-1, 1, 1, 1) * ws.reshape(1, -1, 1, 1))
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("geom", [dict(k=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1)), dict(k=(3, 3), s=(2, 2), p=(2, 2), d=(2, 2)),
                                  dict(k=(3, 2), s=(2, 1), p=(0, 2), d=(1, 2)), dict(k=(1, 1), s=(1, 1), p=(0, 0), d=(1, 1)),
                                  dict(k=(5, 5), s=(1, 1), p=(2, 2), d=(1, 1)), dict(k=(3, 3), s=(2, 2), p=(1, 1), d=(1, 1))])
@pytest.mark.parametrize("C,N,groups,HW", [(24, 24, 24, (9, 7)), (40, 40, 40, (4, 4)), (16, 32, 16, (9, 12)),
                                           (12, 18, 6, (9, 7)), (8, 8, 8, (3, 3)), (8, 8, 8, (5, 48))])
def test_grouped_conv2d_w1a1_equals_the_direct_conv_of_the_codes(geom, C, N, groups, HW):
    """conv2d_w1a1 with groups: depthwise (one input channel per group; 32+ channels: a partial
    block of the AVX-512 kernel's 32; two outputs per channel on rows of 12: the planar kernel) on
    conv2d_int8's direct kernels with the codes given and per-image scales (at stride 2 on rows of
    12 or 48 pixels, AVX-512: the planes' parity planes), other grouped convs
    (2 channels per group) through conv2d_int8's grouped GEMMs on the codes. Equal to the float64
    grouped conv of the codes, requantized by the "row" rule, on every ISA, NCHW and channels_last
    (whose output is channels_last), one image and several (the threads split an image or take
    images), with an all-zero image (alpha 0: the bias) and an image whose NaN makes every code 0."""
    g = torch.Generator().manual_seed(C + N + groups)
    H, W = HW
    x = torch.randn(5, C, H, W, generator=g)
    x[1] = 0
    x[3, 0, 0, 0] = float("nan")
    kh, kw = geom["k"]
    w = (torch.randint(0, 2, (N, C // groups, kh, kw), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    packed = ops.pack_binary_b1(w.reshape(N, -1))
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            for xb in (x, x[:1]):
                for b in (fb, None):
                    want = _grouped_xnor_conv_reference(xb, w, ws, b, geom["s"], geom["p"], geom["d"], groups)
                    for fmt in (torch.contiguous_format, torch.channels_last):
                        got = ops.conv2d_w1a1(xb.contiguous(memory_format=fmt), packed, geom["k"], geom["s"], geom["p"],
                                              geom["d"], ws, b, groups)
                        assert got.is_contiguous(memory_format=fmt), (isa, fmt)
                        assert torch.equal(got.nan_to_num(123.0), want.nan_to_num(123.0)), (isa, fmt, xb.shape[0])
            assert bool(got.isfinite().all()) and bool(torch.isnan(ops.conv2d_w1a1(
                x, packed, geom["k"], geom["s"], geom["p"], geom["d"], ws, fb, groups)[3]).all())
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("k", [3, 1])
@pytest.mark.parametrize("B,C,HW,N", [(8, 16, 6, 24), (2, 16, 20, 24), (1, 13, 17, 9), (3, 5, 4, 7), (3, 13, 19, 9)])
def test_conv2d_w1a1_output_keeps_the_input_memory_format(B, C, HW, N, k):
    """groups == 1: a channels_last input's output is channels_last (the popcount GEMM's [L, N] rows
    are its images), an NCHW input's NCHW, with the same values: several images' rows in one GEMM
    (6 x 6, 4 x 4) and one GEMM per image (17+ pixels a side), byte-run rows (C = 16) and
    code-by-code rows; 1 x 1 convs on channels_last inputs take the pixels' codes as the patch rows
    (under 512 rows in 64-column tiles, from 512 in 256-row chunks with a partial last one: 800 and
    1083 rows); an image whose NaN makes every code 0. Every ISA; opcheck checks the meta output's
    strides in both formats."""
    g = torch.Generator().manual_seed(B * C + N)
    x = torch.randn(B, C, HW, HW, generator=g)
    if B == 3:
        x[1, 0, 0, 0] = float("nan")
    w = (torch.randint(0, 2, (N, C, k, k), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    packed = ops.pack_binary_b1(w.reshape(N, -1))
    p = k // 2
    want = xnor_conv_reference(x, w, ws, fb, (1, 1), (p, p), (1, 1)).nan_to_num(123.0)
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            for fmt in (torch.contiguous_format, torch.channels_last):
                got = ops.conv2d_w1a1(x.contiguous(memory_format=fmt), packed, (k, k), (1, 1), (p, p), (1, 1), ws, fb)
                assert got.is_contiguous(memory_format=fmt) and torch.equal(got.nan_to_num(123.0), want), (isa, fmt)
    finally:
        qatkit._C.set_cpu_isa(old)
    if B == 3:
        assert bool(got[1].isnan().all()) and bool(got[0].isfinite().all())
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.library.opcheck(torch.ops.qatkit.conv2d_w1a1.default,
                              (x.nan_to_num(0.5).contiguous(memory_format=fmt), packed, [k, k], [1, 1], [p, p], [1, 1],
                               ws, fb))


@pytest.mark.parametrize("B,H,W", [(1, 1, 65636), (2, 182, 182)])
def test_conv2d_w1a1_1x1_rows_in_passes(B, H, W):
    """A 1x1 XNOR conv on a channels_last input packs its pixel rows in passes of 2^16 rows (a
    bounded buffer): 65,636 rows (a last pass of 100 rows, 64-column tiles) and 66,248 rows across
    two images (a last pass of 712 rows, 256-row chunks), against the formula."""
    g = torch.Generator().manual_seed(H + W)
    C, N = 8, 5
    x = torch.randn(B, C, H, W, generator=g)
    w = (torch.randint(0, 2, (N, C, 1, 1), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    got = ops.conv2d_w1a1(x.contiguous(memory_format=torch.channels_last), ops.pack_binary_b1(w.reshape(N, -1)),
                          (1, 1), (1, 1), (0, 0), (1, 1), ws, fb)
    assert B * H * W > 2**16 and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, xnor_conv_reference(x, w, ws, fb, (1, 1), (0, 0), (1, 1)))


def test_grouped_conv2d_w1a1_opcheck_and_errors():
    """opcheck of the grouped and depthwise forms in both formats (the meta output's shape and
    strides), and the argument errors: groups that do not divide the channels, a weight packed for
    groups 1, a weight scale of the wrong length."""
    x = torch.randn(2, 8, 6, 6)
    for groups, cg in ((8, 1), (4, 2)):
        wc = ops.pack_binary_b1((torch.randint(0, 2, (8, cg * 9)) * 2 - 1).to(torch.int8))
        for xf in (x, x.contiguous(memory_format=torch.channels_last)):
            torch.library.opcheck(torch.ops.qatkit.conv2d_w1a1.default,
                                  (xf, wc, [3, 3], [1, 1], [1, 1], [1, 1], torch.rand(8) + 0.1, torch.randn(8), groups))
    wd = ops.pack_binary_b1((torch.randint(0, 2, (8, 9)) * 2 - 1).to(torch.int8))
    with pytest.raises(ValueError, match="groups must be >= 1 and divide the input channels 8"):
        ops.conv2d_w1a1(x, wd, (3, 3), (1, 1), (1, 1), (1, 1), torch.ones(8), None, 3)
    with pytest.raises(ValueError, match="groups must be >= 1"):
        ops.conv2d_w1a1(x, wd, (3, 3), (1, 1), (1, 1), (1, 1), torch.ones(8), None, 0)
    w1 = ops.pack_binary_b1((torch.randint(0, 2, (8, 72)) * 2 - 1).to(torch.int8))  # packed for groups 1
    with pytest.raises(ValueError, match="bytes per row"):
        ops.conv2d_w1a1(x, w1, (3, 3), (1, 1), (1, 1), (1, 1), torch.ones(8), None, 8)
    with pytest.raises(ValueError, match=r"weight_scale must have shape \[N\] = \[8\]"):
        ops.conv2d_w1a1(x, wd, (3, 3), (1, 1), (1, 1), (1, 1), torch.ones(3), None, 8)


@pytest.mark.parametrize("shape,N", [((1, 133), 37), ((3, 4, 96), 7), ((20, 133), 40)])
def test_w1a1_is_w1a8_on_the_codes_at_scale_1(shape, N):
    """The composition CUDA's linear_w1a1 / conv2d_w1a1 run (csrc/ops/cuda/qgemm_kernel.cpp):
    binary_codes' codes as float inputs of scale 1 through linear_w1a8 / conv2d_int8 (weight_bits 1,
    pack_binary_b1's rows; corr 0, out_scale 1: fp32(acc)), then * fp32(alpha[b] * ws[n]) + bias,
    equals the popcount kernels bit for bit (here on the CPU kernels, every ISA)."""
    g = torch.Generator().manual_seed(41)
    x, w, ws, fb, packed = _xnor_linear_case(shape, N, g, 0.2)
    zero, one = torch.zeros(N, dtype=torch.int32), torch.ones(N)
    xc = torch.randn(2, 5, 7, 6, generator=g)
    wc = (torch.randint(0, 2, (N, 5, 3, 3), generator=g) * 2 - 1).to(torch.int8)
    pc = ops.pack_binary_b1(wc.reshape(N, -1))
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            q, alpha = ops.binary_codes(x, "bitnet", 0)
            acc = ops.linear_w1a8(q.float(), packed, zero, one, 1.0, 0, -128, 127)
            a = alpha.reshape([-1] + [1] * (acc.dim() - 1))
            assert torch.equal(acc * (a * ws) + fb, ops.linear_w1a1(x, packed, ws, fb)), isa
            q, alpha = ops.binary_codes(xc, "bitnet", 0)
            acc = ops.conv2d_int8(q.float(), pc, 1, (3, 3), (1, 2), (1, 1), (1, 1), zero, one, 1.0, 0, -128, 127, None, 1)
            want = ops.conv2d_w1a1(xc, pc, (3, 3), (1, 2), (1, 1), (1, 1), ws, fb)
            got = acc * (alpha.reshape(-1, 1, 1, 1) * ws.reshape(1, -1, 1, 1)) + fb.reshape(1, -1, 1, 1)
            assert torch.equal(got, want), isa
    finally:
        qatkit._C.set_cpu_isa(old)


def test_w1a1_opcheck_compile_and_errors():
    x = torch.randn(3, 70)
    w = (torch.randint(0, 2, (8, 70)) * 2 - 1).to(torch.int8)
    p, ws = ops.pack_binary_b1(w), torch.rand(8) + 0.1
    torch.library.opcheck(torch.ops.qatkit.linear_w1a1.default, (x, p, ws))
    torch.library.opcheck(torch.ops.qatkit.linear_w1a1.default, (x, p, ws, torch.randn(8)))
    xc = torch.randn(2, 3, 6, 6)
    wc = ops.pack_binary_b1((torch.randint(0, 2, (4, 27)) * 2 - 1).to(torch.int8))
    torch.library.opcheck(torch.ops.qatkit.conv2d_w1a1.default, (xc, wc, [3, 3], [1, 1], [1, 1], [1, 1], torch.ones(4)))
    f = torch.compile(lambda t: ops.linear_w1a1(t, p, ws), fullgraph=True)
    assert torch.equal(f(x), ops.linear_w1a1(x, p, ws))
    with pytest.raises(ValueError, match="batch dim"):
        ops.linear_w1a1(x[0], p, ws)
    with pytest.raises(ValueError, match=r"K_pad / 8 = 12 bytes per row .* got 4"):
        ops.linear_w1a1(x, p[:, :4], ws)
    with pytest.raises(TypeError, match="1-bit codes, packed"):
        ops.linear_w1a1(x, w, ws)
    with pytest.raises(ValueError, match=r"weight_scale must have shape \[N\] = \[8\]"):
        ops.linear_w1a1(x, p, ws[:3])
    with pytest.raises(TypeError, match="input must be float32"):
        ops.linear_w1a1(x.double(), p, ws)
    with pytest.raises(ValueError, match="bias must be float32 \\[8\\]"):
        ops.linear_w1a1(x, p, ws, torch.randn(3))
    with pytest.raises(ValueError, match="input must be 4-D"):
        ops.conv2d_w1a1(xc[0], wc, (3, 3), (1, 1), (1, 1), (1, 1), torch.ones(4))
