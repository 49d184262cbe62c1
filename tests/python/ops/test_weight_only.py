"""The weight-only ops (float activations): ops.linear_w8_weight_only and ops.linear_w4_weight_only
within their stated float bound on every CPU ISA this machine runs (register tiles, packed GEMM,
AMX-BF16 tiles), each table's own bits where the docs promise them; opcheck; compile; errors."""


import pytest
import torch

import qatkit
from qatkit import ops
from qatkit.testing.integer import (
    isas,
)
from qatkit.testing.samples import w4_weight_only_case

# ---------------------------------------------------------------- W8 weight-only (float activations)


@pytest.mark.parametrize("M,N,K", [(1, 37, 133), (3, 16, 64), (7, 9, 1), (8, 40, 300), (11, 20, 96), (13, 20, 96),
                                   (33, 20, 96), (50, 25, 64), (0, 8, 16), (2, 5, 4096), (80, 30, 4096),
                                   (95, 13, 333), (100, 7, 40), (140, 20, 96),
                                   (300, 20, 96), (700, 19, 1024)])  # AMD's AVX-512 table: tiles at every row count
def test_w8_weight_only_within_the_float_bound_on_every_isa(M, N, K):
    """Within K * 2^-24 * sum|x * w| (+ the bias's rounding) of F.linear on the dequantized weight
    (float(q) * s[n]) on all three paths. Below 8 rows every ISA gives the same bits (loops.h's lane
    sums in a fixed order, vectorized by the compiler; AVX-512 keeps them to 12 rows, AVX2 takes the
    middle path from 8); from 12 rows up to the AVX2 table's GEMM row count (96) AVX2 and AVX-512 run
    the middle path's tiles, one fma chain per output in k order, and give the same bits (80 x 4096:
    two blocks of transposed rows, 64 + 16)."""
    g = torch.Generator().manual_seed(M * 7 + N + K)
    x = torch.randn(M, K, generator=g) * 2
    q = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
    s, b = torch.rand(N, generator=g) * 0.01 + 1e-4, torch.randn(N, generator=g)
    wd = q.double() * s.double().unsqueeze(1)
    want = x.double() @ wd.t() + b.double()
    bound = K * 2.0**-24 * (x.abs().double() @ wd.abs().t()) + 2.0**-23 * want.abs() + 1e-30
    old, got_by_isa = qatkit._C.cpu_isa(), {}
    try:
        for isa in isas():
            assert qatkit._C.set_cpu_isa(isa)
            got = ops.linear_w8_weight_only(x, q, s, b)
            assert got.shape == (M, N) and bool(((got.double() - want).abs() <= bound).all()), isa
            got_by_isa[isa] = got
    finally:
        qatkit._C.set_cpu_isa(old)
    if M < 8:  # the lane-sum kernel on every table (the baseline's MKL GEMM from 16 rows, its own bits)
        assert all(torch.equal(v, got_by_isa["baseline"]) for v in got_by_isa.values()), list(got_by_isa)
    elif M < 12 and "avx512" in got_by_isa:  # AVX-512's lane sums: the baseline's bits
        assert torch.equal(got_by_isa["avx512"], got_by_isa["baseline"])
    elif 12 <= M < 96 and "avx512" in got_by_isa:  # the tiles on both SIMD tables
        assert torch.equal(got_by_isa["avx2"], got_by_isa["avx512"])


@pytest.mark.parametrize("M", [1, 64, 300])
def test_weight_only_empty_k_gives_the_bias(M):
    """K = 0 on every path of both weight-only kernels, the many-row GEMM path included (it divided by
    zero there: SIGFPE): y = the bias (an empty sum)."""
    b = torch.randn(16)
    x = torch.randn(M, 0)
    y8 = ops.linear_w8_weight_only(x, torch.zeros(16, 0, dtype=torch.int8), torch.ones(16), b)
    y4 = ops.linear_w4_weight_only(x, torch.zeros(16, 0, dtype=torch.uint8), torch.ones(16, 0), 32, None, b)
    assert torch.equal(y8, b.expand(M, 16)) and torch.equal(y4, b.expand(M, 16))


