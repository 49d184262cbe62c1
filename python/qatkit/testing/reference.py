"""Slow, independent float64 references for qatkit's ops (no qatkit code involved).

The fake-quant reference reproduces the float32 arithmetic of the kernels from float64
operations: the product of two float32 numbers is exact in float64, so rounding it to float32
gives float32 multiplication exactly; likewise (q - z) * s.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

_HALF = (torch.float16, torch.bfloat16, torch.float32)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit with NaN at the same places (torch.equal calls NaN unequal): how the tests
    compare the integer ops, whose NaN rule makes outputs NaN (docs/integer.md, "NaN inputs")."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(123.0), b.nan_to_num(123.0))


def expand_qparam(p: torch.Tensor, x: torch.Tensor, axis: Optional[int], group_size: Optional[int]) -> torch.Tensor:
    """Broadcast per-tensor/channel/group qparams to x's shape (float64, detached)."""
    return _expand(p.detach().to(torch.float64), x, axis, group_size)


def _expand(p: torch.Tensor, x: torch.Tensor, axis: Optional[int], group_size: Optional[int]) -> torch.Tensor:
    """Broadcast qparams to x's shape, keeping p's autograd history."""
    if axis is not None:
        ax = axis % x.dim()
        shape = [1] * x.dim()
        shape[ax] = x.shape[ax]
        return p.reshape(shape).expand(x.shape)
    if group_size is not None:
        return p.repeat_interleave(group_size, dim=-1).reshape(x.shape)
    return p.reshape(()).expand(x.shape)


def fake_quantize_ref(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (fake-quantized x in x's dtype, boolean STE mask)."""
    f32_math = x.dtype in _HALF
    s = expand_qparam(scale, x, axis, group_size)
    z = expand_qparam(zero_point, x, axis, group_size)
    inv = (1.0 / s.to(torch.float32)).to(torch.float64)  # the float32 reciprocal
    x64 = x.detach().to(torch.float64)
    prod = x64 * inv
    if f32_math:
        prod = prod.to(torch.float32).to(torch.float64)
    q = torch.round(prod) + z  # round half to even; |q| small, so the sum is exact
    mask = (q >= quant_min) & (q <= quant_max)
    qc = torch.where(q < quant_min, torch.full_like(q, quant_min), q)
    qc = torch.where(qc > quant_max, torch.full_like(q, quant_max), qc)
    y = (qc - z) * s
    if f32_math:
        y = y.to(torch.float32)
    return y.to(x.dtype), mask


def choose_qparams_ref(
    x: torch.Tensor, quant_min: int, quant_max: int, symmetric: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row qparams of a 2-d float tensor [rows, n], by the formulas in the op's contract."""
    mn = x.detach().float().amin(dim=1).clamp(max=0)
    mx = x.detach().float().amax(dim=1).clamp(min=0)
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        scale = (torch.maximum(-mn, mx) / ((quant_max - quant_min) / 2)).clamp(min=eps)
        mid = 0 if quant_min < 0 else (quant_min + quant_max + 1) // 2
        zp = torch.full_like(scale, mid, dtype=torch.int32)
    else:
        scale = ((mx - mn) / (quant_max - quant_min)).clamp(min=eps)
        zp = (quant_min - torch.round(mn / scale)).clamp(quant_min, quant_max).to(torch.int32)
    return scale, zp


def lsq_ref(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 LSQ / LSQ+ with the detach trick; returns (y, scale_leaf, zero_point_leaf).

    round() is replaced by v + (round(v) - v).detach(), so autograd yields exactly the LSQ
    gradients (docs/papers.md §6.1-6.2): input clipped STE, scale (r - x/s) inside the window and
    qmin - z / qmax - z outside, zero point 0 inside and -s outside. The rounded value r comes from
    the float32 product x * (1.0f / s), as in the kernels; the gradient flows through x / s.
    """
    s_leaf = scale.detach().to(torch.float64).clamp(min=torch.finfo(torch.float32).eps).requires_grad_()
    z_leaf = zero_point.detach().to(torch.float64).requires_grad_()
    s = _expand(s_leaf, x, axis, group_size)
    z = _expand(z_leaf, x, axis, group_size)
    x64 = x.detach().to(torch.float64)
    inv32 = 1.0 / s.detach().to(torch.float32)
    prod = x64 * inv32.to(torch.float64)
    if x.dtype != torch.float64:
        prod = prod.to(torch.float32).to(torch.float64)
    r = torch.round(prod)
    xs = x64 / s
    r_ste = xs + (r - xs).detach()
    z_round = torch.round(z.detach()).clamp(quant_min, quant_max)
    z_ste = z + (z_round - z).detach()
    y = (torch.clamp(r_ste + z_ste, quant_min, quant_max) - z_ste) * s
    return y, s_leaf, z_leaf
