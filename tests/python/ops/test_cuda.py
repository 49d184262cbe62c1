"""CUDA kernels: results equal the CPU kernels bit for bit (values and STE masks) for every
sample, no host synchronisation on the op path, opcheck on CUDA samples. Run by
scripts/gpu_check.sh on the GPU machine; skipped where torch has no CUDA device."""

import pytest
import torch

import qatkit
from qatkit import ops
from qatkit.testing.samples import DTYPES, conv_int8_case, sample_inputs, w4_weight_only_case

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and qatkit.build_info()["cuda"]),
    reason="needs a CUDA device and qatkit built with CUDA (scripts/gpu_check.sh on the GPU machine)",
)

SAMPLES = list(sample_inputs()) if torch.cuda.is_available() else []


def _bits_equal(a: torch.Tensor, b: torch.Tensor):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    assert torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


@pytest.mark.parametrize("sample", SAMPLES, ids=repr)
def test_cuda_equals_cpu(sample):
    cpu = torch.ops.qatkit._fake_quantize_with_mask(*sample.args())
    dev = [a.cuda() if isinstance(a, torch.Tensor) else a for a in sample.args()]
    gpu = torch.ops.qatkit._fake_quantize_with_mask(*dev)
    _bits_equal(gpu[0].cpu(), cpu[0])
    # mask bytes equal (padding bits past numel are zero on both)
    assert torch.equal(gpu[1].cpu(), cpu[1])
    g = torch.randn(sample.input.shape).to(sample.input.dtype)
    _bits_equal(
        torch.ops.qatkit._fake_quantize_backward(g.cuda(), gpu[1]).cpu(),
        torch.ops.qatkit._fake_quantize_backward(g, cpu[1]),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_special_values_and_unaligned_pointers(dtype):
    x = torch.randn(1001) * 5
    x[3], x[10], x[20] = float("nan"), float("inf"), -float("inf")
    x = x.to(dtype)
    s, z = torch.tensor([0.05]), torch.tensor([2], dtype=torch.int32)
    for offset in (0, 1, 3):  # storage offsets that break 16-byte alignment
        xc = x[offset:]
        _bits_equal(ops.fake_quantize(xc.cuda(), s.cuda(), z.cuda(), -8, 7).cpu(), ops.fake_quantize(xc, s, z, -8, 7))


def test_no_host_sync_on_the_op_path():
    x = torch.randn(4096, 256, device="cuda", requires_grad=True)
    s = torch.rand(4096, device="cuda") * 0.02 + 0.01
    z = torch.zeros(4096, device="cuda", dtype=torch.int32)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = ops.fake_quantize(x, s, z, -128, 127, axis=0)
        y.backward(torch.ones_like(y))
        ops.fake_quantize(x.detach(), s, z, -128, 127, axis=0, out=torch.empty_like(x))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_cuda_runs_on_the_current_stream():
    x = torch.randn(1 << 20, device="cuda")
    s, z = torch.tensor([0.01], device="cuda"), torch.tensor([0], device="cuda", dtype=torch.int32)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = ops.fake_quantize(x, s, z, -128, 127)
    stream.synchronize()
    assert torch.equal(y.cpu(), ops.fake_quantize(x.cpu(), s.cpu(), z.cpu(), -128, 127))


@pytest.mark.parametrize("sample", SAMPLES[::8][:20], ids=repr)
def test_opcheck_cuda(sample):
    dev = [a.cuda() if isinstance(a, torch.Tensor) else a for a in sample.args()]
    dev[0] = dev[0].detach().requires_grad_(sample.input.numel() % 2 == 1)
    torch.library.opcheck(torch.ops.qatkit.fake_quantize.default, tuple(dev))


def test_choose_qparams_cuda_equals_cpu():
    x = torch.randn(64, 128)
    for kw in ({}, {"axis": 0}, {"group_size": 32}):
        for sym in (True, False):
            sc, zc = ops.choose_qparams(x, -8, 7, sym, **kw)
            sg, zg = ops.choose_qparams(x.cuda(), -8, 7, sym, **kw)
            assert torch.equal(sg.cpu(), sc) and torch.equal(zg.cpu(), zc)


@pytest.mark.parametrize("sample", SAMPLES[::4], ids=repr)
def test_learnable_backward_cuda_matches_cpu(sample):
    z = sample.zero_point.float() + 0.3
    g = torch.randn(sample.input.shape).to(sample.input.dtype)
    args = (sample.quant_min, sample.quant_max, sample.axis, sample.group_size, 0.5)
    dx_c, ds_c, dz_c = torch.ops.qatkit._fake_quantize_learnable_backward(g, sample.input, sample.scale, z, *args)
    dx_g, ds_g, dz_g = torch.ops.qatkit._fake_quantize_learnable_backward(
        g.cuda(), sample.input.cuda(), sample.scale.cuda(), z.cuda(), *args
    )
    _bits_equal(dx_g.cpu(), dx_c)  # elementwise: identical
    # reductions: float64 accumulation in a different order
    torch.testing.assert_close(ds_g.cpu(), ds_c, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dz_g.cpu(), dz_c, rtol=1e-5, atol=1e-4)


def test_learnable_no_host_sync_and_deterministic():
    x = torch.randn(4096, 512, device="cuda", requires_grad=True)
    s = torch.full((1,), 0.02, device="cuda", requires_grad=True)
    z = torch.zeros(1, device="cuda", requires_grad=True)
    g = torch.randn(4096, 512, device="cuda")
    grads = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            x.grad = s.grad = z.grad = None
            ops.fake_quantize_learnable(x, s, z, -128, 127).backward(g)
            grads.append((x.grad.clone(), s.grad.clone(), z.grad.clone()))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for a, b in zip(grads[0], grads[1], strict=True):
        assert torch.equal(a, b)


def test_pact_backward_cuda_matches_cpu():
    x = torch.randn(3000) * 3
    g = torch.randn(3000)
    alpha = torch.tensor([1.5])
    dx_c, da_c = torch.ops.qatkit._pact_quantize_backward(g, x, alpha)
    dx_g, da_g = torch.ops.qatkit._pact_quantize_backward(g.cuda(), x.cuda(), alpha.cuda())
    assert torch.equal(dx_g.cpu(), dx_c)
    torch.testing.assert_close(da_g.cpu(), da_c, rtol=1e-6, atol=1e-5)
    assert torch.equal(ops.pact_quantize(x.cuda(), alpha.cuda(), 15).cpu(), ops.pact_quantize(x, alpha, 15))


@pytest.mark.parametrize("scaling", ["none", "mean_abs", "bitnet"])
@pytest.mark.parametrize("estimator", ["identity", "clipped_ste", "approx_sign", "swish_sign"])
def test_binarize_cuda_matches_cpu(scaling, estimator):
    x = torch.randn(64, 48)
    g = torch.randn(64, 48)
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    yc = ops.binarize(xc, scaling, 0, estimator, 1.5)
    yg = ops.binarize(xg, scaling, 0, estimator, 1.5)
    torch.testing.assert_close(yg.cpu(), yc, rtol=1e-6, atol=0)  # scales: reductions in another order
    yc.backward(g)
    yg.backward(g.cuda())
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-5, atol=1e-6)


