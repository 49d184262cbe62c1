"""QAT configs: validation names the field and the valid choices; presets are well-formed."""

import dataclasses

import pytest

import qatkit
from qatkit.qat import LayerSpec, QATConfig, QuantSpec


@pytest.mark.parametrize(
    "kwargs,exc,fragment",
    [
        ({"kind": "int3"}, ValueError, "QuantSpec.kind must be one of 'int', 'ternary', 'binary', got 'int3'"),
        ({"bits": 1}, ValueError, "QuantSpec.bits must be in [2, 16] for kind 'int', got 1"),
        ({"bits": 17}, ValueError, "QuantSpec.bits must be in [2, 16]"),
        ({"bits": 8.0}, TypeError, "QuantSpec.bits must be an int, got float"),
        ({"granularity": "per_row"}, ValueError, "QuantSpec.granularity must be one of 'per_tensor'"),
        ({"granularity": "per_group"}, ValueError, "QuantSpec.group_size must be a positive int"),
        ({"group_size": 32}, ValueError, "group_size is only for granularity 'per_group'"),
        ({"granularity": "per_token"}, ValueError, "'per_token' needs scale='dynamic'"),
        ({"scale": "minmax"}, ValueError, "QuantSpec.scale must be one of 'static', 'dynamic', 'learned'"),
        ({"observer": "ema"}, ValueError, "QuantSpec.observer must be one of 'moving_average', 'minmax'"),
        ({"momentum": 1.5}, ValueError, "QuantSpec.momentum must be in [0, 1]"),
        ({"estimator": "approx_sign"}, ValueError, "QuantSpec.estimator must be one of 'clipped_ste'"),
        ({"kind": "binary", "estimator": "tanh"}, ValueError, "'identity', 'clipped_ste', 'approx_sign'"),
        ({"kind": "ternary", "method": "bitnet"}, ValueError, "QuantSpec.method must be one of 'absmean', 'twn'"),
        ({"kind": "binary", "scale": "learned"}, ValueError, "'learned' is for kind 'int'"),
        ({"kind": "int", "method": "twn"}, ValueError, "method is for ternary/binary"),
        ({"stochastic": True}, ValueError, "needs kind 'binary'"),
        ({"narrow_range": True, "symmetric": False}, ValueError, "narrow_range needs signed=True and symmetric"),
        ({"scale": "dynamic", "symmetric": False}, ValueError, "'dynamic' is absmax-symmetric"),
        ({"latent_clip": -1.0}, ValueError, "latent_clip must be positive"),
    ],
)
def test_quant_spec_validation(kwargs, exc, fragment):
    with pytest.raises(exc) as e:
        QuantSpec(**kwargs)
    assert fragment in str(e.value)


def test_spec_ranges_and_frozen():
    assert (QuantSpec(bits=8).quant_min, QuantSpec(bits=8).quant_max) == (-128, 127)
    assert QuantSpec(bits=8, narrow_range=True).quant_min == -127
    assert (QuantSpec(bits=4, signed=False, symmetric=False).quant_min, QuantSpec(bits=4, signed=False).quant_max) == (
        0,
        15,
    )
    assert QuantSpec(kind="ternary").bits == 2 and QuantSpec(kind="ternary").method == "absmean"
    with pytest.raises(dataclasses.FrozenInstanceError):
        QuantSpec().bits = 4


def test_config_validation():
    with pytest.raises(ValueError, match="QATConfig.first_last must be one of None, 'float', 'int8', got 'fp16'"):
        QATConfig(first_last="fp16")
    with pytest.raises(TypeError, match="QATConfig.overrides entries must be"):
        QATConfig(overrides=[("fc*", QuantSpec())])
    with pytest.raises(TypeError, match="LayerSpec.weight must be a QuantSpec"):
        LayerSpec(weight="int8")
    with pytest.raises(ValueError, match="activation cannot be ternary"):
        LayerSpec(activation=QuantSpec(kind="ternary"))


@pytest.mark.parametrize("name", sorted(qatkit.qat.PRESETS))
def test_presets(name):
    cfg = qatkit.preset(name)
    assert isinstance(cfg, QATConfig) and cfg.name.startswith(name.split("_g")[0])
    assert cfg.default.weight is not None
    assert isinstance(cfg.to_dict(), dict)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown preset 'w2a2'; valid presets: binary_w1a8, binary_weight_only, binaryconnect"):
        qatkit.preset("w2a2")


def test_w4a8_group_size_argument():
    assert qatkit.w4a8(group_size=64).default.weight.group_size == 64
