"""qatkit.fuse_activations and load / load_into's activation fusion: a loaded conv that an nn.ReLU,
nn.ReLU6 or nn.Hardtanh follows in an nn.Sequential (with Identity modules between: a folded
BatchNorm's place) runs the activation's clamp in its kernel; the model computes the unfused model's
bits; other activations, hooks, shared modules and custom forwards are left alone (named in the
report); export and export_onnx write the fused model as the unfused one, and refuse a clamp the file
would drop."""

import copy
import warnings

import pytest
import torch
from torch import nn

import qatkit
from qatkit.qat.fuse import FusedActivation
from qatkit.testing.models import mobilenet_v2
from qatkit.testing.reference import same_bits


class _Block(nn.Module):
    """A custom forward (as a ResNet block's): its ReLU is not fused."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x)) + x


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),  # BN folded: Identity between
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),  # depthwise
        nn.Conv2d(8, 8, 1), nn.ReLU6(),  # ptq's equalization makes it a ReLU (equalize=False: kept)
        nn.Conv2d(8, 8, 1), nn.Hardtanh(-0.5, 0.5),
        nn.Conv2d(8, 8, 1), nn.LeakyReLU(0.1),  # not a clamp: kept
        _Block(),
        nn.Conv2d(8, 8, 1),  # last: nothing after it
        nn.Flatten(), nn.Linear(8 * 8 * 8, 10), nn.ReLU())  # a Linear's ReLU: fused too


def _exported(tmp_path, preset="w8a8", net=None, equalize=True):
    net = (net or _net()).eval()
    calib = [torch.randn(8, 3, 8, 8) for _ in range(3)]
    path = str(tmp_path / f"{preset}{equalize}.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(copy.deepcopy(net), calib, qatkit.preset(preset), verbose=False, progress=False,
                       equalize=equalize)
        qatkit.export(q, path)
    return path


@pytest.mark.parametrize("preset,equalize", [("w8a8", True), ("xnor_w1a1", False), ("w4a8", True)])
def test_load_fuses_the_sequential_clamps_and_keeps_the_bits(tmp_path, preset, equalize):
    path = _exported(tmp_path, preset, equalize=equalize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = qatkit.load_into(_net().eval(), path, fuse_activations=False)
        fused = qatkit.load_into(_net().eval(), path)
    assert fused.fusion_report == {"fused": [("0", "2"), ("3", "4"), ("5", "6"), ("7", "8"), ("14", "15")],
                                   "skipped": []}
    assert not hasattr(plain, "fusion_report")
    places = [fused[i] for i in (2, 4, 6, 8)]
    assert all(type(p) is FusedActivation for p in places) and places[0].inplace and not places[1].inplace
    relu6 = "ReLU" if equalize else "ReLU6"  # ptq's cross-layer equalization turns the ReLU6 into a ReLU
    assert [p.kind for p in places] == ["ReLU", "ReLU", relu6, "Hardtanh"]
    assert [fused[i].output_clamp for i in (0, 3, 5, 7)] == [(0.0, None), (0.0, None),
                                                             (0.0, None) if equalize else (0.0, 6.0), (-0.5, 0.5)]
    assert fused[9].output_clamp is None and fused[11].conv.output_clamp is None
    assert type(fused[10]) is nn.LeakyReLU and type(fused[11].relu) is nn.ReLU and type(fused[15]) is FusedActivation
    assert fused[14].output_clamp == (0.0, None) and "output_clamp=(0.0, None)" in repr(fused[14])
    assert "output_clamp=(-0.5, 0.5)" in repr(fused[7]) and "Hardtanh, fused" in repr(fused[8])
    x = torch.randn(5, 3, 8, 8) * 2
    x[1, 0, 2, 2] = float("nan")
    with torch.no_grad():
        for xi in (x, x.contiguous(memory_format=torch.channels_last), x[:1]):
            assert same_bits(fused(xi), plain(xi))
            # the fused conv alone is the conv, then the activation; set_output_clamp() gives the conv back
            h = plain[:7](xi)
            assert same_bits(fused[7](h), nn.functional.hardtanh(plain[7](h), -0.5, 0.5))
            assert same_bits(fused[0](xi), torch.relu(plain[0](xi)))
    fused[7].set_output_clamp()
    with torch.no_grad():
        assert same_bits(fused[7](x[:, :1].expand(5, 8, 8, 8)), plain[7](x[:, :1].expand(5, 8, 8, 8)))


def test_qat_mobilenet_v2_fuses_its_relu6s(tmp_path):
    """A QAT MobileNetV2 keeps its ReLU6s (no cross-layer equalization): load fuses every conv +
    ReLU6 pair (all 35: the stem, two in each of 16 blocks, one in the first, the last conv), and
    the logits are the unfused model's bits, NCHW and channels_last."""
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.prepare_qat(mobilenet_v2(10, small_input=True), qatkit.preset("w8a8"))
        q.train()
        for _ in range(2):  # observers see data
            q(torch.randn(4, 3, 32, 32))
        path = str(tmp_path / "mnv2.safetensors")
        qatkit.export(q.eval(), path)
        fused = qatkit.load_into(mobilenet_v2(10, small_input=True).eval(), path)
        plain = qatkit.load_into(mobilenet_v2(10, small_input=True).eval(), path, fuse_activations=False)
    relu6s = sum(type(m) is nn.ReLU6 for m in mobilenet_v2(10, small_input=True).modules())
    assert relu6s == 35 and len(fused.fusion_report["fused"]) == relu6s and fused.fusion_report["skipped"] == []
    assert not any(type(m) is nn.ReLU6 for m in fused.modules())
    kinds = {m.kind for m in fused.modules() if type(m) is FusedActivation}
    assert kinds == {"ReLU6"}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            assert same_bits(fused(xi), plain(xi))


