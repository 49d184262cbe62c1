"""QAT configuration: frozen dataclasses validated on construction, and the named presets.

A :class:`QuantSpec` says how one tensor (a layer's weight or its input activation) is quantized;
a :class:`QATConfig` maps a model's layers to a weight spec and an activation spec, with name
patterns for overrides and for layers to keep in float. Presets (``w8a8()``, ``bitnet_b158()``…)
are plain functions returning a config, so they can be inspected, copied with
``dataclasses.replace`` and compared.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from importlib import resources
from typing import Dict, Optional, Tuple

__all__ = [
    "QuantSpec",
    "LayerSpec",
    "QATConfig",
    "PRESETS",
    "preset",
    "w8a8",
    "w4a8",
    "w4a4_lsq",
    "ternary_twn",
    "bitnet_b158",
    "binary_w1a8",
    "xnor_w1a1",
    "binaryconnect",
    "int8_weight_only",
    "int4_weight_only",
    "ternary_weight_only",
    "binary_weight_only",
    "PRESET_TABLE",
    "first_last_spec",
    "spec_from_table",
    "Granularity",
    "PerTensor",
    "PerAxis",
    "PerGroup",
    "PerToken",
]

#: The one preset table (``presets.json``), shared with the C++ library.
PRESET_TABLE: dict = json.loads(resources.files(__package__).joinpath("presets.json").read_text(encoding="utf-8"))
_CHOICES = PRESET_TABLE["choices"]
KINDS = tuple(_CHOICES["kind"])
GRANULARITIES = tuple(_CHOICES["granularity"])
SCALES = tuple(_CHOICES["scale"])
OBSERVERS = tuple(_CHOICES["observer"])
INT_ESTIMATORS = tuple(_CHOICES["estimator"]["int"])
TERNARY_ESTIMATORS = tuple(_CHOICES["estimator"]["ternary"])
BINARY_ESTIMATORS = tuple(_CHOICES["estimator"]["binary"])
TERNARY_METHODS = tuple(_CHOICES["method"]["ternary"])
BINARY_METHODS = tuple(_CHOICES["method"]["binary"])
FIRST_LAST = tuple(_CHOICES["first_last"])
SCALE_DTYPES = tuple(_CHOICES["scale_dtype"])


def _choice(cls: str, name: str, value, choices) -> None:
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{cls}.{name} must be one of {valid}, got {value!r}")


def check_flags(where: str, **flags) -> None:
    """Each flag must be a bool: a truthy string ("no", "false") or a number would turn the
    option on (or off) without a word."""
    for name, v in flags.items():
        if not isinstance(v, bool):
            raise TypeError(f"{where}: {name} must be True or False, got {v!r}")


_BOOL_FIELDS = ("signed", "symmetric", "narrow_range", "stochastic", "lsq_grad_scale")
_INT_FIELDS = ("bits", "axis")
_STR_FIELDS = ("kind", "granularity", "scale", "observer", "estimator", "scale_dtype")


def _check_types(spec) -> None:
    """TypeError naming the field for a value of the wrong type ("no" for a bool, "1" for an int,
    True for an int, "0.1" for a float): such values would otherwise be read by truthiness."""

    def bad(name, expected):
        v = getattr(spec, name)
        raise TypeError(f"QuantSpec.{name} must be {expected}, got {type(v).__name__} {v!r}")

    for name in _BOOL_FIELDS:
        if not isinstance(getattr(spec, name), bool):
            bad(name, "a bool")
    for name in _INT_FIELDS:
        v = getattr(spec, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            bad(name, "an int")
    for name in _STR_FIELDS:
        if not isinstance(getattr(spec, name), str):
            bad(name, "a str")
    if not -(2**31) <= spec.axis < 2**31:  # (a tensor dim; the C++ QuantSpec takes the same range)
        raise ValueError(f"QuantSpec.axis must be in [-2^31, 2^31), got {spec.axis}")
    if spec.method is not None and not isinstance(spec.method, str):
        bad("method", "a str or None")
    gs = spec.group_size
    if gs is not None and (isinstance(gs, bool) or not isinstance(gs, numbers.Integral)):
        bad("group_size", "an int or None")
    for name, optional in (("momentum", False), ("latent_clip", True)):
        v = getattr(spec, name)
        if (v is None and not optional) or (v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real))):
            bad(name, "a float" + (" or None" if optional else ""))
    # numpy scalars and the like become plain Python numbers (checkpoints, JSON, the C++ side)
    for name in _INT_FIELDS + ("group_size",):
        if getattr(spec, name) is not None:
            object.__setattr__(spec, name, int(getattr(spec, name)))
    for name in ("momentum", "latent_clip"):
        if getattr(spec, name) is not None:
            object.__setattr__(spec, name, float(getattr(spec, name)))


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""

    def op_args(self) -> dict:
        """The ``axis`` / ``group_size`` arguments of the qatkit ops."""
        return {"axis": None, "group_size": None}


@dataclass(frozen=True)
class PerAxis:
    """One scale per index of dim ``axis`` (per channel)."""

    axis: int

    def op_args(self) -> dict:
        return {"axis": self.axis, "group_size": None}


@dataclass(frozen=True)
class PerGroup:
    """One scale per block of ``group_size`` consecutive elements of the last dim."""

    group_size: int

    def op_args(self) -> dict:
        return {"axis": None, "group_size": self.group_size}


@dataclass(frozen=True)
class PerToken:
    """One scale per row of the last dim, computed from the tensor at every call (activations)."""

    def op_args(self) -> dict:
        raise ValueError("per-token scales come from quantize_per_token, not from axis / group_size")


Granularity = (PerTensor, PerAxis, PerGroup, PerToken)


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is fake-quantized during QAT.

    Args:
        kind: ``"int"`` (affine integer codes), ``"ternary"`` ({-a, 0, +a}) or ``"binary"`` ({-a, +a}).
        bits: code width, 2..16 for ``"int"`` (1 for binary and 2 for ternary are implied).
        signed: signed codes ``[-2^(b-1), 2^(b-1)-1]`` or unsigned ``[0, 2^b - 1]``.
        symmetric: zero point fixed at 0 (signed) / mid-range (unsigned), or an affine range.
        narrow_range: drop the most negative code (``[-127, 127]`` for 8 bits), as SIMD kernels want.
        granularity: ``"per_tensor"``, ``"per_channel"`` (along ``axis``), ``"per_group"`` (blocks of
            ``group_size`` along the flattened input dimension of a weight, the last dim of an
            activation) or ``"per_token"`` (activations: one scale per row of the last dim).
        axis: channel axis for per-channel (weights: 0, the output channel).
        group_size: block size for per-group.
        scale: ``"static"`` (weights: min/max of the current weight every step; activations: an
            observer's running min/max, in buffers), ``"dynamic"`` (from the tensor itself at every
            call, activations) or ``"learned"`` (LSQ: a trainable step size, and a trainable offset
            when asymmetric — LSQ+).
        observer: ``"moving_average"`` (EMA of batch min/max, Jacob et al.) or ``"minmax"``.
        momentum: EMA weight of a new batch.
        estimator: gradient of sign() for binary tensors (``"identity"``, ``"clipped_ste"``,
            ``"approx_sign"``, ``"swish_sign"``); integer and ternary tensors use the STE.
        method: ternary ``"absmean"`` (BitNet b1.58) or ``"twn"``; binary scaling ``"none"``,
            ``"mean_abs"`` (XNOR) or ``"bitnet"`` (Sign(W - mean W) · mean|W|).
        stochastic: BinaryConnect's stochastic binarization in training (deterministic at eval).
        latent_clip: clip the float shadow weight to ``[-c, c]`` after each optimizer step
            (:func:`qatkit.qat.clip_latent_weights`; BinaryConnect uses 1).
        lsq_grad_scale: scale LSQ step-size gradients by ``1/sqrt(N * Q_P)`` (the LSQ paper).
        scale_dtype: the dtype weight scales are rounded to (``"float32"``, ``"float16"``,
            ``"bfloat16"``): the fake quant computes with the rounded scale, so a format that
            stores fp16 scales (GGUF's Q8_0 / Q4_0 / TQ2_0, :func:`qatkit.export_gguf`) holds
            exactly what QAT trained with; exported files store the scales in it. Weights with
            static scales (integer, ternary, binary) only; learned and activation scales stay
            float32. The C++ modules round the same way.

    Raises:
        ValueError: a field outside its valid choices, naming the field and the choices.
    """

    kind: str = "int"
    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    narrow_range: bool = False
    granularity: str = "per_tensor"
    axis: int = 0
    group_size: Optional[int] = None
    scale: str = "static"
    observer: str = "moving_average"
    momentum: float = 0.01
    estimator: str = "clipped_ste"
    method: Optional[str] = None
    stochastic: bool = False
    latent_clip: Optional[float] = None
    lsq_grad_scale: bool = True
    scale_dtype: str = "float32"

    def __post_init__(self):
        c = "QuantSpec"
        _check_types(self)
        _choice(c, "kind", self.kind, KINDS)
        _choice(c, "granularity", self.granularity, GRANULARITIES)
        _choice(c, "scale", self.scale, SCALES)
        _choice(c, "observer", self.observer, OBSERVERS)
        _choice(c, "scale_dtype", self.scale_dtype, SCALE_DTYPES)
        if self.scale_dtype != "float32" and self.scale == "learned":
            raise ValueError(f"{c}.scale_dtype {self.scale_dtype!r} is for static scales; learned (LSQ) scales stay float32")
        if self.scale_dtype != "float32" and self.scale == "dynamic":
            raise ValueError(f"{c}.scale_dtype {self.scale_dtype!r} is for weight scales; dynamic scales stay float32")
        if self.kind == "int":
            if not 2 <= self.bits <= 16:
                raise ValueError(f"{c}.bits must be in [2, 16] for kind 'int', got {self.bits}")
            _choice(c, "estimator", self.estimator, INT_ESTIMATORS)
            if self.method is not None:
                raise ValueError(f"{c}.method is for ternary/binary specs, got {self.method!r} with kind 'int'")
            if self.narrow_range and not (self.signed and self.symmetric):
                raise ValueError(f"{c}.narrow_range needs signed=True and symmetric=True")
        else:
            expected_bits = 2 if self.kind == "ternary" else 1
            if self.bits not in (expected_bits, 8):  # 8 is the dataclass default: accept it
                raise ValueError(f"{c}.bits must be {expected_bits} for kind {self.kind!r}, got {self.bits}")
            object.__setattr__(self, "bits", expected_bits)
            methods = TERNARY_METHODS if self.kind == "ternary" else BINARY_METHODS
            object.__setattr__(self, "method", self.method if self.method is not None else methods[0])
            _choice(c, "method", self.method, methods)
            _choice(c, "estimator", self.estimator, BINARY_ESTIMATORS if self.kind == "binary" else TERNARY_ESTIMATORS)
            if self.scale == "learned":
                raise ValueError(f"{c}.scale 'learned' is for kind 'int' (LSQ), got kind {self.kind!r}")
            if self.granularity in ("per_group", "per_token"):
                raise ValueError(
                    f"{c}.granularity must be 'per_tensor' or 'per_channel' for kind {self.kind!r}, "
                    f"got {self.granularity!r}"
                )
        if self.stochastic and self.kind != "binary":
            raise ValueError(f"{c}.stochastic is BinaryConnect's binary sampling: needs kind 'binary'")
        if self.granularity == "per_group":
            if not isinstance(self.group_size, int) or self.group_size < 1:
                raise ValueError(f"{c}.group_size must be a positive int for 'per_group', got {self.group_size!r}")
        elif self.group_size is not None:
            raise ValueError(f"{c}.group_size is only for granularity 'per_group', got {self.granularity!r}")
        if self.granularity == "per_token" and self.scale != "dynamic":
            raise ValueError(f"{c}.granularity 'per_token' needs scale='dynamic', got {self.scale!r}")
        if self.scale == "dynamic" and self.kind == "int" and not self.symmetric:
            raise ValueError(f"{c}.scale 'dynamic' is absmax-symmetric: needs symmetric=True")
        if self.scale == "dynamic" and self.kind == "int" and not self.signed:
            raise ValueError(f"{c}.scale 'dynamic' uses signed codes: needs signed=True")
        if self.scale == "learned" and self.granularity in ("per_group", "per_token"):
            raise ValueError(f"{c}.scale 'learned' supports 'per_tensor' and 'per_channel', got {self.granularity!r}")
        if not 0.0 <= float(self.momentum) <= 1.0:
            raise ValueError(f"{c}.momentum must be in [0, 1], got {self.momentum}")
        if self.latent_clip is not None and not (math.isfinite(float(self.latent_clip)) and float(self.latent_clip) > 0):
            raise ValueError(f"{c}.latent_clip must be positive or None, got {self.latent_clip}")

    @property
    def layout(self):
        """The granularity as a typed value: :class:`PerTensor`, :class:`PerAxis` (``axis``),
        :class:`PerGroup` (``group_size``) or :class:`PerToken`."""
        if self.granularity == "per_channel":
            return PerAxis(self.axis)
        if self.granularity == "per_group":
            return PerGroup(self.group_size)
        if self.granularity == "per_token":
            return PerToken()
        return PerTensor()

    @property
    def quantizer_kind(self) -> str:
        """Which quantizer family implements this spec: ``"affine_static"``, ``"affine_learned"``,
        ``"affine_dynamic"``, ``"ternary"`` or ``"binary"`` (the registry key of
        :mod:`qatkit.qat.quantizers`)."""
        if self.kind != "int":
            return self.kind
        return "affine_" + self.scale

    @property
    def quant_min(self) -> int:
        """Smallest integer code."""
        if self.kind != "int":
            return -1
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)

    @property
    def quant_max(self) -> int:
        """Largest integer code."""
        if self.kind != "int":
            return 1
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def describe(self) -> str:
        """Short human-readable form, e.g. ``int8 sym per_channel static``."""
        if self.kind == "int":
            g = self.granularity + (f"({self.group_size})" if self.group_size else "")
            return f"int{self.bits} {'sym' if self.symmetric else 'asym'} {g} {self.scale}"
        return f"{self.kind} {self.method} {self.granularity}" + (" stochastic" if self.stochastic else "")


