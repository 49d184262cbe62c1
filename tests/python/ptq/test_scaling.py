"""SmoothQuant and AWQ scaling (issue 11): function-preserving per-channel input scaling inside
QuantLinear, chosen per layer, carried through convert and state dicts."""

import pytest
import torch
from torch import nn

import qatkit
from qatkit.ptq import scaling as S
from qatkit.qat import QuantLinear
from qatkit.testing.models import TinyAttention


def sqnr(a, b):
    return float(10 * torch.log10(b.pow(2).mean() / (a - b).pow(2).mean()))


def test_smoothing_keeps_the_float_function_and_survives_convert_and_state_dicts():
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    q = QuantLinear.from_float(nn.Linear(8, 4), qatkit.w8a8().default)
    qatkit.qat.disable_fake_quant(q)
    y0 = q(x)
    q.set_smoothing(torch.rand(8) + 0.5)
    q.set_smoothing(torch.rand(8) + 0.5)  # composes
    torch.testing.assert_close(q(x), y0, rtol=1e-5, atol=1e-6)
    qatkit.qat.enable_fake_quant(q)
    q.train()
    q(x)
    q.eval()
    fresh = QuantLinear.from_float(nn.Linear(8, 4), qatkit.w8a8().default)
    fresh.load_state_dict(q.state_dict(), strict=True)
    fresh.eval()
    assert torch.equal(fresh(x), q(x))
    c = qatkit.convert(q)
    assert torch.equal(c(x), q(x)) and "smooth" in c.state_dict()
    c2 = qatkit.convert(fresh)
    c2.load_state_dict(c.state_dict(), strict=True)


@pytest.mark.parametrize("s", [torch.ones(7), torch.tensor([1.0] * 7 + [0.0]), torch.tensor([1.0] * 7 + [float("inf")])])
def test_bad_smoothing_is_refused(s):
    q = QuantLinear.from_float(nn.Linear(8, 4), qatkit.w8a8().default)
    with pytest.raises(ValueError, match="must hold 8 positive finite values"):
        q.set_smoothing(s)


@pytest.fixture(scope="module")
def outliers():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    x = torch.randn(2048, 64)
    x[:, :3] *= 40  # outlier input channels, as transformers' activations have
    return m, list(x[:1024].split(256)), x[1024:]


def test_smoothquant_rescues_w8a8_with_outlier_channels(outliers):
    m, calib, held = outliers
    kw = dict(verbose=False, progress=False)
    with torch.no_grad():
        plain = sqnr(qatkit.ptq(m, calib, qatkit.w8a8(), **kw)(held), m(held))
        q = qatkit.ptq(m, calib, qatkit.w8a8(), scaling="smoothquant", **kw)
        smooth = sqnr(q(held), m(held))
        assert smooth > plain + 3, (plain, smooth)
        assert torch.equal(qatkit.convert(q)(held), q(held))
    assert set(q.ptq_report["scaling_alpha"]) <= {"0", "2", "4"}


@pytest.mark.parametrize("scaling", ["smoothquant", "awq"])
def test_scaling_with_lsq_weights_starts_the_step_sizes_from_the_scaled_weights(outliers, scaling):
    """ptq(w4a4_lsq, scaling=...) multiplied the weights' columns by the scaling but kept the LSQ
    step sizes initialized from the unscaled weights: on this net 2.63 dB (smoothquant) and 3.80 dB
    (awq), below 9.61 dB without scaling (and a later fine-tune's first step re-initialized them).
    They now follow LSQ's formula on the weights they quantize, 2 mean|w| / sqrt(Q_P) per channel:
    10.41 / 11.26 dB."""
    import dataclasses
    import math

    m, calib, held = outliers
    kw = dict(verbose=False, progress=False)
    cfg = dataclasses.replace(qatkit.w4a4_lsq(), first_last=None)
    with torch.no_grad():
        plain = sqnr(qatkit.ptq(m, calib, cfg, **kw)(held), m(held))
        q = qatkit.ptq(m, calib, cfg, scaling=scaling, **kw)
        smooth = sqnr(q(held), m(held))
    assert q.ptq_report["scaling_alpha"]
    for name in q.ptq_report["scaling_alpha"]:
        layer = q.get_submodule(name)
        wfq = layer.weight_fake_quant
        want = (2 * layer.weight.detach().abs().mean(1) / math.sqrt(wfq.spec.quant_max)).clamp(min=1e-6)
        assert torch.allclose(wfq.scale.detach(), want, rtol=1e-6, atol=0), name
    assert smooth > plain, (plain, smooth)


def test_awq_lowers_the_output_error_of_a_layer_with_salient_channels():
    torch.manual_seed(1)
    lin = nn.Linear(128, 64)
    x = torch.randn(4096, 128)
    x[:, :4] *= 20  # salient input channels
    q = QuantLinear.from_float(lin, qatkit.int4_weight_only(32).default)
    st = S.LinearStats(1024)
    st.add(x[:2048])
    s, a = S.awq_scale(q, st)
    held = x[2048:]
    ref = lin(held)
    with torch.no_grad():
        before = sqnr(q(held), ref)
        q.set_smoothing(s)
        after = sqnr(q(held), ref)
    assert a is not None and after > before + 0.1, (before, after, a)  # modest on random weights


def test_scaling_needs_data_and_a_known_name(outliers):
    m, calib, _ = outliers
    with pytest.raises(ValueError, match="scaling='awq' needs calibration data"):
        qatkit.ptq(m, None, qatkit.int8_weight_only(), scaling="awq", verbose=False, progress=False)
    with pytest.raises(ValueError, match="scaling must be None, 'smoothquant' or 'awq'"):
        qatkit.ptq(m, calib, scaling="gptq", verbose=False, progress=False)


def test_layers_a_scaling_cannot_cover_are_named():
    # smoothquant on a weight-only preset, ternary layers and attention projections were passed
    # over without a word (scaling_alpha just lacked them)
    torch.manual_seed(0)
    m = TinyAttention().eval()
    data = [torch.randn(4, 6, 16) for _ in range(3)]
    kw = dict(correct_bias=None, verbose=False, progress=False)
    with pytest.warns(UserWarning, match=r"scaling='smoothquant' left 6 quantized Linear layer\(s\) unscaled: inp \(float activations"):
        q = qatkit.ptq(m, data, qatkit.int8_weight_only(), scaling="smoothquant", **kw)
    assert q.ptq_report["scaling_alpha"] == {}
    assert [n for n, _ in q.ptq_report["scaling_skipped"]] == ["inp", "out", "att.q_proj", "att.k_proj", "att.v_proj", "att.out_proj"]
    with pytest.warns(UserWarning, match=r"left 4 quantized Linear layer\(s\) unscaled: att.q_proj \(an attention projection"):
        q = qatkit.ptq(m, data, qatkit.int8_weight_only(), scaling="awq", **kw)
    assert set(q.ptq_report["scaling_alpha"]) <= {"inp", "out"}
