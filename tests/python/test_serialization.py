"""Exported model files (issue 12, docs/format.md): every preset exports, reloads through
qatkit.load and qatkit.load_into, and computes the converted model's outputs bit for bit; the
file's size follows from the packing; corrupt or foreign files raise ValueError naming what is
wrong."""

import copy
import dataclasses
import json
import os
import struct
import sys
import time
import warnings

import pytest
import torch
from torch import nn

import qatkit
from qatkit import serialization as S

PRESETS = ["w8a8", "w4a8", "w4a4_lsq", "ternary_twn", "bitnet_b158", "binary_w1a8", "xnor_w1a1", "binaryconnect",
           "int8_weight_only", "int4_weight_only", "ternary_weight_only", "binary_weight_only"]


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10),
    ).eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 1, 8, 8, generator=g)


def _ptq(model, data, cfg, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qatkit.ptq(model, list(data.split(16)), cfg, verbose=False, progress=False, **kw)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_reloads_to_the_converted_outputs_bit_for_bit(preset, data, tmp_path):
    m = small_cnn()
    q = _ptq(m, data, qatkit.preset(preset), correct_bias=None)
    c = qatkit.convert(q).eval()
    path = str(tmp_path / "m.safetensors")
    header = qatkit.export(q, path)  # a QAT-stage model: converted on a copy
    assert header["format_version"] == 1 and len(header["layers"]) >= 2
    with torch.no_grad():
        want = c(data)
        back = qatkit.load_into(m, path, compute="float")
        assert torch.equal(back(data), want)
        assert header["structure"] is not None
        loaded = qatkit.load(path, compute="float")
        assert torch.equal(loaded(data), want)
        # the default: layers an integer kernel runs compute on it (the converted model's integer
        # form, bit for bit); the rest keep float math, each named in the report
        loaded_int = qatkit.load(path)
        c_int = qatkit.convert(q).eval()
        rep = qatkit.qat.set_compute(c_int, "integer", warn=False, kernels_only=True)
        assert torch.equal(loaded_int(data), c_int(data))
        assert [(f, r) for _, f, r in loaded_int.compute_report] == [(f, r) for _, f, r in rep]
        assert all(f is not None or r for _, f, r in rep)
    packed = [mod for mod in loaded.modules() if isinstance(mod, S._Packed)]
    assert len(packed) == len(header["layers"])
    # the packed bytes are the layer's state; the unpacked codes are not saved twice
    for mod in packed:
        if mod.weight_packed is not None:
            assert "weight_int" not in mod.state_dict() and "weight_packed" in mod.state_dict()


def test_stored_ptq_choices_survive_gptq_asymmetric_groups_and_smoothing(data, tmp_path):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    runs = [
        (qatkit.int4_weight_only(32, symmetric=False), dict(rounding="gptq")),
        (qatkit.w8a8(), dict(scaling="smoothquant")),
        (qatkit.ternary_weight_only(), dict(threshold_search=True)),
    ]
    for cfg, kw in runs:
        q = _ptq(mlp, data, cfg, **kw)
        c = qatkit.convert(q).eval()
        path = str(tmp_path / "p.safetensors")
        header = qatkit.export(c, path)
        back = qatkit.load(path, compute="float")
        with torch.no_grad():
            assert torch.equal(back(data), c(data)), kw
        if not cfg.default.weight.symmetric:  # per-group zero points stored as int8
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                assert f.get_tensor("1.weight_zero_point").dtype == torch.int8
        if "scaling" in kw:
            assert any(mod.smooth is not None for mod in back.modules() if isinstance(mod, S.PackedLinear))
        assert header["layers"]["1"]["weight"]["packing"] in ("offset", "sign", "base3")


def _quantized_bytes(path, names):
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()
                   if k.split(".")[0] in names and ".input_fake_quant." not in k)


@pytest.mark.parametrize("preset,base3,bound", [
    ("int8_weight_only", False, 0.26), ("int4_weight_only", False, 0.14), ("ternary_weight_only", False, 0.07),
    ("ternary_weight_only", True, 0.06), ("binary_weight_only", False, 0.04),
])
def test_file_bytes_of_the_quantized_layers_meet_the_size_targets(preset, base3, bound, data, tmp_path):
    # layers with K >= 256 (the size targets); int4 at group size 128
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 256))
    cfg = qatkit.int4_weight_only(128) if preset == "int4_weight_only" else qatkit.preset(preset)
    q = _ptq(mlp, data, cfg, correct_bias=None)
    path = str(tmp_path / "s.safetensors")
    qatkit.export(q, path, base3=base3)
    names = {"3", "5"}  # K = 512
    fp32 = sum(mlp[int(n)].weight.numel() * 4 + mlp[int(n)].bias.numel() * 4 for n in names)
    ratio = _quantized_bytes(path, names) / fp32
    assert ratio <= bound, ratio


def _export_small(tmp_path, data):
    m = small_cnn()
    q = _ptq(m, data, qatkit.w4a8(), correct_bias=None)
    path = str(tmp_path / "ok.safetensors")
    qatkit.export(q, path)
    return m, path


def test_a_failed_export_leaves_the_file_that_was_there(data, tmp_path, monkeypatch):
    """export writes beside the file and moves the result over it once complete: a write that fails
    halfway (here a full disk, simulated after half the bytes) used to leave a truncated file where
    a good one was. The old file stays byte for byte, no temporary is left, and the error is the
    writer's. A symlink is written through, and the file's mode kept."""
    import safetensors.torch

    m, path = _export_small(tmp_path, data)
    q = _ptq(m, data, qatkit.w8a8(), correct_bias=None)
    before = open(path, "rb").read()
    real_save = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        qatkit.export(q, path)
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["ok.safetensors"]
    os.chmod(path, 0o640)
    os.symlink("ok.safetensors", tmp_path / "link.safetensors")
    qatkit.export(q, str(tmp_path / "link.safetensors"))
    assert os.path.islink(tmp_path / "link.safetensors") and open(path, "rb").read() != before
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["link.safetensors", "ok.safetensors"]
    qatkit.load(path)
    old = os.umask(0o027)  # a new file: 0666 less the umask, as the writer alone made it
    try:
        qatkit.export(q, str(tmp_path / "new.safetensors"))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "new.safetensors").st_mode & 0o777 == 0o640


