"""``convert``: freeze a QAT model into modules that hold integer weight codes and their scales.

A converted layer stores ``weight_int`` (int8 codes: integer, ternary or binary), ``weight_scale``
and ``weight_zero_point`` (float32 / int32, per tensor, channel or group), and keeps its input
quantizer with frozen qparams (observers off). Its forward dequantizes ``(codes - zp) * scale`` —
one float32 multiply per element, the same rounding as the fake-quant kernels — so it computes
exactly what the QAT model computed in eval mode (bit for bit; tested). The codes come from the
quantize-family ops (``ops.quantize_affine``, ``ops.ternary_codes``, ``ops.binary_codes``), which
return what the fake-quant kernels computed instead of recovering it from their float output.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .modules import BitLinear, QuantConv1d, QuantConv2d, QuantConvBn2d, QuantEmbedding, QuantLinear
from .. import ops
from .quantizers import ActFakeQuantizer, WeightFakeQuantizer, keep_float32, round_scale
from .config import QATConfig, check_flags
from .pretrained import tag_pretrained_configs
from .swap import move_hooks, refresh_pruned, replace_module
from . import integer as _integer

#: a constant False outside Dynamo (27 ns): the forwards' BoundOp call is eager-only (Dynamo traces
#: their general path, which holds the OpOverload)
_dynamo_compiling = torch.compiler.is_dynamo_compiling
#: the integer forms a conv runs on its bound kernel
_CONV_FORMS = ("static", "static_group", "row")

__all__ = ["convert", "QuantizedLinear", "QuantizedConv1d", "QuantizedConv2d", "QuantizedEmbedding", "weight_codes"]


@torch.no_grad()
def weight_codes(wfq: WeightFakeQuantizer, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer codes, scale and zero point of ``wfq(w)`` such that ``(codes - zp) * scale``
    reproduces it exactly.

    The codes come from the op family that computed the fake-quantized weight: ``quantize_affine``
    with the quantizer's effective qparams (integer kinds; the same rounding as ``fake_quantize``),
    ``ternary_codes`` / ``binary_codes`` (their scale is the per-channel or per-tensor magnitude;
    a ternary channel whose codes are all 0 gets scale 1, an all-zero binary channel keeps scale 0).
    """
    spec = wfq.spec
    axis = wfq.axis
    if spec.kind in ("ternary", "binary"):
        if spec.kind == "ternary":
            codes, scale = ops.ternary_codes(w.detach(), spec.method, axis)
        else:  # deterministic, as the quantizer in eval mode (BinaryConnect samples only in training)
            codes, scale = ops.binary_codes(w.detach(), spec.method, axis)
        scale = round_scale(scale, spec.scale_dtype)  # what the quantizer computed with
        if spec.kind == "ternary":  # a channel whose codes are all 0: any scale gives 0
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        # binary codes are never 0: an all-zero channel (pruned, dead) keeps its scale 0, which the
        # quantizer computed with (+-0); scale 1 made its weights +-1
        return codes, scale, torch.zeros_like(scale, dtype=torch.int32)
    s, z = wfq.qparams(w)
    # the effective qparams of the kernels: learned zero points are rounded and clamped into range
    s, z = s.float(), torch.round(z.float()).clamp(spec.quant_min, spec.quant_max)
    # qparams leave QAT here: check their values once (the CUDA kernels do not, to stay sync-free)
    ops.validate_qparams(s, z, spec.quant_min, spec.quant_max)
    dtype = torch.int8 if spec.quant_min >= -128 and spec.quant_max <= 127 else torch.int32
    if wfq.granularity == "per_group":
        w2 = w.detach().reshape(w.shape[0], -1)
        codes = ops.quantize_affine(w2, s, z, spec.quant_min, spec.quant_max, group_size=wfq.group_size, dtype=dtype)
        codes = codes.reshape(w.shape)
    else:
        codes = ops.quantize_affine(w.detach(), s, z, spec.quant_min, spec.quant_max, axis, dtype=dtype)
    return codes, s, z.to(torch.int32)


