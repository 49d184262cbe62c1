"""Quantizers chosen from the spec through a registry, typed granularity, the Observer interface
(against torch.ao's observers), and stored weight qparams."""

import copy
import warnings

import pytest
import torch
from torch import nn

import qatkit
from qatkit import ops
from qatkit.qat import QuantLinear, config as cfg
from qatkit.qat import quantizers as qz
from qatkit.qat.config import PerAxis, PerGroup, PerTensor, PerToken, QuantSpec

EXPECTED = {
    # preset: (weight quantizer class, activation quantizer class or None)
    "w8a8": (qz.AffineStaticWeightQuantizer, qz.AffineStaticActQuantizer),
    "w4a8": (qz.AffineStaticWeightQuantizer, qz.AffineStaticActQuantizer),
    "w4a4_lsq": (qz.AffineLearnedWeightQuantizer, qz.AffineLearnedActQuantizer),
    "ternary_twn": (qz.TernaryWeightQuantizer, qz.AffineStaticActQuantizer),
    "bitnet_b158": (qz.TernaryWeightQuantizer, qz.AffineDynamicActQuantizer),
    "binary_w1a8": (qz.BinaryWeightQuantizer, qz.AffineStaticActQuantizer),
    "xnor_w1a1": (qz.BinaryWeightQuantizer, qz.BinaryActQuantizer),
    "binaryconnect": (qz.BinaryWeightQuantizer, None),
    "int8_weight_only": (qz.AffineStaticWeightQuantizer, None),
    "int4_weight_only": (qz.AffineStaticWeightQuantizer, None),
    "ternary_weight_only": (qz.TernaryWeightQuantizer, None),
    "binary_weight_only": (qz.BinaryWeightQuantizer, None),
}


