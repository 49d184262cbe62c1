"""prepare_qat / convert: which layers are swapped, reports and warnings, bad input, the switches,
and converted models computing exactly what the QAT model computed (integer codes + scales)."""

import copy

import pytest
import torch
from torch import nn

import qatkit
from qatkit.qat import LayerSpec, QATConfig, QuantSpec


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


class WithEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, idx):
        h = self.conv(self.emb(idx).transpose(1, 2)).relu().mean(-1)
        return self.fc(h)


def test_prepare_swaps_and_folds_bn():
    q = qatkit.prepare_qat(cnn(), qatkit.w8a8())
    types = [type(m).__name__ for m in q]
    assert types[:6] == ["QuantConvBn2d", "Identity", "ReLU", "QuantConvBn2d", "Identity", "ReLU"]
    assert isinstance(q[7], qatkit.qat.QuantLinear) and isinstance(q[9], qatkit.qat.QuantLinear)
    assert [r["qat"] for r in q.qat_report] == ["QuantConvBn2d", "QuantConvBn2d", "QuantLinear", "QuantLinear"]


def test_prepare_does_not_touch_the_float_model_unless_inplace():
    m = cnn()
    q = qatkit.prepare_qat(m, qatkit.w8a8())
    assert type(m[0]) is nn.Conv2d and q is not m
    q2 = qatkit.prepare_qat(m, qatkit.w8a8(), inplace=True)
    assert q2 is m and isinstance(m[0], qatkit.qat.QuantConvBn2d)


def test_first_last_skip_overrides_and_bitlinear():
    cfg = qatkit.bitnet_b158()
    q = qatkit.prepare_qat(cnn(), cfg)
    assert [r["qat"] for r in q.qat_report] == [None, "QuantConvBn2d", "BitLinear", None]
    w4 = LayerSpec(QuantSpec(bits=4, granularity="per_channel"), None)
    cfg = QATConfig(default=qatkit.w8a8().default, skip=("0",), overrides=(("7", w4),))
    q = qatkit.prepare_qat(cnn(), cfg)
    rep = {r["name"]: r for r in q.qat_report}
    assert rep["0"]["qat"] is None and rep["7"]["weight"].startswith("int4")
    assert rep["9"]["weight"].startswith("int8")


def test_patterns_that_match_nothing_warn_and_fallback_is_reported():
    cfg = QATConfig(default=qatkit.w8a8().default, skip=("encoder.*",))
    with pytest.warns(UserWarning, match="pattern 'encoder.\\*' matches no supported layer"):
        qatkit.prepare_qat(cnn(), cfg)
    with pytest.warns(UserWarning, match="layer '9'.*not a multiple of group_size 64; its weight falls back"):
        q = qatkit.prepare_qat(cnn(), QATConfig(default=qatkit.w4a8(64).default))
    assert q.qat_report[-1]["fell_back"] and "-> per_channel" in q.qat_report[-1]["weight"]


def test_bad_input():
    with pytest.raises(ValueError, match="nothing to quantize: no nn.Linear"):
        qatkit.prepare_qat(nn.Sequential(nn.ReLU(), nn.Tanh()), qatkit.w8a8())
    # a model whose only layers qatkit cannot swap: the error names them and why (it used to say
    # "no nn.Linear" of a model whose Linear was parametrized or Lazy)
    cases = [
        (nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 4))), r"'0' \(ParametrizedLinear\): a parametrized"),
        (nn.Sequential(nn.LazyLinear(4)), r"'0' \(LazyLinear\): a Lazy layer whose shape is not known"),
        (nn.Sequential(nn.ReLU(), nn.Conv3d(2, 2, 1)), r"'1' \(Conv3d\): qatkit has no QAT form for Conv3d \(weight \[2, 2, 1, 1, 1\]\)"),
        (nn.LSTM(2, 3), r"the model itself \(LSTM\): qatkit has no QAT form for LSTM \(weight_ih_l0 \[12, 2\]"),
    ]
    for model, msg in cases:
        with pytest.raises(ValueError, match="nothing to quantize: no layer qatkit can swap; the layers with weights stay float: " + msg):
            qatkit.prepare_qat(model, qatkit.w8a8())
    with pytest.raises(ValueError, match="every supported layer was skipped"):
        qatkit.prepare_qat(cnn(), QATConfig(default=qatkit.w8a8().default, skip=("*",)))
    with pytest.raises(TypeError, match="config must be a QATConfig"):
        qatkit.prepare_qat(cnn(), "w8a8")
    with pytest.raises(ValueError, match="the model has no QAT layers"):
        qatkit.convert(cnn())
    q = qatkit.prepare_qat(cnn(), qatkit.w8a8())
    with pytest.raises(ValueError, match="input quantizer of layer '0' has not observed any data.*calibration"):
        qatkit.convert(q)