def test_w8_weight_only_opcheck_compile_and_errors():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 70, generator=g)
    q = torch.randint(-128, 128, (20, 70), dtype=torch.int8, generator=g)
    s, b = torch.rand(20, generator=g) + 0.01, torch.randn(20, generator=g)
    torch.library.opcheck(torch.ops.qatkit.linear_w8_weight_only.default, (x, q, s, b))
    torch.library.opcheck(torch.ops.qatkit.linear_w8_weight_only.default, (torch.randn(9, 70, generator=g), q, s))
    f = torch.compile(lambda t: ops.linear_w8_weight_only(t, q, s, b), fullgraph=True)
    assert torch.equal(f(x), ops.linear_w8_weight_only(x, q, s, b))
    with pytest.raises(TypeError, match="weight must be int8 codes, got Float"):
        ops.linear_w8_weight_only(x, q.float(), s)
    with pytest.raises(ValueError, match=r"input's last dim must be K = 70 \(weight \[N, K\]\), got 69"):
        ops.linear_w8_weight_only(x[:, :69], q, s)
    with pytest.raises(ValueError, match=r"weight_scale must have shape \[N\] = \[20\], got \[1\]"):
        ops.linear_w8_weight_only(x, q, s[:1])
    with pytest.raises(TypeError, match="input must be float32"):
        ops.linear_w8_weight_only(x.half(), q, s)


# ---------------------------------------------------------------- W4 weight-only (float activations)


def _w4_float_reference(x, q, s, z, b, gs):
    """The dequantized weight (dequantize_affine's bits), its float64 product with x plus b, and the
    weight-only kernels' bound around it: K * 2^-24 * sum|x * w| plus the bias's rounding."""
    wd = ops.dequantize_affine(q, s, torch.zeros_like(s, dtype=torch.int32) if z is None else z.to(torch.int32),
                               group_size=gs)
    ref = x.double() @ wd.double().t() + b.double()
    bound = x.shape[1] * 2.0**-24 * (x.abs().double() @ wd.abs().double().t()) + 2.0**-24 * ref.abs() + 1e-30
    return wd, ref, bound


@pytest.mark.parametrize("M,N,K,gs", [(1, 37, 128, 32), (16, 96, 384, 32), (5, 7, 256, 128), (3, 64, 1024, 64),
                                      (12, 40, 256, 64), (11, 33, 96, 32), (0, 8, 64, 32), (2, 3, 32, 32),
                                      (40, 13, 96, 32), (72, 19, 4096, 128), (100, 30, 160, 32),
                                      (255, 20, 96, 32), (256, 20, 96, 32), (300, 50, 256, 64), (256, 520, 1024, 128)])
