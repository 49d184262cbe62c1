"""Conv + ReLU fusion for converted and loaded models (``qatkit.fuse_relu``).

A converted conv (``QuantizedConv1d`` / ``QuantizedConv2d``, the loaded ``PackedConv2d`` included)
that an ``nn.ReLU`` follows inside an ``nn.Sequential`` (with only ``nn.Identity`` modules between
them, a folded BatchNorm's place) takes the ReLU into its output: the integer kernels write
``torch.relu`` of the conv's output (the ops' ``relu`` argument), and the ReLU's place holds a
:class:`FusedReLU` (an identity that records the fusion). The values are the same bits as the conv
then the ReLU (ReLU is exact: y < 0 -> 0, NaN and -0.0 kept); what goes is the ReLU's second pass
over the activation and its module and op dispatch (5-15 % of a loaded MobileNetV2 on 2 cores:
docs/benchmarks.md, fifty-first session). ``torch.ao``'s ``fuse_modules`` / ``ConvReLU2d`` do the
same for its quantized convs.

Only an ``nn.Sequential`` whose forward is ``nn.Sequential.forward`` is fused (its children run one
after the other, each output feeding only the next); a model's own forward (a ResNet block's
``relu(bn(conv(x)) + identity)``) is left as it is. A pair is skipped, and named in the result's
``skipped`` with the reason, where fusing would change what some code sees: hooks on the conv, the
ReLU or a module between them (or global module forward hooks, which see every module), a conv or
ReLU module that appears in the model more than once.

:func:`qatkit.export` and :func:`qatkit.export_onnx` write a :class:`FusedReLU` as the ReLU it
replaced (and the conv without it), so a fused model's file is the unfused model's file.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, List

import torch.nn as nn

__all__ = ["FusedReLU", "fuse_relu"]


class FusedReLU(nn.Identity):
    """The place of an ``nn.ReLU`` that :func:`fuse_relu` fused into the conv before it: an identity
    (the conv's output is already ``relu``'d). ``inplace`` is the ReLU's, kept for export."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = bool(inplace)

    def extra_repr(self) -> str:
        return "fused into the conv before it"


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_with_kwargs", None))


def _global_hooks() -> bool:
    """torch.nn.modules.module.register_module_forward_(pre_)hook's hooks: they see every module's
    output, the conv's included."""
    from torch.nn.modules import module as _m

    return bool(getattr(_m, "_global_forward_hooks", None) or getattr(_m, "_global_forward_pre_hooks", None))


def _plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def fuse_relu(model: nn.Module) -> Dict[str, List]:
    """Fuse each ``nn.ReLU`` that follows a converted conv in an ``nn.Sequential`` into the conv (see
    the module's docstring), in place.

    Returns:
        ``{"fused": [(conv_name, relu_name), ...], "skipped": [(conv_name, relu_name, why), ...]}``.
    """
    from .convert import _QuantizedConv

    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_relu: model must be a torch.nn.Module, got {type(model).__name__}")
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    fused, skipped = [], []
    for seq_name, seq in [(n, m) for n, m in model.named_modules() if _plain_sequential(m)]:
        names = list(seq._modules.keys())
        for i, n in enumerate(names):
            conv = seq._modules[n]
            if not isinstance(conv, _QuantizedConv) or conv.relu:
                continue
            j = i + 1
            while j < len(names) and type(seq._modules[names[j]]) is nn.Identity:
                j += 1
            if j == len(names) or type(seq._modules[names[j]]) is not nn.ReLU:
                continue
            relu = seq._modules[names[j]]
            full = lambda k: f"{seq_name}.{k}" if seq_name else k  # noqa: E731
            between = [seq._modules[names[k]] for k in range(i + 1, j)]
            why = None
            if _global_hooks():
                why = "a global module forward hook (register_module_forward_hook) would see other values"
            elif any(_has_hooks(m) for m in [conv, relu, *between]):
                why = "a hook on the conv, the ReLU or a module between them would see other values"
            elif uses[id(conv)] > 1 or uses[id(relu)] > 1:
                why = "the conv or the ReLU module is used more than once in the model"
            if why:
                skipped.append((full(n), full(names[j]), why))
                continue
            conv.set_relu(True)
            seq._modules[names[j]] = FusedReLU(relu.inplace)
            fused.append((full(n), full(names[j])))
    return {"fused": fused, "skipped": skipped}
