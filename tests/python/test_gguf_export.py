"""qatkit.export_gguf and QuantSpec.scale_dtype (issue 12): weights trained with float16 scales
export as GGUF Q8_0 / Q4_0 / TQ2_0 blocks that the gguf package's own reader and dequantizer
turn back into the converted layers' weights bit for bit; specs no block type holds exactly are
refused, never re-quantized."""

import os

import numpy as np
import pytest
import torch
from torch import nn

import qatkit
from qatkit.qat.config import LayerSpec, QATConfig, QuantSpec
from qatkit.qat.quantizers import round_scale

gguf = pytest.importorskip("gguf", reason="gguf is in scripts/requirements.txt; this environment lacks it")

SPECS = {
    "int8_g32": (QuantSpec(bits=8, granularity="per_group", group_size=32, scale_dtype="float16"), "Q8_0"),
    "int8_per_channel_narrow": (QuantSpec(bits=8, granularity="per_channel", narrow_range=True, scale_dtype="float16"),
                                "Q8_0"),
    "int8_per_tensor": (QuantSpec(bits=8, scale_dtype="float16"), "Q8_0"),
    "int4_g32": (QuantSpec(bits=4, granularity="per_group", group_size=32, scale_dtype="float16"), "Q4_0"),
    "int4_g128": (QuantSpec(bits=4, granularity="per_group", group_size=128, scale_dtype="float16"), "Q4_0"),
    "int3_per_channel": (QuantSpec(bits=3, granularity="per_channel", scale_dtype="float16"), "Q4_0"),
    "ternary_twn": (QuantSpec(kind="ternary", method="twn", granularity="per_channel", scale_dtype="float16"), "TQ2_0"),
    "ternary_absmean": (QuantSpec(kind="ternary", method="absmean", scale_dtype="float16"), "TQ2_0"),
    "binary": (QuantSpec(kind="binary", method="mean_abs", granularity="per_channel", scale_dtype="float16"), "TQ2_0"),
}


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 512), nn.GELU(), nn.LayerNorm(512),
                         nn.Linear(512, 16))


def _qat(spec, act=None, steps=3):
    q = qatkit.prepare_qat(_mlp(), QATConfig(default=LayerSpec(weight=spec, activation=act)))
    opt = torch.optim.SGD(q.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):  # a few QAT steps: the latent weights move, the fp16 scales follow
        loss = q(torch.randn(8, 256, generator=g)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return q


@pytest.mark.parametrize("name", list(SPECS))
def test_gguf_blocks_dequantize_to_the_converted_weights_bit_for_bit(name, tmp_path):
    spec, kind = SPECS[name]
    q = _qat(spec)
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(2))
    c = qatkit.convert(q).eval()
    with torch.no_grad():
        assert torch.equal(c(x), q.eval()(x))  # convert keeps the fp16-rounded scales exactly
    path = str(tmp_path / "m.gguf")
    rep = qatkit.export_gguf(q, path)  # a QAT model: converted on a copy
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    for i in (0, 2, 5):
        layer = c[i]
        t = tensors[f"{i}.weight"]
        assert t.tensor_type.name == kind == rep["tensors"][f"{i}.weight"]
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type)).reshape(layer.out_features, layer.in_features)
        assert torch.equal(torch.from_numpy(w), layer.dequantized_weight())
        assert torch.equal(torch.from_numpy(np.array(tensors[f"{i}.bias"].data)).reshape(-1), layer.bias)
        assert torch.equal(layer.weight_scale, layer.weight_scale.half().float())
    ln = c[4]
    assert torch.equal(torch.from_numpy(np.array(tensors["4.weight"].data)).reshape(-1), ln.weight.detach())
    # bytes per weight: Q8_0 34/32, Q4_0 18/32, TQ2_0 66/256
    per = {"Q8_0": 34 / 32, "Q4_0": 18 / 32, "TQ2_0": 66 / 256}[kind]
    assert int(tensors["2.weight"].n_bytes) == int(256 * 512 * per)
    assert os.path.getsize(path) < 4 * sum(p.numel() for p in _mlp().parameters())


def test_a_failed_gguf_export_leaves_the_file_that_was_there(tmp_path, monkeypatch):
    """export_gguf writes beside the file and moves it over once complete (serialization.replacing):
    a write that fails after the header (a full disk, simulated) leaves the old file as it was and
    no temporary."""
    spec, _ = next(iter(SPECS.values()))
    q = _qat(spec, steps=1)
    path = str(tmp_path / "m.gguf")
    qatkit.export_gguf(q, path)
    before = open(path, "rb").read()

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        qatkit.export_gguf(q, path)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["m.gguf"]


