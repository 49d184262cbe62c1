"""ops.linear_int8 (the integer GEMM family, docs/integer.md "static" form): equal to a pure-integer
reference bit for bit on odd shapes and both 8-bit activation ranges, on every CPU ISA this machine
runs; opcheck; torch.compile; clear errors."""

import os

import pytest
import torch

import qatkit
from qatkit.testing.reference import same_bits
from qatkit import ops
from qatkit.testing.samples import conv_int8_case, w4_weight_only_case


def _case(M, N, K, qrange=(0, 255), zp=3, seed=0, shape=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape or (M, K), generator=g) * 3
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    qmin, qmax = qrange
    shift = 128 if qmin >= 0 else 0
    bias_q = torch.randint(-5000, 5000, (N,), dtype=torch.int32, generator=g)
    corr = (bias_q.long() + (shift - zp) * w.long().sum(1)).int()
    scale = torch.rand(N, generator=g) * 1e-3 + 1e-5
    return x, w, corr, scale, 0.05, zp, qmin, qmax, bias_q


def _reference(x, w, bias_q, scale, s, zp, qmin, qmax):
    """Exact sums of the codes (float64: every partial sum < 2^53); codes from the formula (x * (1 /
    s), round half to even, + z, clamp). A NaN input stays NaN through the codes and the product, as
    in the float layer: its row is NaN (docs/integer.md, "NaN inputs")."""
    inv = torch.tensor(1.0) / torch.tensor(s, dtype=torch.float32)
    r = torch.round((x * inv).double())
    q = (r + zp).clamp(qmin, qmax)
    acc = (q - zp) @ w.double().t() + bias_q.double()
    return acc.float() * scale


# (9, 21, 2100) and (4, 16, 2048): the AVX-512 GEMM's 1024-wide K blocks (partial sums kept between
# blocks, a masked last step in the last block), with 4-row and single-row tiles
SHAPES = [(1, 4, 32), (1, 37, 133), (5, 16, 64), (7, 9, 1), (3, 64, 257), (0, 8, 16), (2, 1, 31), (16, 40, 96),
          (9, 21, 2100), (4, 16, 2048)]


def _isas():
    """Every ISA this machine runs (the qgemm family has baseline, AVX2, AVX-512 VNNI and AMX tables)."""
    old = qatkit._C.cpu_isa()
    try:
        return ["baseline"] + [i for i in ("avx2", "avx512", "amx") if qatkit._C.set_cpu_isa(i)]
    finally:
        qatkit._C.set_cpu_isa(old)


def _on_every_isa_and_thread_count(check, threads=(1, 2, 3)):
    """check(isa, t) on every ISA this machine runs at each thread count (3 on a 2-core machine:
    three chunks), the ISA and thread count restored after."""
    old, before = qatkit._C.cpu_isa(), torch.get_num_threads()
    try:
        for isa in _isas():
            assert qatkit._C.set_cpu_isa(isa)
            for t in threads:
                torch.set_num_threads(t)
                check(isa, t)
    finally:
        qatkit._C.set_cpu_isa(old)
        torch.set_num_threads(before)


def _equals_on_every_isa(want, x, *args):
    """linear_int8(x, *args) equals want bit for bit on every ISA this machine runs."""
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
            assert qatkit._C.set_cpu_isa(isa)
            got = ops.linear_int8(x, *args)
            assert got.shape == want.shape and torch.equal(got, want), isa
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("qrange,zp", [((0, 255), 3), ((-128, 127), -7), ((0, 15), 8), ((-127, 127), 0)])
def test_equals_the_integer_reference_on_every_isa(M, N, K, qrange, zp):
    x, w, corr, scale, s, zp, qmin, qmax, bias_q = _case(M, N, K, qrange, zp)
    _equals_on_every_isa(_reference(x, w, bias_q, scale, s, zp, qmin, qmax), x, w, corr, scale, s, zp, qmin, qmax)
    missing = [i for i in ("avx2", "avx512", "amx") if i not in _isas()]
    print("ISAs compared:", _isas(), f"(not run on this CPU: {missing})" if missing else "")


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
            want = _reference(x, w, bias_q, scale, 0.1, zp, qmin, qmax)
            for isa in _isas():
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
    x, w, corr, scale, s, zp, qmin, qmax, bias_q = _case(M, N, K, qrange, zp)
    panel = ops.pack_int8_panel(w)
    want = _reference(x, w, bias_q, scale, s, zp, qmin, qmax)
    bias = torch.randn(N, generator=torch.Generator().manual_seed(1))
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
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


def _split_block_counts(panel, n, k):
    """Each block's record word 0 (entry count, or -1), or None for a panel without records."""
    nb, k4 = (n + 15) // 16, (k + 3) // 4
    if panel.shape[0] == nb:
        return None
    words = 34 + k4 // 2 + 4
    return panel[nb:].reshape(-1).view(torch.int32)[:nb * words].reshape(nb, words)[:, 0].tolist()


def _gauss_codes(n, k, g, sigma=None):
    """Per-row codes as per-channel quantization gives a trained layer's weights (N(0, 1) scaled to
    its row's max |w| = 127; or N(0, sigma) clamped): a few unsafe pairs per block (split records)."""
    w = torch.randn(n, k, generator=g)
    if sigma is None:
        return (w / w.abs().amax(1, keepdim=True).clamp_min(1e-9) * 127).round().clamp(-127, 127).to(torch.int8)
    return (w * sigma).round().clamp(-127, 127).to(torch.int8)


