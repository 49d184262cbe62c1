"""ops.linear_dynamic_int8 (per-token dynamic int8 inputs, "row" form) against the per-token reference
on every CPU ISA; row and column thread splits of the integer ops; widened low-bit weights held
until the weight changes; opcheck; compile; export; errors."""


import pytest
import torch

import qatkit
from qatkit import ops
from qatkit.testing.integer import (
    isas,
    linear_int8_reference,
    on_every_isa_and_thread_count,
    w4a8_reference,
)

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
            for isa in isas():
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
        for isa in isas():
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
        want = linear_int8_reference(x, w, bias_q, scale, s, zp, qmin, qmax)
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
        want4 = w4a8_reference(x, w4, gscale, 32, s, zp, qmin, qmax, fb)
        for p in (packed, ops.pack_int4_panel(packed)):
            cases.append((f"w4a8 {tuple(p.shape)}", lambda p=p: ops.linear_w4a8(x, p, gscale, 32, s, zp, qmin, qmax, fb), want4))
    return cases


@pytest.mark.parametrize("M,N,K", _SPLIT_SHAPES + [(67, 70, 1024)])
def test_row_and_column_thread_splits_equal_the_references(M, N, K):
    cases = _split_cases(M, N, K, torch.Generator().manual_seed(M + N + K))

    def check(isa, t):
        for label, call, want in cases:
            assert torch.equal(call(), want), (isa, t, label)

    on_every_isa_and_thread_count(check)


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
        return torch.equal(got, linear_int8_reference(x[:rows], codes, bias_q, scale, s, zp, qmin, qmax))

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