def _rewrite_header(path, out, edit):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8 : 8 + n])
    meta = json.loads(head["__metadata__"]["qatkit"])
    edit(meta, head)
    head["__metadata__"]["qatkit"] = json.dumps(meta)
    blob = json.dumps(head).encode()
    blob += b" " * (-len(blob) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def test_corrupt_and_foreign_files_raise_value_errors_naming_the_problem(data, tmp_path):
    m, path = _export_small(tmp_path, data)
    raw = open(path, "rb").read()
    bad = str(tmp_path / "bad.safetensors")

    def expect(msg, loader=qatkit.load):
        with pytest.raises(ValueError, match=msg):
            loader(bad)
        with pytest.raises(ValueError, match=msg):
            qatkit.load_into(m, bad)

    open(bad, "wb").write(raw[: len(raw) // 2])  # truncated
    expect("cannot read")
    open(bad, "wb").write(struct.pack("<Q", 2**40) + raw[8:])  # header length past the end
    expect("cannot read")
    open(bad, "wb").write(b"")
    expect("cannot read")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, bad)  # a safetensors file of someone else
    expect("no qatkit header")
    layer = next(iter(S.read_header(path)["layers"]))
    cases = [
        (lambda meta, head: meta.update(format_version=99), "format version 99"),
        (lambda meta, head: meta["layers"][layer]["weight"].update(bits=3), "does not match the spec"),
        (lambda meta, head: meta["layers"][layer]["weight"].update(k=7), "rows x k"),
        (lambda meta, head: meta["layers"][layer].update(type="lstm"), "type must be one of"),
        (lambda meta, head: meta["layers"][layer]["weight"]["spec"].update(bits=99), "bad weight spec"),
        (lambda meta, head: meta.update(float_tensors=meta["float_tensors"] + ["ghost.weight"]), "unexpected"),
        (lambda meta, head: meta.update(layers="x"), "needs 'layers'"),
    ]
    for edit, msg in cases:
        _rewrite_header(path, bad, edit)
        expect(msg)
    # a NaN scale inside the data
    from safetensors.torch import load_file

    tensors = load_file(path)
    tensors[f"{layer}.weight_scale"][0] = float("nan")
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    save_file(tensors, bad, metadata=meta)
    expect("weight_scale must be finite and positive")
    # not a path: TypeError (it said "123 is not a file"); a directory: ValueError
    for loader in (qatkit.load, lambda p: qatkit.load_into(m, p)):
        with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
            loader(123)
        with pytest.raises(ValueError, match="is not a file"):
            loader(str(tmp_path))
    # a truthy string flag would turn the option on
    with pytest.raises(TypeError, match="load_into: inplace must be True or False, got 'no'"):
        qatkit.load_into(m, path, inplace="no")
    with pytest.raises(TypeError, match="export: base3 must be True or False, got 'no'"):
        qatkit.export(m, bad, base3="no")
    # the path: named with the writer, before any work (safetensors said "argument 'filename'" or
    # raised its own SafetensorError for a missing directory)
    with pytest.raises(TypeError, match="export: path must be a str or os.PathLike, got int"):
        qatkit.export(m, 123)
    with pytest.raises(FileNotFoundError, match="export: the directory of path .* does not exist"):
        qatkit.export(m, str(tmp_path / "no" / "such" / "m.safetensors"))
    with pytest.raises(IsADirectoryError, match="export: path .* is a directory"):
        qatkit.export(m, str(tmp_path))


def test_load_refuses_custom_forwards_and_load_into_refuses_other_architectures(data, tmp_path):
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 32), nn.Linear(32, 10)

        def forward(self, x):
            return self.b(torch.relu(self.a(x.flatten(1))))

    torch.manual_seed(0)
    model = Custom().eval()
    q = _ptq(model, data, qatkit.w8a8(), correct_bias=None)
    path = str(tmp_path / "c.safetensors")
    assert qatkit.export(q, path)["structure"] is None
    with pytest.raises(ValueError, match="the model is a Custom, which qatkit.load does not rebuild.*qatkit.load_into"):
        qatkit.load(path)
    back = qatkit.load_into(Custom(), path)
    with torch.no_grad():
        assert torch.equal(back(data), qatkit.convert(q, integer=True).eval()(data))  # both Linears on the kernel
    other = Custom()
    other.b = nn.Linear(32, 11)
    with pytest.raises(ValueError, match="layer 'b': the file's weight is"):
        qatkit.load_into(other, path)
    with pytest.raises(ValueError, match="does not have"):
        qatkit.load_into(nn.Sequential(nn.Linear(64, 10)), path)
    with pytest.raises(ValueError, match="no quantized layer"):
        qatkit.export(nn.Sequential(nn.Linear(2, 2)), path)
    with pytest.raises(TypeError, match="must be an nn.Module"):
        qatkit.export("model", path)


@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "int8_weight_only"])
def test_activations_pooling_and_float_embeddings_reload_with_their_arguments(preset, tmp_path):
    """Every activation, pooling and float module qatkit.load rebuilds, with non-default
    arguments (qatkit.testing.models.leaf_zoo): the loaded model computes the converted model's
    function bit for bit. Before 2026-12-05 an AvgPool2d's divisor_override and a float
    Embedding's max_norm were dropped (silently other outputs), and ReLU6 / LeakyReLU / PReLU /
    ELU / Hardtanh / Hardswish / Hardsigmoid / Mish / Softmax / LogSoftmax were refused."""
    from qatkit.testing.models import leaf_zoo

    for name, model, x, xt in leaf_zoo():
        cfg = dataclasses.replace(getattr(qatkit, preset)(), first_last=None)
        q = _ptq(model, x, cfg)
        path = str(tmp_path / f"{name}.safetensors")
        header = qatkit.export(q, path)
        assert header["structure"] is not None and "structure_gap" not in header, name
        with torch.no_grad():
            want = qatkit.convert(copy.deepcopy(q)).eval()(xt)
            want_int = qatkit.convert(copy.deepcopy(q), integer=True).eval()(xt)
            assert torch.equal(qatkit.load(path, compute="float")(xt), want), name
            assert torch.equal(qatkit.load(path)(xt), want_int), name
        back = qatkit.load(path)
        floats = [m for m in back.modules() if type(m) in (nn.AvgPool2d, nn.Embedding, nn.MaxPool2d)]
        for m in floats:  # the arguments themselves, not only outputs that happen to agree
            orig = next(o for o in model.modules() if type(o) is type(m))
            for k in ("divisor_override", "max_norm", "norm_type", "ceil_mode", "padding_idx"):
                assert getattr(m, k, None) == getattr(orig, k, None), (name, k)


