"""QAT module replacements: subclasses of the float modules that keep the FP32 shadow weight and
fake-quantize the weight and the input in the forward pass (gradients through the ops' STEs).

Each has ``from_float(mod, layer_spec)`` (sharing the float module's parameters) and
``to_float()``. :class:`QuantConvBn2d` folds a BatchNorm into the conv weight during QAT with
Krishnamoorthi's correction (docs/papers.md §3); :class:`BitLinear` is BitNet b1.58's layer (§7.2).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import LayerSpec
from .quantizers import ActFakeQuantizer, WeightFakeQuantizer

__all__ = [
    "QuantLinear",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvBn2d",
    "QuantEmbedding",
    "BitLinear",
    "QAT_MODULES",
]


class _QuantMixin:
    """Quantizer submodules shared by every QAT layer."""

    layer_spec: LayerSpec

    def _attach_quantizers(
        self, spec: LayerSpec, weight: torch.Tensor, act_channels: int = 1, channel_axes: tuple = (-1,)
    ) -> None:
        if not isinstance(spec, LayerSpec):
            raise TypeError(f"layer_spec must be a LayerSpec, got {type(spec).__name__}")
        a = spec.activation
        if a is not None and a.kind == "int" and a.granularity == "per_channel" and a.axis not in channel_axes:
            # per-channel ranges need the input's channel dim; another axis (0 = the batch) would
            # observe per sample and only "work" when the batch size happens to equal the channels
            raise ValueError(
                f"{type(self).__name__}: a per-channel activation spec needs axis in {channel_axes} (the input's "
                f"channel dim, {act_channels} channels), got axis={a.axis}"
            )
        self.layer_spec = spec
        self.weight_fake_quant = WeightFakeQuantizer(spec.weight, weight) if spec.weight is not None else None
        self.input_fake_quant = ActFakeQuantizer(spec.activation, act_channels) if spec.activation is not None else None

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_fake_quant(x) if self.input_fake_quant is not None else x

    def quantized_weight(self, w: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The weight the forward pass uses (fake-quantized shadow weight)."""
        w = self.weight if w is None else w
        return self.weight_fake_quant(w) if self.weight_fake_quant is not None else w