def test_hooks_and_shared_modules_are_not_fused(tmp_path):
    path = _exported(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = qatkit.load_into(_net().eval(), path, fuse_activations=False)
    seen = []
    m[2].register_forward_hook(lambda mod, i, o: seen.append(o.min()))  # would see the conv's output
    m[5].register_forward_pre_hook(lambda mod, i: None)
    shared = nn.ReLU()
    m[4] = shared
    m.add_module("again", nn.Sequential(shared))  # the same ReLU twice in the model
    m[8] = nn.Hardtanh(-0.0, 0.5)  # a -0.0 bound: the zero's sign could differ
    report = qatkit.fuse_activations(m)
    assert report["fused"] == [("14", "15")]
    assert [s[:2] for s in report["skipped"]] == [("0", "2"), ("3", "4"), ("5", "6"), ("7", "8")]
    assert "hook" in report["skipped"][0][2] and "more than once" in report["skipped"][1][2]
    assert "hook" in report["skipped"][2][2] and "-0.0" in report["skipped"][3][2]
    assert type(m[2]) is nn.ReLU and m[4] is shared and m[0].output_clamp is None and m[3].output_clamp is None
    assert type(m[8]) is nn.Hardtanh and m[7].output_clamp is None
    fresh = qatkit.load_into(_net().eval(), path, fuse_activations=False)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, i, o: None)
    try:  # a global hook sees every module's output: nothing fused
        report = qatkit.fuse_activations(fresh)
    finally:
        handle.remove()
    assert report["fused"] == [] and all("global module forward hook" in s[2] for s in report["skipped"])
    assert len(report["skipped"]) == 5 and type(fresh[2]) is nn.ReLU
    assert len(qatkit.fuse_activations(fresh)["fused"]) == 5  # once it is gone
    with pytest.raises(TypeError, match="fuse_activations: model must be a torch.nn.Module"):
        qatkit.fuse_activations("model")
    with pytest.raises(TypeError, match="fuse_activations must be True or False"):
        qatkit.load(path, fuse_activations="no")
    with pytest.raises(TypeError, match="fuse_activations must be True or False"):
        qatkit.load_into(_net(), path, fuse_activations=1)


