"""Histogram observers for post-training calibration (issue 11): ``percentile``, ``kl`` (TensorRT's
entropy calibration) and ``mse`` (the clipping range minimizing the expected squared quantization
error). They keep a fixed-bin histogram of everything observed (re-binned when the range grows)
and choose a clipping range from it; the qparams follow from that range with the same formulas as
the min/max observers (``ops.choose_qparams``). Per tensor, or per channel along the spec's axis
(one histogram and one clip search per channel).

Registered in ``OBSERVERS`` under ``QuantSpec.observer`` names ``"percentile"``, ``"kl"`` and
``"mse"`` (docs/ptq.md §5).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .. import ops
from .config import QuantSpec
from .quantizers import Observer, _dist_world, global_range, register_observer

__all__ = ["HistogramObserver", "PercentileObserver", "KLObserver", "MSEObserver"]


class HistogramObserver(Observer):
    """A ``bins``-bin histogram over the running [min, max] of the observed tensors, one per channel
    for a per-channel spec (``axis``); subclasses choose each histogram's clipping range
    (:meth:`_clip`)."""

    bins = 2048

    def __init__(self, spec: QuantSpec, channels: int = 1, axis: Optional[int] = None):
        super().__init__(spec, channels if axis is not None else 1, axis)
        n = self.scale.numel()
        # per tensor the histogram stays one-dimensional (the checkpoints written before per-channel
        # histograms existed load unchanged)
        shape = (self.bins,) if axis is None else (n, self.bins)
        self.register_buffer("histogram", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("min_val", torch.full((n,), float("inf"), dtype=torch.float32))
        self.register_buffer("max_val", torch.full((n,), float("-inf"), dtype=torch.float32))

    @property
    def has_observed(self) -> bool:
        return bool(torch.isfinite(self.min_val).all())

    def _apply(self, fn, recurse=True):
        hist = self.histogram
        return super()._apply(lambda t: t if t is hist else fn(t), recurse)

    def _rows(self) -> torch.Tensor:
        return self.histogram.view(-1, self.bins)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        distributed = self.sync_distributed and _dist_world() > 1
        if x.numel() == 0 and not distributed:
            return
        n = self.min_val.numel()
        if self.axis is None and not distributed:
            self._observe_tensor(x.reshape(1, -1))
            return
        if self.axis is not None and (x.dim() == 0 or x.shape[self.axis] != n):
            raise ValueError(
                f"{type(self).__name__}: a per-channel observer of {n} channels along axis {self.axis} got a "
                f"tensor of shape {tuple(x.shape)}"
            )
        rows = x.reshape(1, -1) if self.axis is None else x.movedim(self.axis, 0).reshape(n, -1)
        if distributed:
            # the ranks' global range first (every rank rebins alike), then their counts summed:
            # integer counts in float64, so every rank holds the single-process histogram
            try:
                lo_t, hi_t = global_range(rows, 0)
            except ValueError as e:
                raise ValueError(f"{type(self).__name__}: {e}") from e
            if lo_t is None:
                return
        else:
            lo_t, hi_t = torch.aminmax(rows, dim=1)
        bad = ~(torch.isfinite(lo_t) & torch.isfinite(hi_t))
        if bool(bad.any()):
            where = "" if self.axis is None else f" (channel {int(bad.nonzero()[0])})"
            raise ValueError(
                f"{type(self).__name__}: the observed batch holds NaN or Inf{where}; the histogram is left as it was"
            )
        old_lo, old_hi = self.min_val.double(), self.max_val.double()
        new_lo = torch.minimum(lo_t.double(), old_lo)
        new_hi = torch.maximum(hi_t.double(), old_hi)
        new_hi = torch.where(new_hi <= new_lo, new_lo + 1e-8, new_hi)
        grown = torch.isfinite(old_lo) & ((new_lo < old_lo) | (new_hi > old_hi))
        hist = self._rows()
        if bool(grown.any()):
            # re-bin the old counts at their bin centres into the wider range
            r = grown.nonzero().reshape(-1)
            width = (old_hi[r] - old_lo[r]) / self.bins
            centres = old_lo[r, None] + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width[:, None]
            span = (new_hi[r] - new_lo[r])[:, None]
            idx = ((centres - new_lo[r, None]) / span * self.bins).floor().clamp(0, self.bins - 1).long()
            rebinned = torch.zeros(len(r), self.bins, dtype=torch.float64).scatter_add_(1, idx, hist[r])
            hist[r] = rebinned
        self.min_val.copy_(new_lo)
        self.max_val.copy_(new_hi)
        if distributed:
            counts = torch.zeros_like(hist)
            ops.histogram_update(rows, counts, new_lo, new_hi)
            torch.distributed.all_reduce(counts)
            hist += counts
        else:
            ops.histogram_update(rows, hist, new_lo, new_hi)
        self.dirty = True
        if not self._refreshed:  # the first batch gives qparams at once; later ones on demand
            self.refresh()

    def _observe_tensor(self, rows: torch.Tensor) -> None:
        """observe() per tensor, on Python floats (a dozen fewer small tensor ops per batch)."""
        lo_t, hi_t = torch.aminmax(rows)  # one pass; NaN propagates, an Inf becomes the min or max
        lo, hi = float(lo_t), float(hi_t)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(
                f"{type(self).__name__}: the observed batch holds NaN or Inf; the histogram is left as it was"
            )
        old_lo, old_hi = float(self.min_val), float(self.max_val)
        new_lo, new_hi = min(lo, old_lo), max(hi, old_hi)
        if new_hi <= new_lo:
            new_hi = new_lo + 1e-8
        hist = self._rows()
        if math.isfinite(old_lo) and (new_lo < old_lo or new_hi > old_hi):
            # re-bin the old counts at their bin centres into the wider range
            width = (old_hi - old_lo) / self.bins
            centres = old_lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width
            idx = ((centres - new_lo) / (new_hi - new_lo) * self.bins).floor().clamp(0, self.bins - 1).long()
            hist[0] = torch.zeros(self.bins, dtype=torch.float64).index_add_(0, idx, hist[0])
        self.min_val.fill_(new_lo)
        self.max_val.fill_(new_hi)
        edges = torch.tensor([new_lo, new_hi], dtype=torch.float64)
        ops.histogram_update(rows, hist, edges[:1], edges[1:])
        self.dirty = True
        if not self._refreshed:
            self.refresh()

    #: True when the histogram changed since the qparams were computed (they are refreshed on the
    #: first batch, at the end of calibrate, and by an eval forward that finds them stale)
    dirty = False
    _refreshed = False

    def refresh(self) -> None:
        """Compute the qparams from the histogram(s) now (the clip search runs once per call)."""
        self.dirty = False
        self._refreshed = True
        lo, hi = self.clip_ranges()
        s = self.spec
        ranges = torch.stack([lo, hi], dim=1).float()  # one row [lo, hi] per channel
        sc, zp = ops.choose_qparams(ranges, s.quant_min, s.quant_max, s.symmetric, axis=0)
        self.scale.copy_(sc)
        self.zero_point.copy_(zp)

    def centres(self, channel: int = 0) -> torch.Tensor:
        lo, hi = float(self.min_val[channel]), float(self.max_val[channel])
        return lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (hi - lo) / self.bins

    def clip_range(self, channel: int = 0) -> Tuple[float, float]:
        """The clipping range of one channel's histogram (the tensor's, per tensor)."""
        h = self._rows()[channel]
        lo, hi = float(self.min_val[channel]), float(self.max_val[channel])
        if not (math.isfinite(lo) and math.isfinite(hi)) or float(h.sum()) == 0:
            return lo, hi
        return self._clip(h, lo, hi)

    def clip_ranges(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) float64 vectors, one clipping range per channel."""
        r = [self.clip_range(c) for c in range(self.min_val.numel())]
        return torch.tensor([a for a, _ in r], dtype=torch.float64), torch.tensor([b for _, b in r], dtype=torch.float64)

    def _clip(self, h: torch.Tensor, lo: float, hi: float) -> Tuple[float, float]:
        """The clipping range for histogram ``h`` of ``bins`` equal bins over [lo, hi]."""
        return lo, hi

    def calculate_qparams(self):
        if self.dirty:
            self.refresh()
        return super().calculate_qparams()

    def fake_quantize(self, x: torch.Tensor, observe_flag: torch.Tensor, fake_quant_on: torch.Tensor) -> torch.Tensor:
        # While observing (calibration), the batch is quantized over the running min / max of the
        # data so far, not clipped: the clip search runs once, at the end, and clipping a batch to
        # the ranges of the earlier ones would hand the next layers distorted activations to
        # observe. Otherwise the clipped qparams apply.
        s = self.spec
        if bool(observe_flag.item()):
            self.observe(x)
            if not bool(fake_quant_on.item()):
                return x
            ranges = torch.stack([self.min_val, self.max_val], dim=1)
            sc, zp = ops.choose_qparams(ranges, s.quant_min, s.quant_max, s.symmetric, axis=0)
            return ops.fake_quantize(x, sc, zp, s.quant_min, s.quant_max, self.axis)
        if not bool(fake_quant_on.item()):
            return x
        if self.dirty:
            self.refresh()
        return ops.fake_quantize(x, self.scale, self.zero_point, s.quant_min, s.quant_max, self.axis)

    def fake_quantize_again(self, x: torch.Tensor, fake_quant_on: torch.Tensor) -> torch.Tensor:
        # an observing forward quantized over the running min / max (see fake_quantize), which
        # include x already; not the clipped qparams
        if not bool(fake_quant_on.item()):
            return x
        s = self.spec
        ranges = torch.stack([self.min_val, self.max_val], dim=1)
        sc, zp = ops.choose_qparams(ranges, s.quant_min, s.quant_max, s.symmetric, axis=0)
        return ops.fake_quantize(x, sc, zp, s.quant_min, s.quant_max, self.axis)