@dataclass(frozen=True)
class LayerSpec:
    """What one layer gets: a weight spec and an input-activation spec (``None`` = keep float)."""

    weight: Optional[QuantSpec] = None
    activation: Optional[QuantSpec] = None

    def __post_init__(self):
        for name in ("weight", "activation"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, QuantSpec):
                raise TypeError(f"LayerSpec.{name} must be a QuantSpec or None, got {type(v).__name__}")
        if self.activation is not None and self.activation.kind == "ternary":
            raise ValueError("LayerSpec.activation cannot be ternary (use 'int' or 'binary')")


@dataclass(frozen=True)
class QATConfig:
    """How :func:`qatkit.prepare_qat` treats a model.

    Args:
        default: the spec of every supported layer not matched by ``overrides`` or ``skip``.
        overrides: ``(pattern, LayerSpec)`` pairs; the first fnmatch pattern that matches a layer's
            qualified name wins (``"features.0"``, ``"*.proj"``).
        skip: fnmatch patterns of layers to keep in float.
        first_last: ``"float"`` keeps the first and last supported layers in float, ``"int8"``
            gives them W8A8 (per-channel weights), ``None`` treats them like the rest. First and
            last in call order where ``prepare_qat`` has the dataflow (``example_inputs``, or a
            torch.fx graph), else in registration order.
        bitlinear: replace ``nn.Linear`` by :class:`qatkit.qat.BitLinear` (BitNet b1.58) instead of
            :class:`QuantLinear`.
        fold_bn: fuse every ``Conv2d`` -> ``BatchNorm2d`` pair whose intermediate has no other
            consumer into :class:`QuantConvBn2d` (Krishnamoorthi's folding with correction); pairs
            are found from the model's dataflow (:mod:`qatkit.qat.graph`: one traced batch given
            as ``prepare_qat(..., example_inputs=)``, else torch.fx, else ``nn.Sequential``
            neighbours) and every BatchNorm left unfolded is reported with the reason.
        embeddings: quantize ``nn.Embedding`` tables with the default spec. Off by default: an
            embedding is a lookup table, not a compute layer, and quantizing a transformer's word
            embedding is a separate choice (an override pattern naming an embedding quantizes it
            either way). ``first_last`` counts compute layers (Linear, Conv) only.
        name: a label for tables and checkpoints.
    """

    default: LayerSpec = field(default_factory=LayerSpec)
    overrides: Tuple[Tuple[str, LayerSpec], ...] = ()
    skip: Tuple[str, ...] = ()
    first_last: Optional[str] = None
    bitlinear: bool = False
    fold_bn: bool = True
    embeddings: bool = False
    name: str = "custom"

    def __post_init__(self):
        if not isinstance(self.default, LayerSpec):
            raise TypeError(f"QATConfig.default must be a LayerSpec, got {type(self.default).__name__}")
        object.__setattr__(self, "overrides", tuple(tuple(o) for o in self.overrides))
        if isinstance(self.skip, str):  # tuple("0.fc") would be four one-character patterns
            raise TypeError(f"QATConfig.skip must be a sequence of str patterns, got the str {self.skip!r}; "
                            f"use skip=({self.skip!r},)")
        object.__setattr__(self, "skip", tuple(self.skip))
        for o in self.overrides:
            if len(o) != 2 or not isinstance(o[0], str) or not isinstance(o[1], LayerSpec):
                raise TypeError(f"QATConfig.overrides entries must be (str pattern, LayerSpec), got {o!r}")
        for s in self.skip:
            if not isinstance(s, str):
                raise TypeError(f"QATConfig.skip entries must be str patterns, got {s!r}")
        _choice("QATConfig", "first_last", self.first_last, (None,) + FIRST_LAST)
        for flag in ("bitlinear", "fold_bn", "embeddings"):
            if not isinstance(getattr(self, flag), bool):
                v = getattr(self, flag)
                raise TypeError(f"QATConfig.{flag} must be a bool, got {type(v).__name__} {v!r}")

    def to_dict(self) -> dict:
        """Plain-data form (for checkpoints, JSON and the C++ side)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QATConfig":
        """The config :meth:`to_dict` wrote (also after a JSON round trip: lists for tuples).

        Raises:
            TypeError / ValueError: ``d`` is not such a dict, naming the field.
        """
        if not isinstance(d, dict):
            raise TypeError(f"QATConfig.from_dict: expected a dict, got {type(d).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"QATConfig.from_dict: unknown field(s) {unknown}; fields are {sorted(fields)}")

        def spec(x):
            return None if x is None else QuantSpec(**x)

        def layer(x, where):
            if not isinstance(x, dict):
                raise TypeError(f"QATConfig.from_dict: {where} must be a dict of weight/activation specs, got {x!r}")
            return LayerSpec(spec(x.get("weight")), spec(x.get("activation")))

        kw = dict(d)
        if "default" in kw:
            kw["default"] = layer(kw["default"], "default")
        if "overrides" in kw:
            kw["overrides"] = tuple((p, layer(s, f"overrides[{p!r}]")) for p, s in kw["overrides"])
        if "skip" in kw and not isinstance(kw["skip"], str):  # a str: __post_init__ says so
            kw["skip"] = tuple(kw["skip"])
        return cls(**kw)


# ---------------------------------------------------------------- presets (from the table)


def _resolve(value, params: dict, where: str):
    if isinstance(value, str) and value.startswith("$"):
        if value[1:] not in params:
            raise ValueError(f"{where}: no preset parameter {value[1:]!r}")
        return params[value[1:]]
    return value


def spec_from_table(ref, params: Optional[dict] = None, where: str = "preset table") -> Optional[QuantSpec]:
    """The :class:`QuantSpec` of a table reference: a name in the table's ``specs``, an object of
    QuantSpec fields (``"$name"`` values take ``params[name]``), or ``None``."""
    if ref is None:
        return None
    if isinstance(ref, str):
        if ref not in PRESET_TABLE["specs"]:
            raise ValueError(f"{where}: unknown spec {ref!r}; the table has {', '.join(sorted(PRESET_TABLE['specs']))}")
        where, ref = f"preset table specs.{ref}", PRESET_TABLE["specs"][ref]
    return QuantSpec(**{k: _resolve(v, params or {}, f"{where}.{k}") for k, v in ref.items()})


def first_last_spec(rule: str) -> Optional[LayerSpec]:
    """The :class:`LayerSpec` the table's first/last rule gives (``"int8"``), or ``None`` (``"float"``)."""
    rules = PRESET_TABLE["rules"]["first_last"]
    _choice("QATConfig", "first_last", rule, tuple(rules))
    r = rules[rule]
    if r is None:
        return None
    where = f"preset table rules.first_last.{rule}"
    return LayerSpec(spec_from_table(r.get("weight"), where=where), spec_from_table(r.get("activation"), where=where))