def test_stochastic_binarize_same_bits_on_cuda():
    x = torch.randn(100_000) * 0.5
    seed = torch.tensor([77])
    assert torch.equal(ops.binarize(x.cuda(), seed=seed.cuda()).cpu(), ops.binarize(x, seed=seed))


def test_fused_observer_cuda_matches_cpu_without_sync():
    x = torch.randn(256, 64)
    bufs_c = [
        torch.tensor([float("inf")]),
        torch.tensor([float("-inf")]),
        torch.ones(1),
        torch.zeros(1, dtype=torch.int32),
    ]
    bufs_g = [b.cuda() for b in bufs_c]
    on = torch.tensor([1])
    xg, on_g = x.cuda(), on.cuda()  # before the sync check: a copy from pageable host memory syncs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yg = ops.fused_observe_fake_quantize(xg, *bufs_g, on_g, on_g, 0.01, True, 0, 255)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    yc = ops.fused_observe_fake_quantize(x, *bufs_c, on, on, 0.01, True, 0, 255)
    for a, b in zip(bufs_g, bufs_c, strict=True):
        assert torch.equal(a.cpu(), b)
    assert torch.equal(yg.cpu(), yc)


@pytest.mark.parametrize("method", ["absmean", "twn"])
@pytest.mark.parametrize("axis", [None, 0])
def test_ternarize_cuda_matches_cpu(method, axis):
    """CUDA runs the composite TWN form, the CPU the fused kernels: same codes, magnitudes to
    float32 rounding (statistics reduced in another order)."""
    w = torch.randn(96, 200)
    yc = ops.ternarize(w, method, axis)
    yg = ops.ternarize(w.cuda(), method, axis).cpu()
    assert torch.equal(yg != 0, yc != 0)
    torch.testing.assert_close(yg, yc, rtol=1e-6, atol=0)


def test_binarize_backward_out_cuda_matches_cpu():
    x, g = torch.randn(64, 48), torch.randn(64, 48)
    bwd = torch.ops.qatkit._binarize_backward
    out = torch.empty(64, 48, device="cuda")
    bwd.out(g.cuda(), x.cuda(), None, None, "approx_sign", 1.0, grad_input=out)
    torch.testing.assert_close(out.cpu(), bwd(g, x, None, None, "approx_sign", 1.0), rtol=1e-6, atol=0)


def test_cuda_observer_ignores_a_non_finite_batch_without_a_host_sync():
    """The device-generic observer update keeps the state of rows whose batch is NaN / Inf or wider
    than float32 (the CPU kernel raises instead; a CUDA raise would need a host sync)."""
    rmin, rmax = torch.full((2,), float("inf"), device="cuda"), torch.full((2,), float("-inf"), device="cuda")
    s, z = torch.ones(2, device="cuda"), torch.zeros(2, dtype=torch.int32, device="cuda")
    on = torch.ones(1, dtype=torch.int64, device="cuda")  # the switch: a bool or integer tensor
    x = torch.randn(4, 2, device="cuda")
    ops.observer_update(x, rmin, rmax, s, z, on, 0.01, True, -128, 127, False, 1)
    state = [t.clone() for t in (rmin, rmax, s, z)]
    bad = torch.randn(4, 2, device="cuda")
    bad[1, 0] = float("nan")
    ops.observer_update(bad, rmin, rmax, s, z, on, 0.01, True, -128, 127, False, 1)
    assert torch.equal(rmin[0], state[0][0]) and torch.equal(s[0], state[2][0])  # channel 0 untouched
    assert not torch.equal(rmin[1:], state[0][1:]) or not torch.equal(rmax[1:], state[1][1:])  # channel 1 observed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels,n", [(1, 100_000), (7, 3000)])
def test_histogram_update_cuda_matches_cpu(dtype, channels, n):
    g = torch.Generator().manual_seed(n)
    rows = (torch.randn(channels, n, generator=g) * torch.logspace(-2, 2, channels)[:, None]).to(dtype)
    lo, hi = rows.amin(1).double() * 1.3, rows.amax(1).double() * 1.1
    h_cpu = torch.zeros(channels, 512, dtype=torch.float64)
    h_gpu = h_cpu.cuda()
    ops.histogram_update(rows, h_cpu, lo, hi)
    ops.histogram_update(rows.cuda(), h_gpu, lo.cuda(), hi.cuda())
    assert torch.equal(h_gpu.cpu(), h_cpu)
    torch.library.opcheck(torch.ops.qatkit._histogram_update.default, (rows.cuda(), h_gpu, lo.cuda(), hi.cuda()))


# ---------------------------------------------------------------- integer GEMM family (issue 13)