@register_observer("percentile")
class PercentileObserver(HistogramObserver):
    """Clip at the ``percentile`` (99.99 %) of the observed values on each side that the data
    spans (a post-ReLU tensor keeps 0 as its lower end)."""

    percentile = 99.99

    def _clip(self, h: torch.Tensor, lo_v: float, hi_v: float) -> Tuple[float, float]:
        total = float(h.sum())
        cdf = torch.cumsum(h, 0) / total
        width = (hi_v - lo_v) / self.bins
        c = lo_v + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width
        q = self.percentile / 100.0
        hi_i = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64)).clamp(max=self.bins - 1))
        lo_i = int(torch.searchsorted(cdf, torch.tensor([1 - q], dtype=torch.float64)).clamp(max=self.bins - 1))
        lo = lo_v if lo_v >= 0 else min(float(c[lo_i] - width / 2), 0.0)
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
    tails want small alphas, searched coarse to fine) with the least expected squared quantization
    error over the histogram."""

    def _clip(self, h: torch.Tensor, lo_v: float, hi_v: float) -> Tuple[float, float]:
        c = lo_v + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (hi_v - lo_v) / self.bins
        lo0, hi0 = min(lo_v, 0.0), max(hi_v, 0.0)
        alpha = torch.logspace(-3, 0, 200, dtype=torch.float64)
        levels = self.spec.quant_max - self.spec.quant_min + 1
        # coarse to fine: every 8th alpha (and 1), then the 17 around the best of those (the error
        # is smooth at that scale): 42 of the 200 evaluated, a fifth of the time
        coarse = torch.cat([torch.arange(0, 200, 8), torch.tensor([199])])
        err = _quant_error(c, h, alpha[coarse] * lo0, alpha[coarse] * hi0, levels)
        k = int(coarse[int(err.argmin())])
        fine = torch.arange(max(k - 8, 0), min(k + 9, 200))
        err = _quant_error(c, h, alpha[fine] * lo0, alpha[fine] * hi0, levels)
        a = float(alpha[int(fine[int(err.argmin())])])
        return a * lo0, a * hi0


@register_observer("kl")
class KLObserver(HistogramObserver):
    """TensorRT's entropy calibration: the threshold t minimizing KL(P || Q) between the histogram
    of |x| clipped at t (outliers folded into the last bin) and its quantization to the code
    levels; the range is [-t, t] for signed data, [0, t] for non-negative data (whose first bin,
    the ReLU's spike at 0, is left out of P: zero is a code)."""

    candidates = 128

    def _clip(self, h: torch.Tensor, lo_v: float, hi_v: float) -> Tuple[float, float]:
        c = lo_v + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (hi_v - lo_v) / self.bins
        amax = max(abs(lo_v), abs(hi_v))
        nb = self.bins
        # histogram of |x| on [0, amax]
        idx = (c.abs() / amax * nb).floor().clamp(0, nb - 1).long()
        ah = torch.zeros(nb, dtype=torch.float64).index_add_(0, idx, h)
        signed = lo_v < 0
        levels = (self.spec.quant_max - self.spec.quant_min + 1) // (2 if signed else 1)
        if levels >= nb:
            # more code levels than histogram bins (12 bits and up on 2048 bins): every bin is its
            # own level, so no cut lowers the KL; the observed range (before, the candidates ran
            # past the histogram: IndexError "index 2049 is out of bounds")
            return lo_v, hi_v
        if not signed:
            # a post-ReLU tensor's spike at 0 is code 0 exactly; left in, it dominates P and drags
            # the threshold down (half the mass in one bin)
            ah[0] = 0
        cand = torch.linspace(levels, nb, self.candidates).round().long().unique()
        best_i = kl_threshold_bin(ah, cand, levels)
        t = best_i / nb * amax
        return (max(lo_v, -t) if signed else max(lo_v, 0.0)), min(hi_v, t) if hi_v > 0 else t


def kl_threshold_bin(ah: torch.Tensor, candidates: torch.Tensor, levels: int) -> int:
    """The candidate bin count i (each >= ``levels``) minimizing KL(P_i || Q_i), TensorRT's entropy
    calibration: P_i is the histogram ``ah`` cut at i bins with the outliers folded into its last
    bin, Q_i the first i bins quantized into ``levels`` groups (bin j in group floor(j levels / i)),
    each group's mass spread over its non-empty bins; both normalized, and a P bin whose Q bin is
    empty costs log(p / 1e-300). ``len(ah)`` when the histogram is empty.

    Within a group Q is constant, so every candidate's KL comes from prefix sums over the bins
    (mass, non-empty count, sum of a log a) and one term per group: O(bins + candidates x levels)
    instead of the O(candidates x bins) of spelling out each P_i and Q_i (docs/ptq.md §5).
    """
    nb = ah.numel()
    ah = ah.to(torch.float64)
    total = float(ah.sum())
    if total == 0:
        return nb
    zero = ah.new_zeros(1)
    pos = ah > 0
    mass_below = torch.cat([zero, ah.cumsum(0)])  # [k] = sum(ah[:k])
    count_below = torch.cat([zero, pos.double().cumsum(0)])
    alog_below = torch.cat([zero, torch.where(pos, ah * torch.log(ah.clamp(min=1e-300)), 0.0).cumsum(0)])
    i = candidates.long().reshape(-1)
    g = torch.arange(levels + 1)
    bounds = (g[None, :] * i[:, None] + levels - 1) // levels  # first bin of each group; [:, -1] = i
    mass = mass_below[bounds[:, 1:]] - mass_below[bounds[:, :-1]]  # [C, levels]
    cnt = count_below[bounds[:, 1:]] - count_below[bounds[:, :-1]]
    q_group = torch.where(cnt > 0, mass / cnt.clamp(min=1), 1.0)  # Q's value on a group's non-empty bins
    s2 = torch.where(cnt > 0, mass * torch.log(q_group), 0.0).sum(1)  # sum_j ah_j log q_j
    kept = mass_below[i]  # sum of Q (and of P below the cut)
    log_total = math.log(total)
    kl = (alog_below[i] - s2) / total + torch.where(
        kept > 0, kept / total * (torch.log(kept.clamp(min=1e-300)) - log_total), 0.0
    )
    # the last bin also carries the outliers beyond the cut
    tail = total - kept
    a = ah[i - 1]
    log_qn = torch.log(q_group[:, -1]) - torch.log(kept.clamp(min=1e-300))
    with_a = (a + tail) / total * (torch.log((a + tail) / total) - log_qn) - a / total * (
        torch.log(a.clamp(min=1e-300) / total) - log_qn
    )
    without_a = tail / total * (torch.log(tail.clamp(min=1e-300) / total) - math.log(1e-300))
    kl = kl + torch.where(tail > 0, torch.where(a > 0, with_a, without_a), 0.0)
    return int(i[int(kl.argmin())])
