"""QAT module replacements: subclasses of the float modules that keep the FP32 shadow weight and
fake-quantize the weight and the input in the forward pass (gradients through the ops' STEs).

Each has ``from_float(mod, layer_spec)`` (sharing the float module's parameters) and
``to_float()``. :class:`QuantConvBn2d` folds a BatchNorm into the conv weight during QAT with
Krishnamoorthi's correction (docs/papers.md §3); :class:`BitLinear` is BitNet b1.58's layer (§7.2).
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import LayerSpec
from .graph import FOLDABLE_BN
from .quantizers import ActFakeQuantizer, WeightFakeQuantizer, flags_written, recomputing

__all__ = [
    "QuantLinear",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvBn2d",
    "QuantEmbedding",
    "BitLinear",
    "QuantMultiheadAttention",
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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # a float checkpoint loaded into the prepared model (its weights, no step sizes): learned
        # step sizes start from the loaded weights, not from the ones the layer was prepared with
        # (5x too small in a probe: prepared from random weights, then given pretrained ones)
        init = getattr(self._modules.get("weight_fake_quant"), "init_from_weight", None)
        if (init is not None and prefix + "weight_fake_quant.scale" not in state_dict
                and (prefix + "weight" in state_dict or prefix + "weight_orig" in state_dict)):
            init(self.weight)

    def quantized_weight(self, w: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The weight the forward pass uses (fake-quantized shadow weight)."""
        wfq = self.weight_fake_quant
        if self.training and not torch.compiler.is_compiling() and wfq is not None and "_prepared_init" in wfq.__dict__:
            wfq.check_weight_since_prepare(self.weight)  # LSQ: weights written since prepare_qat (once)
        w = self.weight if w is None else w
        return wfq(w) if wfq is not None else w


def _given_spec(cls: type, layer_spec: Optional[LayerSpec]) -> LayerSpec:
    """The spec of a QAT layer built directly (not by ``from_float`` / ``prepare_qat``): required.
    Before, ``QuantLinear(16, 8)`` without one built a layer that quantized nothing, silently, and
    ``QuantConv2d(3, 8, 3)`` / ``QuantEmbedding(100, 16)`` built layers whose first call raised
    "object has no attribute 'input_fake_quant'" (they took no spec)."""
    if layer_spec is None:
        raise TypeError(
            f"{cls.__name__}: layer_spec is required, e.g. {cls.__name__}(..., layer_spec=qatkit.w8a8().default) "
            "(a LayerSpec: the weight and input specs; LayerSpec() quantizes nothing)"
        )
    return layer_spec


def _share_params(dst: nn.Module, src: nn.Module, names=("weight", "bias")) -> None:
    for n in names:
        if hasattr(src, n):
            setattr(dst, n, getattr(src, n))