@pytest.mark.parametrize("n,k,dist", [(20, 10, "uniform"), (40, 1030, "gauss"), (37, 133, "sigma60"), (16, 3, "gauss"),
                                      (3, 64, "gauss")])
def test_pack_int8_panel_layout_and_split_records(n, k, dist):
    g = torch.Generator().manual_seed(n * k)
    w = (torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g) if dist == "uniform"
         else _gauss_codes(n, k, g, 60.0 if dist == "sigma60" else None))
    p = ops.pack_int8_panel(w)
    nb, k4 = (n + 15) // 16, (k + 3) // 4
    recs, x = _split_records(w)
    assert p.shape == (nb + x, k4, 64) and p.dtype == torch.uint8
    # byte r * 4 + j of step s of panel b: row 16 b + r's k = 4 s + j, as w + 128; padding holds w = 0
    want = torch.full((nb * 16, k4 * 4), 128, dtype=torch.int64)
    want[:n, :k] = w.long() + 128
    assert torch.equal(p[:nb].long(), want.reshape(nb, 16, k4, 4).permute(0, 2, 1, 3).reshape(nb, k4, 64))
    assert torch.equal(p[nb:].reshape(-1).view(torch.int32), recs)
    counts = _split_block_counts(p, n, k)
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
        assert _split_block_counts(ops.pack_int8_panel(w), 16, k) == [want]


