"""Hardening (issue 10): classes of silent or confusing behaviour, one test per class."""

import copy
import dataclasses
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import qatkit
from qatkit import ops
from qatkit.qat.config import QATConfig, QuantSpec


# ---------------------------------------------------------------- typed spec fields


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"signed": "no"}, "QuantSpec.signed must be a bool, got str 'no'"),
        ({"symmetric": 1}, "QuantSpec.symmetric must be a bool, got int 1"),
        ({"stochastic": None}, "QuantSpec.stochastic must be a bool"),
        ({"momentum": "0.1"}, "QuantSpec.momentum must be a float, got str '0.1'"),
        ({"momentum": True}, "QuantSpec.momentum must be a float, got bool True"),
        ({"axis": "1"}, "QuantSpec.axis must be an int, got str '1'"),
        ({"axis": 1.0}, "QuantSpec.axis must be an int, got float 1.0"),
        ({"granularity": "per_group", "group_size": True}, "QuantSpec.group_size must be an int or None, got bool"),
        ({"bits": True}, "QuantSpec.bits must be an int, got bool True"),
        ({"latent_clip": "1"}, "QuantSpec.latent_clip must be a float or None, got str"),
        ({"kind": 3}, "QuantSpec.kind must be a str, got int 3"),
        ({"kind": "binary", "method": 1}, "QuantSpec.method must be a str or None, got int 1"),
    ],
)
def test_spec_fields_of_the_wrong_type_raise_naming_the_field(fields, message):
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        QuantSpec(**fields)


def test_numpy_numbers_are_accepted_and_normalized():
    s = QuantSpec(bits=np.int64(4), momentum=np.float32(0.25), granularity="per_group", group_size=np.int32(8))
    assert (type(s.bits), type(s.momentum), type(s.group_size)) == (int, float, int)
    assert s == QuantSpec(bits=4, momentum=0.25, granularity="per_group", group_size=8)


# ---------------------------------------------------------------- flags mean non-zero


@pytest.mark.parametrize("value", [1, 2, 255, 256, -1, 1 << 40])
def test_flags_mean_non_zero(value):
    x = torch.linspace(-3, 3, 101) * 10
    rmin, rmax = torch.full((1,), float("inf")), torch.full((1,), float("-inf"))
    s, z = torch.ones(1), torch.zeros(1, dtype=torch.int32)
    flag = torch.tensor([value])
    y = ops.fused_observe_fake_quantize(x, rmin, rmax, s, z, flag, flag, 0.01, True, -128, 127, False)
    assert torch.isfinite(rmin).all()  # observed
    assert torch.equal(y, ops.fake_quantize(x, s, z, -128, 127))  # and fake-quantized with the new qparams
    off = torch.tensor([0])
    y0 = ops.fused_observe_fake_quantize(x, rmin, rmax, s, z, off, off, 0.01, True, -128, 127, False)
    assert torch.equal(y0, x)


# ---------------------------------------------------------------- errors name the caller's argument


def test_learned_ops_name_the_argument_the_caller_passed():
    x = torch.randn(16)
    with pytest.raises(ValueError, match="fake_quantize_learnable: scale must be finite, got nan at index 1"):
        ops.fake_quantize_learnable(x.reshape(2, 8), torch.tensor([0.1, float("nan")]), torch.zeros(2), -8, 7, axis=0)
    with pytest.raises(ValueError, match="fake_quantize_learnable: zero_point must be finite, got inf at index 0"):
        ops.fake_quantize_learnable(x, torch.tensor([0.1]), torch.tensor([float("inf")]), -8, 7)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="fake_quantize_learnable: grad_factor must be finite"):
            ops.fake_quantize_learnable(x, torch.tensor([0.1]), torch.zeros(1), -8, 7, grad_factor=bad)
    with pytest.raises(ValueError, match=r"pact_quantize: alpha / quant_max must be at least .* got alpha=1e-40"):
        ops.pact_quantize(x, torch.tensor([1e-40]), 15)
    with pytest.raises(ValueError, match="pact_quantize: alpha must be positive and finite"):
        ops.pact_quantize(x, torch.tensor([float("nan")]), 15)


# ---------------------------------------------------------------- prepare_qat / calibrate hygiene


def _mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def test_prepare_inplace_leaves_the_model_untouched_when_it_raises():
    from qatkit.qat.config import LayerSpec

    model = _mlp()
    before = [type(m) for m in model]
    bad = LayerSpec(weight=QuantSpec(scale="dynamic"))  # weights cannot take dynamic scales
    cfg = QATConfig(default=qatkit.w8a8().default, overrides=(("4", bad),))
    with pytest.raises(ValueError, match="'dynamic' is for activations"):
        qatkit.prepare_qat(model, cfg, inplace=True)
    assert [type(m) for m in model] == before  # layers 0 and 2 were not swapped before the failure


def test_a_rule_that_skips_every_layer_is_named_with_the_way_out():
    two = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"skipped by the config \(first_last: 0, 2\).*first_last=None"):
        qatkit.prepare_qat(two, qatkit.bitnet_b158())
    with pytest.raises(ValueError, match=r"\(skip '\*': 0, 2\); nothing to quantize"):
        qatkit.prepare_qat(two, QATConfig(default=qatkit.w8a8().default, skip=("*",)))


def test_first_last_int8_on_every_layer_warns():
    two = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match=r"first_last='int8' rule gives every quantized layer \(0, 2\) W8A8"):
        q = qatkit.prepare_qat(two, qatkit.binary_w1a8())
    assert [r["rule"] for r in q.qat_report] == ["first_last", "first_last"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qatkit.prepare_qat(_mlp(), qatkit.binary_w1a8())  # 3 layers: the middle one is binary, no warning


def test_calibrate_restores_every_module_mode_also_when_it_raises():
    q = qatkit.prepare_qat(_mlp(), qatkit.w8a8())
    q.train()
    q[2].eval()  # a mixed state (e.g. a frozen block) must come back as it was
    modes = [m.training for m in q.modules()]
    qatkit.qat.calibrate(q, [torch.randn(4, 8)])
    assert [m.training for m in q.modules()] == modes

    def boom(model, batch):
        raise RuntimeError("data loader failed")

    with pytest.raises(RuntimeError, match="data loader failed"):
        qatkit.qat.calibrate(q, [torch.randn(4, 8)], forward=boom)
    assert [m.training for m in q.modules()] == modes


def test_calibrate_raises_naming_layers_that_observed_nothing():
    q = qatkit.prepare_qat(_mlp(), qatkit.w8a8())

    def encode(model, batch):  # what sentence-transformers' encode() does: eval mode, then forward
        model.eval()
        return model(batch)

    with pytest.raises(ValueError, match=r"3 activation quantizer\(s\) observed nothing: 0.input_fake_quant, 2.input"):
        qatkit.qat.calibrate(q, [torch.randn(4, 8)], forward=encode)
    with pytest.raises(ValueError, match="observed nothing"):
        qatkit.qat.calibrate(q, [])  # no batches at all


def test_calibrate_says_when_observers_are_switched_off():
    """After disable_observer (QAT recipes freeze the observers late in training), calibrate ran
    the batches and changed no range, without a word. Every observer off: ValueError; some off: a
    warning naming them, while the others calibrate."""
    q = qatkit.prepare_qat(_mlp(), qatkit.w8a8())
    q(torch.randn(4, 8))
    qatkit.qat.disable_observer(q)
    before = {k: v.clone() for k, v in q.state_dict().items() if "running_" in k}
    with pytest.raises(ValueError, match=r"every activation observer is switched off \(3: 0.input_fake_quant"):
        qatkit.qat.calibrate(q, [torch.randn(4, 8) * 10])
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in before.items())
    q[0].input_fake_quant.enable_observer(True)
    with pytest.warns(UserWarning, match=r"2 activation quantizer\(s\) have their observer switched off and kept their "
                                         r"ranges: 2.input_fake_quant, 4.input_fake_quant"):
        qatkit.qat.calibrate(q, [torch.randn(4, 8) * 10])
    after = q.state_dict()
    assert not torch.equal(after["0.input_fake_quant.observer.running_max"], before["0.input_fake_quant.observer.running_max"])
    assert torch.equal(after["2.input_fake_quant.observer.running_max"], before["2.input_fake_quant.observer.running_max"])
    qatkit.qat.enable_observer(q)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        qatkit.qat.calibrate(q, [torch.randn(4, 8)])


def test_out_aliasing_a_qparam_is_refused_before_anything_is_resized():
    x = torch.randn(4, 8)
    for name in ("scale", "zero_point"):
        s, z = torch.tensor([0.1]), torch.zeros(1)
        alias = s if name == "scale" else z
        with pytest.raises(ValueError, match=f"fake_quantize.out: out must not share memory with {name}"):
            torch.ops.qatkit.fake_quantize.out(x, s, z, -8, 7, out=alias)
        assert s.shape == (1,) and z.shape == (1,) and s.item() == pytest.approx(0.1) and z.item() == 0


# ---------------------------------------------------------------- observers and non-finite data


