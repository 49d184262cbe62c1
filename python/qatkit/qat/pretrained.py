"""Hugging Face checkpoints of QAT and converted models: saved so that float loaders fail loudly,
reloaded through qatkit exactly.

A QAT or converted model's state dict holds quantizer state and (after ``convert``) integer codes
instead of float weights. ``transformers``' ``from_pretrained`` (and sentence-transformers, which
calls it) would load such a checkpoint into the float architecture, report the keys it did not
know, and return a model with randomly initialized weights — a silent data loss. So
:func:`qatkit.prepare_qat` and :func:`qatkit.convert` record in every Hugging Face config they
find in the model (``model.config``, a ``PretrainedConfig``) a ``quantization_config`` with
``quant_method="qatkit"``, the stage and the :class:`QATConfig`; ``save_pretrained`` writes it to
``config.json``, and ``from_pretrained`` then refuses the checkpoint (transformers raises for a
quantization method it does not know). :func:`load_pretrained` is the way back: it rebuilds the
same stage on a float model of the architecture and loads the tensors with ``strict=True``.
"""

from __future__ import annotations

import json
import os
from typing import Dict

import torch
from torch import nn

from .config import QATConfig

__all__ = ["QUANT_METHOD", "tag_pretrained_configs", "load_pretrained", "read_quantization_config"]

QUANT_METHOD = "qatkit"
STAGES = ("qat", "converted")


def _hf_configs(model: nn.Module):
    """The transformers ``PretrainedConfig`` objects the model's modules carry (duck-typed: no
    transformers import)."""
    seen = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "to_json_string") and hasattr(cfg, "model_type"):
            seen[id(cfg)] = cfg
    return list(seen.values())


def tag_pretrained_configs(model: nn.Module, stage: str, config: QATConfig) -> None:
    """Record ``{"quant_method": "qatkit", "stage": stage, "qat_config": config.to_dict()}`` as the
    ``quantization_config`` of every Hugging Face config in ``model`` (see the module docstring)."""
    if stage not in STAGES:
        raise ValueError(f"tag_pretrained_configs: stage must be one of {STAGES}, got {stage!r}")
    from .. import __version__

    info = {"quant_method": QUANT_METHOD, "stage": stage, "qat_config": config.to_dict(), "qatkit_version": __version__}
    for cfg in _hf_configs(model):
        cfg.quantization_config = info


def _read_json(file: str):
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"load_pretrained: {file} is not a readable JSON file ({e})") from None


def read_quantization_config(path: str) -> dict:
    """The qatkit ``quantization_config`` of a saved checkpoint directory (its ``config.json``).

    Raises:
        FileNotFoundError: no ``config.json`` in ``path``.
        ValueError: the file is not JSON, or carries no qatkit quantization_config (a float
            checkpoint, or another library's), naming what it found.
    """
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(f"load_pretrained: {path!r} has no config.json (expected a save_pretrained directory)")
    cfg = _read_json(cfg_file)
    info = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    if not isinstance(info, dict) or info.get("quant_method") != QUANT_METHOD:
        found = "none" if info is None else repr(info.get("quant_method") if isinstance(info, dict) else info)
        raise ValueError(
            f"load_pretrained: {cfg_file} has no qatkit quantization_config (quant_method: {found}); it was not "
            "saved from a qatkit QAT or converted model (load a float checkpoint with from_pretrained)"
        )
    if info.get("stage") not in STAGES or not isinstance(info.get("qat_config"), dict):
        raise ValueError(
            f"load_pretrained: {cfg_file}'s quantization_config needs stage in {STAGES} and a qat_config dict, "
            f"got stage={info.get('stage')!r}"
        )
    return info