@pytest.mark.parametrize("zero", [False, True])
def test_w4_weight_only_within_the_float_bound_on_every_isa(M, N, K, gs, zero):
    """Each weight dequantizes to dequantize_affine's bits (checked through a one-hot input), and
    the output is within K * 2^-24 * sum|x * w| (+ the bias's half ulp) of the float64 product on
    each path: the kernel's in-register dequantization (AVX2 below 9 rows; AVX-512's register tiles
    below 384), AVX2's packed GEMM from there (72 x 4096: K in blocks of 256; 255 / 256 / 300 rows:
    three or four blocks of rows; N = 13 / 19 / 30 / 50 / 520: a partial panel of 16 columns; K = 96
    / 160: a panel step cut short), and the dequantized weight's float GEMM in blocks of rows
    (baseline from 256 rows, AVX-512 from 384; the one-hot inputs of K rows take the path K falls in)."""
    x, q, s, z, b = w4_weight_only_case(M, N, K, gs, zero, seed=21).values()
    wd, ref, bound = _w4_float_reference(x, q, s, z, b, gs)
    packed = ops.pack_int4_w4(q)
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            y = ops.linear_w4_weight_only(x, packed, s, gs, z, b)
            assert y.shape == (M, N) and bool(((y.double() - ref).abs() <= bound).all()), isa
            # the panel layout (what the plans give): the row layout's outputs bit for bit
            assert torch.equal(ops.linear_w4_weight_only(x, ops.pack_int4_panel(packed), s, gs, z, b), y), isa
            if N and K:  # one-hot rows read single weights back exactly
                eye = torch.eye(K)
                assert torch.equal(ops.linear_w4_weight_only(eye, packed, s, gs, z).t(), wd), isa
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("M,N,K,gs", [(1, 16, 64, 32), (12, 48, 384, 32), (5, 96, 256, 64), (13, 32, 1536, 32),
                                      (2, 16, 96, 32), (260, 32, 128, 32)])