@pytest.mark.parametrize(
    "batch,detail",
    [
        (torch.tensor([[1.0, float("nan")], [0.5, 0.25]]), "min=nan"),
        (torch.tensor([[1.0, float("inf")], [0.5, 0.25]]), "max=inf"),
        (torch.tensor([[3e38, -3e38], [0.5, 0.25]]), "a range wider than float32"),
    ],
)
@pytest.mark.parametrize("observer", ["moving_average", "minmax"])
def test_a_non_finite_batch_raises_naming_the_layer_and_leaves_the_observer_unchanged(batch, detail, observer):
    from qatkit.qat.config import LayerSpec

    spec = LayerSpec(qatkit.w8a8().default.weight, QuantSpec(bits=8, symmetric=False, observer=observer))
    q = qatkit.prepare_qat(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)), QATConfig(default=spec))
    q.train()
    q(torch.randn(8, 2))
    obs = q[0].input_fake_quant
    state = {k: v.clone() for k, v in obs.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match=rf"'0.input_fake_quant': _observer_update: .*{detail}.*state is unchanged"):
        q(batch)
    for k, v in obs.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, state[k]), k
    q(torch.randn(8, 2))  # later finite batches observe as before
    assert torch.isfinite(obs.scale).all()


def test_per_channel_observers_name_the_channel():
    rmin, rmax = torch.full((3,), float("inf")), torch.full((3,), float("-inf"))
    s, z, on = torch.ones(3), torch.zeros(3, dtype=torch.int32), torch.tensor([1])
    x = torch.randn(4, 3)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="channel 1: min=nan"):
        ops.observer_update(x, rmin, rmax, s, z, on, 0.01, True, -128, 127, False, 1)
    assert torch.isinf(rmin).all()
    ops.observer_update(x, rmin, rmax, s, z, torch.tensor([0]), 0.01, True, -128, 127, False, 1)  # off: no check


def test_learned_ranges_refuse_a_non_finite_first_batch():
    q = qatkit.prepare_qat(_mlp(), qatkit.w4a4_lsq())
    q.train()
    bad = torch.randn(4, 8)
    bad[0, 0] = float("nan")
    aq = q[2].input_fake_quant
    before = aq.scale.detach().clone()
    with pytest.raises(ValueError, match="'2.input_fake_quant': the first batch, which initializes the learned step"):
        aq(bad.repeat(1, 2))
    assert not aq.has_observed and torch.equal(aq.scale.detach(), before)


@pytest.mark.parametrize("preset", ["w8a8", "int8_weight_only", "ternary_twn", "bitnet_b158"])
def test_a_non_finite_weight_raises_naming_its_quantizer(preset):
    """The weight quantizers' ops refuse a NaN / Inf weight (choose_qparams, ternarize); the error
    names the quantizer, as the activation observers' do (the op cannot know the layer)."""
    q = qatkit.prepare_qat(_mlp(), qatkit.preset(preset))
    with torch.no_grad():
        q[2].weight[1, 3] = float("inf")
    with pytest.raises(ValueError, match=r"^'2\.weight_fake_quant': \w+: input must be finite"):
        q(torch.randn(4, 8))


@pytest.mark.parametrize("preset,param,value,match", [
    ("binary_weight_only", "weight", "nan", "the weight of layer '2' holds NaN"),
    ("binaryconnect", "weight", "nan", "the weight of layer '2' holds NaN"),
    ("binary_weight_only", "weight", "inf", "the weight of layer '2' holds Inf, so its binary scale"),
    ("w4a4_lsq", "weight", "nan", "the weight of layer '2' holds NaN"),
    ("w8a8", "bias", "nan", "the bias of layer '2' holds NaN"),
])
def test_convert_refuses_a_weight_no_code_stands_for(preset, param, value, match):
    """A NaN weight (or bias) makes the QAT layer's output NaN, but its codes were numbers (binary
    codes 0, quantize_affine's zero point): the converted model answered where the QAT model gave
    NaN. An Inf binary weight made the scale mean|w| infinite (then 1). convert now refuses both,
    naming the layer, before converting anything."""
    cfg = dataclasses.replace(qatkit.preset(preset), first_last=None)
    q = qatkit.prepare_qat(_mlp(), cfg)
    if any(getattr(m, "input_fake_quant", None) is not None for m in q.modules()):
        qatkit.qat.calibrate(q, [torch.randn(8, 8)])
    with torch.no_grad():
        getattr(q[2], param).view(-1)[1] = float(value)
    with pytest.raises(ValueError, match=re.escape(match)):
        qatkit.convert(q)


def test_an_inf_weight_under_a_learned_scale_converts_to_what_the_qat_layer_computes():
    """LSQ's fixed step saturates an Inf weight to the end code: the QAT layer's output is finite and
    the converted layer gives the same bits (convert does not refuse it)."""
    q = qatkit.prepare_qat(_mlp(), dataclasses.replace(qatkit.w4a4_lsq(), first_last=None))
    qatkit.qat.calibrate(q, [torch.randn(8, 8)])
    with torch.no_grad():
        q[2].weight[1, 3] = float("inf")
    x = torch.randn(4, 8)
    with torch.no_grad():
        want = q.eval()(x)
    assert bool(want.isfinite().all())
    assert torch.equal(qatkit.convert(q)(x), want)


def test_an_eval_forward_before_any_observation_warns_once_naming_the_layer():
    q = qatkit.prepare_qat(_mlp(), qatkit.w8a8())
    q.eval()
    with pytest.warns(UserWarning, match=r"'0.input_fake_quant' runs before observing any data"):
        q(torch.randn(2, 8))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q(torch.randn(2, 8))  # once per quantizer
        q2 = qatkit.prepare_qat(_mlp(), qatkit.w8a8())
        q2.train()
        q2(torch.randn(2, 8))
        q2.eval()
        q2(torch.randn(2, 8))  # observed: no warning
        q3 = qatkit.prepare_qat(_mlp(), qatkit.w8a8())
        q3.load_state_dict(q2.state_dict())
        q3.eval()
        q3(torch.randn(2, 8))  # a loaded, observed state: no warning


# ---------------------------------------------------------------- odd module trees


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        shared = nn.Linear(8, 8)
        self.enc, self.alias = shared, shared  # one layer, two names; forward uses the alias
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.mid(self.alias(x)))


def test_a_layer_registered_under_two_names_is_swapped_under_both():
    q = qatkit.prepare_qat(_Tied(), qatkit.w8a8())
    assert isinstance(q.alias, qatkit.qat.QuantLinear) and q.alias is q.enc
    q.train()
    q(torch.randn(16, 8))
    assert q.alias.input_fake_quant.has_observed  # the alias the forward uses is the quantized one
    c = qatkit.convert(q)
    assert isinstance(c.alias, qatkit.qat.QuantizedLinear) and c.alias is c.enc
    q.eval()
    x = torch.randn(3, 8)
    assert torch.equal(c(x), q(x))


def test_a_bare_layer_as_the_model_is_returned_swapped():
    q = qatkit.prepare_qat(nn.Linear(8, 4), qatkit.w8a8())
    assert isinstance(q, qatkit.qat.QuantLinear) and q.input_fake_quant.qualified_name == "Linear.input_fake_quant"
    assert dict(q.named_children()).keys() == {"weight_fake_quant", "input_fake_quant"}
    q.train()
    q(torch.randn(16, 8))
    c = qatkit.convert(q)
    assert isinstance(c, qatkit.qat.QuantizedLinear)
    q.eval()
    x = torch.randn(2, 8)
    assert torch.equal(c(x), q(x))
    with pytest.raises(ValueError, match="bare Linear, which cannot be swapped in place"):
        qatkit.prepare_qat(nn.Linear(8, 4), qatkit.w8a8(), inplace=True)
    with pytest.raises(ValueError, match="bare QuantLinear, which cannot be replaced in place"):
        qatkit.convert(q, inplace=True)


def test_layers_that_cannot_be_swapped_are_reported_with_a_warning():
    model = nn.Sequential(
        nn.Linear(4, 4),
        nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)),
        nn.LazyLinear(3),
        nn.Linear(3, 3),
        nn.Conv2d(3, 3, 1),
        nn.BatchNorm2d(3, affine=False),
    )
    with pytest.warns(UserWarning) as rec:
        q = qatkit.prepare_qat(model, qatkit.w8a8())
    text = "\n".join(str(w.message) for w in rec)
    assert "layer '1' stays float: a parametrized layer" in text
    assert "layer '2' stays float: a Lazy layer" in text
    assert "'5': not folded into conv '4'" in text
    reasons = {r["name"]: r.get("reason", "") for r in q.qat_report}
    assert "parametrized" in reasons["1"] and "Lazy" in reasons["2"] and "not folded" in reasons["5"]
    assert isinstance(q[4], qatkit.qat.QuantConv2d) and isinstance(q[5], nn.BatchNorm2d)