def _check_finite(name: str, m: nn.Module) -> None:
    """A NaN weight or bias makes the QAT layer's output NaN, but its codes would be numbers
    (quantize_affine codes NaN as the zero point, binary / ternary codes as 0): the converted model
    would answer where the QAT model gave NaN. An Inf weight saturates to the end code under a
    fixed or learned scale (what the QAT layer computes too), but gives a binary weight an infinite
    scale mean|w| (binary_codes does not refuse it; ternary_codes and choose_qparams do)."""
    wfq = getattr(m, "weight_fake_quant", None)
    for pname in ("weight", "bias"):
        t = getattr(m, pname, None)
        if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
            continue
        if bool(torch.isnan(t).any()):
            raise ValueError(f"convert: the {pname} of layer '{name}' holds NaN (a diverged training run?), which "
                             "no code stands for; restore a finite checkpoint before convert")
        if pname == "weight" and wfq is not None and wfq.spec.kind == "binary" and bool(torch.isinf(t).any()):
            raise ValueError(f"convert: the weight of layer '{name}' holds Inf, so its binary scale mean|w| is "
                             "infinite; restore a finite checkpoint before convert")


def _dequantize(
    codes: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, axis, group_size, dtype, binary: bool = False
) -> torch.Tensor:
    """``(codes - zp) * scale`` in the weight's dtype through ``dequantize_affine``: bit for bit the
    fake-quantized weight the QAT layer computed with (any float dtype). A ``binary`` layer's
    channel with scale 0 (all its weights zero: pruned, dead; codes are +-1) dequantizes to (+-)0,
    as the quantizer's sign * 0: the scale is masked without a data-dependent branch (torch.export
    traces it), and x * 1 leaves every other weight's bits."""
    if binary:
        live = scale > 0
        w = _dequantize(codes, torch.where(live, scale, torch.ones_like(scale)), zp, axis, group_size, dtype)
        shape = [1] * codes.dim()
        if axis is not None:
            shape[axis] = -1
        return w * live.reshape(shape).to(w.dtype)
    if group_size is not None:  # groups run along the flattened input dim
        c2 = codes.reshape(codes.shape[0], -1)
        return ops.dequantize_affine(c2, scale, zp, group_size=group_size, output_dtype=dtype).reshape(codes.shape)
    return ops.dequantize_affine(codes, scale, zp, axis=axis, output_dtype=dtype)