def test_load_names_the_first_module_it_cannot_rebuild(tmp_path):
    """A Sequential holding a module load does not rebuild (or one whose arguments it cannot
    carry) exports; load refuses it naming that module and pointing at load_into, which loads it."""
    cases = [(nn.Softsign(), "module '1' is a Softsign, which qatkit.load does not rebuild"),
             (nn.Softmax(), r"module '1' is a Softmax with dim=None \(the implicit dim depends on the input rank\)"),
             (nn.Sequential(nn.ReLU(), nn.Unflatten(1, (1, 4, 4)), nn.AdaptiveAvgPool2d((None, 4)), nn.Flatten()),
              r"module '1.2' is a AdaptiveAvgPool2d with output_size=\(None, 4\)")]
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    for mid, msg in cases:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), mid, nn.Linear(16, 4)).eval()
        q = _ptq(model, x, dataclasses.replace(qatkit.w8a8(), first_last=None))
        path = str(tmp_path / "m.safetensors")
        header = qatkit.export(q, path)
        assert header["structure"] is None
        with pytest.raises(ValueError, match=msg + ".*qatkit.load_into"):
            qatkit.load(path)
        fresh = copy.deepcopy(model)
        with torch.no_grad():
            assert torch.equal(qatkit.load_into(fresh, path)(x), qatkit.convert(q, integer=True).eval()(x))


def _shared_modules_net():
    """A Sequential that uses one Tanh at two places and one Linear at two places."""
    torch.manual_seed(0)
    act, shared = nn.Tanh(), nn.Linear(16, 16)
    return nn.Sequential(nn.Linear(8, 16), act, shared, act, shared, nn.ReLU(), nn.Linear(16, 4)).eval()


@pytest.mark.parametrize("preset", ["w8a8", "int8_weight_only"])
def test_a_module_used_at_two_places_is_exported_and_loaded_at_both(preset, tmp_path):
    """A module used twice in a Sequential (one activation object, or one layer applied twice):
    export's structure skipped the second place (named_children() yields a module once), so
    qatkit.load rebuilt a model without it and computed another function, silently (a shared
    Tanh: outputs off by 0.024); a shared quantized layer's aliased tensors were stored as float
    tensors too, so neither load nor load_into could read the file. Now both places load as the
    same module, load_into replaces every place, and export_onnx emits the module at each."""
    net = _shared_modules_net()
    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    q = _ptq(net, x, dataclasses.replace(qatkit.preset(preset), first_last=None))
    assert q[2] is q[4]
    path = str(tmp_path / "shared.safetensors")
    header = qatkit.export(q, path)
    assert list(header["layers"]) == ["0", "2", "6"] and not header["float_tensors"]
    with torch.no_grad():
        want = qatkit.convert(copy.deepcopy(q)).eval()(x)
        want_int = qatkit.convert(copy.deepcopy(q), integer=True).eval()(x)
        back = qatkit.load(path, compute="float")
        assert list(back._modules) == [str(i) for i in range(7)]
        assert type(back[3]) is nn.Tanh and back[2] is back[4]  # (a stateless leaf is rebuilt at each place)
        assert torch.equal(back(x), want)
        assert torch.equal(qatkit.load(path)(x), want_int)
        into = qatkit.load_into(_shared_modules_net(), path)
        assert into[2] is into[4] and torch.equal(into(x), want_int)


@pytest.mark.parametrize("preset", ["w4a8", "bitnet_b158"])
def test_loaded_float_layers_sit_on_64_byte_boundaries_and_give_the_converted_bits(preset, tmp_path):
    """The float tensors load() assigns come from the file's buffer, where safetensors' layout puts
    them anywhere; MKL's sgemm takes another path for a misaligned weight, so a float Linear (a
    first / last layer kept float) gave other bits than the converted model's at one row (1 ulp,
    4 of 120 random models on Zen 4). Matrices off a 64-byte boundary are copied onto one (vectors and
    embedding tables give the same bits anywhere and stay: MiniLM's 47 MB table would cost 50 ms)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(3, 4, 1, padding=1), nn.ReLU6(), nn.MaxPool1d(2, ceil_mode=True),
                        nn.Conv1d(4, 8, 3, padding=1), nn.Hardtanh(-0.5, 1.9), nn.Conv1d(8, 8, 1, padding=1), nn.Mish(),
                        nn.AdaptiveAvgPool1d(2), nn.Flatten(), nn.LayerNorm(16), nn.Linear(16, 8)).eval()
    x = torch.randn(4, 3, 17, generator=torch.Generator().manual_seed(1))
    q = _ptq(net, x, dataclasses.replace(qatkit.preset(preset), first_last="float"))
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    back = qatkit.load(path, compute="float")
    header = S.read_header(path)
    floats = dict(back.state_dict(keep_vars=True))
    mats = [k for k in header["float_tensors"] if floats[k].dim() >= 2]
    assert mats  # the float convs' and Linear's weights (vectors are elementwise operands: left where they are)
    for k in mats:
        assert floats[k].data_ptr() % 64 == 0, k
    c = qatkit.convert(q).eval()
    with torch.no_grad():
        for n in (1, 2, 3, 5):
            xt = torch.randn(n, 3, 17, generator=torch.Generator().manual_seed(n))
            assert torch.equal(back(xt), c(xt)), n


def test_a_compiled_or_data_parallel_model_exports_under_its_own_names(tmp_path):
    """torch.compile (which the QAT docs recommend) wraps the model in an OptimizedModule whose
    names start with '_orig_mod.', DataParallel / DDP in one whose names start with 'module.'.
    export wrote those names, so the file fit no model: load refused the wrapper and load_into the
    float model ("holds layer '_orig_mod.0', which the model does not have"). The exporters write the
    wrapped model now."""
    onnx = pytest.importorskip("onnx", reason="onnx is in scripts/requirements.txt; this environment lacks it")

    torch.manual_seed(0)

    def float_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))

    q = qatkit.prepare_qat(float_model(), dataclasses.replace(qatkit.w8a8(), first_last=None))
    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    q(x)
    q.eval()
    with torch.no_grad():
        want = qatkit.convert(copy.deepcopy(q), integer=True)(x)
    for wrapped in (torch.compile(q), nn.DataParallel(q), torch.compile(nn.DataParallel(q))):
        path = str(tmp_path / "m.safetensors")
        header = qatkit.export(wrapped, path)
        assert list(header["layers"]) == ["0", "2", "4"] and header["structure"] is not None
        with torch.no_grad():
            assert torch.equal(qatkit.load(path)(x), want)
            assert torch.equal(qatkit.load_into(float_model(), path)(x), want)
        qatkit.export_onnx(wrapped, x[:1], str(tmp_path / "m.onnx"))
        assert not any(i.name.startswith(("_orig_mod", "module.")) for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer)


def _oversized_files(tmp_path, n=2**26):
    """Files whose header names a size the file's tensors do not have: an unfolded BatchNorm1d
    with num_features = n, and a packed Linear whose in_features and weight shape say n (its
    packed bytes hold 8). Built as the header asks, the BatchNorm alone would allocate 4 x 4n bytes
    and a C++ QuantLinear a float weight of 32n bytes before any check."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    q = _ptq(model, torch.randn(16, 8), dataclasses.replace(qatkit.w8a8(), first_last=None))
    good = str(tmp_path / "good.safetensors")
    header = qatkit.export(q, good)
    tensors = load_file(good)
    bn, lin = copy.deepcopy(header), copy.deepcopy(header)
    assert bn["structure"]["children"][0][1]["type"] == "BatchNorm1d"
    bn["structure"]["children"][0][1]["args"]["num_features"] = n
    w = lin["layers"]["1"]["weight"]
    lin["layers"]["1"]["params"]["in_features"], w["shape"], w["k"] = n, [8, n], n
    out = []
    for name, h in (("bn", bn), ("linear", lin)):
        path = str(tmp_path / f"{name}.safetensors")
        save_file(tensors, path, metadata={S.META_KEY: json.dumps(h)})
        out.append(path)
    return out


