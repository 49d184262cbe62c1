"""Data-aware rounding of weights (docs/ptq.md §8): GPTQ (Frantar et al. 2022, arXiv 2210.17323)
and AdaRound (Nagel et al. 2020, arXiv 2004.10568).

Both choose integer codes other than round-to-nearest for a layer, given the inputs it sees in the
(partially quantized) model. The result is written back as the layer's weight *dequantized*,
``W = (q - z) * s``, with ``(s, z)`` stored in its weight quantizer: round-to-nearest of that
weight reproduces ``q`` exactly, so the decisions survive the forward pass, ``convert``, state
dicts and export without any new state.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops

__all__ = ["weight_rows", "gptq_quantize", "adaround_quantize", "layer_matrix_input", "hessian"]


def weight_rows(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a [out, in * taps] matrix (convs flattened as im2col sees them)."""
    w = layer.weight.detach()
    return w.reshape(w.shape[0], -1)


def layer_matrix_input(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer input as rows of the matrix its weight multiplies: [n, in * taps]
    (Linear: every token; Conv1d/2d: im2col patches of the input padded as the conv pads it: its
    padding mode, and 'same' / 'valid' as nn.ConvNd resolves them, the odd one of 'same' on the right)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    # nn.ConvNd's own (left, right) pads per dim, last dim first, for every padding form
    x = F.pad(x, layer._reversed_padding_repeated_twice,
              mode="constant" if layer.padding_mode == "zeros" else layer.padding_mode)
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(2)
        k, d, s = (1, layer.kernel_size[0]), (1, layer.dilation[0]), (1, layer.stride[0])
    else:
        k, d, s = layer.kernel_size, layer.dilation, layer.stride
    cols = F.unfold(x, k, dilation=d, padding=0, stride=s)  # [N, C*k, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _qparams(w: torch.Tensor, qmin: int, qmax: int, symmetric: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero point) of a [rows, cols] block, as choose_qparams gives them."""
    return ops.choose_qparams(w.float().contiguous(), qmin, qmax, symmetric, axis=0)


def _q(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Round-to-nearest fake quantization of column(s) ``w`` with per-row qparams."""
    inv = 1.0 / s
    return (torch.clamp(torch.round(w * inv) + z, qmin, qmax) - z) * s


@torch.no_grad()
def gptq_quantize(
    w: torch.Tensor,
    H: torch.Tensor,
    qmin: int,
    qmax: int,
    symmetric: bool,
    group_size: Optional[int] = None,
    per_tensor: bool = False,
    act_order: bool = True,
    damp: float = 0.01,
    block: int = 128,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of one weight matrix ``w`` [rows, cols] given the Hessian ``H = 2 X^T X / n`` [cols, cols].

    Columns are quantized one at a time (in descending diag(H) order with ``act_order``); each
    column's rounding error is spread over the not-yet-quantized columns through the inverse
    Hessian's Cholesky factor, in blocks of ``block`` columns. Qparams: per row, per group of
    ``group_size`` columns (computed from the original weights, "static groups", so the
    group layout does not depend on the processing order), or per tensor.

    Returns:
        ``(w_q, scale, zero_point)``: the dequantized weight (same layout as ``w``) and the qparams
        ([rows], [rows, cols / group_size] or [1]).
    """
    W = w.detach().double().clone()
    rows, cols = W.shape
    H = H.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if per_tensor:
        s1, z1 = ops.choose_qparams(W.float(), qmin, qmax, symmetric)
        scale_of = lambda c: s1.double().expand(rows)  # noqa: E731
        zp_of = lambda c: z1.double().expand(rows)  # noqa: E731
        scale, zero = s1, z1
    elif group_size:
        if cols % group_size:
            raise ValueError(f"GPTQ: {cols} columns are not a multiple of group_size {group_size}")
        s_g, z_g = ops.choose_qparams(W.float(), qmin, qmax, symmetric, group_size=group_size)
        scale_of = lambda c: s_g[:, c // group_size].double()  # noqa: E731
        zp_of = lambda c: z_g[:, c // group_size].double()  # noqa: E731
        scale, zero = s_g, z_g
    else:
        s_r, z_r = _qparams(W, qmin, qmax, symmetric)
        scale_of = lambda c: s_r.double()  # noqa: E731
        zp_of = lambda c: z_r.double()  # noqa: E731
        scale, zero = s_r, z_r
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.cholesky_inverse(L)
        Hinv = torch.linalg.cholesky(Hinv, upper=True)
    except torch.linalg.LinAlgError as e:  # damp 0 on a rank-deficient Hessian (fewer samples than columns)
        raise ValueError(f"GPTQ: the damped Hessian (damp={damp}) is not positive definite; raise gptq['damp'] "
                         f"(default 0.01) or calibrate on more samples ({e})") from e
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = int(perm[i1 + i])
            col = W1[:, i]
            q = _q(col, scale_of(c), zp_of(c), qmin, qmax)
            Q[:, i1 + i] = q
            err = (col - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    inv = torch.argsort(perm)
    return Q[:, inv].to(w.dtype), scale.float(), zero


def _rect_sigmoid(v: torch.Tensor, zeta: float = 1.1, gamma: float = -0.1) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (zeta - gamma) + gamma, 0, 1)


def adaround_quantize(
    layer: nn.Module,
    inputs: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    qmin: int,
    qmax: int,
    iters: int = 1000,
    lam: float = 0.01,
    batch: int = 256,
    lr: float = 1e-2,
    seed: int = 0,
    target: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """AdaRound for one layer: learn per-weight rounding ``floor(W/s) + h(V)`` (h the rectified
    sigmoid) minimizing ``|| X W^T - X W~^T ||^2 + lam * sum(1 - |2h - 1|^beta)`` over the rows
    ``X`` of its inputs (im2col patches for convs), with beta annealed from 20 to 2 after a 20 %
    warm-up without the regularizer; then h is hardened (>= 0.5 rounds up).

    ``scale`` / ``zero`` broadcast over the weight rows ([rows] or [rows, groups] expanded to the
    columns by the caller, or [1]). ``target``: the output rows to reconstruct (default X W^T; the
    float model's own layer output makes the loss also absorb the upstream quantization error,
    "asymmetric reconstruction"). Returns the dequantized weight in the layer's layout.
    """
    W = weight_rows(layer).float()
    s = scale.float()
    z = zero.float()
    if s.dim() == 1 and s.numel() == W.shape[0]:
        s, z = s[:, None], z[:, None]
    base = torch.floor(W / s)
    rest = (W / s - base).clamp(1e-4, 1 - 1e-4)
    # h(V) = rest at the start: V = logit((rest - gamma) / (zeta - gamma))
    V = torch.log((rest + 0.1) / 1.2 / (1 - (rest + 0.1) / 1.2)).clone().requires_grad_(True)
    X = inputs.float()
    target = X @ W.t() if target is None else target.float()
    with torch.enable_grad():  # callers may hold no_grad
        V = _optimize(V, X, target, base, s, z, qmin, qmax, iters, lam, batch, lr, seed)
    with torch.no_grad():
        hard = (_rect_sigmoid(V) >= 0.5).float()
        wq = (torch.clamp(base + hard + z, qmin, qmax) - z) * s
    return wq.reshape(layer.weight.shape).to(layer.weight.dtype)


def _optimize(V, X, target, base, s, z, qmin, qmax, iters, lam, batch, lr, seed):
    opt = torch.optim.Adam([V], lr=lr)
    g = torch.Generator().manual_seed(seed)
    warm = int(0.2 * iters)
    for it in range(iters):
        idx = torch.randint(0, X.shape[0], (min(batch, X.shape[0]),), generator=g)
        h = _rect_sigmoid(V)
        wq = (torch.clamp(base + h + z, qmin, qmax) - z) * s
        rec = (X[idx] @ wq.t() - target[idx]).pow(2).sum(dim=1).mean()
        if it >= warm:
            beta = 20 - (20 - 2) * (it - warm) / max(1, iters - warm)
            reg = (1 - (2 * h - 1).abs().pow(beta)).sum()
            loss = rec + lam * reg
        else:
            loss = rec
        opt.zero_grad()
        loss.backward()
        opt.step()
    return V.detach()


def hessian(layer: nn.Module, xs) -> torch.Tensor:
    """``2 X^T X / n`` over the input batches ``xs`` of ``layer`` (float64)."""
    H, n = None, 0
    for x in xs:
        X = layer_matrix_input(layer, x.detach()).double()
        H = X.t() @ X if H is None else H + X.t() @ X
        n += X.shape[0]
    return 2 * H / max(n, 1)