def _trained(model, cfg, make_input, steps=3):
    q = qatkit.prepare_qat(model, cfg)
    opt = torch.optim.SGD(q.parameters(), lr=0.05)
    for i in range(steps):
        torch.manual_seed(100 + i)
        out = q(make_input())
        opt.zero_grad()
        out.float().pow(2).mean().backward()
        opt.step()
        qatkit.qat.clip_latent_weights(q)
    return q


@pytest.mark.parametrize("name", sorted(qatkit.qat.PRESETS))
def test_convert_equals_qat_eval_bit_for_bit(name):
    cfg = QATConfig(default=qatkit.preset(name).default, bitlinear=qatkit.preset(name).bitlinear)
    q = _trained(cnn(), cfg, lambda: torch.rand(4, 1, 8, 8))
    qatkit.qat.freeze_bn(q)
    q.eval()
    c = qatkit.convert(q)
    x = torch.rand(6, 1, 8, 8)
    assert torch.equal(c(x), q(x))
    for m in c.modules():
        if isinstance(m, qatkit.qat.QuantizedConv2d | qatkit.qat.QuantizedLinear) and not m.float_weight:
            assert m.weight_int.dtype == torch.int8
            spec = m.weight_spec
            assert m.weight_int.min() >= spec.quant_min and m.weight_int.max() <= spec.quant_max


def test_convert_embedding_conv1d_model():
    cfg = QATConfig(
        default=LayerSpec(QuantSpec(bits=4, granularity="per_channel"), QuantSpec(bits=8, symmetric=False)),
        embeddings=True,
    )
    q = _trained(WithEmbedding(), cfg, lambda: torch.randint(0, 30, (4, 7)))
    q.eval()
    c = qatkit.convert(q)
    idx = torch.randint(0, 30, (3, 7))
    assert torch.equal(c(idx), q(idx))
    assert isinstance(c.emb, qatkit.qat.QuantizedEmbedding) and isinstance(c.conv, qatkit.qat.QuantizedConv1d)
    # the converted model never observes again
    before = c.conv.input_fake_quant.running_min.clone()
    c.train()
    c(idx * 0 + 29)
    assert torch.equal(c.conv.input_fake_quant.running_min, before)


def test_switches():
    m = cnn().eval()
    q = qatkit.prepare_qat(m, qatkit.w8a8())
    qatkit.qat.calibrate(q, [torch.rand(8, 1, 8, 8)])
    x = torch.rand(2, 1, 8, 8)
    qatkit.qat.disable_fake_quant(q)
    q.eval()
    torch.testing.assert_close(q(x), m(x), rtol=1e-5, atol=1e-5)  # BN folded: float model up to rounding
    qatkit.qat.enable_fake_quant(q, which="weights")
    assert all(not a._fq_enabled for a in q.modules() if isinstance(a, qatkit.qat.ActFakeQuantizer))
    with pytest.raises(ValueError, match="which must be 'all', 'weights' or 'activations'"):
        qatkit.qat.enable_fake_quant(q, which="inputs")


def test_calibrate_only_moves_observers():
    q = qatkit.prepare_qat(cnn(), qatkit.w8a8())
    bn_before = q[0].bn.running_mean.clone()
    qatkit.qat.calibrate(q, [torch.rand(8, 1, 8, 8), (torch.rand(8, 1, 8, 8), None)])
    assert torch.equal(q[0].bn.running_mean, bn_before)
    assert torch.isfinite(q[0].input_fake_quant.running_min).all()


