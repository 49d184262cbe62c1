"""qatkit::_histogram_update, the histogram observers' update: counts equal torch.histc's (the
independent reference) row by row, NaN leaves the histogram as it was, bad arguments name
themselves, and the op passes opcheck (schema, fake tensors, mutation)."""

import pytest
import torch

from qatkit import ops


def _edges(rows, widen=1.0):
    lo, hi = rows.amin(1).double(), rows.amax(1).double()
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * widen
    return mid - half, mid + half


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels,n", [(1, 100_000), (1, 1000), (5, 3000), (64, 50)])
@pytest.mark.parametrize("widen", [1.0, 1.7])
def test_counts_equal_torch_histc_per_row(dtype, channels, n, widen):
    g = torch.Generator().manual_seed(channels * n)
    rows = (torch.randn(channels, n, generator=g) * torch.logspace(-3, 3, channels)[:, None]).to(dtype)
    lo, hi = _edges(rows, widen)
    h = torch.full((channels, 256), 2.0, dtype=torch.float64)  # adds to what is there
    ops.histogram_update(rows, h, lo, hi)
    for c in range(channels):
        want = torch.histc(rows[c], 256, float(lo[c]), float(hi[c])).double() + 2.0
        assert torch.equal(h[c], want), c
    assert float(h.sum()) == rows.numel() + 2.0 * h.numel()


def test_top_edge_and_outside_values_land_in_the_end_bins():
    h = torch.zeros(1, 4, dtype=torch.float64)
    lo, hi = torch.tensor([0.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    ops.histogram_update(torch.tensor([[-5.0, 0.0, 0.24, 0.25, 0.999, 1.0, 7.0]]), h, lo, hi)
    assert h.tolist() == [[3.0, 1.0, 0.0, 3.0]]


def test_nan_raises_and_leaves_the_histogram_unchanged():
    for rows in (torch.tensor([[1.0, float("nan"), 2.0]]), torch.cat([torch.ones(1, 40_000), torch.full((1, 1), float("nan"))], 1),
                 torch.tensor([[1.0, 2.0], [float("nan"), 0.0]])):
        h = torch.arange(rows.shape[0] * 8, dtype=torch.float64).reshape(-1, 8)
        before = h.clone()
        lo = torch.zeros(rows.shape[0], dtype=torch.float64)
        hi = torch.full((rows.shape[0],), 3.0, dtype=torch.float64)
        with pytest.raises(ValueError, match="rows holds NaN; the histogram is left as it was"):
            ops.histogram_update(rows, h, lo, hi)
        assert torch.equal(h, before)


def test_bad_arguments_name_themselves():
    rows, h = torch.randn(2, 5), torch.zeros(2, 8, dtype=torch.float64)
    lo, hi = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    cases = [
        ((rows[0], h, lo, hi), ValueError, "rows must be 2-d"),
        ((rows.half(), h, lo, hi), TypeError, "rows must be float32 or float64, got Half"),
        ((rows, h.float(), lo, hi), TypeError, "histogram must be float64"),
        ((rows, torch.zeros(3, 8, dtype=torch.float64), lo, hi), ValueError, r"histogram must be \[channels=2"),
        ((rows, torch.zeros(8, 2, dtype=torch.float64).t(), lo, hi), ValueError, "histogram must be contiguous"),
        ((rows, h, lo.float(), hi), TypeError, "lo must be float64"),
        ((rows, h, lo, hi[:1]), ValueError, r"hi must be \[channels=2\]"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            ops.histogram_update(*args)


def test_opcheck():
    rows = torch.randn(3, 40)
    lo, hi = _edges(rows)
    h = torch.zeros(3, 16, dtype=torch.float64)
    torch.library.opcheck(torch.ops.qatkit._histogram_update.default, (rows, h, lo, hi))
