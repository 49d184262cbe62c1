"""pact_quantize (PACT, docs/papers.md §6.3): forward against the clip-then-quantize formula, the STE
gradients against their formulas and a detach-trick float64 reference, a finite-difference check
of alpha's gradient where it is a true derivative, opcheck, compile/export and bad input."""

import pytest
import torch

from qatkit import ops
from qatkit.testing.reference import fake_quantize_ref
from qatkit.testing.samples import DTYPES

SHAPES = [(), (0,), (7,), (33, 17), (2, 3, 40)]


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 3).to(dtype), torch.randn(shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("quant_max", [1, 3, 15, 255])
def test_forward_matches_formula(dtype, shape, quant_max):
    x, _ = _inputs(shape, dtype)
    alpha = torch.tensor([2.5])
    y = ops.pact_quantize(x, alpha, quant_max)
    s = alpha / quant_max  # float32, as the op computes it
    ref, _ = fake_quantize_ref(x, s, torch.zeros(1), 0, quant_max)
    assert torch.equal(y, ref)
    # and it is a clip to [0, alpha] followed by quantization with quant_max + 1 levels
    if x.numel():
        assert y.min() >= 0 and y.max() <= alpha.item() * (1 + 1e-6)
        assert torch.unique(y.float()).numel() <= quant_max + 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_formula_and_reference(dtype, shape):
    x, g = _inputs(shape, dtype, seed=1)
    xr = x.clone().requires_grad_()
    alpha = torch.tensor([1.7], requires_grad=True)
    ops.pact_quantize(xr, alpha, 7).backward(g)
    inside = (x >= 0) & (x < 1.7)
    assert torch.equal(xr.grad, torch.where(inside, g, torch.zeros_like(g)))
    expected = g.double()[x.double() >= 1.7].sum()
    torch.testing.assert_close(alpha.grad.double(), expected.reshape(1), rtol=1e-6, atol=1e-5)
    # float64 detach-trick reference: clip differentiable, rounding straight through
    x64 = x.double().requires_grad_()
    a64 = torch.tensor([1.7], dtype=torch.float64, requires_grad=True)
    clipped = torch.minimum(torch.relu(x64), a64[0])
    s = (a64[0] / 7).detach()
    y64 = clipped + (torch.round(clipped / s) * s - clipped).detach()
    y64.backward(g.double())
    torch.testing.assert_close(alpha.grad.double(), a64.grad, rtol=1e-6, atol=1e-5)


def test_alpha_gradient_is_the_true_derivative_in_the_clipped_region():
    x = torch.rand(500) * 3 + 4.0  # every element clipped at alpha = 2: y = alpha exactly
    h = 1e-2

    def f(a):
        return ops.pact_quantize(x, torch.tensor([a]), 15).double().sum().item()

    numeric = (f(2.0 + h) - f(2.0 - h)) / (2 * h)
    alpha = torch.tensor([2.0], requires_grad=True)
    ops.pact_quantize(x, alpha, 15).sum().backward()
    assert alpha.grad.item() == pytest.approx(numeric, rel=1e-4)
    assert alpha.grad.item() == 500


@pytest.mark.parametrize("shape", [(7,), (3, 16), (0, 4)])
def test_opcheck(shape):
    x = (torch.randn(shape) * 3).requires_grad_()
    alpha = torch.tensor([2.0], requires_grad=True)
    torch.library.opcheck(torch.ops.qatkit.pact_quantize.default, (x, alpha, 15))
    torch.library.opcheck(
        torch.ops.qatkit._pact_quantize_backward.default, (torch.randn(shape), x.detach(), alpha.detach())
    )


def test_compile_and_export():
    class Act(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.alpha = torch.nn.Parameter(torch.tensor([3.0]))

        def forward(self, x):
            return ops.pact_quantize(x, self.alpha, 15)

    m = Act()
    x = torch.randn(4, 8) * 4
    torch._dynamo.reset()
    c = torch.compile(m, backend="aot_eager", fullgraph=True)
    y = c(x)
    y.sum().backward()
    g_compiled = m.alpha.grad.clone()
    m.alpha.grad = None
    m(x).sum().backward()
    assert torch.equal(y, m(x)) and torch.equal(g_compiled, m.alpha.grad)
    ep = torch.export.export(m, (x,))
    assert torch.equal(ep.module()(x), m(x))


@pytest.mark.parametrize(
    "args,exc,fragment",
    [
        (
            (torch.randn(4), torch.tensor([0.0]), 15),
            ValueError,
            "pact_quantize: alpha must be positive and finite, got 0",
        ),
        ((torch.randn(4), torch.tensor([float("nan")]), 15), ValueError, "alpha must be positive and finite"),
        ((torch.randn(4), torch.tensor([1.0, 2.0]), 15), ValueError, "alpha must have 1 element"),
        ((torch.randn(4), torch.tensor([1.0]), 0), ValueError, "quant_max must be in [1, 65535], got 0"),
        ((torch.randn(4).int(), torch.tensor([1.0]), 15), TypeError, "input must be float32"),
        ((torch.randn(4), torch.tensor([1.0], dtype=torch.float64), 15), TypeError, "alpha must be float32"),
    ],
)
def test_bad_input(args, exc, fragment):
    with pytest.raises(exc) as info:
        ops.pact_quantize(*args)
    assert fragment in str(info.value)


def test_backward_bad_input():
    with pytest.raises(ValueError, match="grad must have input's shape"):
        torch.ops.qatkit._pact_quantize_backward(torch.ones(3), torch.ones(4), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="alpha must be positive"):
        torch.ops.qatkit._pact_quantize_backward(torch.ones(4), torch.ones(4), torch.tensor([-1.0]))
