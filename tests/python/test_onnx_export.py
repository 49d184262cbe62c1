"""qatkit.export_onnx (issue 12): the repo's digits models, FP32-trained once per module and
quantized at the presets, exported as QuantizeLinear / DequantizeLinear graphs and run in
onnxruntime against qatkit's converted model on the held-out fold.

Two checks per export: with onnxruntime's graph optimizations off, the file computes qatkit's
function (logits within float summation order but for rounding ties); with all of them
on (its integer QLinearConv / MatMulNBits kernels, its int32 biases at s_x * s_w), top-1
agreement >= 99.5 % and logits within 5 % of the largest. Full table: scripts/onnx_check.py,
docs/results.md "ONNX export"."""

import importlib.util
import os
import sys
import warnings

import pytest
import torch
from torch import nn

import qatkit
from qatkit.qat.convert import QuantizedConv2d, QuantizedLinear

onnx = pytest.importorskip("onnx", reason="onnx is in scripts/requirements.txt; this environment lacks it")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in scripts/requirements.txt; this environment lacks it")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script(name):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def digits():
    qm = _script("qat_models")
    oc = _script("onnx_check")
    x, y = qm.load_digits()
    tr, te = qm.stratified_folds(y, 5)[0]
    models = {}
    for arch in ("MLP", "CNN", "DSCNN"):
        torch.manual_seed(0)
        models[arch] = qm.train_classifier(getattr(qm, arch)(), x[tr], y[tr], oc.EPOCHS[arch], seed=0)
    return {"qm": qm, "oc": oc, "x": x, "y": y, "tr": tr, "te": te, "models": models}


def _converted(d, arch, preset, qat_epochs=2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq = d["models"][arch].as_sequential().eval()
        return d["oc"].quantized(seq, preset, d["x"][d["tr"]], d["y"][d["tr"]], qat_epochs)


def _converted_all_quantized(net, x, preset="w8a8"):
    """net quantized by qatkit.ptq on x at the preset with every layer quantized, converted."""
    import dataclasses

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(net, [x], dataclasses.replace(qatkit.preset(preset), first_last=None), verbose=False,
                       progress=False)
    return qatkit.convert(q)


def test_a_failed_onnx_export_leaves_the_file_that_was_there(tmp_path, monkeypatch):
    """export_onnx writes beside the file and moves it over once complete (serialization.replacing):
    a write that fails halfway (a full disk, simulated) leaves the old file and no temporary."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(6, 16)
    c = _converted_all_quantized(net, x)
    path = str(tmp_path / "m.onnx")
    qatkit.export_onnx(c, x, path)
    before = open(path, "rb").read()
    real_save = onnx.save

    def full_disk(proto, f, *args, **kwargs):
        real_save(proto, f, *args, **kwargs)
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        qatkit.export_onnx(c, x, path)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["m.onnx"]


def _run(path, x, level="all", optimized=None):
    from_ort = _script("onnx_check").ort_session(path, optimized, level)
    return torch.from_numpy(from_ort.run(None, {"input": x.numpy()})[0])


CASES = [("MLP", p) for p in
         ["w8a8", "w4a8_g32", "w4a4_lsq", "ternary_twn", "bitnet_b158", "binary_w1a8", "xnor_w1a1", "binaryconnect",
          "int8_weight_only", "int4_weight_only_g32", "int4_weight_only_g32_asym", "ternary_weight_only",
          "binary_weight_only"]]
CASES += [("CNN", p) for p in ["w8a8", "w4a8_g32", "ternary_twn", "binary_w1a8", "int4_weight_only_g32", "xnor_w1a1"]]
CASES += [("DSCNN", p) for p in ["w8a8", "w4a8_g32", "int4_weight_only_g32", "bitnet_b158", "ternary_twn", "binary_w1a8"]]


@pytest.mark.parametrize("arch,preset", CASES)
def test_onnxruntime_agrees_with_the_converted_model(digits, arch, preset, tmp_path):
    c = _converted(digits, arch, preset)
    path = str(tmp_path / "m.onnx")
    rep = qatkit.export_onnx(c, digits["x"][:4], path)
    assert rep["layers"], "no quantized layer in the report"
    xt = digits["x"][digits["te"]]
    with torch.no_grad():
        ref = c(xt)
    big = ref.abs().max()
    # the file's own semantics (no graph rewrites): qatkit's function up to float summation order,
    # except where an activation lies on a rounding tie (ONNX divides by the scale, qatkit
    # multiplies by 1 / s) and the code moves by one: a few samples
    exact = _run(path, xt, "none")
    assert float((exact.argmax(1) == ref.argmax(1)).float().mean()) >= 0.995
    off = ((exact - ref).abs() > 1e-4 * big).any(1).float().mean()
    assert float(off) <= 0.02, f"{float(off):.4f} of the samples differ by more than float summation order"
    # deployment: onnxruntime's integer kernels and int32 biases
    out = _run(path, xt, "all")
    agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
    assert agree >= 0.995, f"top-1 agreement {agree:.4f}"
    assert float((out - ref).abs().max()) <= 0.05 * float(big)


def test_w8a8_layers_carry_their_int32_bias_and_narrower_ones_a_separate_float_add(digits, tmp_path):
    """W8A8 layers add the int32 bias at S_x * S_w that qatkit's integer form adds (a
    DequantizeLinear of int32 codes), so onnxruntime cannot re-round it its own way; narrower layers
    (ternary here) add their float bias in an Add after the Conv, where onnxruntime leaves it float,
    as qatkit's integer form does (docs/integer.md)."""
    from qatkit.qat import integer

    for preset, n_int32 in (("w8a8", 5), ("ternary_twn", 1)):  # five convs; ternary_twn: the first is int8
        c = _converted(digits, "DSCNN", preset)
        path = str(tmp_path / f"{preset}.onnx")
        qatkit.export_onnx(c, digits["x"][:4], path)
        g, inits = _graph_nodes(path)
        convs = [m for m in c.modules() if isinstance(m, QuantizedConv2d)]
        int32 = [m for m in convs if m._integer_form == "static" and integer.int32_bias(m)]
        assert len(int32) == n_int32, preset
        dq = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
        conv_nodes = [n for n in g.node if n.op_type == "Conv"]
        assert len(conv_nodes) == len(convs)
        biases = [dq[n.input[2]] for n in conv_nodes if len(n.input) == 3 and n.input[2] in dq]
        assert len(biases) == len(int32)
        for n, m in zip(biases, int32):
            q = onnx.numpy_helper.to_array(inits[n.input[0]])
            assert q.dtype.name == "int32"
            assert torch.equal(torch.from_numpy(q).long(), integer._bias_q(m).long())
            assert torch.equal(torch.from_numpy(onnx.numpy_helper.to_array(inits[n.input[1]])), integer._multiplier(m))
        no_bias = [n for n in conv_nodes if len(n.input) == 2]
        assert len(no_bias) == len(convs) - n_int32  # their float bias: an Add right after
        users = {i: n for n in g.node for i in n.input}
        assert all(users[n.output[0]].op_type == "Add" for n in no_bias)