class _OwnWeight(nn.Module):
    """A custom layer multiplying by its own parameter (as Hugging Face's GPT-2 ``Conv1D``)."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n) / n**0.5)
        self.pos_embed = nn.Parameter(torch.zeros(1, n))  # a parameter, but no weight matrix

    def forward(self, x):
        return nn.functional.linear(x, self.weight) + self.pos_embed


def test_layers_of_kinds_with_no_qat_form_are_named_in_one_warning_and_the_report():
    """An LSTM, a GRU, a transposed conv, a Conv3d, a Bilinear, an EmbeddingBag or a custom module
    calling F.linear on its own weight stays float: before, prepare_qat said nothing, so a user saw
    a "quantized" model that ran those layers in float (torch.ao does the same)."""
    model = nn.Sequential(
        nn.Linear(8, 8),
        nn.LSTM(8, 8, batch_first=True),
        nn.ConvTranspose1d(8, 8, 1),
        nn.Conv3d(8, 8, 1),
        nn.Bilinear(8, 8, 8),
        nn.EmbeddingBag(10, 8),
        _OwnWeight(8),
        nn.LayerNorm(8),
        nn.Linear(8, 4),
    )
    with pytest.warns(UserWarning) as rec:
        q = qatkit.prepare_qat(model, qatkit.w8a8())
    text = "\n".join(str(w.message) for w in rec)
    assert "6 layer(s) with weights stay float, no QAT form exists for their kind" in text
    assert "'1' (LSTM); '2' (ConvTranspose1d); '3' (Conv3d); '4' (Bilinear); '5' (EmbeddingBag); '6' (_OwnWeight)" in text
    reasons = {r["name"]: r.get("reason", "") for r in q.qat_report}
    for name, kind in [("1", "LSTM"), ("2", "ConvTranspose1d"), ("3", "Conv3d"), ("4", "Bilinear"), ("5", "EmbeddingBag")]:
        assert reasons[name].startswith(f"qatkit has no QAT form for {kind} ("), reasons[name]
    assert reasons["6"] == "qatkit has no QAT form for _OwnWeight (weight [8, 8])"  # pos_embed is no weight
    assert "weight_ih_l0 [32, 8]" in reasons["1"]
    assert "7" not in reasons  # LayerNorm: a 1-d weight
    assert isinstance(q[0], qatkit.qat.QuantLinear) and isinstance(q[8], qatkit.qat.QuantLinear)
    # ptq's report carries the reason
    small = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), _OwnWeight(8), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match="1 layer\\(s\\) with weights stay float"):
        p = qatkit.ptq(small, [torch.randn(16, 8)], progress=False, verbose=False)
    notes = {r["name"]: r["notes"] for r in p.ptq_report["layers"]}
    assert notes["2"].startswith("qatkit has no QAT form for _OwnWeight")
    # a skip pattern naming the layer is the user's choice: no warning, and the pattern is used
    cfg = dataclasses.replace(qatkit.w8a8(), skip=("2",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = qatkit.prepare_qat(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), _OwnWeight(8), nn.Linear(8, 4)), cfg)
    assert any(r["name"] == "2" and r["qat"] is None for r in q.qat_report)
    # QAT and converted layers own their weights: nothing to report
    q = qatkit.prepare_qat(nn.Sequential(nn.Embedding(4, 8), nn.Linear(8, 8), nn.Linear(8, 8)), qatkit.w8a8())
    q(torch.randint(0, 4, (2, 3)))
    c = qatkit.convert(q)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qatkit.prepare_qat(nn.Sequential(q, c, nn.Linear(4, 4)), qatkit.w8a8())


def test_layers_under_the_deprecated_hook_based_weight_and_spectral_norm_stay_float_and_copy(tmp_path):
    """torch.nn.utils.weight_norm / spectral_norm (hook-based, deprecated but common in audio
    models) recompute a plain `weight` attribute before every call. prepare_qat swapped such a
    layer for a QuantLinear / QuantConv holding one computed weight, dropping the norm silently;
    and after one call with autograd on, ptq / prepare_qat / sensitivity / convert / load_into
    failed in copy.deepcopy (torch refuses a non-leaf tensor). Now the layers stay float with a
    warning and a report entry, the copies work and leave the caller's model unchanged, QAT trains
    weight_g, load_into reloads the file bit for bit and load names the layer."""
    import copy
    import warnings

    def make():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return nn.Sequential(nn.utils.weight_norm(nn.Conv1d(4, 8, 3, padding=1)), nn.ReLU(),
                                 nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(96, 16), nn.ReLU(),
                                 nn.utils.spectral_norm(nn.Linear(16, 16)), nn.ReLU(), nn.Linear(16, 4))

    x = torch.randn(8, 4, 12, generator=torch.Generator().manual_seed(1))
    net = make().eval()
    ref = net(x)  # with autograd on: the computed weights are non-leaf tensors now
    with pytest.raises(RuntimeError, match="deepcopy"):
        copy.deepcopy(net)  # what torch itself does
    cfg = dataclasses.replace(qatkit.w8a8(), first_last=None)
    with pytest.warns(UserWarning) as rec:
        q = qatkit.prepare_qat(net, cfg)
    text = "\n".join(str(w.message) for w in rec)
    assert "layer '0' stays float: a layer under torch.nn.utils.weight_norm" in text
    assert "layer '7' stays float: a layer under torch.nn.utils.spectral_norm" in text
    reasons = {r["name"]: r.get("reason", "") for r in q.qat_report}
    assert "remove_weight_norm" in reasons["0"] and "remove_spectral_norm" in reasons["7"]
    assert type(q[0]) is nn.Conv1d and type(q[7]) is nn.Linear and isinstance(q[2], qatkit.qat.QuantConv1d)
    q.train()
    q(x).square().mean().backward()
    assert q[0].weight_g.grad is not None and q[0].weight_v.grad is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = qatkit.ptq(net, [x], cfg, verbose=False, progress=False)
        qatkit.sensitivity(net, [x], cfg, progress=False)
    assert torch.equal(net(x), ref)  # the caller's model computes what it did
    with torch.no_grad():
        want = qatkit.convert(p, integer=True)(x)
    path = str(tmp_path / "wn.safetensors")
    header = qatkit.export(p, path)
    assert "module '0' is a Conv1d with torch.nn.utils.weight_norm" in header["structure_gap"]
    with pytest.raises(ValueError, match="module '0' is a Conv1d with torch.nn.utils.weight_norm"):
        qatkit.load(path)
    back = make()
    back(x)  # a non-leaf weight again: load_into copies it
    with torch.no_grad():
        assert torch.equal(qatkit.load_into(back, path)(x), want)


def test_a_transformer_layer_is_quantized_whole_without_warnings():
    # the attention is a QuantMultiheadAttention (tests/python/qat/test_attention.py), which keeps
    # the fused fast path off: nothing to warn about
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = qatkit.prepare_qat(layer, qatkit.w8a8())
    assert isinstance(q.self_attn, qatkit.qat.QuantMultiheadAttention)
    assert isinstance(q.linear1, qatkit.qat.QuantLinear) and isinstance(q.linear2, qatkit.qat.QuantLinear)


# ---------------------------------------------------------------- dtype moves


@pytest.mark.parametrize("move", ["double", "half", "bfloat16", "to"])
@pytest.mark.parametrize("name", ["w8a8", "w4a4_lsq", "w4a8", "ternary_twn", "xnor_w1a1"])
def test_a_prepared_model_moved_to_another_dtype_trains_and_converts(name, move):
    dtype = {"double": torch.float64, "half": torch.float16, "bfloat16": torch.bfloat16, "to": torch.float64}[move]
    q = qatkit.prepare_qat(_mlp(), qatkit.preset(name))
    q.train()
    q(torch.randn(8, 8))  # observe / initialize in float32 first
    q = q.to(dtype) if move == "to" else getattr(q, move)()
    for m in q.modules():  # quantizer state stays float32, layers move
        if isinstance(m, (qatkit.qat.ActFakeQuantizer, qatkit.qat.WeightFakeQuantizer, qatkit.qat.Observer)):
            for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                assert not t.is_floating_point() or t.dtype == torch.float32
    assert q[0].weight.dtype == dtype
    y = q(torch.randn(8, 8, dtype=dtype))
    assert y.dtype == dtype
    y.float().sum().backward()
    assert q[0].weight.grad.dtype == dtype
    q.eval()
    c = qatkit.convert(q)
    x = torch.randn(3, 8, dtype=dtype)
    assert torch.equal(c(x), q(x))
    c64 = c.double()  # and a converted model moves too
    assert c64(x.double()).dtype == torch.float64 and c64[0].weight_scale.dtype == torch.float32


# ---------------------------------------------------------------- empty inputs


@pytest.mark.parametrize("name", ["w8a8", "w4a4_lsq", "ternary_twn", "binary_w1a8", "w4a8", "xnor_w1a1"])
def test_an_empty_first_batch_is_harmless(name):
    q = qatkit.prepare_qat(_mlp(), qatkit.preset(name))
    q.train()
    y = q(torch.randn(0, 8))
    assert y.shape == (0, 4)
    y.sum().backward()
    q(torch.randn(6, 8))  # the first real batch observes / initializes
    q.eval()
    x = torch.randn(3, 8)
    assert torch.equal(qatkit.convert(q)(x), q(x))


@pytest.mark.parametrize("name", ["w8a8", "w4a4_lsq", "ternary_twn", "binary_w1a8"])
def test_zero_width_layers_train_and_explain_why_they_cannot_convert(name):
    q = qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 0), nn.Linear(0, 4), nn.Linear(4, 4)), qatkit.preset(name))
    q.train()
    y = q(torch.randn(2, 16))
    y.sum().backward()
    assert q[0].weight.grad.shape == (0, 16) and torch.isfinite(q[1].weight.grad).all()
    q.eval()
    with pytest.raises(ValueError, match="input quantizer of layer '1' has not observed any data"):
        qatkit.convert(q)  # its inputs are always empty: nothing to calibrate from


# ---------------------------------------------------------------- module options


@pytest.mark.parametrize(
    "kwargs",
    [{"max_norm": 1.0}, {"max_norm": 0.5, "norm_type": 1.0}, {"padding_idx": 3}, {"scale_grad_by_freq": True}],
    ids=str,
)
def test_convert_keeps_embedding_options_bit_for_bit(kwargs):
    from qatkit.qat.config import LayerSpec

    torch.manual_seed(0)
    emb = nn.Embedding(20, 8, **kwargs)
    with torch.no_grad():
        emb.weight.mul_(3)
    cfg = QATConfig(default=LayerSpec(QuantSpec(bits=4, granularity="per_channel")), embeddings=True)
    q = qatkit.prepare_qat(nn.Sequential(emb), cfg)
    idx = torch.randint(0, 20, (4, 6))
    q.train()
    q(idx).sum().backward()
    q.eval()
    c = qatkit.convert(q)
    assert torch.equal(c(idx), q(idx))


def test_sparse_embeddings_train_densely_with_a_warning():
    from qatkit.qat.config import LayerSpec

    cfg = QATConfig(default=LayerSpec(QuantSpec(bits=8, granularity="per_channel")), embeddings=True)
    with pytest.warns(UserWarning, match="sparse=True gradients cannot flow through"):
        q = qatkit.prepare_qat(nn.Sequential(nn.Embedding(10, 4, sparse=True)), cfg)
    q(torch.tensor([[1, 2]])).sum().backward()
    assert not q[0].weight.grad.is_sparse


@pytest.mark.parametrize("layer,axis", [(nn.Linear(8, 4), 0), (nn.Conv2d(3, 4, 1), 0), (nn.Conv2d(3, 4, 1), -1)])
def test_per_channel_activation_axes_are_checked_against_the_layer(layer, axis):
    from qatkit.qat.config import LayerSpec

    spec = LayerSpec(QuantSpec(), QuantSpec(symmetric=False, granularity="per_channel", axis=axis))
    with pytest.raises(ValueError, match=rf"per-channel activation spec needs axis in .* got axis={axis}"):
        qatkit.prepare_qat(nn.Sequential(layer), QATConfig(default=spec))
    good = 1 if isinstance(layer, nn.Conv2d) else -1
    ok = LayerSpec(QuantSpec(), QuantSpec(symmetric=False, granularity="per_channel", axis=good))
    qatkit.prepare_qat(nn.Sequential(layer), QATConfig(default=ok))


# ---------------------------------------------------------------- higher-order derivatives

_S, _Z = torch.tensor([0.1]), torch.zeros(1, dtype=torch.int32)
FORWARD_OPS = {
    "fake_quantize": lambda t: ops.fake_quantize(t, _S, _Z, -8, 7),
    "fake_quantize_learnable": lambda t: ops.fake_quantize_learnable(t, _S, _Z.float(), -8, 7),
    "pact_quantize": lambda t: ops.pact_quantize(t, torch.tensor([1.0]), 15),
    "binarize": lambda t: ops.binarize(t, "mean_abs"),
    "ternarize": lambda t: ops.ternarize(t),
    "quantize_per_token": lambda t: ops.quantize_per_token(t.reshape(2, 4)),
    "quantize_per_tensor_dynamic": lambda t: ops.quantize_per_tensor_dynamic(t),
}


@pytest.mark.parametrize("name", sorted(FORWARD_OPS))
def test_forward_mode_ad_raises_instead_of_a_zero_tangent(name):
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(8)
    with pytest.raises(NotImplementedError, match=f"qatkit::{name}: forward-mode AD"):
        torch.func.jvp(FORWARD_OPS[name], (x,), (torch.ones(8),))
    with fwAD.dual_level():
        with pytest.raises(NotImplementedError, match=f"qatkit::{name}: forward-mode AD"):
            FORWARD_OPS[name](fwAD.make_dual(x, torch.ones(8)))


def _double_backward(fn, *xs):
    xs = [t.clone().requires_grad_() for t in xs]
    g = torch.autograd.grad(fn(*xs).pow(2).sum(), xs, create_graph=True)
    return torch.autograd.grad(sum(gi.sum() for gi in g), xs, allow_unused=True)


@pytest.mark.parametrize(
    "name,fn,args",
    [
        ("_fake_quantize_learnable_backward", lambda t, s: ops.fake_quantize_learnable(t, s, _Z.float(), -8, 7), 2),
        ("_binarize_backward", lambda t: ops.binarize(t, "none", None, "approx_sign"), 1),
        ("_pact_quantize_backward", lambda t, a: ops.pact_quantize(t, a, 15), 2),
    ],
)
def test_double_backward_raises_where_it_is_not_implemented(name, fn, args):
    xs = [torch.randn(8), torch.tensor([0.5])][:args]
    with pytest.raises(NotImplementedError, match=f"qatkit::{name}: double backward"):
        _double_backward(fn, *xs)


def test_double_backward_where_implemented_follows_the_ste():
    x = torch.randn(64) * 0.5
    (d2,) = _double_backward(FORWARD_OPS["fake_quantize"], x)
    mask = ((x / 0.1).round() >= -8) & ((x / 0.1).round() <= 7)  # the clipped STE's pass-through set
    assert torch.equal(d2, 2 * mask.float())  # d/dx sum(2 y mask) = 2 mask^2
    for name in ("ternarize", "quantize_per_tensor_dynamic"):  # identity STE: d/dx sum(2 y) = 2
        (d2,) = _double_backward(FORWARD_OPS[name], x)
        assert torch.equal(d2, torch.full_like(x, 2.0)), name


# ---------------------------------------------------------------- save / load formats


def _trained_model(name):
    q = qatkit.prepare_qat(_mlp(), qatkit.preset(name))
    q.train()
    for _ in range(2):
        q(torch.randn(16, 8)).sum().backward()
    return q


@pytest.mark.parametrize("name", ["w8a8", "w4a4_lsq", "w4a8", "binaryconnect"])
def test_the_state_dict_holds_tensors_only_and_round_trips_through_safetensors(name, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch", reason="safetensors is in scripts/requirements.txt")
    q = _trained_model(name)
    if name == "w8a8":
        q[2].weight_fake_quant.store_qparams(q[2].weight)  # stored qparams travel too
    sd = q.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    path = tmp_path / "m.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    fresh = qatkit.prepare_qat(_mlp(), qatkit.preset(name))
    fresh.load_state_dict(safetensors.load_file(str(path)), strict=True)
    q.eval()
    fresh.eval()
    x = torch.randn(5, 8)
    assert torch.equal(fresh(x), q(x))
    if name == "w8a8":
        assert fresh[2].weight_fake_quant.has_stored_qparams
        assert torch.equal(fresh[2].weight_fake_quant.stored_scale, q[2].weight_fake_quant.stored_scale)
    torch.save(sd, tmp_path / "m.pt")  # and through torch.save with weights_only loading
    again = qatkit.prepare_qat(_mlp(), qatkit.preset(name))
    again.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)
    again.eval()
    assert torch.equal(again(x), q(x))


def test_a_checkpoint_of_another_preset_or_a_corrupt_record_fails_loudly():
    sd = _trained_model("w8a8").state_dict()
    other = qatkit.prepare_qat(_mlp(), qatkit.w4a8(8))
    with pytest.raises(ValueError, match=r"key '2.weight_fake_quant._extra_state' holds a quantizer saved with another"):
        other.load_state_dict(sd)
    bad = dict(sd)
    bad["0.input_fake_quant._extra_state"] = torch.tensor([1, 2, 255], dtype=torch.uint8)
    with pytest.raises(ValueError, match="key '0.input_fake_quant._extra_state' is not a qatkit quantizer record"):
        qatkit.prepare_qat(_mlp(), qatkit.w8a8()).load_state_dict(bad)
    bad["0.input_fake_quant._extra_state"] = torch.zeros(3)
    with pytest.raises(ValueError, match="must hold a qatkit quantizer record"):
        qatkit.prepare_qat(_mlp(), qatkit.w8a8()).load_state_dict(bad)


def test_checkpoints_with_the_older_dict_records_still_load():
    import dataclasses

    q = _trained_model("w8a8")
    sd = q.state_dict()
    old = {k: ({"spec": dataclasses.asdict(q.get_submodule(k.rsplit(".", 1)[0]).spec)} if k.endswith("_extra_state")
               else v) for k, v in sd.items()}
    fresh = qatkit.prepare_qat(_mlp(), qatkit.w8a8())
    fresh.load_state_dict(old, strict=True)


@pytest.mark.parametrize("name", sorted(FORWARD_OPS) + ["choose_qparams", "fused_observe_fake_quantize"])
def test_nested_and_sparse_inputs_get_a_clear_error(name):
    calls = dict(FORWARD_OPS)
    calls["choose_qparams"] = lambda t: ops.choose_qparams(t, -8, 7, True)
    calls["quantize_per_token"] = lambda t: ops.quantize_per_token(t)
    calls["fused_observe_fake_quantize"] = lambda t: ops.fused_observe_fake_quantize(
        t, torch.full((1,), float("inf")), torch.full((1,), float("-inf")), torch.ones(1),
        torch.zeros(1, dtype=torch.int32), torch.ones(1), torch.ones(1), 0.01, True, -128, 127, False)
    nested = torch.nested.nested_tensor([torch.randn(3), torch.randn(5)])
    with pytest.raises(NotImplementedError, match=f"qatkit::{name}: nested tensors are not supported"):
        calls[name](nested)
    with pytest.raises(NotImplementedError, match=f"qatkit::{name}: Sparse.* tensors are not supported"):
        calls[name](torch.randn(8).to_sparse())


def test_eval_and_converted_graphs_hold_no_observer_update():
    q = qatkit.prepare_qat(_mlp(), qatkit.w8a8())
    q.train()
    q(torch.randn(32, 8))
    observer_ops = ("fused_observe_fake_quantize", "_observer_update")

    def targets(model):
        ep = torch.export.export(model, (torch.randn(2, 8),))
        return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}

    assert any(o in t for t in targets(q) for o in observer_ops)  # training graphs observe
    q.eval()
    before = {k: v.clone() for k, v in q.state_dict().items() if isinstance(v, torch.Tensor)}
    assert not any(o in t for t in targets(q) for o in observer_ops)
    assert not any(o in t for t in targets(qatkit.convert(q)) for o in observer_ops)
    q(torch.randn(4, 8) * 100)
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k  # an eval forward changes no state


class _TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(50, 16)
        self.l1, self.l2, self.l3 = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 50)

    def forward(self, idx):
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(self.tok(idx))))))


def test_first_last_counts_compute_layers_and_embeddings_are_an_explicit_choice():
    q = qatkit.prepare_qat(_TinyLM(), qatkit.binary_w1a8())
    rules = {r["name"]: r.get("rule") for r in q.qat_report}
    assert isinstance(q.tok, nn.Embedding)  # not quantized by a preset
    assert rules["l1"] == "first_last" and rules["l3"] == "first_last" and rules["l2"] == "default"
    assert q.l2.weight_fake_quant.spec.kind == "binary"  # the word embedding is not "the first layer"
    import dataclasses

    q2 = qatkit.prepare_qat(_TinyLM(), dataclasses.replace(qatkit.binary_w1a8(), embeddings=True))
    assert q2.tok.weight_fake_quant.spec.kind == "binary"
    from qatkit.qat.config import LayerSpec

    pinned = dataclasses.replace(qatkit.w8a8(), overrides=(("tok", LayerSpec(QuantSpec(bits=4, granularity="per_channel"))),))
    assert qatkit.prepare_qat(_TinyLM(), pinned).tok.weight_fake_quant.spec.bits == 4  # an override names it
    with pytest.raises(ValueError, match=r"embeddings=False keeps nn.Embedding tables float"):
        qatkit.prepare_qat(nn.Sequential(nn.Embedding(5, 4)), qatkit.w8a8())
    with pytest.raises(TypeError, match="QATConfig.embeddings must be a bool"):
        QATConfig(embeddings="yes")


def test_hooks_on_float_layers_move_to_their_qat_converted_and_loaded_replacements(tmp_path):
    """A forward hook, pre-hook or full backward hook registered on a float layer (feature
    extraction, logging, a hook that edits the output) used to vanish when prepare_qat / convert /
    load_into swapped the layer: a hook that edited the output left the "same" model computing
    another function. The replacement now takes the hooks over (as torch.ao's swap does), and the
    user's handle still removes them."""
    torch.manual_seed(0)
    seen = []
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU6(), nn.Linear(8, 4))
    model[0].register_forward_pre_hook(lambda mod, args: seen.append(("pre", type(mod).__name__)))
    h_fwd = model[0].register_forward_hook(lambda mod, args, out: seen.append(("fwd", type(mod).__name__)))
    model[2].register_full_backward_hook(lambda mod, gi, go: seen.append(("bwd", type(mod).__name__)))
    model[2].register_forward_hook(lambda mod, args, out: out * 0 + 1)  # edits the output
    x = torch.randn(4, 8)
    assert torch.equal(model(x), torch.ones(4, 4))
    seen.clear()

    q = qatkit.prepare_qat(model, qatkit.w8a8())
    q(x).sum().backward()
    assert seen == [("pre", "QuantLinear"), ("fwd", "QuantLinear"), ("bwd", "QuantLinear")]
    assert torch.equal(q(x), torch.ones(4, 4))
    q.eval()
    c = qatkit.convert(q)
    seen.clear()
    assert torch.equal(c(x), torch.ones(4, 4))
    assert seen == [("pre", "QuantizedLinear"), ("fwd", "QuantizedLinear")]

    # ptq: equalization would rescale the output channels layer 0's forward hook reads, so that
    # pair is skipped (and its ReLU6 kept), saying why
    seen.clear()
    p = qatkit.ptq(model, [torch.randn(16, 8)], progress=False, verbose=False)
    assert type(p[1]) is nn.ReLU6 and torch.equal(p(x), torch.ones(4, 4))
    assert "0: its output is also read by a forward hook on module '0'" in p.ptq_report["skipped_pairs"]
    assert ("fwd", "QuantLinear") in seen

    # the file holds no hooks: export says so; load_into keeps the hooks of the model it loads into
    with pytest.warns(UserWarning, match=r"export: 2 module\(s\) have forward hooks or pre-hooks: '0' \(2\), '2' \(1\)"):
        qatkit.export(q, tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Linear(8, 8), nn.ReLU6(), nn.Linear(8, 4))
    fresh[2].register_forward_hook(lambda mod, args, out: out * 0 + 2)
    loaded = qatkit.load_into(fresh, tmp_path / "m.safetensors")
    assert type(loaded[2]).__name__ == "PackedLinear" and torch.equal(loaded(x), torch.full((4, 4), 2.0))
    plain = qatkit.load(tmp_path / "m.safetensors")
    assert not torch.equal(plain(x), torch.full((4, 4), 2.0))

    # in place: the user's handle removes the hook from the QAT layer
    model2 = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    handle = model2[0].register_forward_hook(lambda mod, args, out: seen.append("in place"))
    q2 = qatkit.prepare_qat(model2, qatkit.w8a8(), inplace=True)
    seen.clear()
    q2(x)
    assert seen == ["in place"]
    handle.remove()
    seen.clear()
    q2(x)
    assert seen == []
    # a bare layer as the model
    lin = nn.Linear(8, 4)
    lin.register_forward_hook(lambda mod, args, out: seen.append(type(mod).__name__))
    qb = qatkit.prepare_qat(lin, qatkit.w8a8())
    qb(x)
    qb.eval()
    qatkit.convert(qb)(x)
    assert seen == ["QuantLinear", "QuantizedLinear"]
    del h_fwd