def test_a_size_in_a_corrupt_header_is_refused_before_it_allocates(tmp_path):
    """A corrupt file never takes the process down: a header size the tensors do not back (here
    2^26 features, 1 GiB of BatchNorm buffers) is refused with a ValueError before anything of that
    size is allocated (the loader builds float modules on the meta device and assigns the file's
    checked tensors). Before 2026-12-05 the BatchNorm was allocated first: 16 GiB and 21 s for
    2^30 on this 24 GiB machine. Measured in a fresh process: its peak RSS (VmHWM, its own address
    space; ru_maxrss would keep the RSS of the pytest process it was forked from) stays near the
    import's."""
    import subprocess

    paths = _oversized_files(tmp_path)
    code = (
        "import sys, qatkit\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        qatkit.load(p)\n"
        "        print('LOADED', p)\n"
        "    except ValueError as e:\n"
        "        print('REFUSED', e)\n"
        "hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')][0]\n"
        "print('RSS_MB', int(hwm) // 1024)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert sum(line.startswith("REFUSED") for line in lines) == 2, r.stdout
    assert "size mismatch for 0.weight" in r.stdout and "weight_packed must be [8, 67108864], got [8, 8]" in r.stdout
    rss = int(lines[-1].split()[1])
    assert rss < 900, f"peak RSS {rss} MB: something of the header's size was allocated"


def test_the_dtype_a_model_computes_in_survives(data, tmp_path):
    m = small_cnn().double()
    q = _ptq(m, data.double(), qatkit.w8a8(), correct_bias=None)
    c = qatkit.convert(q).eval()
    path = str(tmp_path / "d.safetensors")
    qatkit.export(c, path)
    back = qatkit.load(path)
    with torch.no_grad():
        out = back(data.double())
        assert out.dtype == torch.float64 and torch.equal(out, c(data.double()))


@pytest.mark.parametrize("arch", ["MLP", "CNN", "DSCNN"])
@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "ternary_twn", "xnor_w1a1"])
def test_the_repo_digits_models_export_and_load_as_sequentials(arch, preset, tmp_path):
    """scripts/qat_models.py's digits models (custom forwards) through their as_sequential() form:
    qatkit.load rebuilds them and matches convert bit for bit."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("qat_models", os.path.join(root, "scripts", "qat_models.py"))
    qm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qm)
    torch.manual_seed(0)
    model = getattr(qm, arch)().eval()
    seq = model.as_sequential().eval()
    x = torch.randn(24, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(seq(x), model(x))  # the same function
    q = _ptq(seq, x, qatkit.preset(preset), correct_bias=None)
    path = str(tmp_path / f"{arch}.safetensors")
    header = qatkit.export(q, path)
    assert header["structure"] is not None
    with torch.no_grad():
        assert torch.equal(qatkit.load(path, compute="float")(x), qatkit.convert(q).eval()(x))


def test_a_short_fuzz_run_of_the_loader_finds_nothing(tmp_path):
    """scripts/fuzz_load.py (byte flips, truncations, header edits of exported files) for 1,500
    inputs through qatkit.load and qatkit.load_into: only ValueError, or a model that loads."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, os.path.join(root, "scripts", "fuzz_load.py"), "--inputs", "1500", "--seed", "1"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and "0 other exceptions" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("scale_dtype,bound", [("float16", 0.07), ("bfloat16", 0.07), ("float32", 0.0701)])
def test_scales_are_stored_in_the_spec_scale_dtype(scale_dtype, bound, tmp_path):
    """QuantSpec.scale_dtype: the file holds the scales in that dtype (exactly the values the fake
    quant used), which brings ternary K = 256 layers under 0.07 of their fp32 bytes; reloads are
    bit for bit."""
    from safetensors.torch import load_file

    from qatkit.qat.config import LayerSpec, QATConfig, QuantSpec

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    spec = QuantSpec(kind="ternary", method="twn", granularity="per_channel", scale_dtype=scale_dtype)
    q = qatkit.prepare_qat(m, QATConfig(default=LayerSpec(weight=spec, activation=None)))
    path = str(tmp_path / "t.safetensors")
    header = qatkit.export(q, path)
    assert header["layers"]["2"]["weight"]["scale_dtype"] == scale_dtype
    t = load_file(path)
    assert t["2.weight_scale"].dtype == getattr(torch, scale_dtype)
    ratio = sum(v.numel() * v.element_size() for k, v in t.items() if k.startswith("2.")) / ((256 * 256 + 256) * 4)
    assert ratio <= bound
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.equal(qatkit.load(path, compute="float")(x), qatkit.convert(q).eval()(x))


def test_loaded_linear_layers_run_on_the_int8_kernel_by_default(data, tmp_path):
    """A W8A8 MLP loads onto ops.linear_int8 (integer compute, bit for bit the converted model's
    integer form); compute='float' restores the QAT function; a bad compute names itself."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 10))
    q = _ptq(mlp, data, qatkit.w8a8())
    path = str(tmp_path / "w8a8.safetensors")
    qatkit.export(q, path)
    loaded = qatkit.load(path)
    from qatkit.qat import integer

    lin = [m for m in loaded.modules() if isinstance(m, S.PackedLinear)]
    assert len(lin) == 3 and all(integer.kernel_for(m) == "linear_int8" for m in lin)
    with torch.no_grad():
        assert torch.equal(loaded(data), qatkit.convert(q, integer=True)(data))
        assert torch.equal(qatkit.load(path, compute="float")(data), qatkit.convert(q)(data))
    with pytest.raises(ValueError, match="compute must be 'integer' or 'float'"):
        qatkit.load(path, compute="int8")


def test_a_loaded_model_given_another_state_dict_computes_with_the_new_codes(data, tmp_path):
    """The kernel plans (packed operands bound at a layer's first call) are rebuilt when
    load_state_dict replaces the codes; repeated calls (the direct path to the bound kernel) keep
    the converted model's integer outputs bit for bit."""
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))
    paths, convs = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        for m in mlp.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        q = _ptq(mlp, data, qatkit.w8a8())
        paths.append(str(tmp_path / f"m{seed}.safetensors"))
        qatkit.export(q, paths[-1])
        convs.append(qatkit.convert(q, integer=True))
    loaded = qatkit.load(paths[0])
    with torch.no_grad():
        want0, want1 = convs[0](data), convs[1](data)
        assert not torch.equal(want0, want1)
        for _ in range(3):  # the first call builds the plans; the later ones call the bound kernels
            assert torch.equal(loaded(data), want0)
        loaded.load_state_dict(qatkit.load(paths[1]).state_dict())
        for _ in range(2):
            assert torch.equal(loaded(data), want1)


