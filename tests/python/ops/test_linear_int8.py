"""ops.linear_int8 (the integer GEMM family's W8A8 op, docs/integer.md "static" form): equal to a
pure-integer reference bit for bit on odd shapes and both 8-bit activation ranges, on every CPU ISA
this machine runs (the row, panel, split-record and AMX tile layouts); opcheck; torch.compile;
torch.export with dynamic batches of every integer op; clear errors. The family's other ops:
test_linear_lowbit.py, test_conv_int8.py, test_w4a8.py, test_weight_only.py, test_linear_dynamic.py;
their shared cases and references: qatkit.testing.integer."""


import pytest
import torch

import qatkit
from qatkit import ops
from qatkit.testing.integer import (
    gauss_codes,
    isas,
    linear_int8_case,
    linear_int8_reference,
    split_block_counts,
)
from qatkit.testing.reference import same_bits

# (9, 21, 2100) and (4, 16, 2048): the AVX-512 GEMM's 1024-wide K blocks (partial sums kept between
# blocks, a masked last step in the last block), with 4-row and single-row tiles
SHAPES = [(1, 4, 32), (1, 37, 133), (5, 16, 64), (7, 9, 1), (3, 64, 257), (0, 8, 16), (2, 1, 31), (16, 40, 96),
          (9, 21, 2100), (4, 16, 2048)]


def _equals_on_every_isa(want, x, *args):
    """linear_int8(x, *args) equals want bit for bit on every ISA this machine runs."""
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            assert qatkit._C.set_cpu_isa(isa)
            got = ops.linear_int8(x, *args)
            assert got.shape == want.shape and torch.equal(got, want), isa
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("qrange,zp", [((0, 255), 3), ((-128, 127), -7), ((0, 15), 8), ((-127, 127), 0)])
def test_equals_the_integer_reference_on_every_isa(M, N, K, qrange, zp):
    x, w, corr, scale, s, zp, qmin, qmax, bias_q = linear_int8_case(M, N, K, qrange, zp)
    _equals_on_every_isa(linear_int8_reference(x, w, bias_q, scale, s, zp, qmin, qmax), x, w, corr, scale, s, zp, qmin, qmax)
    missing = [i for i in ("avx2", "avx512", "amx") if i not in isas()]
    print("ISAs compared:", isas(), f"(not run on this CPU: {missing})" if missing else "")


def test_extremes_nan_inf_and_the_int8_corners():
    """-128 activations (|a| = 128 in the sign trick), +-127 weights, NaN (codes as the zero point)
    and +-Inf (saturate) inputs, all K positions at the extremes."""
    K, N = 96, 8
    x = torch.full((4, K), -1e9)
    x[1] = 1e9
    x[2, ::3] = float("nan")
    x[2, 1::3] = float("inf")
    x[3] = torch.linspace(-10, 10, K)
    w = torch.full((N, K), 127, dtype=torch.int8)
    w[::2] = -127
    _assert_corner_ranges(x, w, (w, ops.pack_int8_panel(w)))


def _assert_corner_ranges(x, w, layouts):
    """linear_int8 of x on each weight layout equals the reference on every ISA, for signed codes,
    unsigned codes and the zero point at the top of the unsigned range (unit scales, no bias)."""
    bias_q, scale = torch.zeros(w.shape[0], dtype=torch.int32), torch.ones(w.shape[0])
    old = qatkit._C.cpu_isa()
    try:
        for qmin, qmax, zp in ((-128, 127, 0), (0, 255, 0), (0, 255, 255)):
            shift = 128 if qmin >= 0 else 0
            corr = ((shift - zp) * w.long().sum(1)).int()
            want = linear_int8_reference(x, w, bias_q, scale, 0.1, zp, qmin, qmax)
            for isa in isas():
                qatkit._C.set_cpu_isa(isa)
                for layout in layouts:
                    got = ops.linear_int8(x, layout, corr, scale, 0.1, zp, qmin, qmax)
                    assert same_bits(got, want), (isa, qmin, qmax, zp, tuple(layout.shape))
    finally:
        qatkit._C.set_cpu_isa(old)


