"""Fake quantizers for QAT: one module per quantized tensor, built from a :class:`QuantSpec`.

:class:`WeightFakeQuantizer` quantizes a layer's FP32 shadow weight at every forward (min/max
ranges of the current weight, LSQ step sizes, ternary or binary codes); :class:`ActFakeQuantizer`
quantizes a layer's input (an EMA/min-max observer whose state lives in buffers, dynamic absmax
per tensor or per token, LSQ/LSQ+, or sign). Both call the ``torch.ops.qatkit`` ops, so gradients
are the ops' straight-through estimators computed in C++.

State and switches:
- buffers hold everything a resumed run needs (observer ranges, qparams, on/off flags, the
  stochastic-binarization step), so ``state_dict`` save/load resumes bit-identically;
- the spec is saved as ``_extra_state``; loading a checkpoint made with another spec raises
  ``ValueError`` naming the key;
- observer / fake-quant switches are one-element tensors read inside the fused op (no recompile
  when toggled) plus a Python mirror for the paths that branch in Python.

Distributed: when ``torch.distributed`` is initialized with more than one rank, a static
activation observer all-reduces the batch min/max (MIN/MAX) before its update, so every rank holds
the qparams a single process would compute on the global batch.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .. import ops
from .config import QuantSpec

__all__ = ["WeightFakeQuantizer", "ActFakeQuantizer", "weight_layout"]


def weight_layout(spec: QuantSpec, weight_shape) -> tuple:
    """The effective (granularity, group_size) of a weight spec on a weight of this shape.

    Per-group groups run along the flattened input dimension (``in_features`` for Linear,
    ``in_channels / groups * kh * kw`` for convs); when it is not a multiple of the group size the
    weight falls back to per-channel. Returns ``("per_group", g)``, ``("per_channel", None)`` etc.
    """
    if spec.granularity != "per_group":
        return spec.granularity, None
    flat_in = math.prod(weight_shape[1:]) if len(weight_shape) > 1 else 0
    if flat_in == 0 or flat_in % spec.group_size != 0:
        return "per_channel", None
    return "per_group", spec.group_size


def _flag(on: bool) -> torch.Tensor:
    return torch.tensor([1 if on else 0], dtype=torch.uint8)


class _SpecModule(nn.Module):
    """Shared spec bookkeeping: extra state, checkpoint compatibility, Python mirrors of flags."""

    def __init__(self, spec: QuantSpec):
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        self.spec = spec
        self.register_buffer("fake_quant_on", _flag(True))
        self._fq_enabled = True

    def get_extra_state(self):
        return {"spec": dataclasses.asdict(self.spec)}

    def set_extra_state(self, state):
        pass  # compared in _load_from_state_dict, where the key is known

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs):
        key = prefix + "_extra_state"
        if key in state_dict:
            saved = state_dict[key].get("spec") if isinstance(state_dict[key], dict) else None
            mine = dataclasses.asdict(self.spec)
            if saved != mine:
                diff = sorted(k for k in mine if saved is None or saved.get(k) != mine.get(k))
                raise ValueError(
                    f"load_state_dict: key '{key}' holds a quantizer saved with another spec "
                    f"(fields {diff} differ: saved {saved and {k: saved.get(k) for k in diff}}, "
                    f"model { ({k: mine[k] for k in diff}) }); prepare the model with the checkpoint's config"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs)
        self._sync_mirrors()

    def _sync_mirrors(self):
        self._fq_enabled = bool(self.fake_quant_on.item())

    def enable_fake_quant(self, on: bool = True) -> None:
        """Turn fake quantization on or off (off: the tensor passes through unchanged)."""
        self.fake_quant_on.fill_(1 if on else 0)
        self._fq_enabled = bool(on)

    def extra_repr(self) -> str:
        return self.spec.describe()


class WeightFakeQuantizer(_SpecModule):
    """Fake-quantizes a layer's weight (output channel = dim 0).

    Args:
        spec: the weight's :class:`QuantSpec`.
        weight: the float weight (its shape fixes the layout; LSQ step sizes start from it:
            ``s = 2 mean|w| / sqrt(Q_P)`` per channel, the LSQ paper's initialization).
    """

    def __init__(self, spec: QuantSpec, weight: torch.Tensor):
        super().__init__(spec)
        if spec.scale == "dynamic":
            raise ValueError("QuantSpec.scale 'dynamic' is for activations; weights use 'static' or 'learned'")
        if spec.granularity == "per_token":
            raise ValueError("QuantSpec.granularity 'per_token' is for activations")
        self.weight_shape = tuple(weight.shape)
        self.granularity, self.group_size = weight_layout(spec, self.weight_shape)
        #: True when per-group fell back to per-channel (reported by prepare_qat)
        self.fell_back = spec.granularity == "per_group" and self.granularity != "per_group"
        self.axis = 0 if self.granularity == "per_channel" else None
        if spec.stochastic:
            self.register_buffer("step", torch.zeros(1, dtype=torch.int64))
        if spec.scale == "learned":
            w = weight.detach().float()
            qp = spec.quant_max
            if self.axis is None:
                init = 2 * w.abs().mean().reshape(1) / math.sqrt(qp)
            else:
                init = 2 * w.abs().reshape(w.shape[0], -1).mean(1) / math.sqrt(qp)
            self.scale = nn.Parameter(init.clamp(min=1e-6))
            zp = torch.zeros_like(init)
            if spec.symmetric:
                self.register_buffer("zero_point", zp)
            else:
                self.zero_point = nn.Parameter(zp)
            per_scale = w.numel() // init.numel()
            self.grad_factor = ops.lsq_grad_factor(per_scale, qp) if spec.lsq_grad_scale else 1.0

    def qparams(self, w: torch.Tensor):
        """(scale, zero_point) the forward uses for weight ``w`` (int kinds)."""
        s = self.spec
        if s.scale == "learned":
            return self.scale.detach().clamp(min=torch.finfo(torch.float32).eps), self.zero_point.detach()
        w2 = w.detach().reshape(w.shape[0], -1) if self.granularity == "per_group" else w.detach()
        return ops.choose_qparams(w2, s.quant_min, s.quant_max, s.symmetric, self.axis, self.group_size)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self._fq_enabled:
            return w
        s = self.spec
        if s.kind == "ternary":
            return ops.ternarize(w, s.method, self.axis)
        if s.kind == "binary":
            seed = None
            if s.stochastic and self.training:
                self.step.add_(1)
                seed = self.step
            return ops.binarize(w, s.method, self.axis, s.estimator, seed=seed)
        if s.scale == "learned":
            return ops.fake_quantize_learnable(
                w, self.scale, self.zero_point, s.quant_min, s.quant_max, self.axis, grad_factor=self.grad_factor
            )
        if self.granularity == "per_group":
            w2 = w.reshape(w.shape[0], -1)
            sc, zp = ops.choose_qparams(w2.detach(), s.quant_min, s.quant_max, s.symmetric, None, self.group_size)
            y = ops.fake_quantize(w2, sc, zp, s.quant_min, s.quant_max, group_size=self.group_size)
            return y.reshape(w.shape)
        sc, zp = ops.choose_qparams(w.detach(), s.quant_min, s.quant_max, s.symmetric, self.axis)
        return ops.fake_quantize(w, sc, zp, s.quant_min, s.quant_max, self.axis)

    def extra_repr(self) -> str:
        fb = " (per-group fell back to per-channel)" if self.fell_back else ""
        return super().extra_repr() + fb


def _dist_world() -> int:
    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


class ActFakeQuantizer(_SpecModule):
    """Fake-quantizes a layer's input activation.

    Args:
        spec: the activation's :class:`QuantSpec` (per-channel uses ``spec.axis``, e.g. 1 for NCHW).
        channels: number of channels for per-channel observers.
    """

    def __init__(self, spec: QuantSpec, channels: int = 1):
        super().__init__(spec)
        self.axis = spec.axis if spec.granularity == "per_channel" else None
        n = channels if self.axis is not None else 1
        if spec.kind == "int" and spec.scale == "static":
            self.register_buffer("running_min", torch.full((n,), float("inf")))
            self.register_buffer("running_max", torch.full((n,), float("-inf")))
            self.register_buffer("scale", torch.ones(n))
            self.register_buffer("zero_point", torch.zeros(n, dtype=torch.int32))
            self.register_buffer("observer_on", _flag(True))
            self.register_buffer("_off", _flag(False), persistent=False)
            self._obs_enabled = True
        elif spec.kind == "int" and spec.scale == "learned":
            self.scale = nn.Parameter(torch.ones(n))
            if spec.symmetric:
                self.register_buffer("zero_point", torch.zeros(n))
            else:
                self.zero_point = nn.Parameter(torch.zeros(n))
            self.register_buffer("initialized", _flag(False))
            self._initialized = False
        self.sync_distributed = True

    def _sync_mirrors(self):
        super()._sync_mirrors()
        if hasattr(self, "observer_on"):
            self._obs_enabled = bool(self.observer_on.item())
        if hasattr(self, "initialized"):
            self._initialized = bool(self.initialized.item())

    def enable_observer(self, on: bool = True) -> None:
        """Turn the range observer on or off (static int activations; a no-op otherwise)."""
        if hasattr(self, "observer_on"):
            self.observer_on.fill_(1 if on else 0)
            self._obs_enabled = bool(on)

    @property
    def has_observed(self) -> bool:
        """False for a static observer that has not seen data yet (its qparams are meaningless)."""
        if hasattr(self, "running_min"):
            return bool(torch.isfinite(self.running_min).all())
        if hasattr(self, "initialized"):
            return self._initialized
        return True

    @torch.no_grad()
    def _init_learned(self, x: torch.Tensor) -> None:
        s = self.spec
        xf = x.detach().float()
        dims = [d for d in range(x.dim()) if d != (self.axis % x.dim() if self.axis is not None else -999)]
        lo = xf.amin(dim=dims) if dims else xf
        hi = xf.amax(dim=dims) if dims else xf
        lo, hi = lo.reshape(-1), hi.reshape(-1)
        if _dist_world() > 1 and self.sync_distributed:
            torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
        if s.symmetric:
            scale = torch.maximum(-lo, hi) / s.quant_max
            zp = torch.zeros_like(scale)
        else:
            scale = (hi - lo) / (s.quant_max - s.quant_min)
            scale = scale.clamp(min=1e-6)
            zp = s.quant_min - lo / scale
        self.scale.copy_(scale.clamp(min=1e-6).expand_as(self.scale))
        self.zero_point.copy_(zp.expand_as(self.zero_point))
        self.initialized.fill_(1)
        self._initialized = True

    def _observe_distributed(self, x: torch.Tensor) -> None:
        """All-reduce this batch's min/max over ranks, then run the observer update on them."""
        s = self.spec
        with torch.no_grad():
            xd = x.detach()
            if self.axis is None:
                lo, hi = xd.amin().reshape(1), xd.amax().reshape(1)
            else:
                ax = self.axis % x.dim()
                dims = [d for d in range(x.dim()) if d != ax]
                lo, hi = xd.amin(dim=dims), xd.amax(dim=dims)
            lo, hi = lo.float().contiguous(), hi.float().contiguous()
            torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
            # a 2-column tensor whose min/max per row are the global min/max: the observer's own
            # update then gives exactly the single-process result on the global batch
            stats = torch.stack([lo, hi], dim=-1)
            ops.observer_update(
                stats,
                self.running_min,
                self.running_max,
                self.scale,
                self.zero_point,
                self.observer_on,
                s.momentum,
                s.observer == "moving_average",
                s.quant_min,
                s.quant_max,
                s.symmetric,
                None if self.axis is None else 0,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if s.kind == "binary":
            if not self._fq_enabled:
                return x
            return ops.binarize(x, s.method, self.axis, s.estimator)
        if s.scale == "dynamic":
            if not self._fq_enabled:
                return x
            if s.granularity == "per_token":
                return ops.quantize_per_token(x, s.quant_max)
            return ops.quantize_per_tensor_dynamic(x, s.quant_max)
        if s.scale == "learned":
            if not self._fq_enabled:
                return x
            if not self._initialized:
                self._init_learned(x)
            grad_factor = 1.0
            if s.lsq_grad_scale:
                per_scale = x.numel() // self.scale.numel()
                grad_factor = ops.lsq_grad_factor(max(per_scale, 1), s.quant_max)
            return ops.fake_quantize_learnable(
                x, self.scale, self.zero_point, s.quant_min, s.quant_max, self.axis, grad_factor=grad_factor
            )
        # the observer runs in training mode only; its on/off switch is the tensor flag, read
        # inside the op (toggling it does not recompile a compiled model)
        flag = self.observer_on if self.training else self._off
        if self.training and self.sync_distributed and _dist_world() > 1 and self._obs_enabled:
            self._observe_distributed(x)
            flag = self._off
        return ops.fused_observe_fake_quantize(
            x,
            self.running_min,
            self.running_max,
            self.scale,
            self.zero_point,
            flag,
            self.fake_quant_on,
            s.momentum,
            s.observer == "moving_average",
            s.quant_min,
            s.quant_max,
            s.symmetric,
            self.axis,
        )

    def frozen_qparams(self):
        """(scale, zero_point) a converted model uses for this input (static and learned int)."""
        if hasattr(self, "running_min"):
            return self.scale.detach().clone(), self.zero_point.detach().clone()
        s = self.scale.detach().clamp(min=torch.finfo(torch.float32).eps).clone()
        return s, self.zero_point.detach().clone()