def _graph_nodes(path):
    g = onnx.load(path).graph
    return g, {i.name: i for i in g.initializer}


def test_int4_groups_are_blocked_k_by_n_and_fuse_into_matmulnbits(digits, tmp_path):
    c = _converted(digits, "MLP", "int4_weight_only_g32")
    path, opt = str(tmp_path / "m.onnx"), str(tmp_path / "opt.onnx")
    qatkit.export_onnx(c, digits["x"][:4], path)
    g, inits = _graph_nodes(path)
    dqs = [n for n in g.node if n.op_type == "DequantizeLinear"]
    lin = [m for m in c.modules() if isinstance(m, QuantizedLinear)]
    assert len(dqs) == len(lin)
    for n, m in zip(dqs, lin):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["axis"] == 0 and attrs["block_size"] == 32
        w = inits[n.input[0]]
        assert w.data_type == onnx.TensorProto.INT4
        assert list(w.dims) == [m.in_features, m.out_features]  # [K, N]
        assert list(inits[n.input[1]].dims) == [m.in_features // 32, m.out_features]
    _run(path, digits["x"][:8], "all", opt)
    kinds = [n.op_type for n in onnx.load(opt).graph.node]
    assert kinds.count("MatMulNBits") == len(lin), kinds
    assert "MatMul" not in kinds


def test_int8_convs_run_as_qlinearconv(digits, tmp_path):
    c = _converted(digits, "CNN", "w8a8")
    path, opt = str(tmp_path / "m.onnx"), str(tmp_path / "opt.onnx")
    rep = qatkit.export_onnx(c, digits["x"][:4], path)
    convs = [n for n, v in rep["layers"].items() if v["type"] == "Conv"]
    assert convs and all(rep["layers"][n]["weight"]["codes"] in ("int8", "uint8") for n in convs)
    _run(path, digits["x"][:8], "all", opt)
    kinds = [n.op_type for n in onnx.load(opt).graph.node]
    assert "QLinearConv" in kinds, kinds


def test_int8_weights_past_64_are_stored_as_uint8_with_the_same_values(digits, tmp_path):
    """int8_weights="auto" stores a layer's 8-bit codes as uint8 code + 128 (zero point 128) where
    some |code| > 64 (onnxruntime's uint8 x int8 kernels saturate int16 pair sums there on CPUs
    without VNNI), int8 elsewhere; "int8" / "uint8" force one type. Every form computes the same
    function in onnxruntime without graph rewrites, and onnxruntime's integer kernels give the
    converted model's top-1 on every CPU."""
    c = _converted(digits, "CNN", "w8a8")
    xt = digits["x"][digits["te"]]
    outs, reps = {}, {}
    for mode in ("auto", "int8", "uint8"):
        path = str(tmp_path / f"{mode}.onnx")
        reps[mode] = qatkit.export_onnx(c, digits["x"][:4], path, int8_weights=mode)
        outs[mode] = (_run(path, xt, "none"), _run(path, xt, "all"))
    convs = [m for m in c.modules() if isinstance(m, QuantizedConv2d)]
    names = [n for n, v in reps["auto"]["layers"].items() if v["type"] == "Conv"]
    assert len(names) == len(convs)
    for n, m in zip(names, convs):
        wide = int(m.weight_int.abs().max()) > 64
        assert reps["auto"]["layers"][n]["weight"]["codes"] == ("uint8" if wide else "int8"), n
        assert reps["int8"]["layers"][n]["weight"]["codes"] == "int8"
        assert reps["uint8"]["layers"][n]["weight"]["codes"] == "uint8"
    assert any(int(m.weight_int.abs().max()) > 64 for m in convs), "no layer exercises the uint8 form"
    ref = c(xt).detach()
    for mode in ("auto", "uint8"):
        assert torch.equal(outs[mode][0], outs["int8"][0]), mode  # the same values, the same float graph
        agree = float((outs[mode][1].argmax(1) == ref.argmax(1)).float().mean())
        assert agree >= 0.995, (mode, agree)
    with pytest.raises(ValueError, match="int8_weights must be"):
        qatkit.export_onnx(c, digits["x"][:4], str(tmp_path / "bad.onnx"), int8_weights="u8")


def test_low_bit_files_are_smaller_and_int2_is_correct_where_onnxruntime_fuses_nothing(digits, tmp_path):
    """The file shrinks with the bits (peers' sub-8-bit ONNX stays float-sized); int2 ternary
    codes compute right (basic optimizations) and warn about onnxruntime's int2 MatMulNBits."""
    sizes = {}
    for preset in ("int8_weight_only", "int4_weight_only_g32", "ternary_weight_only"):
        c = _converted(digits, "MLP", preset)
        p = str(tmp_path / f"{preset}.onnx")
        qatkit.export_onnx(c, digits["x"][:4], p)
        sizes[preset] = os.path.getsize(p)
    fp32 = sum(p.numel() * 4 for p in digits["models"]["MLP"].parameters())
    assert sizes["int8_weight_only"] < 0.3 * fp32
    assert sizes["int4_weight_only_g32"] < 0.7 * sizes["int8_weight_only"]
    assert sizes["ternary_weight_only"] < 0.6 * sizes["int8_weight_only"]
    p2 = str(tmp_path / "t2.onnx")
    with pytest.warns(UserWarning, match="int2 weights with float inputs"):
        rep = qatkit.export_onnx(c, digits["x"][:4], p2, lowbit="int2")
    assert rep["opset"] >= 25
    assert os.path.getsize(p2) < sizes["ternary_weight_only"]
    xt = digits["x"][digits["te"]]
    with torch.no_grad():
        ref = c(xt)
    out = _run(p2, xt, "basic")
    assert torch.equal(out.argmax(1), ref.argmax(1))
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_bad_input_raises_naming_the_problem(digits, tmp_path):
    c = _converted(digits, "MLP", "w8a8")
    path = str(tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        qatkit.export_onnx("model", digits["x"][:4], path)
    with pytest.raises(TypeError, match="example_input must be a torch.Tensor"):
        qatkit.export_onnx(c, [1, 2], path)
    with pytest.raises(ValueError, match="lowbit must be"):
        qatkit.export_onnx(c, digits["x"][:4], path, lowbit="int3")
    with pytest.raises(TypeError, match="export_onnx: path must be a str or os.PathLike, got int"):
        qatkit.export_onnx(c, digits["x"][:4], 7)
    with pytest.raises(FileNotFoundError, match="export_onnx: the directory of path"):
        qatkit.export_onnx(c, digits["x"][:4], str(tmp_path / "no" / "m.onnx"))
    with pytest.raises(ValueError, match="own forward"):  # custom forward: its as_sequential() form exports
        qatkit.export_onnx(digits["models"]["MLP"], digits["x"][:4], path)

    class Odd(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="1: no ONNX form for Odd"):
        qatkit.export_onnx(nn.Sequential(c, Odd()), digits["x"][:4], path)
    with pytest.raises(ValueError, match="float32"):
        qatkit.export_onnx(c.double(), digits["x"][:4].double(), path)
    assert not os.path.exists(path)


@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "int8_weight_only"])
def test_every_activation_load_rebuilds_exports_as_its_onnx_operator(preset, tmp_path):
    """ReLU6 / Hardtanh (Clip), LeakyReLU, PReLU (per channel on a conv: its slope broadcast over
    dim 1), ELU, Hardswish, Hardsigmoid, Mish, Softmax and LogSoftmax between quantized layers:
    onnxruntime without graph rewrites computes the converted model's function (the criterion of
    test_onnxruntime_agrees_with_the_converted_model), and each module is its own operator."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1), nn.PReLU(8), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.Hardswish(), nn.Conv2d(8, 8, 1), nn.Hardsigmoid(), nn.Flatten(),
        nn.Linear(8 * 16, 32), nn.LeakyReLU(0.1), nn.Linear(32, 32), nn.ELU(0.5), nn.Linear(32, 32),
        nn.Hardtanh(-0.5, 2.0), nn.Linear(32, 32), nn.Mish(), nn.Linear(32, 32), nn.PReLU(), nn.Linear(32, 32),
        nn.Softmax(dim=1), nn.Linear(32, 10), nn.LogSoftmax(dim=-1)).eval()
    g = torch.Generator().manual_seed(1)
    x, xt = torch.randn(32, 3, 8, 8, generator=g), torch.randn(64, 3, 8, 8, generator=g)
    c = _converted_all_quantized(net, x, preset)
    path = str(tmp_path / "acts.onnx")
    qatkit.export_onnx(c, x[:2], path)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    for op in ("Clip", "PRelu", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu", "Mish", "Softmax", "LogSoftmax"):
        assert op in ops, op
    with torch.no_grad():
        ref = c(xt)
    exact = _run(path, xt, "none")
    assert float((exact.argmax(1) == ref.argmax(1)).float().mean()) >= 0.98
    off = ((exact - ref).abs() > 1e-4 * ref.abs().max()).any(1).float().mean()
    assert float(off) <= 0.02, f"{float(off):.4f} of the samples differ by more than float summation order"
    with pytest.raises(ValueError, match="11: Softmax with dim=None"):
        qatkit.export_onnx(nn.Sequential(*list(c.children())[:11], nn.Softmax()), x[:2], path)


def test_a_module_used_at_two_places_is_emitted_at_both(tmp_path):
    """export_onnx walked named_children(), which yields a module once: a Tanh used twice in a
    Sequential was emitted once (onnxruntime off by 0.024), and a layer applied twice once. Each
    place is emitted now, with the shapes of its own call."""
    torch.manual_seed(0)
    act, shared = nn.Tanh(), nn.Linear(16, 16)
    net = nn.Sequential(nn.Linear(8, 16), act, shared, act, shared, nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(1))
    c = _converted_all_quantized(net, x)
    path = str(tmp_path / "shared.onnx")
    qatkit.export_onnx(c, x[:2], path)
    assert [n.op_type for n in onnx.load(path).graph.node].count("Tanh") == 2
    with torch.no_grad():
        ref = c(x)
    # onnxruntime's Tanh differs from torch's by an ulp here and there, which moves an activation
    # code in some samples (3-6 % of them in this model with or without sharing): the bound is on
    # their share and size; a Tanh left out moved every sample by 5 % of the largest output
    exact = _run(path, x, "none")
    off = ((exact - ref).abs() > 1e-4 * ref.abs().max()).any(1).float().mean()
    assert float(off) <= 0.1, f"{float(off):.4f} of the samples differ by more than float summation order"
    assert float((exact - ref).abs().max()) <= 0.01 * float(ref.abs().max())


@pytest.mark.parametrize("pool,shape", [(nn.AdaptiveAvgPool2d((3, 2)), (4, 3, 13, 11)),
                                        (nn.AdaptiveAvgPool2d((None, 3)), (4, 3, 7, 10)),
                                        (nn.AdaptiveAvgPool1d(5), (4, 3, 17)),
                                        (nn.AvgPool2d(3, stride=2, padding=1, divisor_override=5), (4, 3, 11, 10)),
                                        (nn.AvgPool2d((2, 3), padding=1, divisor_override=7, count_include_pad=False),
                                         (4, 3, 11, 10))])
def test_adaptive_pools_to_sizes_that_do_not_divide_and_divisor_overrides_export(pool, shape, tmp_path):
    """An adaptive average pool whose windows vary in size (13 rows to 3) had no ONNX form; it is
    emitted as a constant averaging matrix per spatial dim (MatMul, through a transpose for rows):
    torch's means up to float summation order. An average pool with divisor_override had none
    either: the mean over the whole padded window times its size / divisor."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1) if len(shape) == 4 else nn.Conv1d(3, 4, 3, padding=1)
    net = nn.Sequential(conv, nn.ReLU(), pool).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    c = _converted_all_quantized(net, x)
    path = str(tmp_path / "pool.onnx")
    qatkit.export_onnx(c, x[:1], path)
    with torch.no_grad():
        ref = c(x)
    got = _run(path, x, "none")
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())  # (the test file's float-order bound)