@pytest.mark.parametrize("preset", ["w8a8", "int4_weight_only"])
def test_a_loaded_model_compiles_and_exports_to_its_kernel_ops(data, tmp_path, preset):
    """torch.compile (fullgraph) and torch.export of a loaded model, after eager calls have bound its
    kernels, trace the qatkit ops (the eager path calls their C++ entries directly) and give the
    eager outputs bit for bit."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))
    q = _ptq(mlp, data, qatkit.preset(preset))
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    loaded = qatkit.load(path)
    kernel = "linear_int8" if preset == "w8a8" else "linear_w4_weight_only"
    with torch.no_grad():
        want = loaded(data)
        assert torch.equal(loaded(data), want)
        assert torch.equal(torch.compile(loaded, fullgraph=True)(data), want)
        ep = torch.export.export(loaded, (data,))
        assert torch.equal(ep.module()(data), want)
    ops_ = [str(n.target) for n in ep.graph.nodes if n.op == "call_function" and "qatkit" in str(n.target)]
    assert ops_ == [f"qatkit.{kernel}.default"] * 2


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_a_loaded_cnn_compiles_and_exports_to_its_conv_ops(tmp_path):
    """torch.compile (fullgraph) and torch.export of loaded w4a8 convs in every padding form the
    kernels take ('same' odd and even, reflect, Conv1d's bound 1 x k form) trace conv2d_int8 /
    conv2d_w4a8 and give the eager outputs bit for bit."""
    torch.manual_seed(0)
    nets = [(nn.Sequential(nn.Conv2d(8, 32, 3, padding="same"), nn.ReLU(), nn.Conv2d(32, 32, 2, padding="same"),
                           nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Flatten(),
                           nn.Linear(32 * 36, 5)), torch.randn(4, 8, 6, 6), ["conv2d_int8"] + ["conv2d_w4a8"] * 2),
            (nn.Sequential(nn.Conv1d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 32, 4, padding="same"),
                           nn.Flatten(), nn.Linear(32 * 10, 5)), torch.randn(4, 8, 10), ["conv2d_int8", "conv2d_w4a8"])]
    for i, (net, x, convs) in enumerate(nets):
        q = _ptq(net.eval(), x, qatkit.preset("w4a8"))
        path = str(tmp_path / f"c{i}.safetensors")
        qatkit.export(q, path)
        loaded = qatkit.load(path)
        with torch.no_grad():
            want = loaded(x)
            assert torch.equal(loaded(x), want)  # the bound kernels
            assert torch.equal(torch.compile(loaded, fullgraph=True)(x), want)
            ep = torch.export.export(loaded, (x,))
            assert torch.equal(ep.module()(x), want)
        ops_ = [str(n.target) for n in ep.graph.nodes if n.op == "call_function" and "qatkit" in str(n.target)]
        assert ops_ == [f"qatkit.{k}.default" for k in convs] + ["qatkit.linear_int8.default"], ops_


@pytest.mark.parametrize("preset", ["int8_weight_only", "int4_weight_only", "ternary_weight_only", "binary_weight_only"])
def test_a_loaded_weight_only_cnn_compiles_with_fullgraph(tmp_path, preset):
    """Weight-only convs compute in float with their dequantized weight, which first checked the
    packed bytes' version (an in-place edit is unpacked again): Dynamo cannot read a version, and
    torch.compile(fullgraph=True) of every loaded weight-only CNN raised "Encountered
    tensor.is_inference() during tracing" (without fullgraph: a graph break per conv). The check
    is left to eager calls now; the compiled model gives the eager outputs within Inductor's float
    reordering, at every batch size with dynamic=True."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 16, 4)).eval()
    q = _ptq(net, torch.randn(16, 3, 4, 4), qatkit.preset(preset))
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    loaded = qatkit.load(path)
    torch._dynamo.reset()
    compiled = torch.compile(loaded, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for b in (1, 3, 7):
            x = torch.randn(b, 3, 4, 4)
            want = loaded(x)
            torch.testing.assert_close(compiled(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", ["int4_weight_only", "int4_weight_only asymmetric", "ternary_weight_only",
                                    "binary_weight_only", "int8_weight_only"])
def test_loaded_weight_only_layers_run_on_the_w4_kernel(data, tmp_path, preset):
    """int4_weight_only Linear layers (per-group scales), and ternary / binary weight-only ones
    (per-channel scales: one group per row), load onto ops.linear_w4_weight_only, int8_weight_only
    ones onto ops.linear_w8_weight_only (the "weight_only" form: float kernels), within the stated
    bound of the converted model's float form layer by layer."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 10))
    name, _, asym = preset.partition(" ")
    q = _ptq(mlp, data, qatkit.preset(name, symmetric=not asym) if name == "int4_weight_only" else qatkit.preset(name))
    path = str(tmp_path / "w4.safetensors")
    qatkit.export(q, path)
    loaded = qatkit.load(path, fuse_activations=False)  # (layer by layer against the converted model's)
    from qatkit.qat import integer

    lin = [m for m in loaded.modules() if isinstance(m, S.PackedLinear)]
    kernel = "linear_w8_weight_only" if name == "int8_weight_only" else "linear_w4_weight_only"
    assert len(lin) == 3 and all(integer.kernel_for(m) == kernel for m in lin)
    assert [f for _, f, _ in loaded.compute_report] == ["weight_only"] * 3
    c = qatkit.convert(q)
    h = data.flatten(1)
    with torch.no_grad():
        for ml, mc in zip(lin, [m for m in c.modules() if isinstance(m, nn.Module) and hasattr(m, "weight_int")]):
            yl, yc = ml(h), mc(h)
            w = mc.dequantized_weight().double()
            bound = h.shape[1] * 2.0**-24 * (h.abs().double() @ w.abs().t()) + 2.0**-23 * yc.abs().double() + 1e-30
            assert bool(((yl.double() - yc.double()).abs() <= bound).all())
            h = torch.relu(yc)
        assert torch.equal(qatkit.load(path, compute="float")(data), c(data))
    # the plans' scales: the panel's blocks where N is a multiple of 16 (96, 64), [N, G] for N = 10
    if kernel == "linear_w4_weight_only":
        assert [m.__dict__["_int8_plan"]["gscale"].dim() for m in lin] == [3, 3, 2]


@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1", "bitnet_b158",
                                    "int4_weight_only", "int8_weight_only"])
def test_a_loaded_model_called_from_python_threads_at_once_gives_the_serial_bits(preset, tmp_path, monkeypatch):
    """A server calls one loaded model from several Python threads. Six threads call a loaded model
    whose kernel plans a new state dict dropped, at once (the plans rebuilt under the race), each on its own inputs (batch 1 / 3 / 8,
    NCHW and channels_last), 4 times; every output equals a serial run on another load of the file.
    The kernels keep their scratch per OS thread and the derived-weight cache behind a lock."""
    import threading

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 32, 2, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    g = torch.Generator().manual_seed(5)
    calib = torch.randn(16, 8, 7, 7, generator=g)
    q = _ptq(net, calib, qatkit.preset(preset))
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial, shared = qatkit.load(path), qatkit.load(path)
    inputs = []
    for i in range(6):
        x = torch.randn((1, 3, 8)[i % 3], 8, 7, 7, generator=g) * 2
        inputs.append(x.contiguous(memory_format=torch.channels_last) if i % 2 else x)
    with torch.no_grad():
        want = [serial(x) for x in inputs]
    # load builds the plans; a new state dict drops them, and the threads' first calls rebuild them
    shared.load_state_dict(serial.state_dict())
    results, errors = [[] for _ in inputs], []
    start = threading.Barrier(len(inputs))
    # a slow plan build (the GIL released inside it): the other threads' forwards must not see a plan
    # before it is whole
    for name in ("_bind", "_bind_conv"):
        def slow(*a, _f=getattr(qatkit.qat.integer, name), **k):
            time.sleep(2e-3)
            return _f(*a, **k)
        monkeypatch.setattr(qatkit.qat.integer, name, slow)

    def worker(i):
        try:
            start.wait()
            with torch.no_grad():
                for _ in range(4):
                    results[i].append(shared(inputs[i]))
        except Exception as e:  # noqa: BLE001 - collected and re-raised below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns often, inside the plans' building too
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_switch)
    assert not errors, errors
    for i, outs in enumerate(results):
        assert len(outs) == 4 and all(torch.equal(o, want[i]) for o in outs), (preset, i)
    from qatkit.qat.convert import _Quantized
    kernels = {qatkit.qat.integer.kernel_for(m) for m in shared.modules() if isinstance(m, _Quantized)} - {None}
    assert kernels, preset  # the threads ran integer kernels, not float math


@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "xnor_w1a1", "bitnet_b158", "int4_weight_only"])
def test_a_loaded_model_pickles_and_deep_copies_onto_the_same_kernels(preset, tmp_path):
    """torch.save(model) / torch.load and copy.deepcopy of a loaded model (its kernel plans built):
    the plans' bound calls are closures, so they stay out of the pickle and the copy; both rebuild
    them on their first call and give the loaded model's bits on the same kernels."""
    import copy
    import io

    from qatkit.qat.convert import _Quantized
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 32, 2, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding="same"), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(8, 8, 7, 7)
    q = _ptq(net, x, qatkit.preset(preset))
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = qatkit.load(path)
    with torch.no_grad():
        want = loaded(x)
    kernels = [qatkit.qat.integer.kernel_for(m) for m in loaded.modules() if isinstance(m, _Quantized)]
    assert any(kernels)
    buf = io.BytesIO()
    torch.save(loaded, buf)
    buf.seek(0)
    for other in (torch.load(buf, weights_only=False), copy.deepcopy(loaded)):
        assert not any("_int8_plan" in m.__dict__ for m in other.modules())
        with torch.no_grad():
            assert torch.equal(other(x), want)
        assert [qatkit.qat.integer.kernel_for(m) for m in other.modules() if isinstance(m, _Quantized)] == kernels


def test_load_into_a_float_model_with_multihead_attention(tmp_path):
    """prepare_qat splits nn.MultiheadAttention's projections into layers (QuantMultiheadAttention),
    and the file holds them as 'attn.q_proj' ... load_into a float model of that architecture (what
    qatkit.load's error for such models tells users to do) raised "holds layer 'attn.q_proj', which
    the model does not have". It now splits the float module the same way first: the outputs equal
    load_into a prepared model and the converted model on the same kernels, with an
    nn.TransformerEncoderLayer (its fused fast path kept off) and with key / value bias terms."""
    from qatkit.qat.convert import _Quantized

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.attn = nn.MultiheadAttention(32, 4, add_bias_kv=True, batch_first=True)
            self.head = nn.Linear(32, 5)

        def forward(self, x):
            h = self.enc(x)
            return self.head(self.attn(h, h, h, need_weights=False)[0])

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(4, 6, 32)
    q = _ptq(net, x, qatkit.preset("w8a8"))
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = qatkit.convert(q)
        qatkit.qat.set_compute(c, "integer", warn=False, kernels_only=True)
        a = qatkit.load_into(Net().eval(), path)  # a float model with fresh weights: all from the file
        b = qatkit.load_into(qatkit.prepare_qat(Net().eval(), qatkit.preset("w8a8")), path)
    names = [n for n, m in a.named_modules() if isinstance(m, _Quantized)]
    assert {"enc.self_attn.q_proj", "attn.out_proj"} <= set(names), names
    assert sum(qatkit.qat.integer.kernel_for(m) is not None for m in a.modules() if isinstance(m, _Quantized)) >= 8
    with torch.no_grad():
        want = c(x)
        assert torch.equal(a(x), want) and torch.equal(b(x), want)


def _edits(layer, loaded):
    """(name, in-place edit) pairs a user may make to a converted / loaded layer's tensors."""
    def flip_codes():  # a row's codes reversed: valid codes of any width, a different layer
        w = layer.weight_int
        w[0].copy_(w[0].flip(-1) if w.dim() == 2 else w[0].flatten().flip(0).reshape(w[0].shape))

    def swap_packed():  # a row's packed bytes reversed: valid codes, a different layer
        p = layer.weight_packed.reshape(layer.weight_packed.shape[0], -1)
        assert p.data_ptr() == layer.weight_packed.data_ptr()  # a view
        p[0].copy_(p[0].flip(0))

    out = [("bias", lambda: layer.bias.add_(0.5)), ("weight_scale", lambda: layer.weight_scale.mul_(1.5)),
           ("weight_int", flip_codes)]
    aq = layer.input_fake_quant
    src = getattr(aq, "observer", aq) if aq is not None else None
    if src is not None and isinstance(getattr(src, "scale", None), torch.Tensor):
        out.append(("input scale", lambda: src.scale.mul_(1.25)))
    if loaded and layer.weight_packed is not None:
        out.append(("weight_packed", swap_packed))
    return out


@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1", "bitnet_b158",
                                    "int8_weight_only", "int4_weight_only"])
