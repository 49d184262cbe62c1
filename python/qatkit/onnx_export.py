"""ONNX export of quantized models as QuantizeLinear / DequantizeLinear graphs (issue 12;
docs/format.md "ONNX").

    >>> qatkit.export_onnx(model, example_input, "model.onnx")

What goes into the file:

- weights as integer initializers behind a ``DequantizeLinear``: int8 codes per channel (or per
  tensor); 4-bit codes as int4 / uint4 — per group as a blocked DequantizeLinear (opset 21) on the
  weight laid out ``[K, N]`` with ``axis=0``, the form onnxruntime fuses into ``MatMulNBits``;
  ternary and binary codes as int4 (opset 21), or as int2 with ``lowbit="int2"`` (opset 25);
  wider codes as int16. Scales float32, zero points only where non-zero. 8-bit per-channel / per-tensor
  codes whose magnitudes exceed 64 are stored as uint8 ``code + 128`` with zero point 128 (the same
  values; ``int8_weights="auto"``): onnxruntime's int8 kernels on CPUs without VNNI (AVX2, and
  AVX-512 before VNNI) multiply uint8 activations by int8 weights with ``vpmaddubsw``, whose int16
  pair sums saturate once two adjacent weights' magnitudes sum past 128 (on an AVX2-only AMD EPYC a
  W8A8 digits CNN fell to 98.1 % top-1 agreement, logits off by 5.3); its uint8 x uint8 kernels
  widen to int16 first and are exact. docs/format.md "ONNX".
- statically quantized inputs as a QuantizeLinear / DequantizeLinear pair (uint8 / int8 / uint4 /
  int4 / 16-bit by the code range, per tensor or per channel), with a float ``Clip`` when the
  spec's range is narrower than the type's; dynamic per-token / per-tensor inputs and binary
  inputs as the float arithmetic qatkit's ops do (``ReduceMax(|x|)``, ``Reciprocal``, ``Round``,
  ``Clip``), since ONNX's DynamicQuantizeLinear is uint8 per tensor only.
- the rest (ReLU, ReLU6, LeakyReLU, PReLU, ELU, Hardtanh, Hardswish, Hardsigmoid, GELU, SiLU, Mish,
  Softmax, pooling, BatchNorm, LayerNorm, Flatten, float Linear / Conv / ...) as the matching ONNX
  operators.

It covers ``nn.Sequential`` trees of converted layers and the modules :func:`qatkit.load`
rebuilds (a model with a custom forward raises ValueError naming it; the repo's digits models
export through ``as_sequential()``). ONNX divides by the scale where qatkit multiplies by
``1 / s``, so a value exactly between two codes may round differently: outputs agree with
qatkit's within a bound, not bit for bit (tests/python/test_onnx_export.py measures it).
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["export_onnx"]


def _need_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError as e:  # pragma: no cover - the package is in scripts/requirements.txt
        raise ImportError("qatkit.export_onnx needs the onnx package (pip install onnx==1.23.2)") from e
    import onnx

    return onnx


class _Graph:
    """Nodes, initializers and fresh names of the graph under construction."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.h = onnx.helper
        self.T = onnx.TensorProto
        self.nodes: List = []
        self.inits: List = []
        self.n = 0
        self.max_opset = 13
        self.layers: Dict[str, dict] = {}
        self.int8_weights = "auto"

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def node(self, op: str, inputs: List[str], base: str, opset: int = 13, domain: str = "", **attrs) -> str:
        out = self.name(base)
        self.nodes.append(self.h.make_node(op, inputs, [out], name=out + "_node", domain=domain, **attrs))
        self.max_opset = max(self.max_opset, opset)
        return out

    def const(self, t: torch.Tensor, base: str) -> str:
        """A float32 / int64 initializer from a tensor."""
        name = self.name(base)
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.int64:
            self.inits.append(self.onnx.numpy_helper.from_array(t.numpy(), name))
        else:
            self.inits.append(self.onnx.numpy_helper.from_array(t.to(torch.float32).numpy(), name))
        return name

    def ints(self, vals, base: str) -> str:
        return self.const(torch.tensor(list(vals), dtype=torch.int64), base)

    def codes(self, q: torch.Tensor, base: str, dtype: int) -> str:
        """An integer initializer of ONNX type ``dtype`` (int2 / int4 / uint4 / int8 / uint8 /
        int16 / uint16 / int32) holding the integer tensor ``q``."""
        name = self.name(base)
        T = self.T
        q = q.detach().cpu().contiguous().to(torch.int64)
        dims = list(q.shape)
        flat = q.reshape(-1)
        if dtype in (T.INT4, T.UINT4, T.INT2):
            per = 2 if dtype != T.INT2 else 4
            bits = 8 // per
            mask = (1 << bits) - 1
            n = flat.numel()
            pad = (-n) % per
            v = torch.cat([flat, flat.new_zeros(pad)]) & mask  # two's complement of signed codes
            v = v.reshape(-1, per)
            packed = torch.zeros(v.shape[0], dtype=torch.int64)
            for j in range(per):  # element 0 in the lowest bits (the ONNX packing)
                packed |= v[:, j] << (bits * j)
            raw = packed.to(torch.uint8).numpy().tobytes()
            self.inits.append(self.h.make_tensor(name, dtype, dims, raw, raw=True))
            if dtype == T.INT2:
                self.max_opset = max(self.max_opset, 25)
            else:
                self.max_opset = max(self.max_opset, 21)
        else:
            np_dtype = {T.INT8: torch.int8, T.UINT8: torch.uint8, T.INT16: torch.int16, T.UINT16: torch.uint16,
                        T.INT32: torch.int32}[dtype]
            arr = flat.to(np_dtype).reshape(dims).numpy() if np_dtype != torch.uint16 else None
            if arr is None:
                import numpy as np

                arr = flat.numpy().astype(np.uint16).reshape(dims)
            self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
            if dtype in (T.INT16, T.UINT16):
                self.max_opset = max(self.max_opset, 21)
        return name


