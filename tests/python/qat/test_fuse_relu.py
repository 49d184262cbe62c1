"""qatkit.fuse_relu and load / load_into's ReLU fusion: a loaded conv that an nn.ReLU follows in an
nn.Sequential (with Identity modules between: a folded BatchNorm's place) runs the ReLU in its
kernel; the model computes the unfused model's bits; hooks, shared modules and custom forwards are
left alone (named in the report); export and export_onnx write the fused model as the unfused one."""

import copy
import warnings

import pytest
import torch
from torch import nn

import qatkit
from qatkit.qat.fuse import FusedReLU
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
        nn.Conv2d(8, 8, 1), nn.ReLU6(),  # not a ReLU: kept
        _Block(),
        nn.Conv2d(8, 8, 1),  # last: nothing after it
        nn.Flatten(), nn.Linear(8 * 8 * 8, 10), nn.ReLU())  # a Linear's ReLU: not a conv


def _exported(tmp_path, preset="w8a8", net=None):
    net = (net or _net()).eval()
    calib = [torch.randn(8, 3, 8, 8) for _ in range(3)]
    path = str(tmp_path / f"{preset}.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(copy.deepcopy(net), calib, qatkit.preset(preset), verbose=False, progress=False)
        qatkit.export(q, path)
    return path


@pytest.mark.parametrize("preset", ["w8a8", "xnor_w1a1", "w4a8"])
def test_load_fuses_the_sequential_relus_and_keeps_the_bits(tmp_path, preset):
    path = _exported(tmp_path, preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = qatkit.load_into(_net().eval(), path, fuse_relu=False)
        fused = qatkit.load_into(_net().eval(), path)
    assert fused.fusion_report == {"fused": [("0", "2"), ("3", "4")], "skipped": []}
    assert not hasattr(plain, "fusion_report")
    assert isinstance(fused[2], FusedReLU) and fused[2].inplace and isinstance(fused[4], FusedReLU)
    assert fused[0].relu and fused[3].relu and not fused[5].relu and not fused[7].conv.relu
    assert type(fused[6]) is nn.ReLU6 and type(fused[7].relu) is nn.ReLU and type(fused[11]) is nn.ReLU
    assert "relu=True" in repr(fused[0])
    x = torch.randn(5, 3, 8, 8) * 2
    x[1, 0, 2, 2] = float("nan")
    with torch.no_grad():
        for xi in (x, x.contiguous(memory_format=torch.channels_last), x[:1]):
            assert same_bits(fused(xi), plain(xi))
            # the fused conv alone is conv + ReLU; set_relu(False) gives the conv back
            y = fused[0](xi)
            assert same_bits(y, torch.relu(plain[0](xi)))
    fused[0].set_relu(False)
    with torch.no_grad():
        assert same_bits(fused[0](x), plain[0](x))


def test_hooks_and_shared_modules_are_not_fused(tmp_path):
    path = _exported(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = qatkit.load_into(_net().eval(), path, fuse_relu=False)
    seen = []
    m[2].register_forward_hook(lambda mod, i, o: seen.append(o.min()))  # would see the conv's output
    m[5].register_forward_pre_hook(lambda mod, i: None)
    shared = nn.ReLU()
    m[4] = shared
    m.add_module("again", nn.Sequential(shared))  # the same ReLU twice in the model
    report = qatkit.fuse_relu(m)
    assert report["fused"] == []
    assert [s[:2] for s in report["skipped"]] == [("0", "2"), ("3", "4")]
    assert "hook" in report["skipped"][0][2] and "more than once" in report["skipped"][1][2]
    assert type(m[2]) is nn.ReLU and m[4] is shared and not m[0].relu and not m[3].relu
    fresh = qatkit.load_into(_net().eval(), path, fuse_relu=False)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, i, o: None)
    try:  # a global hook sees every module's output: nothing fused
        report = qatkit.fuse_relu(fresh)
    finally:
        handle.remove()
    assert report["fused"] == [] and all("global module forward hook" in s[2] for s in report["skipped"])
    assert len(report["skipped"]) == 2 and type(fresh[2]) is nn.ReLU
    assert len(qatkit.fuse_relu(fresh)["fused"]) == 2  # once it is gone
    with pytest.raises(TypeError, match="fuse_relu: model must be a torch.nn.Module"):
        qatkit.fuse_relu("model")
    with pytest.raises(TypeError, match="fuse_relu must be True or False"):
        qatkit.load(path, fuse_relu="no")
    with pytest.raises(TypeError, match="fuse_relu must be True or False"):
        qatkit.load_into(_net(), path, fuse_relu=1)


def test_float_compute_is_not_fused(tmp_path):
    path = _exported(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = qatkit.load_into(_net().eval(), path, compute="float")
    assert not hasattr(m, "fusion_report") and type(m[2]) is nn.ReLU and not m[0].relu


def test_a_fused_model_exports_as_the_unfused_one(tmp_path):
    """qatkit.export of a fused loaded model writes the ReLUs back (the structure of qatkit.load's
    tree names ReLU, the convs carry no flag): loading that file unfused computes the same bits."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Flatten())
    path = _exported(tmp_path, "w8a8", net)
    fused = qatkit.load(path)
    assert len(fused.fusion_report["fused"]) == 2
    again = str(tmp_path / "again.safetensors")
    qatkit.export(fused, again)
    header = qatkit.serialization.read_header(again)
    kinds = [c[1]["type"] for c in header["structure"]["children"]]
    assert kinds == ["packed", "ReLU", "packed", "ReLU", "Flatten"]
    plain = qatkit.load(again, fuse_relu=False)
    assert [type(c) for c in plain] == [type(c) for c in qatkit.load(path, fuse_relu=False)]
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        assert same_bits(plain(x), fused(x))


def test_export_onnx_writes_the_fused_relus(tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is in scripts/requirements.txt; this environment lacks it")
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Flatten())
    path = _exported(tmp_path, "w8a8", net)
    counts = []
    for fuse in (False, True):
        m = qatkit.load(path, fuse_relu=fuse)
        out = str(tmp_path / f"m{fuse}.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qatkit.export_onnx(m, torch.randn(1, 3, 6, 6), out)
        counts.append(sum(n.op_type == "Relu" for n in onnx.load(out).graph.node))
    assert counts == [2, 2]


def test_mobilenet_v2_fuses_every_conv_relu(tmp_path):
    """The repo's MobileNetV2 (small input): 34 conv + ReLU pairs in its Sequentials, fused by load;
    the logits are the unfused model's bits, NCHW and channels_last."""
    path = _exported(tmp_path, "xnor_w1a1", mobilenet_v2(10, small_input=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = qatkit.load_into(mobilenet_v2(10, small_input=True).eval(), path)
        plain = qatkit.load_into(mobilenet_v2(10, small_input=True).eval(), path, fuse_relu=False)
    assert len(fused.fusion_report["fused"]) == 34 and fused.fusion_report["skipped"] == []
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            assert same_bits(fused(xi), plain(xi))