def _share_params(dst: nn.Module, src: nn.Module, names=("weight", "bias")) -> None:
    for n in names:
        if hasattr(src, n):
            setattr(dst, n, getattr(src, n))


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` with fake-quantized weight and input.

    Example:
        >>> q = QuantLinear.from_float(nn.Linear(16, 8), w8a8().default)
        >>> y = q(torch.randn(4, 16))
    """

    def __init__(self, in_features, out_features, bias=True, layer_spec: Optional[LayerSpec] = None, **kw):
        super().__init__(in_features, out_features, bias, **kw)
        self._attach_quantizers(layer_spec or LayerSpec(), self.weight, in_features)

    @classmethod
    def from_float(cls, mod: nn.Linear, layer_spec: LayerSpec) -> "QuantLinear":
        q = cls.__new__(cls)
        nn.Linear.__init__(q, mod.in_features, mod.out_features, mod.bias is not None, device="meta")
        _share_params(q, mod)
        q._attach_quantizers(layer_spec, mod.weight, mod.in_features)
        q.train(mod.training)
        return q

    def to_float(self) -> nn.Linear:
        m = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        _share_params(m, self)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)


def _conv_from_float(cls, base, mod, layer_spec):
    q = cls.__new__(cls)
    base.__init__(
        q,
        mod.in_channels,
        mod.out_channels,
        mod.kernel_size,
        stride=mod.stride,
        padding=mod.padding,
        dilation=mod.dilation,
        groups=mod.groups,
        bias=mod.bias is not None,
        padding_mode=mod.padding_mode,
        device="meta",
    )
    _share_params(q, mod)
    q._attach_quantizers(layer_spec, mod.weight, mod.in_channels, (1, -(mod.weight.dim() - 1)))
    q.train(mod.training)
    return q


def _conv_to_float(base, self):
    m = base(
        self.in_channels,
        self.out_channels,
        self.kernel_size,
        stride=self.stride,
        padding=self.padding,
        dilation=self.dilation,
        groups=self.groups,
        bias=self.bias is not None,
        padding_mode=self.padding_mode,
        device="meta",
    )
    _share_params(m, self)
    return m


class QuantConv1d(_QuantMixin, nn.Conv1d):
    """``nn.Conv1d`` with fake-quantized weight (per output channel / per group along
    ``in_channels / groups * k``) and input."""

    @classmethod
    def from_float(cls, mod: nn.Conv1d, layer_spec: LayerSpec) -> "QuantConv1d":
        return _conv_from_float(cls, nn.Conv1d, mod, layer_spec)

    def to_float(self) -> nn.Conv1d:
        return _conv_to_float(nn.Conv1d, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` (grouped and depthwise included) with fake-quantized weight and input."""

    @classmethod
    def from_float(cls, mod: nn.Conv2d, layer_spec: LayerSpec) -> "QuantConv2d":
        return _conv_from_float(cls, nn.Conv2d, mod, layer_spec)

    def to_float(self) -> nn.Conv2d:
        return _conv_to_float(nn.Conv2d, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)


class QuantConvBn2d(_QuantMixin, nn.Conv2d):
    """Conv2d + BatchNorm2d folded for QAT (Krishnamoorthi 2018, §3.2.2).

    The quantized weight is always the BN-folded weight with the long-term statistics,
    ``wq = Q(W * gamma / sigma)``, so it does not jitter from batch to batch. Before
    :meth:`freeze_bn` (training mode), the conv output is divided by ``gamma / sigma`` again (as
    ``conv(x, wq / (gamma / sigma))``: the division moves to the weight) and batch-normalized with
    the batch statistics (which also updates the running statistics); this
    equals ordinary batch norm on the quantized weights. After freezing (and in eval mode) the
    layer is ``conv(x, wq) + beta - gamma * mu / sigma``: the inference form, exactly what
    :func:`qatkit.convert` exports.
    """

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, layer_spec: LayerSpec) -> "QuantConvBn2d":
        if bn.num_features != conv.out_channels:
            raise ValueError(
                f"QuantConvBn2d: bn.num_features ({bn.num_features}) must equal conv.out_channels ({conv.out_channels})"
            )
        if not (bn.affine and bn.track_running_stats):
            raise ValueError("QuantConvBn2d: the BatchNorm2d must be affine and track running statistics")
        q = _conv_from_float(cls, nn.Conv2d, conv, layer_spec)
        q.bn = bn
        q.register_buffer("bn_frozen", torch.zeros(1, dtype=torch.uint8))
        q._bn_frozen = False
        q._fold_invariant = q._is_fold_invariant()
        return q

    def _is_fold_invariant(self) -> bool:
        """True when scaling output channel c of the weight by f_c and back commutes with the
        weight quantizer, Q(W f) / f == Q(W): per-channel and per-group ranges (each channel's or
        group's scale follows f_c) of symmetric quantizers (odd functions, so a negative gamma flips
        nothing). Then the training path quantizes W directly; the frozen / eval path (what convert
        exports) still quantizes the folded weight W * gamma / sigma."""
        wfq = self.weight_fake_quant
        if wfq is None:
            return True
        s = wfq.spec
        if wfq.granularity not in ("per_channel", "per_group") or s.scale == "learned":
            return False
        if s.kind == "int":
            return s.symmetric and s.signed and (s.narrow_range or s.quant_min == -s.quant_max)
        return s.kind == "ternary" or s.method in ("none", "mean_abs")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._bn_frozen = bool(self.bn_frozen.item())

    def freeze_bn(self, on: bool = True) -> None:
        """Switch to the running statistics (and stop updating them)."""
        self.bn_frozen.fill_(1 if on else 0)
        self._bn_frozen = bool(on)

    def folded(self):
        """(scale factor gamma / sigma, folded float weight, folded bias) from the running statistics."""
        bn = self.bn
        std = torch.sqrt(bn.running_var + bn.eps)
        factor = bn.weight / std
        w = self.weight * factor.reshape(-1, 1, 1, 1)
        b = self.bias if self.bias is not None else torch.zeros_like(bn.running_mean)
        bias = bn.bias + (b - bn.running_mean) * factor
        return factor, w, bias

    def to_float(self) -> nn.Sequential:
        return nn.Sequential(_conv_to_float(nn.Conv2d, self), self.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        if self._bn_frozen or not self.training:
            _, w, bias = self.folded()
            return self._conv_forward(x, self.quantized_weight(w), bias)
        if self._fold_invariant:
            # Q(W * f) / f == Q(W) in exact arithmetic for these quantizers (see _fold_invariant):
            # the fold and unfold passes over the weight, and their backward passes, are skipped
            wq_unfolded = self.quantized_weight(self.weight)
        else:
            factor, w, _ = self.folded()
            # conv(x, Q(W f)) / f, with the division on the (small) weight: the conv is linear
            wq_unfolded = self.quantized_weight(w) / factor.reshape(-1, 1, 1, 1)
        y = self._conv_forward(x, wq_unfolded, None)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        bn = self.bn
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, momentum, bn.eps)


class QuantEmbedding(_QuantMixin, nn.Embedding):
    """``nn.Embedding`` with a fake-quantized table (one scale per row, i.e. per token embedding,
    for per-channel specs); the input is indices, so no activation quantizer."""

    @classmethod
    def from_float(cls, mod: nn.Embedding, layer_spec: LayerSpec) -> "QuantEmbedding":
        q = cls.__new__(cls)
        nn.Embedding.__init__(
            q,
            mod.num_embeddings,
            mod.embedding_dim,
            padding_idx=mod.padding_idx,
            max_norm=mod.max_norm,
            norm_type=mod.norm_type,
            scale_grad_by_freq=mod.scale_grad_by_freq,
            sparse=mod.sparse,
            device="meta",
        )
        if mod.sparse and layer_spec.weight is not None:
            warnings.warn(
                "QuantEmbedding: sparse=True gradients cannot flow through the weight's fake quantization; the QAT "
                "layer produces dense gradients (use a dense optimizer such as Adam for it, not SparseAdam)",
                UserWarning,
                stacklevel=3,
            )
        _share_params(q, mod, ("weight",))
        q._attach_quantizers(LayerSpec(layer_spec.weight, None), mod.weight)
        q.train(mod.training)
        return q

    def to_float(self) -> nn.Embedding:
        m = nn.Embedding(
            self.num_embeddings,
            self.embedding_dim,
            padding_idx=self.padding_idx,
            max_norm=self.max_norm,
            norm_type=self.norm_type,
            scale_grad_by_freq=self.scale_grad_by_freq,
            sparse=self.sparse,
            device="meta",
        )
        _share_params(m, self, ("weight",))
        return m

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(
            idx,
            self.quantized_weight(),
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse and self.weight_fake_quant is None,  # dense through fake quantization
        )


class BitLinear(QuantLinear):
    """BitNet b1.58's BitLinear (docs/papers.md §7.2): ``y = linear(Q_a(RMSNorm(x)), Q_w(W), b)``
    with a parameter-free RMSNorm, per-token absmax int8 activations and absmean ternary weights
    (per tensor), both through the STE. Other specs (e.g. binary weights, BitNet W1A8) can be
    given through ``layer_spec``. ``from_float`` / ``to_float`` are QuantLinear's."""

    eps: float = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = F.rms_norm(x, (self.in_features,), eps=self.eps)
        return F.linear(self.quantize_input(xn), self.quantized_weight(), self.bias)


#: float module type -> QAT replacement
QAT_MODULES = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Embedding: QuantEmbedding,
}