def _preset(name: str, **params) -> QATConfig:
    entry = PRESET_TABLE["presets"][name]
    p = dict(entry.get("params", {}))
    for k, v in params.items():
        if k not in p:
            raise TypeError(f"preset {name!r} has no parameter {k!r}; it takes {sorted(p) or 'none'}")
        p[k] = v
    where = f"preset table presets.{name}"
    label = entry.get("name", name).format(**{k: json.dumps(v) if not isinstance(v, str) else v for k, v in p.items()})
    label += "".join(suffix for k, suffix in entry.get("name_suffix", {}).items() if p[k])
    return QATConfig(
        default=LayerSpec(
            spec_from_table(entry.get("weight"), p, f"{where}.weight"),
            spec_from_table(entry.get("activation"), p, f"{where}.activation"),
        ),
        first_last=entry.get("first_last"),
        bitlinear=entry.get("bitlinear", False),
        fold_bn=entry.get("fold_bn", True),
        embeddings=entry.get("embeddings", False),
        name=label,
    )


def _documented(name: str):
    def wrap(fn):
        fn.__doc__ = PRESET_TABLE["presets"][name]["doc"]
        return fn

    return wrap


@_documented("w8a8")
def w8a8() -> QATConfig:
    return _preset("w8a8")


@_documented("w4a8")
def w4a8(group_size: int = 32) -> QATConfig:
    return _preset("w4a8", group_size=group_size)