def _pruned_cnn():
    from torch.nn.utils import prune

    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 36, 4),
    )
    prune.l1_unstructured(m[0], "weight", 0.5)
    prune.l1_unstructured(m[3], "weight", 0.3)
    prune.random_unstructured(m[6], "weight", 0.5)
    prune.l1_unstructured(m[6], "weight", 0.2)  # pruned twice: one PruningContainer
    return m


@pytest.mark.parametrize("preset", ["w8a8", "w4a4_lsq"])
def test_layers_pruned_with_torch_prune_keep_their_mask_through_qat_convert_and_export(preset, tmp_path):
    """torch.nn.utils.prune keeps weight_orig (the Parameter), weight_mask and a pre-hook that
    computes weight = weight_orig * weight_mask: the computed weight is a non-leaf, so prepare_qat /
    ptq / convert raised in copy.deepcopy ("Only Tensors created explicitly by the user ..."). The
    QAT layer now keeps the pruning: pruned weights stay zero through training, the codes hold
    zeros there, and the state dict keeps torch's keys."""
    model = _pruned_cnn()
    zeros = [float((model[i].weight == 0).float().mean()) for i in (0, 3, 6)]
    q = qatkit.prepare_qat(model, getattr(qatkit, preset)())
    assert [type(q[i]).__name__ for i in (0, 3, 6)] == ["QuantConvBn2d", "QuantConv2d", "QuantLinear"]
    assert {"0.weight_orig", "0.weight_mask", "6.weight_orig", "6.weight_mask"} <= set(q.state_dict())
    opt = torch.optim.SGD(q.parameters(), 0.1)
    for _ in range(3):
        q(torch.randn(8, 3, 6, 6)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    q.eval()
    x = torch.randn(4, 3, 6, 6)
    y = q(x)
    for i, z in zip((0, 3, 6), zeros):
        assert torch.equal(q[i].weight == 0, q[i].weight_mask == 0) and float((q[i].weight == 0).float().mean()) == z
    c = qatkit.convert(q)
    assert torch.equal(c(x), y)
    for i in (3, 6):  # codes are zero where the mask is (symmetric weights: zero point 0)
        assert bool((c[i].weight_int[q[i].weight_mask == 0] == 0).all())
    # a checkpoint resumes into a freshly prepared pruned model
    fresh = qatkit.prepare_qat(_pruned_cnn(), getattr(qatkit, preset)())
    fresh.load_state_dict(q.state_dict(), strict=True)
    assert torch.equal(fresh.eval()(x), y)
    # export; load_into a pruned float model (its pruning hook stays behind) and load agree
    qatkit.export(q, tmp_path / "m.safetensors")
    want = qatkit.convert(q, integer=True)(x)
    assert torch.equal(qatkit.load_into(_pruned_cnn(), tmp_path / "m.safetensors")(x), want)
    assert torch.equal(qatkit.load(tmp_path / "m.safetensors")(x), want)


def test_ptq_makes_torch_pruning_permanent_and_reports_it():
    """Left live, the pruning pre-hook would recompute weight from weight_orig before every call,
    undoing what ptq writes into the weight (fold, equalization, rounding): measured 3.2e-3 off the
    same ptq of the permanently pruned model, silently. ptq prunes permanently in its copy."""
    from torch.nn.utils import prune

    data = [torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    p = qatkit.ptq(_pruned_cnn(), data, progress=False, verbose=False)
    permanent = _pruned_cnn()
    for i in (0, 3, 6):
        prune.remove(permanent[i], "weight")
    want = qatkit.ptq(permanent, data, progress=False, verbose=False)
    x = torch.randn(4, 3, 6, 6)
    assert torch.equal(p(x), want(x))
    assert "6: pruning of 'weight' made permanent (torch.nn.utils.prune.remove)" in p.ptq_report["model_changes"]


def test_a_pruned_attention_stays_float_and_binaryconnect_clips_the_pruned_latent_weight():
    from torch.nn.utils import prune

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    prune.l1_unstructured(mha, "in_proj_weight", 0.5)
    with pytest.warns(UserWarning) as rec:
        q = qatkit.prepare_qat(nn.ModuleDict({"att": mha, "fc": nn.Linear(8, 8)}), qatkit.w8a8())
    assert [str(w.message)[:60] for w in rec] == ["prepare_qat: layer 'att' stays float: a pruned nn.MultiheadA"]
    assert type(q["att"]) is nn.MultiheadAttention
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    prune.l1_unstructured(model[2], "weight", 0.5)
    q = qatkit.prepare_qat(model, qatkit.binaryconnect())
    opt = torch.optim.SGD(q.parameters(), 10.0)
    for _ in range(2):
        q(torch.randn(8, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        qatkit.qat.clip_latent_weights(q)
    clip = q[2].weight_fake_quant.spec.latent_clip
    assert float(q[2].weight_orig.detach().abs().max()) <= clip  # the latent Parameter, not the computed weight


def test_a_pruned_layer_left_float_exports_its_pruned_weight_and_loads(tmp_path):
    """A pruned layer the config keeps float (first / last layer, a layer used twice) was exported
    as weight_orig / weight_mask: qatkit.load builds a plain layer, so the file loaded nowhere
    ("missing ['6.weight']", found by scripts/fuzz_models.py). The file holds the pruned weight."""
    from torch.nn.utils import prune

    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), shared, nn.ReLU(), shared)
    prune.l1_unstructured(model[0], "weight", 0.5)
    prune.l1_unstructured(shared, "weight", 0.4)
    cfg = dataclasses.replace(qatkit.w8a8(), first_last="float")
    q = qatkit.prepare_qat(model, cfg)
    q(torch.randn(16, 8))
    q.eval()
    header = qatkit.export(q, tmp_path / "m.safetensors")
    assert "0.weight" in header["float_tensors"] and not any(k.endswith(("_orig", "_mask")) for k in header["float_tensors"])
    x = torch.randn(4, 8)
    want = qatkit.convert(q, integer=True)(x)
    assert torch.equal(qatkit.load(tmp_path / "m.safetensors")(x), want)
    fresh = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
    fresh.append(fresh[4])
    prune.l1_unstructured(fresh[0], "weight", 0.5)  # a pruned float model of the architecture
    assert torch.equal(qatkit.load_into(fresh, tmp_path / "m.safetensors")(x), want)


def test_prepare_qat_and_ptq_refuse_a_model_wrapped_in_data_parallel():
    """prepare_qat on a DistributedDataParallel / DataParallel model swapped the layers inside it
    and returned the wrapper: its reducer knew only the float model's parameters, so the QAT
    layers' new ones (learned scales) were never synchronized across ranks, silently. Prepare
    first, then wrap (scripts/qat_finetune.py does)."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    for wrapped, where in ((nn.DataParallel(model), "the model is"), (nn.Sequential(nn.DataParallel(model)), "'0' is")):
        for inplace in (False, True):
            with pytest.raises(TypeError, match=f"prepare_qat: {where} wrapped in DataParallel.*model.module"):
                qatkit.prepare_qat(wrapped, qatkit.w4a4_lsq(), inplace=inplace)
        with pytest.raises(TypeError, match=f"ptq: {where} wrapped in DataParallel"):
            qatkit.ptq(wrapped, [torch.randn(4, 8)], progress=False, verbose=False)
    assert type(model[0]) is nn.Linear  # nothing swapped
    q = qatkit.prepare_qat(model, qatkit.w4a4_lsq())  # the model itself: fine
    assert isinstance(q[0], qatkit.qat.QuantLinear)


def test_prepare_qat_and_ptq_refuse_a_model_on_the_meta_device():
    """A model built under torch.device("meta") (for a later to_empty) was prepared: its quantizer
    state came from meta tensors and was uninitialized memory after to_empty(), which loading the
    float weights does not overwrite (fake_quant_on 0 / 64 / 192, garbage ranges), silently. Now
    both refuse, naming the tensor and the order that works; after materializing, prepare works."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match=r"prepare_qat: parameter '0.weight' is on the meta device.*to_empty"):
        qatkit.prepare_qat(model, qatkit.w8a8())
    with pytest.raises(ValueError, match=r"ptq: parameter '0.weight' is on the meta device"):
        qatkit.ptq(model, [torch.randn(4, 8)], progress=False, verbose=False)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.load_state_dict(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).state_dict())
    q = qatkit.prepare_qat(model, qatkit.w8a8())
    assert all(int(b) == 1 for n, b in q.named_buffers() if n.endswith("fake_quant_on"))


class _AttnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.bn = nn.BatchNorm2d(16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(16, 2, batch_first=True, kdim=8, vdim=8)
        self.head = nn.Linear(16, 4)

    def forward(self, x, mem):
        h = torch.relu(self.bn(self.conv(x))).flatten(2).transpose(1, 2)  # [B, 36, 16]
        h = self.attn(h, h, h)[0]
        h = self.cross(h, mem, mem)[0]
        return self.head(h.mean(1))


def test_a_float_checkpoint_loaded_after_prepare_is_the_model_prepared_after_loading():
    """prepare_qat first, then load_state_dict(pretrained float weights, strict=False): LSQ weight
    step sizes stayed initialized from the weights the layers were prepared with (5x too small for
    weights 5x larger), and an nn.MultiheadAttention's in_proj_weight / q,k,v_proj_weight keys were
    unexpected, so its projections kept their old weights. Now the load re-initializes step sizes
    without a checkpoint entry from the loaded weights, and the attention splits its packed keys:
    the model equals the one prepared after loading."""
    cfg = dataclasses.replace(qatkit.w4a4_lsq(), first_last=None)
    torch.manual_seed(1)
    pre = _AttnNet()
    with torch.no_grad():
        for p in pre.parameters():
            p.mul_(5)
    want = qatkit.prepare_qat(pre, cfg)
    torch.manual_seed(2)
    got = qatkit.prepare_qat(_AttnNet(), cfg)
    r = got.load_state_dict(pre.state_dict(), strict=False)
    # missing: QAT state only (quantizers, the fold's switch); before, bn.* / attn.in_proj_* were unexpected
    assert r.unexpected_keys == [] and all("fake_quant" in k or k == "conv.bn_frozen" for k in r.missing_keys)
    want_sd, got_sd = want.state_dict(), got.state_dict()
    assert want_sd.keys() == got_sd.keys()
    for k, v in want_sd.items():
        assert torch.equal(got_sd[k], v), k
    x, mem = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8)
    assert torch.equal(got(x, mem), want(x, mem))  # (training mode: the activation ranges start here)
    # a QAT checkpoint (step sizes included) keeps its step sizes
    torch.manual_seed(3)
    again = qatkit.prepare_qat(_AttnNet(), cfg)
    with torch.no_grad():
        got.head.weight_fake_quant.scale.mul_(3)
    again.load_state_dict(got.state_dict())
    assert torch.equal(again.head.weight_fake_quant.scale, got.head.weight_fake_quant.scale)


@pytest.mark.parametrize("how", ["data_copy", "no_grad_copy", "assign_data"])
def test_weights_written_in_place_after_prepare_start_lsq_step_sizes_from_them(how):
    """prepare_qat first, then pretrained weights written in without load_state_dict (``.data.copy_``,
    ``copy_`` under no_grad, ``.data =``, as custom loaders do): the LSQ weight step sizes stayed
    initialized from the weights the layers were prepared with, 0.20x those of the model prepared
    after loading for weights 5x larger, silently. Now the first training forward starts them from
    the current weights: three SGD steps equal the model prepared after loading, bit for bit. Step
    sizes set or trained since (a QAT checkpoint, a DDP broadcast) are kept."""
    cfg = dataclasses.replace(qatkit.w4a4_lsq(), first_last=None)

    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(288, 16),
                             nn.ReLU(), nn.Linear(16, 4))

    torch.manual_seed(1)
    pre = net()
    with torch.no_grad():
        for p in pre.parameters():
            p.mul_(5)
    want = qatkit.prepare_qat(copy.deepcopy(pre), cfg)
    torch.manual_seed(2)
    got = qatkit.prepare_qat(net(), cfg)
    src = dict(pre.named_parameters())
    names = {"0.weight": "0.weight", "0.bias": "0.bias", "0.bn.weight": "1.weight", "0.bn.bias": "1.bias",
             "4.weight": "4.weight", "4.bias": "4.bias", "6.weight": "6.weight", "6.bias": "6.bias"}
    params = dict(got.named_parameters())
    for dst, s in names.items():
        if how == "data_copy":
            params[dst].data.copy_(src[s])
        elif how == "no_grad_copy":
            with torch.no_grad():
                params[dst].copy_(src[s])
        else:
            params[dst].data = src[s].detach().clone()
    for b in ("running_mean", "running_var"):
        getattr(got[0].bn, b).copy_(getattr(pre[1], b))
    xs = [torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for model in (want, got):
        opt = torch.optim.SGD(model.parameters(), 0.01)
        for x in xs:
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for (k, v), (k2, v2) in zip(want.state_dict().items(), got.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    # step sizes set since prepare are kept (a QAT checkpoint loaded, a broadcast from rank 0)
    torch.manual_seed(3)
    kept = qatkit.prepare_qat(net(), cfg)
    with torch.no_grad():
        kept[4].weight_fake_quant.scale.fill_(0.125)
        kept[4].weight.mul_(5)
    kept(xs[0])
    assert torch.all(kept[4].weight_fake_quant.scale == 0.125)
    # frozen on purpose (requires_grad_(False)): kept too, e.g. a SWA copy's averaged weights in
    # update_bn's training-mode forward
    frozen = qatkit.prepare_qat(net(), cfg)
    frozen[4].weight_fake_quant.scale.requires_grad_(False)
    s0 = frozen[4].weight_fake_quant.scale.clone()
    with torch.no_grad():
        frozen[4].weight.mul_(5)
    frozen(xs[0])
    assert torch.equal(frozen[4].weight_fake_quant.scale, s0)


def test_a_float_attention_checkpoint_of_another_size_is_refused_naming_the_key():
    q = qatkit.prepare_qat(nn.Sequential(nn.MultiheadAttention(16, 2)), dataclasses.replace(qatkit.w8a8(), first_last=None))
    sd = nn.Sequential(nn.MultiheadAttention(16, 2)).state_dict()
    sd["0.in_proj_weight"] = torch.randn(40, 16)
    with pytest.raises(RuntimeError, match=r"size mismatch for 0.in_proj_weight: .* 48 rows, got shape \(40, 16\)"):
        q.load_state_dict(sd, strict=False)


def test_an_eval_forward_does_not_initialize_learned_activation_ranges():
    """Eval mode observes nothing, for LSQ activation step sizes as for static observers: an eval
    pass before training (a baseline evaluation) initialized them from that batch, mutating the
    eval model; under DDP a rank-0-only evaluation then joined an all-reduce the other ranks never
    made. Now it warns and uses the initial step size; the first training forward initializes."""
    torch.manual_seed(0)
    q = qatkit.prepare_qat(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)),
                           dataclasses.replace(qatkit.w4a4_lsq(), first_last=None)).eval()
    aq = q[2].input_fake_quant
    x = torch.randn(4, 8) * 100
    with pytest.warns(UserWarning, match="'2.input_fake_quant' runs before observing any data"):
        y = q(x)
    assert int(aq.initialized) == 0 and float(aq.scale) == 1.0
    assert torch.equal(q(x), y)  # nothing changed in between
    q.train()
    q(torch.randn(4, 8))
    assert int(aq.initialized) == 1 and float(aq.scale) != 1.0