def test_every_preset_is_covered():
    assert set(EXPECTED) == set(cfg.PRESETS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_registry_picks_the_class_of_the_spec(name):
    spec = cfg.preset(name).default
    w_cls, a_cls = EXPECTED[name]
    w = qz.WeightFakeQuantizer(spec.weight, torch.randn(8, 64))
    assert type(w) is w_cls and isinstance(w, qz.WeightFakeQuantizer)
    assert type(qz.WeightFakeQuantizer.from_spec(spec.weight, torch.randn(8, 64))) is w_cls
    if a_cls is not None:
        a = qz.ActFakeQuantizer(spec.activation, 64)
        assert type(a) is a_cls and isinstance(a, qz.ActFakeQuantizer)
        assert type(qz.ActFakeQuantizer.from_spec(spec.activation, 64)) is a_cls
    # a deep copy keeps the class (the factory only chooses when called with a spec)
    assert type(copy.deepcopy(w)) is w_cls


def test_a_registered_class_replaces_the_default_for_its_kind():
    calls = []

    class Traced(qz.BinaryWeightQuantizer):
        def quantize(self, w):
            calls.append(w.shape)
            return super().quantize(w)

    saved = qz.WeightFakeQuantizer._registry["binary"]
    try:
        qz.WeightFakeQuantizer.register("binary")(Traced)
        q = QuantLinear.from_float(nn.Linear(16, 4), cfg.binary_w1a8().default)
        assert type(q.weight_fake_quant) is Traced
        q(torch.randn(2, 16))
        assert calls == [torch.Size([4, 16])]
    finally:
        qz.WeightFakeQuantizer._registry["binary"] = saved
    with pytest.raises(TypeError, match="must subclass WeightFakeQuantizer"):
        qz.WeightFakeQuantizer.register("binary")(qz.BinaryActQuantizer)


def test_an_unregistered_kind_names_the_registered_ones():
    saved = qz.ActFakeQuantizer._registry.pop("binary")
    try:
        with pytest.raises(ValueError, match=r"no activation quantizer for .*kind 'binary'.*registered: affine_"):
            qz.ActFakeQuantizer(cfg.xnor_w1a1().default.activation, 4)
    finally:
        qz.ActFakeQuantizer._registry["binary"] = saved


@pytest.mark.parametrize(
    "spec,layout,args",
    [
        (QuantSpec(), PerTensor(), {"axis": None, "group_size": None}),
        (QuantSpec(granularity="per_channel", axis=1), PerAxis(1), {"axis": 1, "group_size": None}),
        (QuantSpec(granularity="per_group", group_size=16), PerGroup(16), {"axis": None, "group_size": 16}),
        (QuantSpec(granularity="per_token", scale="dynamic"), PerToken(), None),
    ],
)
def test_typed_granularity(spec, layout, args):
    assert spec.layout == layout
    if args is None:
        with pytest.raises(ValueError, match="per-token scales come from quantize_per_token"):
            spec.layout.op_args()
    else:
        assert spec.layout.op_args() == args


def test_weight_layout_reports_the_per_group_fallback_as_a_type():
    spec = cfg.w4a8(32).default.weight
    assert qz.WeightFakeQuantizer(spec, torch.randn(8, 64)).layout == PerGroup(32)
    fell = qz.WeightFakeQuantizer(spec, torch.randn(8, 3, 3, 3))  # 27 inputs: not a multiple of 32
    assert fell.layout == PerAxis(0) and fell.fell_back


# ---------------------------------------------------------------- observers vs torch.ao


def _ao_observer(spec, axis):
    from torch.ao.quantization import observer as ao

    qscheme = {
        (False, True): torch.per_tensor_symmetric,
        (False, False): torch.per_tensor_affine,
        (True, True): torch.per_channel_symmetric,
        (True, False): torch.per_channel_affine,
    }[(axis is not None, spec.symmetric)]
    dtype = torch.qint8 if spec.signed else torch.quint8
    kw = dict(dtype=dtype, qscheme=qscheme, quant_min=spec.quant_min, quant_max=spec.quant_max)
    if axis is not None:
        if spec.observer == "moving_average":
            return ao.MovingAveragePerChannelMinMaxObserver(ch_axis=axis, averaging_constant=spec.momentum, **kw)
        return ao.PerChannelMinMaxObserver(ch_axis=axis, **kw)
    if spec.observer == "moving_average":
        return ao.MovingAverageMinMaxObserver(averaging_constant=spec.momentum, **kw)
    return ao.MinMaxObserver(**kw)


@pytest.mark.parametrize("observer", ["minmax", "moving_average"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, 1])
def test_observers_match_torch_ao(observer, symmetric, axis):
    spec = QuantSpec(
        bits=8,
        signed=symmetric,
        symmetric=symmetric,
        observer=observer,
        momentum=0.1,
        granularity="per_channel" if axis is not None else "per_tensor",
        axis=axis or 0,
    )
    ours = qz.OBSERVERS[observer](spec, channels=6, axis=axis)
    assert isinstance(ours, qz.Observer) and not ours.has_observed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao is deprecated
        ref = _ao_observer(spec, axis)
    g = torch.Generator().manual_seed(3)
    for step in range(4):
        x = torch.randn(5, 6, 7, generator=g) * (1 + step) + step * 0.3
        ours(x)  # forward: observe, return x unchanged
        ref(x)
    assert ours.has_observed
    s, z = ours.calculate_qparams()
    rs, rz = ref.calculate_qparams()
    torch.testing.assert_close(s, rs.float().reshape(s.shape), rtol=1e-6, atol=0)
    assert torch.equal(z, rz.to(torch.int32).reshape(z.shape))
    torch.testing.assert_close(ours.running_min, ref.min_val.reshape(-1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.running_max, ref.max_val.reshape(-1), rtol=1e-6, atol=1e-7)


def test_a_new_observer_works_behind_the_interface():
    class FixedRange(qz.Observer):
        """qparams of a fixed [-4, 4] range (what a calibrated clipping observer would hold)."""

        def __init__(self, spec, channels=1, axis=None):
            super().__init__(spec, channels, axis)
            self.register_buffer("seen", torch.zeros(1, dtype=torch.int64))

        @property
        def has_observed(self):
            return bool(self.seen.item())

        def observe(self, x):
            self.seen.add_(1)
            s, z = ops.choose_qparams(torch.tensor([-4.0, 4.0]), self.spec.quant_min, self.spec.quant_max, True)
            self.scale.copy_(s)
            self.zero_point.copy_(z)

    spec = cfg.w8a8().default.activation
    q = qz.ActFakeQuantizer(spec, 1)
    q.observer = FixedRange(spec)
    q.train()
    x = torch.linspace(-6, 6, 13)
    y = q(x)
    assert q.has_observed and q.observer.seen.item() == 1
    s, z = q.frozen_qparams()
    assert torch.equal(y, ops.fake_quantize(x, s, z, spec.quant_min, spec.quant_max))
    assert y.max().item() == pytest.approx(4.0, abs=float(s) / 2)  # clipped at the fixed range
    q.eval()
    q(x)
    assert q.observer.seen.item() == 1  # no observation in eval mode
    with pytest.raises(TypeError, match="is not an Observer subclass"):
        qz.register_observer("bad")(nn.Identity)


def test_checkpoints_from_before_observer_submodules_load():
    spec = cfg.w8a8().default.activation
    q = qz.ActFakeQuantizer(spec, 1)
    q.train()
    q(torch.randn(64))
    old_style = {k.replace("observer.", ""): v for k, v in q.state_dict().items()}
    assert "running_min" in old_style
    fresh = qz.ActFakeQuantizer(spec, 1)
    fresh.load_state_dict(old_style)
    for name in ("running_min", "running_max", "scale", "zero_point"):
        assert torch.equal(getattr(fresh, name), getattr(q, name))


# ---------------------------------------------------------------- stored weight qparams


def test_stored_weight_qparams_stay_fixed_through_training_checkpoints_and_convert():
    torch.manual_seed(0)
    q = QuantLinear.from_float(nn.Linear(64, 8), cfg.w4a8(16).default)
    wfq = q.weight_fake_quant
    assert isinstance(wfq, qz.AffineStaticWeightQuantizer) and not wfq.has_stored_qparams
    w0 = q.weight.detach().clone()
    wfq.store_qparams(w0)
    s0, z0 = wfq.qparams(w0)
    assert torch.equal(q.quantized_weight(), ops.fake_quantize(w0, *wfq.computed_qparams(w0), -8, 7, group_size=16))
    with torch.no_grad():
        q.weight.mul_(3.0)  # a training step moves the weight; stored qparams do not follow
    s1, z1 = wfq.qparams(q.weight)
    assert torch.equal(s1, s0) and torch.equal(z1, z0)
    assert not torch.equal(s1, wfq.computed_qparams(q.weight)[0])
    expected = ops.fake_quantize(q.weight.detach(), s0, z0, -8, 7, group_size=16)
    assert torch.equal(q.quantized_weight(), expected)
    # checkpoint: a fresh layer loads the stored qparams
    q2 = QuantLinear.from_float(nn.Linear(64, 8), cfg.w4a8(16).default)
    q2.load_state_dict(q.state_dict())
    assert q2.weight_fake_quant.has_stored_qparams
    assert torch.equal(q2.quantized_weight(), expected)
    # convert keeps them: the integer layer computes what the QAT layer (stored qparams) computes
    model = nn.Sequential(q)
    model.train()
    model(torch.randn(16, 64))  # the input observer sees data
    model.eval()
    x = torch.randn(3, 64)
    with torch.no_grad():
        ref = model(x)
    converted = qatkit.convert(model)
    assert torch.equal(converted[0](x), ref)  # convert is bit for bit with the QAT eval forward
    assert torch.equal(q.quantized_weight(), expected)
    wfq.recompute_qparams()
    assert not wfq.has_stored_qparams
    assert torch.equal(wfq.qparams(q.weight)[0], wfq.computed_qparams(q.weight)[0])


def test_store_qparams_rejects_bad_qparams():
    wfq = qz.WeightFakeQuantizer(cfg.w8a8().default.weight, torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"must have shape \(4,\)"):
        wfq.store_qparams(scale=torch.ones(3), zero_point=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="scale must be positive, finite"):
        wfq.store_qparams(scale=torch.tensor([1.0, 0.0, 1.0, 1.0]), zero_point=torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="zero_point must be an integer in"):
        wfq.store_qparams(scale=torch.ones(4), zero_point=torch.tensor([0, 0, 300, 0]))
    with pytest.raises(ValueError, match="give both scale and zero_point"):
        wfq.store_qparams(scale=torch.ones(4))
    with pytest.raises(ValueError, match="give the weight, or both"):
        wfq.store_qparams()
    assert not wfq.has_stored_qparams


def test_replace_module_by_qualified_name():
    from qatkit.qat import replace_module

    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    old = replace_module(model, "1.1", nn.Identity())
    assert isinstance(old, nn.Linear) and isinstance(model[1][1], nn.Identity)
    with pytest.raises(ValueError, match="has no submodule '1.7'"):
        replace_module(model, "1.7", nn.Identity())
    with pytest.raises(ValueError, match="name must name a submodule"):
        replace_module(model, "", nn.Identity())
    with pytest.raises(TypeError, match="new must be an nn.Module, got int"):
        replace_module(model, "0", 3)