@_documented("w4a4_lsq")
def w4a4_lsq() -> QATConfig:
    return _preset("w4a4_lsq")


@_documented("ternary_twn")
def ternary_twn() -> QATConfig:
    return _preset("ternary_twn")


@_documented("bitnet_b158")
def bitnet_b158() -> QATConfig:
    return _preset("bitnet_b158")


@_documented("binary_w1a8")
def binary_w1a8() -> QATConfig:
    return _preset("binary_w1a8")


@_documented("xnor_w1a1")
def xnor_w1a1() -> QATConfig:
    return _preset("xnor_w1a1")


@_documented("binaryconnect")
def binaryconnect(stochastic: bool = False) -> QATConfig:
    return _preset("binaryconnect", stochastic=stochastic)


@_documented("int8_weight_only")
def int8_weight_only() -> QATConfig:
    return _preset("int8_weight_only")


@_documented("int4_weight_only")
def int4_weight_only(group_size: int = 32, symmetric: bool = True) -> QATConfig:
    return _preset("int4_weight_only", group_size=group_size, symmetric=symmetric)


@_documented("ternary_weight_only")
def ternary_weight_only() -> QATConfig:
    return _preset("ternary_weight_only")


@_documented("binary_weight_only")
def binary_weight_only() -> QATConfig:
    return _preset("binary_weight_only")


PRESETS: Dict[str, object] = {
    "w8a8": w8a8,
    "w4a8": w4a8,
    "w4a4_lsq": w4a4_lsq,
    "ternary_twn": ternary_twn,
    "bitnet_b158": bitnet_b158,
    "binary_w1a8": binary_w1a8,
    "xnor_w1a1": xnor_w1a1,
    "binaryconnect": binaryconnect,
    "int8_weight_only": int8_weight_only,
    "int4_weight_only": int4_weight_only,
    "ternary_weight_only": ternary_weight_only,
    "binary_weight_only": binary_weight_only,
}
if set(PRESETS) != set(PRESET_TABLE["presets"]):  # a table entry without its function, or the reverse
    raise ImportError(f"qatkit: presets.json and config.PRESETS differ: {sorted(set(PRESETS) ^ set(PRESET_TABLE['presets']))}")


def preset(name: str, **kwargs) -> QATConfig:
    """The preset called ``name`` (see :data:`PRESETS`).

    Raises:
        ValueError: unknown name, listing the valid ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](**kwargs)