@pytest.mark.parametrize("zero", [False, True])
def test_w4_weight_only_blocked_scales_give_the_row_scales_bits(M, N, K, gs, zero):
    """Scales (and zero points) in the panel's blocks (block_w4_scales) give the [N, G] layout's
    outputs bit for bit on every ISA: the register tiles (transposed activations; AVX-512 at every
    row count here), AVX2's packed GEMM from 9 rows (260 rows), the baseline's
    dequantize-then-GEMM path at 260 rows; block n // 16, lane n % 16 holds row n's scale (checked element by
    element against the [N, G] tensor)."""
    x, q, s, z, b = w4_weight_only_case(M, N, K, gs, zero, seed=23).values()
    sb, zb = ops.block_w4_scales(s), None if z is None else ops.block_w4_scales(z)
    assert sb.shape == (N // 16, K // gs, 16)
    for n in (0, 7, 15, N - 1):
        assert torch.equal(sb[n // 16, :, n % 16], s[n])
    panel = ops.pack_int4_panel(ops.pack_int4_w4(q))
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            y = ops.linear_w4_weight_only(x, panel, s, gs, z, b)
            assert torch.equal(ops.linear_w4_weight_only(x, panel, sb, gs, zb, b), y), isa
            assert torch.equal(ops.linear_w4_weight_only(x, panel, sb, gs, zb) + b, y), isa  # bias last, one rounding
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("zero", [False, True])
def test_w4_weight_only_avx2_gives_the_avx512_bits(M, zero):
    """Below the AVX2 table's w4f_packed_rows (9) the AVX2 kernel runs each row's FMAs in the
    AVX-512 kernel's order (its register tiles of 8 / 4 / 2 / 1 rows, the same chains per row) on the
    same dequantized floats (AVX2 makes them by either of two exact routes), so the two ISAs give the
    same bits, in both weight layouts and both scale layouts. (From 9 rows AVX2 runs its packed GEMM,
    or the middle path on the row layout, in another order.)"""
    have = isas()
    if "avx512" not in have:
        pytest.skip("this CPU has no AVX-512 VNNI table to compare the AVX2 kernel with (" + ", ".join(have) + ")")
    x, q, s, z, b = w4_weight_only_case(M, 48, 256, 64, zero, seed=25).values()
    rows = ops.pack_int4_w4(q)
    panel = ops.pack_int4_panel(rows)
    sb, zb = ops.block_w4_scales(s), None if z is None else ops.block_w4_scales(z)
    old = qatkit._C.cpu_isa()
    try:
        out = {}
        for isa in ("avx2", "avx512"):
            qatkit._C.set_cpu_isa(isa)
            out[isa] = [ops.linear_w4_weight_only(x, rows, s, 64, z, b), ops.linear_w4_weight_only(x, panel, s, 64, z, b),
                        ops.linear_w4_weight_only(x, panel, sb, 64, zb, b),
                        ops.linear_w4_weight_only(x[:, :], rows[:40], s[:40], 64, None if z is None else z[:40])]
        for a, c in zip(out["avx2"], out["avx512"]):
            assert torch.equal(a, c)
    finally:
        qatkit._C.set_cpu_isa(old)


def _fma_chain_reference(x, w, b):
    """y[m, n] = fma(x[m, k], w[n, k], y) over k = 0 .. K-1 from 0, then + b[n], each step rounded to
    float32 once (float64 holds the 48-bit product exactly; the sum is rounded to float64, then float32:
    a double rounding that differs from one only in ties of probability ~2^-29 per step, absent from
    these seeded cases)."""
    xd, wd = x.double(), w.double()
    y = torch.zeros(x.shape[0], w.shape[0], dtype=torch.float32)
    for k in range(x.shape[1]):
        y = (xd[:, k:k + 1] * wd[:, k].unsqueeze(0) + y.double()).float()
    return y if b is None else y + b


@pytest.mark.parametrize("M,N,K,gs", [(32, 20, 256, 64), (45, 37, 96, 32), (72, 13, 4096, 128), (16, 48, 640, 128),
                                      (250, 40, 160, 32), (131, 33, 544, 32), (9, 40, 384, 64), (12, 48, 384, 32)])
@pytest.mark.parametrize("zero", [False, True])
def test_w4_weight_only_packed_gemm_is_one_fma_chain_per_output(M, N, K, gs, zero):
    """The AVX2 table's packed GEMM (loops.h; AVX-512 runs its register tiles instead), from 9 rows
    on the panel layout (the row layout: the middle path up to 80 rows, then the packed GEMM): each
    output is one fma chain over k in ascending order from zero (kept in y between blocks of K), the
    bias added after the sum, so both layouts and both scale layouts give the same bits, equal to an
    exact fma-chain reference on dequantize_affine's weights where K is small enough to run it; the
    cases cross blocks of K (256), blocks of rows (250: three), partial panels of columns (N = 13 /
    20 / 33 / 37) and short panel steps (K = 96 / 160 / 544)."""
    have = isas()
    if "avx2" not in have:
        pytest.skip("this CPU has no AVX2 table, whose packed GEMM this tests (" + ", ".join(have) + ")")
    x, q, s, z, b = w4_weight_only_case(M, N, K, gs, zero, seed=26).values()
    rows = ops.pack_int4_w4(q)
    panel = ops.pack_int4_panel(rows)
    old = qatkit._C.cpu_isa()
    try:
        out = {}
        for isa in ["avx2"]:
            qatkit._C.set_cpu_isa(isa)
            out[isa] = [ops.linear_w4_weight_only(x, rows, s, gs, z, b),
                        ops.linear_w4_weight_only(x, panel, s, gs, z),
                        ops.linear_w4_weight_only(x[:, :], rows[:N - 1], s[:N - 1], gs, None if z is None else z[:N - 1])]
            if N % 16 == 0:
                sb, zb = ops.block_w4_scales(s), None if z is None else ops.block_w4_scales(z)
                out[isa].append(ops.linear_w4_weight_only(x, panel, sb, gs, zb, b))
        y = out["avx2"]
        assert torch.equal(y[1] + b, y[0])  # the bias after the sum, one rounding
        if N % 16 == 0:
            assert torch.equal(y[3], y[0])
        if K <= 640:
            wd = ops.dequantize_affine(q, s, z.to(torch.int32) if zero else torch.zeros_like(s, dtype=torch.int32),
                                       group_size=gs).float()
            assert torch.equal(y[0], _fma_chain_reference(x, wd, b))
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("zero", [False, True])
def test_w4_weight_only_many_rows_in_weight_blocks(zero):
    """256 x 528 x 4096: on the baseline table the weight is dequantized in blocks of at most 8 MiB of
    floats, each block's float GEMM writing its columns of the output in place (272 + 256 rows); on
    AVX2 the packed GEMM (rows in 3 blocks, K in 16); on AVX-512 the register tiles (21 tiles of 12
    rows and one of 4 over each 16-column block). Within the float bound of the float64 product on
    every ISA, with both scale layouts giving the same bits."""
    M, N, K, gs = 256, 528, 4096, 128
    x, q, s, z, b = w4_weight_only_case(M, N, K, gs, zero, seed=24).values()
    _, ref, bound = _w4_float_reference(x, q, s, z, b, gs)
    panel = ops.pack_int4_panel(ops.pack_int4_w4(q))
    sb, zb = ops.block_w4_scales(s), None if z is None else ops.block_w4_scales(z)
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            y = ops.linear_w4_weight_only(x, panel, s, gs, z, b)
            assert bool(((y.double() - ref).abs() <= bound).all()), isa
            assert torch.equal(ops.linear_w4_weight_only(x, panel, sb, gs, zb, b), y), isa
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("zero", [False, True])
def test_w4_weight_only_row_passes_give_the_rows_own_bits(zero):
    """300 x 32 x 8192: AVX-512's register tiles transpose at most 8 MiB of activation rows per pass
    (here 156 + 144 rows, multiples of 12: the same tiles as one pass), so each row's outputs equal
    those of the same rows run alone (the first 156, the last 144) bit for bit, in both weight layouts,
    and lie within the float bound of the float64 product on every ISA."""
    M, N, K, gs = 300, 32, 8192, 128
    x, q, s, z, b = w4_weight_only_case(M, N, K, gs, zero, seed=27).values()
    _, ref, bound = _w4_float_reference(x, q, s, z, b, gs)
    rows = ops.pack_int4_w4(q)
    panel = ops.pack_int4_panel(rows)
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            qatkit._C.set_cpu_isa(isa)
            for w in (panel, rows):
                y = ops.linear_w4_weight_only(x, w, s, gs, z, b)
                assert bool(((y.double() - ref).abs() <= bound).all()), isa
                if isa == "avx512":
                    parts = [ops.linear_w4_weight_only(x[:156], w, s, gs, z, b),
                             ops.linear_w4_weight_only(x[156:], w, s, gs, z, b)]
                    assert torch.equal(torch.cat(parts), y)
    finally:
        qatkit._C.set_cpu_isa(old)


def _amx_bf16_or_skip():
    if not qatkit.build_info()["amx_bf16"]:
        pytest.skip("this CPU (or build) has no AMX-BF16 tiles for linear_w4_weight_only (the amx table's "
                    "bf16 path; isas here: " + ", ".join(isas()) + ")")


def _on_isa(isa, f):
    old = qatkit._C.cpu_isa()
    try:
        assert qatkit._C.set_cpu_isa(isa)
        return f()
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("M,N,K,gs", [(1, 16, 32, 32), (2, 33, 96, 32), (3, 48, 1536, 64), (4, 31, 256, 256),
                                      (5, 17, 4096, 128), (6, 16, 32, 32), (7, 17, 64, 32), (12, 48, 384, 32), (13, 31, 96, 32),
                                      (16, 33, 128, 64), (17, 50, 160, 32), (31, 32, 256, 128), (33, 64, 96, 32),
                                      (100, 40, 1536, 64), (40, 24, 4096, 128), (70, 16, 8192, 256)])
def test_w4_weight_only_amx_tiles_within_the_float_bound(M, N, K, gs):
    """The amx table's bf16 tiles (symmetric groups, every row count): each activation split into
    three bf16 parts that sum to it exactly, the codes' values exact in bf16, so the sums keep the
    float bound of the float64 product: 1-5 rows with the parts stacked in one tile (3-15 tile rows),
    row tiles of 6-16 rows (rounded up to 4 in the tiles), several row
    tiles (17-100 rows), chunks of rows (K = 4096: 32 rows per chunk; K = 8192: 16), pairs of
    16-column blocks and a lone last block, partial blocks (N = 17 / 31 / 33 / 50), group sizes 32 to
    256 (one to eight 32-k steps per group sum). Both weight layouts and both scale layouts give the
    same bits, one-hot rows read each weight back exactly (dequantize_affine's bits), and the
    outputs differ from the AVX-512 register tiles' (other roundings), both inside the bound."""
    _amx_bf16_or_skip()
    x, q, s, _, b = w4_weight_only_case(M, N, K, gs, False, seed=31 + M).values()
    x[0, :5] = torch.tensor([3.0e20, -7.5e-25, 1.0000001, -2.0 ** -99, 0.0])  # magnitudes far apart, all split exactly
    wd, ref, bound = _w4_float_reference(x, q, s, None, b, gs)
    rows = ops.pack_int4_w4(q)
    panel = ops.pack_int4_panel(rows)
    y = _on_isa("amx", lambda: ops.linear_w4_weight_only(x, rows, s, gs, None, b))
    assert y.shape == (M, N) and bool(((y.double() - ref).abs() <= bound).all())
    assert _on_isa("amx", lambda: torch.equal(ops.linear_w4_weight_only(x, panel, s, gs, None, b), y))
    if N % 16 == 0:
        assert _on_isa("amx", lambda: torch.equal(ops.linear_w4_weight_only(x, panel, ops.block_w4_scales(s), gs, None,
                                                                            b), y))
    for n_eye in (min(M, 5), max(6, min(K, 64))):  # one-hot rows, stacked (up to 5) and in row tiles
        eye = torch.eye(K)[:n_eye]
        assert _on_isa("amx", lambda: torch.equal(ops.linear_w4_weight_only(eye, rows, s, gs).t(), wd[:, :n_eye]))
    y512 = _on_isa("avx512", lambda: ops.linear_w4_weight_only(x, rows, s, gs, None, b))
    assert bool(((y512.double() - ref).abs() <= bound).all())


def test_w4_weight_only_amx_rows_are_independent_of_the_batch_and_threads():
    """A row's outputs on the tiles depend on that row alone within each of the two forms: the same
    bits in a batch of 75 (five row tiles: 16 rows each, then 11 rounded up to 12) and alone in
    batches of 6-16, at 1, 2 and 3 threads (each thread splits the rows itself and runs its own
    column blocks); and among batches of 1-5 rows, whose parts stack in one tile (their own bits:
    the parts' sums added before the fold)."""
    _amx_bf16_or_skip()
    x, q, s, _, b = w4_weight_only_case(75, 80, 384, 32, False, seed=41).values()
    panel = ops.pack_int4_panel(ops.pack_int4_w4(q))
    before = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append(_on_isa("amx", lambda: ops.linear_w4_weight_only(x, panel, s, 32, None, b)))
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
        for a, e in ((0, 6), (6, 22), (22, 38), (38, 50), (50, 75)):
            part = _on_isa("amx", lambda: ops.linear_w4_weight_only(x[a:e], panel, s, 32, None, b))
            assert torch.equal(part, outs[0][a:e]), (a, e)
        five = _on_isa("amx", lambda: ops.linear_w4_weight_only(x[:5], panel, s, 32, None, b))
        for a, e in ((0, 1), (1, 3), (3, 5)):
            part = _on_isa("amx", lambda: ops.linear_w4_weight_only(x[a:e], panel, s, 32, None, b))
            assert torch.equal(part, five[a:e]), (a, e)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("M", [3, 20, 400])
@pytest.mark.parametrize("bad", ["inf", "-inf", "nan", "tiny", "subnormal"])
def test_w4_weight_only_amx_rows_it_cannot_split_run_on_the_float_kernels(bad, M):
    """A value with no exact split on the bf16 tiles (Inf, NaN; 0 < |x| < 2^-100, whose smallest part
    the tiles would flush to zero) sends the call to the AVX-512 table's float kernels: the amx
    table's outputs are then the avx512 table's bit for bit (its register tiles; from 384 rows the
    dequantized weight's MKL GEMM), Inf times a zero code giving NaN there as the float product does,
    within the bound where finite; the same call without the value runs the tiles (other bits); in
    batches of up to 5 rows (stacked parts) and of more."""
    _amx_bf16_or_skip()
    x, q, s, _, b = w4_weight_only_case(M, 48, 256, 32, False, seed=43).values()
    q[5, 17] = 0
    value = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan"), "tiny": 3.0e-31,
             "subnormal": 1.0e-40}[bad]
    xb = x.clone()
    r = M - 1 if M < 13 else 13
    xb[r, 17] = value
    rows = ops.pack_int4_w4(q)
    got = _on_isa("amx", lambda: ops.linear_w4_weight_only(xb, rows, s, 32, None, b))
    want = _on_isa("avx512", lambda: ops.linear_w4_weight_only(xb, rows, s, 32, None, b))
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))
    if bad in ("inf", "-inf"):  # Inf * 0 (column 5's code and any other zero code at k = 17): NaN; else +-Inf
        zero_code = q[:, 17] == 0
        assert bool(zero_code[5]) and torch.equal(got[r].isnan(), zero_code) and bool(got[r][~zero_code].isinf().all())
    if bad in ("tiny", "subnormal"):
        _, ref, bound = _w4_float_reference(xb, q, s, None, b, 32)
        assert bool(((got.double() - ref).abs() <= bound).all())
    clean = _on_isa("amx", lambda: ops.linear_w4_weight_only(x, rows, s, 32, None, b))
    assert not torch.equal(clean, _on_isa("avx512", lambda: ops.linear_w4_weight_only(x, rows, s, 32, None, b)))