def test_pack_int8_panel_opcheck_and_errors():
    w = torch.randint(-127, 128, (20, 10), dtype=torch.int8)
    p = ops.pack_int8_panel(w)
    x, corr, scale = torch.randn(3, 10), torch.zeros(20, dtype=torch.int32), torch.rand(20)
    torch.library.opcheck(torch.ops.qatkit.pack_int8_panel.default, (w,))
    torch.library.opcheck(torch.ops.qatkit.pack_int8_panel.default, (_gauss_codes(40, 300, torch.Generator()),))
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
    x, _, _, scale, s, zp, qmin, qmax, bias_q = _case(M, N, K, qrange, zp, seed=M + K)
    x[:, ::5] *= 100  # codes at both ends of the range too: u = a + 128 at 0 and 255
    w = _gauss_codes(N, K, g, sigma=30.0)
    w[::16, :2] = torch.tensor([120, 100], dtype=torch.int8)  # at least one unsafe pair per block
    w[1::16, 2:4] = torch.tensor([-100, -127], dtype=torch.int8)
    if N > 16:  # rows of the second block uniform: past its capacity (the sign trick runs it)
        w[16:19] = torch.randint(-127, 128, (min(3, N - 16), K), dtype=torch.int8, generator=g)
    shift = 128 if qmin >= 0 else 0
    corr = (bias_q.long() + (shift - zp) * w.long().sum(1)).int()
    panel = ops.pack_int8_panel(w)
    counts = _split_block_counts(panel, N, K)
    assert any(c > 0 for c in counts)  # the path under test: split blocks with residual entries
    want = _reference(x, w, bias_q, scale, s, zp, qmin, qmax)
    legacy = panel[:(N + 15) // 16].contiguous()  # no records: the sign trick on the same codes
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
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
    assert _split_block_counts(ops.pack_int8_panel(w), N, K) == [32, -1]
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
    x, w, corr, scale, s, zp, qmin, qmax, bias_q = _case(M, N, K, (-128, 127), -7, seed=M + N + K)
    want = _reference(x, w, bias_q, scale, s, zp, qmin, qmax)
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
    x, w, corr, scale, s, zp, qmin, qmax, bias_q = _case(M, N, K, (-128, 127), 0, seed=11)
    panel = ops.pack_int8_panel(w)
    want = _reference(x, w, bias_q, scale, s, zp, qmin, qmax)
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
    x, w, corr, scale, s, zp, qmin, qmax, bias_q = _case(0, 12, 40, shape=(2, 3, 40))
    got = ops.linear_int8(x, w, corr, scale, s, zp, qmin, qmax)
    assert got.shape == (2, 3, 12)
    assert torch.equal(got.reshape(6, 12), _reference(x.reshape(6, 40), w, bias_q, scale, s, zp, qmin, qmax))


def test_opcheck_and_compile():
    x, w, corr, scale, s, zp, qmin, qmax, _ = _case(3, 8, 48)
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
    x, w, corr, scale, s, zp, qmin, qmax, _ = _case(3, 8, 48)
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
    x, w, corr, scale, s, zp, qmin, qmax, bias_q = _case(M, N, K, qrange, zp, seed=K)
    g = torch.Generator().manual_seed(M + K)
    d = torch.rand(K, generator=g) * 4 + 0.01
    if M and K > 6:
        x[0, 1], x[-1, 2], x[-1, 3], x[-1, 5] = float("nan"), float("inf"), 0.0, -float("inf")
        d[3], d[4], d[5] = 0.0, 1e-40, -0.5  # 0 / 0 = NaN; x / 0 = +-Inf; a subnormal and a negative divisor
    want = _reference(x / d, w, bias_q, scale, s, zp, qmin, qmax)
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
            assert qatkit._C.set_cpu_isa(isa)
            for wt in (w, ops.pack_int8_panel(w)):
                got = ops.linear_int8(x, wt, corr, scale, s, zp, qmin, qmax, None, d)
                assert got.shape == (M, N) and same_bits(got, want), isa
    finally:
        qatkit._C.set_cpu_isa(old)


def test_input_divisor_opcheck_compile_and_errors():
    x, w, corr, scale, s, zp, qmin, qmax, _ = _case(3, 8, 48)
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


# ---------------------------------------------------------------- ternary W2A8


@pytest.mark.parametrize("M,N,K", [(1, 4, 128), (1, 37, 133), (5, 16, 64), (3, 9, 1), (2, 64, 257), (0, 8, 16),
                                   (4, 5, 384), (1, 70, 1000), (3, 33, 512)])
@pytest.mark.parametrize("qrange,zp", [((0, 255), 3), ((-128, 127), -7)])
def test_w2a8_equals_the_int8_kernel_on_the_unpacked_codes(M, N, K, qrange, zp):
    x, _, _, scale, s, zp, qmin, qmax, bias_q = _case(M, N, K, qrange, zp)
    g = torch.Generator().manual_seed(5)
    w = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=g)
    shift = 128 if qmin >= 0 else 0
    corr = (bias_q.long() + (shift - zp) * w.long().sum(1)).int()
    want = _reference(x, w, bias_q, scale, s, zp, qmin, qmax)
    fb = torch.randn(N, generator=g)
    want_b = _reference(x, w, torch.zeros_like(bias_q), scale, s, zp, qmin, qmax) + fb
    corr0 = ((shift - zp) * w.long().sum(1)).int()
    packed = ops.pack_ternary_t2(w)
    assert packed.dtype == torch.uint8 and packed.shape == (N, (K + 127) // 128 * 32)
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
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
    x, _, _, scale, s, zp, qmin, qmax, _ = _case(3, 8, 130)
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
    x, _, _, scale, s, zp, qmin, qmax, bias_q = _case(M, N, K, qrange, zp)
    g = torch.Generator().manual_seed(6)
    w = (torch.randint(0, 2, (N, K), generator=g) * 2 - 1).to(torch.int8)
    shift = 128 if qmin >= 0 else 0
    corr = (bias_q.long() + (shift - zp) * w.long().sum(1)).int()
    want = _reference(x, w, bias_q, scale, s, zp, qmin, qmax)
    fb = torch.randn(N, generator=g)
    corr0 = ((shift - zp) * w.long().sum(1)).int()
    want_b = _reference(x, w, torch.zeros_like(bias_q), scale, s, zp, qmin, qmax) + fb
    packed = ops.pack_binary_b1(w)
    assert packed.dtype == torch.uint8 and packed.shape == (N, (K + 31) // 32 * 4)
    # the kernel layout is the file's 1-bit packing (pack_weights, bits=1, sign), padded to 32
    if K % 32 == 0 and N:
        assert torch.equal(packed, qatkit.ops.pack_weights(w, 1, 0, "sign"))
    panel = ops.pack_binary_panel(packed)  # what the loaders give a Linear
    assert panel.shape == ((N + 31) // 32, packed.shape[1], 32)
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
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
        for isa in _isas():
            qatkit._C.set_cpu_isa(isa)
            assert torch.equal(ops.linear_w1a8(x, panel, corr, scale, 1.0, 0, -128, 127), want), isa
    finally:
        qatkit._C.set_cpu_isa(old)


def test_w1a8_opcheck_packing_and_errors():
    x, _, _, scale, s, zp, qmin, qmax, _ = _case(3, 8, 70)
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
        for isa in _isas():
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
        for isa in _isas():
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
    w = _gauss_codes(N, K, g, sigma=30.0)
    w[::16, :2] = torch.tensor([120, 100], dtype=torch.int8)  # at least one unsafe pair per block
    panel = ops.pack_int8_panel(w)
    assert any(c > 0 for c in _split_block_counts(panel, N, K))
    s, zp, qmin, qmax = 0.04, 9, 0, 255
    corr = (torch.randint(-300, 300, (N,), generator=g) + (128 - zp) * w.long().sum(1)).int()
    scale, fb = torch.rand(N, generator=g) * 1e-2, torch.randn(N, generator=g)
    pad = (k[0] // 2, k[1] // 2)
    want = _unfolded_conv_reference(x, w, corr, scale, (s, zp, qmin, qmax), fb, 1, k, padding=pad)
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
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
        for isa in _isas():
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
    (1, 8, 1, 10, (1, 1)),   # a 1-channel input, 8 outputs: channels-last, the codes repeated 8 times
    (4, 8, 4, 10, (1, 1)),   # multiplier 2, rows of 8+ pixels, stride 1: the planar form
    (3, 12, 3, 9, (2, 1)),   # multiplier 4, row stride 2: planar, one output row at a time
    (4, 8, 4, 6, (1, 1)),    # rows under 8 pixels: channels-last
    (4, 8, 4, 10, (1, 2)),   # column stride 2: channels-last
])
def test_depthwise_multiplier_forms_equal_one_gemm_per_group(bits, C, N, groups, W, stride):
    """Depthwise convs with several outputs per input channel (and 1-channel inputs) run channels-last
    (each pixel's codes repeated per output) or planar by the map's shape; either equals linear_int8
    over each group's unfolded patches, on every ISA, batched and one image alone."""
    g = torch.Generator().manual_seed(18)
    B, H, k = 3, 7, (3, 3)
    x = torch.randn(B, C, H, W, generator=g) * 2
    case = conv_int8_case(bits, N, C // groups * 9, groups, g)
    w, packed, corr, scale, fb = case["w"], case["layouts"][0], case["corr"], case["scale"], case["bias"]
    s, zp, qmin, qmax = case["act"]
    want = _unfolded_conv_reference(x, w, corr, scale, (s, zp, qmin, qmax), fb, groups, k, stride, (1, 1), (1, 1))
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
            qatkit._C.set_cpu_isa(isa)
            got = ops.conv2d_int8(x, packed, bits, k, stride, (1, 1), (1, 1), corr, scale, s, zp, qmin, qmax, fb, groups)
            assert torch.equal(got.reshape(B, N, -1), want), isa
            one = ops.conv2d_int8(x[:1].contiguous(), packed, bits, k, stride, (1, 1), (1, 1), corr, scale, s, zp, qmin,
                                  qmax, fb, groups)
            assert torch.equal(one.reshape(1, N, -1), want[:1]), isa
    finally:
        qatkit._C.set_cpu_isa(old)


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("B,C,HW,N,groups", [
    (2, 3, 17, 20, 1),  # 289 positions per image: one GEMM per image, the images in parallel
    (1, 3, 17, 20, 1),  # one image of 289 positions: its rows and columns in parallel
    (5, 8, 6, 20, 1),   # 36 positions: the patch rows of several images in one GEMM, channels-last
    (1, 8, 3, 40, 1),   # 9 patch rows against 40 outputs: 2 / 1 bits on the packed (reordered) codes
    (1, 8, 3, 40, 2),   # the same per group
    (3, 8, 5, 24, 2),   # channels-last per group, several images per GEMM; 2 / 1 bits widened (75 rows)
    (6, 8, 6, 16, 2),   # 2 / 1 bits widened to int8 rows, channels-last, per group
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
        for isa in _isas():
            qatkit._C.set_cpu_isa(isa)
            for packed in layouts:
                got = ops.conv2d_int8(x, packed, bits, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, s, zp, qmin, qmax,
                                      fb, groups)
                assert got.shape == (B, N, HW, HW) and torch.equal(got.reshape(B, N, -1), want), (isa, packed.shape)
    finally:
        qatkit._C.set_cpu_isa(old)


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
# (csrc/ops/cpu/qgemm_kernel.cpp, images_by_thread).
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

    _on_every_isa_and_thread_count(check)


@pytest.mark.parametrize("B", [1, 3, 20])
def test_small_map_xnor_convs_split_images_or_steps_across_threads(B):
    """conv2d_w1a1 on 8 x 8 maps with 33-byte bit rows (the batched path at any image count), as the
    test above."""
    g = torch.Generator().manual_seed(41 + B)
    C, N = 29, 40  # K = 261 codes: bit rows of 33 bytes
    x = torch.randn(B, C, 8, 8, generator=g)
    w = (torch.randint(0, 2, (N, C, 3, 3), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    want = _xnor_conv_reference(x, w, ws, fb, (1, 1), (1, 1), (1, 1))
    packed = ops.pack_binary_b1(w.reshape(N, -1))

    def check(isa, t):
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            got = ops.conv2d_w1a1(xi, packed, (3, 3), (1, 1), (1, 1), (1, 1), ws, fb)
            assert torch.equal(got, want), (isa, t, xi.is_contiguous())

    _on_every_isa_and_thread_count(check)


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
    """conv2d_w1a1's channels-last patch rows take the weight bits reordered once and held; an
    in-place write to the packed weight gives the new weight's conv."""
    g = torch.Generator().manual_seed(37)
    x = torch.randn(5, 8, 6, 6, generator=g)
    w = (torch.randint(0, 2, (20, 8, 3, 3), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(20, generator=g) + 0.1, torch.randn(20, generator=g)
    packed = ops.pack_binary_b1(w.reshape(20, -1))
    qatkit._C.clear_derived_weight_cache()
    for _ in range(2):
        got = ops.conv2d_w1a1(x, packed, (3, 3), (1, 1), (1, 1), (1, 1), ws, fb)
        assert torch.equal(got, _xnor_conv_reference(x, w, ws, fb, (1, 1), (1, 1), (1, 1)))
    info = qatkit._C.derived_weight_cache_info()
    assert info["entries"] == 1 and info["hits"] >= 1
    w2 = -w
    packed.copy_(ops.pack_binary_b1(w2.reshape(20, -1)))
    got = ops.conv2d_w1a1(x, packed, (3, 3), (1, 1), (1, 1), (1, 1), ws, fb)
    assert torch.equal(got, _xnor_conv_reference(x, w2, ws, fb, (1, 1), (1, 1), (1, 1)))
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
                                     (1, 5, 17, 8)])
def test_conv2d_w1a1_im2col_paths_equal_the_direct_conv_of_the_codes(B, C, HW, N):
    """conv2d_w1a1's channels-last patch rows as byte copies (C a multiple of 8) or code by code
    (C = 5), 9 rows against 40 outputs or more; one GEMM per image of 289 positions (images in
    parallel, or one image's rows and columns), or several small images' rows in one GEMM; against
    the float64 conv of the codes, on every ISA."""
    g = torch.Generator().manual_seed(29)
    x = torch.randn(B, C, HW, HW, generator=g)
    w = (torch.randint(0, 2, (N, C, 3, 3), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    want = _xnor_conv_reference(x, w, ws, fb, (1, 1), (1, 1), (1, 1))
    packed = ops.pack_binary_b1(w.reshape(N, -1))
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
            qatkit._C.set_cpu_isa(isa)
            assert torch.equal(ops.conv2d_w1a1(x, packed, (3, 3), (1, 1), (1, 1), (1, 1), ws, fb), want), isa
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
    8 x 8 blocks and edges): each channel equals linear_int8 over its unfolded patches, on every ISA,
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
        for isa in _isas():
            qatkit._C.set_cpu_isa(isa)
            for bias in (fb, None):
                got = ops.conv2d_int8(x, packed, bits, k, geom["s"], geom["p"], geom["d"], corr, scale, s, zp, qmin, qmax,
                                      bias, C)
                ref = _unfolded_conv_reference(x, w, corr, scale, (s, zp, qmin, qmax), bias, C, k, *geo)
                assert torch.equal(got.reshape(B, C, -1), ref), (isa, bias is None)
    finally:
        qatkit._C.set_cpu_isa(old)


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
        for isa in _isas():
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
        for isa in _isas():
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


# ---------------------------------------------------------------- W4A8, group-wise scales


def _w4_reference(x, w, gscale, gs, s, zp, qmin, qmax, bias):
    inv = torch.tensor(1.0) / torch.tensor(s, dtype=torch.float32)
    r = torch.round(x * inv).double()  # NaN stays NaN: its row is NaN, as in the float layer
    q = (r + zp).clamp(qmin, qmax) - zp
    n, k = w.shape
    t = None
    for g in range(k // gs):
        acc = q[:, g * gs:(g + 1) * gs] @ w[:, g * gs:(g + 1) * gs].double().t()  # exact in float64
        term = acc.double() * gscale[:, g].double()
        t = term if t is None else t + term  # float64, in group order
    y = (t * float(torch.tensor(s, dtype=torch.float32))).float()
    return y if bias is None else y + bias


# shapes cover the AVX-512 kernel's 16-row blocks (N % 16 tails), its 4-row activation tiles (M % 4
# tails) and its masked 64-byte K steps (K / 2 % 64 tails); zp = 128 on [0, 255] has no zero-point term.
# Batches of 1-3 rows on the panel run four blocks at a time (w4_gemv_blocks) where a thread has four
# or more: 130 and 250 rows end in a partial block inside such a run, 200 in a run's leftover blocks;
# where N is a multiple of 16 the panel also runs with its blocked scales (block_w4_scales).
@pytest.mark.parametrize("M,N,K,gs", [(1, 37, 128, 32), (5, 16, 64, 64), (3, 9, 96, 32), (2, 64, 1024, 128), (3, 7, 320, 32),
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
    shift = 128 if qmin >= 0 else 0
    packed = ops.pack_int4_w4(w)
    panel = ops.pack_int4_panel(packed)
    layouts = [(packed, gscale), (panel, gscale)] + ([(panel, ops.block_w4_scales(gscale))] if N % 16 == 0 else [])
    for bias in (None, torch.randn(N, generator=g)):
        want = _w4_reference(x, w, gscale, gs, 0.05, zp, qmin, qmax, bias)
        old = qatkit._C.cpu_isa()
        try:
            for isa in _isas():
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

    _on_every_isa_and_thread_count(check)


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


# ---------------------------------------------------------------- XNOR W1A1


def _xnor_conv_reference(x, w, ws, bias, stride, padding, dilation):
    """conv2d_w1a1 from its formula: the float64 conv of the binarized input's codes (zero padding:
    code 0) and the weight codes, fp32(acc) * fp32(alpha[b] * ws[n]) + bias."""
    import torch.nn.functional as F

    q, alpha = ops.binary_codes(x, "bitnet", 0)
    acc = F.conv2d(q.double(), w.double(), None, stride, padding, dilation).float()
    return acc * (alpha.reshape(-1, 1, 1, 1) * ws.reshape(1, -1, 1, 1)) + bias.reshape(1, -1, 1, 1)


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
                                     ((40, 270), 37), ((33, 1100), 20), ((48, 4200), 3)])
def test_w1a1_equals_the_integer_reference_on_every_isa(shape, N):
    """Every ISA against the formula. AVX-512's kernels: the qword-transposed one from 4 rows with
    short rows ((3, 4, 96), (40, 270): rows of 12 and 36 bytes, a 4-byte tail) and from 32 rows
    with rows up to 512 bytes ((33, 1100): a partial 16-row block), the 64-byte-step blocks past
    that ((48, 4200)) and below 4 rows."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=g) + 0.3
    K = shape[-1]
    w = (torch.randint(0, 2, (N, K), generator=g) * 2 - 1).to(torch.int8)
    ws = torch.rand(N, generator=g) + 0.1
    fb = torch.randn(N, generator=g)
    packed = ops.pack_binary_b1(w)
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
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

    _on_every_isa_and_thread_count(check)


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
        for isa in _isas():
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
    want = _xnor_conv_reference(x, w, ws, fb, (1, 1), (p, p), (1, 1))
    packed = ops.pack_binary_b1(w.reshape(N, -1))
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
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
    want = _xnor_conv_reference(x, w, ws, fb, geom["s"], geom["p"], geom["d"])
    packed = ops.pack_binary_b1(w.reshape(N, -1))
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
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
                                  dict(k=(5, 5), s=(1, 1), p=(2, 2), d=(1, 1))])
@pytest.mark.parametrize("C,N,groups,HW", [(24, 24, 24, (9, 7)), (40, 40, 40, (4, 4)), (16, 32, 16, (9, 12)),
                                           (12, 18, 6, (9, 7)), (8, 8, 8, (3, 3))])
def test_grouped_conv2d_w1a1_equals_the_direct_conv_of_the_codes(geom, C, N, groups, HW):
    """conv2d_w1a1 with groups: depthwise (one input channel per group; 32+ channels: a partial
    block of the AVX-512 kernel's 32; two outputs per channel on rows of 12: the planar kernel) on
    conv2d_int8's direct kernels with the codes given and per-image scales, other grouped convs
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
        for isa in _isas():
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
    want = _xnor_conv_reference(x, w, ws, fb, (1, 1), (p, p), (1, 1)).nan_to_num(123.0)
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
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
    assert torch.equal(got, _xnor_conv_reference(x, w, ws, fb, (1, 1), (0, 0), (1, 1)))


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
        for isa in _isas():
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
        for isa in _isas():
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


# ---------------------------------------------------------------- per-token dynamic inputs ("row" form)


def _per_token_reference(x, w, ws, qmax, bias, per_tensor=False):
    """Per-row scales and codes from the formulas (amax, clamp at 1e-5, / qmax; x * (1 / s) rounded half
    to even, NaN -> 0, clamped), int64 sums of the codes, fp32(acc) * fp32(s * ws), then + bias.
    per_tensor: every row with the whole input's scale."""
    rows = x.reshape(-1, x.shape[-1])
    amax = rows.abs().amax(dim=1) if rows.shape[0] else torch.zeros(0)
    if per_tensor and rows.shape[0]:
        amax = amax.max().expand(rows.shape[0])
    s = torch.where(torch.isnan(amax), amax, torch.clamp(amax, min=torch.tensor(1e-5)) / torch.tensor(float(qmax)))
    r = torch.round(rows * (torch.tensor(1.0) / s).unsqueeze(1))
    q = torch.where(torch.isnan(r), torch.zeros_like(r), r).clamp(-qmax - 1, qmax).long()
    y = (q @ w.long().t()).float() * (s.unsqueeze(1) * ws.unsqueeze(0))
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], w.shape[0])


def _per_token_weights(bits, N, K, g):
    """(codes [N, K], its layouts for linear_dynamic_int8 at `bits`)."""
    if bits == 8:
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        return w, [w, ops.pack_int8_panel(w)]
    if bits == 2:
        w = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=g)
        return w, [ops.pack_ternary_t2(w)]
    w = (torch.randint(0, 2, (N, K), dtype=torch.int8, generator=g) * 2 - 1).to(torch.int8)
    return w, [ops.pack_binary_b1(w), ops.pack_binary_panel(ops.pack_binary_b1(w))]


# (1, 64, 4096): the GEMV paths; (70, 40, 129) and (6, 48, 300): the register blocks and tails
@pytest.mark.parametrize("M,N,K", [(1, 48, 100), (1, 64, 4096), (3, 33, 300), (5, 64, 256), (70, 40, 129), (6, 48, 300),
                                   (0, 8, 32), (2, 1, 1)])
@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("qmax", [127, 7])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_dynamic_int8_equals_the_per_token_reference_on_every_isa(M, N, K, bits, qmax, per_tensor):
    g = torch.Generator().manual_seed(M * 1000 + N + K)
    x = torch.randn(M, K, generator=g) * 3
    if M > 1:
        x[1] *= 1e-3  # rows whose scales differ by 1000x
    w, layouts = _per_token_weights(bits, N, K, g)
    ws, b = torch.rand(N, generator=g) + 0.05, torch.randn(N, generator=g)
    old = qatkit._C.cpu_isa()
    try:
        for bias in (None, b):
            want = _per_token_reference(x, w, ws, qmax, bias, per_tensor)
            for isa in _isas():
                assert qatkit._C.set_cpu_isa(isa)
                for p in layouts:
                    got = ops.linear_dynamic_int8(x, p, bits, ws, qmax, bias, per_tensor)
                    assert got.shape == (M, N) and torch.equal(got, want), (isa, tuple(p.shape))
    finally:
        qatkit._C.set_cpu_isa(old)


def test_dynamic_int8_zero_rows_nan_inf_and_leading_dims():
    """A zero row (scale clamped at 1e-5 / qmax: output 0), a -128 code, a [B, T, K] input keeps
    [B, T, N]; a row holding NaN or Inf has no finite per-token scale: a ValueError naming the row
    (quantize_per_token raises on it too), on every ISA."""
    g = torch.Generator().manual_seed(3)
    K, N = 200, 24
    x = torch.randn(2, 3, K, generator=g)
    x[0, 0] = 0.0
    x[1, 0] = -torch.arange(K, dtype=torch.float32)  # -max codes to -127, -max * (1 + 2^-9) to -128
    x[1, 0, 0] = -float(K - 1) * (1 + 2**-9)
    w, layouts = _per_token_weights(2, N, K, g)
    ws = torch.rand(N, generator=g) + 0.05
    want = _per_token_reference(x, w, ws, 127, None)
    got = ops.linear_dynamic_int8(x, layouts[0], 2, ws)
    assert got.shape == (2, 3, N) and torch.equal(got, want) and bool((got[0, 0] == 0).all())
    old = qatkit._C.cpu_isa()
    try:
        for isa in _isas():
            assert qatkit._C.set_cpu_isa(isa)
            for bad in (float("nan"), float("inf"), -float("inf")):
                xb = x.clone()
                xb[1, 1, 7] = bad
                with pytest.raises(ValueError, match=r"input row 4 .* holds NaN or Inf"):
                    ops.linear_dynamic_int8(xb, layouts[0], 2, ws)
                with pytest.raises(ValueError, match=r"the input holds NaN or Inf: its per-tensor scale"):
                    ops.linear_dynamic_int8(xb, layouts[0], 2, ws, 127, None, True)
    finally:
        qatkit._C.set_cpu_isa(old)


# The threads split a Linear's input rows (each quantizes its rows and runs the whole weight on them)
# from 32 rows when the weight is at most 2 MiB, in chunks of at least 2^18 multiply-adds, and its
# output columns otherwise (csrc/ops/cpu/qgemm_kernel.cpp, row_chunk): [67, 1000] x 70 splits rows,
# 34 / 33 at 2 threads, 23 / 23 / 21 at 3 (tails of every kernel's row tiles in each chunk); at 1
# thread the same product runs the column form; [40, 2048] x 1040 int8 (2.03 MiB) splits columns
# from 32 rows; [40, 1000] x 5 (small chunks) runs on one thread. 2- and 1-bit weights from 16 rows
# run on their codes widened to an int8 panel where N * K <= 2 MiB (kLinearWidenRows), so the
# packed kernels run [40, 2048] x 1040 here.
_SPLIT_SHAPES = [(67, 70, 1000), (40, 1040, 2048), (40, 5, 1000), (33, 70, 1000)]


def _split_cases(M, N, K, g):
    """(label, call, reference output) of every linear kernel with int8 activations on [M, K] x N."""
    x = torch.randn(M, K, generator=g) * 3
    x[1] *= 1e-3  # a row whose per-token scale differs by 1000x
    s, zp, qmin, qmax = 0.05, 3, 0, 255
    scale, fb = torch.rand(N, generator=g) * 1e-3 + 1e-5, torch.randn(N, generator=g)
    bias_q = torch.randint(-5000, 5000, (N,), dtype=torch.int32, generator=g)
    cases = []
    for bits in (8, 2, 1):
        w, layouts = _per_token_weights(bits, N, K, g)
        corr = (bias_q.long() + (128 - zp) * w.long().sum(1)).int()
        want = _reference(x, w, bias_q, scale, s, zp, qmin, qmax)
        op = {8: ops.linear_int8, 2: ops.linear_w2a8, 1: ops.linear_w1a8}[bits]
        for p in layouts:
            cases.append((f"w{bits}a8 {tuple(p.shape)}", lambda op=op, p=p, c=corr: op(x, p, c, scale, s, zp, qmin, qmax), want))
        ws = torch.rand(N, generator=g) + 0.05
        for per_tensor in (False, True):
            want_d = _per_token_reference(x, w, ws, 127, fb, per_tensor)
            for p in layouts:
                cases.append((f"dynamic w{bits} per_tensor={per_tensor} {tuple(p.shape)}",
                              lambda p=p, b=bits, ws=ws, pt=per_tensor: ops.linear_dynamic_int8(x, p, b, ws, 127, fb, pt),
                              want_d))
    if K % 32 == 0 and N * K <= 1 << 20:
        w4 = torch.randint(-8, 8, (N, K), dtype=torch.int8, generator=g)
        gscale = torch.rand(N, K // 32, generator=g) * 0.1
        packed = ops.pack_int4_w4(w4)
        want4 = _w4_reference(x, w4, gscale, 32, s, zp, qmin, qmax, fb)
        for p in (packed, ops.pack_int4_panel(packed)):
            cases.append((f"w4a8 {tuple(p.shape)}", lambda p=p: ops.linear_w4a8(x, p, gscale, 32, s, zp, qmin, qmax, fb), want4))
    return cases


@pytest.mark.parametrize("M,N,K", _SPLIT_SHAPES + [(67, 70, 1024)])
def test_row_and_column_thread_splits_equal_the_references(M, N, K):
    cases = _split_cases(M, N, K, torch.Generator().manual_seed(M + N + K))

    def check(isa, t):
        for label, call, want in cases:
            assert torch.equal(call(), want), (isa, t, label)

    _on_every_isa_and_thread_count(check)


@pytest.mark.parametrize("layout", ["ternary", "binary", "binary panel"])
def test_low_bit_linear_holds_its_widened_weight_until_the_weight_changes(layout):
    """From 16 input rows a 2- or 1-bit Linear weight runs on its codes widened to an int8 panel,
    derived once and held (qatkit/weight_cache.h, as conv2d_int8's forms): the second call hits; an
    in-place write to the weight derives it again; 15 rows run the packed kernel (nothing held);
    linear_dynamic_int8 shares the form. Every output equals the reference of the weight it saw."""
    g = torch.Generator().manual_seed(43)
    bits = 2 if layout == "ternary" else 1
    N, K = 40, 300
    x = torch.randn(20, K, generator=g) * 3
    w, _ = _per_token_weights(bits, N, K, g)
    pack = {"ternary": lambda c: ops.pack_ternary_t2(c), "binary": lambda c: ops.pack_binary_b1(c),
            "binary panel": lambda c: ops.pack_binary_panel(ops.pack_binary_b1(c))}[layout]
    packed = pack(w)
    op = ops.linear_w2a8 if bits == 2 else ops.linear_w1a8
    s, zp, qmin, qmax = 0.05, 3, 0, 255
    scale, bias_q = torch.rand(N, generator=g) * 1e-3, torch.randint(-500, 500, (N,), dtype=torch.int32, generator=g)

    def run(p, codes, rows=20):
        corr = (bias_q.long() + (128 - zp) * codes.long().sum(1)).int()
        got = op(x[:rows], p, corr, scale, s, zp, qmin, qmax)
        return torch.equal(got, _reference(x[:rows], codes, bias_q, scale, s, zp, qmin, qmax))

    info = qatkit._C.derived_weight_cache_info
    qatkit._C.clear_derived_weight_cache()
    i0 = info()
    assert run(packed, w, rows=15) and info()["entries"] == 0
    assert run(packed, w)
    i1 = info()
    assert (i1["entries"], i1["misses"] - i0["misses"], i1["hits"] - i0["hits"]) == (1, 1, 0)
    assert run(packed, w) and info()["hits"] - i1["hits"] == 1
    ws = torch.rand(N, generator=g) + 0.05
    want_d = _per_token_reference(x, w, ws, 127, None)
    assert torch.equal(ops.linear_dynamic_int8(x, packed, bits, ws), want_d) and info()["hits"] - i1["hits"] == 2
    w2 = w.flip(0).contiguous()
    packed.copy_(pack(w2))
    assert run(packed, w2)
    assert info()["entries"] == 1 and info()["misses"] - i1["misses"] == 1


def test_dynamic_int8_row_chunks_name_the_first_bad_row():
    """Rows split across threads (each chunk quantizes its rows, the per-token scales are checked
    after the chunks): NaN / Inf in rows 60 and 5 names row 5, at 1, 2 and 3 threads."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(67, 1000, generator=g)
    x[60, 3], x[5, 9] = float("inf"), float("nan")
    w, layouts = _per_token_weights(8, 70, 1000, g)
    ws = torch.rand(70, generator=g) + 0.05
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            for p in layouts:
                with pytest.raises(ValueError, match=r"input row 5 \(of the 67 rows"):
                    ops.linear_dynamic_int8(x, p, 8, ws)
    finally:
        torch.set_num_threads(threads)


def test_dynamic_int8_opcheck_compile_export_and_errors():
    from torch.export import Dim, export

    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 70, generator=g)
    w8 = torch.randint(-127, 128, (20, 70), dtype=torch.int8, generator=g)
    w2 = torch.randint(-1, 2, (20, 70), dtype=torch.int8, generator=g)
    ws, b = torch.rand(20, generator=g) + 0.1, torch.randn(20, generator=g)
    p8, p2 = ops.pack_int8_panel(w8), ops.pack_ternary_t2(w2)
    pb = ops.pack_binary_panel(ops.pack_binary_b1(torch.where(w2 >= 0, 1, -1).to(torch.int8)))
    op = torch.ops.qatkit.linear_dynamic_int8.default
    for args in ((x, p8, 8, ws, 127, b), (x, p2, 2, ws, 7, None, True), (x, pb, 1, ws, 127, b)):
        torch.library.opcheck(op, args)
    f = torch.compile(lambda t: ops.linear_dynamic_int8(t, p2, 2, ws, 127, b), fullgraph=True)
    assert torch.equal(f(x), ops.linear_dynamic_int8(x, p2, 2, ws, 127, b))

    class Lin(torch.nn.Module):
        def forward(self, v):
            return ops.linear_dynamic_int8(v, p8, 8, ws, 127, b)

    ep = export(Lin(), (torch.randn(2, 70),), dynamic_shapes={"v": {0: Dim("m")}})
    v = torch.randn(9, 70)
    assert torch.equal(ep.module()(v), Lin()(v))
    with pytest.raises(ValueError, match="weight_bits must be 8, 2 or 1, got 4"):
        ops.linear_dynamic_int8(x, w8, 4, ws)
    with pytest.raises(ValueError, match=r"weight_scale must have shape \[N\] = \[20\], got \[3\]"):
        ops.linear_dynamic_int8(x, w8, 8, ws[:3])
    with pytest.raises(ValueError, match=r"panel weight \(pack_int8_panel\) for N = 3 \(weight_scale's length\)"):
        ops.linear_dynamic_int8(x, p8, 8, ws[:3])
    with pytest.raises(TypeError, match="weight_scale must be float32"):
        ops.linear_dynamic_int8(x, w8, 8, ws.double())
    with pytest.raises(ValueError, match=r"act_quant_max must lie in \[1, 127\].*got 255"):
        ops.linear_dynamic_int8(x, w8, 8, ws, 255)
    with pytest.raises(TypeError, match="2-bit codes, packed"):
        ops.linear_dynamic_int8(x, w2, 2, ws)
    with pytest.raises(ValueError, match="K_pad / 4 = 32"):
        ops.linear_dynamic_int8(x, p2[:, :16], 2, ws)
    with pytest.raises(TypeError, match="input must be float32"):
        ops.linear_dynamic_int8(x.double(), w8, 8, ws)
    with pytest.raises(ValueError, match=r"bias must have shape \[N\] = \[20\]"):
        ops.linear_dynamic_int8(x, w8, 8, ws, 127, b[:4])


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
        for isa in _isas():
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
        for isa in _isas():
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
    isas = _isas()
    if "avx512" not in isas:
        pytest.skip("this CPU has no AVX-512 VNNI table to compare the AVX2 kernel with (" + ", ".join(isas) + ")")
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
    isas = _isas()
    if "avx2" not in isas:
        pytest.skip("this CPU has no AVX2 table, whose packed GEMM this tests (" + ", ".join(isas) + ")")
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
        for isa in _isas():
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
        for isa in _isas():
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
                    "bf16 path; isas here: " + ", ".join(_isas()) + ")")


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