def test_an_in_place_edit_after_the_first_call_is_computed_with(preset, tmp_path):
    """A layer's kernel plan holds forms derived from its tensors (packed panels, the zero-point
    correction, the int32 bias, the output multipliers). An in-place edit after the first call
    (bias correction, a scale tweak, a bit flip in the codes or the packed bytes) used to leave the
    plan as it was: the next calls computed with the old layer, silently. Now the forward sees the
    tensors' versions change and builds the plan again; the output equals a fresh copy's (a deep
    copy holds no plan and builds it from the edited tensors) and differs from before the edit. A
    loaded layer's edit reaches a re-export and its state_dict: its codes follow its packed bytes,
    and codes written in place are packed again into them (the persistent state)."""
    import copy
    import dataclasses

    g = torch.Generator().manual_seed(5)
    cfg = dataclasses.replace(qatkit.preset(preset), first_last=None)
    nets = [lambda: (nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)),
                     torch.randn(16, 64, generator=g)),
            lambda: (nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                                   nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 8)), torch.randn(4, 4, 4, 4, generator=g))]
    checked = 0
    for i, make in enumerate(nets):
        torch.manual_seed(i)
        net, x = make()
        q = _ptq(net.eval(), x, cfg, correct_bias=None)
        path = str(tmp_path / f"m{i}.safetensors")
        qatkit.export(q, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models = {"loaded": qatkit.load(path), "converted": qatkit.convert(q, integer=True)}
        for tag, model in models.items():
            layer = model[2]  # the middle layer: quantized input and weights in every preset
            for what, _ in _edits(layer, tag == "loaded"):
                m = copy.deepcopy(model)
                lay = m[2]
                with torch.no_grad():
                    before = m(x)
                    assert lay.__dict__.get("_int8_plan") or lay._integer_form is None
                    dict(_edits(lay, tag == "loaded"))[what]()
                    got = m(x)
                    want = copy.deepcopy(m)(x)
                assert torch.equal(got, want), (tag, i, what)
                assert not torch.equal(got, before), (tag, i, what)  # the edit matters
                checked += lay._integer_form is not None
                if tag == "loaded":  # the edit travels: a re-export, and the state_dict (the packed bytes)
                    m2 = copy.deepcopy(model)
                    with torch.no_grad():
                        dict(_edits(m2[2], True))[what]()  # no call in between
                        out = str(tmp_path / "again.safetensors")
                        qatkit.export(m2, out)
                        assert torch.equal(qatkit.load(out)(x), got), (i, what)
                        fresh = qatkit.load(path)
                        fresh(x)
                        fresh.load_state_dict(m2.state_dict())
                        assert torch.equal(fresh(x), got), (i, what)
    assert checked >= 6, checked  # edits under a kernel plan, not only float math


@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "int4_weight_only", "xnor_w1a1", "w4a4_lsq"])
def test_ptq_convert_and_load_under_inference_mode_compute_as_outside_it(preset, tmp_path):
    """Tensors made under torch.inference_mode keep no version counter, and reading one raises
    'Inference tensors do not track version counter': ptq there failed at its first calibration
    batch (the weight quantizers' calibration cache keys on versions), and the plans' edit check
    must not read them. ptq, convert and load under inference_mode now give the models made
    outside it, bit for bit; AdaRound, which needs autograd, raises saying so."""
    import dataclasses

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(16, 64)
    cfg = dataclasses.replace(qatkit.preset(preset), first_last=None)
    path = str(tmp_path / "m.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(net, [x], cfg, verbose=False, progress=False)
        qatkit.export(q, path)
        with torch.no_grad():
            want_conv, want_loaded = qatkit.convert(q, integer=True)(x), qatkit.load(path)(x)
        with torch.inference_mode():
            qi = qatkit.ptq(net, [x], cfg, verbose=False, progress=False)
            for _ in range(2):  # the first call builds the plans, the second takes the bound kernels
                assert torch.equal(qatkit.convert(qi, integer=True)(x), want_conv)
            loaded = qatkit.load(path)
            assert torch.equal(loaded(x), want_loaded) and torch.equal(loaded(x), want_loaded)
            with pytest.raises(RuntimeError, match="rounding='adaround' optimizes each layer's rounding with autograd"):
                qatkit.ptq(net, [x], cfg, rounding="adaround", verbose=False, progress=False)
        assert torch.equal(loaded(x), want_loaded)  # made in inference mode, run outside it


def test_an_edit_that_takes_a_layer_off_its_kernel_warns_and_computes_the_float_form(tmp_path):
    """A code of -128 written into a w8a8 layer is outside the [-127, 127] the int8 kernels take:
    the layer leaves its integer form for float math (what the QAT model computes), with a warning
    naming it rather than silently."""
    import dataclasses

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(16, 64)
    q = _ptq(net, x, dataclasses.replace(qatkit.w8a8(), first_last=None))
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    # (unfused: the layers are compared one by one with the float load's, which fuses nothing)
    loaded, as_float = qatkit.load(path, fuse_activations=False), qatkit.load(path, compute="float")
    with torch.no_grad():
        loaded(x)
        for m in (loaded, as_float):
            m[2].weight_int[0, 0] = -128
        with pytest.warns(UserWarning, match=r"'2': after an in-place edit of its tensors the layer computes in float"):
            y = loaded(x)
        assert loaded[2]._integer_form is None
        h = loaded[1](loaded[0](x))  # the layers around it keep their kernels
        assert torch.equal(loaded[2](h), as_float[2](h))
        assert loaded[0]._integer_form is not None and y.shape == (16, 10)


@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "int4_weight_only"])
def test_a_replaced_tensor_is_computed_with_and_refresh_covers_data_writes(preset, tmp_path):
    """`layer.bias = new_bias` (a replaced buffer, not an in-place write) left the kernel plan
    reading the old tensor, as did `observer.scale = new` inside the input quantizer and a loaded
    layer's new `weight_packed`; now the layer rebuilds its plan (the quantizers bump the replaced
    tensor's version). Writes through `.data` bypass torch's version counters: qatkit.qat.refresh
    builds the plans again, and its `packed=True` unpacks the codes again."""
    import copy
    import dataclasses

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(16, 64)
    q = _ptq(net, x, dataclasses.replace(qatkit.preset(preset), first_last=None))
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)

    def fresh(m):  # a deep copy holds no plan: it builds one from the tensors as they are
        return copy.deepcopy(m)(x)

    replace = {"bias": lambda lay: setattr(lay, "bias", lay.bias + 0.5),
               "weight_scale": lambda lay: setattr(lay, "weight_scale", lay.weight_scale * 1.5),
               "weight_int": lambda lay: setattr(lay, "weight_int", lay.weight_int.flip(1).contiguous())}
    with torch.no_grad():
        for what, edit in replace.items():
            for model in (qatkit.load(path), qatkit.convert(q, integer=True)):
                before = model(x)
                edit(model[2])
                got = model(x)
                assert torch.equal(got, fresh(model)) and not torch.equal(got, before), what
        loaded = qatkit.load(path)
        aq = loaded[2].input_fake_quant
        if aq is not None and hasattr(aq, "observer"):
            before = loaded(x)
            aq.observer.scale = aq.observer.scale * 1.25
            got = loaded(x)
            assert torch.equal(got, fresh(loaded)) and not torch.equal(got, before)
        loaded = qatkit.load(path)
        before = loaded(x)
        loaded[2].weight_packed = loaded[2].weight_packed.flip(1).contiguous()
        got = loaded(x)
        assert torch.equal(got, fresh(loaded)) and not torch.equal(got, before)
        # .data writes: unseen by the versions until refresh
        loaded = qatkit.load(path)
        before = loaded(x)
        loaded[2].bias.data.add_(0.5)  # a plan that folded the bias (w8a8's int32 bias) misses it until refresh
        n = qatkit.qat.refresh(loaded)
        assert n == sum(getattr(m, "_integer_form", None) is not None for m in loaded) >= 1
        got = loaded(x)
        assert torch.equal(got, fresh(loaded)) and not torch.equal(got, before)
        p = loaded[2].weight_packed
        p.data.copy_(p.flip(1))
        after_bias = loaded(x)
        qatkit.qat.refresh(loaded, packed=True)
        got = loaded(x)
        assert not torch.equal(got, after_bias)
        ref = qatkit.load(path)
        ref.load_state_dict(loaded.state_dict())  # the packed bytes and the bias as they are now
        assert torch.equal(ref(x), got)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_narrow_dtype_model_is_warned_at_export_and_load_and_its_float32_copy_runs_on_the_kernels(dtype, tmp_path):
    """A QAT model trained in bfloat16 (the usual dtype for language models) exported to a file whose
    loaded layers kept float math in that dtype, naming it in compute_report only (and the C++
    loader refuses the file): export and load now warn, naming the layers and the float32 copy that
    runs on the integer kernels. That copy holds the same weight codes here (w8a8)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    q = qatkit.prepare_qat(m, dataclasses.replace(qatkit.w8a8(), first_last=None)).to(dtype)
    x = torch.randn(16, 32)
    q(x.to(dtype))
    q.eval()
    path = str(tmp_path / "narrow.safetensors")
    with pytest.warns(UserWarning, match=r"export: quantized layers compute in a dtype other than float32 \(.*: 0, 2\)"
                      r".*qatkit\.export\(model\.float\(\), path\)"):
        qatkit.export(q, path)
    with pytest.warns(UserWarning, match=r"load: quantized layers compute in a dtype other than float32"):
        back = qatkit.load(path)
    assert [f for _, f, _ in back.compute_report] == [None, None]
    assert torch.equal(back(x.to(dtype)), q(x.to(dtype)))  # float math in that dtype, as the QAT model
    path32 = str(tmp_path / "f32.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qatkit.export(copy.deepcopy(q).float(), path32)
        back32 = qatkit.load(path32)
    assert [f for _, f, _ in back32.compute_report] == ["static", "static"]
    for a, b in ((back[0], back32[0]), (back[2], back32[2])):
        assert torch.equal(a.weight_int, b.weight_int) and torch.equal(a.weight_scale, b.weight_scale)


def test_export_to_an_onnx_or_gguf_name_warns_that_it_writes_safetensors(tmp_path):
    """qatkit.export(model, "model.onnx") wrote qatkit's safetensors format under that name without
    a word; onnxruntime then refused the file. Now it warns, naming export_onnx / export_gguf."""
    torch.manual_seed(0)
    q = qatkit.ptq(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), [torch.randn(8, 8)],
                   dataclasses.replace(qatkit.w8a8(), first_last=None), verbose=False, progress=False)
    with pytest.warns(UserWarning, match=r"named like an ONNX file.*qatkit\.export_onnx"):
        qatkit.export(q, str(tmp_path / "m.onnx"))
    with pytest.warns(UserWarning, match=r"named like a GGUF file.*qatkit\.export_gguf"):
        qatkit.export(q, str(tmp_path / "m.GGUF"))
    assert torch.equal(qatkit.load(str(tmp_path / "m.onnx"), compute="float")(torch.ones(2, 8)), q(torch.ones(2, 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qatkit.export(q, str(tmp_path / "m.safetensors"))


def test_load_into_gives_a_float_conv_the_bias_its_folded_batchnorm_left(tmp_path):
    """PTQ folds a BatchNorm into the conv before it even where the preset keeps that conv float
    (bitnet_b158's first layer), so the file's float conv has a bias the float model's (bias=False)
    lacks: load_into gives the layer one and loads it (before 2026-12-08 it refused the file,
    "unexpected ['0.bias']"). A model whose file comes from no fold gets no bias added."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 36, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(copy.deepcopy(net), [x], qatkit.preset("bitnet_b158"), verbose=False, progress=False)
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    header = S.read_header(path)
    assert "0" not in header["layers"] and "0.bias" in header["float_tensors"]  # float, with the fold's bias
    m = qatkit.load_into(copy.deepcopy(net), path)
    assert isinstance(m[0].bias, nn.Parameter) and type(m[1]) is nn.Identity
    with torch.no_grad():
        assert torch.equal(m[0].bias, q[0].bias)
        assert torch.equal(m(x), qatkit.load(path)(x))
        mf = qatkit.load_into(copy.deepcopy(net), path, compute="float")
        assert torch.equal(mf(x), qatkit.load(path, compute="float")(x))
    # no fold behind the file (no Identity in its model): a bias the file holds and the model lacks is
    # still refused, as any tensor the model does not have
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 16), nn.ReLU(),
                          nn.Linear(16, 4)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qp = qatkit.ptq(copy.deepcopy(plain), [x], qatkit.preset("bitnet_b158"), verbose=False, progress=False)
    qatkit.export(qp, path)
    assert not any(v == "Identity" for v in S.read_header(path)["module_changes"].values())
    no_bias = copy.deepcopy(plain)
    no_bias[0] = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    with pytest.raises(ValueError, match=r"unexpected \['0.bias'\]"):
        qatkit.load_into(no_bias, path)
