"""Exported model files (issue 12; byte layouts in docs/format.md): one safetensors file holding
packed integer weights, their scales and zero points, everything else each layer's forward needs
(input quantizer state, bias, SmoothQuant scaling, BitLinear's normalization) and the float
tensors of the rest of the model, described by a versioned JSON header under the metadata key
``"qatkit"``. No pickle: loading reads tensors and JSON, never code.

    >>> qatkit.export(qat_or_converted_model, "model.qatkit.safetensors")
    >>> model = qatkit.load_into(float_model_of_the_same_architecture, "model.qatkit.safetensors")
    >>> model = qatkit.load("model.qatkit.safetensors")     # nn.Sequential trees of known modules

Loaded layers (:class:`PackedLinear`, :class:`PackedConv1d`, :class:`PackedConv2d`,
:class:`PackedEmbedding`) keep the packed bytes and compute exactly what ``convert``'s layers
compute (the codes are unpacked once, on load; the integer-kernel issue replaces that with
integer kernels).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import uuid
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from . import _json, ops
from .qat.config import QuantSpec, check_flags
from .qat.convert import QuantizedConv1d, QuantizedConv2d, QuantizedEmbedding, QuantizedLinear, _Quantized, convert
from .qat.quantizers import ActFakeQuantizer, tensor_version
from .qat.swap import pruning_hooks, replace_module, warn_hooks

__all__ = [
    "FORMAT_VERSION",
    "export",
    "load",
    "load_into",
    "read_header",
    "PackedLinear",
    "PackedConv1d",
    "PackedConv2d",
    "PackedEmbedding",
]

#: the file format's version (docs/format.md); readers refuse a newer one
FORMAT_VERSION = 1
META_KEY = "qatkit"

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def packing_for(spec: Optional[QuantSpec], base3: bool = False) -> Tuple[int, int, str]:
    """(bits, offset, packing) of a weight spec's codes in the file: integer codes stored as
    ``code - quant_min`` in the fewest bits holding the range, ternary codes as 2-bit 0 / 1 / 2
    (or base-3, five per byte), binary codes 1 bit each (1 = +1)."""
    if spec.kind == "binary":
        return 1, 0, "sign"
    if spec.kind == "ternary":
        return (2, 1, "base3") if base3 else (2, 1, "offset")
    width = spec.quant_max - spec.quant_min
    bits = max(1, math.ceil(math.log2(width + 1)))
    return bits, -spec.quant_min, "offset"


def _dtype_name(t: torch.dtype) -> str:
    return _DTYPE_NAMES[t]


def _small_int(t: torch.Tensor) -> torch.Tensor:
    """Integer zero points in the narrowest dtype that holds them (int8 for int4 / int8 codes)."""
    if t.numel() == 0 or (int(t.min()) >= -128 and int(t.max()) <= 127):
        return t.to(torch.int8)
    return t.to(torch.int32)


# ---------------------------------------------------------------- packed layers


class _Packed:
    """Mixin of the loaded layers: the packed bytes are the weight's state; the codes the
    converted forward reads are unpacked from them once (non-persistent)."""

    def _init_packed(self, info: dict, tensors: Dict[str, torch.Tensor]) -> None:
        w = info["weight"]
        spec = None if w["spec"] is None else QuantSpec(**w["spec"])
        self.weight_spec = spec
        self.weight_dtype = _DTYPES[w["dtype"]]
        self.weight_axis = w["axis"]
        self.group_size = w["group_size"]
        self.float_weight = spec is None
        self.packing = (w["bits"], w["offset"], w["packing"]) if spec is not None else None
        shape = tuple(w["shape"])
        if spec is None:
            self.register_buffer("weight_int", tensors["weight"])
            self.register_buffer("weight_packed", None)
        else:
            self.register_buffer("weight_packed", tensors["weight_packed"])
            self._unpack = (w["k"], _DTYPES[w["codes_dtype"]], shape)
            codes = self._unpacked()
            cmin, cmax = (int(v) for v in torch.aminmax(codes)) if codes.numel() else (0, 0)
            if codes.numel() and (cmin < spec.quant_min or cmax > spec.quant_max):
                # a stored value the width holds but the spec does not (a ternary 3, a narrow range's
                # -128): the kernels would compute with it (the C++ loader refuses it the same way)
                raise ValueError(f"weight codes must lie in [{spec.quant_min}, {spec.quant_max}] (the spec's range), "
                                 f"got [{cmin}, {cmax}]")
            self.register_buffer("weight_int", codes, persistent=False)
            self._int_version = tensor_version(self.weight_int)
        # float16 / bfloat16 scales (QuantSpec.scale_dtype) widen exactly to the float32 the ops take
        self.register_buffer("weight_scale", tensors.get("weight_scale", torch.ones(1)).float())
        zp = tensors.get("weight_zero_point")
        if zp is None:
            zp = torch.zeros(tensors["weight_scale"].shape if "weight_scale" in tensors else (1,), dtype=torch.int32)
        self.register_buffer("weight_zero_point", zp.to(torch.int32))
        bias = tensors.get("bias")
        if bias is not None:
            self.register_buffer("bias", bias)
        else:
            self.bias = None
        aq = info.get("input")
        if aq is not None:
            q = ActFakeQuantizer(QuantSpec(**aq["spec"]), aq["channels"])
            state = {k[len("input_fake_quant."):]: v for k, v in tensors.items() if k.startswith("input_fake_quant.")}
            # the spec is in the header; files C++'s qatkit::nn::save writes carry no _extra_state
            if not any(k.endswith("_extra_state") for k in state):
                state["_extra_state"] = q.get_extra_state()
            q.load_state_dict(state, strict=True)
            q.enable_observer(False)
            q.eval()
            aq = q
        self.input_fake_quant = aq

    def _unpacked(self) -> torch.Tensor:
        bits, offset, packing = self.packing
        k, dtype, shape = self._unpack
        #: the packed bytes' version the codes were unpacked from (_resync_packed)
        self._packed_version = tensor_version(self.weight_packed)
        return ops.unpack_weights(self.weight_packed, bits, k, offset, packing).to(dtype).reshape(shape)

    def _resync_packed(self) -> None:
        """The packed bytes written in place (a bit flip in ``weight_packed``): unpack the codes the
        forward reads again (integer.refresh_layer calls it; so do the float forward's weight, export and
        state_dict). Where both were written, the packed bytes win. Not while torch.compile traces
        (Dynamo cannot read a tensor's version; the graph reads the codes as the eager calls before
        tracing left them, as the integer kernels' plans do): a weight-only conv's float forward
        reaches here, and broke ``fullgraph=True`` with "tensor.is_inference() during tracing"."""
        if torch.compiler.is_compiling():
            return
        if self.packing is not None and tensor_version(self.weight_packed) != self.__dict__.get("_packed_version"):
            self._buffers["weight_int"] = self._unpacked().to(self.weight_int.device)
            self._int_version = tensor_version(self.weight_int)

    def _repack_codes(self) -> None:
        """The codes written in place (``weight_int``, which the forward computes with): pack them
        into ``weight_packed``, the persistent state, so state_dict / torch.save keep the edit."""
        self._resync_packed()
        if self.packing is not None and tensor_version(self.weight_int) != self.__dict__.get("_int_version"):
            bits, offset, packing = self.packing
            w = self.weight_int
            rows = w.shape[0] if w.dim() > 0 else 1
            self.weight_packed.copy_(ops.pack_weights(w.reshape(rows, -1), bits, offset, packing))
            self._packed_version, self._int_version = tensor_version(self.weight_packed), tensor_version(w)

    def __setattr__(self, name, value):
        # new packed bytes: the codes are unpacked from them again; new codes: packed again before
        # state_dict (the versions of a replacing tensor say nothing)
        if name == "weight_packed" and isinstance(value, torch.Tensor):
            self.__dict__["_packed_version"] = None
        elif name == "weight_int" and isinstance(value, torch.Tensor):
            self.__dict__["_int_version"] = None
        super().__setattr__(name, value)

    def _baseline_versions(self) -> None:
        if self.packing is not None:
            self._packed_version, self._int_version = tensor_version(self.weight_packed), tensor_version(self.weight_int)

    # a copy (deepcopy, pickle, torch.save of the module) and a move or cast (_apply) make new tensors
    # whose versions start again: the codes and the packed bytes agree first, and the new tensors'
    # versions are the baseline after
    def __getstate__(self):
        self._repack_codes()
        return super().__getstate__()

    def __setstate__(self, state):
        super().__setstate__(state)
        self._baseline_versions()

    def _apply(self, fn, recurse=True):
        self._repack_codes()
        out = super()._apply(fn, recurse)
        self._baseline_versions()
        return out

    def dequantized_weight(self) -> torch.Tensor:
        self._resync_packed()
        return super().dequantized_weight()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self._repack_codes()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.packing is not None:  # new packed bytes: the codes the forward reads follow them
            self._buffers["weight_int"] = self._unpacked().to(self.weight_int.device)
            self._int_version = tensor_version(self.weight_int)

    def extra_repr(self) -> str:
        if self.packing is None:
            return "weight=float"
        bits, _, packing = self.packing
        c = getattr(self, "output_clamp", None)  # a fused activation (qatkit.fuse_activations)
        act = "" if c is None else f", output_clamp={c}"
        return f"weight={self.weight_spec.describe()}, packed={tuple(self.weight_packed.shape)} ({bits} bit, {packing}){act}"


class PackedLinear(_Packed, QuantizedLinear):
    """A Linear layer loaded from an exported file (the forward of :class:`QuantizedLinear`)."""

    def __init__(self, info: dict, tensors: Dict[str, torch.Tensor]):
        nn.Module.__init__(self)
        p = info["params"]
        self.in_features, self.out_features = p["in_features"], p["out_features"]
        self.rms_norm, self.eps = p["rms_norm"], p["eps"]
        self._init_packed(info, tensors)
        self.register_buffer("smooth", tensors.get("smooth"))


class _PackedConv(_Packed):
    def __init__(self, info: dict, tensors: Dict[str, torch.Tensor]):
        nn.Module.__init__(self)
        p = info["params"]
        for k in ("in_channels", "out_channels", "groups", "padding_mode"):
            setattr(self, k, p[k])
        d = 1 if info["type"] == "conv1d" else 2  # (an int stands for every dim, as nn.ConvNd takes it)
        for k in ("kernel_size", "stride", "dilation"):
            setattr(self, k, tuple(p[k]) if isinstance(p[k], list) else (p[k],) * d)
        pad = p["padding"]
        self.padding = pad if isinstance(pad, str) else tuple(pad) if isinstance(pad, list) else (pad,) * d
        self._rpt = None if p["reversed_padding"] is None else tuple(p["reversed_padding"])
        self._init_packed(info, tensors)


class PackedConv1d(_PackedConv, QuantizedConv1d):
    """A Conv1d layer loaded from an exported file (the forward of :class:`QuantizedConv1d`)."""


class PackedConv2d(_PackedConv, QuantizedConv2d):
    """A Conv2d layer loaded from an exported file (the forward of :class:`QuantizedConv2d`)."""


class PackedEmbedding(_Packed, QuantizedEmbedding):
    """An Embedding loaded from an exported file (the forward of :class:`QuantizedEmbedding`)."""

    def __init__(self, info: dict, tensors: Dict[str, torch.Tensor]):
        nn.Module.__init__(self)
        p = info["params"]
        self.padding_idx, self.max_norm, self.norm_type = p["padding_idx"], p["max_norm"], p["norm_type"]
        self.scale_grad_by_freq, self.sparse = False, False
        self._init_packed(info, tensors)


_PACKED = {
    "linear": PackedLinear,
    "conv1d": PackedConv1d,
    "conv2d": PackedConv2d,
    "embedding": PackedEmbedding,
}


# ---------------------------------------------------------------- export


def _layer_type(mod: _Quantized) -> str:
    for name, cls in (
        ("linear", QuantizedLinear),
        ("conv2d", QuantizedConv2d),
        ("conv1d", QuantizedConv1d),
        ("embedding", QuantizedEmbedding),
    ):
        if isinstance(mod, cls):
            return name
    raise TypeError(f"export: no file form for {type(mod).__name__}")


def _layer_params(kind: str, mod: _Quantized) -> dict:
    if kind == "linear":
        return {
            "in_features": mod.in_features,
            "out_features": mod.out_features,
            "rms_norm": bool(mod.rms_norm),
            "eps": float(mod.eps),
        }
    if kind in ("conv1d", "conv2d"):
        pad = mod.padding if isinstance(mod.padding, str) else list(mod.padding)
        if mod.padding_mode != "zeros":  # (the loaders refuse a pair that disagrees: _check_params)
            want = reversed_padding(pad, list(mod.kernel_size), list(mod.dilation))
            if mod._rpt is None or list(mod._rpt) != want:
                raise ValueError(
                    f"export: {type(mod).__name__}(padding={pad}, padding_mode={mod.padding_mode!r}) pads by "
                    f"{mod._rpt} (nn.ConvNd's _reversed_padding_repeated_twice, set at construction), not the {want} "
                    "its padding gives: was .padding changed after the conv was built? Rebuild the conv (or set both)")
        return {
            "in_channels": mod.in_channels,
            "out_channels": mod.out_channels,
            "kernel_size": list(mod.kernel_size),
            "stride": list(mod.stride),
            "padding": pad,
            "dilation": list(mod.dilation),
            "groups": mod.groups,
            "padding_mode": mod.padding_mode,
            "reversed_padding": None if mod._rpt is None else list(mod._rpt),
        }
    return {"padding_idx": mod.padding_idx, "max_norm": mod.max_norm, "norm_type": float(mod.norm_type)}


def sync_loaded(model: nn.Module) -> None:
    """Loaded layers whose packed bytes were written in place unpack their codes again (what the
    exporters read: export, export_onnx, export_gguf)."""
    for m in model.modules():
        if isinstance(m, _Packed):
            m._resync_packed()


def _export_layer(name: str, mod: _Quantized, base3: bool) -> Tuple[dict, Dict[str, torch.Tensor]]:
    kind = _layer_type(mod)
    tensors: Dict[str, torch.Tensor] = {}
    if isinstance(mod, _Packed):  # a loaded layer whose packed bytes were written in place: its codes follow
        mod._resync_packed()
    codes = mod.weight_int
    spec = None if mod.float_weight else mod.weight_spec
    weight = {
        "spec": None if spec is None else dataclasses.asdict(spec),
        "dtype": _dtype_name(mod.weight_dtype),
        "shape": list(codes.shape),
        "axis": mod.weight_axis,
        "group_size": mod.group_size,
    }
    if spec is None:
        tensors["weight"] = codes.detach().contiguous().clone()
    else:
        bits, offset, packing = packing_for(spec, base3)
        rows = codes.shape[0] if codes.dim() > 0 else 1
        k = codes.numel() // max(rows, 1)
        tensors["weight_packed"] = ops.pack_weights(codes.reshape(rows, k), bits, offset, packing)
        # scales in the dtype the fake quant used (QuantSpec.scale_dtype: exact, the values are rounded to it)
        sdt = _DTYPES[spec.scale_dtype]
        tensors["weight_scale"] = mod.weight_scale.detach().to(sdt).contiguous().clone()
        zp = mod.weight_zero_point.detach()
        if bool((zp != 0).any()):
            tensors["weight_zero_point"] = _small_int(zp).contiguous().clone()
        weight.update(
            bits=bits,
            offset=offset,
            packing=packing,
            rows=rows,
            k=k,
            codes_dtype=_dtype_name(codes.dtype),
            scale_dtype=spec.scale_dtype,
            zero_point="weight_zero_point" in tensors,
        )
    if mod.bias is not None:
        tensors["bias"] = mod.bias.detach().contiguous().clone()
    smooth = getattr(mod, "smooth", None)
    if smooth is not None:
        tensors["smooth"] = smooth.detach().contiguous().clone()
    info = {"type": kind, "params": _layer_params(kind, mod), "weight": weight, "bias": mod.bias is not None}
    aq = mod.input_fake_quant
    if aq is not None:
        info["input"] = {"spec": dataclasses.asdict(aq.spec), "channels": aq.channels, "class": type(aq).__name__}
        for k, v in aq.state_dict().items():
            tensors[f"input_fake_quant.{k}"] = v.detach().contiguous().clone()
        if type(aq).__name__ == "AffineLearnedActQuantizer":
            # the step size the layer computes with (the op clamps it at float32's epsilon): SGD can
            # take a learned step size of a dead channel below zero, and the raw value made a file
            # qatkit.load refused ("the input's scale must be finite and positive")
            tensors["input_fake_quant.scale"] = aq.frozen_qparams()[0].contiguous()
    else:
        info["input"] = None
    return info, {f"{name}.{k}": v for k, v in tensors.items()}


#: parameterless modules a converted model may hold where its float architecture has another
#: module (BatchNorm folded into the conv before it -> Identity; PTQ's ReLU6 -> ReLU for CLE)
_SUBSTITUTES = {"Identity": nn.Identity, "ReLU": nn.ReLU}


def check_out_path(who: str, path) -> str:
    """``path`` as a str after the checks a writer needs: a str or os.PathLike (TypeError), whose
    directory exists (FileNotFoundError) and which is not a directory itself (IsADirectoryError),
    named with ``who`` — before any work, where the writers' own errors would come late or name
    their own argument ('filename')."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{who}: path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{who}: the directory of path {path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{who}: path {path!r} is a directory, not a file")
    return path


