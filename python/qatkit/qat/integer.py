"""Integer-exact inference for converted layers whose inputs and weights are both quantized.

A converted layer computes, by default, what its QAT layer computed: float32 math on the
dequantized weight and the fake-quantized input (``compute = "float"``). In ``compute = "integer"``
it computes what an integer kernel computes: the input's integer codes times the weight's integer
codes with exact integer accumulation, then one documented requantization to float32. The
arithmetic is fixed element by element (no float sum whose order depends on the CPU), so this
simulation, the integer kernels of :mod:`qatkit.kernels` and any CPU give the same bits.
docs/integer.md states the rules; in short, for output element ``(m, n)``:

``static`` — per-tensor affine input (scale ``sx``, zero point ``zx``; w8a8, w4a4_lsq, ternary,
binary_w1a8 and every first/last int8 layer) and per-tensor / per-channel symmetric weights
(scale ``sw[n]``): ``acc = sum_k (qx - zx) * qw`` (int32), ``M[n] = fp32(sx * sw[n])``. W8A8 layers
(8-bit weights and inputs) add Jacob et al.'s int32 bias at S_w * S_x: ``bias_q[n] =
nearbyint(b[n] / M[n])`` (int32, computed once in float64), ``y = fp32(acc + bias_q) * M[n]``
(int32 -> float32 rounds to nearest even, then one float32 multiply). Layers with narrower weights
or inputs (ternary, binary, 4-bit), whose S_w * S_x grid is too coarse for a bias (half a step of
it moves many of the next layer's codes), add the float bias after the requantization:
``y = fp32(acc) * M[n] + b[n]`` (multiply, then add).

``static_group`` — the same input with per-group weight scales ``sw[n, g]`` (w4a8): per group an
int32 ``acc[g]``; ``t = sum_g float64(acc[g]) * float64(sw[n, g])`` summed in group order in
float64 (each product exact: |acc| < 2^24, 24-bit scale), ``y = fp32(t * float64(sx)) + b[n]``.

``weight_only`` — float activations and weight codes that fit 4 bits (int4_weight_only, and
ternary / binary / <= 4-bit weight-only layers, BinaryConnect) with per-group scales (groups a
multiple of 32 dividing K) or per-channel / per-tensor ones (K a multiple of 32: one group per
row): not integer arithmetic but a float kernel (``ops.linear_w4_weight_only``:
each weight dequantized in registers to the bits of the float form's weight, float32 FMAs in the
kernel's own order), within ``K * 2^-24 * sum_k |x_k * w_k|`` (+ the bias's rounding) of the float
form; off the CPU, or in float64, the float form's F.linear.

``row`` — dynamic absmax codes per token (BitLinear / bitnet_b158; scale ``sx[m]``) or binary
codes per sample (xnor_w1a1; ``qx`` in {-1, +1}, scale ``sx[m]``): ``y = fp32(acc) *
fp32(sx[m] * sw[n]) + b[n]`` (float32 multiply, then add).

Float64 tensor math on integer codes is exact here (every partial sum < 2^53), so any summation
order gives the int32 result. Layers outside these forms (float activations, per-channel
activation ranges, asymmetric weight zero points, non-float32 models, an int32 bound that could
overflow) keep ``compute = "float"`` and :func:`set_compute` reports why.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import _C, ops

__all__ = ["set_compute", "integer_form", "IntegerReport"]

_INT32_MAX = 2**31 - 1


class IntegerReport(list):
    """``[(layer name, form or None, reason)]`` from :func:`set_compute`; ``float_layers`` lists the
    layers that stay on float math."""

    @property
    def float_layers(self) -> List[Tuple[str, str]]:
        return [(n, r) for n, f, r in self if f is None]


def _act_codes_spec(aq) -> Tuple[Optional[str], str]:
    """(activation form, reason) of an input quantizer."""
    from .quantizers import (
        AffineDynamicActQuantizer,
        AffineLearnedActQuantizer,
        AffineStaticActQuantizer,
        BinaryActQuantizer,
    )

    if aq is None:
        return None, "float activations (no input quantizer): weight-only"
    if not aq.fq_enabled:
        return None, "the input quantizer's fake quant is disabled"
    if isinstance(aq, (AffineStaticActQuantizer, AffineLearnedActQuantizer)):
        if aq.axis is not None:
            return None, "per-channel activation ranges scale terms inside the sum over K (no integer form)"
        return "affine", ""
    if isinstance(aq, AffineDynamicActQuantizer):
        return "dynamic", ""
    if isinstance(aq, BinaryActQuantizer):
        s = aq.spec
        if s.method == "bitnet" and aq.axis == 0:
            return "binary", ""
        return None, f"binary activations with method {s.method!r} axis {aq.axis} (integer form: 'bitnet' per sample)"
    return None, f"no integer form for {type(aq).__name__}"


def integer_form(mod) -> Tuple[Optional[str], str]:
    """``(form, reason)``: the integer form (``"static"``, ``"static_group"``, ``"row"``) a converted
    layer computes in, or ``(None, why not)``."""
    from .convert import QuantizedEmbedding

    if isinstance(mod, QuantizedEmbedding):
        return None, "embeddings gather rows (no products to accumulate)"
    if mod.float_weight:
        return None, "float weight"
    if mod.weight_dtype != torch.float32:
        return None, f"the layer computes in {mod.weight_dtype} (integer form: float32 layers)"
    if mod.input_fake_quant is None and (_w4_weight_only(mod) or _w8_weight_only(mod)):
        return "weight_only", ""
    if bool((mod.weight_zero_point != 0).any()):
        return None, "asymmetric weight zero points (integer form: symmetric weights)"
    act, why = _act_codes_spec(mod.input_fake_quant)
    if act is None:
        return None, why
    if act == "affine":
        form = "static_group" if mod.group_size is not None else "static"
    else:
        if mod.group_size is not None:
            return None, "per-group weights with per-token activations (no integer form)"
        if act == "dynamic" and _is_conv(mod) and mod.input_fake_quant.spec.granularity == "per_token":
            return None, "per-token scales of a conv input run along its last spatial dim, inside the sum over K"
        form = "row"
    if form == "static":
        x_max, k = _act_bound(mod), _k_eff(mod)
        w_max = int(mod.weight_int.abs().max().item()) if mod.weight_int.numel() else 0
        b = _bias_q(mod)
        bound = k * x_max * w_max + (int(b.abs().max().item()) if b is not None and b.numel() else 0)
        if bound > _INT32_MAX:
            return None, f"int32 accumulator bound {bound} > 2^31 - 1 (K={k})"
    return form, ""


def _weight_only_group(mod) -> Optional[int]:
    """The weight-only kernel's group size for a Linear's weight scales: its groups (per-group), or
    the whole row K (per-channel or per-tensor scales: one group per row); None otherwise."""
    if isinstance(mod.group_size, int):
        return mod.group_size
    n, k = mod.weight_int.shape
    return k if mod.weight_scale.numel() in (1, n) and mod.weight_zero_point.numel() in (1, n) else None


def _w4_weight_only(mod) -> bool:
    """A weight-only Linear whose codes fit 4 bits (int4, ternary, binary: BinaryConnect and the
    *_weight_only presets up to 4 bits) with per-group scales in groups of a multiple of 32 dividing
    K, or per-channel / per-tensor scales with K a multiple of 32 (one group per row): the
    "weight_only" form (float activations on ops.linear_w4_weight_only, a float kernel)."""
    w, spec = mod.weight_int, mod.weight_spec
    if _is_conv(mod) or spec is None or (spec.kind == "int" and spec.bits > 4) or w.dim() != 2 or w.dtype != torch.int8:
        return False
    gs = _weight_only_group(mod)
    if gs is None or gs == 0 or gs % 32 or w.shape[1] % gs:
        return False
    return not w.numel() or (int(w.min()) >= -8 and int(w.max()) <= 7)


def _w8_weight_only(mod) -> bool:
    """A weight-only Linear with 5- to 8-bit symmetric codes and per-channel or per-tensor scales
    (int8_weight_only): the "weight_only" form on ops.linear_w8_weight_only (a float kernel)."""
    w, spec = mod.weight_int, mod.weight_spec
    if _is_conv(mod) or spec is None or spec.kind != "int" or not 4 < spec.bits <= 8 or w.dim() != 2:
        return False
    return (w.dtype == torch.int8 and mod.group_size is None and mod.weight_scale.numel() in (1, w.shape[0])
            and not bool((mod.weight_zero_point != 0).any()))


def _k_eff(mod) -> int:
    return mod.weight_int[0].numel() if mod.weight_int.dim() > 0 and mod.weight_int.shape[0] > 0 else 0


def _act_qparams(aq) -> Tuple[torch.Tensor, torch.Tensor]:
    s, z = aq.frozen_qparams()
    spec = aq.spec
    s = s.detach().float().reshape(1)
    z = torch.round(z.detach().float()).clamp(spec.quant_min, spec.quant_max).reshape(1)
    return s, z


def _act_bound(mod) -> int:
    aq = mod.input_fake_quant
    spec = aq.spec
    if not hasattr(aq, "frozen_qparams"):
        return 1
    _, z = _act_qparams(aq)
    z = int(z.item())
    return max(spec.quant_max - z, z - spec.quant_min)


def _multiplier(mod) -> torch.Tensor:
    """S_x * S_w per output channel, float32: a per-tensor weight scale is repeated over the rows
    (the kernels take one multiplier per output; a per-tensor ternary / binary layer with a static
    input range failed at its first integer call: "linear_w2a8: out_scale must have shape [N]")."""
    sx, _ = _act_qparams(mod.input_fake_quant)
    m = (sx * mod.weight_scale.float().reshape(-1)).contiguous()  # float32 product per channel
    rows = mod.weight_int.shape[0] if mod.weight_int.dim() > 0 else 1
    return m.expand(rows).contiguous() if m.numel() == 1 and rows > 1 else m


def int32_bias(mod) -> bool:
    """True when a "static" layer adds its bias as int32 at S_x * S_w: 8-bit (or wider) integer
    weights and inputs (W8A8). Narrower layers add the float bias after the requantization."""
    w, aq = mod.weight_spec, mod.input_fake_quant
    return (w is not None and w.kind == "int" and w.bits >= 8 and aq is not None and aq.spec.kind == "int"
            and aq.spec.bits >= 8)


def _bias_q(mod) -> Optional[torch.Tensor]:
    """The int32 bias codes of a W8A8 "static" layer (None without a bias or for a float-bias layer)."""
    if mod.bias is None or not int32_bias(mod):
        return None
    m = _multiplier(mod).double()
    q = torch.round(mod.bias.detach().double() / m)  # half to even
    if not bool(torch.isfinite(q).all()) or float(q.abs().max()) > _INT32_MAX:
        return torch.full_like(q, float(2**40))  # reported by integer_form's bound check
    return q


def _codes(mod, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Input codes (float64, zero point subtracted) and the per-row / per-tensor activation scale."""
    aq = mod.input_fake_quant
    spec = aq.spec
    act, _ = _act_codes_spec(aq)
    if act == "affine":
        s, z = _act_qparams(aq)
        q = ops.quantize_affine(x, s, z, spec.quant_min, spec.quant_max, dtype=torch.int32)
        return q.double() - z.double(), s
    if act == "binary":  # per sample (dim 0): codes +-1, scale alpha[m]
        q, s = ops.binary_codes(x, spec.method, 0)
        return q.double(), s.float()
    # dynamic absmax, as ops.quantize_per_token / quantize_per_tensor_dynamic compute it
    qmax = spec.quant_max
    if not bool(torch.isfinite(x).all()):  # no finite scale: the QAT layer and the kernel raise too
        raise ValueError(f"the input holds NaN or Inf: its {spec.granularity} scale max|x| / {qmax} is not finite "
                         "(quantize_per_token and linear_dynamic_int8 raise on it too)")
    if spec.granularity == "per_token":
        rows = x.reshape(-1, x.shape[-1])
        s = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-5) / qmax
        q = ops.quantize_affine(rows, s, torch.zeros_like(s), -qmax - 1, qmax, group_size=rows.shape[1], dtype=torch.int32)
        return q.double().reshape(x.shape), s.reshape(-1)
    rows = x.reshape(1, -1)
    s = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-5) / qmax
    q = ops.quantize_affine(rows, s, torch.zeros_like(s), -qmax - 1, qmax, group_size=rows.shape[1], dtype=torch.int32)
    return q.double().reshape(x.shape), s.reshape(1)


