"""Conv / Linear + activation fusion for converted and loaded models (``qatkit.fuse_activations``).

A converted conv (``QuantizedConv1d`` / ``QuantizedConv2d``, the loaded ``PackedConv2d`` included)
or Linear (``QuantizedLinear``, ``PackedLinear``) that an ``nn.ReLU``, ``nn.ReLU6`` or
``nn.Hardtanh`` follows inside an ``nn.Sequential`` (with only ``nn.Identity`` modules between them,
a folded BatchNorm's place) takes the activation into its output: each is a clamp,
``torch.clamp(y, lo, hi)`` (ReLU: lo 0; ReLU6: 0 and 6; Hardtanh: its ``min_val`` and ``max_val``),
which a conv's integer kernels write as each image's output is still in cache (the ops'
``clamp_min`` / ``clamp_max``) and a Linear's bound kernel applies in place to its fresh output in
C++ (``qatkit._C.BoundOp.clamped``: no module call, no second allocation), and the activation's
place holds a :class:`FusedActivation` (an identity that records the fusion). The values are the same bits as the
conv then the activation (a clamp is exact: y < lo -> lo, y > hi -> hi, NaN and -0.0 kept); what
goes is the activation's second pass over the output and its module and op dispatch (5-15 % of a
loaded MobileNetV2 on 2 cores: docs/benchmarks.md, fifty-first session; a small loaded MLP's
ReLUs: fifty-second session). ``torch.ao``'s
``fuse_modules`` / ``ConvReLU2d`` do the same for ReLU after its quantized convs; XNNPACK's operators
take an output min / max the same way.

Only an ``nn.Sequential`` whose forward is ``nn.Sequential.forward`` is fused (its children run one
after the other, each output feeding only the next); a model's own forward (a ResNet block's
``relu(bn(conv(x)) + identity)``) is left as it is. A pair is skipped, and named in the result's
``skipped`` with the reason, where fusing would change what some code sees: hooks on the layer,
the activation or a module between them (or global module forward hooks, which see every module), a
layer or activation module that appears in the model more than once, a Hardtanh with a -0.0 bound
(whose zero's sign torch and the kernels' comparison may give differently).

:func:`qatkit.export` and :func:`qatkit.export_onnx` write a :class:`FusedActivation` as the module
it replaced (and the layer without it), so a fused model's file is the unfused model's file.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Dict, List

import torch.nn as nn

__all__ = ["FusedActivation", "fuse_activations"]

#: the activations fused, each a clamp: type -> its (clamp_min, clamp_max) (None: no bound)
_CLAMPS = {
    nn.ReLU: lambda m: (0.0, None),
    nn.ReLU6: lambda m: (0.0, 6.0),
    nn.Hardtanh: lambda m: (float(m.min_val), float(m.max_val)),
}


class FusedActivation(nn.Identity):
    """The place of an ``nn.ReLU`` / ``nn.ReLU6`` / ``nn.Hardtanh`` that :func:`fuse_activations`
    fused into the conv or Linear before it: an identity (that layer's output is already clamped). ``kind``,
    ``inplace`` and the bounds are the activation's, kept for export (:meth:`unfused`)."""

    def __init__(self, kind: str = "ReLU", inplace: bool = False, min_val: float = 0.0, max_val=None):
        super().__init__()
        if kind not in ("ReLU", "ReLU6", "Hardtanh"):
            raise ValueError(f"FusedActivation: kind must be 'ReLU', 'ReLU6' or 'Hardtanh', got {kind!r}")
        self.kind = kind
        self.inplace = bool(inplace)
        self.min_val = float(min_val)
        self.max_val = None if max_val is None else float(max_val)

    @property
    def bounds(self):
        """(clamp_min, clamp_max) the layer before it applies."""
        return (self.min_val, self.max_val)

    @classmethod
    def of(cls, act: nn.Module) -> "FusedActivation":
        lo, hi = _CLAMPS[type(act)](act)
        return cls(type(act).__name__, act.inplace, lo, hi)

    def unfused(self) -> nn.Module:
        """A new module of the activation this place replaced (what export writes)."""
        if self.kind == "ReLU":
            return nn.ReLU(self.inplace)
        if self.kind == "ReLU6":
            return nn.ReLU6(self.inplace)
        return nn.Hardtanh(self.min_val, self.max_val, self.inplace)

    def extra_repr(self) -> str:
        return f"{self.kind}, fused into the layer before it"


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_with_kwargs", None))


def _global_hooks() -> bool:
    """torch.nn.modules.module.register_module_forward_(pre_)hook's hooks: they see every module's
    output, the conv's included."""
    from torch.nn.modules import module as _m

    return bool(getattr(_m, "_global_forward_hooks", None) or getattr(_m, "_global_forward_pre_hooks", None))


def _plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def fuse_activations(model: nn.Module) -> Dict[str, List]:
    """Fuse each ``nn.ReLU`` / ``nn.ReLU6`` / ``nn.Hardtanh`` that follows a converted conv or Linear
    in an ``nn.Sequential`` into the layer (see the module's docstring), in place.

    Returns:
        ``{"fused": [(layer_name, activation_name), ...], "skipped": [(layer_name, activation_name,
        why), ...]}``.
    """
    from .convert import _OutputClamp

    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_activations: model must be a torch.nn.Module, got {type(model).__name__}")
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    fused, skipped = [], []
    for seq_name, seq in [(n, m) for n, m in model.named_modules() if _plain_sequential(m)]:
        names = list(seq._modules.keys())
        for i, n in enumerate(names):
            conv = seq._modules[n]
            if not isinstance(conv, _OutputClamp) or conv.output_clamp is not None:
                continue
            j = i + 1
            while j < len(names) and type(seq._modules[names[j]]) is nn.Identity:
                j += 1
            if j == len(names) or type(seq._modules[names[j]]) not in _CLAMPS:
                continue
            act = seq._modules[names[j]]
            full = lambda k: f"{seq_name}.{k}" if seq_name else k  # noqa: E731
            between = [seq._modules[names[k]] for k in range(i + 1, j)]
            lo, hi = _CLAMPS[type(act)](act)
            why = None
            if _global_hooks():
                why = "a global module forward hook (register_module_forward_hook) would see other values"
            elif any(_has_hooks(m) for m in [conv, act, *between]):
                why = "a hook on the layer, the activation or a module between them would see other values"
            elif uses[id(conv)] > 1 or uses[id(act)] > 1:
                why = "the layer or the activation module is used more than once in the model"
            elif any(v is not None and v == 0 and math.copysign(1.0, v) < 0 for v in (lo, hi)):
                why = "a Hardtanh bound of -0.0 (the sign of a zero output could differ)"
            elif lo is not None and hi is not None and not lo <= hi:
                why = f"the Hardtanh's bounds ({lo}, {hi}) are not ordered"
            if why:
                skipped.append((full(n), full(names[j]), why))
                continue
            conv.set_output_clamp(lo, hi)
            seq._modules[names[j]] = FusedActivation.of(act)
            fused.append((full(n), full(names[j])))
    return {"fused": fused, "skipped": skipped}


def check_fused(model: nn.Module, where: str) -> None:
    """Before a file is written (:func:`qatkit.export`, :func:`qatkit.export_onnx`): every conv or
    Linear with a fused activation (``output_clamp``) is followed in its ``nn.Sequential``, past
    ``nn.Identity`` modules only, by the :class:`FusedActivation` of the same bounds, and every such
    place follows such a layer: the file writes the layer without its clamp and the place as the
    activation, so the pair is what the model computes. A clamp set by hand (``set_output_clamp``)
    or a place left after its layer was unfused would write a file that computes something else.

    Raises:
        ValueError: naming the layer or the place, and how to fix it.
    """
    from .convert import _OutputClamp

    paired = set()
    for _, seq in [(n, m) for n, m in model.named_modules() if _plain_sequential(m)]:
        kids = list(seq._modules.values())
        for i, conv in enumerate(kids):
            if not isinstance(conv, _OutputClamp) or conv.output_clamp is None:
                continue
            j = i + 1
            while j < len(kids) and type(kids[j]) is nn.Identity:
                j += 1
            if j < len(kids) and type(kids[j]) is FusedActivation:
                if kids[j].bounds == conv.output_clamp:
                    paired.update((id(conv), id(kids[j])))
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, _OutputClamp) and m.output_clamp is not None and id(m) not in paired:
            raise ValueError(
                f"{where}: layer {name!r} has a fused activation (output_clamp={m.output_clamp}) with no "
                "FusedActivation of the same bounds after it in an nn.Sequential: the file would not hold the "
                f"activation. Unfuse it ({name}.set_output_clamp()) and put the activation module after it")
        if type(m) is FusedActivation and id(m) not in paired:
            raise ValueError(
                f"{where}: {name!r} is a FusedActivation ({m.kind}) with no layer before it that applies it: the file "
                f"would hold a {m.kind} the model does not compute. Replace it with nn.Identity() or the layer's "
                "activation")