@contextlib.contextmanager
def replacing(path: str):
    """A temporary file beside ``path`` to write, moved over ``path`` only once the writer is done
    (``os.replace``: one step on POSIX): a failed or interrupted write (a full disk, an error, a
    kill) leaves the file that was there, not a truncated one, and no temporary behind. A symlink
    at ``path`` is written through (the file it points to is replaced)."""
    real = os.path.realpath(path)
    while True:  # (created 0666 less the umask, as open() would create the file itself)
        tmp = f"{real}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    mode = os.stat(tmp).st_mode & 0o777  # (a writer may recreate the file with a mode of its own)
    try:
        yield tmp
        if os.path.exists(real):  # keep the mode of the file replaced
            shutil.copymode(real, tmp)
        else:
            os.chmod(tmp, mode)
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def export(model: nn.Module, path: str, *, base3: bool = False) -> dict:
    """Write ``model`` (converted, or a QAT / PTQ model, which is converted first on a copy) to one
    safetensors file at ``path``: the quantized layers' weights packed (docs/format.md), their
    scales, zero points (omitted when all zero), input quantizer state, biases and SmoothQuant
    scaling; every other tensor of the model in its own dtype; the JSON header under the
    metadata key ``"qatkit"``.

    Args:
        model: the model to export.
        path: the file to write (replaced only once the new file is complete).
        base3: ternary weights at 1.6 bits (five per byte) instead of 2.

    Returns:
        The header written (a dict: format version, layers, float tensors, module changes and,
        for ``nn.Sequential`` trees of known modules, the structure :func:`load` rebuilds).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``path`` not a str or os.PathLike.
        FileNotFoundError / IsADirectoryError: ``path``'s directory does not exist / it is one.
        ValueError: the model holds no quantized layer.
    """
    from safetensors.torch import save_file

    from . import __version__
    from .qat.convert import QAT_TYPES
    from .qat.fuse import check_fused

    if not isinstance(model, nn.Module):
        raise TypeError(f"export: model must be an nn.Module, got {type(model).__name__}")
    path = check_out_path("export", path)
    check_flags("export", base3=base3)
    other = {".onnx": "qatkit.export_onnx(model, example_input, path)", ".gguf": "qatkit.export_gguf(model, path)"}
    ext = os.path.splitext(str(path))[1].lower()
    if ext in other:  # before: a safetensors file under that name, which onnxruntime / gguf readers refuse
        article = "an" if ext == ".onnx" else "a"
        warnings.warn(f"export: {str(path)!r} is named like {article} {ext[1:].upper()} file, but export writes qatkit's "
                      f"safetensors format (qatkit.load, qatkit::nn::load); for {ext[1:].upper()} use {other[ext]}",
                      UserWarning, stacklevel=2)
    from .qat.prepare import unwrap_model

    model = unwrap_model(model)  # (torch.compile's / DDP's wrapper: the model under its own names)
    warn_hooks(model, "export", "The file holds no hooks: qatkit.load rebuilds the model without them "
               "(qatkit.load_into keeps the hooks of the model it loads into)")
    if any(isinstance(m, QAT_TYPES) for m in model.modules()):
        model = convert(model)
    check_fused(model, "export")  # a fused activation the file would drop
    layers, tensors = {}, {}
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, _Quantized)}
    if not quantized:
        raise ValueError("export: the model holds no quantized layer (prepare_qat / ptq, then convert)")
    for name, mod in quantized.items():
        info, t = _export_layer(name, mod, base3)
        layers[name] = info
        tensors.update(t)
    _warn_narrow_dtype("export", quantized, stacklevel=3)  # (the caller of export)
    # a layer used at several places (one module under two names): stored once, under its first
    # name; the others are aliases (the structure points them at it, load_into replaces them all)
    names_of: Dict[int, List[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(m), []).append(n)
    aliases = {a: name for name, mod in quantized.items() for a in names_of[id(mod)][1:]}
    inside = tuple(n + "." for n in [*quantized, *aliases])
    float_keys = []
    for k, v in _effective_state(model).items():
        if k.startswith(inside):
            continue
        tensors[k] = v.detach().contiguous().clone()
        float_keys.append(k)
    changes = {
        n: type(m).__name__ for n, m in model.named_modules(remove_duplicate=False)
        if n and type(m).__name__ in _SUBSTITUTES and type(m) is _SUBSTITUTES[type(m).__name__]
    }
    structure, gap = _structure(model, quantized, aliases)
    header = {
        "format_version": FORMAT_VERSION,
        "qatkit_version": __version__,
        "layers": layers,
        "float_tensors": float_keys,
        "module_changes": changes,
        "structure": structure,
    }
    if gap is not None:
        header["structure_gap"] = gap  # what qatkit.load / qatkit::nn::load name when they refuse the file
    with replacing(path) as tmp:
        save_file(tensors, tmp, metadata={META_KEY: json.dumps(header)})
    return header


def _effective_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model.state_dict()`` with each tensor a float layer prunes with ``torch.nn.utils.prune``
    as the tensor it computes with (``name = name_orig * name_mask``, under its own name) instead of
    ``name_orig`` / ``name_mask``: the module ``qatkit.load`` builds is a plain one, as a quantized
    layer's codes hold the pruned weight. (Before, such a file loaded nowhere: "missing
    ['1.weight']".)"""
    swap: Dict[str, Optional[Tuple[str, torch.Tensor]]] = {}  # "*_orig": (name, computed); "*_mask": dropped
    for name, mod in model.named_modules(remove_duplicate=False):  # (a layer at two places: both keys)
        for tensor, (_, hook) in pruning_hooks(mod).items():
            key = f"{name}.{tensor}" if name else tensor
            with torch.no_grad():
                swap[key + "_orig"] = (key, hook.apply_mask(mod))
            swap[key + "_mask"] = None
    out = {}
    for k, v in model.state_dict().items():  # the computed tensor where its parameter was (state-dict order)
        if k not in swap:
            out[k] = v
        elif swap[k] is not None:
            out[swap[k][0]] = swap[k][1]
    return out


def _permanent_pruning(model: nn.Module, keys) -> None:
    """Make ``torch.nn.utils.prune`` permanent (``prune.remove``) on the model's float layers whose
    pruned tensors the file holds as plain tensors (:func:`_effective_state`): ``load_into`` a
    pruned float model then loads them by name."""
    from torch.nn.utils import prune

    for name, mod in model.named_modules(remove_duplicate=False):
        for tensor in list(pruning_hooks(mod)):
            key = f"{name}.{tensor}" if name else tensor
            if key in keys:
                prune.remove(mod, tensor)  # (a module at two places: removed at the first)


def _folded_biases(model: nn.Module, keys, changes) -> None:
    """A float conv or Linear that a BatchNorm was folded into (PTQ folds a BatchNorm into the conv
    before it whether or not that conv is quantized: the bitnet_b158 preset keeps the stem conv
    float) has a bias in the file where the float model's layer has none (``bias=False``): the layer
    gets a bias parameter, which the file's tensor then fills. Only where the file comes from a fold:
    some BatchNorm of the model is an ``nn.Identity`` in the file's model (its ``module_changes``;
    called before load_into applies them). Which conv a BatchNorm followed is the model's forward's
    business (PTQ traces it; a ResNet registers its stem's pool between them), so the layer is known
    by the file's tensors alone: a bias the file holds for a layer that has none."""
    folded = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and changes.get(n) == "Identity"
                 for n, m in model.named_modules())
    if not folded:
        return
    for name, mod in model.named_modules():
        pre = f"{name}." if name else ""
        if (type(mod) in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d) and mod.bias is None
                and f"{pre}bias" in keys and f"{pre}weight" in keys):
            w = mod.weight
            mod.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device),
                                    requires_grad=w.requires_grad)