@pytest.fixture(params=["plain", "fast"])
def gemv_form(request, monkeypatch):
    """Both CUDA forms of the integer kernels (QATKIT_CUDA_GEMV, read per launch): the vector form
    (the default) and the plain form (kernels/cuda/qgemm.cu). Shapes whose rows are not 16-byte
    multiples run the plain form in both."""
    monkeypatch.setenv("QATKIT_CUDA_GEMV", request.param)
    return request.param


@pytest.mark.parametrize("bits", [8, 2, 1])
# (20, 40, 133) and (64, 128, 1024): torch._int_mm from 17 rows (ternary / binary: on the unpacked codes)
@pytest.mark.parametrize("M,N,K", [(1, 37, 133), (5, 16, 64), (3, 9, 1), (3, 40, 256), (20, 40, 133), (64, 128, 1024),
                                   (0, 8, 16)])
@pytest.mark.parametrize("qrange,zp", [((0, 255), 3), ((-128, 127), -7)])
def test_integer_linear_kernels_cuda_equal_cpu(bits, M, N, K, qrange, zp, gemv_form):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(M, K, generator=g) * 3
    x[:, ::7] = float("nan") if M else x[:, ::7]
    if bits == 8:
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        packed, op = w, ops.linear_int8
    elif bits == 2:
        w = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=g)
        packed, op = ops.pack_ternary_t2(w), ops.linear_w2a8
    else:
        w = (torch.randint(0, 2, (N, K), generator=g) * 2 - 1).to(torch.int8)
        packed, op = ops.pack_binary_b1(w), ops.linear_w1a8
    qmin, qmax = qrange
    corr = (torch.randint(-500, 500, (N,), generator=g) + ((128 if qmin >= 0 else 0) - zp) * w.long().sum(1)).int()
    scale = torch.rand(N, generator=g) * 1e-2
    # the panels: what qatkit.load gives (CUDA reads the binary panel back in rows, the same bits)
    layouts = [packed] + ([ops.pack_int8_panel(w)] if bits == 8 else [ops.pack_binary_panel(packed)] if bits == 1 else [])
    for bias in (None, torch.randn(N, generator=g)):
        cpu = op(x, packed, corr, scale, 0.05, zp, qmin, qmax, bias)
        for layout in layouts:
            gpu = op(x.cuda(), layout.cuda(), corr.cuda(), scale.cuda(), 0.05, zp, qmin, qmax,
                     None if bias is None else bias.cuda())
            _bits_equal(gpu.cpu(), cpu)  # NaN rows: the rows whose input holds a NaN (docs/integer.md)
    if bits == 8:  # input_divisor (SmoothQuant's x / s): CUDA divides in its own pass, the CPU fused
        d = torch.rand(K, generator=g) + 0.05
        cpu = op(x, packed, corr, scale, 0.05, zp, qmin, qmax, None, d)
        for layout in layouts:
            gpu = op(x.cuda(), layout.cuda(), corr.cuda(), scale.cuda(), 0.05, zp, qmin, qmax, None, d.cuda())
            _bits_equal(gpu.cpu(), cpu)  # input_divisor


@pytest.mark.parametrize("M,N,K", [(1, 37, 133), (5, 16, 64), (12, 40, 96), (64, 128, 1024), (0, 8, 16)])
def test_w8_weight_only_cuda_within_the_float_bound(M, N, K, gemv_form):
    """linear_w8_weight_only on CUDA (a float kernel: a warp per output, its own order): within
    K * 2^-24 * sum|x * w| of the float64 product of the dequantized weight, as the CPU."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(M, K, generator=g)
    q = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
    s, b = torch.rand(N, generator=g) * 0.01, torch.randn(N, generator=g)
    wd = q.double() * s.double().unsqueeze(1)
    want = x.double() @ wd.t() + b.double()
    bound = K * 2.0**-24 * (x.abs().double() @ wd.abs().t()) + 2.0**-23 * want.abs() + 1e-30
    gpu = ops.linear_w8_weight_only(x.cuda(), q.cuda(), s.cuda(), b.cuda()).cpu()
    assert bool(((gpu.double() - want).abs() <= bound).all())
    if M:
        torch.library.opcheck(torch.ops.qatkit.linear_w8_weight_only.default, (x.cuda(), q.cuda(), s.cuda(), b.cuda()))


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("M,N,K", [(1, 37, 133), (5, 16, 64), (3, 40, 256), (20, 40, 133), (64, 128, 1024), (0, 8, 16)])
def test_dynamic_int8_cuda_equals_cpu(bits, M, N, K, gemv_form):
    """linear_dynamic_int8 (per-token int8 inputs: BitLinear): the row scales by ATen ops, the
    per-row quantization and the final scaling give the CPU's bits, every layout; opcheck on CUDA."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(M, K, generator=g) * 3
    if M > 1:
        x[1] *= 1e-3
    if bits == 8:
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        layouts = [w, ops.pack_int8_panel(w)]
    elif bits == 2:
        layouts = [ops.pack_ternary_t2(torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=g))]
    else:
        p = ops.pack_binary_b1((torch.randint(0, 2, (N, K), generator=g) * 2 - 1).to(torch.int8))
        layouts = [p, ops.pack_binary_panel(p)]
    ws = torch.rand(N, generator=g) + 0.05
    for qmax, per_tensor in ((127, False), (7, False), (127, True)):
        for bias in (None, torch.randn(N, generator=g)):
            for layout in layouts:
                cpu = ops.linear_dynamic_int8(x, layout, bits, ws, qmax, bias, per_tensor)
                gpu = ops.linear_dynamic_int8(x.cuda(), layout.cuda(), bits, ws.cuda(), qmax,
                                              None if bias is None else bias.cuda(), per_tensor)
                assert torch.equal(gpu.cpu(), cpu), (qmax, per_tensor, layout.dim())
    if M:
        torch.library.opcheck(torch.ops.qatkit.linear_dynamic_int8.default,
                              (x.cuda(), layouts[-1].cuda(), bits, ws.cuda(), 127, torch.randn(N, device="cuda")))


