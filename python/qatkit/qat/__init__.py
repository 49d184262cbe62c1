"""Quantization-aware training: configs and presets, QAT modules, ``prepare_qat`` / ``convert``
and the whole-model switches of the QAT recipe.

Example:
    >>> import qatkit
    >>> qmodel = qatkit.prepare_qat(model, qatkit.w8a8())
    >>> ...  # train qmodel as usual
    >>> int_model = qatkit.convert(qmodel)
"""

from .config import (
    PRESETS,
    LayerSpec,
    QATConfig,
    QuantSpec,
    binary_w1a8,
    binaryconnect,
    binary_weight_only,
    int4_weight_only,
    int8_weight_only,
    ternary_weight_only,
    bitnet_b158,
    preset,
    ternary_twn,
    w4a4_lsq,
    w4a8,
    w8a8,
    xnor_w1a1,
)
from .convert import QuantizedConv1d, QuantizedConv2d, QuantizedEmbedding, QuantizedLinear, convert, weight_codes
from .fuse import FusedActivation, fuse_activations
from .integer import IntegerReport, integer_form, refresh, set_compute
from .modules import (
    BitLinear,
    QuantConv1d,
    QuantConv2d,
    QuantConvBn2d,
    QuantEmbedding,
    QuantLinear,
    QuantMultiheadAttention,
)
from .prepare import (
    calibrate,
    clip_latent_weights,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
    freeze_bn,
    prepare_qat,
)
from .config import PerAxis, PerGroup, PerTensor, PerToken
from .quantizers import (
    OBSERVERS,
    ActFakeQuantizer,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    Observer,
    WeightFakeQuantizer,
    register_observer,
)
from . import histogram  # noqa: F401  (registers the percentile / kl / mse observers)
from .pretrained import load_pretrained
from .swap import replace_module

__all__ = [
    "FusedActivation",
    "fuse_activations",
    "IntegerReport",
    "integer_form",
    "refresh",
    "set_compute",
    "PRESETS",
    "LayerSpec",
    "QATConfig",
    "QuantSpec",
    "binary_w1a8",
    "binaryconnect",
    "binary_weight_only",
    "int4_weight_only",
    "int8_weight_only",
    "ternary_weight_only",
    "bitnet_b158",
    "preset",
    "ternary_twn",
    "w4a4_lsq",
    "w4a8",
    "w8a8",
    "xnor_w1a1",
    "QuantizedConv1d",
    "QuantizedConv2d",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "convert",
    "weight_codes",
    "BitLinear",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvBn2d",
    "QuantEmbedding",
    "QuantLinear",
    "QuantMultiheadAttention",
    "calibrate",
    "clip_latent_weights",
    "disable_fake_quant",
    "disable_observer",
    "enable_fake_quant",
    "enable_observer",
    "freeze_bn",
    "prepare_qat",
    "ActFakeQuantizer",
    "WeightFakeQuantizer",
    "Observer",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "OBSERVERS",
    "register_observer",
    "PerTensor",
    "PerAxis",
    "PerGroup",
    "PerToken",
    "replace_module",
    "load_pretrained",
]