# the panel kernels' tiles: AVX-512 6-row tiles (M % 6 tails), groups of four 16-row panels (N % 64
# and N % 16 tails), K blocks of 96 steps (K = 1000: three blocks, K % 4 tails), row chunks of 192;
# AVX2 4-row tiles, one row on four panels at once, 256-step K blocks
PANEL_SHAPES = [(1, 4, 32), (1, 37, 133), (1, 70, 1000), (1, 129, 65), (2, 70, 1000), (7, 9, 1), (13, 70, 1000),
                (200, 20, 36), (6, 64, 388), (11, 129, 65), (3, 16, 2050), (0, 8, 16)]


@pytest.mark.parametrize("M,N,K", PANEL_SHAPES)
@pytest.mark.parametrize("qrange,zp", [((0, 255), 3), ((-128, 127), -7)])
def test_panel_layout_equals_the_reference_on_every_isa(M, N, K, qrange, zp):
    x, w, corr, scale, s, zp, qmin, qmax, bias_q = linear_int8_case(M, N, K, qrange, zp)
    panel = ops.pack_int8_panel(w)
    want = linear_int8_reference(x, w, bias_q, scale, s, zp, qmin, qmax)
    bias = torch.randn(N, generator=torch.Generator().manual_seed(1))
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            assert qatkit._C.set_cpu_isa(isa)
            got = ops.linear_int8(x, panel, corr, scale, s, zp, qmin, qmax)
            assert got.shape == (M, N) and torch.equal(got, want), isa
            assert torch.equal(ops.linear_int8(x, panel, corr, scale, s, zp, qmin, qmax, bias), want + bias), isa
    finally:
        qatkit._C.set_cpu_isa(old)


def _split_records(w):
    """pack_int8_panel's split records (kernels/common/qgemm_args.h) from the rule, one lane at a
    time: per block of 16 rows, [count or -1, 128 * sum w' per lane, 17 lane offsets, entries
    k | r << 24 by lane then k], s8_tail_words(K4) int32 words each, then the tail's zero padding."""
    n, k = w.shape
    nb, k4 = (n + 15) // 16, (k + 3) // 4
    cap = k4 // 2 + 4
    words = 34 + cap
    wp = torch.zeros(nb * 16, 4 * k4, dtype=torch.int64)
    wp[:n, :k] = w.long()
    recs = []
    for b in range(nb):
        ents, sums = [], []
        for lane in range(16):
            row = wp[16 * b + lane].tolist()
            e, total = [], 0
            for k0 in range(0, 4 * k4, 2):
                w0, w1 = row[k0], row[k0 + 1]
                w1s = w1
                if w0 * w1 > 0 and abs(w0) + abs(w1) > 128:
                    w1s = (128 - abs(w0)) * (1 if w1 > 0 else -1)
                    e.append((k0 + 1) | ((w1 - w1s) & 0xFF) << 24)
                total += w0 + w1s
            ents.append(e)
            sums.append(128 * total)
        rec = [0] * words
        count = sum(len(e) for e in ents)
        if count > cap:
            rec[0] = -1
        else:
            rec[0] = count
            rec[1:17] = sums
            off = 0
            for lane in range(16):
                rec[17 + lane] = off
                for v in ents[lane]:
                    rec[34 + off] = v - (1 << 32) if v >= 1 << 31 else v
                    off += 1
            rec[33] = off
        recs += rec
    x = -(-nb * words * 4 // (k4 * 64)) if k4 else 0
    out = torch.zeros(x * k4 * 16, dtype=torch.int32)
    out[:len(recs)] = torch.tensor(recs, dtype=torch.int64).to(torch.int32)
    return out, x


@pytest.mark.parametrize("n,k,dist", [(20, 10, "uniform"), (40, 1030, "gauss"), (37, 133, "sigma60"), (16, 3, "gauss"),
                                      (3, 64, "gauss")])
def test_pack_int8_panel_layout_and_split_records(n, k, dist):
    g = torch.Generator().manual_seed(n * k)
    w = (torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g) if dist == "uniform"
         else gauss_codes(n, k, g, 60.0 if dist == "sigma60" else None))
    p = ops.pack_int8_panel(w)
    nb, k4 = (n + 15) // 16, (k + 3) // 4
    recs, x = _split_records(w)
    assert p.shape == (nb + x, k4, 64) and p.dtype == torch.uint8
    # byte r * 4 + j of step s of panel b: row 16 b + r's k = 4 s + j, as w + 128; padding holds w = 0
    want = torch.full((nb * 16, k4 * 4), 128, dtype=torch.int64)
    want[:n, :k] = w.long() + 128
    assert torch.equal(p[:nb].long(), want.reshape(nb, 16, k4, 4).permute(0, 2, 1, 3).reshape(nb, k4, 64))
    assert torch.equal(p[nb:].reshape(-1).view(torch.int32), recs)
    counts = split_block_counts(p, n, k)
    if dist == "uniform":
        assert all(c == -1 for c in counts)  # a quarter of the pairs unsafe: past every block's capacity
    if dist == "gauss" and k >= 64:
        assert any(c > 0 for c in counts)