# ---------------------------------------------------------------- structure (qatkit.load)

_LEAVES = {
    "ReLU": (nn.ReLU, ()),
    "ReLU6": (nn.ReLU6, ()),
    "LeakyReLU": (nn.LeakyReLU, ("negative_slope",)),
    "PReLU": (nn.PReLU, ("num_parameters",)),
    "ELU": (nn.ELU, ("alpha",)),
    "Hardtanh": (nn.Hardtanh, ("min_val", "max_val")),
    "Hardswish": (nn.Hardswish, ()),
    "Hardsigmoid": (nn.Hardsigmoid, ()),
    "GELU": (nn.GELU, ("approximate",)),
    "SiLU": (nn.SiLU, ()),
    "Mish": (nn.Mish, ()),
    "Tanh": (nn.Tanh, ()),
    "Sigmoid": (nn.Sigmoid, ()),
    "Softmax": (nn.Softmax, ("dim",)),
    "LogSoftmax": (nn.LogSoftmax, ("dim",)),
    "Identity": (nn.Identity, ()),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "Unflatten": (nn.Unflatten, ("dim", "unflattened_size")),
    "Dropout": (nn.Dropout, ("p",)),
    "MaxPool1d": (nn.MaxPool1d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    "MaxPool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    "AvgPool1d": (nn.AvgPool1d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")),
    "AvgPool2d": (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")),
    "AdaptiveAvgPool1d": (nn.AdaptiveAvgPool1d, ("output_size",)),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
    "BatchNorm1d": (nn.BatchNorm1d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "BatchNorm2d": (nn.BatchNorm2d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "LayerNorm": (nn.LayerNorm, ("normalized_shape", "eps", "elementwise_affine")),
    "Linear": (nn.Linear, ("in_features", "out_features")),
    "Conv1d": (nn.Conv1d, ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                           "padding_mode")),
    "Conv2d": (nn.Conv2d, ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                           "padding_mode")),
    "Embedding": (nn.Embedding, ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type")),
}

#: leaf arguments files written before 2026-12-05 lack (the module's default applies; docs/format.md)
_OPTIONAL_ARGS = {"AvgPool2d": ("divisor_override",), "Embedding": ("max_norm", "norm_type"), "LayerNorm": ("bias",)}
#: the bias flag the writer adds (LayerNorm's: optional, files before nn.LayerNorm(bias=False) lack it)
_BIAS_ARG = {"Linear": ("bias",), "Conv1d": ("bias",), "Conv2d": ("bias",)}

#: what a leaf would need that its structure entry cannot carry (load would rebuild another function)
_UNREBUILDABLE = {
    "MaxPool1d": lambda m: m.return_indices and "return_indices=True",
    "MaxPool2d": lambda m: m.return_indices and "return_indices=True",
    "Softmax": lambda m: m.dim is None and "dim=None (the implicit dim depends on the input rank)",
    "LogSoftmax": lambda m: m.dim is None and "dim=None (the implicit dim depends on the input rank)",
}


def _structure(model: nn.Module, quantized: Dict[str, nn.Module],
               aliases: Optional[Dict[str, str]] = None) -> Tuple[Optional[dict], Optional[str]]:
    """The module tree :func:`load` can rebuild, or None and why when the model is not an
    nn.Sequential tree of packed layers and known modules (custom forwards need :func:`load_into`):
    the first module load could not rebuild as it is, named."""
    from .qat.fuse import FusedActivation
    from .qat.prepare import _hooked_norm

    gap: List[str] = []

    def describe(name: str, m: nn.Module):
        where = f"module {name!r}" if name else "the model"
        if name in quantized:
            return {"type": "packed", "name": name}
        if aliases and name in aliases:  # the same layer again: load puts the same module there
            return {"type": "packed", "name": aliases[name]}
        if type(m) is FusedActivation:  # fused into the conv before it (whose layer is written without it)
            m = m.unfused()
        if type(m) is nn.Sequential:
            kids = []
            for n, c in m._modules.items():  # (named_children() would skip a module used twice)
                if c is None:
                    gap.append(f"module {(name + '.' + n) if name else n!r} is None")
                    return None
                d = describe(f"{name}.{n}" if name else n, c)
                if d is None:
                    return None
                kids.append([n, d])
            return {"type": "Sequential", "children": kids}
        entry = _LEAVES.get(type(m).__name__)
        if entry is None or type(m) is not entry[0]:
            gap.append(f"{where} is a {type(m).__name__}, which qatkit.load does not rebuild" + (
                " (a module with its own forward)" if list(m.children()) else ""))
            return None
        why = _UNREBUILDABLE.get(type(m).__name__, lambda m: None)(m)
        hooked = _hooked_norm(m)
        if hooked:
            why = f"torch.nn.utils.{hooked} (load_into a model built with it)"
        args = {}
        for a in entry[1]:
            v = getattr(m, a if a != "affine" or not isinstance(m, nn.LayerNorm) else "elementwise_affine")
            args[a] = list(v) if isinstance(v, tuple) else v
            if not why and not _arg_ok(a, args[a]) and not (a == "padding" and v in ("same", "valid")):
                why = f"{a}={v!r}"
        if why:
            gap.append(f"{where} is a {type(m).__name__} with {why}, which qatkit.load does not rebuild")
            return None
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) or (isinstance(m, nn.LayerNorm) and m.weight is not None):
            args["bias"] = m.bias is not None  # (LayerNorm(bias=False): its weight without a shift)
        return {"type": type(m).__name__, "args": args}

    tree = describe("", model)
    return tree, (None if tree is not None else gap[0] if gap else "the model is not an nn.Sequential tree")


