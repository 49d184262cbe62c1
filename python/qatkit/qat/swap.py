"""Module replacement by qualified name, shared by ``prepare_qat``, ``convert`` (and the PTQ and
export passes that build on them)."""

from __future__ import annotations

from torch import nn

__all__ = ["replace_module"]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where ``model``'s submodule ``name`` (``"features.3"``) is; returns the old one.

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
    setattr(parent, child, new)
    return old