def test_binaryconnect_latent_clip_and_stochastic_sampling():
    cfg = QATConfig(default=qatkit.binaryconnect(stochastic=True).default)
    lin = nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight.mul_(10)
    q = qatkit.prepare_qat(nn.Sequential(lin), cfg)
    qatkit.qat.clip_latent_weights(q)
    assert q[0].weight.abs().max() <= 1.0
    w1 = q[0].quantized_weight().clone()
    w2 = q[0].quantized_weight()
    assert not torch.equal(w1, w2)  # a new draw every training step
    q.eval()
    assert torch.equal(q[0].quantized_weight(), q[0].quantized_weight())  # deterministic at eval


def test_deepcopy_and_state_dict_roundtrip():
    q = _trained(cnn(), qatkit.w4a8(8), lambda: torch.rand(4, 1, 8, 8))
    q2 = qatkit.prepare_qat(cnn(), qatkit.w4a8(8))
    q2.load_state_dict(copy.deepcopy(q.state_dict()))
    q.eval()
    q2.eval()
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(q(x), q2(x))


@pytest.mark.parametrize("name", sorted(qatkit.qat.PRESETS))
def test_every_preset_compiles_fullgraph(name):
    """A training step of each preset's QAT CNN traces with fullgraph=True (no graph breaks) and
    matches eager (outputs and gradients)."""
    cfg = QATConfig(default=qatkit.preset(name).default, bitlinear=qatkit.preset(name).bitlinear)
    q = qatkit.prepare_qat(cnn(), cfg)
    x = torch.rand(4, 1, 8, 8)
    q(x)  # first call: lazy LSQ activation init happens eagerly
    ref = copy.deepcopy(q)
    torch._dynamo.reset()
    compiled = torch.compile(q, backend="aot_eager", fullgraph=True)
    torch.manual_seed(0)
    y = compiled(x)
    torch.manual_seed(0)
    y_ref = ref(x)
    torch.testing.assert_close(y, y_ref)
    y.sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(q[7].weight.grad, ref[7].weight.grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["w8a8", "w4a8", "w4a4_lsq", "ternary_twn", "binary_w1a8"])
def test_convert_keeps_the_model_dtype_bit_for_bit(name, dtype):
    """A QAT model built in float64 / bfloat16 / float16 converts into modules that compute in the
    same dtype, equal to the QAT model's eval output (the dequantized weight is dequantize_affine's,
    bit for bit fake_quantize's in that dtype)."""
    cfg = QATConfig(default=qatkit.preset(name).default)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).to(dtype)
    q = _trained(model, cfg, lambda: torch.rand(4, 16, dtype=dtype))
    q.eval()
    c = qatkit.convert(q)
    x = torch.rand(5, 16, dtype=dtype)
    out = c(x)
    assert out.dtype == dtype
    assert c[0].dequantized_weight().dtype == dtype
    assert torch.equal(out, q(x))


def test_convert_warns_when_weight_fake_quant_is_switched_off():
    """A converted layer stores weight codes, so it quantizes its weight whether or not the QAT
    model's weight quantizer was switched off: after disable_fake_quant(model) the QAT model
    computed with float weights and convert gave a different (quantized) model without a word. It
    now warns naming the layers; switched-off input quantizers stay off in the converted model, so
    activations-only leaves the outputs equal and says nothing."""
    import warnings as w

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(8, 16)
    for which, differs in (("weights", True), ("all", True), ("activations", False)):
        q = qatkit.prepare_qat(m, qatkit.w8a8())
        q(x)
        qatkit.qat.disable_fake_quant(q, which)
        q.eval()
        with w.catch_warnings(record=True) as rec:
            w.simplefilter("always")
            c = qatkit.convert(q)
        msgs = [str(r.message) for r in rec if "weight fake quantization is switched off" in str(r.message)]
        with torch.no_grad():
            assert (not torch.equal(c(x), q(x))) == differs
        assert bool(msgs) == differs, (which, msgs)
        if differs:
            assert "2 layer(s) ('0', '2')" in msgs[0]
    qatkit.qat.enable_fake_quant(q)
    with w.catch_warnings():
        w.simplefilter("error", UserWarning)
        c = qatkit.convert(q)  # switched back on: no warning, the QAT model's outputs
    with torch.no_grad():
        assert torch.equal(c(x), q(x))
