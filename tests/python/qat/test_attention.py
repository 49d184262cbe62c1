"""QAT MultiheadAttention (issue 10 §2): the attention's four projections are quantized in every
mode PyTorch evaluates transformers in, including its fused fast paths' territory (eval + no_grad,
inference_mode), and stay quantized after convert."""

import contextlib
import copy
import dataclasses

import pytest
import torch
from torch import nn

import qatkit
from qatkit.qat import QuantMultiheadAttention
from qatkit.qat.config import LayerSpec, QATConfig, QuantSpec

# 3-bit per-channel weights, float activations: the quantized model is far from the float one,
# and its exact value is the float model carrying fake-quantized weights (an independent reference)
W3 = QATConfig(default=LayerSpec(weight=QuantSpec(bits=3, granularity="per_channel")), name="w3")


def _attention_inputs(m: nn.MultiheadAttention, L=4, S=5, N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    bf = m.batch_first

    def t(n, d):
        return torch.randn((N, n, d) if bf else (n, N, d), generator=g)

    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[0, -1] = True
    causal = torch.triu(torch.ones(L, S, dtype=torch.bool), 1)
    return t(L, m.embed_dim), t(S, m.kdim), t(S, m.vdim), kpm, causal


OPTIONS = [
    {},
    {"batch_first": True},
    {"bias": False},
    {"add_bias_kv": True, "add_zero_attn": True},
    {"kdim": 6, "vdim": 5},
]
CALLS = [
    {},
    {"need_weights": False},
    {"key_padding_mask": True},
    {"attn_mask": True, "need_weights": False},
    {"attn_mask": True, "key_padding_mask": True, "average_attn_weights": False},
    {"attn_mask": True, "is_causal": True, "need_weights": False},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("call", CALLS, ids=lambda c: ",".join(c) or "plain")
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_with_quantization_off_it_computes_what_nn_multiheadattention_computes(options, call, train):
    torch.manual_seed(0)
    m = nn.MultiheadAttention(8, 2, **options).train(train)
    q = QuantMultiheadAttention.from_float(m, qatkit.w8a8().default)
    qatkit.qat.disable_fake_quant(q)
    x, k, v, kpm, causal = _attention_inputs(m)
    kw = dict(call)
    kw["key_padding_mask"] = kpm if call.get("key_padding_mask") else None
    kw["attn_mask"] = causal if call.get("attn_mask") else None
    ref, ref_w = m(x, k, v, **kw)
    out, w = q(x, k, v, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert (w is None) == (ref_w is None)
    if w is not None:
        torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)


def test_unbatched_inputs_and_to_float_round_trip():
    torch.manual_seed(1)
    m = nn.MultiheadAttention(8, 2, add_bias_kv=True).eval()
    q = QuantMultiheadAttention.from_float(m, qatkit.w8a8().default)
    back = q.to_float().eval()
    x = torch.randn(4, 8)
    torch.testing.assert_close(back(x, x, x)[0], m(x, x, x)[0])
    qatkit.qat.disable_fake_quant(q)
    torch.testing.assert_close(q(x, x, x)[0], m(x, x, x)[0], rtol=1e-5, atol=1e-6)


def _encoder(batch_first=True):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()


def _weights_quantized_reference(float_model: nn.Module, qat_model: nn.Module) -> nn.Module:
    """The float model with every projection/linear weight replaced by its fake-quantized value."""
    out = copy.deepcopy(float_model)
    with torch.no_grad():
        for i, layer in enumerate(out.layers):
            qlayer = qat_model.layers[i]
            att = qlayer.self_attn
            ws = [p.quantized_weight() for _, p in att.projections()]
            layer.self_attn.in_proj_weight.copy_(torch.cat(ws[:3]))
            layer.self_attn.out_proj.weight.copy_(ws[3])
            layer.linear1.weight.copy_(qlayer.linear1.quantized_weight())
            layer.linear2.weight.copy_(qlayer.linear2.quantized_weight())
    return out


MODES = {
    "train": (True, contextlib.nullcontext),
    "eval": (False, contextlib.nullcontext),
    "eval+no_grad": (False, torch.no_grad),
    "inference_mode": (False, torch.inference_mode),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("padding", [False, True], ids=["dense", "padded"])
def test_transformer_projections_are_quantized_in_every_mode(mode, padding):
    fm = _encoder()
    qm = qatkit.prepare_qat(fm, W3)
    assert isinstance(qm.layers[0].self_attn, QuantMultiheadAttention)
    ref = _weights_quantized_reference(fm, qm)
    train, ctx = MODES[mode]
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2))
    kpm = torch.zeros(3, 5, dtype=torch.bool)
    if padding:
        kpm[0, 3:] = True  # the encoder's nested-tensor path needs a padding mask
    kw = {"src_key_padding_mask": kpm} if padding else {}
    for m in (fm, qm, ref):
        m.train(train)
    with ctx():
        out, want, fl = qm(x, **kw), ref(x, **kw), fm(x, **kw)
    if padding and not train:  # the fast path zeroes padded positions; compare the real tokens
        keep = ~kpm
        out, want, fl = out[keep], want[keep], fl[keep]
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    assert (out - fl).abs().max() > 1e-2, "the QAT model computed the float model"


@pytest.mark.parametrize("mode", list(MODES))
def test_converted_attention_equals_the_qat_model_in_every_mode(mode):
    fm = _encoder()
    qm = qatkit.prepare_qat(fm, qatkit.w8a8())
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(3))
    qatkit.qat.calibrate(qm, [x])
    cm = qatkit.convert(qm)
    assert isinstance(cm.layers[0].self_attn.q_proj, qatkit.qat.QuantizedLinear)
    assert isinstance(cm.layers[0].self_attn.out_proj, qatkit.qat.QuantizedLinear)
    train, ctx = MODES[mode]
    qm.eval()
    with torch.no_grad():
        want = qm(x)
    cm.train(train)
    with ctx():
        out = cm(x)
    assert torch.equal(out, want)


def test_prepare_qat_reports_the_attention_and_names_its_quantizers():
    fm = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    qm = qatkit.prepare_qat(fm, qatkit.w8a8())
    rows = {r["name"]: r for r in qm.qat_report}
    assert rows["self_attn"]["qat"] == "QuantMultiheadAttention" and rows["self_attn"]["weight"] != "float"
    assert "self_attn.out_proj" not in rows  # part of the attention, not a layer of its own
    names = {m.qualified_name for m in qm.modules() if isinstance(m, qatkit.qat.ActFakeQuantizer)}
    assert {"self_attn.q_proj.input_fake_quant", "self_attn.out_proj.input_fake_quant"} <= names


def test_a_skipped_attention_stays_float_and_the_fast_path_is_warned():
    fm = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    cfg = dataclasses.replace(qatkit.w8a8(), skip=("self_attn",))
    with pytest.warns(UserWarning, match="self_attn stays float.*fused fast path"):
        qm = qatkit.prepare_qat(fm, cfg)
    assert type(qm.self_attn) is nn.MultiheadAttention


def test_bitlinear_configs_give_the_attention_bitlinear_projections():
    fm = nn.MultiheadAttention(16, 2)
    qm = qatkit.prepare_qat(fm, dataclasses.replace(qatkit.bitnet_b158(), first_last=None))
    assert all(isinstance(p, qatkit.qat.BitLinear) for _, p in qm.projections())
