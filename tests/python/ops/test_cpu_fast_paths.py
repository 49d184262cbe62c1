"""The CPU kernels of choose_qparams, _observer_update and fused_observe_fake_quantize compute the
qparams as scalar loops (csrc/ops/cpu/qparams_scalar.h) instead of the device-generic ATen
composite that CUDA runs; they must give the composite's results bit for bit. The composite is
reached on the CPU by redispatching to its CompositeExplicitAutograd kernel."""

import itertools

import pytest
import torch

import qatkit  # noqa: F401  (loads the ops)

COMPOSITE = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)


def inputs():
    g = torch.Generator().manual_seed(0)
    yield "normal", torch.randn(16, 33, generator=g)
    yield "heavy-tailed", torch.randn(16, 33, generator=g) ** 5 * 100
    yield "positive", torch.rand(16, 33, generator=g) * 7 + 0.5
    yield "negative", -torch.rand(16, 33, generator=g) * 1e-3 - 1e-4
    yield "zeros", torch.zeros(16, 33)
    yield "tiny", torch.randn(16, 33, generator=g) * 1e-30
    yield "half", torch.randn(16, 33, generator=g).half()


RANGES = [(-128, 127), (0, 255), (-8, 7), (0, 15), (-1, 1), (-32768, 32767)]
LAYOUTS = [dict(axis=None, group_size=None), dict(axis=0, group_size=None), dict(axis=1, group_size=None),
           dict(axis=None, group_size=11)]


@pytest.mark.parametrize("name,x", list(inputs()), ids=[n for n, _ in inputs()])
def test_choose_qparams_cpu_kernel_matches_the_composite(name, x):
    for (qmin, qmax), sym, lay in itertools.product(RANGES, (False, True), LAYOUTS):
        args = (x, qmin, qmax, sym, lay["axis"], lay["group_size"])
        s, z = torch.ops.qatkit.choose_qparams(*args)
        rs, rz = torch.ops.qatkit.choose_qparams.default.redispatch(COMPOSITE, *args)
        assert s.shape == rs.shape and s.dtype == rs.dtype and z.dtype == rz.dtype, (name, qmin, qmax, sym, lay)
        assert torch.equal(s, rs) and torch.equal(z, rz), (name, qmin, qmax, sym, lay)


def state(channels, start):
    if start == "empty":
        return torch.full((channels,), float("inf")), torch.full((channels,), float("-inf"))
    g = torch.Generator().manual_seed(1)
    lo = -torch.rand(channels, generator=g) * 2
    return lo, lo + torch.rand(channels, generator=g) * 3


@pytest.mark.parametrize("moving_average", [False, True])
@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("start", ["empty", "observed"])
def test_observer_cpu_kernels_match_the_composite(moving_average, axis, start):
    for (name, x), (qmin, qmax), sym in itertools.product(list(inputs()), RANGES[:4], (False, True)):
        channels = 1 if axis is None else x.shape[axis]
        outs = []
        for redispatch in (False, True):
            lo, hi = state(channels, start)
            s, z = torch.ones(channels), torch.zeros(channels, dtype=torch.int32)
            on = torch.ones(1, dtype=torch.uint8)
            args = (x, lo, hi, s, z, on, on, 0.25, moving_average, qmin, qmax, sym, axis)
            op = torch.ops.qatkit.fused_observe_fake_quantize.default
            y = op.redispatch(COMPOSITE, *args) if redispatch else op(*args)
            outs.append((y, lo, hi, s, z))
        for a, b in zip(*outs):
            assert a.dtype == b.dtype and torch.equal(a, b), (name, qmin, qmax, sym)


def test_fused_cpu_kernel_honours_the_fake_quant_switch():
    x = torch.randn(4, 8)
    lo, hi = state(1, "empty")
    s, z = torch.ones(1), torch.zeros(1, dtype=torch.int32)
    y = torch.ops.qatkit.fused_observe_fake_quantize(
        x, lo, hi, s, z, torch.ones(1, dtype=torch.bool), torch.zeros(1, dtype=torch.bool), 0.01, False, 0, 255
    )
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()  # the input unchanged, not aliased
    assert float(lo) == float(x.min()) and float(hi) == float(x.max())  # while the observer ran