def _apply(mod, x: torch.Tensor, contract, pad=None) -> torch.Tensor:
    """Shared requantization; ``contract(xq64, wq64)`` is the layer's float64 product (exact);
    ``pad`` pads the codes (copies of codes: what padding the quantized input gives)."""
    form = mod._integer_form
    xq, sx = _codes(mod, x)
    if pad is not None:
        xq = pad(xq)
    w = mod.weight_int.double()
    if form == "static":
        acc = contract(xq, w)
        m = _multiplier(mod)
        shape = [1] * acc.dim()
        ch = 1 if _is_conv(mod) else acc.dim() - 1
        shape[ch] = -1
        bq = _bias_q(mod)
        if bq is not None:
            acc = acc + bq.reshape(shape)
        y = acc.float() * m.reshape(shape)
        if mod.bias is not None and bq is None:
            y = y + mod.bias.reshape(shape)
        return _nan_outputs(x, y, contract, pad, w)
    if form == "static_group":
        g = mod.group_size
        k = w[0].numel()
        wf = w.reshape(w.shape[0], k)
        sw = mod.weight_scale.reshape(w.shape[0], k // g).double()
        t = None
        for i in range(k // g):
            wi = torch.zeros_like(wf)
            wi[:, i * g : (i + 1) * g] = wf[:, i * g : (i + 1) * g]
            acc = contract(xq, wi.reshape(w.shape))
            ch = 1 if _is_conv(mod) else acc.dim() - 1
            shape = [1] * acc.dim()
            shape[ch] = -1
            term = acc * sw[:, i].reshape(shape)  # exact product
            t = term if t is None else t + term  # float64, in group order
        y = (t * sx.double()).float()
        if mod.bias is not None:
            y = y + mod.bias.reshape(shape)
        return _nan_outputs(x, y, contract, pad, w)
    # row: per-token / per-sample scales
    acc = contract(xq, w).float()
    conv = _is_conv(mod)
    ch = 1 if conv else acc.dim() - 1
    if conv:  # per sample (dim 0)
        sxr = sx.reshape([-1] + [1] * (acc.dim() - 1))
    elif sx.numel() == 1:
        sxr = sx.reshape([1] * acc.dim())
    elif mod.input_fake_quant.spec.granularity == "per_token":
        sxr = sx.reshape(list(acc.shape[:-1]) + [1])
    else:  # binary per sample along dim 0
        sxr = sx.reshape([-1] + [1] * (acc.dim() - 1))
    shape = [1] * acc.dim()
    shape[ch] = -1
    m = sxr * mod.weight_scale.float().reshape(shape)  # fp32(sx[m] * sw[n])
    y = acc * m
    if mod.bias is not None:
        y = y + mod.bias.reshape(shape)
    return y


def _nan_outputs(x: torch.Tensor, y: torch.Tensor, contract, pad, w: torch.Tensor) -> torch.Tensor:
    """The static forms' NaN rule (docs/integer.md, "NaN inputs"): quantize_affine codes a NaN as
    the zero point, but the float layer (fake quantization keeps it, then the product) gives NaN in
    every output whose sum reads it, so those outputs become NaN, as the kernels make them."""
    nan = torch.isnan(x)
    if not bool(nan.any()):
        return y
    m = nan.double()
    if pad is not None:
        m = pad(m)
    return y.masked_fill(contract(m, torch.ones_like(w)) > 0.5, float("nan"))


def _is_conv(mod) -> bool:
    return hasattr(mod, "kernel_size")


def _int8_plan(mod, rows: Optional[bool] = None) -> Optional[dict]:
    """The operands of ``ops.linear_int8`` (or the packed ternary / binary kernels) for a "static"
    Linear, or a Conv (weights flattened to [N, C/groups*kh*kw], inputs unfolded per group), whose
    codes fit (8-bit input range, weight codes in [-127, 127]); None: the float64 simulation runs.
    XNOR layers take :func:`_xnor_plan` (conv2d_w1a1 for convs of any groups). ``rows``:
    the row layouts (default: on CUDA), else the panel layouts."""
    # CPU plans take the panel layouts (the CPU kernels' fastest); CUDA plans the row layouts (the
    # CUDA kernels' vector form and torch._int_mm read rows; docs/gpu.md). The kernels take both.
    rows = mod.weight_int.is_cuda if rows is None else rows
    if mod._integer_form == "row":
        return _xnor_plan(mod, rows)
    if mod._integer_form == "weight_only" and _w8_weight_only(mod):
        n = mod.weight_int.shape[0]
        return {"kernel": "linear_w8_weight_only", "weight": mod.weight_int.contiguous(),
                "weight_scale": mod.weight_scale.float().reshape(-1).expand(n).contiguous(),
                "bias": None if mod.bias is None else mod.bias.detach().float().contiguous()}
    if mod._integer_form == "weight_only":
        n, k = mod.weight_int.shape
        gs = _weight_only_group(mod)  # per-channel / per-tensor scales: one group per row
        z = mod.weight_zero_point.reshape(-1).expand(n * k // gs).reshape(n, k // gs)
        # the panel layout: the kernel transposes nothing per call (1.1-1.25x on MiniLM's layers); the
        # scales and zero points in the panel's blocks where N allows (no per-call transpose of theirs)
        sc = mod.weight_scale.float().reshape(-1).expand(n * k // gs).reshape(n, k // gs).contiguous()
        zf = z.float().contiguous() if bool((z != 0).any()) else None
        if n % 16 == 0 and not rows:
            sc = ops.block_w4_scales(sc)
            zf = None if zf is None else ops.block_w4_scales(zf)
        w4 = ops.pack_int4_w4(mod.weight_int)
        return {"kernel": "linear_w4_weight_only", "weight": w4 if rows else ops.pack_int4_panel(w4),
                "gscale": sc, "group_size": gs, "gzero": zf,
                "bias": None if mod.bias is None else mod.bias.detach().float().contiguous()}
    aq = mod.input_fake_quant
    spec = aq.spec
    w = mod.weight_int
    w = w.reshape(w.shape[0], -1) if w.dim() > 0 else w
    if w.dim() != 2 or w.dtype != torch.int8 or (w.numel() and int(w.min()) < -127):
        return None
    qmin, qmax = spec.quant_min, spec.quant_max
    if not (qmax - qmin <= 255 and ((qmin >= 0 and qmax <= 255) or (qmin >= -128 and qmax <= 127))):
        return None
    sx, zx = _act_qparams(aq)
    shift = 128 if qmin >= 0 else 0
    if mod._integer_form == "static_group":
        return _w4_plan(mod, w, sx, zx, shift, qmin, qmax, rows)
    bq = _bias_q(mod)
    corr = (shift - int(zx.item())) * w.long().sum(1)
    if bq is not None:
        corr = corr + bq.long()
    if corr.numel() and int(corr.abs().max()) > _INT32_MAX:
        return None
    bias = None if mod.bias is None or bq is not None else mod.bias.detach().float().contiguous()
    # ternary codes: the W2A8 kernel (4x fewer weight bytes); binary: W1A8 (8x fewer)
    kind = mod.weight_spec.kind
    name, packed = {
        "ternary": ("linear_w2a8", ops.pack_ternary_t2),
        "binary": ("linear_w1a8", ops.pack_binary_b1),
    }.get(kind, ("linear_int8", lambda t: t.contiguous()))
    if rows:  # the row layouts (CUDA layers; conv2d_int8 on CUDA runs the Linear kernels on patch rows)
        pass
    elif name == "linear_int8" and (not _is_conv(mod) or mod.groups == 1):
        packed = ops.pack_int8_panel  # the panel layout (no horizontal sums; the same bits)
    elif name == "linear_w1a8" and not _is_conv(mod):
        # the panel layout: 32 rows per byte shuffle of the lookup-table kernel (the same bits)
        packed = lambda t: ops.pack_binary_panel(ops.pack_binary_b1(t))  # noqa: E731
    elif _is_conv(mod) and name == "linear_int8" and w.shape[1] % 32:
        # grouped convs take int8 rows zero-padded to a multiple of 32: small-K convs run vectorized
        packed = lambda t: F.pad(t, (0, -t.shape[1] % 32)).contiguous()  # noqa: E731
    return {"kernel": name, "weight": packed(w),
            "corr": corr.to(torch.int32), "out_scale": _multiplier(mod), "bias": bias,
            "act_scale": float(sx.item()), "zp": int(zx.item()), "qmin": qmin, "qmax": qmax}


def _numeric_padding(mod) -> Tuple[Tuple[int, ...], Optional[Tuple[int, ...]]]:
    """A zero-padded conv's padding as the kernels take it: (symmetric padding per dim, the zero
    padding ``F.pad`` adds to x first, or None). String padding resolves as aten's convolution does:
    'valid' none; 'same' (stride 1) ``dilation * (k - 1)`` per dim, half on each side and the odd one
    on the right (padded first, so the rest is symmetric). A zero-padded float input quantizes to the
    zero point, the code the kernels pad with, so either way gives the float64 simulation's sums."""
    p, nd = mod.padding, len(mod.kernel_size)
    if not isinstance(p, str):
        return tuple(p), None
    if p == "valid":
        return (0,) * nd, None
    total = [d * (k - 1) for d, k in zip(mod.dilation, mod.kernel_size)]
    left = tuple(t // 2 for t in total)
    extra = [t - 2 * l for t, l in zip(total, left)]
    if not any(extra):
        return left, None
    pad: List[int] = []
    for e in reversed(extra):  # F.pad's order: the last dim first
        pad += [0, e]
    return left, tuple(pad)


def _geometry_2d(mod, padding) -> Tuple[Tuple[int, int], ...]:
    """(kernel, stride, padding, dilation) of a conv as the Conv2d the kernels run: a Conv1d as 1 x k
    (its input unsqueezed at dim 2)."""
    if len(mod.kernel_size) == 1:
        return (1, mod.kernel_size[0]), (1, mod.stride[0]), (0, padding[0]), (1, mod.dilation[0])
    return tuple(mod.kernel_size), tuple(mod.stride), tuple(padding), tuple(mod.dilation)


def _xnor_plan(mod, rows: bool = False) -> Optional[dict]:
    """The kernel plan of a "row" form layer: ops.linear_w1a1 / conv2d_w1a1's operands for an
    XNOR-Net layer (binary weight codes, inputs binarized per sample by the 'bitnet' rule),
    ops.linear_dynamic_int8's for a Linear with dynamic int8 inputs (BitLinear / bitnet_b158, or
    int8 / binary weights with per-token or per-tensor dynamic activations: :func:`_dynamic_plan`);
    None for wider dynamic inputs, for convs whose padding mode is not zeros (a binarized
    sample's codes are padded, not its floats: the per-sample mean would change) and for 'same'
    padding that is not symmetric (its extra zero column would be padded before binarizing)."""
    act, _ = _act_codes_spec(mod.input_fake_quant)
    if act == "dynamic":
        return _dynamic_plan(mod, rows)
    if act != "binary" or mod.weight_spec.kind != "binary":
        return None
    if _is_conv(mod) and (mod.padding_mode != "zeros" or _numeric_padding(mod)[1] is not None):
        return None
    w = mod.weight_int
    w = w.reshape(w.shape[0], -1) if w.dim() > 0 else w
    if w.dim() != 2 or (w.numel() and not bool(((w == 1) | (w == -1)).all())):
        return None
    ws = mod.weight_scale.detach().float().reshape(-1)
    if ws.numel() == 1:
        ws = ws.expand(w.shape[0])
    if ws.numel() != w.shape[0]:
        return None
    bias = None if mod.bias is None else mod.bias.detach().float().contiguous()
    # convs of any groups: conv2d_w1a1 (grouped and depthwise ones on conv2d_int8's kernels on the codes)
    return {"kernel": "linear_w1a1", "weight": ops.pack_binary_b1(w), "weight_scale": ws.contiguous(), "bias": bias}


def _dynamic_plan(mod, rows: bool = False) -> Optional[dict]:
    """ops.linear_dynamic_int8's operands for a "row" form Linear with dynamic int8 inputs, per
    token or per tensor (symmetric codes in [-qmax - 1, qmax], qmax <= 127), and ternary, binary or
    int8 weight codes in [-127, 127], whose int32 bound K * (qmax + 1) * max|w| fits; None
    otherwise (wider codes: the float64 simulation runs)."""
    spec = mod.input_fake_quant.spec
    if _is_conv(mod) or not 1 <= spec.quant_max <= 127:
        return None
    w = mod.weight_int
    if w.dim() != 2 or w.dtype != torch.int8:
        return None
    kind = mod.weight_spec.kind
    wmax = int(w.abs().max()) if w.numel() else 0
    if (w.numel() and int(w.min()) < -127) or w.shape[1] * (spec.quant_max + 1) * wmax > _INT32_MAX:
        return None
    if kind == "ternary" and wmax <= 1:
        bits, packed = 2, ops.pack_ternary_t2(w)
    elif kind == "binary" and (not w.numel() or bool(((w == 1) | (w == -1)).all())):
        bits, packed = 1, ops.pack_binary_b1(w)
        packed = packed if rows else ops.pack_binary_panel(packed)
    else:
        bits, packed = 8, w.contiguous() if rows else ops.pack_int8_panel(w)
    ws = mod.weight_scale.detach().float().reshape(-1)
    if ws.numel() == 1:
        ws = ws.expand(w.shape[0])
    if ws.numel() != w.shape[0]:
        return None
    return {"kernel": "linear_dynamic_int8", "weight": packed, "weight_bits": bits, "weight_scale": ws.contiguous(),
            "qmax": spec.quant_max, "bias": None if mod.bias is None else mod.bias.detach().float().contiguous(),
            "per_tensor": spec.granularity != "per_token"}


def _w4_plan(mod, w, sx, zx, shift, qmin, qmax, rows=False) -> Optional[dict]:
    """ops.linear_w4a8's operands for a "static_group" Linear or Conv (weights flattened to [N,
    C/groups*kh*kw]: ops.conv2d_w4a8 on its (c, i, j) patch rows) with 4-bit codes and groups that
    are multiples of 32 dividing K (w4a8_g32); None otherwise (the float64 simulation runs).
    ``rows``: pack_int4_w4's row layout (CUDA; grouped convs) instead of the panel layout."""
    gs, k = mod.group_size, w.shape[1]
    # groups beyond linear_w4a8's 2**17 (exact int32 group sums) keep the float64 simulation
    if gs % 32 or k % gs or gs > 2**17 or (w.numel() and (int(w.min()) < -8 or int(w.max()) > 7)):
        return None
    n, g = w.shape[0], k // gs
    w4 = ops.pack_int4_w4(w)
    rows = rows or (_is_conv(mod) and mod.groups > 1)  # the panel layout holds one GEMM's rows
    sc = mod.weight_scale.float().reshape(n, g).contiguous()
    if n % 16 == 0 and not rows and not _is_conv(mod):
        # a Linear's scales in the panel's blocks: no per-call transpose of them (at batch 1 that
        # transpose was a fifth of the kernel's work; docs/benchmarks.md, thirty-ninth session)
        sc = ops.block_w4_scales(sc)
    return {"kernel": "linear_w4a8", "weight": w4 if rows else ops.pack_int4_panel(w4), "gscale": sc,
            "group_size": gs, "bias": None if mod.bias is None else mod.bias.detach().float().contiguous(),
            "act_scale": float(sx.item()), "zp": int(zx.item()), "qmin": qmin, "qmax": qmax}


def _bind(plan: dict, divisor: Optional[torch.Tensor] = None, features: Optional[Tuple[int, int, str]] = None,
          clamp=None):
    """A Linear plan's kernel with its operands bound (x -> y): the op resolved once, so a loaded
    layer's per-call Python work is one closure call (the layers of a small model are otherwise
    dominated by that work: MiniLM's 37 Linears at one sentence). Eager calls go to the overload's
    C++ entry (``OpOverload._op``, the same dispatcher call without the Python frame: ~2 us less per
    call) with trailing ``None`` operands left to the schema's defaults; under torch.compile /
    export the OpOverload itself, which Dynamo traces. ``divisor``: linear_int8's input_divisor
    (a SmoothQuant layer's ``x / smooth`` inside the kernel's quantization pass, the same bits).
    ``clamp``: a fused activation's ``(clamp_min, clamp_max)`` (:func:`_bound`)."""
    k, p = plan["kernel"], plan
    op = getattr(torch.ops.qatkit, k).default
    if k == "linear_w1a1":
        args = (p["weight"], p["weight_scale"], p["bias"])
    elif k == "linear_w8_weight_only":
        args = (p["weight"], p["weight_scale"], p["bias"])
    elif k == "linear_dynamic_int8":
        args = (p["weight"], p["weight_bits"], p["weight_scale"], p["qmax"], p["bias"]) + ((True,) if p["per_tensor"] else ())
    elif k == "linear_w4_weight_only":
        args = (p["weight"], p["gscale"], p["group_size"], p["gzero"], p["bias"])
    elif k == "linear_w4a8":
        args = (p["weight"], p["gscale"], p["group_size"], p["act_scale"], p["zp"], p["qmin"], p["qmax"], p["bias"])
    else:
        args = (p["weight"], p["corr"], p["out_scale"], p["act_scale"], p["zp"], p["qmin"], p["qmax"], p["bias"])
        if divisor is not None:
            args = args + (divisor,)
    while args[-1] is None:
        args = args[:-1]
    return _bound(op, args, features, clamp)


def _bound(op, args: tuple, features: Optional[Tuple[int, int, str]] = None, clamp=None):
    """x -> op(x, *args): eager calls through qatkit._C.BoundOp (the dispatcher's call of the op with
    the operands converted to IValues once, at binding: ~0.8 us less per call than
    ``OpOverload._op``, which converts all of them on every call; csrc/python/bound_op.cpp), falling
    back to ``OpOverload._op`` (the overload's C++ entry) for whatever BoundOp leaves to it (a tensor
    subclass, an active TorchFunctionMode, a wrong features dim, an error the op raised: ``_op`` runs
    it again and raises torch's exception); the OpOverload itself while Dynamo traces (torch.compile,
    strict export: Dynamo knows OpOverloads, not the builtin ``_op``; ``is_dynamo_compiling`` is a
    constant False outside it, 27 ns against ``is_compiling``'s 72; non-strict export's fake inputs
    are tensor subclasses, so ``_op`` records the dispatcher call). ``features``: (dim, size, layer)
    — x's dim ``dim`` must be ``size`` (a Linear's in_features, a conv's in_channels): the packed
    layouts pad K (to 4, 32 or 128 codes), so the ops alone take an input a few features short or
    long. ``clamp``: ``(clamp_min, clamp_max)``, a converted Linear's fused activation: the output
    is ``torch.clamp``'d in place (BoundOp.clamped: in C++, after the op), None: as the op gives it."""
    raw, compiling = getattr(op, "_op", op), torch.compiler.is_dynamo_compiling
    fast = _bound_op(op, args, features)
    if clamp is not None:
        lo, hi = clamp
        fast = None if fast is None else fast.clamped(lo, hi)
        unclamped, traced = raw, op
        raw = lambda x, *a: unclamped(x, *a).clamp_(lo, hi)  # noqa: E731
        op = lambda x, *a: torch.clamp(traced(x, *a), lo, hi)  # noqa: E731 (what Dynamo traces)
    if features is None:
        def slow(x):
            return raw(x, *args)
    else:
        dim, size, layer = features

        def slow(x):
            try:
                wrong = x.shape[dim] != size
            except IndexError:  # a 0-d input: the op's own error
                wrong = False
            if wrong:
                _wrong_features(x, dim, size, layer)
            return raw(x, *args)

    if fast is None:
        def call(x):
            return op(x, *args) if compiling() else slow(x)
    else:
        def call(x):
            if compiling():
                return op(x, *args)
            y = fast(x)
            return slow(x) if y is None else y

    call.bound_op = fast  # _plan's guarded copy for the layer's forward (plan["fast"])
    return call


def _bound_op(op, args: tuple, features):
    """qatkit._C.BoundOp for ``op`` (an OpOverload of torch.ops.qatkit) and its bound operands, or
    None where it cannot hold them (a _C built without it, an operand its schema does not take)."""
    cls = getattr(_C, "BoundOp", None)
    schema = getattr(op, "_schema", None)
    if cls is None or schema is None:
        return None
    try:
        return cls(schema.name, schema.overload_name, tuple(args), None if features is None else tuple(features[:2]))
    except (RuntimeError, ValueError, TypeError):
        return None


def _wrong_features(x: torch.Tensor, dim: int, size: int, layer: str):
    what = "last dim (features)" if dim == -1 else "dim 1 (channels)"
    raise ValueError(f"{layer}: the input's {what} is {x.shape[dim]}, the layer takes {size}; "
                     f"input shape {list(x.shape)}")


def float32_input(mod, x: torch.Tensor) -> torch.Tensor:
    """The float32 input of a layer in integer compute, which quantizes float32 inputs. Under
    ``torch.autocast`` a bfloat16 / float16 input (a float layer before it ran in the autocast dtype)
    widens exactly to float32, as autocast widens the inputs of its float32 ops, and the output is
    float32. Otherwise another dtype raises TypeError naming the layer, as the float layer
    (``F.linear`` / ``F.conv2d`` with its float32 weight) does, instead of returning a float32
    output for a float64 / bfloat16 / float16 input (docs/integer.md, "Input dtypes")."""
    if x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(x.device.type):
        return x.float()
    layer = _features(mod)[2]
    if mod.qualified_name:
        layer = f"'{mod.qualified_name}': {layer}"
    raise TypeError(f"{layer} computes in integer form from float32 inputs, got a {x.dtype} input: cast the "
                    f"input (x.float()) or the model (model.to({x.dtype}): float math in that dtype)")


def reraise_named(mod, e: ValueError):
    """Raise e (from a converted layer's forward: an op refusing its input, a features check) with
    the layer's name in front, as the QAT quantizers name themselves (``_named``): the ops cannot
    know which of a model's layers called them. Unnamed layers, and messages that already start
    with the name (an input quantizer's), raise e itself."""
    name = mod.qualified_name
    msg = str(e)
    if not name or msg.startswith((f"'{name}'", f"'{name}.")):
        raise e
    raise ValueError(f"'{name}': {msg}") from e


def _features(mod) -> Tuple[int, int, str]:
    """(dim, size, layer) for :func:`_bound`: a Linear's last dim, a conv's dim 1."""
    if _is_conv(mod):
        return 1, mod.in_channels, f"{type(mod).__name__}(in_channels={mod.in_channels})"
    return -1, mod.in_features, f"{type(mod).__name__}(in_features={mod.in_features})"


#: conv2d_int8's weight_bits for a conv plan's kernel (its Linear kernel's name)
_CONV_BITS = {"linear_int8": 8, "linear_w2a8": 2, "linear_w1a8": 1}


def _bind_conv(mod, plan: dict):
    """A Conv2d / Conv1d plan's kernel with its operands bound (x -> y), or None where the layer needs
    more than the op (a padding mode other than zeros, 'same' padding that is not symmetric): what
    :func:`_conv_on_kernel` calls, the op resolved once (``_bind``'s ``OpOverload._op``
    for eager calls), so a loaded conv's per-call Python work is one closure call (about 4 us of the
    6 us it spent over the op: a small CNN's convs take tens of microseconds). A Conv1d runs as a
    1 x k Conv2d on ``x.unsqueeze(2)``, as :func:`_conv_on_kernel` runs it."""
    if mod.padding_mode != "zeros" or len(mod.kernel_size) not in (1, 2):
        return None
    padding, extra = _numeric_padding(mod)
    if extra is not None:
        return None
    k, p = plan["kernel"], plan
    geom = tuple(list(v) for v in _geometry_2d(mod, padding))
    lo, hi = mod.output_clamp or (None, None)  # a fused activation (qatkit.fuse_activations): the op clamps y
    if k == "linear_w1a1":
        name, args = "conv2d_w1a1", (p["weight"], *geom, p["weight_scale"], p["bias"], mod.groups, lo, hi)
    elif k in _CONV_BITS:
        name = "conv2d_int8"
        args = (p["weight"], _CONV_BITS[k], *geom, p["corr"], p["out_scale"], p["act_scale"], p["zp"], p["qmin"],
                p["qmax"], p["bias"], mod.groups, lo, hi)
    elif k == "linear_w4a8":
        name = "conv2d_w4a8"
        args = (p["weight"], *geom, p["gscale"], p["group_size"], p["act_scale"], p["zp"], p["qmin"], p["qmax"],
                p["bias"], mod.groups, lo, hi)
    else:
        return None
    call = _bound(getattr(torch.ops.qatkit, name).default, args, _features(mod))  # the overload, resolved once
    if len(mod.kernel_size) == 1:
        return lambda x: call(x.unsqueeze(2)).squeeze(2)
    return call


#: The Linear plan kernels with a CUDA implementation (csrc/ops/cuda/qgemm_kernel.cpp; XNOR's
#: linear_w1a1 / conv2d_w1a1 there run the W1A8 kernels on the binary codes). A plan kernel not
#: listed would run the float64 simulation on CUDA (the same bits, on no kernel).
_CUDA_KERNELS = frozenset({"linear_int8", "linear_w2a8", "linear_w1a8", "linear_w4a8", "linear_w4_weight_only",
                           "linear_w8_weight_only", "linear_dynamic_int8", "linear_w1a1"})


def _kernel_takes(mod, x: torch.Tensor) -> bool:
    """Whether a layer's kernel plan may take x: a float32 input on the layer's device (CPU or CUDA)
    of a layer in an integer form (a "row" form layer's input needs a batch dim). The plan (built on
    the layer's device; ``_Quantized._apply`` drops it when the layer moves) says whether its kernel
    runs there (``plan["call"]``). QuantizedLinear.forward inlines this test."""
    form = mod._integer_form
    if form is None or x.dtype is not torch.float32 or (form == "row" and x.dim() < 2):
        return False
    w = mod.weight_int
    return w.is_cpu if x.is_cpu else x.is_cuda and x.device == w.device


def bound_plan(mod, x: torch.Tensor) -> Optional[dict]:
    """A Linear's kernel plan when it is built (its first integer call builds it), its kernel runs
    on the layer's device, and it takes x."""
    plan = mod.__dict__.get("_int8_plan")
    return plan if plan and plan.get("call") and _kernel_takes(mod, x) else None


def _run_plan(plan: dict, x: torch.Tensor) -> torch.Tensor:
    return plan["call"](x)


def linear(mod, x: torch.Tensor) -> torch.Tensor:
    """Integer-exact ``F.linear`` of a converted Linear (after its RMSNorm / smoothing): the int8
    kernel (``ops.linear_int8``) where it applies, else the float64 simulation (same bits)."""
    plan = bound_plan(mod, x)
    if plan:  # the plan's kernel, resolved at its first call (below)
        return plan["call"](x)
    if _kernel_takes(mod, x):
        plan = _plan(mod)
        if plan and plan["call"]:
            return _run_plan(plan, x)
    if mod._integer_form == "weight_only":  # float activations: float math off the kernel
        return F.linear(x, mod.dequantized_weight(), mod.bias)
    return _apply(mod, x, lambda xq, w: F.linear(xq, w))


def simulate_linear(mod, x: torch.Tensor) -> torch.Tensor:
    """The float64 simulation of :func:`linear` (what the kernels must equal bit for bit)."""
    return _apply(mod, x, lambda xq, w: F.linear(xq, w))


def conv(mod, x: torch.Tensor, nd: int) -> torch.Tensor:
    """Integer-exact convolution of a converted Conv1d / Conv2d. Zero padding pads the centred codes
    with 0 (the code of x = 0 is the zero point exactly; binary codes have no 0, and 0 is what the
    float layer pads its binarized input with); other padding modes copy codes, as the float layer
    pads its quantized input. A fused activation (``mod.output_clamp``): the kernels write
    torch.clamp(y, lo, hi); the simulation clamps after (:func:`clamp_output`: the same values)."""
    w = mod.weight_int
    if (mod._integer_form in ("static", "static_group", "row") and x.dtype == torch.float32 and x.dim() == nd + 2
            and (w.is_cpu if x.is_cpu else x.is_cuda and x.device == w.device)):
        plan = _plan(mod)
        # on CUDA: conv2d_int8 / conv2d_w1a1 / conv2d_w4a8 (im2col, then the Linear kernels)
        if plan:
            return _conv_on_kernel(mod, x, nd, plan)
    fn = F.conv1d if nd == 1 else F.conv2d
    padding, pad = mod.padding, None
    if mod.padding_mode != "zeros":
        padding = 0
        pad = lambda q: F.pad(q, mod._rpt, mode=mod.padding_mode)  # noqa: E731
    y = _apply(mod, x, lambda xq, w: fn(xq, w, None, mod.stride, padding, mod.dilation, mod.groups), pad)
    return clamp_output(y, mod.output_clamp)


def clamp_output(y: torch.Tensor, bounds) -> torch.Tensor:
    """A converted conv's fused activation outside the kernels (the float and simulated paths):
    ``torch.clamp(y, *bounds)`` (``bounds`` None: y), the values the ops' ``clamp_min`` /
    ``clamp_max`` write (y < min -> min, y > max -> max, NaN and -0.0 kept)."""
    return y if bounds is None else torch.clamp(y, bounds[0], bounds[1])


def _conv_on_kernel(mod, x: torch.Tensor, nd: int, plan: dict) -> torch.Tensor:
    """A conv on ``ops.conv2d_int8`` (im2col on the codes, one GEMM per group; Conv1d as a 1 x k Conv2d).
    Zero padding holds the code of 0, the zero point, which the kernel's zero-point term cancels:
    the integer sums of the direct conv; other padding modes pad x first (copies, as for codes);
    string padding resolves to numbers (:func:`_numeric_padding`)."""
    if x.shape[1] != mod.in_channels:  # the packed layouts pad K: the ops alone take a few channels short or long
        _wrong_features(x, 1, mod.in_channels, _features(mod)[2])
    if mod.padding_mode != "zeros":
        x = F.pad(x, mod._rpt, mode=mod.padding_mode)
        padding = (0,) * nd
    else:
        padding, extra = _numeric_padding(mod)
        if extra is not None:  # 'same' with an odd total: its extra zero column / row first
            x = F.pad(x, extra)
    x4 = x.unsqueeze(2) if nd == 1 else x
    k, st, pad, dil = _geometry_2d(mod, padding)
    lo, hi = mod.output_clamp or (None, None)
    if plan["kernel"] == "linear_w1a1":  # zero padding only (_xnor_plan): codes of 0 at padded positions
        y = ops.conv2d_w1a1(x4, plan["weight"], k, st, pad, dil, plan["weight_scale"], plan["bias"], mod.groups, lo,
                            hi)
        return y.squeeze(2) if nd == 1 else y
    if plan["kernel"] == "linear_w4a8":  # per-group weights: (c, i, j) patch rows, the groups' order
        y = ops.conv2d_w4a8(x4, plan["weight"], k, st, pad, dil, plan["gscale"], plan["group_size"], plan["act_scale"],
                            plan["zp"], plan["qmin"], plan["qmax"], plan["bias"], mod.groups, lo, hi)
        return y.squeeze(2) if nd == 1 else y
    y = ops.conv2d_int8(x4, plan["weight"], _CONV_BITS[plan["kernel"]], k, st, pad, dil, plan["corr"],
                        plan["out_scale"], plan["act_scale"], plan["zp"], plan["qmin"], plan["qmax"], plan["bias"],
                        mod.groups, lo, hi)
    return y.squeeze(2) if nd == 1 else y


def _plan(mod):
    """The layer's kernel plan (built once, on the layer's device), or False. A plan whose kernel
    has no implementation on that device (one not in ``_CUDA_KERNELS`` on CUDA) has ``call`` and
    ``bare`` None: the float64 simulation runs (the same bits); :func:`kernel_for` still names it."""
    plan = mod.__dict__.get("_int8_plan")
    if plan is None:
        # built whole, then published: a forward in another Python thread reads the plan's keys as
        # soon as it is in __dict__ (a loaded model serving several threads)
        resync = getattr(mod, "_resync_packed", None)  # a loaded layer's codes follow its packed bytes
        if resync is not None:
            resync()
        sources = _sources(mod)
        version = sum(t._version for t in sources)
        plan = _int8_plan(mod) or False
        if plan:
            plan["device"] = mod.weight_int.device
            plan["cpu"] = plan["device"].type == "cpu"
            # the forward compares on every call: an in-place edit of a source rebuilds the plan (refresh)
            # torch.compile / export take its result (False) as a constant: the graph they trace holds
            # the plan's kernel, as its operands are constants (a compiled model after an in-place edit:
            # recompile, as for any constant a graph was traced with)
            plan["changed"] = torch.compiler.assume_constant_result(_CHANGED[len(sources)](version, *sources))
        if plan and _is_conv(mod):
            # what QuantizedConv2d / 1d.forward may call on a float32 4-d / 3-d input on the plan's device
            plan["bare"] = _bind_conv(mod, plan)
        elif plan and mod.weight_int.is_cuda and plan["kernel"] not in _CUDA_KERNELS:
            plan["call"] = plan["bare"] = None
        elif plan:
            plan["call"] = _bind(plan, features=_features(mod))  # on the input after the layer's RMSNorm / smoothing
            # what QuantizedLinear.forward may call on its own input, or None (an RMSNorm first): the
            # same kernel, or linear_int8 dividing by the smoothing itself (x / smooth in float32,
            # as forward divides, fused into the quantization pass: one tensor pass less per layer);
            # with the layer's fused activation (output_clamp) clamping the output in place
            smooth = getattr(mod, "smooth", None)
            clamp = getattr(mod, "output_clamp", None)
            if getattr(mod, "rms_norm", False):
                plan["bare"] = None
            elif smooth is None:
                plan["bare"] = plan["call"] if clamp is None else _bind(plan, features=_features(mod), clamp=clamp)
            elif plan["kernel"] == "linear_int8":
                plan["bare"] = _bind(plan, smooth.detach().to(torch.float32).contiguous(), _features(mod), clamp)
            else:
                plan["bare"] = None
        if plan:
            # what the forward calls first (convert.py): the bare kernel's BoundOp, also checking the
            # sources' versions and the input's dtype, device and dims in C++ (None: the forward's
            # general path, which checks them in Python as before)
            bound = getattr(plan.get("bare"), "bound_op", None)
            nd = mod._nd + 2 if _is_conv(mod) else None
            dims = (nd, nd) if nd else (2 if mod._integer_form == "row" else 1, 64)
            plan["fast"] = None if bound is None else bound.guarded(
                sources, version, None if plan["cpu"] else str(plan["device"]), *dims)
        mod.__dict__["_int8_plan"] = plan
    return plan


def kernel_for(mod) -> Optional[str]:
    """The integer kernel a converted layer in integer compute runs on (CPU), or None: its integer
    form then runs as the float64 simulation (:func:`set_compute`) — exact, but no faster."""
    if mod._integer_form == "weight_only" and not _is_conv(mod) or (
        mod._integer_form in ("static", "static_group", "row")
    ):
        plan = _plan(mod)
        if plan:
            return plan["kernel"]
    return None


def _decide(m, kernels_only: bool) -> Tuple[Optional[str], str]:
    """Set a converted layer's integer form from its current tensors (``set_compute("integer")``'s
    per-layer step, and :func:`refresh`'s after an in-place edit): (form or None, why)."""
    resync = getattr(m, "_resync_packed", None)  # a loaded layer's codes follow its packed bytes
    if resync is not None:
        resync()
    form, why = integer_form(m)
    m._integer_form = form
    m.__dict__.pop("_int8_plan", None)  # rebuilt from the current codes on the next call
    m.__dict__["_kernels_only"] = kernels_only
    if kernels_only and form is not None and kernel_for(m) is None:
        m._integer_form = None
        kind = type(m).__name__.replace("Packed", "").replace("Quantized", "")
        detail = ""
        if _is_conv(m) and form == "row" and m.padding_mode != "zeros":
            detail = f" (padding_mode {m.padding_mode!r}: a binarized sample's codes would be padded, not its floats)"
        elif _is_conv(m) and form == "row" and _numeric_padding(m)[1] is not None:
            detail = (" (padding='same' with an odd dilation * (kernel - 1): its extra zero row or column would be "
                      "padded before the sample is binarized)")
        elif form == "row" and _act_codes_spec(m.input_fake_quant)[0] == "dynamic":
            detail = " (linear_dynamic_int8 takes dynamic inputs of at most 8 bits; this layer's have " \
                     f"{m.input_fake_quant.spec.bits})"
        form, why = None, f"no integer kernel for a {kind} in the {form!r} form yet{detail}: float math"
    return form, why


def _sources(mod) -> Tuple[torch.Tensor, ...]:
    """The tensors a layer's kernel plan is derived from: the codes (and a loaded layer's packed
    bytes), the weight scales and zero points, the bias, the smoothing, the input quantizer's
    scale and zero point. An in-place write to any of them bumps its version (``Tensor._version``).
    Inference tensors (made under ``torch.inference_mode``: a model loaded or converted there) keep
    no version and are left out; they take in-place writes only inside inference mode, unseen."""
    ts = [mod.weight_int, mod.weight_scale, mod.weight_zero_point]
    for name in ("bias", "smooth", "weight_packed"):
        t = getattr(mod, name, None)
        if isinstance(t, torch.Tensor):
            ts.append(t)
    aq = mod.input_fake_quant
    if aq is not None:
        src = getattr(aq, "observer", aq)
        for name in ("scale", "zero_point"):
            t = getattr(src, name, None)
            if isinstance(t, torch.Tensor):
                ts.append(t)
    return tuple(t for t in ts if not t.is_inference())


#: ``_CHANGED[n](v0, *ts)``: a call telling whether the sum of the n tensors' versions is no longer
#: v0 (versions only grow), unrolled: one attribute read per tensor (~45 ns each; a generator over
#: them costs ~1.7x)
_CHANGED = {n: eval("lambda v0, " + ", ".join(f"t{i}" for i in range(n)) + ": lambda: "  # noqa: S307
                    + " + ".join(f"t{i}._version" for i in range(n)) + " != v0")
            for n in range(1, 13)}
_CHANGED[0] = lambda v0: lambda: False  # noqa: E731  (only inference tensors: nothing to compare)


def refresh_layer(mod) -> None:
    """A source of the layer's kernel plan (:func:`_sources`) was written in place after the plan
    was built (``layer.bias.add_(1)``, a bit flip in ``weight_int``, a new input scale): drop the
    plan, unpack a loaded layer's codes again if its packed bytes changed, and, in integer compute,
    decide the layer's form again from its current tensors (as ``set_compute`` did); the next call
    builds the plan from them. The converted forward checks the versions on every call (~0.4-0.5 us
    for seven tensors), so an edit is never silently ignored (docs/integer.md, "In-place edits")."""
    plan = mod.__dict__.pop("_int8_plan", None)
    if plan and mod._integer_form is not None:
        form, why = _decide(mod, mod.__dict__.get("_kernels_only", False))
        if form is None:  # the edit took the layer out of its integer form: said, never silent
            name = f"'{mod.qualified_name}'" if mod.qualified_name else type(mod).__name__
            warnings.warn(f"{name}: after an in-place edit of its tensors the layer computes in float math "
                          f"(what the QAT model computes): {why}", UserWarning, stacklevel=3)


def refresh(model: nn.Module, packed: bool = False) -> int:
    """Build every converted layer's kernel plan again from its current tensors, deciding its form
    as ``set_compute`` / ``qatkit.load`` did. A converted layer does this by itself when one of its
    tensors is written in place or replaced; call this after writes the version counters do not
    see: through ``.data`` (``layer.bias.data.add_(1)``, ``layer.weight_int.data = codes``), which
    torch leaves untracked. ``packed=True``: loaded layers unpack their codes from their packed
    bytes again first (after a ``.data`` write to ``weight_packed``).

    Returns:
        The number of layers in integer compute afterwards.

    Raises:
        ValueError: the model has no converted layers.
    """
    from .convert import _Quantized

    layers = [m for m in model.modules() if isinstance(m, _Quantized)]
    if not layers:
        raise ValueError("refresh: the model has no converted layers; call qatkit.convert first")
    for m in layers:
        if packed and getattr(m, "packing", None) is not None:
            m.__dict__["_packed_version"] = None  # unpacked again below
        m.__dict__.pop("_int8_plan", None)
        if m.__dict__.get("_compute") == "integer" or m._integer_form is not None:
            _decide(m, m.__dict__.get("_kernels_only", False))  # a layer a kernel refused may take one now
        elif packed and hasattr(m, "_resync_packed"):
            m._resync_packed()
    return sum(m._integer_form is not None for m in layers)


def set_compute(model: nn.Module, compute: str = "integer", warn: bool = True,
                kernels_only: bool = False) -> IntegerReport:
    """Switch the converted layers of ``model`` between ``"float"`` (what the QAT model computed,
    bit for bit) and ``"integer"`` (integer-exact: what the integer kernels compute, bit for bit).

    Layers without an integer form stay ``"float"``; they are listed in the returned report (and
    in a warning unless ``warn=False``; weight-only layers are not warned about). With
    ``kernels_only=True`` (what :func:`qatkit.load` does) a layer computes in integer only where an
    integer kernel runs it; the others keep float math (QAT-exact) and the report says why.

    Raises:
        ValueError: ``compute`` is neither "float" nor "integer", or the model has no converted layers.
    """
    from .convert import _Quantized

    if compute not in ("float", "integer"):
        raise ValueError(f"set_compute: compute must be 'float' or 'integer', got {compute!r}")
    report = IntegerReport()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _Quantized)]
    if not layers:
        raise ValueError("set_compute: the model has no converted layers; call qatkit.convert first")
    for name, m in layers:
        m.__dict__.pop("_integer_form_cast", None)  # what a cast away from float32 kept (convert._apply)
        m.__dict__["_compute"] = compute  # what refresh(model) decides again
        if compute == "float":
            m._integer_form = None
            report.append((name, None, "float requested"))
            continue
        form, why = _decide(m, kernels_only)
        report.append((name, form, why))
    if warn and compute == "integer":
        odd = [(n, r) for n, f, r in report if f is None and not r.startswith("float activations") and r != "float weight"]
        if odd:
            warnings.warn(
                "set_compute('integer'): these layers keep float math: "
                + "; ".join(f"{n}: {r}" for n, r in odd),
                UserWarning,
                stacklevel=2,
            )
    return report


@torch.no_grad()
def code_moves(float_model: nn.Sequential, int_model: nn.Sequential, x: torch.Tensor) -> List[Dict[str, object]]:
    """Per quantized layer of a Sequential pair (the same converted model in float and integer
    compute): feed the float model's input of layer ``i`` through the integer model's layers up to
    the next quantized layer ``j`` and compare the activation codes ``j``'s input quantizer makes
    with the float model's. One row per pair: ``{"layer", "next", "max_lsb", "moved", "codes"}`` —
    how far and how often one layer's integer arithmetic moves the codes the next layer sees.

    Raises:
        ValueError: the models are not Sequentials of the same length.
    """
    from .convert import _Quantized

    if not (isinstance(float_model, nn.Sequential) and isinstance(int_model, nn.Sequential)
            and len(float_model) == len(int_model)):
        raise ValueError("code_moves: float_model and int_model must be nn.Sequential of the same length")
    fl, il = list(float_model), list(int_model)
    inputs, h = [], x
    for m in fl:
        inputs.append(h)
        h = m(h)
    idx = [i for i, m in enumerate(fl) if isinstance(m, _Quantized)]
    rows = []
    for i, j in zip(idx, idx[1:]):
        aq = fl[j].input_fake_quant
        if aq is None or not hasattr(aq, "frozen_qparams") or aq.axis is not None:
            continue
        h = inputs[i]
        for m in il[i:j]:
            h = m(h)
        s, z = _act_qparams(aq)
        spec = aq.spec
        a = ops.quantize_affine(inputs[j], s, z, spec.quant_min, spec.quant_max, dtype=torch.int32)
        b = ops.quantize_affine(h, s, z, spec.quant_min, spec.quant_max, dtype=torch.int32)
        d = (a - b).abs()
        rows.append({"layer": i, "next": j, "max_lsb": int(d.max()) if d.numel() else 0,
                     "moved": int((d > 0).sum()), "codes": d.numel()})
    return rows
