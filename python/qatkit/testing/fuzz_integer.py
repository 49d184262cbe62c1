"""Property-based fuzz checks of the integer kernels (docs/integer.md), shared by
tests/python/ops/test_fuzz.py (hypothesis, bounded) and scripts/fuzz_ops.py (long runs) through
:data:`qatkit.testing.fuzz.CHECKS`.

Each check draws a shape around the kernels' tile, panel and block edges (docs/integer.md names
them: 4- and 6-row tiles, 16-row panels, 64-byte K steps, 96- / 256- / 1024-step K blocks, 192-row
chunks, the weight-only paths' row thresholds), a weight layout (rows, panel, panel without its
split records, packed 2 / 1 bits), weight codes from several distributions (uniform, Gaussian with
a few split-record pairs, all at +-127), an input with magnitudes from 1e-3 to 1e9 and NaN / +-Inf
entries, a CPU ISA this machine runs and 1 or 2 threads; then compares the op with a pure-integer
reference built from the formulas (exact sums of the codes, the documented requantization; NaN
where a sum reads a NaN input) bit for bit, or, for the float-activation weight-only kernels, with the float64 product within
docs/integer.md's bound. Each check restores the ISA and the thread count it found.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from .. import _C, ops
from .integer import isas

_ISAS = None


def _isas() -> list:
    global _ISAS
    if _ISAS is None:
        _ISAS = isas()
    return _ISAS


class _Machine:
    """Where the op runs: on the CPU under a drawn ISA and thread count (both put back afterwards),
    or on `device` (a CUDA device: the same references, bit for bit, as tests/python/ops/test_cuda.py
    holds the CUDA kernels to the CPU's). ``m(t)`` moves an operand there; ``m.back(y)`` returns the
    result on the CPU."""

    def __init__(self, r: random.Random, device: str = "cpu"):
        self.device = torch.device(device)
        self.cpu = self.device.type == "cpu"
        self.isa, self.threads = (r.choice(_isas()), r.choice([1, 2])) if self.cpu else (None, None)

    def __call__(self, t):
        return t if t is None or self.cpu else t.to(self.device)

    def back(self, y: torch.Tensor) -> torch.Tensor:
        if not self.cpu and y.device != self.device:
            raise AssertionError(f"the op returned a tensor on {y.device}, not on {self.device}")
        return y.cpu()

    def __enter__(self):
        if self.cpu:
            self.old = _C.cpu_isa(), torch.get_num_threads()
            _C.set_cpu_isa(self.isa)
            torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc):
        if self.cpu:
            _C.set_cpu_isa(self.old[0])
            torch.set_num_threads(self.old[1])
        return False

    def __repr__(self):
        return f"isa={self.isa} threads={self.threads}" if self.cpu else str(self.device)


# sizes at and around the kernels' edges (the comments of the shape lists in tests/python/ops/test_*.py)
_M = [0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 17, 23, 24, 25, 31, 32, 33, 48, 64, 65, 96, 97, 193]
_N = [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 37, 48, 63, 64, 65, 70, 96, 129]
_K = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 95, 96, 97, 127, 128, 129, 255, 256, 257, 383,
      384, 385, 1000, 1023, 1024, 1025, 1030, 2050, 4097, 4200]
_BUDGET = 3_000_000  # multiply-adds per call (keeps the pure-integer references fast)


def _mnk(r: random.Random, k_multiple: int = 1, ks=None):
    m, n = r.choice(_M), r.choice(_N)
    k = r.choice(ks) if ks else r.choice(_K)
    k = max(k_multiple, k // k_multiple * k_multiple)
    while m * n * k > _BUDGET:
        if m > 16 and r.random() < 0.5:
            m //= 2
        elif n > 16:
            n //= 2
        else:
            m = max(1, m // 2)
    return m, n, k


def _lead(r: random.Random, m: int) -> list:
    """Leading dims whose product is m (most often [m])."""
    if m and r.random() < 0.2:
        for d in (2, 3):
            if m % d == 0:
                return [d, m // d]
    return [m]


def _input(r: random.Random, lead, k: int, special: bool = True) -> torch.Tensor:
    """Float32 [*lead, K] of a drawn magnitude, with rows and columns at other magnitudes and, when
    `special`, NaN / +-Inf / huge entries sprinkled in; sometimes a non-contiguous view."""
    g = torch.Generator().manual_seed(r.randrange(2**31))
    mag = 10 ** r.uniform(-3, 2)
    x = torch.randn(*lead, k, generator=g) * mag + r.choice([0.0, 0.0, mag])
    if x.numel() and r.random() < 0.3:
        x.view(-1, k)[:, r.randrange(k)::r.randint(2, 7)] *= 10 ** r.uniform(1, 4)
    if x.numel() and special and r.random() < 0.3:
        flat = x.view(-1)
        for v in (float("nan"), float("inf"), -float("inf"), 1e9, -1e9):
            if r.random() < 0.5:
                flat[torch.randint(0, flat.numel(), (max(1, flat.numel() // 50),), generator=g)] = v
    if r.random() < 0.2 and x.dim() == 2 and x.numel():  # a transposed view of the same values
        x = x.t().contiguous().t()
    return x


def _act_qparams(r: random.Random, x: torch.Tensor):
    """(scale, zero point, qmin, qmax): an 8-bit range (signed or unsigned, or a narrower one inside
    it), a zero point inside it, a scale from the input's spread."""
    qmin, qmax = r.choice([(0, 255), (-128, 127), (-127, 127), (0, 15), (-8, 7), (0, 1)])
    zp = r.choice([qmin, qmax, (qmin + qmax) // 2, r.randint(qmin, qmax)])
    finite = x[torch.isfinite(x)]
    spread = float(finite.abs().max()) if finite.numel() else 1.0
    s = max(spread, 1e-6) / (qmax - qmin) * 10 ** r.uniform(-1.5, 0.5)
    return float(torch.tensor(s, dtype=torch.float32)), zp, qmin, qmax


def _codes(x: torch.Tensor, s: float, zp: int, qmin: int, qmax: int) -> torch.Tensor:
    """quantize_affine's codes minus the zero point, as float64 (sums of their products with the
    weight codes are exact in float64): round(x * (1 / s)) half to even, + zp, clamped. A NaN stays
    NaN, so every sum that reads it is NaN, as in the float layer (the ops' NaN rule, docs/integer.md
    "NaN inputs"; quantize_affine alone codes it as the zero point)."""
    inv = torch.tensor(1.0) / torch.tensor(s, dtype=torch.float32)
    r = torch.round(x * inv).double()
    return (r + zp).clamp(qmin, qmax) - zp


def _int8_weight(r: random.Random, n: int, k: int, g: torch.Generator) -> torch.Tensor:
    kind = r.choice(["uniform", "gauss", "gauss", "extreme", "sparse"])
    if kind == "uniform":
        return torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    if kind == "extreme":
        return ((torch.randint(0, 2, (n, k), generator=g) * 2 - 1) * 127).to(torch.int8)
    if kind == "sparse":
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        return w * (torch.rand(n, k, generator=g) < 0.05)
    sigma = r.choice([20.0, 40.0, 60.0])  # a few same-sign pairs over 128: the split records
    return (torch.randn(n, k, generator=g) * sigma).round().clamp(-127, 127).to(torch.int8)


def _requant(acc: torch.Tensor, bias_q: torch.Tensor, scale: torch.Tensor, bias):
    """fp32(acc + bias_q) * scale (+ bias): the static form's requantization of int64 code sums."""
    y = (acc + bias_q.double()).float() * scale
    return y if bias is None else y + bias


def _shift(qmin: int) -> int:
    return 128 if qmin >= 0 else 0


def _weights(r: random.Random, bits: int, n: int, k: int, g: torch.Generator, panel: bool = True):
    """(codes [n, k], the layouts the kernels take at `bits`): 8: the rows and, when `panel`,
    pack_int8_panel's; 2: pack_ternary_t2; 1: pack_binary_b1 and, when `panel`, its binary panel."""
    if bits == 8:
        w = _int8_weight(r, n, k, g)
        return w, [w] + ([ops.pack_int8_panel(w)] if panel else [])
    if bits == 2:
        w = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=g)
        return w, [ops.pack_ternary_t2(w)]
    w = (torch.randint(0, 2, (n, k), generator=g) * 2 - 1).to(torch.int8)
    b1 = ops.pack_binary_b1(w)
    return w, [b1] + ([ops.pack_binary_panel(b1)] if panel else [])


def _draw_clamp(r):
    """The convs' fused activation (clamp_min, clamp_max) for one check: none (half the draws),
    ReLU (0, None), ReLU6 (0, 6), a Hardtanh's two bounds around 0, an upper bound only, or equal
    bounds (a constant output)."""
    u = r.random()
    if u < 0.5:
        return (None, None)
    if u < 0.65:
        return (0.0, None)
    if u < 0.75:
        return (0.0, 6.0)
    if u < 0.88:
        return (-r.uniform(0, 2), r.uniform(0, 2))
    if u < 0.95:
        return (None, r.uniform(-1, 1))
    v = r.uniform(-1, 1)
    return (v, v)


def _clamped(y, clamp):
    """torch.clamp(y, *clamp): what the ops write for clamp_min / clamp_max (no bound: y)."""
    return y if clamp == (None, None) else torch.clamp(y, *clamp)


def _static_terms(r: random.Random, w: torch.Tensor, zp: int, qmin: int, g: torch.Generator):
    """(bias_q, float bias or None, corr, out_scale) of the static form: the integer bias inside
    corr, or (half the draws) a float bias added after the requantization."""
    n = w.shape[0]
    float_bias = r.random() < 0.5
    bias_q = (torch.zeros(n, dtype=torch.int32) if float_bias
              else torch.randint(-900, 900, (n,), dtype=torch.int32, generator=g))
    fb = torch.randn(n, generator=g) if float_bias else None
    corr = (bias_q.long() + (_shift(qmin) - zp) * w.long().sum(1)).int()
    return bias_q, fb, corr, torch.rand(n, generator=g) * 1e-2 + 1e-5


def _equal_or_raise(got: torch.Tensor, want: torch.Tensor, what: str):
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, want {tuple(want.shape)}")
    if not torch.equal(got, want):
        d = (got != want) & ~(torch.isnan(got) & torch.isnan(want))
        if bool(d.any()):
            idx = d.nonzero()[0].tolist()
            raise AssertionError(f"{what}: {int(d.sum())} of {got.numel()} outputs differ, first at {idx}: "
                                 f"{got[tuple(idx)].item()!r} != {want[tuple(idx)].item()!r}")


def check_linear_int8(r: random.Random, device: str = "cpu") -> int:
    """linear_int8 on rows / the panel / the panel without split records, with a bias and an
    input_divisor sometimes, against exact sums of the codes (float64)."""
    m, n, k = _mnk(r)
    g = torch.Generator().manual_seed(r.randrange(2**31))
    lead = _lead(r, m)
    x = _input(r, lead, k)
    div = torch.rand(k, generator=g) * 4 + 0.25 if r.random() < 0.2 else None
    xs = x if div is None else x / div
    s, zp, qmin, qmax = _act_qparams(r, xs)
    w = _int8_weight(r, n, k, g)
    bias_q = torch.randint(-5000, 5000, (n,), dtype=torch.int32, generator=g)
    corr = (bias_q.long() + (_shift(qmin) - zp) * w.long().sum(1)).int()
    scale = torch.rand(n, generator=g) * 1e-3 + 1e-5
    fb = torch.randn(n, generator=g) if r.random() < 0.3 else None
    layout = r.choice(["rows", "panel", "panel", "legacy"])
    wl = w if layout == "rows" else ops.pack_int8_panel(w)
    if layout == "legacy":
        wl = wl[:(n + 15) // 16].contiguous()
    want = _requant(_codes(xs, s, zp, qmin, qmax) @ w.double().t(), bias_q, scale, fb)
    with _Machine(r, device) as m:
        got = m.back(ops.linear_int8(m(x), m(wl), m(corr), m(scale), s, zp, qmin, qmax, m(fb), m(div)))
    _equal_or_raise(got, want, f"linear_int8 {layout} x{tuple(x.shape)} w[{n}, {k}] act=({s}, {zp}, {qmin}, {qmax}) "
                               f"{m}")
    return 1


def check_linear_w2a8_w1a8(r: random.Random, device: str = "cpu") -> int:
    """linear_w2a8 (pack_ternary_t2) and linear_w1a8 (pack_binary_b1 or its panel) against int64
    sums of the codes, with the integer bias in corr or a float bias after the requantization."""
    bits = r.choice([2, 1])
    m, n, k = _mnk(r)
    g = torch.Generator().manual_seed(r.randrange(2**31))
    x = _input(r, _lead(r, m), k)
    s, zp, qmin, qmax = _act_qparams(r, x)
    w, layouts = _weights(r, bits, n, k, g)
    wl = r.choice(layouts)
    op = ops.linear_w2a8 if bits == 2 else ops.linear_w1a8
    name = "w2a8" if bits == 2 else "w1a8" if wl.dim() == 2 else "w1a8 panel"
    bias_q, fb, corr, scale = _static_terms(r, w, zp, qmin, g)
    want = _requant(_codes(x, s, zp, qmin, qmax) @ w.double().t(), bias_q, scale, fb)
    with _Machine(r, device) as m:
        got = m.back(op(m(x), m(wl), m(corr), m(scale), s, zp, qmin, qmax, m(fb)))
    _equal_or_raise(got, want, f"{name} x{tuple(x.shape)} w[{n}, {k}] act=({s}, {zp}, {qmin}, {qmax}) {m}")
    return 1


def check_linear_w4a8(r: random.Random, device: str = "cpu") -> int:
    """linear_w4a8 (rows, panel, or panel with blocked scales) against per-group exact sums combined
    in float64 in group order."""
    m, n, k = _mnk(r, 32, [32, 64, 96, 128, 160, 256, 384, 512, 1024, 2048])
    gs = r.choice([d for d in (32, 64, 96, 128, 256, 512, 1024) if k % d == 0])
    g = torch.Generator().manual_seed(r.randrange(2**31))
    x = _input(r, _lead(r, m), k)
    s, zp, qmin, qmax = _act_qparams(r, x)
    w = torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=g)
    gscale = torch.rand(n, k // gs, generator=g) * 0.1
    fb = torch.randn(n, generator=g) if r.random() < 0.5 else None
    q = _codes(x.reshape(-1, k), s, zp, qmin, qmax)
    t = torch.zeros(q.shape[0], n, dtype=torch.float64)
    for j in range(k // gs):
        t = t + (q[:, j * gs:(j + 1) * gs] @ w[:, j * gs:(j + 1) * gs].double().t()) * gscale[:, j].double()
    want = (t * s).float()
    want = (want if fb is None else want + fb).reshape(*x.shape[:-1], n)
    wl, scl, form = ops.pack_int4_w4(w), gscale, "rows"
    if r.random() < 0.5:
        wl, form = ops.pack_int4_panel(wl), "panel"
        if n % 16 == 0 and r.random() < 0.5:
            scl, form = ops.block_w4_scales(gscale), "panel blocked"
    with _Machine(r, device) as m:
        got = m.back(ops.linear_w4a8(m(x), m(wl), m(scl), gs, s, zp, qmin, qmax, m(fb)))
    _equal_or_raise(got, want, f"w4a8 {form} x{tuple(x.shape)} w[{n}, {k}] gs={gs} "
                               f"act=({s}, {zp}, {qmin}, {qmax}) {m}")
    return 1


def check_linear_dynamic_int8(r: random.Random, device: str = "cpu") -> int:
    """linear_dynamic_int8 (per-token or per-tensor scales; 8 / 2 / 1-bit weights in each layout)
    against the per-token formula; a NaN or Inf in the input must raise ValueError."""
    bits = r.choice([8, 2, 1])
    m, n, k = _mnk(r)
    g = torch.Generator().manual_seed(r.randrange(2**31))
    x = _input(r, _lead(r, m), k, special=r.random() < 0.1)
    qmax = r.choice([127, 127, 63, 7, 1])
    per_tensor = r.random() < 0.3
    w, layouts = _weights(r, bits, n, k, g)
    wl = r.choice(layouts)
    ws = torch.rand(n, generator=g) + 0.05
    fb = torch.randn(n, generator=g) if r.random() < 0.5 else None
    with _Machine(r, device) as m:
        if not bool(torch.isfinite(x).all()):
            if not m.cpu:  # CUDA does not check (no host sync on the op path): the output is undefined
                return 0
            try:
                ops.linear_dynamic_int8(x, wl, bits, ws, qmax, fb, per_tensor)
            except ValueError:
                return 1
            raise AssertionError(f"linear_dynamic_int8 accepted a non-finite input ({m})")
        got = m.back(ops.linear_dynamic_int8(m(x), m(wl), bits, m(ws), qmax, m(fb), per_tensor))
    rows = x.reshape(-1, k)
    amax = rows.abs().amax(dim=1) if rows.shape[0] else torch.zeros(0)
    if per_tensor and rows.shape[0]:
        amax = amax.max().expand(rows.shape[0])
    sc = torch.clamp(amax, min=torch.tensor(1e-5)) / torch.tensor(float(qmax))
    q = torch.round(rows * (torch.tensor(1.0) / sc).unsqueeze(1)).clamp(-qmax - 1, qmax).long()
    want = (q @ w.long().t()).float() * (sc.unsqueeze(1) * ws.unsqueeze(0))
    want = (want if fb is None else want + fb).reshape(*x.shape[:-1], n)
    _equal_or_raise(got, want, f"dynamic_int8 bits={bits} layout{tuple(wl.shape)} x{tuple(x.shape)} w[{n}, {k}] "
                               f"qmax={qmax} per_tensor={per_tensor} {m}")
    return 1


def _device_codes(x: torch.Tensor, device: str):
    """binary_codes(x, 'bitnet', 0) computed where the op runs (a CUDA device sums |x| per sample in
    another order, so its alpha may differ from the CPU's in the last bit), on the CPU."""
    q, alpha = ops.binary_codes(x.to(device), "bitnet", 0)
    return q.cpu(), alpha.cpu()


def check_linear_w1a1(r: random.Random, device: str = "cpu") -> int:
    """linear_w1a1 (XNOR + popcount) against int64 sums of binary_codes('bitnet', axis 0)'s codes."""
    m, n, k = _mnk(r)
    m = max(m, 1)  # the op needs a batch dim
    g = torch.Generator().manual_seed(r.randrange(2**31))
    lead = [m] if r.random() < 0.7 else [m, r.choice([1, 2, 3])]
    x = _input(r, lead, k, special=False)
    if r.random() < 0.2:  # NaN codes as 0: no bit, out of the sum
        x = torch.where(torch.rand(x.shape, generator=g) < 0.05, float("nan"), x)
    w = (torch.randint(0, 2, (n, k), generator=g) * 2 - 1).to(torch.int8)
    ws = torch.rand(n, generator=g) + 0.1
    fb = torch.randn(n, generator=g) if r.random() < 0.5 else None
    q, alpha = _device_codes(x, device)
    acc = q.long() @ w.long().t()
    want = acc.float() * (alpha.reshape([-1] + [1] * (acc.dim() - 1)) * ws)
    want = want if fb is None else want + fb
    with _Machine(r, device) as m:
        got = m.back(ops.linear_w1a1(m(x), m(ops.pack_binary_b1(w)), m(ws), m(fb)))
    _equal_or_raise(got, want, f"w1a1 x{tuple(x.shape)} w[{n}, {k}] {m}")
    return 1


def _conv_geometry(r: random.Random):
    kh, kw = r.choice([(1, 1), (3, 3), (3, 3), (3, 3), (5, 5), (1, 3), (3, 1), (2, 2)])
    stride = r.choice([(1, 1), (1, 1), (2, 2), (1, 2), (2, 1), (3, 3)])
    dilation = r.choice([(1, 1), (1, 1), (1, 1), (2, 2), (2, 1)])
    padding = r.choice([(0, 0), (kh // 2, kw // 2), (kh // 2, kw // 2), (1, 0), (2, 2)])
    if (kh, kw) == (1, 1) and r.random() < 0.5:  # a pointwise conv as networks have them
        stride, padding = (1, 1), (0, 0)
    return (kh, kw), stride, padding, dilation


def _conv_shape(r: random.Random, k, stride, padding, dilation, depthwise_ok=True):
    """(B, C, H, W, N, groups) with an output of at least one pixel."""
    while True:
        b = r.choice([1, 1, 2, 3, 5, 8])
        h, w = r.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 14, 17]), r.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 14, 17])
        ho = (h + 2 * padding[0] - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
        wo = (w + 2 * padding[1] - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
        if ho >= 1 and wo >= 1:
            break
    kind = r.choice(["dense", "dense", "grouped", "depthwise", "depthwise"]) if depthwise_ok else "dense"
    if kind == "dense":
        c, groups = r.choice([1, 2, 3, 4, 8, 16, 19, 32]), 1
        n = r.choice([1, 3, 8, 16, 17, 32, 40])
    elif kind == "grouped":
        groups = r.choice([2, 3, 4])
        c, n = groups * r.choice([1, 2, 3, 5]), groups * r.choice([1, 2, 3, 8])
    else:
        c = r.choice([1, 2, 3, 8, 16, 24, 33, 64])
        groups, n = c, c * r.choice([1, 1, 1, 2, 3, 4, 5])
    while b * c * h * w * n * k[0] * k[1] // groups > _BUDGET:
        if b > 1:
            b //= 2
        elif n > groups:
            n = max(groups, n // 2 // groups * groups)
        else:
            break
    return b, c, h, w, n, groups


def check_conv2d_int8(r: random.Random, device: str = "cpu") -> int:
    """conv2d_int8 (dense, grouped, depthwise with multipliers; 8 / 2 / 1-bit weights in each
    layout; strides, padding, dilation) against exact sums over F.unfold's patches of the input's
    codes (a padded position: code - zero point = 0), group by group."""
    bits = r.choice([8, 8, 2, 1])
    k, stride, padding, dilation = _conv_geometry(r)
    b, c, h, w, n, groups = _conv_shape(r, k, stride, padding, dilation)
    g = torch.Generator().manual_seed(r.randrange(2**31))
    x = _input(r, [b, c, h], w)
    if r.random() < 0.4:  # a channels_last input: read as NHWC, a channels_last output
        x = x.contiguous(memory_format=torch.channels_last)
    s, zp, qmin, qmax = _act_qparams(r, x)
    kk = c // groups * k[0] * k[1]
    wc, layouts = _weights(r, bits, n, kk, g, panel=groups == 1 and bits == 8)
    if bits == 8:  # conv weights: rows zero-padded to a multiple of 32 (the loaders' layout)
        layouts[0] = F.pad(wc, (0, -kk % 32)).contiguous()
    wl = r.choice(layouts)
    bias_q, fb, corr, scale = _static_terms(r, wc, zp, qmin, g)
    a = _codes(x, s, zp, qmin, qmax)  # zero padding is code - zp = 0; a NaN's patches are NaN
    cg, ng = c // groups, n // groups
    accs = []
    for i in range(groups):
        p = F.unfold(a[:, i * cg:(i + 1) * cg], k, dilation=dilation, padding=padding, stride=stride)
        accs.append(torch.einsum("bkl,nk->bnl", p, wc[i * ng:(i + 1) * ng].double()))  # exact in float64
    acc = torch.cat(accs, 1)  # [B, N, L]
    y = (acc + bias_q.double().reshape(1, -1, 1)).float() * scale.reshape(1, -1, 1)
    if fb is not None:
        y = y + fb.reshape(1, -1, 1)
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    clamp = _draw_clamp(r)  # the fused activation: torch.clamp of the reference
    with _Machine(r, device) as m:
        got = m.back(ops.conv2d_int8(m(x), m(wl), bits, k, stride, padding, dilation, m(corr), m(scale), s, zp, qmin,
                                     qmax, m(fb), groups, *clamp))
    ho = (h + 2 * padding[0] - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
    what = (f"conv2d_int8 bits={bits} layout{tuple(wl.shape)} x{tuple(x.shape)}{'nhwc' if nhwc else ''} N={n} "
            f"groups={groups} k={k} stride={stride} padding={padding} dilation={dilation} "
            f"act=({s}, {zp}, {qmin}, {qmax}) clamp={clamp} {m}")
    y = y.reshape(b, n, ho, wo)
    _equal_or_raise(got, _clamped(y, clamp), what)
    if nhwc and not got.is_contiguous(memory_format=torch.channels_last):
        raise AssertionError(f"{what}: a channels_last input gave strides {got.stride()}")
    return 1


def check_conv2d_w1a1(r: random.Random, device: str = "cpu") -> int:
    """conv2d_w1a1 (dense, grouped, depthwise with multipliers; NCHW or channels_last inputs, whose
    outputs are channels_last) against the float64 grouped conv of binary_codes('bitnet', axis 0)'s
    codes (zero padding: code 0) and the weight codes."""
    k, stride, padding, dilation = _conv_geometry(r)
    b, c, h, w, n, groups = _conv_shape(r, k, stride, padding, dilation)
    g = torch.Generator().manual_seed(r.randrange(2**31))
    x = _input(r, [b, c, h], w, special=False)
    if r.random() < 0.4:
        x = x.contiguous(memory_format=torch.channels_last)
    wc = (torch.randint(0, 2, (n, c // groups, *k), generator=g) * 2 - 1).to(torch.int8)
    ws = torch.rand(n, generator=g) + 0.1
    fb = torch.randn(n, generator=g) if r.random() < 0.5 else None
    q, alpha = _device_codes(x, device)
    acc = F.conv2d(q.double(), wc.double(), None, stride, padding, dilation, groups).float()
    want = acc * (alpha.reshape(-1, 1, 1, 1) * ws.reshape(1, -1, 1, 1))
    if fb is not None:
        want = want + fb.reshape(1, -1, 1, 1)
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    clamp = _draw_clamp(r)  # the fused activation: torch.clamp of the reference
    with _Machine(r, device) as m:
        got = m.back(ops.conv2d_w1a1(m(x), m(ops.pack_binary_b1(wc.reshape(n, -1))), k, stride, padding, dilation,
                                     m(ws), m(fb), groups, *clamp))
    what = (f"conv2d_w1a1 x{tuple(x.shape)}{'nhwc' if nhwc else ''} N={n} groups={groups} k={k} stride={stride} "
            f"padding={padding} dilation={dilation} clamp={clamp} {m}")
    _equal_or_raise(got, _clamped(want, clamp), what)
    if nhwc and not got.is_contiguous(memory_format=torch.channels_last):
        raise AssertionError(f"{what}: a channels_last input gave strides {got.stride()}")
    return 1


def check_conv2d_w4a8(r: random.Random, device: str = "cpu") -> int:
    """conv2d_w4a8 (dense and grouped; rows or panel; NCHW or channels_last inputs, whose outputs
    are channels_last) against exact sums per weight group over F.unfold's (c, i, j) patches of the
    input's codes (a padded position: code - zero point = 0), combined in float64 in group order."""
    k, stride, padding, dilation = _conv_geometry(r)
    b, _, h, w, _, _ = _conv_shape(r, k, stride, padding, dilation, depthwise_ok=False)
    taps = k[0] * k[1]
    cg = 32 // math.gcd(taps, 32) * r.choice([1, 1, 2, 3])  # K = cg * taps: a multiple of 32
    groups = r.choice([1, 1, 2, 3])
    c, n = cg * groups, groups * r.choice([1, 3, 8, 16, 17])
    kk = cg * taps
    gs = r.choice([d for d in (32, 64, 96, 128, 288, 576) if kk % d == 0])
    while b > 1 and b * c * h * w * n * taps // groups > _BUDGET:
        b //= 2
    g = torch.Generator().manual_seed(r.randrange(2**31))
    x = _input(r, [b, c, h], w)
    if r.random() < 0.4:
        x = x.contiguous(memory_format=torch.channels_last)
    s, zp, qmin, qmax = _act_qparams(r, x)
    wc = torch.randint(-8, 8, (n, kk), dtype=torch.int8, generator=g)
    gscale = torch.rand(n, kk // gs, generator=g) * 0.1
    fb = torch.randn(n, generator=g) if r.random() < 0.5 else None
    a = _codes(x, s, zp, qmin, qmax)
    ng = n // groups
    parts = []
    for i in range(groups):
        p = F.unfold(a[:, i * cg:(i + 1) * cg], k, dilation=dilation, padding=padding, stride=stride)
        t = None
        for j in range(kk // gs):
            acc = torch.einsum("bkl,nk->bnl", p[:, j * gs:(j + 1) * gs], wc[i * ng:(i + 1) * ng, j * gs:(j + 1) * gs].double())
            term = acc * gscale[i * ng:(i + 1) * ng, j].double().reshape(1, -1, 1)
            t = term if t is None else t + term
        parts.append(t)
    y = (torch.cat(parts, 1) * s).float()
    if fb is not None:
        y = y + fb.reshape(1, -1, 1)
    wl = ops.pack_int4_w4(wc)
    if groups == 1 and r.random() < 0.5:
        wl = ops.pack_int4_panel(wl)
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    clamp = _draw_clamp(r)  # the fused activation: torch.clamp of the reference
    with _Machine(r, device) as m:
        got = m.back(ops.conv2d_w4a8(m(x), m(wl), k, stride, padding, dilation, m(gscale), gs, s, zp, qmin, qmax, m(fb),
                                     groups, *clamp))
    ho = (h + 2 * padding[0] - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
    what = (f"conv2d_w4a8 layout{tuple(wl.shape)} x{tuple(x.shape)}{'nhwc' if nhwc else ''} N={n} groups={groups} "
            f"gs={gs} k={k} stride={stride} padding={padding} dilation={dilation} act=({s}, {zp}, {qmin}, {qmax}) "
            f"clamp={clamp} {m}")
    y = y.reshape(b, n, ho, wo)
    _equal_or_raise(got, _clamped(y, clamp), what)
    if nhwc and not got.is_contiguous(memory_format=torch.channels_last):
        raise AssertionError(f"{what}: a channels_last input gave strides {got.stride()}")
    return 1


def _within_float_bound(got, x, wd, fb, what):
    """|got - x @ wd^T - fb| <= K * 2^-24 * sum|x * w| + 2^-24 |ref| (docs/integer.md, weight-only)."""
    x2 = x.reshape(-1, x.shape[-1]).double()
    ref = x2 @ wd.double().t()
    if fb is not None:
        ref = ref + fb.double()
    bound = x.shape[-1] * 2.0**-24 * (x2.abs() @ wd.abs().double().t()) + 2.0**-24 * ref.abs() + 1e-30
    g2 = got.reshape(-1, wd.shape[0]).double()
    bad = ~((g2 - ref).abs() <= bound)
    if got.shape != (*x.shape[:-1], wd.shape[0]) or bool(bad.any()):
        idx = bad.nonzero()[0].tolist() if bool(bad.any()) else None
        raise AssertionError(f"{what}: shape {tuple(got.shape)}; outside the float bound at {idx}")


def check_weight_only(r: random.Random, device: str = "cpu") -> int:
    """linear_w4_weight_only (rows or panel, [N, G] or blocked scales, with or without zero points)
    and linear_w8_weight_only against the float64 product on the dequantized weight, within the
    documented bound."""
    g = torch.Generator().manual_seed(r.randrange(2**31))
    bits = r.choice([4, 8])
    if bits == 4:
        m, n, k = _mnk(r, 32, [32, 64, 96, 128, 160, 256, 384, 512, 1024, 1536])
        m = r.choice([m, m, r.choice([255, 256, 300, 384, 400])]) if n * k <= 20000 else m
        gs = r.choice([d for d in (32, 64, 128, 256) if k % d == 0])
        x = _input(r, _lead(r, m), k, special=False)
        q = torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=g)
        sc = torch.rand(n, k // gs, generator=g) * 0.1 + 1e-3
        z = torch.randint(-8, 8, (n, k // gs), dtype=torch.int8, generator=g).float() if r.random() < 0.5 else None
        fb = torch.randn(n, generator=g) if r.random() < 0.5 else None
        wd = ops.dequantize_affine(q, sc, torch.zeros_like(sc, dtype=torch.int32) if z is None else z.to(torch.int32),
                                   group_size=gs)
        wl, scl, zl, form = ops.pack_int4_w4(q), sc, z, "rows"
        if r.random() < 0.6:
            wl, form = ops.pack_int4_panel(wl), "panel"
            if n % 16 == 0 and r.random() < 0.5:
                scl, zl, form = ops.block_w4_scales(sc), None if z is None else ops.block_w4_scales(z), "panel blocked"
        with _Machine(r, device) as m:
            got = m.back(ops.linear_w4_weight_only(m(x), m(wl), m(scl), gs, m(zl), m(fb)))
        _within_float_bound(got, x, wd, fb, f"w4 weight-only {form} x{tuple(x.shape)} w[{n}, {k}] gs={gs} "
                                            f"zero={z is not None} {m}")
    else:
        m, n, k = _mnk(r)
        m = r.choice([m, m, r.choice([96, 127, 128, 300, 640])]) if n * k <= 20000 else m
        x = _input(r, _lead(r, m), k, special=False)
        q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
        sc = torch.rand(n, generator=g) * 0.01 + 1e-4
        fb = torch.randn(n, generator=g) if r.random() < 0.5 else None
        with _Machine(r, device) as m:
            got = m.back(ops.linear_w8_weight_only(m(x), m(q), m(sc), m(fb)))
        _within_float_bound(got, x, q.float() * sc.unsqueeze(1), fb,
                            f"w8 weight-only x{tuple(x.shape)} w[{n}, {k}] {m}")
    return 1


INTEGER_CHECKS = {
    "linear_int8": check_linear_int8,
    "linear_w2a8_w1a8": check_linear_w2a8_w1a8,
    "linear_w4a8": check_linear_w4a8,
    "linear_dynamic_int8": check_linear_dynamic_int8,
    "linear_w1a1": check_linear_w1a1,
    "conv2d_int8": check_conv2d_int8,
    "conv2d_w1a1": check_conv2d_w1a1,
    "conv2d_w4a8": check_conv2d_w4a8,
    "weight_only": check_weight_only,
}