class _Smoothing:
    """Per-input-channel activation scaling of a Linear layer (SmoothQuant / AWQ): the weight's
    column j is multiplied by s_j and the input divided by s_j before its quantizer, which leaves
    the float function unchanged and moves quantization difficulty between them. ``smooth`` is a
    buffer (None until :meth:`set_smoothing`); checkpoints that hold one load into a fresh layer."""

    @torch.no_grad()
    def set_smoothing(self, s: torch.Tensor) -> None:
        """Apply ``s`` ([in_features], positive, finite): ``W[:, j] *= s_j``, inputs divided by it.
        Composes with a smoothing already applied."""
        s = torch.as_tensor(s, dtype=torch.float32, device=self.weight.device).detach().reshape(-1)
        if s.numel() != self.in_features or not bool(torch.isfinite(s).all() and (s > 0).all()):
            raise ValueError(
                f"{type(self).__name__}.set_smoothing: s must hold {self.in_features} positive finite values, got "
                f"shape {tuple(s.shape)}"
            )
        self.weight.mul_(s.to(self.weight.dtype).reshape(1, -1))
        cur = getattr(self, "smooth", None)
        self.register_buffer("smooth", s if cur is None else cur * s)

    def _smooth_input(self, x: torch.Tensor) -> torch.Tensor:
        s = self._buffers.get("smooth")  # a dict lookup: getattr's miss path raises inside nn.Module
        return x if s is None else x / s.to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "smooth"
        if key in state_dict and getattr(self, "smooth", None) is None:
            self.register_buffer("smooth", torch.ones_like(state_dict[key], dtype=torch.float32))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class QuantLinear(_Smoothing, _QuantMixin, nn.Linear):
    """``nn.Linear`` with fake-quantized weight and input (and an optional per-channel input
    scaling, :meth:`set_smoothing`, used by PTQ's SmoothQuant / AWQ).

    Example:
        >>> q = QuantLinear.from_float(nn.Linear(16, 8), w8a8().default)
        >>> y = q(torch.randn(4, 16))
    """

    def __init__(self, in_features, out_features, bias=True, layer_spec: Optional[LayerSpec] = None, **kw):
        super().__init__(in_features, out_features, bias, **kw)
        self._attach_quantizers(self._default_spec(layer_spec), self.weight, in_features)

    @classmethod
    def _default_spec(cls, layer_spec: Optional[LayerSpec]) -> LayerSpec:
        return _given_spec(cls, layer_spec)

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

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # nn.Linear's argument name: callers pass input=
        x = input
        if x.dim() == 1:  # one row (nn.Linear takes it): its quantizer sees it as a batch of one
            return self.forward(x.unsqueeze(0)).squeeze(0)
        return F.linear(self.quantize_input(self._smooth_input(x)), self.quantized_weight(), self.bias)


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

    def __init__(self, *args, layer_spec: Optional[LayerSpec] = None, **kw):
        """``nn.Conv1d``'s arguments and a required ``layer_spec``."""
        super().__init__(*args, **kw)
        self._attach_quantizers(_given_spec(type(self), layer_spec), self.weight, self.in_channels,
                                (1, -(self.weight.dim() - 1)))

    @classmethod
    def from_float(cls, mod: nn.Conv1d, layer_spec: LayerSpec) -> "QuantConv1d":
        return _conv_from_float(cls, nn.Conv1d, mod, layer_spec)

    def to_float(self) -> nn.Conv1d:
        return _conv_to_float(nn.Conv1d, self)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input
        if x.dim() == 2:  # unbatched (nn.Conv1d takes it): per-sample / per-channel quantizers need the batch dim
            return self.forward(x.unsqueeze(0)).squeeze(0)
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` (grouped and depthwise included) with fake-quantized weight and input."""

    def __init__(self, *args, layer_spec: Optional[LayerSpec] = None, **kw):
        """``nn.Conv2d``'s arguments and a required ``layer_spec``."""
        super().__init__(*args, **kw)
        self._attach_quantizers(_given_spec(type(self), layer_spec), self.weight, self.in_channels,
                                (1, -(self.weight.dim() - 1)))

    @classmethod
    def from_float(cls, mod: nn.Conv2d, layer_spec: LayerSpec) -> "QuantConv2d":
        return _conv_from_float(cls, nn.Conv2d, mod, layer_spec)

    def to_float(self) -> nn.Conv2d:
        return _conv_to_float(nn.Conv2d, self)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input
        if x.dim() == 3:  # unbatched (nn.Conv2d takes it): per-sample / per-channel quantizers need the batch dim
            return self.forward(x.unsqueeze(0)).squeeze(0)
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

    def __init__(self, *args, **kw):
        raise TypeError(
            "QuantConvBn2d is built from a float pair: QuantConvBn2d.from_float(conv, bn, layer_spec), or by "
            "qatkit.prepare_qat on a model with Conv2d -> BatchNorm2d"
        )

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, layer_spec: LayerSpec) -> "QuantConvBn2d":
        if type(bn) not in FOLDABLE_BN:
            raise TypeError(f"QuantConvBn2d: bn must be an nn.BatchNorm2d or nn.SyncBatchNorm, got {type(bn).__name__}")
        if bn.num_features != conv.out_channels:
            raise ValueError(
                f"QuantConvBn2d: bn.num_features ({bn.num_features}) must equal conv.out_channels ({conv.out_channels})"
            )
        if not (bn.affine and bn.track_running_stats):
            raise ValueError(f"QuantConvBn2d: the {type(bn).__name__} must be affine and track running statistics")
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

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input
        if x.dim() == 3:  # unbatched, as QuantConv2d
            return self.forward(x.unsqueeze(0)).squeeze(0)
        x = self.quantize_input(x)
        # the bn_frozen buffer written in place by other code (an EMA / AveragedModel copying buffers)
        if not torch.compiler.is_compiling() and flags_written(self, ("bn_frozen",), "_bn_frozen_version"):
            self._bn_frozen = bool(self.bn_frozen.item())
        if self._bn_frozen or not self.training:
            _, w, bias = self.folded()
            return self._conv_forward(x, self.quantized_weight(w), bias)
        # activation checkpointing runs this forward again in the backward pass, after the first
        # forward updated the running statistics: the recomputation folds with the statistics the
        # first forward folded with and updates nothing
        again = recomputing()
        if self._fold_invariant:
            # Q(W * f) / f == Q(W) in exact arithmetic for these quantizers (see _fold_invariant):
            # the fold and unfold passes over the weight, and their backward passes, are skipped
            wq_unfolded = self.quantized_weight(self.weight)
        else:
            var = self.__dict__.get("_fold_var") if again else None
            if var is None:
                var = self.bn.running_var.detach().clone()
                if not again:
                    # for a recomputation (exact when it comes next). Under torch.compile inside a
                    # checkpointed region this write is a side effect dynamo refuses there: the region
                    # runs as an eager checkpoint, which recomputes through this code
                    self.__dict__["_fold_var"] = var
            factor = self.bn.weight / torch.sqrt(var + self.bn.eps)
            w = self.weight * factor.reshape(-1, 1, 1, 1)
            # conv(x, Q(W f)) / f, with the division on the (small) weight: the conv is linear
            wq_unfolded = self.quantized_weight(w) / factor.reshape(-1, 1, 1, 1)
        y = self._conv_forward(x, wq_unfolded, None)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        bn = self.bn
        if type(bn) is not nn.BatchNorm2d:
            return self._bn_module_forward(y, again)
        if again:
            # batch statistics, as the first forward; the running ones were updated then, so this
            # call updates throwaway copies (the same op and saved tensors as the first forward:
            # non-reentrant checkpointing compares them)
            rm, rv = bn.running_mean.clone(), bn.running_var.clone()
            return F.batch_norm(y, rm, rv, bn.weight, bn.bias, True, 0.0, bn.eps)
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, momentum, bn.eps)

    def _bn_module_forward(self, y: torch.Tensor, again: bool) -> torch.Tensor:
        """The batch-statistics step through the BatchNorm module's own forward: a SyncBatchNorm
        (``nn.SyncBatchNorm.convert_sync_batchnorm`` before or after ``prepare_qat``, as torch.ao's
        ConvBn2d calls its ``bn``) computes the statistics of the global batch across DDP ranks,
        which ``F.batch_norm`` on this rank's batch would silently replace by the local ones."""
        bn = self.bn
        if not isinstance(bn, nn.SyncBatchNorm):
            raise TypeError(
                f"QuantConvBn2d: bn must be an nn.BatchNorm2d or nn.SyncBatchNorm (the BatchNorm it folds), got "
                f"{type(bn).__name__}"
            )
        if not again:
            return bn(y)
        # a checkpointed recomputation: the module's own update goes to throwaway copies of the
        # running statistics (the first forward updated them)
        saved = bn.running_mean, bn.running_var, bn.num_batches_tracked
        bn.running_mean, bn.running_var = saved[0].clone(), saved[1].clone()
        if saved[2] is not None:
            bn.num_batches_tracked = saved[2].clone()
        try:
            return bn(y)
        finally:
            bn.running_mean, bn.running_var, bn.num_batches_tracked = saved


class QuantEmbedding(_QuantMixin, nn.Embedding):
    """``nn.Embedding`` with a fake-quantized table (one scale per row, i.e. per token embedding,
    for per-channel specs); the input is indices, so no activation quantizer."""

    def __init__(self, *args, layer_spec: Optional[LayerSpec] = None, **kw):
        """``nn.Embedding``'s arguments and a required ``layer_spec`` (its weight spec is used)."""
        spec = _given_spec(type(self), layer_spec)
        super().__init__(*args, **kw)
        if self.sparse and spec.weight is not None:
            raise ValueError("QuantEmbedding: sparse=True gradients cannot flow through the weight's fake "
                             "quantization; build it with sparse=False")
        self._attach_quantizers(LayerSpec(spec.weight, None), self.weight)

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

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.embedding(
            input,
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
    given through ``layer_spec`` (built directly without one: b1.58's, ``qatkit.bitnet_b158()``'s
    default). ``from_float`` / ``to_float`` are QuantLinear's."""

    eps: float = 1e-6

    @classmethod
    def _default_spec(cls, layer_spec: Optional[LayerSpec]) -> LayerSpec:
        if layer_spec is not None:
            return layer_spec
        from .config import bitnet_b158

        return bitnet_b158().default

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input
        if x.dim() == 1:  # one row, as QuantLinear
            return self.forward(x.unsqueeze(0)).squeeze(0)
        xn = F.rms_norm(x, (self.in_features,), eps=self.eps)
        return F.linear(self.quantize_input(self._smooth_input(xn)), self.quantized_weight(), self.bias)


def _attention(
    mod: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor],
    need_weights: bool,
    attn_mask: Optional[torch.Tensor],
    average_attn_weights: bool,
    is_causal: bool,
):
    """Multi-head attention with the four projections as modules (``mod.q_proj`` ... ``mod.out_proj``:
    QAT or converted linears), following ``F.multi_head_attention_forward`` step for step (masks,
    ``bias_k``/``bias_v``, ``add_zero_attn``, dropout, unbatched inputs, ``batch_first``), so a
    QuantMultiheadAttention with quantization off computes what ``nn.MultiheadAttention`` does."""
    is_batched = query.dim() == 3
    if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
        raise ValueError(
            f"{type(mod).__name__}: query, key and value must all be 2-D (unbatched) or 3-D (batched), got "
            f"{query.dim()}-D, {key.dim()}-D and {value.dim()}-D"
        )
    if mod.batch_first and is_batched:
        query, key, value = (x.transpose(0, 1) for x in (query, key, value))
    if not is_batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed_dim = query.shape
    if embed_dim != mod.embed_dim:
        raise ValueError(f"{type(mod).__name__}: query has {embed_dim} features, expected embed_dim={mod.embed_dim}")
    key_padding_mask = F._canonical_mask(
        mask=key_padding_mask,
        mask_name="key_padding_mask",
        other_type=F._none_or_dtype(attn_mask),
        other_name="attn_mask",
        target_type=query.dtype,
    )
    if is_causal and attn_mask is None:
        raise RuntimeError(
            f"{type(mod).__name__}: is_causal=True is a hint and needs attn_mask (as nn.MultiheadAttention does)"
        )
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # scaled_dot_product_attention builds the causal mask itself
    else:
        attn_mask = F._canonical_mask(
            mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=query.dtype,
            check_other=False,
        )
        if key_padding_mask is not None:
            is_causal = False
    num_heads, head_dim = mod.num_heads, mod.head_dim
    q, k, v = mod.q_proj(query), mod.k_proj(key), mod.v_proj(value)
    src_len = k.shape[0]
    if attn_mask is not None:
        if attn_mask.dim() == 2:
            if tuple(attn_mask.shape) != (tgt_len, src_len):
                raise ValueError(f"attn_mask: expected shape {(tgt_len, src_len)}, got {tuple(attn_mask.shape)}")
            attn_mask = attn_mask.unsqueeze(0)
        elif attn_mask.dim() == 3:
            if tuple(attn_mask.shape) != (bsz * num_heads, tgt_len, src_len):
                raise ValueError(
                    f"attn_mask: expected shape {(bsz * num_heads, tgt_len, src_len)}, got {tuple(attn_mask.shape)}"
                )
        else:
            raise ValueError(f"attn_mask: expected a 2-D or 3-D mask, got {attn_mask.dim()}-D")
    if mod.bias_k is not None:
        k = torch.cat([k, mod.bias_k.repeat(1, bsz, 1)])
        v = torch.cat([v, mod.bias_v.repeat(1, bsz, 1)])
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
    q = q.view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.view(k.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    v = v.view(v.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    if mod.add_zero_attn:
        zeros = torch.zeros((bsz * num_heads, 1, head_dim), dtype=k.dtype, device=k.device)
        k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
    src_len = k.shape[1]
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (bsz, src_len):
            raise ValueError(
                f"key_padding_mask: expected shape {(bsz, src_len)}, got {tuple(key_padding_mask.shape)}"
            )
        kpm = key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, num_heads, -1, -1).reshape(bsz * num_heads, 1, src_len)
        attn_mask = kpm if attn_mask is None else attn_mask + kpm
    dropout_p = mod.dropout if mod.training else 0.0
    if need_weights:
        q_scaled = q * math.sqrt(1.0 / float(head_dim))
        if attn_mask is not None:
            weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
        else:
            weights = torch.bmm(q_scaled, k.transpose(-2, -1))
        weights = F.softmax(weights, dim=-1)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(tgt_len * bsz, embed_dim)
        out = mod.out_proj(out).view(tgt_len, bsz, -1)
        weights = weights.view(bsz, num_heads, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not is_batched:
            out, weights = out.squeeze(1), weights.squeeze(0)
    else:
        if attn_mask is not None:
            if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
                attn_mask = attn_mask.unsqueeze(0)
            else:
                attn_mask = attn_mask.view(bsz, num_heads, -1, src_len)
        q = q.view(bsz, num_heads, tgt_len, head_dim)
        k = k.view(bsz, num_heads, src_len, head_dim)
        v = v.view(bsz, num_heads, src_len, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
        out = out.permute(2, 0, 1, 3).contiguous().view(bsz * tgt_len, embed_dim)
        out = mod.out_proj(out).view(tgt_len, bsz, -1)
        weights = None
        if not is_batched:
            out = out.squeeze(1)
    if mod.batch_first and is_batched:
        out = out.transpose(0, 1)
    return out, weights


class QuantMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with all four projections quantized: ``q_proj``, ``k_proj``,
    ``v_proj`` (the rows of ``in_proj_weight`` / ``in_proj_bias``, or ``q/k/v_proj_weight`` when
    ``kdim``/``vdim`` differ) and ``out_proj`` are :class:`QuantLinear` layers with the layer spec's
    weight and input quantizers (the query, key, value and attention output are the inputs they
    observe). The attention itself is ``F.multi_head_attention_forward``'s, written out so the
    projections are modules; every argument of ``nn.MultiheadAttention.forward`` is supported.

    PyTorch's fused fast paths (``nn.MultiheadAttention`` in eval mode, ``nn.TransformerEncoderLayer``
    under ``no_grad``) read the float weights directly and would bypass the quantizers; this module
    has no ``in_proj_weight`` / ``in_proj_bias`` (both ``None``), which keeps the transformer layers
    on their slow path, so quantization holds in train, eval, ``no_grad`` and ``inference_mode``.
    :func:`qatkit.convert` turns the projections into ``QuantizedLinear`` layers (integer codes);
    the module around them stays. Its parameters are new (the float packed ``in_proj_weight`` is
    split into three), so build the optimizer after ``prepare_qat``.
    """

    in_proj_weight = None
    in_proj_bias = None

    @classmethod
    def from_float(
        cls, mod: nn.MultiheadAttention, layer_spec: LayerSpec, linear: type = None
    ) -> "QuantMultiheadAttention":
        """``linear``: the projections' class (:class:`QuantLinear`, or :class:`BitLinear` under a
        ``bitlinear`` config)."""
        linear = QuantLinear if linear is None else linear
        if not (isinstance(linear, type) and issubclass(linear, QuantLinear)):
            raise TypeError(f"QuantMultiheadAttention.from_float: linear must be QuantLinear or a subclass, got {linear!r}")
        q = cls()
        e = mod.embed_dim
        q.embed_dim, q.kdim, q.vdim, q.num_heads = mod.embed_dim, mod.kdim, mod.vdim, mod.num_heads
        q.head_dim, q.dropout, q.batch_first = mod.head_dim, mod.dropout, mod.batch_first
        q._qkv_same_embed_dim, q.add_zero_attn = mod._qkv_same_embed_dim, mod.add_zero_attn
        has_bias = mod.in_proj_bias is not None
        with torch.no_grad():
            if mod._qkv_same_embed_dim:
                ws = mod.in_proj_weight.chunk(3)
            else:
                ws = (mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight)
            bs = mod.in_proj_bias.chunk(3) if has_bias else (None, None, None)
            for name, w, b in zip(("q_proj", "k_proj", "v_proj"), ws, bs):
                lin = nn.Linear(w.shape[1], e, has_bias, device=w.device, dtype=w.dtype)
                lin.weight.copy_(w)
                if has_bias:
                    lin.bias.copy_(b)
                lin.train(mod.training)
                setattr(q, name, linear.from_float(lin, layer_spec))
        q.out_proj = linear.from_float(mod.out_proj, layer_spec)
        q.bias_k, q.bias_v = mod.bias_k, mod.bias_v
        q.train(mod.training)
        return q

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # a float nn.MultiheadAttention's checkpoint (``in_proj_weight`` / ``in_proj_bias``, or
        # ``q/k/v_proj_weight``) loads into the projections, its rows split as from_float splits
        # them; before, its keys were unexpected and the projections kept the weights they had
        names = ("q_proj", "k_proj", "v_proj")
        for packed, field in ((prefix + "in_proj_weight", "weight"), (prefix + "in_proj_bias", "bias")):
            t = state_dict.pop(packed, None)
            if t is None:
                continue
            if t.dim() == 0 or t.shape[0] != 3 * self.embed_dim:  # (load_state_dict raises with the others)
                error_msgs.append(
                    f"size mismatch for {packed}: a float nn.MultiheadAttention's packed projections need 3 * "
                    f"embed_dim = {3 * self.embed_dim} rows, got shape {tuple(t.shape)}"
                )
                continue
            for n, part in zip(names, t.chunk(3), strict=True):
                state_dict.setdefault(f"{prefix}{n}.{field}", part)
        for n in names:
            t = state_dict.pop(f"{prefix}{n}_weight", None)
            if t is not None:
                state_dict.setdefault(f"{prefix}{n}.weight", t)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def projections(self):
        """``(name, QuantLinear)`` for ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``."""
        return [(n, getattr(self, n)) for n in ("q_proj", "k_proj", "v_proj", "out_proj")]

    def to_float(self) -> nn.MultiheadAttention:
        """The float ``nn.MultiheadAttention`` with this module's (unquantized) weights."""
        p = self.q_proj
        m = nn.MultiheadAttention(
            self.embed_dim, self.num_heads, dropout=self.dropout, bias=p.bias is not None,
            add_bias_kv=self.bias_k is not None, add_zero_attn=self.add_zero_attn, kdim=self.kdim, vdim=self.vdim,
            batch_first=self.batch_first, device=p.weight.device, dtype=p.weight.dtype,
        )
        with torch.no_grad():
            ws = [getattr(self, n).weight for n in ("q_proj", "k_proj", "v_proj")]
            if m._qkv_same_embed_dim:
                m.in_proj_weight.copy_(torch.cat(ws))
            else:
                m.q_proj_weight.copy_(ws[0]), m.k_proj_weight.copy_(ws[1]), m.v_proj_weight.copy_(ws[2])
            if m.in_proj_bias is not None:
                m.in_proj_bias.copy_(torch.cat([getattr(self, n).bias for n in ("q_proj", "k_proj", "v_proj")]))
            m.out_proj.weight.copy_(self.out_proj.weight)
            if m.out_proj.bias is not None:
                m.out_proj.bias.copy_(self.out_proj.bias)
            if self.bias_k is not None:
                m.bias_k.copy_(self.bias_k), m.bias_v.copy_(self.bias_v)
        return m.train(self.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ):
        return _attention(
            self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
        )

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


#: float module type -> QAT replacement
QAT_MODULES = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Embedding: QuantEmbedding,
    nn.MultiheadAttention: QuantMultiheadAttention,
}
