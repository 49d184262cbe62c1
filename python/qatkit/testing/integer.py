"""Cases and references the integer GEMM family's op tests share (tests/python/ops/test_linear_int8.py,
test_linear_lowbit.py, test_conv_int8.py, test_w4a8.py, test_linear_dynamic.py): the CPU ISAs this
machine runs, a linear_int8 case factory, and independent references from the formulas of
docs/integer.md (float64 sums of the codes, exact below 2^53)."""

import torch
import torch.nn.functional as F

import qatkit
from qatkit import ops


def linear_int8_case(M, N, K, qrange=(0, 255), zp=3, seed=0, shape=None):
    """A linear_int8 case: float input x ([M, K] or shape), int8 codes w [N, K] in [-127, 127], the
    int32 correction (bias codes plus the zero-point and +128 terms, docs/integer.md), per-channel
    output scales, the input scale 0.05 and zero point zp, the input range and the bias codes.

    Returns:
        (x, w, corr, scale, s, zp, qmin, qmax, bias_q): linear_int8's arguments after the weight,
        then the bias codes linear_int8_reference takes.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape or (M, K), generator=g) * 3
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    qmin, qmax = qrange
    shift = 128 if qmin >= 0 else 0
    bias_q = torch.randint(-5000, 5000, (N,), dtype=torch.int32, generator=g)
    corr = (bias_q.long() + (shift - zp) * w.long().sum(1)).int()
    scale = torch.rand(N, generator=g) * 1e-3 + 1e-5
    return x, w, corr, scale, 0.05, zp, qmin, qmax, bias_q


def linear_int8_reference(x, w, bias_q, scale, s, zp, qmin, qmax):
    """Exact sums of the codes (float64: every partial sum < 2^53); codes from the formula (x * (1 /
    s), round half to even, + z, clamp). A NaN input stays NaN through the codes and the product, as
    in the float layer: its row is NaN (docs/integer.md, "NaN inputs")."""
    inv = torch.tensor(1.0) / torch.tensor(s, dtype=torch.float32)
    r = torch.round((x * inv).double())
    q = (r + zp).clamp(qmin, qmax)
    acc = (q - zp) @ w.double().t() + bias_q.double()
    return acc.float() * scale


def isas():
    """Every ISA this machine runs (the qgemm family has baseline, AVX2, AVX-512 VNNI and AMX tables)."""
    old = qatkit._C.cpu_isa()
    try:
        return ["baseline"] + [i for i in ("avx2", "avx512", "amx") if qatkit._C.set_cpu_isa(i)]
    finally:
        qatkit._C.set_cpu_isa(old)


def on_every_isa_and_thread_count(check, threads=(1, 2, 3)):
    """check(isa, t) on every ISA this machine runs at each thread count (3 on a 2-core machine:
    three chunks), the ISA and thread count restored after."""
    old, before = qatkit._C.cpu_isa(), torch.get_num_threads()
    try:
        for isa in isas():
            assert qatkit._C.set_cpu_isa(isa)
            for t in threads:
                torch.set_num_threads(t)
                check(isa, t)
    finally:
        qatkit._C.set_cpu_isa(old)
        torch.set_num_threads(before)


def split_block_counts(panel, n, k):
    """Each block's record word 0 (entry count, or -1), or None for a panel without records."""
    nb, k4 = (n + 15) // 16, (k + 3) // 4
    if panel.shape[0] == nb:
        return None
    words = 34 + k4 // 2 + 4
    return panel[nb:].reshape(-1).view(torch.int32)[:nb * words].reshape(nb, words)[:, 0].tolist()


def gauss_codes(n, k, g, sigma=None):
    """Per-row codes as per-channel quantization gives a trained layer's weights (N(0, 1) scaled to
    its row's max |w| = 127; or N(0, sigma) clamped): a few unsafe pairs per block (split records)."""
    w = torch.randn(n, k, generator=g)
    if sigma is None:
        return (w / w.abs().amax(1, keepdim=True).clamp_min(1e-9) * 127).round().clamp(-127, 127).to(torch.int8)
    return (w * sigma).round().clamp(-127, 127).to(torch.int8)


def w4a8_reference(x, w, gscale, gs, s, zp, qmin, qmax, bias):
    """linear_w4a8 from the "static_group" formula: the input's codes (x * (1 / s), round half to
    even, + z, clamp, - z), each group's exact sum against the 4-bit codes w [N, K] in float64 times
    its scale gscale [N, G], summed in group order, times s, then fp32 (+ bias)."""
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


def xnor_conv_reference(x, w, ws, bias, stride, padding, dilation):
    """conv2d_w1a1 from its formula: the float64 conv of the binarized input's codes (zero padding:
    code 0) and the weight codes, fp32(acc) * fp32(alpha[b] * ws[n]) + bias."""
    q, alpha = ops.binary_codes(x, "bitnet", 0)
    acc = F.conv2d(q.double(), w.double(), None, stride, padding, dilation).float()
    return acc * (alpha.reshape(-1, 1, 1, 1) * ws.reshape(1, -1, 1, 1)) + bias.reshape(1, -1, 1, 1)