_INT_OR_LIST = {"kernel_size", "stride", "padding", "dilation", "output_size", "unflattened_size", "normalized_shape"}
_INTS = {"start_dim", "end_dim", "dim", "num_features", "in_features", "out_features", "in_channels", "out_channels",
         "groups", "num_embeddings", "embedding_dim"}
_POSITIVE_INTS = {"num_parameters", "divisor_override"}  # divisor_override: None too
_FLOATS = {"p", "eps", "momentum", "max_norm", "norm_type"}  # momentum, max_norm: None too
_SIGNED_FLOATS = {"negative_slope", "alpha", "min_val", "max_val"}
_BOOLS = {"affine", "track_running_stats", "elementwise_affine", "ceil_mode", "count_include_pad", "bias"}
_STRS = {"approximate", "padding_mode"}


def _arg_ok(k: str, v) -> bool:
    """A structure leaf's constructor argument has the type and range its module takes."""

    def small(x, lo=-(2**31)):
        return isinstance(x, int) and not isinstance(x, bool) and lo <= x < 2**31

    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and abs(x) < 2**31

    if k in _INTS:
        return small(v)
    if k == "unflattened_size":  # one -1 (inferred) allowed, as nn.Unflatten takes it
        return isinstance(v, list) and 0 < len(v) <= 8 and all(small(x, -1) for x in v) and v.count(-1) <= 1
    if k in _INT_OR_LIST:
        return small(v, 0) or (isinstance(v, list) and 0 < len(v) <= 8 and all(small(x, 0) for x in v))
    if k in _POSITIVE_INTS:
        return (v is None and k == "divisor_override") or small(v, 1)
    if k in _FLOATS:
        return (v is None and k in ("momentum", "max_norm")) or (number(v) and v >= 0)
    if k in _SIGNED_FLOATS:
        return number(v)
    if k in _BOOLS:
        return isinstance(v, bool)
    if k in _STRS:
        return isinstance(v, str) and len(v) < 64
    if k == "padding_idx":
        return v is None or small(v)
    return False