class _Quantized(nn.Module):
    """Integer weight codes + scales, a frozen input quantizer, and the float bias."""

    #: None: float math, what the QAT layer computed; else the integer form (qat/integer.py) the
    #: layer computes in, bit for bit what the integer kernels compute (set by set_compute)
    _integer_form = None
    #: the layer's name in its model ("encoder.0.fc1"; set by convert and qatkit.load), for messages
    qualified_name = ""

    def _set_weight(self, qmod, w: torch.Tensor, bias) -> None:
        wfq = qmod.weight_fake_quant
        if wfq is None:
            codes, scale, zp = w.detach().clone(), torch.ones(1), torch.zeros(1, dtype=torch.int32)
            self.group_size = None
            self.float_weight = True
        else:
            codes, scale, zp = weight_codes(wfq, w)
            self.group_size = wfq.group_size if wfq.granularity == "per_group" else None
            self.float_weight = False
        #: the dtype the QAT layer computed in (float64 / float16 / bfloat16 models stay so)
        self.weight_dtype = w.dtype
        self.weight_axis = None if wfq is None else wfq.axis
        self.register_buffer("weight_int", codes)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", zp)
        self.weight_spec = None if wfq is None else wfq.spec
        if bias is not None:
            self.register_buffer("bias", bias.detach().clone())
        else:
            self.bias = None
        aq = getattr(qmod, "input_fake_quant", None)
        if aq is not None:
            aq = copy.deepcopy(aq)
            aq.enable_observer(False)
            aq.eval()
        self.input_fake_quant = aq

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if isinstance(value, (torch.Tensor, nn.Module)) and "_int8_plan" in self.__dict__:
            # a tensor or quantizer replaced after the plan was built (layer.bias = new_bias): as an
            # in-place edit, the plan is built again from the layer's tensors (integer.refresh_layer)
            _integer.refresh_layer(self)

    def __getstate__(self):
        # pickle / torch.save / copy.deepcopy leave out the kernel plan: its bound calls are closures
        # (not picklable) over this layer's tensors, which a copy must not share. Rebuilt on the next call.
        state = self.__dict__.copy()
        state.pop("_int8_plan", None)
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.__dict__.pop("_int8_plan", None)  # the kernel plan holds the old codes: rebuilt on the next call
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, recurse=True):
        # .double() / .half() / .to(dtype) change the dtype the layer computes in; the scales stay
        # float32 (the ops' qparam dtype) and the codes integer
        self.weight_dtype = fn(torch.zeros(0, dtype=self.weight_dtype)).dtype
        if self.weight_dtype != torch.float32 and self._integer_form is not None:
            # integer forms are float32 layers' (docs/integer.md): float math until cast back to float32
            self._integer_form_cast, self._integer_form = self._integer_form, None
            warnings.warn(
                f"a converted layer in integer compute ({type(self).__name__}) was cast to {self.weight_dtype}: it "
                "computes in float math now (the integer kernels and the integer-exact simulation take float32 "
                "layers); casting it back to torch.float32 restores its integer form",
                UserWarning,
                stacklevel=3,
            )
        elif self.weight_dtype == torch.float32 and self.__dict__.get("_integer_form_cast") is not None:
            self._integer_form = self.__dict__.pop("_integer_form_cast")
        self.__dict__.pop("_int8_plan", None)
        scale = self.weight_scale
        keep = keep_float32(fn)
        return super()._apply(lambda t: keep(t) if t is scale else fn(t), recurse)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the layer computes with: ``(codes - zero_point) * scale``."""
        if self.float_weight:
            return self.weight_int
        spec = self.weight_spec
        return _dequantize(
            self.weight_int, self.weight_scale, self.weight_zero_point, self.weight_axis, self.group_size,
            self.weight_dtype, binary=spec is not None and spec.kind == "binary" and self.group_size is None,
        )

    def quantize_input(self, x):
        return self.input_fake_quant(x) if self.input_fake_quant is not None else x

    def train(self, mode: bool = True):
        super().train(mode)
        if self.input_fake_quant is not None:
            self.input_fake_quant.eval()  # frozen qparams: never observe again
        return self

    def extra_repr(self) -> str:
        spec = "float" if self.weight_spec is None else self.weight_spec.describe()
        return f"weight={spec}, codes={tuple(self.weight_int.shape)} {self.weight_int.dtype}"


class _OutputClamp:
    """A converted Linear's or conv's fused activation (:func:`qatkit.fuse_activations`)."""

    #: a fused activation (:func:`qatkit.fuse_activations`): ``(clamp_min, clamp_max)``, either
    #: ``None`` for no bound (ReLU: ``(0.0, None)``, ReLU6: ``(0.0, 6.0)``, Hardtanh: its bounds), and
    #: the layer's output is ``torch.clamp`` of the layer's (a conv's integer kernels write it, their
    #: ``clamp_min`` / ``clamp_max`` arguments; a Linear's bound kernel clamps its output in place);
    #: ``None``: no activation. Set through :meth:`set_output_clamp`.
    output_clamp = None

    def set_output_clamp(self, clamp_min=None, clamp_max=None) -> None:
        """Fuse an activation ``torch.clamp(y, clamp_min, clamp_max)`` into the layer's output (both
        ``None``: unfuse); the kernel plan binds it, so it is rebuilt.

        Raises:
            ValueError: a NaN bound, or ``clamp_min > clamp_max``.
        """
        bounds = []
        for name, v in (("clamp_min", clamp_min), ("clamp_max", clamp_max)):
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise TypeError(f"set_output_clamp: {name} must be a float or None, got {type(v).__name__}")
                if math.isnan(v):
                    raise ValueError(f"set_output_clamp: {name} must not be NaN")
                v = float(v)
            bounds.append(v)
        lo, hi = bounds
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"set_output_clamp: clamp_min ({lo}) must be at most clamp_max ({hi})")
        self.__dict__["output_clamp"] = None if lo is None and hi is None else (lo, hi)
        self.__dict__.pop("_int8_plan", None)

    def _clamp_repr(self) -> str:
        c = self.output_clamp
        return "" if c is None else f", output_clamp={c}"


class QuantizedLinear(_OutputClamp, _Quantized):
    """Converted :class:`QuantLinear` / :class:`BitLinear`."""

    def extra_repr(self) -> str:
        return super().extra_repr() + self._clamp_repr()

    def __init__(self, qmod: QuantLinear):
        super().__init__()
        self.in_features, self.out_features = qmod.in_features, qmod.out_features
        self.rms_norm = isinstance(qmod, BitLinear)
        self.eps = getattr(qmod, "eps", 1e-6)
        self._set_weight(qmod, qmod.weight, qmod.bias)
        smooth = getattr(qmod, "smooth", None)
        # SmoothQuant / AWQ input scaling (the codes hold the scaled weight); None: no buffer
        self.register_buffer("smooth", None if smooth is None else smooth.detach().clone())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "smooth"
        if key in state_dict and self.smooth is None:
            self.register_buffer("smooth", torch.ones_like(state_dict[key], dtype=torch.float32))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, input):  # nn.Linear's argument name: callers pass input=
        plan = self.__dict__.get("_int8_plan")
        if plan and self._integer_form is not None and not _dynamo_compiling():
            # the bound kernel's guarded BoundOp: None unless no source was written in place and the
            # input is float32 on the plan's device with the dims below (integer._plan), as tested below
            fast = plan["fast"]
            y = None if fast is None else fast(input)
            if y is not None:
                return y
        x = input
        try:
            # integer.bound_plan's test inlined (a Python call less per layer): a small model's layers are
            # dominated by per-call Python work (MiniLM's 37 Linears at one sentence)
            plan, form = self.__dict__.get("_int8_plan"), self._integer_form
            if plan and plan["changed"]():  # a source written in place: a new plan (integer.refresh_layer)
                plan, form = _integer.refresh_layer(self), self._integer_form
            if (plan and plan["bare"] and form is not None and x.dtype is torch.float32
                    and (x.is_cpu if plan["cpu"] else x.device == plan["device"]) and (form != "row" or x.dim() >= 2)):
                return plan["bare"](x)  # integer.linear's bound kernel straight away (smoothing, if any, inside)
            if form is not None and x.dtype is not torch.float32:
                x = _integer.float32_input(self, x)
            if x.dim() == 1:  # one row, as QuantLinear
                return self.forward(x.unsqueeze(0)).squeeze(0)
            if self.rms_norm:
                x = F.rms_norm(x, (self.in_features,), eps=self.eps)
            if self.smooth is not None:
                x = x / self.smooth.to(x.dtype)
            if self._integer_form is not None:
                y = _integer.linear(self, x)
            else:
                y = F.linear(self.quantize_input(x), self.dequantized_weight(), self.bias)
            return _integer.clamp_output(y, self.output_clamp)  # a fused activation (the bound kernel's inside)
        except ValueError as e:  # an op's or a check's: name the layer (the ops cannot)
            _integer.reraise_named(self, e)


class _QuantizedConv(_OutputClamp, _Quantized):
    #: spatial dims: 1 (QuantizedConv1d) or 2 (QuantizedConv2d)
    _nd = 2
    def extra_repr(self) -> str:
        return super().extra_repr() + self._clamp_repr()

    def __init__(self, qmod, w=None, bias=None):
        super().__init__()
        for k in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, k, getattr(qmod, k))
        self.padding_mode = qmod.padding_mode
        self._rpt = getattr(qmod, "_reversed_padding_repeated_twice", None)
        self._set_weight(qmod, qmod.weight if w is None else w, qmod.bias if w is None else bias)

    def forward(self, input):  # nn.Conv1d / Conv2d's argument name
        plan = self.__dict__.get("_int8_plan")
        if plan and self._integer_form in _CONV_FORMS and not _dynamo_compiling():
            fast = plan["fast"]  # as QuantizedLinear.forward's
            y = None if fast is None else fast(input)
            if y is not None:
                return y
        x, nd = input, self._nd
        try:
            # the bound kernel straight away (integer.conv's tests inlined, as QuantizedLinear.forward's)
            plan, form = self.__dict__.get("_int8_plan"), self._integer_form
            if plan and plan["changed"]():  # a source written in place: a new plan (integer.refresh_layer)
                plan, form = _integer.refresh_layer(self), self._integer_form
            if (plan and plan["bare"] and form in _CONV_FORMS and x.dtype is torch.float32
                    and x.dim() == nd + 2 and (x.is_cpu if plan["cpu"] else x.device == plan["device"])):
                return plan["bare"](x)
            if form is not None and x.dtype is not torch.float32:
                x = _integer.float32_input(self, x)
            if x.dim() == nd + 1:  # unbatched (C, L) / (C, H, W), as QuantConv1d / 2d
                return self.forward(x.unsqueeze(0)).squeeze(0)
            if form is not None:
                return _integer.conv(self, x, nd)  # (the fused activation applied there)
            x = self.quantize_input(x)
            w = self.dequantized_weight()
            fn = F.conv1d if nd == 1 else F.conv2d
            if self.padding_mode != "zeros":
                x = F.pad(x, self._rpt, mode=self.padding_mode)
                y = fn(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
            else:
                y = fn(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
            return _integer.clamp_output(y, self.output_clamp)
        except ValueError as e:  # an op's or a check's: name the layer (the ops cannot)
            _integer.reraise_named(self, e)


class QuantizedConv1d(_QuantizedConv):
    """Converted :class:`QuantConv1d`."""

    _nd = 1


class QuantizedConv2d(_QuantizedConv):
    """Converted :class:`QuantConv2d` / :class:`QuantConvBn2d` (BN folded into weight and bias)."""

    _nd = 2


class QuantizedEmbedding(_Quantized):
    """Converted :class:`QuantEmbedding`."""

    def __init__(self, qmod: QuantEmbedding):
        super().__init__()
        self.padding_idx, self.max_norm = qmod.padding_idx, qmod.max_norm
        self.norm_type, self.scale_grad_by_freq, self.sparse = qmod.norm_type, qmod.scale_grad_by_freq, qmod.sparse
        self._set_weight(qmod, qmod.weight, None)

    def forward(self, input):  # nn.Embedding's argument name
        # max_norm renormalizes rows of the (temporary) dequantized weight, as the QAT layer does with
        # its fake-quantized weight
        return F.embedding(input, self.dequantized_weight(), self.padding_idx, self.max_norm, self.norm_type)


def _convert_one(qmod: nn.Module) -> nn.Module:
    refresh_pruned(qmod)  # torch.nn.utils.prune: weight = weight_orig * weight_mask, as of now
    if isinstance(qmod, QuantConvBn2d):
        with torch.no_grad():
            _, w, bias = qmod.folded()
        return QuantizedConv2d(qmod, w, bias)
    if isinstance(qmod, QuantLinear):  # BitLinear included
        return QuantizedLinear(qmod)
    if isinstance(qmod, QuantConv2d):
        return QuantizedConv2d(qmod)
    if isinstance(qmod, QuantConv1d):
        return QuantizedConv1d(qmod)
    if isinstance(qmod, QuantEmbedding):
        return QuantizedEmbedding(qmod)
    raise TypeError(f"convert: no converted form for {type(qmod).__name__}")


QAT_TYPES = (QuantLinear, QuantConv1d, QuantConv2d, QuantConvBn2d, QuantEmbedding)


def convert(
    model: nn.Module, inplace: bool = False, require_observed: bool = True, integer: bool = False
) -> nn.Module:
    """Freeze a QAT model (from :func:`qatkit.prepare_qat`) into integer-weight modules.

    Args:
        model: a prepared (and trained or calibrated) model.
        inplace: modify ``model`` instead of a deep copy.
        require_observed: refuse activation quantizers that observed nothing. Pass False only when
            the qparams are loaded right afterwards (:func:`qatkit.qat.load_pretrained` does).
        integer: compute integer-exact (:func:`qatkit.qat.set_compute`: input codes times weight
            codes with exact integer sums and one documented requantization, what the integer
            kernels compute bit for bit) instead of the QAT model's float math. Layers without an
            integer form keep float math and are named in a warning.

    Returns:
        The model with every QAT layer replaced by a ``Quantized*`` module (integer codes + scales,
        frozen input qparams), in eval mode. Its outputs equal the QAT model's eval-mode outputs
        (``integer=False``), or the integer kernels' outputs (``integer=True``).

    Raises:
        ValueError: the model has no QAT layers, an activation observer has not seen any data
            (convert before calibration/training), or a weight / bias holds NaN or Inf, naming the
            layer.
    """
    check_flags("convert", inplace=inplace, require_observed=require_observed, integer=integer)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QAT_TYPES)]
    if not layers:
        if isinstance(model, _Quantized) or any(isinstance(m, _Quantized) for m in model.modules()):
            raise ValueError("convert: the model is converted already (its quantized layers are Quantized* / Packed* "
                             "modules, no QAT layers are left); use it as it is")
        raise ValueError("convert: the model has no QAT layers; call qatkit.prepare_qat(model, config) first")
    for name, m in layers:
        _check_finite(name, m)
        aq = getattr(m, "input_fake_quant", None)
        if require_observed and isinstance(aq, ActFakeQuantizer) and not aq.has_observed:
            raise ValueError(
                f"convert: the input quantizer of layer '{name}' has not observed any data yet (its range is "
                "empty), so its qparams are meaningless; run training or a few calibration batches in train mode "
                "with observers enabled (qatkit.qat.enable_observer(model)) before convert"
            )
    # a converted layer holds weight codes: a weight quantizer switched off (disable_fake_quant)
    # made the QAT model compute with float weights that the converted model does not
    off = [name for name, m in layers
           if isinstance(getattr(m, "weight_fake_quant", None), WeightFakeQuantizer)
           and not bool(m.weight_fake_quant.fake_quant_on.item())]
    if off:
        warnings.warn(
            f"convert: weight fake quantization is switched off in {len(off)} layer(s) ({', '.join(repr(n) for n in off[:8])}"
            f"{' ...' if len(off) > 8 else ''}); the converted layers quantize their weights anyway, so the converted "
            "model's outputs differ from the QAT model's in this state (qatkit.qat.enable_fake_quant(model) before "
            "convert; switched-off input quantizers stay off in the converted model)", UserWarning, stacklevel=2)
    if isinstance(model, QAT_TYPES):  # a bare QAT layer: its converted form is the model
        if inplace:
            raise ValueError(
                f"convert: the model is a bare {type(model).__name__}, which cannot be replaced in place; "
                "use the returned module (inplace=False)"
            )
        src = copy.deepcopy(model)
        out = _convert_one(src).eval()
        move_hooks(src, out)
    elif not require_observed:
        with warnings.catch_warnings():  # eval-before-observation warnings: the qparams are loaded next
            warnings.simplefilter("ignore")
            out = _convert_tree(model, inplace)
    else:
        out = _convert_tree(model, inplace)
    if integer:
        wrap = out if not isinstance(out, _Quantized) else nn.Sequential(out)
        _integer.set_compute(wrap, "integer")
    return out


def _convert_tree(model: nn.Module, inplace: bool) -> nn.Module:
    if not inplace:
        from .prepare import copy_model

        model = copy_model(model)
    names_of = {}
    for n, m in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(m), []).append(n)
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, QAT_TYPES)]:
        new = _convert_one(m)
        new.qualified_name = name
        for alias in names_of[id(m)]:  # every name the layer is registered under gets the same module
            replace_module(model, alias, new)
    if isinstance(getattr(model, "qat_config", None), QATConfig):
        tag_pretrained_configs(model, "converted", model.qat_config)
    return model.eval()
