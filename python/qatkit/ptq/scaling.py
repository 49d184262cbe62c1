"""Activation-aware per-channel scaling of Linear layers (docs/ptq.md §10): SmoothQuant (Xiao et
al. 2022, arXiv 2211.10438) for W8A8 and AWQ (Lin et al. 2023, arXiv 2306.00978) for weight-only
low-bit weights. Both pick s > 0 per input channel and apply ``W[:, j] *= s_j``, ``x_j /= s_j``
(:meth:`QuantLinear.set_smoothing`): the float function is unchanged, the quantization error is
not. The exponent alpha is searched per layer on a sample of the layer's calibration inputs,
minimizing the layer's output error with the quantizers of its spec.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import ops
from ..qat import graph
from ..qat.config import QuantSpec
from ..qat.quantizers import WeightFakeQuantizer

__all__ = ["LinearStats", "collect_linear_stats", "smoothquant_scale", "awq_scale"]


class LinearStats:
    """Per-input-channel max |x| and mean |x| of a Linear layer's inputs, and up to ``rows``
    sampled input rows."""

    def __init__(self, rows: int):
        self.absmax: Optional[torch.Tensor] = None
        self.abssum: Optional[torch.Tensor] = None
        self.count = 0
        self.sample: List[torch.Tensor] = []
        self.rows = rows
        self.kept = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        a = x.abs()
        m, s = a.amax(dim=0), a.sum(dim=0)
        self.absmax = m if self.absmax is None else torch.maximum(self.absmax, m)
        self.abssum = s if self.abssum is None else self.abssum + s
        self.count += x.shape[0]
        if self.kept < self.rows:
            take = x[: self.rows - self.kept]
            self.sample.append(take.clone())
            self.kept += take.shape[0]

    @property
    def absmean(self) -> torch.Tensor:
        return self.abssum / max(self.count, 1)

    @property
    def X(self) -> torch.Tensor:
        return torch.cat(self.sample)


@torch.no_grad()
def collect_linear_stats(model: nn.Module, names: Sequence[str], run, rows: int = 1024) -> Dict[str, LinearStats]:
    """One pass over the calibration data with hooks on the named Linear layers' inputs."""
    stats = {n: LinearStats(rows) for n in names}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, kw, n=n: stats[n].add(graph.layer_input(a, kw)), with_kwargs=True) for n in names]
    try:
        run(model)
    finally:
        for h in hooks:
            h.remove()
    return {n: s for n, s in stats.items() if s.count}


def _fq_weight(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return WeightFakeQuantizer(spec, w)(w)


def _fq_act(x: torch.Tensor, spec: Optional[QuantSpec]) -> torch.Tensor:
    """The activation quantizer's effect on a sample: per-token dynamic, or per-tensor min/max
    static (what calibration would give on this sample)."""
    if spec is None or spec.kind != "int":
        return x
    if spec.scale == "dynamic" and spec.granularity == "per_token":
        return ops.quantize_per_token(x, spec.quant_max)
    s, z = ops.choose_qparams(x, spec.quant_min, spec.quant_max, spec.symmetric)
    return ops.fake_quantize(x, s, z, spec.quant_min, spec.quant_max)


def _search(W: torch.Tensor, X: torch.Tensor, make_s, w_spec: QuantSpec, a_spec: Optional[QuantSpec], alphas):
    ref = X @ W.t()
    best = (float("inf"), None, None)
    for a in [None] + list(alphas):  # None: no scaling, so the search never does worse than none
        s = torch.ones(W.shape[1]) if a is None else make_s(a)
        y = _fq_act(X / s, a_spec) @ _fq_weight(W * s, w_spec).t()
        err = float((y - ref).pow(2).mean())
        if err < best[0]:
            best = (err, a, s)
    return best


def _normalize(s: torch.Tensor) -> torch.Tensor:
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    return s / torch.sqrt(s.max() * s.min())  # centred in log space: keeps the weight range near its own


@torch.no_grad()
def smoothquant_scale(
    layer: nn.Module, stats: LinearStats, alphas: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
):
    """SmoothQuant: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), alpha searched. Returns (s, alpha)."""
    W = layer.weight.detach().float()
    wmax = W.abs().amax(dim=0).clamp(min=1e-8)
    xmax = stats.absmax.clamp(min=1e-8)
    wfq = layer.weight_fake_quant
    aq = layer.input_fake_quant
    err, a, s = _search(W, stats.X, lambda a: _normalize(xmax.pow(a) / wmax.pow(1 - a)), wfq.spec,
                        None if aq is None else aq.spec, alphas)
    return s, a


@torch.no_grad()
def awq_scale(layer: nn.Module, stats: LinearStats, grid: int = 20):
    """AWQ: s_j = mean|X_j|^alpha, alpha on [0, 1] searched for the least output error of the
    weight-quantized layer (activations as the spec says). Returns (s, alpha)."""
    W = layer.weight.detach().float()
    xm = stats.absmean.clamp(min=1e-8)
    aq = layer.input_fake_quant
    alphas = [i / grid for i in range(grid + 1)]
    err, a, s = _search(W, stats.X, lambda a: _normalize(xm.pow(a)), layer.weight_fake_quant.spec,
                        None if aq is None else aq.spec, alphas)
    return s, a