@pytest.mark.parametrize("preset", ["w8a8", "w4a4_lsq", "ternary_twn", "percentile"])
def test_qat_and_ptq_work_under_a_float64_default_dtype(preset, tmp_path):
    """torch.set_default_dtype(torch.float64) (scientific code, some test setups): the quantizers
    made their state in the default dtype, which the ops refuse ("running_min must be Float, got
    Double", "scale must be float32"); AdaRound on a float64 model multiplied float64 inputs with
    float32 weights. The state is float32 now, whatever the default."""
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(288, 16), nn.ReLU(),
                          nn.Linear(16, 4))
        if preset == "percentile":
            base = qatkit.w8a8()
            cfg = dataclasses.replace(base, default=qatkit.LayerSpec(
                base.default.weight, dataclasses.replace(base.default.activation, observer="percentile")))
        else:
            cfg = getattr(qatkit, preset)()
        cfg = dataclasses.replace(cfg, first_last=None)
        q = qatkit.prepare_qat(m, cfg)
        opt = torch.optim.SGD(q.parameters(), 0.01)
        for _ in range(2):
            q(torch.randn(8, 3, 8, 8)).square().mean().backward()
            opt.step()
            opt.zero_grad()
        x = torch.randn(4, 3, 8, 8)
        c = qatkit.convert(q.eval(), integer=True)
        assert c(x).dtype == torch.float64
        qatkit.export(c, tmp_path / "m.qat")
        assert torch.equal(qatkit.load(tmp_path / "m.qat")(x), c(x))
        p = qatkit.ptq(m.eval(), [torch.randn(8, 3, 8, 8)], cfg, rounding="adaround", adaround_iters=5,
                       progress=False, verbose=False)
        assert p(x).shape == (4, 4)
    finally:
        torch.set_default_dtype(torch.float32)