@pytest.mark.parametrize("M", [1, 5, 6, 12])
def test_w4_weight_only_amx_leaves_zero_points_to_the_register_tiles(M):
    """Asymmetric groups (group_zero) run the AVX-512 kernels on the amx table too: its outputs are
    the avx512 table's bit for bit; symmetric groups run the tiles at every row count (other bits)."""
    _amx_bf16_or_skip()
    for zero in (True, False):
        x, q, s, z, b = w4_weight_only_case(M, 40, 256, 64, zero, seed=47).values()
        rows = ops.pack_int4_w4(q)
        got = _on_isa("amx", lambda: ops.linear_w4_weight_only(x, rows, s, 64, z, b))
        want = _on_isa("avx512", lambda: ops.linear_w4_weight_only(x, rows, s, 64, z, b))
        assert torch.equal(got, want) == zero, (zero, M)


def test_w4_weight_only_blocked_scales_opcheck_and_errors():
    x = torch.randn(3, 64)
    q = torch.randint(-8, 8, (32, 64), dtype=torch.int8)
    p = ops.pack_int4_w4(q)
    pp, s, z = ops.pack_int4_panel(p), torch.rand(32, 2) + 0.01, torch.randint(-3, 4, (32, 2)).float()
    sb, zb = ops.block_w4_scales(s), ops.block_w4_scales(z)
    torch.library.opcheck(torch.ops.qatkit.linear_w4_weight_only.default, (x, pp, sb, 32))
    torch.library.opcheck(torch.ops.qatkit.linear_w4_weight_only.default, (x, pp, sb, 32, zb, torch.randn(32)))
    f = torch.compile(lambda t: ops.linear_w4_weight_only(t, pp, sb, 32, zb), fullgraph=True)
    assert torch.equal(f(x), ops.linear_w4_weight_only(x, pp, s, 32, z))
    with pytest.raises(ValueError, match=r"a 3-D group_scale \(blocked \[N / 16, K / group_size, 16\]\) needs a panel "
                                         r"weight \(pack_int4_panel\), got a 2-D weight"):
        ops.linear_w4_weight_only(x, p, sb, 32)
    with pytest.raises(ValueError, match=r"a panel weight \(pack_int4_panel\) for N = 48 \(16 x group_scale's blocks\), "
                                         r"K = 64 must have shape \[3, 1, 1024\], got \[2, 1, 1024\]"):
        ops.linear_w4_weight_only(x, pp, torch.rand(3, 2, 16), 32)
    with pytest.raises(ValueError, match=r"group_scale must have the blocked shape \[2, 2, 16\]"):
        ops.linear_w4_weight_only(x, pp, torch.rand(2, 2, 8), 32)
    with pytest.raises(ValueError, match=r"group_zero must have the blocked shape \[2, 2, 16\] \(as group_scale\), "
                                         r"got \[32, 2\]"):
        ops.linear_w4_weight_only(x, pp, sb, 32, z)
    with pytest.raises(ValueError, match="group_size must be a multiple of 32 that divides K = 64, got 48"):
        ops.linear_w4_weight_only(x, pp, sb, 48)
    with pytest.raises(ValueError, match=r"block_w4_scales: scale must be 2-D \[N, G\] with N a multiple of 16, got "
                                         r"shape \(20, 2\)"):
        ops.block_w4_scales(torch.rand(20, 2))