def _int_type(T, lo: int, hi: int, lowbit: str = "int4") -> Tuple[int, int, int]:
    """(ONNX type, type min, type max) of the narrowest integer type holding ``[lo, hi]``."""
    options = []
    if lowbit == "int2":
        options.append((T.INT2, -2, 1))
    options += [(T.INT4, -8, 7), (T.UINT4, 0, 15), (T.INT8, -128, 127), (T.UINT8, 0, 255),
                (T.INT16, -32768, 32767), (T.UINT16, 0, 65535)]
    for t, a, b in options:
        if a <= lo and hi <= b:
            return t, a, b
    raise ValueError(f"export_onnx: integer codes in [{lo}, {hi}] fit no ONNX integer type up to 16 bits")


def _type_name(g: _Graph, t: int) -> str:
    return g.onnx.helper.tensor_dtype_to_string(t).replace("TensorProto.", "").lower()


# ---------------------------------------------------------------- quantized layers


def _weight(g: _Graph, mod, where: str, lowbit: str, kind: str) -> str:
    """The layer's float weight as ONNX computes it: a DequantizeLinear of the integer codes (Linear:
    laid out ``[K, N]`` for MatMul; conv: the conv weight's shape; embedding: ``[num, dim]``)."""
    T = g.T
    if mod.float_weight:
        w = mod.weight_int.detach().float()
        return g.const(w.t() if kind == "linear" else w, where + ".weight"), {"codes": "float32"}
    codes, scale, zp = mod.weight_int, mod.weight_scale.detach().float(), mod.weight_zero_point.detach()
    if mod.weight_scale.dtype != torch.float32:
        raise ValueError(f"export_onnx: {where}: scales of dtype {mod.weight_scale.dtype} (ONNX scales here are float32)")
    spec = mod.weight_spec
    if spec.kind in ("ternary", "binary"):
        lo, hi = -1, 1
        lb = lowbit
    else:
        lo, hi = spec.quant_min, spec.quant_max
        lb = "int4"
    has_zp = bool((zp != 0).any())
    zlo, zhi = (int(zp.min()), int(zp.max())) if has_zp else (lo, hi)
    qtype, _, _ = _int_type(T, min(lo, zlo), max(hi, zhi), lb)
    shape = list(codes.shape)
    info = {"codes": _type_name(g, qtype)}
    if qtype == T.INT8 and mod.group_size is None and kind != "embedding" and g.int8_weights != "int8":
        # uint8 code + 128 with zero point + 128 (the same values) where onnxruntime's int8 kernels
        # could saturate without VNNI: they multiply the stored codes, and two adjacent ones whose
        # magnitudes sum past 128 can overflow an int16 pair sum (module docstring)
        amax = int(codes.to(torch.int64).abs().max()) if codes.numel() else 0
        if g.int8_weights == "uint8" or amax > 64:
            codes = codes.to(torch.int64) + 128
            zp = zp.to(torch.int64) + 128
            has_zp = True
            qtype = T.UINT8
            info = {"codes": "uint8", "stored_as": "int8 code + 128, zero point + 128"}
    rows = shape[0]
    k = codes.numel() // max(rows, 1)
    if mod.group_size is not None:
        gs = mod.group_size
        c2 = codes.reshape(rows, k)
        s2 = scale.reshape(rows, k // gs)
        z2 = zp.reshape(rows, k // gs)
        if kind == "linear":  # [K, N], blocks along K (axis 0): onnxruntime's MatMulNBits form
            c2, s2, z2, axis = c2.t(), s2.t(), z2.t(), 0
        else:
            axis = 1
        ins = [g.codes(c2, where + ".weight_q", qtype), g.const(s2, where + ".weight_scale")]
        if has_zp:
            ins.append(g.codes(z2, where + ".weight_zp", qtype))
        w = g.node("DequantizeLinear", ins, where + ".weight", opset=21, axis=axis, block_size=gs)
        info.update(granularity="per_group", block_size=gs)
        if kind != "linear":
            w = g.node("Reshape", [w, g.ints(shape, where + ".wshape")], where + ".weight")
        return w, info
    per_channel = scale.numel() > 1
    if kind == "linear":
        c = codes.t()
        axis = 1
    else:
        c = codes
        axis = 0 if mod.weight_axis is None else mod.weight_axis
    ins = [g.codes(c, where + ".weight_q", qtype), g.const(scale.reshape(-1) if per_channel else scale.reshape(()), where + ".weight_scale")]
    if has_zp:
        ins.append(g.codes(zp.reshape(-1) if per_channel else zp.reshape(()), where + ".weight_zp", qtype))
    attrs = {"axis": axis} if per_channel else {}
    w = g.node("DequantizeLinear", ins, where + ".weight", **attrs)
    info.update(granularity="per_channel" if per_channel else "per_tensor")
    return w, info


def _input_quant(g: _Graph, aq, x: str, rank: int, where: str) -> Tuple[str, str]:
    """The layer's input quantizer as ONNX nodes; returns (output, description)."""
    from .qat.quantizers import (AffineDynamicActQuantizer, AffineLearnedActQuantizer, AffineStaticActQuantizer,
                                 BinaryActQuantizer)

    T = g.T
    s = aq.spec
    if isinstance(aq, (AffineStaticActQuantizer, AffineLearnedActQuantizer)):
        scale, zp = aq.frozen_qparams()
        scale = scale.detach().float().reshape(-1)
        zp = zp.detach().reshape(-1)
        if isinstance(aq, AffineLearnedActQuantizer):
            scale = scale.clamp(min=torch.finfo(torch.float32).eps)
            zp = zp.round().clamp(s.quant_min, s.quant_max)
        zp = zp.to(torch.int64)
        if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            raise ValueError(f"export_onnx: {where}: the input quantizer's scale is not finite and positive")
        # 8 or 16-bit activation types, narrower ranges clamped after the DequantizeLinear:
        # onnxruntime 1.32 moves a 4-bit QuantizeLinear past MaxPool, which then refuses int4
        # (unsigned codes take an unsigned type: uint16 codes fit no signed one)
        if s.quant_min >= 0:
            qtype, tmin, tmax = _int_type(T, 0, max(s.quant_max, 16))
        else:
            qtype, tmin, tmax = _int_type(T, min(s.quant_min, -9), max(s.quant_max, 16))
        per_channel = scale.numel() > 1
        attrs = {"axis": aq.axis % rank} if per_channel else {}
        sc = g.const(scale if per_channel else scale.reshape(()), where + ".input_scale")
        z = g.codes(zp if per_channel else zp.reshape(()), where + ".input_zp", qtype)
        q = g.node("QuantizeLinear", [x, sc, z], where + ".input_q", **attrs)
        y = g.node("DequantizeLinear", [q, sc, z], where + ".input_dq", **attrs)
        if (s.quant_min, s.quant_max) != (tmin, tmax):
            # the spec's range is narrower than the type's: clamp the dequantized values to it
            # ((q - z) * s at the range ends: the same float products DequantizeLinear forms)
            lo = (torch.tensor(float(s.quant_min)) - zp.float()) * scale
            hi = (torch.tensor(float(s.quant_max)) - zp.float()) * scale
            if per_channel:
                shape = [1] * rank
                shape[aq.axis % rank] = -1
                lo, hi = lo.reshape(shape), hi.reshape(shape)
                y = g.node("Max", [y, g.const(lo, where + ".input_lo")], where + ".input_clip")
                y = g.node("Min", [y, g.const(hi, where + ".input_hi")], where + ".input_clip")
            else:
                y = g.node("Clip", [y, g.const(lo.reshape(()), where + ".input_lo"), g.const(hi.reshape(()), where + ".input_hi")],
                           where + ".input_clip")
        name = _type_name(g, qtype)
        return y, f"QuantizeLinear/DequantizeLinear {name} {'per channel' if per_channel else 'per tensor'}"
    if isinstance(aq, AffineDynamicActQuantizer):
        # s = max(absmax, 1e-5) / qmax; y = clamp(round(x * (1 / s)), -qmax - 1, qmax) * s (ops.quantize_per_token)
        per_token = s.granularity == "per_token"
        a = g.node("Abs", [x], where + ".abs")
        if per_token:
            m = g.node("ReduceMax", [a, g.ints([-1], where + ".axes")], where + ".absmax", opset=18, keepdims=1)
        else:
            m = g.node("ReduceMax", [a], where + ".absmax", opset=18, keepdims=1)
        m = g.node("Max", [m, g.const(torch.tensor(1e-5), where + ".eps")], where + ".absmax")
        sc = g.node("Div", [m, g.const(torch.tensor(float(s.quant_max)), where + ".qmax")], where + ".scale")
        inv = g.node("Reciprocal", [sc], where + ".inv_scale")
        r = g.node("Round", [g.node("Mul", [x, inv], where + ".scaled")], where + ".round")
        r = g.node("Clip", [r, g.const(torch.tensor(float(-s.quant_max - 1)), where + ".lo"),
                            g.const(torch.tensor(float(s.quant_max)), where + ".hi")], where + ".clip")
        return g.node("Mul", [r, sc], where + ".input_dq"), f"dynamic absmax int{s.bits} {'per token' if per_token else 'per tensor'} (float ops)"
    if isinstance(aq, BinaryActQuantizer):
        # sign(x - center) * alpha, per tensor or per channel along axis (ops.binarize)
        if s.stochastic:
            raise ValueError(f"export_onnx: {where}: stochastic binary activations have no inference form")
        axes = list(range(rank)) if aq.axis is None else [d for d in range(rank) if d != aq.axis % rank]
        ax = g.ints(axes, where + ".axes")
        method = s.method
        if method == "none":
            alpha, center = g.const(torch.tensor(1.0), where + ".alpha"), None
        else:
            alpha = g.node("ReduceMean", [g.node("Abs", [x], where + ".abs"), ax], where + ".alpha", opset=18, keepdims=1)
            center = g.node("ReduceMean", [x, ax], where + ".center", opset=18, keepdims=1) if method == "bitnet" else None
        v = x if center is None else g.node("Sub", [x, center], where + ".centered")
        zero = g.const(torch.tensor(0.0), where + ".zero")
        # sign(0): -1 for 'bitnet' (BitNet's Sign), +1 otherwise
        cond = g.node("Greater" if method == "bitnet" else "GreaterOrEqual", [v, zero], where + ".positive", opset=16)
        neg = g.node("Neg", [alpha], where + ".neg_alpha")
        return g.node("Where", [cond, alpha, neg], where + ".input_bin", opset=16), f"binary ({method}, float ops)"
    raise ValueError(f"export_onnx: {where}: no ONNX form for the input quantizer {type(aq).__name__}")


def _conv_pads(mod, nd: int, in_shape) -> List[int]:
    pad = mod.padding
    if isinstance(pad, str):
        if pad == "valid":
            return [0] * (2 * nd)
        # 'same' (stride 1): total d * (k - 1), the extra one on the right as torch does
        tot = [mod.dilation[i] * (mod.kernel_size[i] - 1) for i in range(nd)]
        return [t // 2 for t in tot] + [t - t // 2 for t in tot]
    return list(pad) + list(pad)


def _quantized(g: _Graph, mod, x: str, in_shape, where: str, lowbit: str) -> str:
    from .qat.convert import QuantizedConv1d, QuantizedConv2d, QuantizedEmbedding, QuantizedLinear

    rank = len(in_shape)
    info: Dict[str, object] = {}
    if isinstance(mod, QuantizedEmbedding):
        if mod.max_norm is not None:
            raise ValueError(f"export_onnx: {where}: Embedding max_norm renormalizes rows at run time; no ONNX form")
        w, winfo = _weight(g, mod, where, lowbit, "embedding")
        info.update(type="Gather", weight=winfo)
        g.layers[where] = info
        return g.node("Gather", [w, x], where + ".out", axis=0)
    kind = "linear" if isinstance(mod, QuantizedLinear) else "conv"
    if kind == "linear" and mod.rms_norm:
        # F.rms_norm: x * rsqrt(mean(x^2) + eps)
        ms = g.node("ReduceMean", [g.node("Mul", [x, x], where + ".sq"), g.ints([-1], where + ".axes")],
                    where + ".ms", opset=18, keepdims=1)
        r = g.node("Sqrt", [g.node("Add", [ms, g.const(torch.tensor(float(mod.eps)), where + ".eps")], where + ".ms_eps")],
                   where + ".rms")
        x = g.node("Div", [x, r], where + ".normed")
        info["rms_norm"] = True
    if kind == "linear" and mod.smooth is not None:
        x = g.node("Div", [x, g.const(mod.smooth.detach().float(), where + ".smooth")], where + ".smoothed")
        info["smooth"] = True
    if mod.input_fake_quant is not None and mod.input_fake_quant.fq_enabled:
        x, desc = _input_quant(g, mod.input_fake_quant, x, rank, where)
        info["input"] = desc
    else:
        info["input"] = "float"
    w, winfo = _weight(g, mod, where, lowbit, kind)
    info["weight"] = winfo
    if kind == "linear" and winfo["codes"] == "int2" and info["input"] == "float":
        warnings.warn(
            f"export_onnx: {where}: int2 weights with float inputs: onnxruntime 1.32's extended graph optimizations "
            "fuse this DequantizeLinear + MatMul into MatMulNBits and compute it wrong (its basic level is right); "
            "lowbit='int4' avoids that",
            UserWarning,
            stacklevel=4,
        )
    if kind == "linear":
        y = g.node("MatMul", [x, w], where + ".matmul")
        if mod.bias is not None:
            if info["input"] == "float" and not mod.float_weight:
                # y - (-b) == y + b exactly; onnxruntime's basic-level MatMul + Add -> Gemm fusion
                # would otherwise take the MatMul before its extended-level DequantizeLinear +
                # MatMul -> MatMulNBits fusion sees it
                y = g.node("Sub", [y, g.const(-mod.bias.detach().float(), where + ".neg_bias")], where + ".out")
            else:
                y = g.node("Add", [y, _bias(g, mod, where)], where + ".out")
        info["type"] = "MatMul"
        g.layers[where] = info
        return y
    nd = 1 if isinstance(mod, QuantizedConv1d) else 2
    assert isinstance(mod, (QuantizedConv1d, QuantizedConv2d))
    return _conv(g, mod, x, w, in_shape, where, nd, info)


def _int32_bias(mod) -> bool:
    from .qat import integer
    from .qat.convert import _Quantized

    if not isinstance(mod, _Quantized):  # float convs: a stand-in object
        return False
    return integer.integer_form(mod)[0] == "static" and integer.int32_bias(mod)


def _float_bias_after(mod) -> bool:
    """A quantized-input layer whose integer form adds a float bias after the requantization: the
    bias goes into a separate Add, since onnxruntime would otherwise re-round a Conv's float bias
    to its own int32 grid at S_x * S_w (docs/integer.md)."""
    from .qat.convert import _Quantized

    aq = getattr(mod, "input_fake_quant", None)
    return (isinstance(mod, _Quantized) and mod.bias is not None and aq is not None and aq.fq_enabled
            and not _int32_bias(mod))


def _bias(g: _Graph, mod, where: str) -> str:
    """The layer's bias as ONNX adds it. A W8A8 layer (qatkit.qat.integer's "static" form with an
    int32 bias) adds the int32 bias at S_x * S_w that qatkit's integer kernels add: written as a
    DequantizeLinear of the int32 codes (the QDQ convention), so onnxruntime uses exactly these
    codes wherever it fuses the layer (QLinearConv) and their dequantized value where it does not.
    Other layers add their float bias."""
    from .qat import integer

    if not _int32_bias(mod):
        return g.const(mod.bias.detach().float(), where + ".bias")
    m = integer._multiplier(mod)
    q = integer._bias_q(mod).to(torch.int32)
    attrs = {"axis": 0} if m.numel() > 1 else {}
    ins = [g.codes(q, where + ".bias_q", g.T.INT32), g.const(m if m.numel() > 1 else m.reshape(()), where + ".bias_scale")]
    return g.node("DequantizeLinear", ins, where + ".bias", **attrs)


_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _conv(g: _Graph, mod, x: str, w: str, in_shape, where: str, nd: int, info: dict) -> str:
    if mod.padding_mode != "zeros":
        rpt = list(mod._rpt)  # torch's F.pad order: last dim first, (left, right) pairs
        begins = [rpt[2 * (nd - 1 - i)] for i in range(nd)]
        ends = [rpt[2 * (nd - 1 - i) + 1] for i in range(nd)]
        pads = g.ints([0, 0] + begins + [0, 0] + ends, where + ".pads")
        x = g.node("Pad", [x, pads], where + ".padded", opset=19, mode=_PAD_MODES[mod.padding_mode])
        conv_pads = [0] * (2 * nd)
    else:
        conv_pads = _conv_pads(mod, nd, in_shape)
    ins = [x, w]
    after = _float_bias_after(mod)
    if mod.bias is not None and not after:
        ins.append(_bias(g, mod, where))
    y = g.node("Conv", ins, where + ".out", kernel_shape=list(mod.kernel_size), strides=list(mod.stride),
               pads=conv_pads, dilations=list(mod.dilation), group=int(mod.groups))
    if after:
        b = mod.bias.detach().float().reshape([1, -1] + [1] * nd)
        y = g.node("Add", [y, g.const(b, where + ".bias")], where + ".out")
    info["type"] = "Conv"
    g.layers[where] = info
    return y


# ---------------------------------------------------------------- float modules


def _pool_attrs(m, nd: int) -> dict:
    def tup(v):
        return list(v) if isinstance(v, (tuple, list)) else [v] * nd

    k = tup(m.kernel_size)
    st = tup(m.stride if m.stride is not None else m.kernel_size)
    p = tup(m.padding)
    return {"kernel_shape": k, "strides": st, "pads": p + p, "ceil_mode": int(m.ceil_mode)}


def _float_module(g: _Graph, m: nn.Module, x: str, in_shape, out_shape, where: str) -> str:
    from .qat.fuse import FusedActivation

    if type(m) is FusedActivation:  # fused into the conv before it (exported without it): the activation
        m = m.unfused()
    t = type(m)
    if t in (nn.Identity, nn.Dropout):
        return x
    if t is nn.ReLU:
        return g.node("Relu", [x], where)
    if t in (nn.ReLU6, nn.Hardtanh):
        lo, hi = (0.0, 6.0) if t is nn.ReLU6 else (float(m.min_val), float(m.max_val))
        return g.node("Clip", [x, g.const(torch.tensor(lo), where + ".min"), g.const(torch.tensor(hi), where + ".max")], where)
    if t is nn.LeakyReLU:
        return g.node("LeakyRelu", [x], where, opset=16, alpha=float(m.negative_slope))
    if t is nn.ELU:
        return g.node("Elu", [x], where, alpha=float(m.alpha))
    if t is nn.PReLU:
        slope = m.weight.detach()
        if slope.numel() > 1:  # one slope per channel (dim 1): broadcast from the right as ONNX does
            slope = slope.reshape([-1] + [1] * (len(in_shape) - 2))
        return g.node("PRelu", [x, g.const(slope, where + ".slope")], where, opset=16)
    if t is nn.Hardswish:
        return g.node("HardSwish", [x], where, opset=14)
    if t is nn.Hardsigmoid:  # relu6(x + 3) / 6
        return g.node("HardSigmoid", [x], where, alpha=1.0 / 6.0, beta=0.5)
    if t is nn.Mish:
        return g.node("Mish", [x], where, opset=18)
    if t in (nn.Softmax, nn.LogSoftmax):
        if m.dim is None:
            raise ValueError(f"export_onnx: {where}: {t.__name__} with dim=None (give it a dim)")
        return g.node("Softmax" if t is nn.Softmax else "LogSoftmax", [x], where, axis=int(m.dim))
    if t is nn.GELU:
        return g.node("Gelu", [x], where, opset=20, approximate=m.approximate)
    if t is nn.SiLU:
        return g.node("Mul", [x, g.node("Sigmoid", [x], where + ".sigmoid")], where)
    if t is nn.Tanh:
        return g.node("Tanh", [x], where)
    if t is nn.Sigmoid:
        return g.node("Sigmoid", [x], where)
    if t in (nn.Flatten, nn.Unflatten):
        if t is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
            return g.node("Flatten", [x], where, axis=1)
        shape = [0] + list(out_shape[1:])  # 0: keep the (dynamic) batch dim
        return g.node("Reshape", [x, g.ints(shape, where + ".shape")], where)
    if t in (nn.MaxPool1d, nn.MaxPool2d):
        nd = 1 if t is nn.MaxPool1d else 2
        if m.return_indices:
            raise ValueError(f"export_onnx: {where}: MaxPool with return_indices")
        a = _pool_attrs(m, nd)
        d = m.dilation
        a["dilations"] = list(d) if isinstance(d, (tuple, list)) else [d] * nd
        return g.node("MaxPool", [x], where, **a)
    if t in (nn.AvgPool1d, nn.AvgPool2d):
        nd = 1 if t is nn.AvgPool1d else 2
        a = _pool_attrs(m, nd)
        d = getattr(m, "divisor_override", None)
        if d is not None:
            # every window's sum / d: the mean over the whole (padded) window times its size / d,
            # where every window lies inside the padded input (ceil_mode off)
            if m.ceil_mode:
                raise ValueError(f"export_onnx: {where}: AvgPool divisor_override with ceil_mode has no ONNX form")
            a["count_include_pad"] = 1
            y = g.node("AveragePool", [x], where + ".mean", opset=19, **a)
            size = math.prod(a["kernel_shape"])
            return g.node("Mul", [y, g.const(torch.tensor(size / d), where + ".scale")], where)
        a["count_include_pad"] = int(m.count_include_pad)
        return g.node("AveragePool", [x], where, opset=19, **a)
    if t in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d):
        nd = 1 if t is nn.AdaptiveAvgPool1d else 2
        osz = m.output_size if isinstance(m.output_size, (tuple, list)) else [m.output_size] * nd
        if all(o == 1 for o in osz):
            return g.node("GlobalAveragePool", [x], where)
        ins = list(in_shape[2:])
        osz = [i if o is None else o for i, o in zip(ins, osz)]  # None keeps that size
        if all(i % o == 0 for i, o in zip(ins, osz)):
            k = [i // o for i, o in zip(ins, osz)]
            return g.node("AveragePool", [x], where, kernel_shape=k, strides=k)
        # windows of varying size (torch's: [floor(j * i / o), ceil((j + 1) * i / o)) for output j):
        # a constant averaging matrix per spatial dim, applied along the last dim and, for 2-d, along
        # the one before it through a transpose (the same means; float sums in another order)
        def averaging(i: int, o: int) -> torch.Tensor:
            m = torch.zeros(i, o)
            for j in range(o):
                lo, hi = (j * i) // o, -((-(j + 1) * i) // o)
                m[lo:hi, j] = 1.0 / (hi - lo)
            return m

        y = g.node("MatMul", [x, g.const(averaging(ins[-1], osz[-1]), where + ".cols")], where + ".pool_cols")
        if nd == 1:
            return y
        y = g.node("Transpose", [y], where + ".t", perm=[0, 1, 3, 2])
        y = g.node("MatMul", [y, g.const(averaging(ins[0], osz[0]), where + ".rows")], where + ".pool_rows")
        return g.node("Transpose", [y], where, perm=[0, 1, 3, 2])
    if t in (nn.BatchNorm1d, nn.BatchNorm2d):
        if not m.track_running_stats or m.running_mean is None:
            raise ValueError(f"export_onnx: {where}: BatchNorm without running statistics")
        n = m.num_features
        wt = m.weight if m.affine else torch.ones(n)
        b = m.bias if m.affine else torch.zeros(n)
        ins = [x, g.const(wt, where + ".weight"), g.const(b, where + ".bias"),
               g.const(m.running_mean, where + ".mean"), g.const(m.running_var, where + ".var")]
        return g.node("BatchNormalization", ins, where, opset=15, epsilon=float(m.eps))
    if t is nn.LayerNorm:
        shape = list(m.normalized_shape)
        wt = m.weight if m.elementwise_affine and m.weight is not None else torch.ones(shape)
        ins = [x, g.const(wt, where + ".weight")]
        if m.elementwise_affine and m.bias is not None:
            ins.append(g.const(m.bias, where + ".bias"))
        return g.node("LayerNormalization", ins, where, opset=17, axis=-len(shape), epsilon=float(m.eps))
    if t is nn.Linear:
        y = g.node("MatMul", [x, g.const(m.weight.t(), where + ".weight")], where + ".matmul")
        if m.bias is not None:
            y = g.node("Add", [y, g.const(m.bias, where + ".bias")], where)
        return y
    if t in (nn.Conv1d, nn.Conv2d):
        nd = 1 if t is nn.Conv1d else 2

        class _C:  # the conv emitter reads these fields
            pass

        c = _C()
        for k in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode", "bias"):
            setattr(c, k, getattr(m, k))
        c._rpt = getattr(m, "_reversed_padding_repeated_twice", None)
        w = g.const(m.weight, where + ".weight")
        y = _conv(g, c, x, w, in_shape, where, nd, {"weight": "float", "input": "float"})
        g.layers.pop(where, None)  # float layers are not in the quantized-layer report
        return y
    if t is nn.Embedding:
        if m.max_norm is not None:
            raise ValueError(f"export_onnx: {where}: Embedding max_norm renormalizes rows at run time; no ONNX form")
        return g.node("Gather", [g.const(m.weight, where + ".weight"), x], where, axis=0)
    raise ValueError(
        f"export_onnx: {where or 'the model'}: no ONNX form for {t.__name__} (export_onnx covers nn.Sequential trees "
        "of converted layers and ReLU / ReLU6 / LeakyReLU / PReLU / ELU / Hardtanh / Hardswish / Hardsigmoid / GELU / "
        "SiLU / Mish / Tanh / Sigmoid / Softmax / LogSoftmax, pooling, BatchNorm, LayerNorm, Flatten, "
        "Unflatten, Dropout, Identity, float Linear / Conv1d / Conv2d / Embedding; a custom forward needs an "
        "as_sequential() form)"
    )


# ---------------------------------------------------------------- entry point


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str,
    *,
    lowbit: str = "int4",
    opset: Optional[int] = None,
    int8_weights: str = "auto",
) -> dict:
    """Write ``model`` (converted, or a QAT / PTQ model, converted first on a copy) to ``path`` as
    an ONNX QuantizeLinear / DequantizeLinear graph with a dynamic batch dimension.

    Args:
        model: an ``nn.Sequential`` tree of converted layers and the float modules listed in the
            module docstring.
        example_input: a batch the model takes (fixes the rank, the non-batch dims and the dtype).
        path: the ``.onnx`` file to write (overwritten).
        lowbit: ``"int4"`` (ternary / binary codes as ONNX int4, opset 21) or ``"int2"`` (int2,
            opset 25; a quarter of the bytes). onnxruntime 1.32 computes int2 weights right with
            its basic graph optimizations and wrong with its extended ones, which fuse a float
            input's int2 DequantizeLinear + MatMul into MatMulNBits: exporting such a layer
            warns.
        opset: the default-domain opset (default: the lowest that holds every node, 21 or 25).
        int8_weights: how 8-bit per-channel / per-tensor weight codes are stored. ``"auto"``: as
            uint8 ``code + 128`` with zero point 128 where some code's magnitude (from its zero
            point) exceeds 64, else as int8; ``"uint8"``: always so; ``"int8"``: always int8.
            The values are the same either way. onnxruntime runs int8 weights on its uint8 x int8
            kernels, which on CPUs without VNNI (AVX2; AVX-512 before VNNI) saturate int16 pair
            sums when two adjacent weights' magnitudes sum past 128, giving wrong outputs; uint8
            weights run its uint8 x uint8 kernels, exact on every CPU. ``"int8"`` suits files
            that only run on VNNI CPUs, where the uint8 x int8 kernels are exact and faster.

    Returns:
        A report: ``{"opset", "layers": {name: {"type", "input", "weight": {...}}}}``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``example_input`` not a tensor or ``path``
            not a str or os.PathLike.
        FileNotFoundError / IsADirectoryError: ``path``'s directory does not exist / it is one.
        ValueError: a module with no ONNX form (named), a non-float32 model or input, an
            unknown ``lowbit`` or ``int8_weights``.
    """
    from .qat.convert import QAT_TYPES, _Quantized, convert

    onnx = _need_onnx()
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx: model must be an nn.Module, got {type(model).__name__}")
    from .serialization import check_out_path

    path = check_out_path("export_onnx", path)
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"export_onnx: example_input must be a torch.Tensor, got {type(example_input).__name__}")
    if lowbit not in ("int2", "int4"):
        raise ValueError(f"export_onnx: lowbit must be 'int2' or 'int4', got {lowbit!r}")
    if int8_weights not in ("auto", "int8", "uint8"):
        raise ValueError(f"export_onnx: int8_weights must be 'auto', 'int8' or 'uint8', got {int8_weights!r}")
    if example_input.dim() == 0:
        raise ValueError("export_onnx: example_input must have a batch dimension, got a 0-d tensor")
    from .qat.prepare import unwrap_model

    model = unwrap_model(model)  # (torch.compile's / DDP's wrapper)
    from .qat.swap import warn_hooks

    warn_hooks(model, "export_onnx", "The ONNX graph holds each module's own computation, not what its hooks do")
    if any(isinstance(m, QAT_TYPES) for m in model.modules()):
        model = convert(model)
    from .qat.fuse import check_fused
    from .serialization import sync_loaded

    check_fused(model, "export_onnx")  # a fused activation the graph would drop
    sync_loaded(model)  # a loaded layer's packed bytes written in place: its codes follow
    was_training = model.training
    model.eval()
    try:
        return _export(onnx, model, example_input, path, lowbit, opset, _Quantized, int8_weights)
    finally:
        model.train(was_training)


def _export(onnx, model, example_input, path, lowbit, opset, _Quantized, int8_weights="auto") -> dict:
    # record each module's input / output shapes on the example batch (Reshape targets, pooling),
    # per call: a module used at several places of the tree runs once at each, in the walk's order
    calls: Dict[int, List[Tuple[list, list]]] = {}
    hooks = []
    for m in model.modules():
        hooks.append(m.register_forward_hook(
            lambda mod, inp, out: calls.setdefault(id(mod), []).append((list(inp[0].shape), list(out.shape)))
            if isinstance(out, torch.Tensor) else None))
    try:
        with torch.no_grad():
            out = model(example_input)
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"export_onnx: the model returns {type(out).__name__}, not one tensor")
    float_ins = example_input.is_floating_point()
    if float_ins and example_input.dtype != torch.float32:
        raise ValueError(f"export_onnx: example_input must be float32 (or integer indices), got {example_input.dtype}")
    if out.dtype != torch.float32:
        raise ValueError(f"export_onnx: the model computes in {out.dtype}; export_onnx writes float32 graphs")

    g = _Graph(onnx)
    g.int8_weights = int8_weights

    seen: Dict[int, int] = {}

    def shapes_of(name: str, m: nn.Module) -> Tuple[list, list]:
        k = seen.get(id(m), 0)
        seen[id(m)] = k + 1
        got = calls.get(id(m), [])
        if k >= len(got):
            raise ValueError(f"export_onnx: {name}: the module did not run on example_input")
        return got[k]

    def walk(name: str, m: nn.Module, x: str) -> str:
        if isinstance(m, _Quantized):
            return _quantized(g, m, x, shapes_of(name, m)[0], name, lowbit)
        if type(m) is nn.Sequential:
            for n, c in m._modules.items():  # (named_children() would skip a module used twice)
                if c is None:
                    raise ValueError(f"export_onnx: {name}.{n}: the child module is None")
                x = walk(f"{name}.{n}" if name else n, c, x)
            return x
        ins, outs = shapes_of(name, m)
        return _float_module(g, m, x, ins, outs, name)

    if type(model) is not nn.Sequential and not isinstance(model, _Quantized):
        raise ValueError(
            f"export_onnx: the model is a {type(model).__name__} with its own forward; export_onnx covers nn.Sequential "
            "trees of converted layers and known modules (export its as_sequential() form)"
        )
    h, T = onnx.helper, onnx.TensorProto
    in_type = T.FLOAT if float_ins else T.INT64
    y = walk("", model, "input")
    y = g.node("Identity", [y], "output")
    opset = opset or (25 if g.max_opset > 21 else 21)
    if opset < g.max_opset:
        raise ValueError(f"export_onnx: opset {opset} is below the {g.max_opset} the graph's nodes need")
    inputs = [h.make_tensor_value_info("input", in_type, ["batch", *example_input.shape[1:]])]
    outputs = [h.make_tensor_value_info(y, T.FLOAT, ["batch", *out.shape[1:]])]
    graph = h.make_graph(g.nodes, "qatkit", inputs, outputs, initializer=g.inits)
    from . import __version__

    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="qatkit",
                         producer_version=__version__)
    proto.ir_version = 11 if opset >= 25 else 10
    onnx.checker.check_model(proto, full_check=True)
    from .serialization import replacing

    with replacing(path) as tmp:  # (a failed write leaves the file that was there)
        onnx.save(proto, tmp)
    return {"opset": opset, "layers": g.layers, "output": y}
