"""Histogram observers for post-training calibration (issue 11): ``percentile``, ``kl`` (TensorRT's
entropy calibration) and ``mse`` (the clipping range minimizing the expected squared quantization
error). They keep a fixed-bin histogram of everything observed (re-binned when the range grows)
and choose a clipping range from it; the qparams follow from that range with the same formulas as
the min/max observers (``ops.choose_qparams``). Per-tensor only: a per-channel spec raises.

Registered in ``OBSERVERS`` under ``QuantSpec.observer`` names ``"percentile"``, ``"kl"`` and
``"mse"`` (docs/ptq.md §5).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .. import ops
from .config import QuantSpec
from .quantizers import Observer, register_observer

__all__ = ["HistogramObserver", "PercentileObserver", "KLObserver", "MSEObserver"]


class HistogramObserver(Observer):
    """A ``bins``-bin histogram over the running [min, max] of the observed tensors; subclasses
    choose the clipping range (:meth:`clip_range`)."""

    bins = 2048

    def __init__(self, spec: QuantSpec, channels: int = 1, axis: Optional[int] = None):
        if axis is not None:
            raise ValueError(
                f"QuantSpec.observer {spec.observer!r} supports per_tensor activations only, got per_channel "
                f"(axis={axis}); use observer='minmax' or 'moving_average' for per-channel ranges"
            )
        super().__init__(spec, 1, None)
        self.register_buffer("histogram", torch.zeros(self.bins, dtype=torch.float64))
        self.register_buffer("min_val", torch.full((1,), float("inf")))
        self.register_buffer("max_val", torch.full((1,), float("-inf")))

    @property
    def has_observed(self) -> bool:
        return bool(torch.isfinite(self.min_val).all())

    def _apply(self, fn, recurse=True):
        hist = self.histogram
        return super()._apply(lambda t: t if t is hist else fn(t), recurse)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"{type(self).__name__}: the observed batch holds NaN or Inf; the histogram is left as it was"
            )
        lo, hi = float(x.min()), float(x.max())
        old_lo, old_hi = float(self.min_val), float(self.max_val)
        new_lo, new_hi = min(lo, old_lo), max(hi, old_hi)
        if new_hi <= new_lo:
            new_hi = new_lo + 1e-8
        if math.isfinite(old_lo) and (new_lo < old_lo or new_hi > old_hi):
            # re-bin the old counts at their bin centres into the wider range
            width = (old_hi - old_lo) / self.bins
            centres = old_lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width
            idx = ((centres - new_lo) / (new_hi - new_lo) * self.bins).floor().clamp(0, self.bins - 1).long()
            rebinned = torch.zeros_like(self.histogram)
            rebinned.index_add_(0, idx, self.histogram)
            self.histogram.copy_(rebinned)
        self.min_val.fill_(new_lo)
        self.max_val.fill_(new_hi)
        self.histogram.add_(torch.histc(x, self.bins, new_lo, new_hi).double())
        self.dirty = True
        if not self._refreshed:  # the first batch gives qparams at once; later ones on demand
            self.refresh()

    #: True when the histogram changed since the qparams were computed (they are refreshed on the
    #: first batch, at the end of calibrate, and by an eval forward that finds them stale)
    dirty = False
    _refreshed = False

    def refresh(self) -> None:
        """Compute the qparams from the histogram now (the clip search runs once per call)."""
        self.dirty = False
        self._refreshed = True
        lo, hi = self.clip_range()
        s = self.spec
        sc, zp = ops.choose_qparams(torch.tensor([lo, hi], dtype=torch.float32), s.quant_min, s.quant_max, s.symmetric)
        self.scale.copy_(sc)
        self.zero_point.copy_(zp)

    def centres(self) -> torch.Tensor:
        lo, hi = float(self.min_val), float(self.max_val)
        return lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (hi - lo) / self.bins

    def clip_range(self) -> Tuple[float, float]:
        return float(self.min_val), float(self.max_val)

    def calculate_qparams(self):
        if self.dirty:
            self.refresh()
        return super().calculate_qparams()

    def fake_quantize(self, x: torch.Tensor, observe_flag: torch.Tensor, fake_quant_on: torch.Tensor) -> torch.Tensor:
        # during calibration the batch is quantized with the qparams of the data so far (refreshed
        # at the end: one clip search per layer, not per batch)
        if bool(observe_flag.item()):
            self.observe(x)
        if not bool(fake_quant_on.item()):
            return x
        s = self.spec
        return ops.fake_quantize(x, self.scale, self.zero_point, s.quant_min, s.quant_max)


@register_observer("percentile")
class PercentileObserver(HistogramObserver):
    """Clip at the ``percentile`` (99.99 %) of the observed values on each side that the data
    spans (a post-ReLU tensor keeps 0 as its lower end)."""

    percentile = 99.99

    def clip_range(self) -> Tuple[float, float]:
        h = self.histogram
        total = float(h.sum())
        if total == 0:
            return super().clip_range()
        cdf = torch.cumsum(h, 0) / total
        c = self.centres()
        q = self.percentile / 100.0
        hi_i = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64)).clamp(max=self.bins - 1))
        lo_i = int(torch.searchsorted(cdf, torch.tensor([1 - q], dtype=torch.float64)).clamp(max=self.bins - 1))
        width = (float(self.max_val) - float(self.min_val)) / self.bins
        lo = float(self.min_val) if float(self.min_val) >= 0 else min(float(c[lo_i] - width / 2), 0.0)
        return lo, max(float(c[hi_i] + width / 2), lo + 1e-8)


def _quant_error(c: torch.Tensor, h: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, levels: int) -> torch.Tensor:
    """Expected squared error of quantizing histogram (centres c, counts h) to ``levels`` codes on
    [lo, hi] (one candidate per row of lo / hi)."""
    step = (hi - lo).clamp(min=1e-12) / (levels - 1)
    q = torch.clamp(torch.round((c[None, :] - lo[:, None]) / step[:, None]), 0, levels - 1) * step[:, None] + lo[:, None]
    return ((c[None, :] - q) ** 2 * h[None, :]).sum(dim=1)


@register_observer("mse")
class MSEObserver(HistogramObserver):
    """The clipping range ``alpha * [min, max]`` (alpha on a 200-point log grid in [1e-3, 1]: heavy
    tails want small alphas) with the least expected squared quantization error over the
    histogram."""

    def clip_range(self) -> Tuple[float, float]:
        h = self.histogram
        if float(h.sum()) == 0:
            return super().clip_range()
        c = self.centres()
        lo0, hi0 = min(float(self.min_val), 0.0), max(float(self.max_val), 0.0)
        alpha = torch.logspace(-3, 0, 200, dtype=torch.float64)
        levels = self.spec.quant_max - self.spec.quant_min + 1
        err = _quant_error(c, h, alpha * lo0, alpha * hi0, levels)
        a = float(alpha[int(err.argmin())])
        return a * lo0, a * hi0


@register_observer("kl")
class KLObserver(HistogramObserver):
    """TensorRT's entropy calibration: the threshold t minimizing KL(P || Q) between the histogram
    of |x| clipped at t (outliers folded into the last bin) and its quantization to the code
    levels; the range is [-t, t] for signed data, [0, t] for non-negative data (whose first bin,
    the ReLU's spike at 0, is left out of P: zero is a code)."""

    candidates = 128

    def clip_range(self) -> Tuple[float, float]:
        h = self.histogram
        if float(h.sum()) == 0:
            return super().clip_range()
        lo_v, hi_v = float(self.min_val), float(self.max_val)
        c = self.centres()
        amax = max(abs(lo_v), abs(hi_v))
        nb = self.bins
        # histogram of |x| on [0, amax]
        idx = (c.abs() / amax * nb).floor().clamp(0, nb - 1).long()
        ah = torch.zeros(nb, dtype=torch.float64).index_add_(0, idx, h)
        signed = lo_v < 0
        levels = (self.spec.quant_max - self.spec.quant_min + 1) // (2 if signed else 1)
        if not signed:
            # a post-ReLU tensor's spike at 0 is code 0 exactly; left in, it dominates P and drags
            # the threshold down (half the mass in one bin)
            ah[0] = 0
        best, best_i = float("inf"), nb
        for i in torch.linspace(levels, nb, self.candidates).round().long().unique().tolist():
            p = ah[:i].clone()
            p[-1] += ah[i:].sum()
            if float(p.sum()) == 0:
                continue
            # quantize the first i bins into `levels` groups; spread each group's mass over its
            # non-empty bins
            grp = (torch.arange(i, dtype=torch.float64) * levels / i).floor().long()
            nz = (ah[:i] > 0).double()
            mass = torch.zeros(levels, dtype=torch.float64).index_add_(0, grp, ah[:i])
            cnt = torch.zeros(levels, dtype=torch.float64).index_add_(0, grp, nz)
            q = torch.where(nz > 0, mass[grp] / cnt[grp].clamp(min=1), torch.zeros_like(nz))
            pn, qn = p / p.sum(), q / q.sum().clamp(min=1e-300)
            m = pn > 0
            kl = float((pn[m] * torch.log(pn[m] / qn[m].clamp(min=1e-300))).sum())
            if kl < best:
                best, best_i = kl, i
        t = best_i / nb * amax
        return (max(lo_v, -t) if signed else max(lo_v, 0.0)), min(hi_v, t) if hi_v > 0 else t