def test_w4_weight_only_opcheck_compile_and_errors():
    x = torch.randn(3, 64)
    q = torch.randint(-8, 8, (8, 64), dtype=torch.int8)
    p, s = ops.pack_int4_w4(q), torch.rand(8, 2) + 0.01
    torch.library.opcheck(torch.ops.qatkit.linear_w4_weight_only.default, (x, p, s, 32))
    torch.library.opcheck(torch.ops.qatkit.linear_w4_weight_only.default, (x, p, s, 32, torch.ones(8, 2), torch.randn(8)))
    f = torch.compile(lambda t: ops.linear_w4_weight_only(t, p, s, 32), fullgraph=True)
    assert torch.equal(f(x), ops.linear_w4_weight_only(x, p, s, 32))
    pp = ops.pack_int4_panel(p)
    torch.library.opcheck(torch.ops.qatkit.linear_w4_weight_only.default, (x, pp, s, 32, torch.ones(8, 2), torch.randn(8)))
    x260 = torch.randn(2, 130, 64)  # 260 rows: the dequantize-then-GEMM path
    torch.library.opcheck(torch.ops.qatkit.linear_w4_weight_only.default, (x260, pp, s, 32, None, torch.randn(8)))
    with pytest.raises(ValueError, match=r"a panel weight \(pack_int4_panel\) for N = 20 \(group_scale's rows\), K = 64 "
                                         r"must have shape \[2, 1, 1024\], got \[1, 1, 1024\]"):
        ops.linear_w4_weight_only(x, pp, torch.rand(20, 2), 32)
    with pytest.raises(ValueError, match="group_size must be a multiple of 32 that divides K = 64, got 48"):
        ops.linear_w4_weight_only(x, p, s, 48)
    with pytest.raises(ValueError, match=r"group_scale must have shape \[8, 2\]"):
        ops.linear_w4_weight_only(x, p, s[:, :1], 32)
    with pytest.raises(ValueError, match=r"group_zero must have shape \[8, 2\]"):
        ops.linear_w4_weight_only(x, p, s, 32, torch.ones(8))
    with pytest.raises(TypeError, match="group_zero must be float32"):
        ops.linear_w4_weight_only(x, p, s, 32, torch.ones(8, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="weight must have K / 2 = 32 bytes per row, got 16"):
        ops.linear_w4_weight_only(x, p[:, :16], s, 32)
    with pytest.raises(TypeError, match="input must be float32"):
        ops.linear_w4_weight_only(x.half(), p, s, 32)