def test_float_compute_is_not_fused(tmp_path):
    path = _exported(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = qatkit.load_into(_net().eval(), path, compute="float")
    assert not hasattr(m, "fusion_report") and type(m[2]) is nn.ReLU and m[0].output_clamp is None


def test_a_fused_model_exports_as_the_unfused_one(tmp_path):
    """qatkit.export of a fused loaded model writes the activations back (the structure of
    qatkit.load's tree names them, the convs carry no flag): loading that file unfused computes the
    same bits."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.ReLU6(),
                        nn.Conv2d(4, 4, 1), nn.Hardtanh(-0.25, 0.75), nn.Flatten())
    path = _exported(tmp_path, "w8a8", net, equalize=False)
    fused = qatkit.load(path)
    assert len(fused.fusion_report["fused"]) == 3
    again = str(tmp_path / "again.safetensors")
    qatkit.export(fused, again)
    header = qatkit.serialization.read_header(again)
    kinds = [c[1]["type"] for c in header["structure"]["children"]]
    assert kinds == ["packed", "ReLU", "packed", "ReLU6", "packed", "Hardtanh", "Flatten"]
    assert header["structure"]["children"][5][1]["args"] == {"min_val": -0.25, "max_val": 0.75}
    plain = qatkit.load(again, fuse_activations=False)
    assert [type(c) for c in plain] == [type(c) for c in qatkit.load(path, fuse_activations=False)]
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        assert same_bits(plain(x), fused(x))


def test_export_onnx_writes_the_fused_activations(tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is in scripts/requirements.txt; this environment lacks it")
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.ReLU6(), nn.Flatten())
    path = _exported(tmp_path, "w8a8", net, equalize=False)
    counts = []
    for fuse in (False, True):
        m = qatkit.load(path, fuse_activations=fuse)
        out = str(tmp_path / f"m{fuse}.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qatkit.export_onnx(m, torch.randn(1, 3, 6, 6), out)
        counts.append([sum(n.op_type == op for n in onnx.load(out).graph.node) for op in ("Relu", "Clip")])
    assert counts == [[1, 1], [1, 1]]


def test_mobilenet_v2_fuses_every_conv_relu(tmp_path):
    """The repo's MobileNetV2 (small input) after ptq: its 35 conv + activation pairs in its
    Sequentials, fused by load; the logits are the unfused model's bits, NCHW and channels_last."""
    path = _exported(tmp_path, "xnor_w1a1", mobilenet_v2(10, small_input=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = qatkit.load_into(mobilenet_v2(10, small_input=True).eval(), path)
        plain = qatkit.load_into(mobilenet_v2(10, small_input=True).eval(), path, fuse_activations=False)
    # ptq's equalization turned 34 of its ReLU6s into ReLUs; the last conv's ReLU6 stays one
    assert len(fused.fusion_report["fused"]) == 35 and fused.fusion_report["skipped"] == []
    kinds = [m.kind for m in fused.modules() if type(m) is FusedActivation]
    assert kinds.count("ReLU") == 34 and kinds.count("ReLU6") == 1
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            assert same_bits(fused(xi), plain(xi))


def test_export_refuses_a_clamp_the_file_would_drop(tmp_path):
    """A clamp set by hand (no FusedActivation after the conv) or a FusedActivation whose conv was
    unfused: export and export_onnx raise, naming the layer, rather than write a file that computes
    something else; bad bounds are errors too."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten())
    path = _exported(tmp_path, "w8a8", net)
    m = qatkit.load(path)
    out = str(tmp_path / "out.safetensors")
    m[2].set_output_clamp(None, 1.0)  # by hand: nothing in the model says so
    with pytest.raises(ValueError, match=r"export: layer '2' has a fused activation \(output_clamp=\(None, 1.0\)\)"):
        qatkit.export(m, out)
    with pytest.raises(ValueError, match="export_onnx: layer '2' has a fused activation"):
        qatkit.export_onnx(m, torch.randn(1, 3, 6, 6), str(tmp_path / "out.onnx"))
    m[2].set_output_clamp()
    m[0].set_output_clamp()  # its place stays a FusedActivation
    with pytest.raises(ValueError, match="export: '1' is a FusedActivation \\(ReLU\\) with no layer before it"):
        qatkit.export(m, out)
    m[0].set_output_clamp(0.0, None)
    qatkit.export(m, out)  # the pair again: the file is the unfused model's
    assert [c[1]["type"] for c in qatkit.serialization.read_header(out)["structure"]["children"]] == [
        "packed", "ReLU", "packed", "Flatten"]
    with pytest.raises(ValueError, match=r"clamp_min \(1.0\) must be at most clamp_max \(0.5\)"):
        m[2].set_output_clamp(1.0, 0.5)
    with pytest.raises(ValueError, match="clamp_max must not be NaN"):
        m[2].set_output_clamp(None, float("nan"))
    with pytest.raises(TypeError, match="clamp_min must be a float or None, got Tensor"):
        m[2].set_output_clamp(torch.tensor(0.0))
    with pytest.raises(ValueError, match="FusedActivation: kind must be"):
        FusedActivation("GELU")


def _mlp():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.BatchNorm1d(96), nn.ReLU6(),
                         nn.Linear(96, 64), nn.Hardtanh(-0.5, 0.5), nn.Linear(64, 10))


@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1", "int4_weight_only",
                                    "bitnet_b158"])
def test_linear_activations_fuse_with_the_same_bits(tmp_path, preset):
    """A loaded MLP's ReLU / ReLU6 / Hardtanh after each Linear (a folded BatchNorm1d's Identity
    between) clamp the Linear's output in place (BoundOp.clamped) on every Linear kernel: the
    unfused model's bits at batch 1 and 17, a 3-d input, one row, under a TorchFunctionMode (the
    op's slow path) and torch.compile (two presets); export writes the activations back."""
    net = _mlp().eval()
    x = torch.randn(64, 64) * 2
    path = str(tmp_path / f"{preset}.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(copy.deepcopy(net), [x], qatkit.preset(preset), equalize=False, verbose=False, progress=False)
        qatkit.export(q, path)
        fused, plain = qatkit.load(path), qatkit.load(path, fuse_activations=False)
    from qatkit.qat.convert import QuantizedLinear

    # every pair whose Linear is quantized (bitnet_b158 keeps its first layer float: not fused)
    pairs = [("0", "1"), ("2", "4"), ("5", "6")]
    want = [p for p in pairs if isinstance(fused[int(p[0])], QuantizedLinear)]
    assert fused.fusion_report["fused"] == want and len(want) >= 2
    bounds = {"0": (0.0, None), "2": (0.0, 6.0), "5": (-0.5, 0.5)}
    assert all(fused[int(i)].output_clamp == bounds[i] for i, _ in want)
    assert getattr(fused[7], "output_clamp", None) is None
    with torch.no_grad():
        for xi in (x[:1], x[:17], x[:12].reshape(3, 4, 64), x[0]):
            assert same_bits(fused(xi), plain(xi)), xi.shape
        from torch.overrides import TorchFunctionMode

        class Passthrough(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                return func(*args, **(kwargs or {}))

        with Passthrough():
            assert same_bits(fused(x[:5]), plain(x[:5]))
        if preset in ("w8a8", "bitnet_b158"):  # (the op's traced form; two presets: compiling takes seconds)
            # compiled against compiled: inductor's own code for a float layer (bitnet_b158's first
            # and last) need not give eager's bits
            torch._dynamo.reset()  # (Sequential.forward's recompile limit across the parameters)
            assert same_bits(torch.compile(fused, fullgraph=True)(x[:5]), torch.compile(plain, fullgraph=True)(x[:5]))
    again = str(tmp_path / "again.safetensors")
    qatkit.export(fused, again)
    kinds = [c[1]["type"] for c in qatkit.serialization.read_header(again)["structure"]["children"]]
    assert kinds[1:7] == ["ReLU", "packed", "Identity", "ReLU6", "packed", "Hardtanh"]
    last = want[-1][0]
    fused[int(last)].set_output_clamp(None, 1.0)  # by hand: the place after it holds other bounds
    with pytest.raises(ValueError, match=rf"export: layer '{last}' has a fused activation \(output_clamp=\(None, 1.0\)\)"):
        qatkit.export(fused, again)