def test_pack_int8_panel_record_capacity_edge():
    """A block with exactly s8_tail_cap(K4) unsafe pairs is split; one more and it runs the sign trick."""
    k = 64  # K4 = 16: capacity 12
    for unsafe, want in ((12, 12), (13, -1)):
        w = torch.zeros(16, k, dtype=torch.int8)
        for i in range(unsafe):  # pairs (2j, 2j + 1) of lanes 0..: one sign, |w0| + |w1| = 127 + 2 > 128
            w[i % 16, 2 * (i // 16)], w[i % 16, 2 * (i // 16) + 1] = (127, 2) if i % 2 else (-127, -2)
        w[15, 60], w[15, 61] = 100, 28  # |w0| + |w1| = 128: safe
        w[14, 60], w[14, 61] = 127, -127  # signs differ: safe
        assert split_block_counts(ops.pack_int8_panel(w), 16, k) == [want]


def test_pack_int8_panel_opcheck_and_errors():
    w = torch.randint(-127, 128, (20, 10), dtype=torch.int8)
    p = ops.pack_int8_panel(w)
    x, corr, scale = torch.randn(3, 10), torch.zeros(20, dtype=torch.int32), torch.rand(20)
    torch.library.opcheck(torch.ops.qatkit.pack_int8_panel.default, (w,))
    torch.library.opcheck(torch.ops.qatkit.pack_int8_panel.default, (gauss_codes(40, 300, torch.Generator()),))
    torch.library.opcheck(torch.ops.qatkit.linear_int8.default, (x, p, corr, scale, 0.1, 0, -128, 127))
    assert ops.pack_int8_panel(w.to("meta")).shape == p.shape
    with pytest.raises(ValueError, match=r"panel weight \(pack_int8_panel\) for N = 20 .* must have shape \[4, 3, 64\] "
                                         r"\(or \[2, 3, 64\] without the split records\)"):
        ops.linear_int8(x, p[:, :2], corr, scale, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match=r"for N = 40 .* must have shape \[6, 3, 64\]"):  # N is corr's length
        ops.linear_int8(x, p, torch.zeros(40, dtype=torch.int32), torch.rand(40), 0.1, 0, -128, 127)
    with pytest.raises(TypeError, match="panel weight .* must be uint8"):
        ops.linear_int8(x, p.to(torch.int8), corr, scale, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match=r"2-D \[N, K\] or a 3-D panel"):
        ops.linear_int8(x, w[None, None], corr, scale, 0.1, 0, -128, 127)
    with pytest.raises(TypeError, match="pack_int8_panel: weight must be int8"):
        ops.pack_int8_panel(w.float())
    with pytest.raises(ValueError, match="pack_int8_panel: weight must be 2-D"):
        ops.pack_int8_panel(w[0])


# the AVX2 split path (chunks of 24 rows or more; QGemmArgs' split records): row tiles of 4 and the
# rest, 16-column blocks and a tail, K blocks of 256 steps (K = 1030: two, K % 4 tails), chunks of 192
# rows (400: 192 + 192 + 16, the last on the sign trick), blocks past their capacity beside split ones
SPLIT_SHAPES = [(24, 16, 64), (27, 37, 133), (64, 70, 1030), (400, 20, 96), (193, 33, 40), (8, 16, 64)]


@pytest.mark.parametrize("M,N,K", SPLIT_SHAPES)
@pytest.mark.parametrize("qrange,zp", [((0, 255), 3), ((-128, 127), -7)])
def test_split_panel_equals_the_reference_on_every_isa(M, N, K, qrange, zp):
    g = torch.Generator().manual_seed(M * N + K)
    x, _, _, scale, s, zp, qmin, qmax, bias_q = linear_int8_case(M, N, K, qrange, zp, seed=M + K)
    x[:, ::5] *= 100  # codes at both ends of the range too: u = a + 128 at 0 and 255
    w = gauss_codes(N, K, g, sigma=30.0)
    w[::16, :2] = torch.tensor([120, 100], dtype=torch.int8)  # at least one unsafe pair per block
    w[1::16, 2:4] = torch.tensor([-100, -127], dtype=torch.int8)
    if N > 16:  # rows of the second block uniform: past its capacity (the sign trick runs it)
        w[16:19] = torch.randint(-127, 128, (min(3, N - 16), K), dtype=torch.int8, generator=g)
    shift = 128 if qmin >= 0 else 0
    corr = (bias_q.long() + (shift - zp) * w.long().sum(1)).int()
    panel = ops.pack_int8_panel(w)
    counts = split_block_counts(panel, N, K)
    assert any(c > 0 for c in counts)  # the path under test: split blocks with residual entries
    want = linear_int8_reference(x, w, bias_q, scale, s, zp, qmin, qmax)
    legacy = panel[:(N + 15) // 16].contiguous()  # no records: the sign trick on the same codes
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            assert qatkit._C.set_cpu_isa(isa)
            assert torch.equal(ops.linear_int8(x, panel, corr, scale, s, zp, qmin, qmax), want), isa
            assert torch.equal(ops.linear_int8(x, legacy, corr, scale, s, zp, qmin, qmax), want), isa
    finally:
        qatkit._C.set_cpu_isa(old)


def test_split_panel_at_the_extremes():
    """Every unsafe pair at its largest (w = 127, 127 or -127, -127: r = 126) against activation codes
    at both ends, and pairs at the safe bound (|w0| + |w1| = 128, one sign): exact on every ISA."""
    M, N, K = 32, 32, 256
    w = torch.zeros(N, K, dtype=torch.int8)
    w[:, 0::8], w[:, 1::8] = 127, 127  # 32 unsafe pairs per row: past the capacity (K4 / 2 + 4 = 36 per block)
    w[:16] = 0
    w[:16, 0:2], w[:16, 2:4] = 127, -127  # block 0: two unsafe pairs per row (32 <= 36): split
    w[:16, 4], w[:16, 5] = 100, 28  # |w0| + |w1| = 128: safe
    w[:16, 8::4] = torch.randint(-127, 128, (16, 62), dtype=torch.int8, generator=torch.Generator().manual_seed(3))
    assert split_block_counts(ops.pack_int8_panel(w), N, K) == [32, -1]
    x = torch.full((M, K), 1e9)
    x[1::2] = -1e9
    x[2::4, ::3] = 0.0
    _assert_corner_ranges(x, w, (ops.pack_int8_panel(w),))


# AMX tiles (the "amx" table, W8A8 on the panel layout from 16 rows, K >= 128, N >= 64): 16-row
# blocks in pairs (a partial last block zero padded), panels in pairs of a 4-panel group (N's edge
# inside a panel, one panel left over), K in chunks of 16 steps (a tail of 1-15 steps, K not a
# multiple of 4), row chunks of 192; (31, 64, 100) and (16, 40, 200) below AMX's K / N; the other
# tables run the same shapes on their own kernels.
@pytest.mark.parametrize("M,N,K", [(16, 64, 128), (17, 70, 200), (31, 64, 100), (16, 40, 200), (32, 64, 4100),
                                   (33, 65, 129), (48, 130, 260), (200, 100, 1027), (385, 80, 128)])
def test_w8a8_panel_tiles_equal_the_reference_on_every_isa(M, N, K):
    x, w, corr, scale, s, zp, qmin, qmax, bias_q = linear_int8_case(M, N, K, (-128, 127), -7, seed=M + N + K)
    want = linear_int8_reference(x, w, bias_q, scale, s, zp, qmin, qmax)
    assert want.shape == (M, N)
    _equals_on_every_isa(want, x, ops.pack_int8_panel(w), corr, scale, s, zp, qmin, qmax)


def test_w8a8_panel_tiles_at_the_int8_corners():
    """-128 activation codes against +-127 weights over K = 4000 (sums of +-65 M, inside int32),
    rows at both ends, NaN and Inf inputs: many-row tiles (AMX's, AVX-512's) on every ISA."""
    M, N, K = 40, 72, 4000
    x = torch.full((M, K), -1e9)
    x[1::2] = 1e9
    x[2, ::3] = float("nan")
    x[5, 1::3] = float("inf")
    x[7] = torch.linspace(-10, 10, K)
    w = torch.full((N, K), 127, dtype=torch.int8)
    w[::2] = -127
    w[3, ::5] = 0
    _assert_corner_ranges(x, w, (w, ops.pack_int8_panel(w)))


def test_w8a8_tiles_share_the_threads_with_onednn():
    """The AMX kernel configures the tile state of its thread per call and releases it after; oneDNN
    runs torch's bfloat16 matmuls on AMX tiles of its own on the same threads (where the CPU has
    AMX), and torch._int_mm its own kernels. Interleaved, each keeps its results (concurrent Python
    threads: test_threads.py's "linear_int8 panel"). On a CPU without AMX the same calls run the
    other tables."""
    N, K, M = 256, 512, 64
    x, w, corr, scale, s, zp, qmin, qmax, bias_q = linear_int8_case(M, N, K, (-128, 127), 0, seed=11)
    panel = ops.pack_int8_panel(w)
    want = linear_int8_reference(x, w, bias_q, scale, s, zp, qmin, qmax)
    g = torch.Generator().manual_seed(12)
    xb, wb = torch.randn(M, K, generator=g).bfloat16(), torch.randn(N, K, generator=g).bfloat16()
    a = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=g)
    wt = w.t().contiguous()
    yb, im = torch.nn.functional.linear(xb, wb), torch._int_mm(a, wt)
    assert torch.equal(im, (a.long() @ wt.long()).int())
    for _ in range(20):
        assert torch.equal(ops.linear_int8(x, panel, corr, scale, s, zp, qmin, qmax), want)
        assert torch.equal(torch.nn.functional.linear(xb, wb), yb) and torch.equal(torch._int_mm(a, wt), im)


def test_batched_input_keeps_leading_dims():
    x, w, corr, scale, s, zp, qmin, qmax, bias_q = linear_int8_case(0, 12, 40, shape=(2, 3, 40))
    got = ops.linear_int8(x, w, corr, scale, s, zp, qmin, qmax)
    assert got.shape == (2, 3, 12)
    assert torch.equal(got.reshape(6, 12), linear_int8_reference(x.reshape(6, 40), w, bias_q, scale, s, zp, qmin, qmax))


def test_opcheck_and_compile():
    x, w, corr, scale, s, zp, qmin, qmax, _ = linear_int8_case(3, 8, 48)
    torch.library.opcheck(torch.ops.qatkit.linear_int8.default, (x, w, corr, scale, s, zp, qmin, qmax))
    f = torch.compile(lambda t: ops.linear_int8(t, w, corr, scale, s, zp, qmin, qmax), fullgraph=True, backend="eager")
    assert torch.equal(f(x), ops.linear_int8(x, w, corr, scale, s, zp, qmin, qmax))


@pytest.mark.parametrize("change,err,match", [
    (lambda a: a.update(input=a["input"].double()), TypeError, "input must be float32"),
    (lambda a: a.update(weight=a["weight"].int()), TypeError, "weight must be int8"),
    (lambda a: a.update(weight=a["weight"][None, None]), ValueError, "weight must be 2-D"),
    (lambda a: a.update(weight=a["weight"][None]), TypeError, "3-D panel weight .* must be uint8"),
    (lambda a: a.update(input=a["input"][:, :5]), ValueError, "last dim must be K = 48"),
    (lambda a: a.update(corr=a["corr"].float()), TypeError, "corr must be int32"),
    (lambda a: a.update(corr=a["corr"][:3]), ValueError, "corr must have shape"),
    (lambda a: a.update(out_scale=a["out_scale"][:3]), ValueError, "out_scale must have shape"),
    (lambda a: a.update(act_scale=0.0), ValueError, "act_scale must be a finite float32 > 0"),
    (lambda a: a.update(act_scale=float("nan")), ValueError, "act_scale must be a finite"),
    (lambda a: a.update(act_scale=1e-40), ValueError, "act_scale must be .* normal"),  # 1 / s = Inf in float32
    (lambda a: a.update(qmax=300), ValueError, "8-bit range"),
    (lambda a: a.update(zp=-1), ValueError, "act_zero_point must lie in"),
])
def test_bad_arguments_name_themselves(change, err, match):
    x, w, corr, scale, s, zp, qmin, qmax, _ = linear_int8_case(3, 8, 48)
    a = dict(input=x, weight=w, corr=corr, out_scale=scale, act_scale=s, zp=zp, qmin=qmin, qmax=qmax)
    change(a)
    with pytest.raises(err, match=match):
        ops.linear_int8(a["input"], a["weight"], a["corr"], a["out_scale"], a["act_scale"], a["zp"], a["qmin"], a["qmax"])


@pytest.mark.parametrize("M,N,K", [(1, 37, 133), (5, 16, 64), (7, 9, 1), (3, 64, 257), (16, 40, 96), (9, 21, 2100)])
@pytest.mark.parametrize("qrange,zp", [((0, 255), 3), ((-128, 127), -7)])
def test_input_divisor_is_the_division_first_on_every_isa(M, N, K, qrange, zp):
    """input_divisor (SmoothQuant's x / s fused into the quantization pass) against the integer
    reference of torch's x / d: NaN, +-Inf, 0 / 0 (alone in its row: a NaN row too), a zero and a
    subnormal divisor, both layouts."""
    x, w, corr, scale, s, zp, qmin, qmax, bias_q = linear_int8_case(M, N, K, qrange, zp, seed=K)
    g = torch.Generator().manual_seed(M + K)
    d = torch.rand(K, generator=g) * 4 + 0.01
    if M and K > 6:
        x[0, 1], x[-1, 2], x[-1, 3], x[-1, 5] = float("nan"), float("inf"), 0.0, -float("inf")
        d[3], d[4], d[5] = 0.0, 1e-40, -0.5  # 0 / 0 = NaN; x / 0 = +-Inf; a subnormal and a negative divisor
    want = linear_int8_reference(x / d, w, bias_q, scale, s, zp, qmin, qmax)
    old = qatkit._C.cpu_isa()
    try:
        for isa in isas():
            assert qatkit._C.set_cpu_isa(isa)
            for wt in (w, ops.pack_int8_panel(w)):
                got = ops.linear_int8(x, wt, corr, scale, s, zp, qmin, qmax, None, d)
                assert got.shape == (M, N) and same_bits(got, want), isa
    finally:
        qatkit._C.set_cpu_isa(old)


def test_input_divisor_opcheck_compile_and_errors():
    x, w, corr, scale, s, zp, qmin, qmax, _ = linear_int8_case(3, 8, 48)
    d = torch.rand(48) + 0.5
    torch.library.opcheck(torch.ops.qatkit.linear_int8.default, (x, w, corr, scale, s, zp, qmin, qmax, None, d))
    f = torch.compile(lambda t: ops.linear_int8(t, w, corr, scale, s, zp, qmin, qmax, None, d), fullgraph=True,
                      backend="eager")
    assert torch.equal(f(x), ops.linear_int8(x / d, w, corr, scale, s, zp, qmin, qmax))
    with pytest.raises(TypeError, match="input_divisor must be float32, got Double"):
        ops.linear_int8(x, w, corr, scale, s, zp, qmin, qmax, None, d.double())
    with pytest.raises(ValueError, match=r"input_divisor must have shape \[K\] = \[48\]"):
        ops.linear_int8(x, w, corr, scale, s, zp, qmin, qmax, None, d[:5])
    with pytest.raises(ValueError, match="input_divisor must have shape"):
        ops.linear_int8(x, w, corr, scale, s, zp, qmin, qmax, None, d[None])
    with pytest.raises(ValueError, match="input_divisor must be on the input's device"):
        ops.linear_int8(x, w, corr, scale, s, zp, qmin, qmax, None, d.to("meta"))


def test_export_keeps_a_dynamic_batch_dim():
    """torch.export with a dynamic batch: the meta kernels give symbolic batch sizes (no
    specialization), and the exported program runs other batch sizes with the eager results."""
    from torch.export import Dim, export

    wc = torch.randint(-127, 128, (4, 27), dtype=torch.int8)
    p8 = ops.pack_int8_panel(torch.randint(-127, 128, (5, 64), dtype=torch.int8))
    c5 = torch.zeros(5, dtype=torch.int32)
    c4, s4 = torch.zeros(4, dtype=torch.int32), torch.rand(4) * 1e-2 + 1e-3
    q4 = torch.randint(-8, 8, (16, 64), dtype=torch.int8)
    panel, gs = ops.pack_int4_panel(ops.pack_int4_w4(q4)), torch.rand(16, 2) * 0.1
    rows = ops.pack_int4_w4(q4)
    pb = ops.pack_binary_b1(torch.where(torch.randn(4, 27) >= 0, 1, -1).to(torch.int8))
    pb64 = ops.pack_binary_b1(torch.where(torch.randn(16, 64) >= 0, 1, -1).to(torch.int8))
    s16 = torch.rand(16) + 0.1

    class M(torch.nn.Module):
        def forward(self, x, v):
            a = ops.conv2d_int8(x, wc, 8, (3, 3), (1, 1), (1, 1), (1, 1), c4, s4, 0.1, 0, -128, 127)
            b = ops.conv2d_w1a1(x, pb, (3, 3), (1, 1), (1, 1), (1, 1), s4)
            c = ops.linear_w4a8(v, panel, gs, 32, 0.1, 0, -128, 127)
            d = ops.linear_w4_weight_only(v, rows, gs, 32)
            e = ops.linear_w1a1(v, pb64, s16)
            f = ops.linear_int8(v, p8, c5, s4[:1].expand(5).contiguous(), 0.1, 0, -128, 127)
            return a, b, c, d, e, f

    ep = export(M(), (torch.randn(2, 3, 6, 6), torch.randn(2, 64)), dynamic_shapes={"x": {0: Dim("b")}, "v": {0: Dim("m")}})
    x, v = torch.randn(5, 3, 6, 6), torch.randn(7, 64)
    for got, want in zip(ep.module()(x, v), M()(x, v)):
        assert torch.equal(got, want)