def test_specs_gguf_cannot_hold_exactly_are_refused(tmp_path):
    path = str(tmp_path / "m.gguf")
    fp32 = _qat(QuantSpec(bits=8, granularity="per_group", group_size=32), steps=0)
    with pytest.raises(ValueError, match="scale_dtype 'float32'"):
        qatkit.export_gguf(fp32, path)
    asym = _qat(QuantSpec(bits=4, symmetric=False, signed=False, granularity="per_group", group_size=32,
                          scale_dtype="float16"), steps=0)
    with pytest.raises(ValueError, match="zero points|signed symmetric"):
        qatkit.export_gguf(asym, path)
    odd = qatkit.prepare_qat(nn.Sequential(nn.Linear(48, 8)), QATConfig(default=LayerSpec(
        weight=QuantSpec(bits=8, granularity="per_channel", scale_dtype="float16"), activation=None)))
    with pytest.raises(ValueError, match="divisible by 32, got 48"):
        qatkit.export_gguf(odd, path)
    tern = qatkit.prepare_qat(nn.Sequential(nn.Linear(64, 8)), QATConfig(default=LayerSpec(
        weight=QuantSpec(kind="ternary", granularity="per_channel", scale_dtype="float16"), activation=None)))
    with pytest.raises(ValueError, match="TQ2_0 needs in_features divisible by 256"):
        qatkit.export_gguf(tern, path)
    w8a8 = _qat(QuantSpec(bits=8, granularity="per_channel", scale_dtype="float16"),
                act=QuantSpec(bits=8, symmetric=False), steps=1)
    with pytest.raises(ValueError, match="input quantizer .* GGUF holds weights only"):
        qatkit.export_gguf(w8a8, path)
    with pytest.warns(UserWarning, match="weights only"):
        rep = qatkit.export_gguf(w8a8, path, weights_only=True)
    assert len(rep["dropped"]) == 3
    conv = qatkit.prepare_qat(nn.Sequential(nn.Conv2d(1, 4, 3)), QATConfig(default=LayerSpec(
        weight=QuantSpec(bits=8, granularity="per_channel", scale_dtype="float16"), activation=None)))
    with pytest.raises(ValueError, match="writes Linear layers"):
        qatkit.export_gguf(conv, path)
    with pytest.raises(TypeError, match="nn.Module"):
        qatkit.export_gguf("model", path)
    with pytest.raises(TypeError, match="export_gguf: path must be a str or os.PathLike, got int"):
        qatkit.export_gguf(w8a8, 5, weights_only=True)
    with pytest.raises(IsADirectoryError, match="export_gguf: path .* is a directory"):
        qatkit.export_gguf(w8a8, os.path.dirname(path), weights_only=True)


def test_scale_dtype_rounds_weight_scales_and_is_refused_where_it_does_not_apply():
    s = torch.tensor([1e-9, 3e-5, 0.1, 1e6, 0.0])
    r16 = round_scale(s, "float16")  # below fp16's smallest subnormal -> it; subnormals kept; overflow -> max
    assert torch.equal(r16, torch.tensor([2.0**-24, 3e-5, 0.1, 65504.0, 0.0]).half().float())
    rbf = round_scale(s, "bfloat16")
    assert torch.equal(rbf[:4], s[:4].bfloat16().float()) and rbf[4] == 0
    assert torch.equal(round_scale(s, "float32"), s)
    with pytest.raises(ValueError, match="scale_dtype must be one of"):
        QuantSpec(scale_dtype="float8")
    with pytest.raises(ValueError, match="learned"):
        QuantSpec(bits=4, scale="learned", scale_dtype="float16")
    with pytest.raises(ValueError, match="activation scales stay float32"):
        qatkit.prepare_qat(nn.Sequential(nn.Linear(8, 4)), QATConfig(default=LayerSpec(
            weight=QuantSpec(bits=8), activation=QuantSpec(bits=8, symmetric=False, scale_dtype="float16"))))
    # bfloat16 scales: QAT and convert agree bit for bit, scales representable
    q = _qat(QuantSpec(bits=4, granularity="per_group", group_size=32, scale_dtype="bfloat16"), steps=1)
    c = qatkit.convert(q).eval()
    x = torch.randn(3, 256)
    with torch.no_grad():
        assert torch.equal(c(x), q.eval()(x))
    assert torch.equal(c[0].weight_scale, c[0].weight_scale.bfloat16().float())


def test_checkpoints_written_before_scale_dtype_still_load():
    """A quantizer state saved without the scale_dtype field (older qatkit) loads into a float32
    spec; one saved with float16 refuses a float32 model, naming the field."""
    import json

    from qatkit.qat.quantizers import _decode_extra, _encode_extra

    q = _qat(QuantSpec(bits=8, granularity="per_channel"), steps=0)
    sd = q.state_dict()
    key = "0.weight_fake_quant._extra_state"
    extra = _decode_extra(sd[key], key)
    extra["spec"].pop("scale_dtype")
    sd[key] = _encode_extra(extra)
    q.load_state_dict(sd)
    q16 = _qat(QuantSpec(bits=8, granularity="per_channel", scale_dtype="float16"), steps=0)
    with pytest.raises(ValueError, match="scale_dtype"):
        q.load_state_dict(q16.state_dict())
    assert json.loads(json.dumps(extra))  # the state is plain JSON
