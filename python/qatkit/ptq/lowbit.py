"""Ternary and binary post-training quantization (docs/ptq.md §11): output-aware thresholds and
scales per output channel.

The closed forms of the quantizers (TWN: Delta = 0.7 mean|W|, alpha = mean |W| over |W| > Delta;
XNOR: alpha = mean |W|) minimize the *weight* error. With calibration inputs X, each output channel
c can instead minimize its *output* error ||X w_c - alpha X q_c||^2: for ternary a search over
Delta = t mean|w_c| (t on a grid) with the least-squares alpha for each t; for binary the
least-squares alpha of sign(w_c). The result is written back as the weight alpha * q, which the
per-channel quantizers map to the same codes and scale (TWN: every non-zero of alpha q exceeds
0.7 of its mean, and their mean is alpha; XNOR: mean |alpha sign| = alpha), so convert and
export reproduce the choice.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch


def _lsq_alpha(Y: torch.Tensor, Z: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Per column c: argmin_a ||Y_c - a Z_c||^2 = <Y_c, Z_c> / ||Z_c||^2 (the fallback where that
    is not positive and finite)."""
    num = (Y * Z).sum(dim=0)
    den = (Z * Z).sum(dim=0)
    a = num / den
    return torch.where(torch.isfinite(a) & (a > 0), a, fallback)


@torch.no_grad()
def ternary_search(
    W: torch.Tensor, X: torch.Tensor, grid: Sequence[float] = tuple(t / 20 for t in range(4, 31))
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per output channel (rows of ``W`` [out, in]), the threshold factor t (Delta = t mean|w|)
    and least-squares alpha minimizing the output error on input rows ``X`` [n, in].

    Returns:
        ``(alpha * q, t)``: the ternary weight and the chosen factor per channel.
    """
    W, X = W.double(), X.double()
    Y = X @ W.t()
    mean_abs = W.abs().mean(dim=1, keepdim=True)
    best_err = torch.full((W.shape[0],), float("inf"), dtype=torch.float64)
    best_w = torch.zeros_like(W)
    best_t = torch.zeros(W.shape[0], dtype=torch.float64)
    for t in grid:
        q = torch.sign(W) * (W.abs() > t * mean_abs)
        Z = X @ q.t()
        nz = (q != 0).sum(dim=1).clamp(min=1)
        twn_alpha = (W.abs() * (q != 0)).sum(dim=1) / nz
        a = _lsq_alpha(Y, Z, twn_alpha)
        err = (Y - Z * a).pow(2).sum(dim=0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_w[better] = q[better] * a[better, None]
        best_t[better] = t
    return best_w, best_t


@torch.no_grad()
def binary_search(W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Per output channel, alpha * sign(w) with the least-squares alpha on the output (XNOR's
    mean |w| where that is degenerate)."""
    W, X = W.double(), X.double()
    q = torch.where(W >= 0, 1.0, -1.0).to(W.dtype)
    a = _lsq_alpha(X @ W.t(), X @ q.t(), W.abs().mean(dim=1))
    return q * a[:, None]
