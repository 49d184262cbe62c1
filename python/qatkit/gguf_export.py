"""GGUF export of quantized Linear weights (issue 12; docs/format.md "GGUF").

    >>> qatkit.export_gguf(model, "model.gguf")

llama.cpp's block formats store one float16 scale per block, so a layer exports exactly only
when its spec matches one (set ``QuantSpec.scale_dtype="float16"`` so QAT / PTQ compute with the
fp16 scales the file holds):

- ``Q8_0`` (blocks of 32: fp16 ``d``, 32 int8 codes; ``x = d * q``): signed symmetric int codes
  of 5..8 bits, per tensor, per channel, or per group of a multiple of 32;
- ``Q4_0`` (blocks of 32: fp16 ``d``, 16 bytes of nibbles; ``x = d * (q - 8)``, element ``j`` in
  the low nibble of byte ``j``, element ``j + 16`` in its high nibble): signed symmetric codes of
  2..4 bits, the same layouts;
- ``TQ2_0`` (blocks of 256: 64 bytes of 2-bit codes, then fp16 ``d``; ``x = d * (q - 1)``; byte
  ``m`` of each 32-byte half holds elements ``m, m + 32, m + 64, m + 96`` of its 128 at bits 0,
  2, 4, 6): ternary codes and binary codes (a subset), per tensor or per channel, with ``K`` a
  multiple of 256.

Anything else raises ValueError naming the layer and what it needs; nothing is re-quantized.
Biases and the model's float tensors are written as they are (F32 / F16 / BF16 / integer types).
GGUF holds weights: layers that quantize their inputs, normalize them (BitLinear) or scale them
(SmoothQuant) raise unless ``weights_only=True``, which warns and lists them in the report.
"""

from __future__ import annotations

import json
import warnings
from typing import Dict, List

import torch
from torch import nn

__all__ = ["export_gguf"]


def _need_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError as e:  # pragma: no cover - pinned in scripts/requirements.txt
        raise ImportError("qatkit.export_gguf needs the gguf package (pip install gguf==0.19.0)") from e
    import gguf

    return gguf


