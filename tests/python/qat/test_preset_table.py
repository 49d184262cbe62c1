"""One preset table for Python and C++ (python/qatkit/qat/presets.json).

Python reads the file; libqatkit compiles it in. These tests prove both sides build the same
configs, specs and rules from it, and validate specs alike.
"""

import dataclasses
import json
import pathlib

import pytest

import qatkit
from qatkit import _C
from qatkit.qat import config as cfg

TABLE_PATH = pathlib.Path(cfg.__file__).with_name("presets.json")

# every preset with its default parameters, plus non-default values of each parameter
PRESET_CASES = [(name, {}) for name in sorted(cfg.PRESET_TABLE["presets"])] + [
    ("w4a8", {"group_size": 64}),
    ("w4a8", {"group_size": 128}),
    ("binaryconnect", {"stochastic": True}),
    ("int4_weight_only", {"group_size": 128}),
    ("int4_weight_only", {"group_size": 128, "symmetric": False}),
]


def as_json(obj):
    return json.loads(json.dumps(obj))  # tuples -> lists, as the C++ side writes them


def test_the_library_compiled_the_table_this_package_reads():
    assert json.loads(_C.nn_preset_table()) == json.loads(TABLE_PATH.read_text())


def test_both_sides_list_the_same_presets():
    assert _C.nn_preset_names() == sorted(cfg.PRESETS) == sorted(cfg.PRESET_TABLE["presets"])


def test_every_table_parameter_is_exercised():
    for name, entry in cfg.PRESET_TABLE["presets"].items():
        for param in entry.get("params", {}):
            assert any(n == name and param in p for n, p in PRESET_CASES), (name, param)


@pytest.mark.parametrize("name,params", PRESET_CASES, ids=lambda v: str(v))
def test_python_and_cpp_build_the_same_config(name, params):
    py = as_json(cfg.preset(name, **params).to_dict())
    cpp = json.loads(_C.nn_preset_json(name, json.dumps(params)))
    assert cpp == py


@pytest.mark.parametrize("rule", sorted(cfg.PRESET_TABLE["rules"]["first_last"]))
def test_python_and_cpp_apply_the_same_first_last_rule(rule):
    py = cfg.first_last_spec(rule)
    cpp = json.loads(_C.nn_first_last_json(rule))
    if py is None:
        assert cpp is None
    else:
        assert cpp["default"] == as_json(dataclasses.asdict(py))


def test_spec_defaults_agree_everywhere():
    table = cfg.PRESET_TABLE["spec_defaults"]
    assert as_json(dataclasses.asdict(cfg.QuantSpec())) == table
    assert json.loads(_C.nn_default_spec_json()) == table


@pytest.mark.parametrize("name", sorted(cfg.PRESET_TABLE["specs"]))
def test_every_named_spec_validates_alike(name):
    fields = cfg.PRESET_TABLE["specs"][name]
    params = {"group_size": 16, "stochastic": True, "symmetric": False}
    resolved = {k: params[v[1:]] if isinstance(v, str) and v.startswith("$") else v for k, v in fields.items()}
    py = as_json(dataclasses.asdict(cfg.spec_from_table(name, params)))
    assert json.loads(_C.nn_spec_json(json.dumps(resolved))) == py


BAD_SPECS = [
    ({"kind": "quaternary"}, "QuantSpec.kind must be one of"),
    ({"bits": 1}, "QuantSpec.bits must be in [2, 16]"),
    ({"kind": "ternary", "bits": 3}, "QuantSpec.bits must be 2 for kind 'ternary'"),
    ({"kind": "binary", "method": "twn"}, "QuantSpec.method must be one of"),
    ({"kind": "ternary", "estimator": "approx_sign"}, "QuantSpec.estimator must be one of"),
    ({"method": "absmean"}, "QuantSpec.method is for ternary/binary specs"),
    ({"granularity": "per_token"}, "QuantSpec.granularity 'per_token' needs scale='dynamic'"),
    ({"granularity": "per_group"}, "QuantSpec.group_size must be a positive int"),
    ({"group_size": 8}, "QuantSpec.group_size is only for granularity 'per_group'"),
    ({"stochastic": True}, "QuantSpec.stochastic is BinaryConnect's binary sampling"),
    ({"latent_clip": -1.0}, "QuantSpec.latent_clip must be positive"),
    ({"kind": "binary", "scale": "learned"}, "QuantSpec.scale 'learned' is for kind 'int'"),
    ({"kind": "binary", "granularity": "per_group", "group_size": 4}, "QuantSpec.granularity must be 'per_tensor' or"),
    ({"scale": "dynamic", "symmetric": False}, "QuantSpec.scale 'dynamic' is absmax-symmetric"),
    ({"momentum": 1.5}, "QuantSpec.momentum must be in [0, 1]"),
    ({"narrow_range": True, "symmetric": False}, "QuantSpec.narrow_range needs signed=True"),
]


@pytest.mark.parametrize("fields,message", BAD_SPECS, ids=lambda v: str(v)[:40])
def test_python_and_cpp_reject_the_same_specs(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        cfg.QuantSpec(**fields)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _C.nn_spec_json(json.dumps(fields))


def test_cpp_rejects_unknown_presets_parameters_and_fields():
    with pytest.raises(ValueError, match="unknown preset 'w9a9'; valid presets: binary_w1a8"):
        _C.nn_preset_json("w9a9")
    with pytest.raises(ValueError, match="preset 'w8a8' has no parameter 'group_size'"):
        _C.nn_preset_json("w8a8", '{"group_size": 8}')
    with pytest.raises(ValueError, match="unknown QuantSpec field 'bitz'"):
        _C.nn_spec_json('{"bitz": 4}')
    with pytest.raises(ValueError, match="malformed JSON at byte"):
        _C.nn_spec_json('{"bits": ')


def test_python_rejects_unknown_parameters():
    with pytest.raises(TypeError, match="unexpected keyword argument 'group_size'"):
        qatkit.preset("w8a8", group_size=8)
