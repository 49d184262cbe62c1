"""Module replacement by qualified name, shared by ``prepare_qat``, ``convert`` (and the PTQ and
export passes that build on them)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["replace_module", "move_hooks", "warn_hooks", "pruning_hooks", "refresh_pruned"]


#: the per-module hook tables a replacement takes over: forward pre-hooks and hooks (with and
#: without kwargs, always-called), backward pre-hooks and (full) backward hooks. State-dict hooks
#: stay behind: they are written for the old module's tensors.
_HOOK_TABLES = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
)


def reparam_hook(hook) -> bool:
    """True for the hooks of torch's hook-based weight reparametrizations (``torch.nn.utils.
    weight_norm`` / ``spectral_norm``, ``torch.nn.utils.prune``): a pre-hook that recomputes a
    weight attribute from the module's own tensors. They belong to that module's tensors, not to a
    replacement that holds other ones."""
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    return isinstance(hook, (WeightNorm, SpectralNorm, BasePruningMethod))


def pruning_hooks(mod: nn.Module) -> dict:
    """``{tensor name: (hook id, hook)}`` of ``torch.nn.utils.prune`` on ``mod`` (one hook per
    pruned tensor; repeated pruning of a tensor is one PruningContainer)."""
    from torch.nn.utils.prune import BasePruningMethod

    return {h._tensor_name: (k, h) for k, h in mod._forward_pre_hooks.items() if isinstance(h, BasePruningMethod)}


def refresh_pruned(mod: nn.Module) -> None:
    """Recompute each pruned tensor of ``mod`` (``name = name_orig * name_mask``) without autograd:
    its attribute is whatever the pre-hook computed before the last call (a non-leaf that deepcopy
    refuses, and stale after an optimizer step)."""
    for name, (_, hook) in pruning_hooks(mod).items():
        with torch.no_grad():
            setattr(mod, name, hook.apply_mask(mod))


def move_hooks(old: nn.Module, new: nn.Module) -> int:
    """Give ``new`` the forward / backward hooks registered on ``old`` (as torch.ao's swap does),
    so a hook a user put on a float layer keeps running on its QAT, converted or loaded
    replacement. Where ``new`` has none of its own, it takes ``old``'s tables themselves, so the
    user's ``RemovableHandle.remove()`` still removes the hook. Reparametrization hooks
    (:func:`reparam_hook`) stay: a QAT layer that keeps a pruning mask takes its hook itself.
    Returns how many hooks moved."""
    if old is new:
        return 0
    moved = 0
    for table in _HOOK_TABLES:
        src = getattr(old, table, None)
        if not src:
            continue
        if any(reparam_hook(h) for h in src.values()):  # (forward pre-hooks) the others, copied
            src = {k: h for k, h in src.items() if not reparam_hook(h)}
            dst = getattr(new, table, None)
            if src and dst is not None:
                dst.update(src)
                moved += len(src)
            continue
        dst = getattr(new, table, None)
        if dst is None:
            continue
        if table == "_backward_hooks":
            # full (register_full_backward_hook) and old-style hooks cannot mix on one module
            new._is_full_backward_hook = old._is_full_backward_hook
        if table not in ("_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            moved += len(src)
        if not dst:
            setattr(new, table, src)  # the same dict: the user's handles still reach it
        else:
            dst.update(src)
    return moved


def warn_hooks(model: nn.Module, where: str, what: str) -> None:
    """Warn (once per call) naming the modules of ``model`` with forward hooks or pre-hooks: an
    exported file holds modules and tensors, and ``what`` says what that means for the file."""
    def count(m: nn.Module) -> int:
        # torch's own weight reparametrizations (hook-based weight_norm / spectral_norm, pruning)
        # keep their state in the module's tensors, which the file holds
        hooks = list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values())
        return sum(not reparam_hook(h) for h in hooks)

    hooked = [(name or type(m).__name__, n) for name, m in model.named_modules() if (n := count(m))]
    if hooked:
        listing = ", ".join(f"'{n}' ({k})" for n, k in hooked[:8]) + (f" and {len(hooked) - 8} more" if len(hooked) > 8 else "")
        warnings.warn(
            f"{where}: {len(hooked)} module(s) have forward hooks or pre-hooks: {listing}. {what}; where a hook "
            "changes a module's input or output, the file computes something else than the model",
            UserWarning,
            stacklevel=3,
        )


def replace_module(model: nn.Module, name: str, new: nn.Module, hooks: bool = True) -> nn.Module:
    """Put ``new`` where ``model``'s submodule ``name`` (``"features.3"``) is; returns the old one.
    With ``hooks`` (default), ``new`` takes over the old module's forward and backward hooks
    (:func:`move_hooks`).

    Raises:
        ValueError: ``name`` is empty (the root cannot replace itself) or names no submodule.
        TypeError: ``new`` is not an ``nn.Module``.
    """
    if not isinstance(new, nn.Module):
        raise TypeError(f"replace_module: new must be an nn.Module, got {type(new).__name__}")
    if not name:
        raise ValueError("replace_module: name must name a submodule, got '' (the model itself)")
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        old = parent.get_submodule(child)
    except AttributeError as e:
        raise ValueError(f"replace_module: the model has no submodule '{name}'") from e
    if hooks:
        move_hooks(old, new)
    setattr(parent, child, new)
    return old
