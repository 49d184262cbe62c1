"""Bad input to every public QAT entry point: each row is a call, the exception type and a fragment
of the message (which names the argument, what was expected and what came)."""

import pytest
import torch
from torch import nn

import qatkit
from qatkit.qat import (
    ActFakeQuantizer,
    LayerSpec,
    QATConfig,
    QuantConvBn2d,
    QuantLinear,
    QuantSpec,
    WeightFakeQuantizer,
)


def _mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _prepared():
    return qatkit.prepare_qat(_mlp(), qatkit.w8a8())


def _converted():
    q = _prepared()
    qatkit.qat.calibrate(q, [torch.randn(4, 4)])
    return qatkit.convert(q)


CASES = [
    (
        "prepare_qat: model not a Module",
        lambda: qatkit.prepare_qat("mlp", qatkit.w8a8()),
        TypeError,
        "prepare_qat: model must be an nn.Module, got str",
    ),
    (
        "prepare_qat: config not a QATConfig",
        lambda: qatkit.prepare_qat(_mlp(), {"bits": 8}),
        TypeError,
        "config must be a QATConfig (e.g. qatkit.w8a8()), got dict",
    ),
    (
        "prepare_qat: nothing to quantize",
        lambda: qatkit.prepare_qat(nn.Sequential(nn.ReLU()), qatkit.w8a8()),
        ValueError,
        "nothing to quantize",
    ),
    (
        "prepare_qat: all skipped",
        lambda: qatkit.prepare_qat(_mlp(), QATConfig(default=qatkit.w8a8().default, skip=("*",))),
        ValueError,
        "every supported layer was skipped",
    ),
    (
        "prepare_qat: already prepared",
        lambda: qatkit.prepare_qat(_prepared(), qatkit.w8a8()),
        ValueError,
        "already prepared models hold Quant* layers",
    ),
    ("convert: float model", lambda: qatkit.convert(_mlp()), ValueError, "has no QAT layers; call qatkit.prepare_qat"),
    ("convert: converted model", lambda: qatkit.convert(_converted()), ValueError, "the model is converted already"),
    # a truthy string flag turned the option on: inplace="no" prepared the caller's model in place
    ("prepare_qat: inplace str", lambda: qatkit.prepare_qat(_mlp(), qatkit.w8a8(), inplace="no"), TypeError,
     "prepare_qat: inplace must be True or False, got 'no'"),
    ("convert: integer str", lambda: qatkit.convert(_prepared(), integer="no"), TypeError,
     "convert: integer must be True or False, got 'no'"),
    # tuple("0.fc") was four one-character patterns
    ("QATConfig: skip str", lambda: QATConfig(default=qatkit.w8a8().default, skip="0.fc"), TypeError,
     "QATConfig.skip must be a sequence of str patterns, got the str '0.fc'; use skip=('0.fc',)"),
    ("QATConfig.from_dict: skip str", lambda: QATConfig.from_dict({**qatkit.w8a8().to_dict(), "skip": "0.fc"}),
     TypeError, "QATConfig.skip must be a sequence of str patterns"),
    (
        "convert: not calibrated",
        lambda: qatkit.convert(_prepared()),
        ValueError,
        "input quantizer of layer '0' has not observed any data",
    ),
    ("preset: unknown name", lambda: qatkit.preset("int3"), ValueError, "unknown preset 'int3'; valid presets:"),
    (
        "QuantSpec: bad kind",
        lambda: QuantSpec(kind="float"),
        ValueError,
        "QuantSpec.kind must be one of 'int', 'ternary', 'binary', got 'float'",
    ),
    ("QuantSpec: bits type", lambda: QuantSpec(bits="8"), TypeError, "QuantSpec.bits must be an int, got str"),
    (
        "LayerSpec: weight type",
        lambda: LayerSpec(weight=8),
        TypeError,
        "LayerSpec.weight must be a QuantSpec or None, got int",
    ),
    (
        "QATConfig: default type",
        lambda: QATConfig(default=QuantSpec()),
        TypeError,
        "QATConfig.default must be a LayerSpec, got QuantSpec",
    ),
    (
        "QATConfig: skip entries",
        lambda: QATConfig(skip=(3,)),
        TypeError,
        "QATConfig.skip entries must be str patterns, got 3",
    ),
    (
        "enable_fake_quant: which",
        lambda: qatkit.qat.enable_fake_quant(_prepared(), which="bias"),
        ValueError,
        "which must be 'all', 'weights' or 'activations', got 'bias'",
    ),
    (
        "calibrate: no activation quantizers",
        lambda: qatkit.qat.calibrate(_mlp(), [torch.randn(2, 4)]),
        ValueError,
        "calibrate: the model has no activation quantizers",
    ),
    (
        "WeightFakeQuantizer: dynamic scale",
        lambda: WeightFakeQuantizer(QuantSpec(scale="dynamic"), torch.randn(4, 4)),
        ValueError,
        "'dynamic' is for activations",
    ),
    (
        "WeightFakeQuantizer: spec type",
        lambda: WeightFakeQuantizer("int8", torch.randn(4, 4)),
        TypeError,
        "spec must be a QuantSpec, got str",
    ),
    (
        "ActFakeQuantizer: spec type",
        lambda: ActFakeQuantizer(None),
        TypeError,
        "spec must be a QuantSpec, got NoneType",
    ),
    (
        "QuantLinear.from_float: spec type",
        lambda: QuantLinear.from_float(nn.Linear(2, 2), QuantSpec()),
        TypeError,
        "layer_spec must be a LayerSpec, got QuantSpec",
    ),
    (
        "QuantConvBn2d: channel mismatch",
        lambda: QuantConvBn2d.from_float(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(5), LayerSpec()),
        ValueError,
        "bn.num_features (5) must equal conv.out_channels (4)",
    ),
    (
        "QuantConvBn2d: non-affine BN",
        lambda: QuantConvBn2d.from_float(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, affine=False), LayerSpec()),
        ValueError,
        "must be affine and track running statistics",
    ),
    (
        "load_state_dict: other config",
        lambda: qatkit.prepare_qat(_mlp(), QATConfig(default=qatkit.w4a8(2).default)).load_state_dict(
            _prepared().state_dict()
        ),
        ValueError,
        "key '0.weight_fake_quant._extra_state' holds a quantizer saved with another spec",
    ),
    (
        "lsq_grad_factor: non-positive",
        lambda: qatkit.ops.lsq_grad_factor(0, 7),
        ValueError,
        "elements_per_scale and quant_max must be positive, got 0, 7",
    ),
    # the switches read their flags by truthiness ("yes", 1, None) and took any object as a model;
    # calibrate failed inside its loop on None batches and a non-callable forward
    (
        "enable_fake_quant: on not a bool",
        lambda: qatkit.qat.enable_fake_quant(_prepared(), "yes"),
        TypeError,
        "enable_fake_quant: on must be True or False, got 'yes'",
    ),
    (
        "enable_observer: on not a bool",
        lambda: qatkit.qat.enable_observer(_prepared(), None),
        TypeError,
        "enable_observer: on must be True or False, got None",
    ),
    (
        "freeze_bn: on not a bool",
        lambda: qatkit.qat.freeze_bn(_prepared(), 1),
        TypeError,
        "freeze_bn: on must be True or False, got 1",
    ),
    (
        "disable_fake_quant: model not a Module",
        lambda: qatkit.qat.disable_fake_quant("model"),
        TypeError,
        "enable_fake_quant: model must be an nn.Module, got str",
    ),
    (
        "calibrate: batches None",
        lambda: qatkit.qat.calibrate(_prepared(), None),
        TypeError,
        "calibrate: batches must be an iterable of inputs (a list of tensors, a DataLoader), got NoneType",
    ),
    (
        "calibrate: forward not callable",
        lambda: qatkit.qat.calibrate(_prepared(), [torch.randn(2, 4)], forward=5),
        TypeError,
        "calibrate: forward must be a callable forward(model, batch), got int",
    ),
    (
        "QuantLinear built without a spec",
        lambda: QuantLinear(4, 8),
        TypeError,
        "QuantLinear: layer_spec is required",
    ),
    (
        "QAT layer on a bad input: dtype",
        lambda: _prepared()(torch.randint(0, 3, (2, 4))),
        TypeError,
        "input must be float32, float64, float16 or bfloat16, got Long",
    ),
]


@pytest.mark.parametrize("name,call,exc,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, call, exc, fragment):
    with pytest.raises(exc) as e:
        call()
    assert fragment in str(e.value), str(e.value)


def test_a_switch_on_a_float_model_warns_that_it_changes_nothing():
    for switch in (qatkit.qat.enable_fake_quant, qatkit.qat.disable_fake_quant, qatkit.qat.enable_observer,
                   qatkit.qat.disable_observer):
        with pytest.warns(UserWarning, match="the model has no fake quantizers, so this changes nothing"):
            switch(_mlp())