def _build(desc: dict, layers: Dict[str, nn.Module]) -> nn.Module:
    t = desc.get("type") if isinstance(desc, dict) else None
    if t == "packed":
        return layers[desc["name"]]
    if t == "Sequential":
        seq = nn.Sequential()
        for n, d in desc["children"]:
            if not isinstance(n, str):  # (str() made a number a name; the C++ loader refuses it)
                raise ValueError(f"load: a Sequential child's name must be a string, got {n!r}")
            seq.add_module(n, _build(d, layers))
        return seq
    if t not in _LEAVES:
        raise ValueError(f"load: the file's structure names module type {t!r}, not one qatkit rebuilds")
    cls, names = _LEAVES[t]
    args = desc.get("args", {})
    if not isinstance(args, dict):
        raise ValueError(f"load: {t} arguments must be an object, got {args!r:.80}")
    # every argument the writer writes (a missing one took the module's default, which the file may
    # not have been written with; the C++ loader requires them too), but the ones older files lack
    missing = [k for k in names + _BIAS_ARG.get(t, ()) if k not in args and k not in _OPTIONAL_ARGS.get(t, ())]
    if missing:
        raise ValueError(f"load: {t} arguments {missing} are missing")
    args = dict(args)
    takes = set(names) | set(_BIAS_ARG.get(t, ())) | set(_OPTIONAL_ARGS.get(t, ()))
    if not set(args) <= takes:
        raise ValueError(f"load: unexpected arguments {sorted(set(args) - takes)} for {t}")
    for k, v in args.items():
        if not (_arg_ok(k, v) or (k == "padding" and t in ("Conv1d", "Conv2d") and v in ("same", "valid"))):
            raise ValueError(f"load: {t} argument {k}={v!r} has the wrong type or is out of range")
        if t in ("Conv1d", "Conv2d") and k in ("kernel_size", "stride", "dilation"):
            if min(v if isinstance(v, list) else [v]) < 1:  # the bounds of _check_params and the C++ loader
                raise ValueError(f"load: {t} argument {k}={v!r} must be >= 1")
        if isinstance(v, list):
            args[k] = tuple(v)
    # on the meta device: a leaf's tensors come from the file (_load_floats assigns them after
    # checking every name and shape), so a corrupt size in the header allocates nothing
    with torch.device("meta"):
        return cls(**args)


# ---------------------------------------------------------------- reading


def _check_table(path: str) -> None:
    """The safetensors header's JSON read strictly (_json.loads): safetensors' own reader (serde)
    keeps the last of two entries for one tensor name, where the C++ reader refuses the file.
    Called after safe_open took the file, so the size prefix is within the file and the header is
    UTF-8."""
    import struct

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        text = f.read(n)
    try:
        _json.loads(text.decode("utf-8"))
    except ValueError as e:
        raise ValueError(
            f"load: cannot read {path!r} as a safetensors file: its header is not valid JSON ({e})") from None