def test_integer_linear_opcheck_cuda():
    x = torch.randn(3, 40, device="cuda")
    w = torch.randint(-127, 128, (8, 40), dtype=torch.int8, device="cuda")
    args = (x, w, torch.zeros(8, dtype=torch.int32, device="cuda"), torch.ones(8, device="cuda"), 0.1, 0, -128, 127)
    torch.library.opcheck(torch.ops.qatkit.linear_int8.default, args)
    panel = ops.pack_int8_panel(w)
    assert torch.equal(panel.cpu(), ops.pack_int8_panel(w.cpu()))  # the composite packing on CUDA
    torch.library.opcheck(torch.ops.qatkit.linear_int8.default, (x, panel) + args[2:])


@pytest.mark.parametrize("M,N,K,gs", [(1, 37, 128, 32), (5, 16, 64, 64), (9, 33, 224, 32), (40, 33, 224, 32),
                                      (20, 40, 256, 64), (64, 128, 1024, 128), (0, 8, 32, 32)])
@pytest.mark.parametrize("qrange,zp", [((0, 255), 3), ((-128, 127), -7), ((0, 255), 128)])
@pytest.mark.parametrize("mma", ["0", "1"])
def test_w4a8_cuda_equals_cpu_in_both_layouts(M, N, K, gs, qrange, zp, mma, gemv_form, monkeypatch):
    """The float64 group combination in group order gives the CPU's bits; the panel layout
    (pack_int4_panel, what qatkit.load gives) reads the same codes as the row layout. mma "1": the
    opt-in tensor-core kernel (QATKIT_CUDA_MMA=1, vector form, rows, beyond 16 rows; (40, 33) and
    (20, 40) cover partial 16 x 8 tiles and two chunks per group)."""
    monkeypatch.setenv("QATKIT_CUDA_MMA", mma)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(M, K, generator=g) * 3
    x[:, ::7] = float("nan") if M else x[:, ::7]
    w = torch.randint(-8, 8, (N, K), dtype=torch.int8, generator=g)
    packed = ops.pack_int4_w4(w)
    panel = ops.pack_int4_panel(packed)
    assert torch.equal(ops.pack_int4_panel(packed.cuda()).cpu(), panel)  # the composite packing on CUDA
    gscale = torch.rand(N, K // gs, generator=g) * 0.1
    qmin, qmax = qrange
    for bias in (None, torch.randn(N, generator=g)):
        cpu = ops.linear_w4a8(x, packed, gscale, gs, 0.05, zp, qmin, qmax, bias)
        for layout in (packed, panel):
            gpu = ops.linear_w4a8(x.cuda(), layout.cuda(), gscale.cuda(), gs, 0.05, zp, qmin, qmax,
                                  None if bias is None else bias.cuda())
            _bits_equal(gpu.cpu(), cpu)  # NaN rows: the rows whose input holds a NaN (docs/integer.md)


# (40, 96, 384, 32): beyond 16 rows the vector form dequantizes once and runs cuBLAS's float32 GEMM
@pytest.mark.parametrize("M,N,K,gs", [(1, 37, 128, 32), (16, 96, 384, 32), (40, 96, 384, 32), (3, 64, 1024, 64),
                                      (0, 8, 64, 32)])
@pytest.mark.parametrize("zero", [False, True])
def test_w4_weight_only_cuda_within_the_float_bound(M, N, K, gs, zero, gemv_form):
    """A float kernel: each weight dequantizes to the CPU's bits (one-hot rows read them back) and
    the output is within docs/integer.md's bound K * 2^-24 * sum|x * w| of the float64 product."""
    x, q, s, z, b = w4_weight_only_case(M, N, K, gs, zero, seed=22).values()
    wd = ops.dequantize_affine(q, s, z.to(torch.int32) if zero else torch.zeros_like(s, dtype=torch.int32),
                               group_size=gs)
    packed = ops.pack_int4_w4(q).cuda()
    ref = x.double() @ wd.double().t() + b.double()
    bound = K * 2.0**-24 * (x.abs().double() @ wd.abs().double().t()) + 2.0**-24 * ref.abs() + 1e-30
    zc = None if z is None else z.cuda()
    y = ops.linear_w4_weight_only(x.cuda(), packed, s.cuda(), gs, zc, b.cuda()).cpu()
    assert y.shape == (M, N) and bool(((y.double() - ref).abs() <= bound).all())
    # the panel layout (what the plans give): the plain form reads it in the same order, so the
    # same bits; the vector form reads rows only (the panel runs the plain form): the bound
    yp = ops.linear_w4_weight_only(x.cuda(), ops.pack_int4_panel(packed), s.cuda(), gs, zc, b.cuda()).cpu()
    assert bool(((yp.double() - ref).abs() <= bound).all())
    if gemv_form == "plain":
        assert torch.equal(yp, y)
    if N % 16 == 0:  # the panel's blocked scales (block_w4_scales): the panel's bits
        sb, zb = ops.block_w4_scales(s).cuda(), None if z is None else ops.block_w4_scales(z).cuda()
        assert torch.equal(ops.linear_w4_weight_only(x.cuda(), ops.pack_int4_panel(packed), sb, gs, zb, b.cuda()).cpu(), yp)
    if N and K:
        eye = torch.eye(K, device="cuda")
        assert torch.equal(ops.linear_w4_weight_only(eye, packed, s.cuda(), gs, zc).t().cpu(), wd)


def test_w4_opcheck_cuda():
    w = ops.pack_int4_w4(torch.randint(-8, 8, (8, 64), dtype=torch.int8)).cuda()
    x, s = torch.randn(3, 64, device="cuda"), torch.rand(8, 2, device="cuda")
    torch.library.opcheck(torch.ops.qatkit.linear_w4a8.default, (x, w, s, 32, 0.1, 0, -128, 127))
    torch.library.opcheck(torch.ops.qatkit.linear_w4a8.default, (x, ops.pack_int4_panel(w), s, 32, 0.1, 0, -128, 127))
    torch.library.opcheck(torch.ops.qatkit.linear_w4_weight_only.default, (x, w, s, 32))
    torch.library.opcheck(torch.ops.qatkit.linear_w4_weight_only.default, (x, ops.pack_int4_panel(w), s, 32))


def _cuda_kernel_names(fn):
    """Names of the CUDA kernels fn launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def test_paths_beyond_16_rows_and_their_guards(monkeypatch):
    """Beyond 16 rows the vector form unpacks ternary / binary codes for torch._int_mm and
    dequantizes weight-only weights for cuBLAS's float32 GEMM; the plain form never does, and the
    weight-only path stays on its kernels while TF32 matmuls are allowed (they would leave the float
    bound); W4A8 takes the tensor-core kernel only when QATKIT_CUDA_MMA=1. Checked by the kernels
    each call launches."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 256, generator=g).cuda()
    t2 = ops.pack_ternary_t2(torch.randint(-1, 2, (64, 256), dtype=torch.int8, generator=g)).cuda()
    corr, sc = torch.zeros(64, dtype=torch.int32, device="cuda"), torch.rand(64, device="cuda") * 0.01
    w4 = ops.pack_int4_w4(torch.randint(-8, 8, (64, 256), dtype=torch.int8, generator=g)).cuda()
    gs = torch.rand(64, 8, device="cuda")
    w8 = torch.randint(-127, 128, (64, 256), dtype=torch.int8, generator=g).cuda()
    calls = {
        "unpack_codes": lambda x: ops.linear_w2a8(x, t2, corr, sc, 0.05, 0, -128, 127),
        "dequantize_w4f": lambda x: ops.linear_w4_weight_only(x, w4, gs, 32),
        "dequantize_w8f": lambda x: ops.linear_w8_weight_only(x, w8, sc),
    }
    for form in ("fast", "plain"):
        monkeypatch.setenv("QATKIT_CUDA_GEMV", form)
        for name, fn in calls.items():
            assert any(name in k for k in _cuda_kernel_names(lambda: fn(x))) == (form == "fast"), (form, name)
            assert not any(name in k for k in _cuda_kernel_names(lambda: fn(x[:16]))), (form, name, 16)
    w4s = torch.rand(64, 8, device="cuda")
    w4a8 = lambda x: ops.linear_w4a8(x, w4, w4s, 32, 0.05, 3, 0, 255)  # noqa: E731
    monkeypatch.setenv("QATKIT_CUDA_GEMV", "fast")  # the mma kernel is part of the vector form
    for flag in ("0", "1"):
        monkeypatch.setenv("QATKIT_CUDA_MMA", flag)
        assert any("gemm_w4_mma" in k for k in _cuda_kernel_names(lambda: w4a8(x))) == (flag == "1"), flag
        assert not any("gemm_w4_mma" in k for k in _cuda_kernel_names(lambda: w4a8(x[:16]))), flag
    monkeypatch.setenv("QATKIT_CUDA_GEMV", "fast")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    for name in ("dequantize_w4f", "dequantize_w8f"):
        assert not any(name in k for k in _cuda_kernel_names(lambda: calls[name](x))), name


@pytest.mark.parametrize("bits", [8, 2, 1])
@pytest.mark.parametrize("C,N,groups,geom", [
    (5, 20, 1, dict(k=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1))),
    (5, 24, 1, dict(k=(3, 2), s=(2, 1), p=(0, 2), d=(1, 2))),  # 24 outputs: torch._int_mm from 17 patch rows
    (4, 8, 2, dict(k=(3, 3), s=(1, 2), p=(2, 0), d=(2, 1))),
    (6, 12, 6, dict(k=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1))),  # depthwise, channel multiplier 2
    (4, 4, 4, dict(k=(3, 2), s=(2, 1), p=(0, 2), d=(1, 2))),  # depthwise: strides, dilation, wide padding
    (3, 9, 3, dict(k=(5, 5), s=(1, 1), p=(2, 2), d=(1, 1))),  # depthwise 5 x 5, multiplier 3
    (5, 5, 5, dict(k=(1, 1), s=(1, 1), p=(0, 0), d=(1, 1))),
])
def test_conv2d_int8_cuda_equals_cpu(bits, C, N, groups, geom, gemv_form):
    """conv2d_int8 on CUDA (im2col of the float input, zero padding in float, then the Linear
    kernels per group; depthwise convs the direct kernel conv_dw_s8) equals the CPU conv bit for
    bit: every weight layout the plans give (int8 rows, rows zero-padded to 32, the panel; ternary;
    binary), NaN inputs, and opcheck."""
    g = torch.Generator().manual_seed(19)
    B, H, W = 3, 9, 7
    x = torch.randn(B, C, H, W, generator=g) * 2
    x[0, 0, 0, ::3] = float("nan")
    K = C // groups * geom["k"][0] * geom["k"][1]
    case = conv_int8_case(bits, N, K, groups, g)
    corr, scale, fb = case["corr"], case["scale"], case["bias"]
    s, zp, qmin, qmax = case["act"]
    layouts = ([case["w"]] if bits == 8 else []) + case["layouts"]  # int8: unpadded rows too
    args = (bits, geom["k"], geom["s"], geom["p"], geom["d"])
    for bias in (None, fb):
        want = ops.conv2d_int8(x, layouts[0], *args, corr, scale, s, zp, qmin, qmax, bias, groups)
        for layout in layouts:
            got = ops.conv2d_int8(x.cuda(), layout.cuda(), *args, corr.cuda(), scale.cuda(), s, zp, qmin, qmax,
                                  None if bias is None else bias.cuda(), groups)
            assert got.is_cuda, (layout.shape, bias is None)
            _bits_equal(got.cpu(), want)  # NaN where a window reads the NaN input
    torch.library.opcheck(torch.ops.qatkit.conv2d_int8.default,  # (opcheck compares outputs without equal_nan)
                          (x.nan_to_num(0.5).cuda(), layouts[0].cuda(), bits, list(geom["k"]), list(geom["s"]), list(geom["p"]),
                           list(geom["d"]), corr.cuda(), scale.cuda(), s, zp, qmin, qmax, fb.cuda(), groups))