def _read_index(path: str, index: str) -> Dict[str, str]:
    """A sharded checkpoint's ``model.safetensors.index.json``: its ``weight_map`` (tensor name ->
    shard file, made a path in ``path``), checked: a JSON object with a ``weight_map`` object of
    strings, each shard a file name inside ``path`` (no ``..`` or absolute path out of it)."""
    doc = _read_json(index)
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise ValueError(f"load_pretrained: {index} needs a 'weight_map' object of tensor names to shard files, "
                         f"got {type(wm).__name__ if wm is not None else 'none'}")
    # (lexically: the Hugging Face cache's snapshot directories hold symlinks into a blob store)
    root = os.path.normpath(path)
    out = {}
    for k, n in wm.items():
        if not isinstance(n, str) or not n or os.path.isabs(n):
            raise ValueError(
                f"load_pretrained: {index}: the shard of {k!r} must be a file name in the directory, got {n!r}")
        fn = os.path.normpath(os.path.join(root, n))
        if not fn.startswith(root + os.sep):
            raise ValueError(f"load_pretrained: {index}: the shard of {k!r} ({n!r}) lies outside {path!r}")
        out[k] = fn
    return out


def _load_tensors(path: str) -> Dict[str, torch.Tensor]:
    """The state dict a ``save_pretrained`` directory holds (safetensors, sharded (the index checked
    against the shards) or not, else ``pytorch_model.bin`` loaded with ``weights_only=True``)."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single) or os.path.isfile(index):
        from safetensors.torch import load_file

        weight_map = None if os.path.isfile(single) else _read_index(path, index)
        files = [single] if weight_map is None else sorted(set(weight_map.values()))
        state = {}
        for fn in files:
            try:
                part = load_file(fn)
            except Exception as e:  # a truncated or corrupt file: say which, never crash
                raise ValueError(f"load_pretrained: cannot read {fn}: {e}") from None
            if weight_map is not None:  # each tensor where the index says, and only there
                for k in part:
                    if weight_map.get(k) != fn:
                        raise ValueError(
                            f"load_pretrained: {fn} holds {k!r}, which {index} "
                            + ("does not list" if k not in weight_map else f"places in {weight_map[k]}")
                        )
            state.update(part)
        if weight_map is not None and weight_map.keys() != state.keys():
            lost = sorted(weight_map.keys() - state.keys())
            raise ValueError(f"load_pretrained: {index} lists {len(lost)} tensor(s) no shard holds: {lost[:4]}")
        return state
    binary = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(binary):
        try:
            return torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"load_pretrained: cannot read {binary}: {e}") from None
    raise FileNotFoundError(f"load_pretrained: {path!r} has no model.safetensors(.index.json) or pytorch_model.bin")


def load_pretrained(model: nn.Module, path: str, inplace: bool = False) -> nn.Module:
    """Load a Hugging Face checkpoint that a qatkit QAT or converted model saved
    (``save_pretrained``, or sentence-transformers' ``save``, which calls it).

    Args:
        model: the float model of the same architecture (e.g. ``AutoModel.from_pretrained`` of the
            original float checkpoint, or ``AutoModel.from_config``), or one already prepared with
            the same config.
        path: the directory ``save_pretrained`` wrote.
        inplace: modify ``model`` instead of a deep copy.

    Returns:
        The model at the saved stage (prepared with the saved :class:`QATConfig`, and converted if
        the checkpoint was), holding exactly the saved tensors (``load_state_dict(strict=True)``:
        any missing or unexpected key raises).

    Example:
        >>> qmodel.save_pretrained("out")                         # after prepare_qat / convert
        >>> back = qatkit.qat.load_pretrained(AutoModel.from_pretrained(float_dir), "out")
    """
    from .convert import QAT_TYPES, _Quantized, convert
    from .prepare import copy_model, prepare_qat

    info = read_quantization_config(path)
    config = QATConfig.from_dict(info["qat_config"])
    state = _load_tensors(path)
    if not inplace:
        model = copy_model(model)
    has_qat = any(isinstance(m, QAT_TYPES) for m in model.modules())
    has_converted = any(isinstance(m, _Quantized) for m in model.modules())
    if not has_qat and not has_converted:
        model = prepare_qat(model, config, inplace=True)
        has_qat = True
    if info["stage"] == "converted" and not has_converted:
        # the codes and qparams come from the checkpoint: no observation needed before convert
        model = convert(model, inplace=True, require_observed=False)
    elif info["stage"] == "qat" and has_converted:
        raise ValueError(f"load_pretrained: {path!r} holds a QAT model, but the model given is already converted")
    model.load_state_dict(state, strict=True)
    tag_pretrained_configs(model, info["stage"], config)
    return model