# ---------------------------------------------------------------- layers called with input=


class _Keywords(nn.Module):
    """Calls every layer kind by torch's argument name (``self.fc(input=x)``) or positionally."""

    def __init__(self, keyword: bool):
        super().__init__()
        self.keyword = keyword
        self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.emb, self.c1 = nn.Embedding(10, 8), nn.Conv1d(8, 8, 3)
        self.fc, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 5)

    def forward(self, x):
        call = (lambda m, t: m(input=t)) if self.keyword else (lambda m, t: m(t))
        y = torch.relu(call(self.bn, call(self.conv, x))).mean((2, 3))
        tokens = (x[:, 0, 0, :4].abs() * 3).long().clamp(max=9)
        z = call(self.c1, call(self.emb, tokens).transpose(1, 2)).mean(2)
        return call(self.fc2, torch.relu(call(self.fc, y + z)))


@pytest.mark.parametrize("preset", ["w8a8", "int4_weight_only", "bitnet_b158"])
def test_layers_called_with_torchs_keyword_argument_work_everywhere(preset, tmp_path):
    """nn.Linear / Conv / Embedding take ``input=``: the QAT, converted and loaded layers named it
    ``x`` / ``idx`` (TypeError "unexpected keyword argument 'input'"), and ptq's, GPTQ's and
    SmoothQuant's input hooks read ``args[0]`` (IndexError). Each path now gives the outputs of
    the same model calling its layers positionally, bit for bit."""
    torch.manual_seed(0)
    pos, kw = _Keywords(False).eval(), _Keywords(True).eval()
    kw.load_state_dict(pos.state_dict())
    data = [torch.randn(8, 3, 6, 6) for _ in range(3)]
    cfg = dataclasses.replace(qatkit.preset(preset), first_last=None)
    x = data[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for opts in ({}, {"rounding": "gptq"}, {"scaling": "smoothquant"}):
            a = qatkit.ptq(pos, data, cfg, progress=False, verbose=False, **opts)
            b = qatkit.ptq(kw, data, cfg, progress=False, verbose=False, **opts)
            assert torch.equal(a(x), b(x)), opts
        qa = qatkit.prepare_qat(pos, cfg, example_inputs=x)
        qb = qatkit.prepare_qat(kw, cfg, example_inputs=x)
        assert [r.get("folded_bn") for r in qb.qat_report] == [r.get("folded_bn") for r in qa.qat_report]
        for q in (qa, qb):
            q.train()
            q(x).square().mean().backward()
            q.eval()
        assert torch.equal(qa(x), qb(x))
        ca, cb = qatkit.convert(qa), qatkit.convert(qb)
        assert torch.equal(ca(x), cb(x))
        qatkit.export(cb, tmp_path / "kw.safetensors")
        la = qatkit.load_into(_Keywords(False), tmp_path / "kw.safetensors")
        lb = qatkit.load_into(_Keywords(True), tmp_path / "kw.safetensors")
    with torch.no_grad():
        assert torch.equal(la(x), lb(x))


# ---------------------------------------------------------------- a layer's weight read outside it


class _ReadsWeights(nn.Module):
    """A parent forward reading its children's weights: ``F.linear(h, self.proj.weight)`` (a merged
    LoRA does this) and a head tied as ``h @ self.wte.weight.t()``."""

    def __init__(self):
        super().__init__()
        self.wte, self.a = nn.Embedding(20, 16), nn.Linear(16, 16)
        self.proj, self.head = nn.Linear(16, 16), nn.Linear(16, 8)

    def forward(self, idx):
        h = torch.relu(self.a(self.wte(idx)))
        h = torch.nn.functional.linear(h, self.proj.weight, self.proj.bias)
        return torch.cat([self.head(torch.relu(h)), h @ self.wte.weight.t()], -1)


@pytest.mark.parametrize("source", ["trace", "fx"])
def test_a_layer_whose_weight_code_outside_it_reads_stays_float_with_the_reason(source):
    """A layer whose weight the parent's forward reads itself was swapped: the QAT layer never ran
    (or ran for the lookups only) while that code read the float shadow weight, calibrate blamed an
    eval-mode forward, and the converted model raised AttributeError "'QuantizedEmbedding' object
    has no attribute 'weight'". Such a layer now stays float, warned about and reported; the rest
    quantize, and convert / export / load_into work."""
    m = _ReadsWeights().eval()
    idx = torch.randint(0, 20, (2, 7))
    cfg = dataclasses.replace(qatkit.w8a8(), embeddings=True, first_last=None)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        q = qatkit.prepare_qat(m, cfg, example_inputs=idx if source == "trace" else None)
    rows = {r["name"]: r for r in q.qat_report}
    assert rows["a"]["qat"] == "QuantLinear" and rows["head"]["qat"] == "QuantLinear"
    assert rows["proj"]["qat"] is None and "read outside the layer (by op 'linear'" in rows["proj"]["reason"]
    assert rows["wte"]["qat"] is None and "read outside the layer" in rows["wte"]["reason"]
    text = "\n".join(str(w.message) for w in rec)
    assert "layer 'proj' stays float" in text and "layer 'wte' stays float" in text
    assert type(q.proj) is nn.Linear and type(q.wte) is nn.Embedding
    qatkit.qat.calibrate(q, [idx])
    c = qatkit.convert(q.eval())
    assert torch.equal(c(idx), q(idx))
    # the default keeps embeddings float: nothing to say about the table
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        qatkit.prepare_qat(m, dataclasses.replace(qatkit.w8a8(), first_last=None), example_inputs=idx)
    assert "'wte'" not in "\n".join(str(w.message) for w in rec)


# ---------------------------------------------------------------- first_last in call order


class _HeadFirst(nn.Module):
    """The head registered before the stem (its forward runs the stem first)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(32, 10)
        self.stem, self.mid = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)

    def forward(self, x):
        x = torch.relu(self.mid(torch.relu(self.stem(x))))
        return self.head(x.mean((2, 3)).repeat(1, 4))


@pytest.mark.parametrize("source", ["trace", "fx", "ptq"])
def test_first_last_picks_the_first_and_last_layers_that_run(source):
    """first_last counted layers in registration order: a head registered before the stem made
    the head and the middle conv "first" and "last", so the stem (the layer the rule protects) got
    int4. With a traced batch or an fx graph the rule follows the call order."""
    m, x = _HeadFirst().eval(), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if source == "ptq":
            q = qatkit.ptq(m, [x], qatkit.w4a8(), progress=False, verbose=False)
        else:
            q = qatkit.prepare_qat(m, qatkit.w4a8(), example_inputs=x if source == "trace" else None)
    rules = {r["name"]: r["rule"] for r in q.qat_report}
    assert rules == {"stem": "first_last", "mid": "default", "head": "first_last"}, rules
    assert q.stem.weight_fake_quant.spec.bits == 8 and q.mid.weight_fake_quant.spec.bits == 4


class _ReadsWeightMetadata(nn.Module):
    """Code that takes a layer weight's dtype, device or shape only (not its values)."""

    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        w = self.fc.weight
        x = x.to(w.dtype).type_as(w).to(w)
        zeros = torch.zeros_like(w).sum() + w.new_zeros(1).sum() + w.size(0) + w.dim() + w.shape[1]
        return self.fc2(torch.relu(self.fc(x))) + zeros * 0


@pytest.mark.parametrize("source", ["trace", "fx"])
def test_reading_a_weights_dtype_device_or_shape_is_not_reading_it(source):
    m, x = _ReadsWeightMetadata().eval(), torch.randn(2, 8)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        q = qatkit.prepare_qat(m, qatkit.w8a8(), example_inputs=x if source == "trace" else None)
    assert [r["qat"] for r in q.qat_report] == ["QuantLinear", "QuantLinear"]
    assert not any("read outside" in str(w.message) for w in rec)


def test_a_forward_without_example_inputs_is_named_as_changing_nothing():
    """prepare_qat(model, config, forward=fn) without example_inputs ignored fn without a word (it
    runs the model on example_inputs to find the conv -> BatchNorm pairs); now it warns. With
    example_inputs it is used, quietly."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    with pytest.warns(UserWarning, match=r"prepare_qat: forward changes nothing without example_inputs"):
        qatkit.prepare_qat(m, qatkit.w8a8(), forward=lambda model, b: model(b))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = qatkit.prepare_qat(m, dataclasses.replace(qatkit.w8a8(), first_last=None),
                               example_inputs=torch.randn(2, 3, 6, 6), forward=lambda model, b: model(b))
    assert type(q[0]).__name__ == "QuantConvBn2d"


@pytest.mark.parametrize("layer_spec,named", [
    (qatkit.LayerSpec(qatkit.QuantSpec(bits=4, granularity="per_channel", observer="mse"), None),
     "default.weight: observer='mse' (weight ranges are the weight's own min / max"),
    (qatkit.LayerSpec(qatkit.QuantSpec(bits=4, momentum=0.1), None), "default.weight: momentum=0.1"),
    (qatkit.LayerSpec(None, qatkit.QuantSpec(bits=8, latent_clip=1.0)), "default.activation: latent_clip=1.0"),
    (qatkit.LayerSpec(None, qatkit.QuantSpec(bits=8, scale="dynamic", granularity="per_token", observer="percentile")),
     "default.activation: observer='percentile' (a static range's"),
    (qatkit.LayerSpec(None, qatkit.QuantSpec(bits=8, observer="minmax", momentum=0.5)),
     "default.activation: momentum=0.5 (the moving-average observer's; this input's is 'minmax')"),
    (qatkit.LayerSpec(qatkit.QuantSpec(bits=4, lsq_grad_scale=False), None), "default.weight: lsq_grad_scale=False"),
])
def test_spec_fields_that_change_nothing_in_their_role_are_named(layer_spec, named):
    """A spec field set for a role where nothing reads it was taken and ignored: an MSE observer on
    weights (their ranges are their own min / max at every forward, or learned), a moving-average
    momentum on weights or a min/max / dynamic input, latent_clip on an input, lsq_grad_scale on a
    static scale. prepare_qat (Python and C++) now names each; the presets and the fields that act
    stay quiet."""
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with pytest.warns(UserWarning, match=r"prepare_qat: spec fields that change nothing: " + re.escape(named)):
        qatkit.prepare_qat(m, qatkit.QATConfig(default=layer_spec, first_last=None))
    acting = [qatkit.LayerSpec(qatkit.QuantSpec(bits=4), qatkit.QuantSpec(bits=8, momentum=0.5)),
              qatkit.LayerSpec(qatkit.QuantSpec(bits=4, scale="learned", lsq_grad_scale=False), None)]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for ls in acting:
            qatkit.prepare_qat(m, qatkit.QATConfig(default=ls, first_last=None))
        for name in ("w8a8", "w4a8", "w4a4_lsq", "ternary_twn", "bitnet_b158", "binary_w1a8", "xnor_w1a1",
                     "binaryconnect", "int8_weight_only", "int4_weight_only"):
            qatkit.prepare_qat(m, dataclasses.replace(qatkit.preset(name), first_last=None))
    assert not [w for w in rec if "change nothing" in str(w.message)]


def test_freeze_bn_names_the_batchnorms_it_leaves_training():
    """freeze_bn switches folded conv + BatchNorm layers to running statistics. A BatchNorm left
    unfolded (here: its conv's output is kept in an attribute) is a plain module that keeps batch
    statistics in training mode; the recipe's freeze_bn left it so without a word. Now it is named
    (as in C++); a model whose BatchNorms are all folded stays quiet."""

    class Kept(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn1 = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
            self.c2, self.bn2 = nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)

        def forward(self, x):
            y = self.c1(x)
            self.keep = y
            return self.bn2(self.c2(torch.relu(self.bn1(y))))

    x = torch.randn(2, 3, 10, 10)
    cfg = dataclasses.replace(qatkit.w8a8(), first_last=None)
    with pytest.warns(UserWarning, match="stay unfolded"):
        q = qatkit.prepare_qat(Kept(), cfg, example_inputs=(x,))
    with pytest.warns(UserWarning, match=r"freeze_bn: 1 BatchNorm layer\(s\) were not folded \(bn1; "):
        qatkit.qat.freeze_bn(q)
    assert bool(q.c2.bn_frozen)
    folded = qatkit.prepare_qat(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()), cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qatkit.qat.freeze_bn(folded)
        qatkit.qat.freeze_bn(q, False)
