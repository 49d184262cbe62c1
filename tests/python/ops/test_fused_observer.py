"""fused_observe_fake_quantize: buffer updates (moving average, min/max, per channel) against the
formulas and torch's fused_moving_avg_obs_fake_quant, qparams against choose_qparams, flags as
tensors (no recompilation when toggled), gradients, opcheck, bad input."""

import pytest
import torch

from qatkit import ops


def buffers(c=1):
    return (
        torch.full((c,), float("inf")),
        torch.full((c,), float("-inf")),
        torch.ones(c),
        torch.zeros(c, dtype=torch.int32),
    )


ON, OFF = torch.tensor([1]), torch.tensor([0])


@pytest.mark.parametrize("symmetric,qmin,qmax", [(False, 0, 255), (True, -128, 127)])
def test_matches_torch_fused_moving_average_observer(symmetric, qmin, qmax):
    ours = buffers()
    theirs = buffers()
    for step in range(4):
        x = torch.randn(32, 16) * (1 + step)
        y = ops.fused_observe_fake_quantize(x, *ours, ON, ON, 0.05, True, qmin, qmax, symmetric)
        yt = torch.fused_moving_avg_obs_fake_quant(x, ON, ON, *theirs, 0.05, qmin, qmax, 0, False, symmetric)
        # running statistics: the same moving average
        torch.testing.assert_close(ours[0], theirs[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours[1], theirs[1], rtol=1e-6, atol=1e-7)
        if not symmetric:
            torch.testing.assert_close(ours[2], theirs[2], rtol=1e-6, atol=1e-9)
            assert torch.equal(ours[3], theirs[3])
            torch.testing.assert_close(y, yt, rtol=0, atol=float(ours[2]) * 1.0001)
        else:
            # torch's C++ symmetric qparams use amax / 127 (its preserve_sparsity branch); qatkit
            # follows torch.ao's Python observers, amax / ((qmax - qmin) / 2) = amax / 127.5
            amax = torch.maximum(-ours[0], ours[1])
            torch.testing.assert_close(ours[2], (amax / 127.5).float())


def test_moving_average_formula_and_qparams():
    rmin, rmax, s, z = buffers()
    x1, x2 = torch.randn(100) * 2, torch.randn(100) * 5
    ops.fused_observe_fake_quantize(x1, rmin, rmax, s, z, ON, ON, 0.2, True, 0, 255)
    assert rmin.item() == x1.min().item() and rmax.item() == x1.max().item()  # first value taken as is
    ops.fused_observe_fake_quantize(x2, rmin, rmax, s, z, ON, ON, 0.2, True, 0, 255)
    exp_min = x1.min() + (x2.min() - x1.min()) * 0.2
    exp_max = x1.max() + (x2.max() - x1.max()) * 0.2
    torch.testing.assert_close(rmin, exp_min.reshape(1))
    torch.testing.assert_close(rmax, exp_max.reshape(1))
    ref_s, ref_z = ops.choose_qparams(torch.stack([rmin[0], rmax[0]]), 0, 255, False)
    assert torch.equal(s, ref_s) and torch.equal(z, ref_z)


def test_plain_minmax_and_per_channel():
    rmin, rmax, s, z = buffers(4)
    xs = [torch.randn(4, 10) * (i + 1) for i in range(3)]
    for x in xs:
        ops.fused_observe_fake_quantize(x, rmin, rmax, s, z, ON, ON, 0.0, False, -8, 7, True, 0)
    all_x = torch.cat(xs, dim=1)
    assert torch.equal(rmin, all_x.amin(1)) and torch.equal(rmax, all_x.amax(1))
    ref_s, ref_z = ops.choose_qparams(all_x, -8, 7, True, axis=0)
    assert torch.equal(s, ref_s) and torch.equal(z, ref_z)


def test_flags_switch_observation_and_quantization():
    rmin, rmax, s, z = buffers()
    x = torch.randn(50)
    y = ops.fused_observe_fake_quantize(x, rmin, rmax, s, z, OFF, OFF)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    assert torch.isinf(rmin).all() and s.item() == 1.0  # nothing observed: qparams untouched
    y = ops.fused_observe_fake_quantize(x, rmin, rmax, s, z, ON, OFF)
    assert torch.equal(y, x) and torch.isfinite(rmin).all()
    frozen = (rmin.clone(), s.clone())
    y = ops.fused_observe_fake_quantize(x * 10, rmin, rmax, s, z, OFF, ON)
    assert torch.equal(rmin, frozen[0]) and torch.equal(s, frozen[1])
    assert torch.equal(y, ops.fake_quantize(x * 10, s, z, -128, 127))


@pytest.mark.parametrize("fq_on", [True, False])
def test_gradient_is_clipped_ste_or_identity(fq_on):
    rmin, rmax, s, z = torch.tensor([-1.0]), torch.tensor([1.0]), torch.ones(1), torch.zeros(1, dtype=torch.int32)
    x = (torch.randn(200) * 3).requires_grad_()
    y = ops.fused_observe_fake_quantize(x, rmin, rmax, s, z, OFF, ON if fq_on else OFF, 0.01, True, -128, 127)
    y.sum().backward()
    if fq_on:
        q = torch.round(x.detach() / s) + z
        assert torch.equal(x.grad, ((q >= -128) & (q <= 127)).float())
    else:
        assert torch.equal(x.grad, torch.ones(200))
    assert rmin.grad_fn is None and s.grad_fn is None  # buffers never join the graph


def test_toggling_flags_does_not_recompile():
    class Act(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, t in zip(("rmin", "rmax", "scale", "zp"), buffers(), strict=True):
                self.register_buffer(name, t)
            self.register_buffer("obs_on", torch.tensor([1]))
            self.register_buffer("fq_on", torch.tensor([0]))

        def forward(self, x):
            return ops.fused_observe_fake_quantize(
                x, self.rmin, self.rmax, self.scale, self.zp, self.obs_on, self.fq_on, 0.1, True, 0, 255
            )

    compiles = []

    def backend(gm, example_inputs):
        compiles.append(1)
        return gm.forward

    m = Act()
    torch._dynamo.reset()
    c = torch.compile(m, backend=backend, fullgraph=True)
    x = torch.randn(16, 8)
    eager = Act()
    outs = []
    for obs, fq in [(1, 0), (1, 1), (0, 1), (0, 0)]:
        m.obs_on.fill_(obs)
        m.fq_on.fill_(fq)
        eager.obs_on.fill_(obs)
        eager.fq_on.fill_(fq)
        outs.append((c(x), eager(x)))
    assert len(compiles) == 1
    for a, b in outs:
        assert torch.equal(a, b)
    assert torch.equal(m.scale, eager.scale) and torch.equal(m.rmin, eager.rmin)


@pytest.mark.parametrize("axis", [None, 1])
def test_opcheck(axis):
    c = 1 if axis is None else 6
    x = torch.randn(5, 6).requires_grad_()
    args = (x, *buffers(c), ON, ON, 0.01, True, -128, 127, False, axis)
    torch.library.opcheck(torch.ops.qatkit.fused_observe_fake_quantize.default, args)
    upd = (x.detach(), *buffers(c), ON, 0.01, True, -128, 127, False, axis)
    torch.library.opcheck(torch.ops.qatkit._observer_update.default, upd)


@pytest.mark.parametrize(
    "change,exc,fragment",
    [
        ({"momentum": 1.5}, ValueError, "momentum must be in [0, 1], got 1.5"),
        ({"running_min": torch.zeros(2)}, ValueError, "running_min must have 1 elements (one per channel), got 2"),
        ({"scale": torch.ones(1, dtype=torch.float64)}, TypeError, "scale must be Float, got Double"),
        ({"zero_point": torch.zeros(1)}, TypeError, "zero_point must be Int, got Float"),
        ({"observer_on": torch.tensor([1.0])}, TypeError, "observer_on must be a bool or integer tensor"),
        ({"fake_quant_on": torch.tensor([1, 1])}, ValueError, "fake_quant_on must have 1 element, got 2"),
        ({"input": torch.ones(3, dtype=torch.int32)}, TypeError, "input must be float32"),
    ],
)
def test_bad_input(change, exc, fragment):
    rmin, rmax, s, z = buffers()
    kw = dict(
        input=torch.randn(3),
        running_min=rmin,
        running_max=rmax,
        scale=s,
        zero_point=z,
        observer_on=ON,
        fake_quant_on=ON,
        momentum=0.01,
    )
    kw.update(change)
    with pytest.raises(exc) as info:
        ops.fused_observe_fake_quantize(**kw)
    assert fragment in str(info.value)


@pytest.mark.parametrize("n", [0, 5, 8, 37])
def test_disabled_fake_quant_is_identity_with_full_mask(n):
    x = torch.randn(n) * 100
    bad_scale = torch.tensor([-1.0])  # never read when disabled (not initialized yet is fine)
    y, mask = torch.ops.qatkit._fake_quantize_with_mask(
        x, bad_scale, torch.zeros(1, dtype=torch.int32), 0, 255, None, None, OFF
    )
    assert torch.equal(y, x)
    bits = torch.stack([(mask >> k) & 1 for k in range(8)], dim=1).flatten()[:n] if n else torch.zeros(0)
    assert bool((bits == 1).all())
    if n % 8:
        assert int(mask[-1]) == (1 << (n % 8)) - 1  # no bits past the end
    y_on, _ = torch.ops.qatkit._fake_quantize_with_mask(
        x, torch.tensor([0.5]), torch.zeros(1, dtype=torch.int32), 0, 255, None, None, ON
    )
    assert torch.equal(y_on, ops.fake_quantize(x, torch.tensor([0.5]), torch.zeros(1, dtype=torch.int32), 0, 255))


def test_advance_step_counts_training_calls_but_not_a_recomputation_in_backward():
    """The stochastic quantizers' seed counter: +1 per call, the current value inside a backward
    pass (activation checkpointing recomputing the forward must draw the same bits)."""
    step = torch.zeros(1, dtype=torch.int64)
    assert int(torch.ops.qatkit._advance_step(step)) == 1 and int(step) == 1
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            seen.append(int(torch.ops.qatkit._advance_step(step)))
            return g

    Probe.apply(torch.ones(2, requires_grad=True)).sum().backward()
    assert seen == [1] and int(step) == 1
    torch.library.opcheck(torch.ops.qatkit._advance_step.default, (torch.zeros(1, dtype=torch.int64),))
    with pytest.raises(TypeError, match="step must be int64, got Int"):
        torch.ops.qatkit._advance_step(torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError, match="step must have 1 element, got 2"):
        torch.ops.qatkit._advance_step(torch.zeros(2, dtype=torch.int64))