def _block_scales(mod, rows: int, k: int, block: int, where: str) -> torch.Tensor:
    """One scale per block of ``block`` inputs: [rows, k // block] float32."""
    scale = mod.weight_scale.detach().float()
    nb = k // block
    if mod.group_size is not None:
        g = mod.group_size
        if g % block:
            raise ValueError(f"export_gguf: layer '{where}': groups of {g} do not hold whole blocks of {block}")
        return scale.reshape(rows, k // g).repeat_interleave(g // block, dim=1)
    if scale.numel() == 1:
        return scale.reshape(1, 1).expand(rows, nb)
    if scale.numel() != rows:
        raise ValueError(f"export_gguf: layer '{where}': scales are neither per tensor, per channel nor per group")
    return scale.reshape(rows, 1).expand(rows, nb)


def _fp16_bytes(s: torch.Tensor) -> torch.Tensor:
    """float16 scales (exact: checked by the caller) as [..., 2] little-endian bytes."""
    return s.to(torch.float16).contiguous().view(torch.uint8).reshape(*s.shape, 2)


def _q8_0(codes: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    rows, k = codes.shape
    q = codes.to(torch.int8).reshape(rows, k // 32, 32).view(torch.uint8)
    return torch.cat([_fp16_bytes(d), q], dim=-1).reshape(rows, -1)


def _q4_0(codes: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    rows, k = codes.shape
    q = (codes.to(torch.int16) + 8).to(torch.uint8).reshape(rows, k // 32, 2, 16)
    nib = q[:, :, 0, :] | (q[:, :, 1, :] << 4)
    return torch.cat([_fp16_bytes(d), nib], dim=-1).reshape(rows, -1)


def _tq2_0(codes: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    rows, k = codes.shape
    q = (codes.to(torch.int16) + 1).to(torch.uint8).reshape(rows, k // 256, 2, 4, 32)
    packed = q[:, :, :, 0] | (q[:, :, :, 1] << 2) | (q[:, :, :, 2] << 4) | (q[:, :, :, 3] << 6)
    return torch.cat([packed.reshape(rows, k // 256, 64), _fp16_bytes(d)], dim=-1).reshape(rows, -1)


def _gguf_type(mod, where: str):
    """(GGUF type name, block size) for a converted Linear's weight, or ValueError saying why not."""
    spec = mod.weight_spec
    if spec.scale_dtype != "float16":
        raise ValueError(
            f"export_gguf: layer '{where}': GGUF stores float16 block scales; its spec has scale_dtype "
            f"{spec.scale_dtype!r} (prepare it with QuantSpec(scale_dtype='float16') so QAT / PTQ use the scales the "
            "file holds)"
        )
    if bool((mod.weight_zero_point != 0).any()):
        raise ValueError(f"export_gguf: layer '{where}': Q8_0 / Q4_0 / TQ2_0 are symmetric; the layer has zero points")
    if spec.kind in ("ternary", "binary"):
        return "TQ2_0", 256
    if not (spec.signed and spec.symmetric):
        raise ValueError(f"export_gguf: layer '{where}': GGUF's Q8_0 / Q4_0 need signed symmetric codes")
    if spec.quant_min >= -8 and spec.quant_max <= 7:
        return "Q4_0", 32
    if spec.quant_min >= -128 and spec.quant_max <= 127:
        return "Q8_0", 32
    raise ValueError(f"export_gguf: layer '{where}': {spec.bits}-bit codes have no GGUF block type here")


def export_gguf(model: nn.Module, path: str, *, weights_only: bool = False, arch: str = "qatkit") -> dict:
    """Write the quantized Linear weights of ``model`` (converted, or a QAT / PTQ model, converted
    first on a copy) to ``path`` as GGUF ``Q8_0`` / ``Q4_0`` / ``TQ2_0`` tensors named like the
    state dict (``"0.weight"``), with biases and the other float tensors alongside and a
    ``qatkit.layers`` metadata string (JSON: each layer's type and spec).

    Args:
        model: the model.
        path: the ``.gguf`` file to write (overwritten).
        weights_only: export layers whose forward also quantizes, normalizes or scales their
            inputs anyway (GGUF cannot describe that): warns and lists them in the report.
        arch: the ``general.architecture`` value.

    Returns:
        ``{"tensors": {name: type}, "dropped": [what weights_only left out]}``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``path`` not a str or os.PathLike.
        FileNotFoundError / IsADirectoryError: ``path``'s directory does not exist / it is one.
        ValueError: no quantized Linear layer; a quantized conv / embedding; a Linear whose spec
            no GGUF block type holds exactly (named, with what it needs).
    """
    from . import __version__
    from .qat.convert import QAT_TYPES, QuantizedLinear, _Quantized, convert

    gguf = _need_gguf()
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_gguf: model must be an nn.Module, got {type(model).__name__}")
    from .serialization import check_out_path, replacing

    path = check_out_path("export_gguf", path)
    from .qat.prepare import unwrap_model

    model = unwrap_model(model)  # (torch.compile's / DDP's wrapper: tensor names without its prefix)
    from .qat.swap import warn_hooks

    warn_hooks(model, "export_gguf", "A GGUF file holds tensors, not hooks")
    if any(isinstance(m, QAT_TYPES) for m in model.modules()):
        model = convert(model)
    from .serialization import sync_loaded

    sync_loaded(model)  # a loaded layer's packed bytes written in place: its codes follow
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, _Quantized)}
    if not quantized:
        raise ValueError("export_gguf: the model holds no quantized layer (prepare_qat / ptq, then convert)")
    plan: Dict[str, tuple] = {}
    dropped: List[str] = []
    for name, mod in quantized.items():
        if not isinstance(mod, QuantizedLinear):
            raise ValueError(f"export_gguf: layer '{name}' is a {type(mod).__name__}; GGUF export writes Linear layers")
        extras = []
        if mod.input_fake_quant is not None:
            extras.append(f"input quantizer ({mod.input_fake_quant.spec.describe()})")
        if mod.rms_norm:
            extras.append("BitLinear RMSNorm")
        if mod.smooth is not None:
            extras.append("SmoothQuant / AWQ input scaling")
        if extras:
            what = f"layer '{name}': {', '.join(extras)}"
            if not weights_only:
                raise ValueError(
                    f"export_gguf: {what} — GGUF holds weights only; pass weights_only=True to export the weights "
                    "without it"
                )
            dropped.append(what)
        if mod.float_weight:
            plan[name] = ("F32", None)
            continue
        k = mod.in_features
        kind, block = _gguf_type(mod, name)
        if k % block:
            raise ValueError(f"export_gguf: layer '{name}': {kind} needs in_features divisible by {block}, got {k}")
        plan[name] = (kind, block)
    if dropped:
        warnings.warn("export_gguf: weights only; left out: " + "; ".join(dropped), UserWarning, stacklevel=2)

    with replacing(path) as tmp:  # (a failed write leaves the file that was there)
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(type(model).__name__)
        writer.add_string("qatkit.version", __version__)
        layers_meta = {}
        types: Dict[str, str] = {}
        for name, mod in quantized.items():
            kind, block = plan[name]
            wname = f"{name}.weight"
            if kind == "F32":
                writer.add_tensor(wname, mod.weight_int.detach().float().contiguous().numpy())
            else:
                codes = mod.weight_int.detach().reshape(mod.out_features, mod.in_features)
                d = _block_scales(mod, mod.out_features, mod.in_features, block, name)
                if not torch.equal(d.half().float(), d):
                    raise ValueError(f"export_gguf: layer '{name}': scales not exactly representable in float16")
                raw = {"Q8_0": _q8_0, "Q4_0": _q4_0, "TQ2_0": _tq2_0}[kind](codes, d)
                # the byte shape [rows, bytes]: gguf derives the element shape from the block type
                writer.add_tensor(wname, raw.numpy(), raw_dtype=getattr(gguf.GGMLQuantizationType, kind))
            types[wname] = kind
            layers_meta[name] = {"type": kind, "spec": None if mod.float_weight else mod.weight_spec.describe()}
            if mod.bias is not None:
                writer.add_tensor(f"{name}.bias", mod.bias.detach().contiguous().float().numpy())
                types[f"{name}.bias"] = "F32"
        inside = tuple(n + "." for n in quantized)
        for key, t in model.state_dict().items():
            if key.startswith(inside):
                continue
            t = t.detach().contiguous()
            if t.dtype == torch.bfloat16:
                t = t.float()
            writer.add_tensor(key, t.numpy())
            types[key] = str(t.dtype).replace("torch.", "")
        writer.add_string("qatkit.layers", json.dumps(layers_meta))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"tensors": types, "dropped": dropped}