def test_a_loaded_layer_whose_packed_bytes_were_edited_exports_the_edit(tmp_path):
    """A loaded layer computes with codes unpacked from its packed bytes. After an in-place write
    to those bytes (a fault-injection study), export_onnx read the codes unpacked at load, so
    onnxruntime ran the layer before the edit; it now unpacks them again first (sync_loaded) and
    onnxruntime gives the edited model's outputs."""
    import dataclasses

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(16, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(net, [x], dataclasses.replace(qatkit.w8a8(), first_last=None), correct_bias=None,
                       verbose=False, progress=False)
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    loaded = qatkit.load(path)
    with torch.no_grad():
        before = loaded(x)
        p = loaded[2].weight_packed
        p[0].copy_(p[0].flip(0))  # no call between the edit and the export
        qatkit.export_onnx(loaded, x, str(tmp_path / "m.onnx"))
        edited = loaded(x)
    s = ort.InferenceSession(str(tmp_path / "m.onnx"))
    y = torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])
    assert not torch.equal(edited, before)
    assert torch.equal(y, edited) or float((y - edited).abs().max()) < float((y - before).abs().max()) / 100


def test_a_model_with_hooks_exports_with_a_warning_naming_them(tmp_path):
    """The ONNX graph is built from each module's own computation: a forward hook that edits an
    output is not in it, and export_onnx says so naming the module (the graph is still written)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    model[2].register_forward_hook(lambda mod, args, out: out * 0 + 1)
    q = qatkit.prepare_qat(model, qatkit.w8a8())
    q(torch.randn(16, 8))
    with pytest.warns(UserWarning, match=r"export_onnx: 1 module\(s\) have forward hooks or pre-hooks: '2' \(1\)"):
        qatkit.export_onnx(q, torch.randn(2, 8), str(tmp_path / "m.onnx"))
    assert os.path.getsize(tmp_path / "m.onnx") > 0


@pytest.mark.parametrize("bits,signed", [(16, False), (16, True), (12, False), (8, False), (4, False)])
def test_static_inputs_of_every_width_and_sign_export(bits, signed, tmp_path):
    """Unsigned 16-bit input codes (zero point 32768 when symmetric) take uint16. export_onnx first
    asked for a type holding [-9, 65535], which none does, and raised "fit no ONNX integer type"
    for every unsigned 16-bit static input (found by scripts/fuzz_specs.py --onnx). onnxruntime
    (graph optimizations off) gives the converted model's outputs but for codes one apart at ties (x / s
    there, x * (1 / s) in qatkit)."""
    from qatkit.qat.config import LayerSpec, QATConfig, QuantSpec

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    spec = LayerSpec(QuantSpec(kind="int", bits=8, signed=True, symmetric=True, granularity="per_channel", axis=0),
                     QuantSpec(kind="int", bits=bits, signed=signed, symmetric=True, granularity="per_tensor"))
    q = qatkit.prepare_qat(net, QATConfig(default=spec, name="t"))
    x = torch.randn(64, 16)
    with torch.no_grad():
        q(x)
    c = qatkit.convert(q.eval())
    qatkit.export_onnx(c, x[:1], str(tmp_path / "m.onnx"))
    y = _run(str(tmp_path / "m.onnx"), x, level="none")
    with torch.no_grad():
        want = c(x)
    assert float((y - want).abs().max()) <= 1e-3 * float(want.abs().max())  # an input code apart at ties