@pytest.mark.parametrize("bits", [8, 1])
@pytest.mark.parametrize("C,N,groups", [(8, 16, 1), (8, 8, 8), (6, 12, 3)])
def test_conv2d_int8_cuda_channels_last_equals_cpu(bits, C, N, groups):
    """A channels_last input gives a channels_last output on CUDA as on the CPU (and Meta, through
    opcheck), with the NCHW input's bits: the im2col path, the depthwise kernel, a grouped conv."""
    g = torch.Generator().manual_seed(23)
    x = (torch.randn(2, C, 9, 7, generator=g) * 2).contiguous(memory_format=torch.channels_last)
    case = conv_int8_case(bits, N, C // groups * 9, groups, g)
    s, zp, qmin, qmax = case["act"]
    args = (case["layouts"][0], bits, [3, 3], [1, 1], [1, 1], [1, 1])
    want = ops.conv2d_int8(x.contiguous(), *args, case["corr"], case["scale"], s, zp, qmin, qmax, case["bias"], groups)
    cuda_args = (x.cuda(), case["layouts"][0].cuda(), *args[1:], case["corr"].cuda(), case["scale"].cuda(), s, zp, qmin,
                 qmax, case["bias"].cuda(), groups)
    got = ops.conv2d_int8(*cuda_args)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous(), got.stride()
    assert torch.equal(got.cpu(), want)
    torch.library.opcheck(torch.ops.qatkit.conv2d_int8.default, cuda_args)


@pytest.mark.parametrize("C,N,groups,geom,gs", [
    (32, 20, 1, ((3, 3), (1, 1), (1, 1), (1, 1)), 32),
    (64, 24, 2, ((3, 3), (2, 1), (2, 0), (1, 2)), 96),
    (64, 16, 1, ((1, 1), (1, 1), (0, 0), (1, 1)), 64),
])
def test_conv2d_w4a8_cuda_equals_cpu(C, N, groups, geom, gs):
    """conv2d_w4a8 on CUDA (im2col of the float input, zero padding in float, then linear_w4a8's
    kernel per conv group) equals the CPU conv bit for bit: row and panel layouts, NCHW and
    channels_last inputs (the output in the input's format), NaN inputs, and opcheck."""
    g = torch.Generator().manual_seed(29)
    (kh, kw), st, pad, dil = geom
    K = C // groups * kh * kw
    x = torch.randn(3, C, 9, 7, generator=g) * 2
    x[0, 0, 0, ::3] = float("nan")
    w4 = ops.pack_int4_w4(torch.randint(-8, 8, (N, K), dtype=torch.int8, generator=g))
    gscale, bias = torch.rand(N, K // gs, generator=g) * 0.1, torch.randn(N, generator=g)
    layouts = [w4] + ([ops.pack_int4_panel(w4)] if groups == 1 else [])
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=fmt)
        want = ops.conv2d_w4a8(xf, w4, (kh, kw), st, pad, dil, gscale, gs, 0.05, 3, 0, 255, bias, groups)
        for w in layouts:
            got = ops.conv2d_w4a8(xf.cuda(), w.cuda(), (kh, kw), st, pad, dil, gscale.cuda(), gs, 0.05, 3, 0, 255,
                                  bias.cuda(), groups)
            assert got.is_cuda and got.is_contiguous(memory_format=fmt), (fmt, w.dim())
            _bits_equal(got.cpu(), want)  # NaN where a window reads the NaN input
        torch.library.opcheck(torch.ops.qatkit.conv2d_w4a8.default,  # (opcheck compares outputs without equal_nan)
                              (xf.nan_to_num(0.5).cuda(), w4.cuda(), [kh, kw], list(st), list(pad), list(dil), gscale.cuda(), gs, 0.05,
                               3, 0, 255, bias.cuda(), groups))


# XNOR (linear_w1a1 / conv2d_w1a1): on CUDA the W1A8 kernels on the per-sample binary codes. The
# codes and alphas are binary_codes(x, "bitnet", 0) on the device: its centre is a float32 mean in
# the device's order, so the kernels are checked against the formula on the device's own codes, and
# against the CPU op wherever the device's codes and alphas equal the CPU's (the test below asks
# that they nearly always do).


def _xnor_formula(q: torch.Tensor, alpha: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, bias, conv=None):
    """fp32(acc) * fp32(alpha[b] * ws[n]) + bias from codes q (exact float64 sums of the codes; conv:
    (stride, padding, dilation), zero padding code 0), on the CPU."""
    import torch.nn.functional as F

    q, alpha = q.cpu().double(), alpha.cpu()
    if conv is None:
        acc = (q @ w.double().t()).float()
        a = alpha.reshape([-1] + [1] * (acc.dim() - 1))
        y = acc * (a * ws)
        return y if bias is None else y + bias
    acc = F.conv2d(q, w.double(), None, *conv).float()
    y = acc * (alpha.reshape(-1, 1, 1, 1) * ws.reshape(1, -1, 1, 1))
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def _same_codes(x: torch.Tensor) -> bool:
    qg, ag = ops.binary_codes(x.cuda(), "bitnet", 0)
    qc, ac = ops.binary_codes(x, "bitnet", 0)
    return torch.equal(qg.cpu(), qc) and torch.equal(ag.cpu(), ac)


def test_bitnet_binary_codes_cuda_nearly_always_equal_cpu():
    """The per-sample centre and scale are float64 sums on both devices (_mean_and_mean_abs), each in
    its device's order, rounded to float32: equal alphas here; at most a vanishing share of codes
    differ (those within an ulp of a centre the devices round apart)."""
    g = torch.Generator().manual_seed(23)
    x = torch.randn(64, 3, 17, 19, generator=g) * 2 + 0.5
    qg, ag = ops.binary_codes(x.cuda(), "bitnet", 0)
    qc, ac = ops.binary_codes(x, "bitnet", 0)
    assert torch.equal(ag.cpu(), ac)
    assert int((qg.cpu() != qc).sum()) <= x.numel() * 1e-4


@pytest.mark.parametrize("shape,N", [((1, 133), 37), ((5, 64), 16), ((3, 4, 96), 7), ((2, 1), 9), ((20, 133), 40),
                                     ((64, 1024), 128), ((0, 16), 8)])
def test_xnor_linear_cuda_equals_the_formula_and_the_cpu(shape, N, gemv_form):
    """linear_w1a1 on CUDA: the formula on the device's codes bit for bit (every row count: the
    vector GEMV, and torch._int_mm on the unpacked codes from 17 rows with N % 8 == 0), NaN inputs
    (code 0), and the CPU op's bits where the codes agree; opcheck."""
    g = torch.Generator().manual_seed(29)
    x = torch.randn(shape, generator=g) + 0.3
    if shape[0] > 2:
        x[0].reshape(-1)[::11] = float("nan")  # one sample: its centre and alpha NaN, the others not
    K = shape[-1]
    w = (torch.randint(0, 2, (N, K), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    packed = ops.pack_binary_b1(w)
    q, alpha = ops.binary_codes(x.cuda(), "bitnet", 0)
    for bias in (None, fb):
        got = ops.linear_w1a1(x.cuda(), packed.cuda(), ws.cuda(), None if bias is None else bias.cuda())
        assert got.is_cuda and got.shape == (*shape[:-1], N)
        _bits_equal(got.cpu(), _xnor_formula(q, alpha, w, ws, bias))
        if _same_codes(x):
            _bits_equal(got.cpu(), ops.linear_w1a1(x, packed, ws, bias))
    if x.numel():
        xf = x.nan_to_num(0.5).cuda()  # opcheck compares outputs without equal_nan
        torch.library.opcheck(torch.ops.qatkit.linear_w1a1.default, (xf, packed.cuda(), ws.cuda(), fb.cuda()))


@pytest.mark.parametrize("C,N,geom", [
    (5, 20, dict(k=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1))),
    (16, 24, dict(k=(3, 2), s=(2, 1), p=(0, 2), d=(1, 2))),  # 24 outputs: torch._int_mm from 17 patch rows
    (3, 8, dict(k=(1, 1), s=(1, 1), p=(0, 0), d=(1, 1))),
])
def test_xnor_conv_cuda_equals_the_formula_and_the_cpu(C, N, geom, gemv_form):
    """conv2d_w1a1 on CUDA (im2col of the codes, zero padding code 0, then the W1A8 kernels): the
    formula on the device's codes bit for bit, an image whose NaN makes every code 0, the CPU op's
    bits where the codes agree; opcheck."""
    g = torch.Generator().manual_seed(31)
    x = torch.randn(3, C, 9, 7, generator=g)
    x[2, 0, 0, 0] = float("nan")
    kh, kw = geom["k"]
    w = (torch.randint(0, 2, (N, C, kh, kw), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    packed = ops.pack_binary_b1(w.reshape(N, -1))
    args = (geom["k"], geom["s"], geom["p"], geom["d"])
    q, alpha = ops.binary_codes(x.cuda(), "bitnet", 0)
    got = ops.conv2d_w1a1(x.cuda(), packed.cuda(), *args, ws.cuda(), fb.cuda())
    assert got.is_cuda
    _bits_equal(got.cpu(), _xnor_formula(q, alpha, w, ws, fb, (geom["s"], geom["p"], geom["d"])))
    assert bool(got[2].isnan().all())
    if _same_codes(x):
        _bits_equal(got.cpu(), ops.conv2d_w1a1(x, packed, *args, ws, fb))
    torch.library.opcheck(torch.ops.qatkit.conv2d_w1a1.default,
                          (x.nan_to_num(0.5).cuda(), packed.cuda(), *[list(a) for a in args], ws.cuda(), fb.cuda()))


@pytest.mark.parametrize("C,N,groups", [(16, 16, 16), (16, 32, 16), (12, 18, 6)])
def test_grouped_xnor_conv_cuda_equals_the_formula_and_the_cpu(C, N, groups):
    """conv2d_w1a1 with groups on CUDA (the codes through conv2d_int8's grouped / depthwise kernels):
    the grouped formula on the device's codes bit for bit, in both memory formats (the output in the
    input's), an image whose NaN makes every code 0, the CPU op's bits where the codes agree; opcheck."""
    g = torch.Generator().manual_seed(C + N + groups)
    x = torch.randn(3, C, 9, 7, generator=g)
    x[2, 0, 0, 0] = float("nan")
    w = (torch.randint(0, 2, (N, C // groups, 3, 3), generator=g) * 2 - 1).to(torch.int8)
    ws, fb = torch.rand(N, generator=g) + 0.1, torch.randn(N, generator=g)
    packed = ops.pack_binary_b1(w.reshape(N, -1))
    args = ((3, 3), (2, 1), (1, 1), (1, 1))
    import torch.nn.functional as F

    for fmt in (torch.contiguous_format, torch.channels_last):
        xd = x.cuda().contiguous(memory_format=fmt)
        q, alpha = ops.binary_codes(xd, "bitnet", 0)
        got = ops.conv2d_w1a1(xd, packed.cuda(), *args, ws.cuda(), fb.cuda(), groups)
        assert got.is_cuda and got.is_contiguous(memory_format=fmt)
        acc = F.conv2d(q.cpu().double(), w.double(), None, args[1], args[2], args[3], groups).float()
        want = acc * (alpha.cpu().reshape(-1, 1, 1, 1) * ws.reshape(1, -1, 1, 1)) + fb.reshape(1, -1, 1, 1)
        _bits_equal(got.cpu(), want)
        assert bool(got[2].isnan().all())
        if _same_codes(x):
            _bits_equal(got.cpu(), ops.conv2d_w1a1(x, packed, *args, ws, fb, groups))
        torch.library.opcheck(torch.ops.qatkit.conv2d_w1a1.default,
                              (x.nan_to_num(0.5).cuda().contiguous(memory_format=fmt), packed.cuda(),
                               *[list(a) for a in args], ws.cuda(), fb.cuda(), groups))


def test_depthwise_convs_run_one_direct_kernel():
    """A depthwise conv2d_int8 on CUDA is one conv_dw_s8 launch (ternary / binary: after the codes'
    unpack), with no im2col and no GEMM; a grouped conv that is not depthwise keeps the per-group path."""
    g = torch.Generator().manual_seed(37)
    x = torch.randn(2, 8, 10, 10, generator=g).cuda()
    for bits in (8, 2, 1):
        case = conv_int8_case(bits, 8, 9, 8, g)
        s, zp, qmin, qmax = case["act"]
        w, corr, scale = case["layouts"][0].cuda(), case["corr"].cuda(), case["scale"].cuda()
        names = _cuda_kernel_names(lambda: ops.conv2d_int8(x, w, bits, (3, 3), (1, 1), (1, 1), (1, 1), corr, scale, s,
                                                           zp, qmin, qmax, None, 8))
        assert sum("conv_dw_s8" in k for k in names) == 1, (bits, names)
        assert not any("im2col" in k or "gemm" in k.lower() for k in names), (bits, names)
    case = conv_int8_case(8, 8, 36, 2, g)
    s, zp, qmin, qmax = case["act"]
    names = _cuda_kernel_names(lambda: ops.conv2d_int8(x, case["layouts"][0].cuda(), 8, (3, 3), (1, 1), (1, 1), (1, 1),
                                                       case["corr"].cuda(), case["scale"].cuda(), s, zp, qmin, qmax,
                                                       None, 2))
    assert not any("conv_dw_s8" in k for k in names) and any("im2col" in k for k in names), names


def test_integer_kernels_on_cuda_raise_at_backward():
    """The no-gradient Autograd kernel on CUDA tensors: the forward gives the no-grad values, the
    backward raises through _no_gradient's CUDA kernel (csrc/ops/cuda/no_gradient_kernel.cpp)."""
    x = torch.randn(6, 40)
    _, alpha = ops.binary_codes(x.cuda(), "bitnet", 0)
    xg = x.cuda().requires_grad_()
    codes, ag = ops.binary_codes(xg, "bitnet", 0)
    assert torch.equal(ag.detach(), alpha) and ag.requires_grad and not codes.requires_grad
    with pytest.raises(NotImplementedError, match=r"qatkit::binary_codes has no gradient"):
        ag.sum().backward()
    with pytest.raises(NotImplementedError, match=r"qatkit::linear_int8 has no gradient"):
        torch.ops.qatkit._no_gradient(ag.detach(), "linear_int8", [6, 40], torch.float32)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_fused_clamp_cuda_equals_cpu(fmt):
    """The convs' clamp_min / clamp_max on CUDA (two masked fills on the output) equal the CPU's
    fused clamp bit for bit (ReLU, ReLU6, a Hardtanh): conv2d_int8 (dense and depthwise),
    conv2d_w4a8 and conv2d_w1a1, NaN windows kept."""
    g = torch.Generator().manual_seed(31)
    x = (torch.randn(3, 32, 9, 7, generator=g) * 2)
    x[0, 0, 0, ::3] = float("nan")
    x = x.contiguous(memory_format=fmt)
    clamps = [(0.0, None), (0.0, 6.0), (-0.5, 0.5)]
    for groups in (1, 32):
        case = conv_int8_case(8, 32, 32 // groups * 9, groups, g)
        args = ([3, 3], [1, 1], [1, 1], [1, 1])
        for lo, hi in clamps:
            want = ops.conv2d_int8(x, case["layouts"][0], 8, *args, case["corr"], case["scale"], *case["act"],
                                   case["bias"], groups, lo, hi)
            got = ops.conv2d_int8(x.cuda(), case["layouts"][0].cuda(), 8, *args, case["corr"].cuda(),
                                  case["scale"].cuda(), *case["act"], case["bias"].cuda(), groups, lo, hi)
            assert got.is_contiguous(memory_format=fmt)
            _bits_equal(got.cpu(), want)
            assert bool((want.nan_to_num(0) >= lo).all())
    w4 = ops.pack_int4_w4(torch.randint(-8, 8, (16, 288), dtype=torch.int8, generator=g))
    gscale, bias = torch.rand(16, 9, generator=g) * 0.1, torch.randn(16, generator=g)
    wb = ops.pack_binary_b1((torch.randint(0, 2, (16, 288), generator=g) * 2 - 1).to(torch.int8))
    ws = torch.rand(16, generator=g) + 0.1
    xa = (x.cuda(), wb.cuda(), (3, 3), (1, 1), (1, 1), (1, 1), ws.cuda(), bias.cuda(), 1)
    for lo, hi in clamps:
        want = ops.conv2d_w4a8(x, w4, (3, 3), (1, 1), (1, 1), (1, 1), gscale, 32, 0.05, 3, 0, 255, bias, 1, lo, hi)
        got = ops.conv2d_w4a8(x.cuda(), w4.cuda(), (3, 3), (1, 1), (1, 1), (1, 1), gscale.cuda(), 32, 0.05, 3, 0, 255,
                              bias.cuda(), 1, lo, hi)
        _bits_equal(got.cpu(), want)
        # XNOR: its CUDA codes may differ from the CPU's at rare centre ties (the test above): against
        # torch.clamp of the unfused CUDA conv
        _bits_equal(ops.conv2d_w1a1(*xa, lo, hi).cpu(), torch.clamp(ops.conv2d_w1a1(*xa), lo, hi).cpu())