def read_header(path: str) -> dict:
    """The JSON header of an exported file, checked for what a reader needs (format version,
    layers, float tensors).

    Raises:
        TypeError: ``path`` is not a str or os.PathLike.
        ValueError: the file is not readable as safetensors, carries no qatkit header, or its
            header is malformed or from a newer format version.
    """
    from safetensors import safe_open

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load: path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise ValueError(f"load: {path!r} is not a file")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise ValueError(f"load: cannot read {path!r} as a safetensors file: {e}") from None
    _check_table(path)
    if META_KEY not in meta:
        raise ValueError(f"load: {path!r} has no qatkit header (not written by qatkit.export)")
    try:
        header = _json.loads(meta[META_KEY])
    except ValueError as e:  # (json.JSONDecodeError is one)
        raise ValueError(f"load: {path!r}: the qatkit header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"load: {path!r}: the qatkit header must be a JSON object")
    version = header.get("format_version")
    if not _is_int(version) or version < 1:  # (a bool is no version: True passed as 1)
        raise ValueError(f"load: {path!r}: format_version must be a positive int, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"load: {path!r} has format version {version}; this qatkit reads up to {FORMAT_VERSION} (upgrade qatkit)"
        )
    if not isinstance(header.get("layers"), dict) or not isinstance(header.get("float_tensors"), list):
        raise ValueError(f"load: {path!r}: the header needs 'layers' (object) and 'float_tensors' (list)")
    return header


def _tensors(path: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"load: cannot read the tensors of {path!r}: {e}") from None
    # a tensor at an offset that is no multiple of its element size (a writer that does not order the
    # data by dtype, as qatkit::nn::save did before 2026-12-08) comes back at a misaligned address,
    # which the kernels read as float* / int32_t*: copied to an aligned one
    return {k: v.clone() if v.element_size() > 1 and v.data_ptr() % v.element_size() else v
            for k, v in tensors.items()}


def _check_layer(path: str, name: str, info: dict, t: Dict[str, torch.Tensor]) -> None:
    """Shapes, dtypes and values of one layer's tensors against its header entry."""
    where = f"load: {path!r}, layer {name!r}"

    def need(cond, msg):
        if not cond:
            raise ValueError(f"{where}: {msg}")

    need(isinstance(info, dict) and info.get("type") in _PACKED, f"type must be one of {sorted(_PACKED)}")
    w = info.get("weight")
    need(isinstance(w, dict) and isinstance(w.get("shape"), list), "the weight entry needs a shape")
    shape = w["shape"]
    need(all(_is_int(d) and 0 <= d < 2**31 for d in shape) and len(shape) <= 5, f"bad weight shape {shape}")
    need(w.get("dtype") in ("float32", "float64", "float16", "bfloat16"), f"bad weight dtype {w.get('dtype')!r}")
    # the input quantizer's entry (null: none) and the layer's tensors: a tensor the header does not
    # describe was dropped without a word (an 'input' key lost to corruption left its quantizer's
    # tensors unread and the layer computing on float inputs); the C++ loader refuses the same
    need("input" in info, "missing key 'input'")
    aq = info["input"]
    need(aq is None or (isinstance(aq, dict) and isinstance(aq.get("spec"), dict)),
         f"input must be null or an object with a spec, got {aq!r:.60}")
    if aq is not None:
        ch = aq.get("channels")
        need(_is_int(ch) and 1 <= ch < 2**31, f"the input's channels must be a positive int, got {ch!r:.40}")
    need(isinstance(info.get("bias"), bool), f"the bias flag must be a bool, got {info.get('bias')!r:.40}")
    need(("bias" in t) == info["bias"], "bias presence does not match the header")
    takes = {"bias", "smooth"} | ({"weight"} if w.get("spec") is None else {"weight_packed", "weight_scale",
                                                                             "weight_zero_point"})
    extra = sorted(k for k in t if k not in takes and not (aq is not None and k.startswith("input_fake_quant.")))
    need(not extra, f"tensors {[f'{name}.{k}' for k in extra[:4]]} are not the layer's (the header does not describe them)")
    if w.get("spec") is None:
        need("weight" in t and list(t["weight"].shape) == shape, "the float weight is missing or has another shape")
        return
    try:
        spec = QuantSpec(**w["spec"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: bad weight spec ({e})") from None
    bits, offset, packing = w.get("bits"), w.get("offset"), w.get("packing")
    need(_is_int(bits) and _is_int(offset) and (bits, offset, packing) in (packing_for(spec), packing_for(spec, True)),
         f"packing {packing!r} with {bits} bit(s) and offset {offset} does not match the spec {spec.describe()!r}")
    rows, k = w.get("rows"), w.get("k")
    need(_is_int(rows) and _is_int(k) and rows * k == math.prod(shape) and (rows == shape[0] if shape else True),
         f"rows x k = {rows} x {k} does not match the weight shape {shape}")
    p = t.get("weight_packed")
    need(p is not None and p.dtype == torch.uint8 and p.dim() == 2, "weight_packed must be a 2-d uint8 tensor")
    row_bytes = (k + 4) // 5 if packing == "base3" else (2 * k if bits > 8 else (k * bits + 7) // 8)
    need(tuple(p.shape) == (rows, row_bytes), f"weight_packed must be [{rows}, {row_bytes}], got {list(p.shape)}")
    need(w.get("codes_dtype") in ("int8", "int16", "int32"), f"bad codes dtype {w.get('codes_dtype')!r}")
    info_c = torch.iinfo(_DTYPES[w["codes_dtype"]])
    need(info_c.min <= spec.quant_min and spec.quant_max <= info_c.max,
         f"codes dtype {w['codes_dtype']} does not hold the spec's range [{spec.quant_min}, {spec.quant_max}]")
    s = t.get("weight_scale")
    need(s is not None and s.dtype == _DTYPES[spec.scale_dtype],
         f"weight_scale must be a {spec.scale_dtype} tensor (the spec's scale_dtype)")
    # binary codes are never 0: an all-zero channel (pruned, dead) has scale 0 (convert.weight_codes)
    floor_ok = (s >= 0) if spec.kind == "binary" else (s > 0)
    need(bool(torch.isfinite(s).all()) and bool(floor_ok.all()),
         "weight_scale must be finite and " + ("non-negative" if spec.kind == "binary" else "positive"))
    gs, axis = w.get("group_size"), w.get("axis")
    # (checked whether or not the layout reads it, as the C++ loader does)
    need(axis is None or (_is_int(axis) and -len(shape) <= axis < len(shape)), f"bad axis {axis}")
    if gs is not None:
        need(_is_int(gs) and gs > 0 and k % gs == 0, f"group_size {gs} must divide k = {k}")
        need(s.numel() == rows * (k // gs), f"weight_scale must hold {rows * (k // gs)} values (one per group)")
    elif axis is not None:
        need(s.numel() == shape[axis], f"weight_scale must hold {shape[axis]} values (one per channel)")
    else:
        need(s.numel() == 1, "weight_scale must hold 1 value (per tensor)")
    z = t.get("weight_zero_point")
    zp_flag = w.get("zero_point")  # (absent or null: false, as in files before the flag)
    need(zp_flag is None or isinstance(zp_flag, bool), f"the weight's zero_point flag must be a bool, got {zp_flag!r:.40}")
    need(bool(zp_flag) == (z is not None), "weight_zero_point presence does not match the header")
    if z is not None:
        need(z.dtype in (torch.int8, torch.int32) and z.shape == s.shape, "weight_zero_point must match weight_scale")
        # (compared in int64: an int8 tensor against a Python int casts the int to int8, so a 10-bit
        # range's -512 wrapped to 0 and every negative zero point of a valid file was refused)
        zl = z.long()
        need(bool(((zl >= spec.quant_min) & (zl <= spec.quant_max)).all()), "weight_zero_point outside the code range")
    for key, v in t.items():  # the input quantizer's qparams: a kernel would refuse them only at the first call
        leaf = key.rsplit(".", 1)[-1]
        if not key.startswith("input_fake_quant.") or leaf not in ("scale", "zero_point") or not v.is_floating_point():
            continue
        if leaf == "scale":
            need(bool(torch.isfinite(v).all()) and bool((v >= torch.finfo(torch.float32).tiny).all()),
                 f"{key} (the input's scale) must be finite and positive (float32 normal)")
        else:
            need(bool(torch.isfinite(v).all()), f"{key} (the input's zero point) must be finite")
    _check_params(info, shape, need)
    sm = t.get("smooth")  # SmoothQuant / AWQ input scaling: the layer computes on x / smooth
    if sm is not None:
        need(info["type"] == "linear", "input scaling ('smooth') is a Linear layer's only")
        n_in = shape[1] if len(shape) == 2 else None
        need(sm.is_floating_point() and sm.dim() == 1 and sm.shape[0] == n_in,
             f"smooth must be a float tensor of shape [{n_in}] (in_features), got {sm.dtype} {list(sm.shape)}")
        need(bool(torch.isfinite(sm).all()) and bool((sm > 0).all()),
             "smooth must be finite and positive (a SmoothQuant / AWQ divisor)")


def _ints(v, n, lo, where, need):
    """v as n ints in [lo, 2**31) (an int broadcasts)."""
    vals = [v] * n if isinstance(v, int) and not isinstance(v, bool) else v
    need(isinstance(vals, list) and len(vals) == n and all(isinstance(x, int) and not isinstance(x, bool) and lo <= x < 2**31 for x in vals),
         f"{where} must be {n} int(s) >= {lo}, got {v!r}")
    return vals


def reversed_padding(padding, kernel_size, dilation) -> List[int]:
    """nn.ConvNd's _reversed_padding_repeated_twice for this padding: (left, right) per spatial dim,
    the last dim first; 'same' puts dilation * (k - 1) // 2 left and the rest right."""
    if padding == "valid":
        return [0] * (2 * len(kernel_size))
    out = []
    for i in reversed(range(len(kernel_size))):
        if padding == "same":
            total = dilation[i] * (kernel_size[i] - 1)
            out += [total // 2, total - total // 2]
        else:
            p = padding if isinstance(padding, int) else padding[i]
            out += [p, p]
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    """An int or float, not a bool (the C++ reader's as_number refuses true)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_params(info: dict, shape: list, need) -> None:
    """A layer's constructor parameters against its weight shape (a hostile header could
    describe a conv its weight cannot run)."""
    p = info.get("params")
    need(isinstance(p, dict), "params must be an object")
    kind = info["type"]
    if kind == "linear":
        need(_is_int(p.get("out_features")) and _is_int(p.get("in_features")),
             f"in/out features must be ints, got {p.get('in_features')!r:.20} / {p.get('out_features')!r:.20}")
        need(shape == [p.get("out_features"), p.get("in_features")], f"in/out features do not match the weight {shape}")
        eps = p.get("eps")
        need(isinstance(p.get("rms_norm"), bool) and (_is_int(eps) or isinstance(eps, float)) and math.isfinite(eps)
             and eps >= 0, "bad rms_norm / eps")
    elif kind in ("conv1d", "conv2d"):
        d = 1 if kind == "conv1d" else 2
        need(len(shape) == d + 2, f"a {kind} weight has {d + 2} dims, got {shape}")
        groups = p.get("groups")
        need(_is_int(groups) and groups >= 1, "groups must be a positive int")
        cin, cout = p.get("in_channels"), p.get("out_channels")
        need(_is_int(cin) and _is_int(cout) and cin % groups == 0 and cout % groups == 0,
             "in/out channels must be ints divisible by groups")
        need(shape[:2] == [cout, cin // groups], f"channels do not match the weight {shape}")
        need(_ints(p.get("kernel_size"), d, 1, "kernel_size", need) == shape[2:], "kernel_size does not match the weight")
        stride = _ints(p.get("stride"), d, 1, "stride", need)
        _ints(p.get("dilation"), d, 1, "dilation", need)
        pad = p.get("padding")
        if not isinstance(pad, str):
            _ints(pad, d, 0, "padding", need)
        else:  # (nn.ConvNd's strings; any other was taken, and the kernels padded by reversed_padding)
            need(pad in ("same", "valid"), f"padding: expected numbers, 'same' or 'valid', got {pad!r}")
            need(pad != "same" or all(v == 1 for v in stride), f"padding 'same' needs stride 1, got stride {stride}")
        need(p.get("padding_mode") in ("zeros", "reflect", "replicate", "circular"), "bad padding_mode")
        need("reversed_padding" in p, "missing key 'reversed_padding'")
        rp = p.get("reversed_padding")
        need(rp is None or (isinstance(rp, list) and len(rp) == 2 * d and all(_is_int(x) and 0 <= x < 2**31 for x in rp)),
             "bad reversed_padding")
        if p["padding_mode"] != "zeros":  # the layer pads by it; the C++ loader by what padding gives
            want = reversed_padding(pad, shape[2:], _ints(p.get("dilation"), d, 1, "dilation", need))
            need(rp == want, f"reversed_padding {rp} is not what padding {json.dumps(pad)} gives with padding_mode "
                             f"'{p['padding_mode']}' ({want})")
    else:
        need(len(shape) == 2, f"an embedding weight is 2-d, got {shape}")
        pad = p.get("padding_idx")
        need(pad is None or (_is_int(pad) and -shape[0] <= pad < shape[0]), "bad padding_idx")
        need(p.get("max_norm") is None or _is_number(p.get("max_norm")), "bad max_norm")
        need(_is_number(p.get("norm_type")), "bad norm_type")


#: what building modules from a malformed (hostile) header entry raises: reported as ValueError
_MALFORMED = (KeyError, TypeError, IndexError, AttributeError, RuntimeError, OverflowError, ZeroDivisionError,
              AssertionError)  # nn.Hardtanh asserts max_val > min_val


def _packed_layers(path: str, header: dict, tensors: Dict[str, torch.Tensor]) -> Dict[str, nn.Module]:
    out = {}
    for name, info in header["layers"].items():
        prefix = name + "."
        t = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            _check_layer(path, name, info, t)
            out[name] = _PACKED[info["type"]](info, t)
            out[name].qualified_name = name  # for messages (an op refusing an input names the layer)
            aq = getattr(out[name], "input_fake_quant", None)
            if aq is not None and not getattr(aq, "qualified_name", None):
                aq.qualified_name = f"{name}.input_fake_quant"
        except _MALFORMED as e:
            raise ValueError(f"load: {path!r}, layer {name!r}: malformed ({type(e).__name__}: {e})") from None
        except ValueError as e:  # a layer's own check (the weight codes' range): name the file and layer
            if str(e).startswith("load:"):
                raise
            raise ValueError(f"load: {path!r}, layer {name!r}: {e}") from None
    return out


def _warn_narrow_dtype(where: str, quantized: Dict[str, nn.Module], stacklevel: int = 3) -> None:
    """Quantized layers of a bfloat16 / float16 (or float64) model: the integer kernels take float32
    layers, so Python's loaded model runs them in float math in that dtype, and the C++ loader
    refuses the file. ``qatkit.load`` said so in ``compute_report`` only: a model QAT-trained in
    bfloat16, the usual dtype for language models, exported and loaded without an integer kernel
    and without a word. Its float32 copy (``model.float()``) held the same weight codes in a probe
    of 7 presets, except TWN's ternaries, whose thresholds move with the rounding."""
    odd = {}
    for name, mod in quantized.items():
        dt = getattr(mod, "weight_dtype", torch.float32)
        if dt != torch.float32 and not getattr(mod, "float_weight", False):
            odd.setdefault(str(dt).replace("torch.", ""), []).append(name or type(mod).__name__)
    if not odd:
        return
    what = "; ".join(f"{dt}: {', '.join(names[:6])}" + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                     for dt, names in odd.items())
    if where == "export":
        tail = ("qatkit.load will run them in float math in that dtype (the integer kernels take float32 layers) "
                "and the C++ loader refuses the file; export a float32 copy for the integer kernels and C++: "
                "qatkit.export(model.float(), path)")
    else:
        tail = ("they keep float math in that dtype (the integer kernels take float32 layers; compute_report); "
                "export a float32 copy of the model for the integer kernels: qatkit.export(model.float(), path)")
    warnings.warn(f"{where}: quantized layers compute in a dtype other than float32 ({what}): {tail}", UserWarning,
                  stacklevel=stacklevel)


def _set_compute(model: nn.Module, compute: str, where: str, fuse: bool) -> nn.Module:
    from .qat.fuse import fuse_activations
    from .qat.integer import set_compute

    if compute not in ("integer", "float"):
        raise ValueError(f"{where}: compute must be 'integer' or 'float', got {compute!r}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, _Quantized)}
    if layers:
        model.compute_report = set_compute(model, compute, warn=False, kernels_only=True)
        if compute == "integer":
            _warn_narrow_dtype(where, layers, stacklevel=4)  # (the caller of load / load_into)
            if fuse:  # the ReLUs / ReLU6s / Hardtanhs after convs into the convs' kernels
                model.fusion_report = fuse_activations(model)
    return model


def load(path: str, compute: str = "integer", fuse_activations: bool = True) -> nn.Module:
    """Rebuild the model an exported file describes: an ``nn.Sequential`` tree of packed layers
    and known modules (activations, pooling, Flatten, Dropout, BatchNorm, LayerNorm, and float
    Linear / Conv1d / Conv2d / Embedding layers left unquantized).

    Args:
        compute: ``"integer"`` (default): layers an integer kernel runs compute on it, bit for bit
            ``qatkit.convert(model, integer=True)`` (docs/integer.md); the others keep float math,
            bit for bit ``qatkit.convert(model)``, and ``model.compute_report`` lists them with the
            reason. ``"float"``: every layer computes what the QAT model computed.
        fuse_activations: with integer compute, each ``nn.ReLU``, ``nn.ReLU6`` or ``nn.Hardtanh``
            that follows a conv in an ``nn.Sequential`` runs in the conv's kernel
            (:func:`qatkit.fuse_activations`: the same values, one pass less);
            ``model.fusion_report`` lists the fused and skipped pairs. False keeps the modules as
            the file describes them.

    Raises:
        ValueError: a corrupt or foreign file, or one whose model is not such a tree (load it with
            :func:`load_into` into a model you build).
    """
    check_flags("load", fuse_activations=fuse_activations)
    header = read_header(path)
    if header.get("structure") is None:
        raise ValueError(
            f"load: {path!r} holds a model that is not an nn.Sequential tree of modules qatkit knows (a custom "
            f"forward, a Hugging Face model){_gap(header)}: build the float model and call qatkit.load_into(model, path)"
        )
    tensors = _tensors(path)
    layers = _packed_layers(path, header, tensors)
    try:
        model = _build(header["structure"], layers)
    except _MALFORMED as e:
        raise ValueError(f"load: {path!r}: malformed structure ({type(e).__name__}: {e})") from None
    # each layer sits at its own name (aliases elsewhere may point at it): one the structure leaves
    # out, or puts only under another name, has tensors no module takes (the C++ loader refuses it too)
    at = dict(model.named_modules(remove_duplicate=False))
    for name, layer in layers.items():
        if at.get(name) is not layer:
            raise ValueError(f"load: {path!r}: layer {name!r} is not in the structure at its own name")
    _load_floats(path, model, header, tensors)
    return _set_compute(model.eval(), compute, "load", fuse_activations)


def _gap(header: dict) -> str:
    """': <the first module load cannot rebuild>' from a file's header (written since 2026-12-05)."""
    gap = header.get("structure_gap")
    return f": {gap[:300]}" if isinstance(gap, str) and gap else ""


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it whose data starts on a 64-byte boundary (what torch's allocator
    gives every tensor it makes)."""
    return t if t.data_ptr() % 64 == 0 or t.numel() == 0 else t.clone(memory_format=torch.contiguous_format)


def _load_floats(path: str, model: nn.Module, header: dict, tensors: Dict[str, torch.Tensor]) -> None:
    names = header["float_tensors"]
    if not all(isinstance(k, str) for k in names):
        raise ValueError(f"load: {path!r}: float_tensors must be a list of tensor names")
    _permanent_pruning(model, set(names))
    modules = dict(model.named_modules())
    packed_ids = {id(modules[n]) for n in header["layers"] if n in modules}
    packed = tuple(n + "." for n, m in model.named_modules(remove_duplicate=False) if id(m) in packed_ids)
    want = {k for k in model.state_dict() if not k.startswith(packed)}
    have = set(header["float_tensors"])
    missing, extra = sorted(want - have), sorted(have - want)
    if missing or extra:
        raise ValueError(
            f"load: {path!r} does not fit the model: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {extra[:8]}{'...' if len(extra) > 8 else ''}"
        )
    absent = [k for k in have if k not in tensors]
    if absent:
        raise ValueError(f"load: {path!r}: the header lists float tensors the file lacks: {absent[:8]}")
    # assign: the tensors just read become the model's (no second copy of every float weight).
    # Matrices the file's layout leaves off a 64-byte boundary are copied to one first: MKL's sgemm
    # takes another path for a misaligned operand, and a float Linear then gives other bits than
    # the same layer in the converted model (seen at one row on Zen 4: 1 ulp). Vectors (biases,
    # norms: elementwise) and embedding tables (gathered rows) give the same bits anywhere.
    tables = {f"{n}.weight" if n else "weight" for n, m in model.named_modules(remove_duplicate=False)
              if isinstance(m, nn.Embedding)}
    gemm = {k for k in have if tensors[k].dim() >= 2 and k not in tables}
    try:
        model.load_state_dict({k: _aligned(tensors[k]) if k in gemm else tensors[k] for k in have}, strict=False,
                              assign=True)
    except RuntimeError as e:  # shapes that do not fit the modules
        raise ValueError(f"load: {path!r}: the float tensors do not fit the model ({e})") from None


def _split_attention(model: nn.Module, layers: Dict[str, nn.Module]) -> None:
    """A float ``nn.MultiheadAttention`` whose projections the file holds as layers (prepare_qat's
    QuantMultiheadAttention: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) becomes that module,
    its projections float until the packed layers replace them; the rest loads by name."""
    from .qat.config import LayerSpec
    from .qat.modules import QuantMultiheadAttention

    for name, m in list(model.named_modules()):
        if name and type(m) is nn.MultiheadAttention and any(
                f"{name}.{p}" in layers for p in ("q_proj", "k_proj", "v_proj", "out_proj")):
            replace_module(model, name, QuantMultiheadAttention.from_float(m, LayerSpec(None, None)))


def load_into(model: nn.Module, path: str, inplace: bool = False, compute: str = "integer",
              fuse_activations: bool = True) -> nn.Module:
    """Load an exported file into a model of the same architecture (a float model, e.g. a Hugging
    Face model built from its float checkpoint or config, or one already prepared / converted):
    every quantized layer the file holds replaces the module at its name with a packed layer,
    folded BatchNorms become Identity, and every other tensor loads by name. ``compute`` and
    ``fuse_activations`` as for :func:`load` (a model's own forward keeps its activations: only
    ``nn.Sequential`` children are fused).

    Raises:
        ValueError: a corrupt or foreign file, or one that does not fit the model (a layer name the
            model lacks, a shape that differs, tensors missing or left over), naming what differs.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_into: model must be an nn.Module, got {type(model).__name__}")
    check_flags("load_into", inplace=inplace, fuse_activations=fuse_activations)
    header = read_header(path)
    tensors = _tensors(path)
    layers = _packed_layers(path, header, tensors)
    if not inplace:
        from .qat.prepare import copy_model

        model = copy_model(model)
    _split_attention(model, layers)
    modules = dict(model.named_modules())
    for name, packed in layers.items():
        old = modules.get(name)
        if old is None:
            raise ValueError(f"load_into: {path!r} holds layer {name!r}, which the model does not have")
        w = getattr(old, "weight", None)
        if w is None:
            w = getattr(old, "weight_int", None)
        if w is None or tuple(w.shape) != tuple(packed.weight_int.shape):
            raise ValueError(
                f"load_into: layer {name!r}: the file's weight is {tuple(packed.weight_int.shape)}, the model's "
                f"{None if w is None else tuple(w.shape)}"
            )
    names_of: Dict[int, List[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(m), []).append(n)
    for name, packed in layers.items():
        for alias in names_of.get(id(modules.get(name)), [name]):  # a layer used at several places: each
            replace_module(model, alias, packed)
    changes = header.get("module_changes", {})
    if not isinstance(changes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in changes.items()):
        raise ValueError(f"load_into: {path!r}: module_changes must map module names to module type names")
    floats = header.get("float_tensors")
    if isinstance(floats, list) and all(isinstance(k, str) for k in floats):  # (_load_floats refuses other lists)
        _folded_biases(model, set(floats), changes)  # (before the changes: it looks for the folded BatchNorm)
    for name, kind in changes.items():
        if kind not in _SUBSTITUTES:
            raise ValueError(f"load_into: {path!r}: unknown module change {kind!r} at {name!r}")
        cur = dict(model.named_modules(remove_duplicate=False)).get(name)
        if cur is None:
            raise ValueError(f"load_into: {path!r} changes module {name!r}, which the model does not have")
        if type(cur) is not _SUBSTITUTES[kind]:
            if list(cur.parameters()) and kind != "Identity":
                raise ValueError(f"load_into: {name!r} is a {type(cur).__name__} with parameters; the file has {kind}")
            # a ReLU that replaced an in-place ReLU6 works in place too (the float model's own choice:
            # no output allocation and one pass over the feature map less)
            sub = (nn.ReLU(inplace=bool(getattr(cur, "inplace", False))) if kind == "ReLU"
                   else _SUBSTITUTES[kind]())
            replace_module(model, name, sub)
    _load_floats(path, model, header, tensors)
    return _set_compute(model.eval(), compute, "load_into", fuse_activations)
