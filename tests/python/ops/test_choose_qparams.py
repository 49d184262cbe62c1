"""choose_qparams: against torch.ao's observers (an independent implementation) and the formulas,
every granularity, opcheck, compile/export, and its use with fake_quantize."""

import pytest
import torch
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from qatkit import ops
from qatkit.testing.reference import choose_qparams_ref


@pytest.mark.parametrize(
    "dtype,qscheme,qmin,qmax",
    [
        (torch.qint8, torch.per_tensor_symmetric, -128, 127),
        (torch.qint8, torch.per_tensor_affine, -128, 127),
        (torch.quint8, torch.per_tensor_affine, 0, 255),
        (torch.quint8, torch.per_tensor_symmetric, 0, 255),
    ],
)
def test_per_tensor_equals_torch_ao_observer(dtype, qscheme, qmin, qmax):
    x = torch.randn(64, 33) * 3 + 0.5
    obs = MinMaxObserver(dtype=dtype, qscheme=qscheme)
    obs(x)
    s_ref, z_ref = obs.calculate_qparams()
    s, z = ops.choose_qparams(x, qmin, qmax, symmetric=qscheme == torch.per_tensor_symmetric)
    assert s.dtype == torch.float32 and z.dtype == torch.int32 and s.shape == (1,)
    assert torch.equal(s, s_ref.float())
    assert torch.equal(z, z_ref.to(torch.int32))


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_equals_torch_ao_observer(axis, symmetric):
    x = torch.randn(8, 12, 5) * torch.linspace(0.1, 4, 12).reshape(1, 12, 1)
    obs = PerChannelMinMaxObserver(
        ch_axis=axis % 3,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric if symmetric else torch.per_channel_affine,
    )
    obs(x)
    s_ref, z_ref = obs.calculate_qparams()
    s, z = ops.choose_qparams(x, -128, 127, symmetric, axis=axis)
    assert torch.equal(s, s_ref.float())
    assert torch.equal(z, z_ref.to(torch.int32))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("qmin,qmax", [(-8, 7), (0, 15), (-2, 1), (0, 65535)])
def test_per_group_matches_formula(symmetric, qmin, qmax):
    x = torch.randn(3, 4, 64) * 2 - 0.3
    s, z = ops.choose_qparams(x, qmin, qmax, symmetric, group_size=16)
    assert s.shape == (3, 4, 4) and z.shape == (3, 4, 4)
    s_ref, z_ref = choose_qparams_ref(x.reshape(-1, 16), qmin, qmax, symmetric)
    assert torch.equal(s.reshape(-1), s_ref) and torch.equal(z.reshape(-1), z_ref)


def test_zero_is_exactly_representable_and_eps_floor():
    x = torch.tensor([0.3, 0.7, 1.1])  # all positive: the range is widened to include 0
    s, z = ops.choose_qparams(x, 0, 255, symmetric=False)
    assert z.item() == 0
    y = ops.fake_quantize(torch.zeros(3), s, z, 0, 255)
    assert torch.equal(y, torch.zeros(3))
    s0, z0 = ops.choose_qparams(torch.zeros(10), -128, 127, symmetric=True)
    assert s0.item() == torch.finfo(torch.float32).eps and z0.item() == 0


def test_per_token_qparams_and_fake_quant_roundtrip():
    x = torch.randn(2, 5, 32)
    s, z = ops.choose_qparams(x, -128, 127, symmetric=True, group_size=32)
    assert s.shape == (2, 5, 1)
    y = ops.fake_quantize(x, s, z, -128, 127, group_size=32)
    # symmetric per-token int8: error at most half a step except at the clipped maximum
    assert ((y - x).abs() <= s * 1.0001).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_and_double_inputs(dtype):
    x = (torch.randn(16, 8) * 2).to(dtype)
    s, z = ops.choose_qparams(x, -8, 7, False, axis=0)
    s_ref, z_ref = choose_qparams_ref(x, -8, 7, False)
    assert torch.equal(s, s_ref) and torch.equal(z, z_ref)


def test_empty_inputs():
    s, z = ops.choose_qparams(torch.empty(4, 0), -8, 7, True, axis=0)
    assert s.shape == (4,) and torch.all(s == torch.finfo(torch.float32).eps)
    s, z = ops.choose_qparams(torch.empty(0, 8), -8, 7, True, group_size=4)
    assert s.shape == (0, 2)


def test_outputs_never_require_grad():
    x = torch.randn(4, 4, requires_grad=True)
    s, z = ops.choose_qparams(x, -8, 7, True)
    assert not s.requires_grad and not z.requires_grad


@pytest.mark.parametrize(
    "shape,kw",
    [((7,), {}), ((4, 6), {"axis": 1}), ((3, 8), {"group_size": 4}), ((2, 3, 4), {"axis": -3}), ((5, 0), {})],
)
def test_opcheck(shape, kw):
    x = torch.randn(shape)
    args = (x, -128, 127, bool(len(shape) % 2), kw.get("axis"), kw.get("group_size"))
    torch.library.opcheck(torch.ops.qatkit.choose_qparams.default, args)


def test_compile_and_export_dynamic_qparams():
    class DynQuant(torch.nn.Module):
        def forward(self, x):
            s, z = ops.choose_qparams(x, -128, 127, symmetric=False, group_size=x.shape[-1])
            return ops.fake_quantize(x, s, z, -128, 127, group_size=x.shape[-1])

    m = DynQuant()
    x = torch.randn(6, 16)
    torch._dynamo.reset()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), m(x))
    ep = torch.export.export(m, (x,))
    assert torch.equal(ep.module()(x), m(x))
