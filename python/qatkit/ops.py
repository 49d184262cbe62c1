"""Typed, documented wrappers over ``torch.ops.qatkit``.

The ops themselves (schemas, kernels, argument checks, autograd) are in C++; these wrappers add
Python-side conveniences and the qparam value checks that CUDA kernels cannot do without a host
sync. They are safe under ``torch.compile(fullgraph=True)`` and ``torch.export``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

__all__ = [
    "fake_quantize",
    "fake_quantize_learnable",
    "lsq_grad_factor",
    "pact_quantize",
    "quantize_per_token",
    "quantize_per_tensor_dynamic",
    "ternarize",
    "binarize",
    "fused_observe_fake_quantize",
    "choose_qparams",
    "validate_qparams",
    "quantize_affine",
    "dequantize_affine",
    "ternary_codes",
    "binary_codes",
    "observer_update",
    "advance_step",
    "histogram_update",
    "pack_weights",
    "unpack_weights",
]


def fake_quantize(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fake-quantize ``input`` with an affine quantizer (quantize, then dequantize).

    ``y = (clamp(nearbyint(x * (1.0f / scale)) + zero_point, quant_min, quant_max) - zero_point) * scale``,
    bit for bit as ``torch.fake_quantize_per_{tensor,channel}_affine`` (half types are computed in
    float32, float64 in float64). NaN stays NaN; +-Inf saturate to the range ends.

    Args:
        input: float32, float64, float16 or bfloat16 tensor of any shape (any strides).
        scale: float32. One element (per-tensor), ``input.size(axis)`` elements (per-channel) or shape
            ``input.shape[:-1] + (input.shape[-1] // group_size,)`` (per-group).
        zero_point: int32 (any integer dtype) or integer-valued float tensor shaped like ``scale``.
        quant_min, quant_max: integer range, ``1 <= quant_max - quant_min <= 65535``.
        axis: per-channel along this dim (negative allowed).
        group_size: per-group blocks along the last dim (per-token: ``group_size = input.shape[-1]``).
        out: optional output tensor (resized like ATen's ``out=``; not differentiable).

    Returns:
        A contiguous tensor of ``input``'s dtype. Its gradient w.r.t. ``input`` is the clipped
        straight-through estimator: the incoming gradient where the unclamped code lies in
        ``[quant_min, quant_max]``, zero elsewhere. ``scale``/``zero_point`` get no gradient.

    Raises:
        TypeError: unsupported dtypes. ValueError: shapes, devices, ranges, axis/group_size, and
        (CPU) non-positive/non-finite scales or zero points outside the range.

    Example:
        >>> x = torch.randn(8, 16)
        >>> s, z = choose_qparams(x, -128, 127, symmetric=True)
        >>> y = fake_quantize(x, s, z, -128, 127)
    """
    if out is not None:
        return torch.ops.qatkit.fake_quantize.out(
            input, scale, zero_point, quant_min, quant_max, axis, group_size, out=out
        )
    return torch.ops.qatkit.fake_quantize(input, scale, zero_point, quant_min, quant_max, axis, group_size)


def fake_quantize_learnable(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
    grad_factor: float = 1.0,
) -> torch.Tensor:
    """Fake quantization with a learned step size (LSQ) and optionally a learned zero point (LSQ+).

    Forward: ``fake_quantize(input, max(scale, eps), clamp(round(zero_point), quant_min, quant_max))``.
    With ``r = nearbyint(x / s)`` and the window ``[quant_min - z, quant_max - z]``, the gradients are
    (docs/papers.md §6.1-6.2, torch's zero-point convention):

    - input: the clipped straight-through estimator;
    - scale: ``r - x / s`` inside the window, ``quant_min - z`` below it, ``quant_max - z`` above it;
    - zero_point (only when it is a floating tensor): 0 inside, ``-s`` outside.

    The scale and zero-point gradients are summed to the qparams' shapes inside the backward kernel
    (no input-sized temporaries, no host sync) and multiplied by ``grad_factor``.

    Args:
        input, quant_min, quant_max, axis, group_size: as for :func:`fake_quantize`.
        scale: float32 learned step size(s), shaped by the granularity.
        zero_point: float tensor to learn it (LSQ+), or an integer tensor to keep it fixed.
        grad_factor: LSQ's gradient scale, ``lsq_grad_factor(...)`` or 1.0.

    Returns:
        The fake-quantized tensor (contiguous, input's dtype).

    Example:
        >>> w = torch.randn(64, 128, requires_grad=True)
        >>> s = torch.full((64,), 0.05, requires_grad=True)
        >>> y = fake_quantize_learnable(w, s, torch.zeros(64), -8, 7, axis=0,
        ...                             grad_factor=lsq_grad_factor(128, 7))
        >>> y.square().sum().backward()   # w.grad, s.grad
    """
    return torch.ops.qatkit.fake_quantize_learnable(
        input, scale, zero_point, quant_min, quant_max, axis, group_size, grad_factor
    )


def lsq_grad_factor(elements_per_scale: int, quant_max: int) -> float:
    """LSQ's step-size gradient scale ``g = 1 / sqrt(N * Q_P)`` (docs/papers.md §6.1).

    Args:
        elements_per_scale: N, the number of elements sharing one scale (weights: elements per
            channel or group; activations: elements per batch sharing the scale).
        quant_max: Q_P, the largest code.
    """
    if elements_per_scale <= 0 or quant_max <= 0:
        raise ValueError(
            f"lsq_grad_factor: elements_per_scale and quant_max must be positive, got {elements_per_scale}, {quant_max}"
        )
    return 1.0 / math.sqrt(elements_per_scale * quant_max)


def pact_quantize(input: torch.Tensor, alpha: torch.Tensor, quant_max: int) -> torch.Tensor:
    """PACT activation quantization (docs/papers.md §6.3): clip to ``[0, alpha]``, quantize unsigned.

    ``y = nearbyint(clip(x, 0, alpha) / s) * s`` with ``s = alpha / quant_max`` (computed as
    ``fake_quantize(x, alpha / quant_max, 0, 0, quant_max)``, bit for bit).

    Gradients (straight through the rounding): ``input`` where ``0 <= x < alpha``; ``alpha`` the
    sum of the incoming gradient over the clipped elements ``x >= alpha``.

    Args:
        input: floating tensor (typically a ReLU-style activation).
        alpha: float32 tensor with one element, the learned clipping level (> 0; checked on CPU).
        quant_max: largest code, ``2**bits - 1``.

    Example:
        >>> alpha = torch.tensor([6.0], requires_grad=True)
        >>> y = pact_quantize(torch.randn(8, 32), alpha, 15)   # 4-bit
    """
    return torch.ops.qatkit.pact_quantize(input, alpha, quant_max)


def quantize_per_token(
    input: torch.Tensor, quant_max: int = 127, *, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """BitNet b1.58 per-token activation quantization (docs/papers.md §7.2).

    ``s = max(max|x| over the last dim, 1e-5) / quant_max``,
    ``y = clamp(nearbyint(x / s), -quant_max - 1, quant_max) * s`` (computed as a per-group
    :func:`fake_quantize` with the whole last dim as the group). Gradient: the straight-through
    estimator with a constant scale (the incoming gradient, unchanged). ``out``: write into a
    preallocated tensor (resized like ATen's out= ops; not differentiable).

    Raises:
        ValueError: 0-d input, ``quant_max`` outside ``[1, 32767]``, or (CPU) NaN/Inf in the input.
    """
    if out is not None:
        return torch.ops.qatkit.quantize_per_token.out(input, quant_max, out=out)
    return torch.ops.qatkit.quantize_per_token(input, quant_max)


def quantize_per_tensor_dynamic(input: torch.Tensor, quant_max: int = 127) -> torch.Tensor:
    """:func:`quantize_per_token` with one absmax scale for the whole tensor."""
    return torch.ops.qatkit.quantize_per_tensor_dynamic(input, quant_max)


def ternarize(
    input: torch.Tensor, method: str = "absmean", axis: Optional[int] = None, *, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Ternary weights ``{-a, 0, +a}``, per tensor or per channel along ``axis``.

    - ``"absmean"`` (BitNet b1.58, docs/papers.md §7.2): ``gamma = max(mean|W|, 1e-5)``,
      ``y = clamp(nearbyint(W / gamma), -1, 1) * gamma``.
    - ``"twn"`` (TWN, docs/papers.md §5): ``delta = 0.7 * mean|W|``; ``a = mean(|W| over |W| > delta)``;
      ``y = sign(W) * a`` where ``|W| > delta``, else 0.

    Gradient: straight-through (identity) with the scales held constant, as in the papers'
    training code. ``out``: write into a preallocated tensor (not differentiable).

    Raises:
        ValueError: an unknown ``method`` (the message lists the valid ones), ``axis`` out of range,
            or (CPU, absmean) NaN/Inf weights.
    """
    if out is not None:
        return torch.ops.qatkit.ternarize.out(input, method, axis, out=out)
    return torch.ops.qatkit.ternarize(input, method, axis)


def binarize(
    input: torch.Tensor,
    scaling: str = "none",
    axis: Optional[int] = None,
    estimator: str = "clipped_ste",
    beta: float = 1.0,
    seed: Optional[torch.Tensor] = None,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Binary quantizer ``y = sign(x - center) * alpha`` with a choice of scaling and estimator.

    scaling:
        ``"none"`` (+-1), ``"mean_abs"`` (XNOR-Net: alpha = mean|W|, docs/papers.md §5), ``"bitnet"``
        (BitNet: ``Sign(W - mean W) * mean|W|`` with Sign(0) = -1, §7.1); per tensor, or per
        channel along ``axis``. Elsewhere sign(0) = +1. The means are float64 sums rounded to
        float32 (``torch.ops.qatkit._mean_abs`` / ``_mean_and_mean_abs``).
    estimator (gradient to the latent input; the scales are constants, as in the papers' code):
        ``"identity"`` (STE), ``"clipped_ste"`` (1 where ``|v| <= 1``), ``"approx_sign"``
        (Bi-Real Net: ``2 - 2|v|`` on ``|v| < 1``), ``"swish_sign"`` (BNN+'s SignSwish with ``beta``).
    seed:
        an int64 tensor with one element: stochastic BinaryConnect (§4), +1 with probability
        ``clamp((v + 1) / 2, 0, 1)``, drawn by Philox from (seed, element index) — reproducible,
        compile-safe and the same on CPU and CUDA.
    out:
        write into a preallocated tensor (resized like ATen's out= ops; not differentiable).

    Raises:
        ValueError: an unknown scaling or estimator (the message lists the valid ones), a bad axis,
            beta, or seed shape. TypeError: integer input or a non-int64 seed.
    """
    if out is not None:
        return torch.ops.qatkit.binarize.out(input, scaling, axis, estimator, beta, seed, out=out)
    return torch.ops.qatkit.binarize(input, scaling, axis, estimator, beta, seed)


def fused_observe_fake_quantize(
    input: torch.Tensor,
    running_min: torch.Tensor,
    running_max: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    observer_on: torch.Tensor,
    fake_quant_on: torch.Tensor,
    momentum: float = 0.01,
    moving_average: bool = True,
    quant_min: int = -128,
    quant_max: int = 127,
    symmetric: bool = False,
    axis: Optional[int] = None,
) -> torch.Tensor:
    """Observe, recompute qparams and fake-quantize in one op (the QAT activation quantizer).

    When ``observer_on`` is set, ``running_min`` / ``running_max`` are updated in place — by a
    moving average with ``momentum`` (a buffer still at +-inf takes the first observation) or, with
    ``moving_average=False``, by plain min/max — and ``scale`` / ``zero_point`` are recomputed in
    place with :func:`choose_qparams`' formulas. Then the input is fake-quantized when
    ``fake_quant_on`` is set, else returned unchanged (as a new tensor). The flags are one-element
    tensors read on the device: toggling them neither syncs nor recompiles a compiled model.
    While autograd's backward pass runs (activation checkpointing recomputing a forward, eager or
    in a compiled backward graph) nothing is observed: that batch was observed by the first
    forward, and the current qparams are the ones it quantized with.

    Args:
        running_min, running_max, scale: float32 buffers, one element per channel (``axis``) or one.
        zero_point: int32 buffer of the same size.
        observer_on, fake_quant_on: bool or integer tensors with one element.
        momentum: moving-average weight of the new observation, in ``[0, 1]``.

    Returns:
        The fake-quantized (or passed-through) input. Gradient: clipped STE when fake quantizing,
        identity otherwise.
    """
    return torch.ops.qatkit.fused_observe_fake_quantize(
        input,
        running_min,
        running_max,
        scale,
        zero_point,
        observer_on,
        fake_quant_on,
        momentum,
        moving_average,
        quant_min,
        quant_max,
        symmetric,
        axis,
    )


def choose_qparams(
    input: torch.Tensor,
    quant_min: int,
    quant_max: int,
    symmetric: bool,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point from the min/max of ``input`` (0 always inside the range).

    Symmetric: ``scale = max(|min|, |max|) / ((quant_max - quant_min) / 2)``, zero point 0 for a
    signed range, else ``(quant_min + quant_max + 1) // 2``. Asymmetric:
    ``scale = (max - min) / (quant_max - quant_min)``, ``zero_point = quant_min - round(min / scale)``
    clamped to the range, so real 0 is exactly representable. ``scale >= float32 eps``. The same
    float32 arithmetic as ``torch.ao.quantization.MinMaxObserver``.

    Args:
        input: floating tensor. On CPU it must be finite (NaN/Inf raise ValueError).
        quant_min, quant_max: integer range of the codes.
        symmetric: symmetric (zero point fixed) or asymmetric (affine) range.
        axis: per-channel along this dim. group_size: per-group along the last dim.

    Returns:
        ``(scale, zero_point)``: float32 and int32, shaped ``[1]`` (per-tensor), ``[size(axis)]``
        (per-channel) or ``input.shape[:-1] + (last // group_size,)`` (per-group). Not differentiable.

    Example:
        >>> s, z = choose_qparams(torch.randn(4, 64), -8, 7, symmetric=True, group_size=32)
        >>> s.shape
        torch.Size([4, 2])
    """
    return torch.ops.qatkit.choose_qparams(input, quant_min, quant_max, symmetric, axis, group_size)


def validate_qparams(scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int, quant_max: int) -> None:
    """Check qparam values on any device (one host sync), as the CPU kernels do on every call.

    CUDA kernels skip this check to stay sync-free; call it where qparams are created.

    Raises:
        ValueError: a scale that is not finite, positive and normal, or a zero point that is not an
            integer in ``[quant_min, quant_max]``.
    """
    s = scale.detach().float()
    z = zero_point.detach().float()
    bad_s = ~(torch.isfinite(s) & (s >= torch.finfo(torch.float32).tiny))
    if bool(bad_s.any()):
        i = int(bad_s.flatten().nonzero()[0])
        raise ValueError(
            f"scale must be positive, finite and at least {torch.finfo(torch.float32).tiny} "
            f"(float32 normal), got {s.flatten()[i].item()} at index {i}"
        )
    bad_z = (z != z.round()) | (z < quant_min) | (z > quant_max)
    if bool(bad_z.any()):
        i = int(bad_z.flatten().nonzero()[0])
        raise ValueError(
            f"zero_point must be an integer in [quant_min, quant_max] = [{quant_min}, {quant_max}], "
            f"got {z.flatten()[i].item()} at index {i}"
        )


def quantize_affine(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
    dtype: torch.dtype = torch.int8,
) -> torch.Tensor:
    """Integer codes ``clamp(nearbyint(x * (1 / s)) + z, quant_min, quant_max)`` in ``dtype``.

    Arguments, granularity and rounding are :func:`fake_quantize`'s, so
    ``dequantize_affine(quantize_affine(x, s, z, ...), s, z, ..., output_dtype=x.dtype)`` equals
    ``fake_quantize(x, s, z, ...)`` bit for bit. NaN codes as the zero point (integers have no NaN);
    +-Inf saturate. Not differentiable.

    Args:
        dtype: ``torch.int8`` (default), ``torch.uint8``, ``torch.int16`` or ``torch.int32``;
            ``[quant_min, quant_max]`` must fit it.

    Raises:
        TypeError / ValueError: as :func:`fake_quantize`, plus a range that does not fit ``dtype``.

    Example:
        >>> s, z = choose_qparams(w, -8, 7, symmetric=True, axis=0)
        >>> codes = quantize_affine(w, s, z, -8, 7, axis=0)          # int8 in [-8, 7]
    """
    return torch.ops.qatkit.quantize_affine(input, scale, zero_point, quant_min, quant_max, axis, group_size, dtype)


def dequantize_affine(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Floats ``(codes - z) * s`` from integer codes (float32 math; float64 for a float64 output).

    ``scale`` / ``zero_point`` are laid out over ``codes`` as :func:`fake_quantize` lays them over
    its input. Not differentiable: a backward through the output raises ``NotImplementedError``
    (:func:`fake_quantize_learnable` learns a scale).
    """
    return torch.ops.qatkit.dequantize_affine(codes, scale, zero_point, axis, group_size, output_dtype)


def ternary_codes(input: torch.Tensor, method: str = "absmean", axis: Optional[int] = None):
    """``(codes, scale)``: int8 codes in ``{-1, 0, 1}`` and float32 scales (one per channel along
    ``axis``, or one) with ``codes * scale == ternarize(input, method, axis)`` bit for bit (in the
    input's dtype). NaN codes as 0. Not differentiable: a backward through the scales raises
    ``NotImplementedError`` (:func:`ternarize` has the straight-through gradient)."""
    return torch.ops.qatkit.ternary_codes(input, method, axis)


def binary_codes(input: torch.Tensor, scaling: str = "mean_abs", axis: Optional[int] = None):
    """``(codes, scale)``: int8 codes in ``{-1, 1}`` and float32 scales (1 for ``scaling="none"``)
    with ``codes * scale == binarize(input, scaling, axis)`` (deterministic) bit for bit. NaN codes
    as 0. Not differentiable: a backward through the scales raises ``NotImplementedError``
    (:func:`binarize` has the straight-through gradient)."""
    return torch.ops.qatkit.binary_codes(input, scaling, axis)


def observer_update(
    input: torch.Tensor,
    running_min: torch.Tensor,
    running_max: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    observer_on: torch.Tensor,
    momentum: float = 0.01,
    moving_average: bool = True,
    quant_min: int = -128,
    quant_max: int = 127,
    symmetric: bool = False,
    axis: Optional[int] = None,
) -> None:
    """The observer half of :func:`fused_observe_fake_quantize` alone: when ``observer_on``, update
    ``running_min`` / ``running_max`` from ``input`` in place and recompute ``scale`` /
    ``zero_point`` into their buffers (no fake quantization, no gradient). Used by the QAT
    activation quantizers to feed globally all-reduced statistics under DDP."""
    torch.ops.qatkit._observer_update(
        input, running_min, running_max, scale, zero_point, observer_on, momentum, moving_average, quant_min,
        quant_max, symmetric, axis,
    )


def advance_step(step: torch.Tensor) -> torch.Tensor:
    """A stochastic quantizer's step counter (its Philox seed; int64, one element): add 1 in place
    and return a copy of the new value; inside a backward pass (activation checkpointing
    recomputing a forward, eager or compiled) return the current value unchanged, so the
    recomputation draws the bits its first run drew."""
    return torch.ops.qatkit._advance_step(step)


def histogram_update(rows: torch.Tensor, histogram: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
    """Add the counts of each row of ``rows`` ([C, N], float32 / float64), binned over that row's
    own range ``[lo[c], hi[c]]`` (float64 [C]), to ``histogram`` (float64 [C, bins], in place):
    the update of the histogram observers (python/qatkit/qat/histogram.py).

    The bin of x is torch.histc's: ``(x - lo) * bins / (hi - lo)`` in the data's dtype, truncated
    and clamped to ``[0, bins - 1]`` (the top edge counts in the last bin; values outside the range
    in the end bins — widen the range to cover the data first). On the CPU a NaN raises
    ValueError and leaves the histogram unchanged. Not differentiable.

    Example:
        >>> h = torch.zeros(1, 8, dtype=torch.float64)
        >>> histogram_update(torch.tensor([[0.0, 0.5, 1.0]]), h, torch.tensor([0.0]).double(), torch.tensor([1.0]).double())
        >>> h
        tensor([[1., 0., 0., 0., 1., 0., 0., 1.]], dtype=torch.float64)
    """
    torch.ops.qatkit._histogram_update(rows, histogram, lo, hi)


def linear_int8(
    input: torch.Tensor,
    weight: torch.Tensor,
    corr: torch.Tensor,
    out_scale: torch.Tensor,
    act_scale: float,
    act_zero_point: int,
    act_quant_min: int,
    act_quant_max: int,
    bias: Optional[torch.Tensor] = None,
    input_divisor: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Integer-exact Linear, inference only (docs/integer.md, "static" form).

    ``a = quantize_affine(input, act_scale, act_zero_point, act_quant_min, act_quant_max) - shift``
    (int8; ``shift`` = 128 for a [0, 255] range, else 0), ``y[..., n] = fp32(sum_k a[k] * weight[n, k]
    + corr[n]) * out_scale[n]`` with exact int32 sums, then ``+ bias[n]`` when a float32 ``bias`` is
    given (layers narrower than W8A8 add their bias after the requantization). ``corr = bias_q + (shift - act_zero_point) *
    weight.sum(1)`` (int32), precomputed by the caller (:mod:`qatkit.qat.integer` does).
    quantize_affine codes a NaN as the zero point, but the float layer gives NaN in every output
    whose sum reads one, so an input row holding a NaN (after ``input_divisor``) gives a NaN output
    row (docs/integer.md, "NaN inputs"); +-Inf saturate, as in fake quantization.

    Args:
        input: float32 ``[..., K]``.
        weight: int8 codes ``[N, K]`` in the narrow range [-127, 127] (the AVX2 kernel relies on it;
            the op does not scan the weight on every call), or their :func:`pack_int8_panel` layout
            (the same bits; faster on CPU, where the row layout sums each output horizontally).
            The panel pads K to a multiple of 4, so with it the op checks the input's K only to
            that: a caller with a panel weight checks K itself (the loaded layers do).
        corr: int32 ``[N]`` (N: the outputs, also with a panel weight); out_scale: float32 ``[N]``.
        input_divisor: optional float32 ``[K]``: the input is divided by it first, ``input /
            input_divisor`` as torch divides (SmoothQuant's smoothing inside the quantization pass;
            the same bits as dividing first, one tensor pass less).

    Raises:
        TypeError / ValueError: dtypes, shapes, devices, a non-8-bit activation range, a zero point
            outside it, a non-finite or non-positive ``act_scale``, an input_divisor that is not
            float32 ``[K]`` on the input's device.
    """
    return torch.ops.qatkit.linear_int8(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min,
                                        act_quant_max, bias, input_divisor)


def linear_w2a8(
    input: torch.Tensor,
    weight: torch.Tensor,
    corr: torch.Tensor,
    out_scale: torch.Tensor,
    act_scale: float,
    act_zero_point: int,
    act_quant_min: int,
    act_quant_max: int,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`linear_int8` with ternary weights packed 2 bits each in the W2A8 kernel layout
    (:func:`pack_ternary_t2`): uint8 ``[N, K_pad / 4]``, ``K_pad`` the input's K rounded up to a
    multiple of 128. Same ``corr`` and requantization; the same bits as :func:`linear_int8` on the
    unpacked codes, NaN rows included. The op checks the input's K only to that multiple of 128:
    the caller checks K itself (the loaded layers do)."""
    return torch.ops.qatkit.linear_w2a8(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min,
                                        act_quant_max, bias)


def conv2d_int8(
    input: torch.Tensor,
    weight: torch.Tensor,
    weight_bits: int,
    kernel_size,
    stride,
    padding,
    dilation,
    corr: torch.Tensor,
    out_scale: torch.Tensor,
    act_scale: float,
    act_zero_point: int,
    act_quant_min: int,
    act_quant_max: int,
    bias: Optional[torch.Tensor] = None,
    groups: int = 1,
    clamp_min: Optional[float] = None,
    clamp_max: Optional[float] = None,
) -> torch.Tensor:
    """A Conv2d on the integer kernels (docs/integer.md, "static" form; grouped and depthwise convs
    too: one GEMM per group): the NCHW float32 input quantized once per image, int8 patches (a
    zero-padded position holds the code of 0) times the weight flattened to ``[N, C/groups*kh*kw]``
    (``weight_bits`` 8: int8 codes, or for ``groups == 1`` their :func:`pack_int8_panel` layout, N then
    being ``corr``'s length; 2 / 1: packed by :func:`pack_ternary_t2` / :func:`pack_binary_b1`),
    with :func:`linear_int8`'s ``corr``, requantization and optional float bias. Returns float32
    ``[B, N, Ho, Wo]``; bit for bit the integer form of the conv. Outputs whose window (over their
    group's input channels) reads a NaN input are NaN, as in the float conv (docs/integer.md, "NaN
    inputs"). Inference only. The packed layouts
    pad ``C/groups*kh*kw`` (to 4, 128 or 32 codes), so the op checks the input's channels only to
    that: the caller checks them itself (the loaded layers do). ``clamp_min`` / ``clamp_max`` (``None``:
    no bound): a fused activation, ``torch.clamp(y, clamp_min, clamp_max)``'s values (NaN and -0.0
    kept) written by the op, as each image's output is still in cache: what
    :func:`qatkit.fuse_activations` sets on a loaded conv that an ``nn.ReLU`` (``clamp_min=0``),
    ``nn.ReLU6`` (0, 6) or ``nn.Hardtanh`` follows. The bounds are cast to float32 as
    ``torch.clamp`` casts them; NaN bounds or ``clamp_min > clamp_max`` raise ``ValueError``."""
    return torch.ops.qatkit.conv2d_int8(input, weight, weight_bits, list(kernel_size), list(stride), list(padding),
                                        list(dilation), corr, out_scale, act_scale, act_zero_point, act_quant_min,
                                        act_quant_max, bias, groups, clamp_min, clamp_max)


def linear_w1a8(
    input: torch.Tensor,
    weight: torch.Tensor,
    corr: torch.Tensor,
    out_scale: torch.Tensor,
    act_scale: float,
    act_zero_point: int,
    act_quant_min: int,
    act_quant_max: int,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`linear_int8` with binary weights, 1 bit each (:func:`pack_binary_b1`): uint8
    ``[N, K_pad / 8]``, ``K_pad`` the input's K rounded up to a multiple of 32, or its
    :func:`pack_binary_panel` layout (N then ``corr``'s length; the same bits, faster on CPU: the
    lookup-table kernel). Same ``corr`` and requantization; the same bits as :func:`linear_int8` on
    the unpacked codes, NaN rows included. The op checks the input's K only to that multiple of 32: the caller checks
    K itself (the loaded layers do)."""
    return torch.ops.qatkit.linear_w1a8(input, weight, corr, out_scale, act_scale, act_zero_point, act_quant_min,
                                        act_quant_max, bias)


def linear_w4_weight_only(
    input: torch.Tensor,
    weight: torch.Tensor,
    group_scale: torch.Tensor,
    group_size: int,
    group_zero: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Weight-only int4 Linear with float activations: ``weight`` in the W4 layout
    (:func:`pack_int4_w4`, uint8 ``[N, K / 2]``, or its panel layout :func:`pack_int4_panel`, N then
    ``group_scale``'s rows: what the loaders give) dequantized in registers as ``(q - group_zero) *
    group_scale`` (float32 ``[N, K / group_size]``; the bits of :func:`dequantize_affine`; symmetric
    without ``group_zero``), float32 FMAs against ``input`` (float32 ``[..., K]``), plus ``bias``.
    A float kernel: its summation order is its own, so it equals ``F.linear`` on the dequantized
    weight within docs/integer.md's bound, not bit for bit. ``group_size``: a multiple of 32 that
    divides K. With a panel weight, ``group_scale`` and ``group_zero`` may come in the panel's
    blocks (:func:`block_w4_scales`, ``[N / 16, K / group_size, 16]``, N a multiple of 16): the
    same bits, without the CPU kernel's per-call transpose of each block's scales (what the loaders
    give where N allows). Inference only."""
    return torch.ops.qatkit.linear_w4_weight_only(input, weight, group_scale, group_size, group_zero, bias)


def linear_w8_weight_only(
    input: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Weight-only int8 Linear (float activations; int8_weight_only): int8 codes ``[N, K]`` times a
    float32 scale per output channel (``weight_scale [N]``), each weight dequantized as
    ``float(q) * scale[n]`` (the bits of :func:`dequantize_affine`), float32 sums in the kernel's own
    order (the same on every CPU ISA; within ``K * 2^-24 * sum|x * w|`` of ``F.linear`` on the
    dequantized weight, docs/integer.md), plus ``bias``. Inference only.

    Raises:
        TypeError / ValueError: dtypes, shapes, devices.
    """
    return torch.ops.qatkit.linear_w8_weight_only(input, weight, weight_scale, bias)


def linear_dynamic_int8(
    input: torch.Tensor,
    weight: torch.Tensor,
    weight_bits: int,
    weight_scale: torch.Tensor,
    act_quant_max: int = 127,
    bias: Optional[torch.Tensor] = None,
    per_tensor: bool = False,
) -> torch.Tensor:
    """Linear with per-token dynamic int8 inputs (docs/integer.md, "row" form): BitLinear /
    bitnet_b158 (ternary weights), or int8 / binary weights with per-token activations. Each row of
    the float32 input ``[..., K]`` is quantized by its own absmax as :func:`quantize_per_token` does,
    ``s[m] = max(max_k |x[m, k]|, 1e-5) / act_quant_max`` (float32), to codes in
    ``[-act_quant_max - 1, act_quant_max]``; the exact int32 sums against the weight codes, then
    ``y = fp32(acc) * fp32(s[m] * weight_scale[n])``, plus ``bias`` (multiply, then add). Bit for bit
    the integer form of such a layer. ``per_tensor=True``: one scale for the whole input (its
    absmax, :func:`quantize_per_tensor_dynamic`'s). Inference only.

    ``weight_bits`` picks the weight layout, ``N`` is ``weight_scale``'s length:
    8: int8 codes ``[N, K]`` in [-127, 127] or :func:`pack_int8_panel`'s layout; 2:
    :func:`pack_ternary_t2`; 1: :func:`pack_binary_b1` or :func:`pack_binary_panel`.

    Raises:
        TypeError / ValueError: dtypes, shapes, devices, ``weight_bits`` not 8 / 2 / 1,
            ``act_quant_max`` outside [1, 127]; (CPU) a NaN or Inf in a row (per_tensor: in the input).
    """
    return torch.ops.qatkit.linear_dynamic_int8(input, weight, weight_bits, weight_scale, act_quant_max, bias,
                                                per_tensor)


def linear_w1a1(
    input: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """XNOR-Net Linear (binary weights and inputs; docs/integer.md, "row" form). The input (float32
    ``[B, ..., K]``) is binarized per sample along dim 0 exactly as
    ``binary_codes(input, "bitnet", 0)`` (codes in {-1, +1}, 0 for NaN; scale ``alpha[b]``); its
    bits XNOR the weight bits (:func:`pack_binary_b1`, uint8 ``[N, K_pad / 8]``) and a popcount
    gives the exact integer sum ``acc``; ``y = fp32(acc) * fp32(alpha[b] * weight_scale[n])``, plus
    ``bias``. Bit for bit the integer form of an xnor_w1a1 layer. Inference only. The weight pads
    K to a multiple of 32, so the op checks the input's K only to that: the caller checks K itself
    (the loaded layers do).

    Raises:
        TypeError / ValueError: dtypes, shapes (input needs a batch dim), devices.
    """
    return torch.ops.qatkit.linear_w1a1(input, weight, weight_scale, bias)


def conv2d_w1a1(
    input: torch.Tensor,
    weight: torch.Tensor,
    kernel_size,
    stride,
    padding,
    dilation,
    weight_scale: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    groups: int = 1,
    clamp_min: Optional[float] = None,
    clamp_max: Optional[float] = None,
) -> torch.Tensor:
    """A Conv2d (float32 ``[B, C, H, W]``, NCHW or channels_last) on :func:`linear_w1a1`'s
    arithmetic: the input binarized per image, patches of its codes against the weight flattened to
    ``[N, C/groups*kh*kw]`` and packed by :func:`pack_binary_b1`. Zero padding is code 0 (it has no
    bit: the kernel keeps padded positions out of the sum, as the float layer's zero padding of its
    binarized input). ``groups > 1`` (depthwise included) runs :func:`conv2d_int8`'s grouped kernels
    on the codes: the same exact sums and requantization. Returns float32 ``[B, N, Ho, Wo]`` in the
    input's memory format. Inference only. The packing pads ``C/groups*kh*kw`` to a multiple of 32,
    so the op checks the input's channels only to that: the caller checks them itself (the loaded
    layers do). ``clamp_min`` / ``clamp_max``: a fused activation, as :func:`conv2d_int8`'s."""
    return torch.ops.qatkit.conv2d_w1a1(input, weight, list(kernel_size), list(stride), list(padding), list(dilation),
                                        weight_scale, bias, groups, clamp_min, clamp_max)


def linear_w4a8(
    input: torch.Tensor,
    weight: torch.Tensor,
    group_scale: torch.Tensor,
    group_size: int,
    act_scale: float,
    act_zero_point: int,
    act_quant_min: int,
    act_quant_max: int,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """W4A8 Linear with a float32 weight scale per group of K (docs/integer.md, "static_group"): the
    input's codes times the 4-bit weight codes summed exactly per group (int32, the input
    zero-point term ``(code - act_zero_point)`` formed in the kernel from the weight codes it
    reads), combined in float64 in group order with ``group_scale`` (float32 ``[N, K / group_size]``),
    times ``act_scale``, then ``+ bias`` (float32). ``weight``: uint8 ``[N, K / 2]`` from
    :func:`pack_int4_w4`, or its :func:`pack_int4_panel` layout (the same bits, faster: the row
    layout is transposed in 16-row blocks on every call), with which ``group_scale`` may come in the
    panel's blocks (:func:`block_w4_scales`, ``[N / 16, K / group_size, 16]``, N a multiple of 16: the
    same bits, no per-call transpose of the scales; what ``qatkit.load`` gives a W4A8 Linear); K and
    ``group_size`` multiples of 32, ``group_size <= 2**17``. A row holding a NaN gives a NaN output
    row (docs/integer.md, "NaN inputs"). Inference only."""
    return torch.ops.qatkit.linear_w4a8(input, weight, group_scale, group_size, act_scale, act_zero_point,
                                        act_quant_min, act_quant_max, bias)


def conv2d_w4a8(
    input: torch.Tensor,
    weight: torch.Tensor,
    kernel_size,
    stride,
    padding,
    dilation,
    group_scale: torch.Tensor,
    group_size: int,
    act_scale: float,
    act_zero_point: int,
    act_quant_min: int,
    act_quant_max: int,
    bias: Optional[torch.Tensor] = None,
    groups: int = 1,
    clamp_min: Optional[float] = None,
    clamp_max: Optional[float] = None,
) -> torch.Tensor:
    """A Conv2d (float32 ``[B, C, H, W]``, NCHW or channels_last) on :func:`linear_w4a8`'s
    arithmetic (the "static_group" form of a conv): the input quantized once, its patch rows in
    PyTorch's ``(c, i, j)`` order, the order of the weight's groups of ``K = C / groups * kh * kw``
    (a zero-padded position holds the code of 0, as the integer simulation pads), times the weight
    flattened to ``[N, K]`` and packed by :func:`pack_int4_w4` (``groups == 1``: or
    :func:`pack_int4_panel`), ``group_scale`` float32 ``[N, K / group_size]``. Returns float32 ``[B,
    N, Ho, Wo]`` in the input's memory format; outputs whose window reads a NaN input are NaN
    (docs/integer.md, "NaN inputs"); ``clamp_min`` / ``clamp_max``: a fused activation, as
    :func:`conv2d_int8`'s. Inference only.

    Raises:
        TypeError / ValueError: dtypes, shapes, the geometry, groups, the activation range.
    """
    return torch.ops.qatkit.conv2d_w4a8(input, weight, list(kernel_size), list(stride), list(padding), list(dilation),
                                        group_scale, group_size, act_scale, act_zero_point, act_quant_min,
                                        act_quant_max, bias, groups, clamp_min, clamp_max)


def pack_int4_w4(codes: torch.Tensor) -> torch.Tensor:
    """Symmetric 4-bit codes ``[N, K]`` in [-8, 7] -> the W4 kernel layout: ``c = q + 8``; per 32-weight
    chunk, byte j holds k = j in its low nibble and k = j + 16 in its high nibble.

    Raises:
        ValueError: not 2-D, K not a multiple of 32, or a code outside [-8, 7].
    """
    if codes.dim() != 2 or codes.shape[1] % 32:
        raise ValueError(f"pack_int4_w4: codes must be 2-D [N, K] with K a multiple of 32, got {tuple(codes.shape)}")
    c = codes.to(torch.int16) + 8
    if c.numel() and (int(c.min()) < 0 or int(c.max()) > 15):
        raise ValueError("pack_int4_w4: codes must lie in [-8, 7]")
    n, k = c.shape
    c = c.reshape(n, k // 32, 2, 16)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).to(torch.uint8).reshape(n, k // 2).contiguous()


def pack_int4_panel(weight: torch.Tensor) -> torch.Tensor:
    """:func:`linear_w4a8`'s panel layout from :func:`pack_int4_w4`'s rows (uint8 ``[N, K / 2]``):
    uint8 ``[ceil(N / 16), ceil(K / 128), 1024]``, 16 rows interleaved per 64-byte step (one row per
    32-bit lane; kernels/common/qgemm_args.h, ``QGemmW4Args::panel``), so the kernel reads one
    sequential stream and transposes nothing per call. The results equal the row layout's bit for
    bit; padded rows and bytes are zero.

    Raises:
        TypeError / ValueError: not uint8, or not 2-D with K a multiple of 32.
    """
    return torch.ops.qatkit.pack_int4_panel(weight)


def block_w4_scales(scale: torch.Tensor) -> torch.Tensor:
    """Per-group scales (or zero points) ``[N, G]`` of a :func:`pack_int4_panel` weight in the panel's
    blocks, ``[N / 16, G, 16]`` (element ``[n // 16, g, n % 16]`` is ``scale[n, g]``), as
    :func:`linear_w4_weight_only` and :func:`linear_w4a8` take them: one 16-lane vector per block
    and group, read as it is.

    Raises:
        ValueError: not 2-D, or N not a multiple of 16.
    """
    if scale.dim() != 2 or scale.shape[0] % 16:
        raise ValueError(f"block_w4_scales: scale must be 2-D [N, G] with N a multiple of 16, got shape "
                         f"{tuple(scale.shape)}")
    n, g = scale.shape
    return scale.reshape(n // 16, 16, g).transpose(1, 2).contiguous()


def pack_int8_panel(weight: torch.Tensor) -> torch.Tensor:
    """:func:`linear_int8`'s panel layout from int8 codes ``[N, K]`` (narrow range [-127, 127]): uint8
    codes ``w + 128`` in ``NB = ceil(N / 16)`` blocks of ``[ceil(K / 4), 64]``, 16 rows x 4
    consecutive k per 64-byte step (one row per 32-bit lane; kernels/common/qgemm_args.h,
    ``QGemmArgs::panel``), so the CPU kernel's ``vpdpbusd`` of one step and four broadcast
    activations adds 16 rows' products into 16 lanes with no horizontal sums; padding (rows past N,
    k past K) holds ``w = 0``. Then ``X`` more blocks hold each block's split record (its pairs of
    consecutive codes that one sign and ``|w0| + |w1| > 128`` make unsafe for ``u = a + 128`` in
    ``vpmaddubsw``, with their residuals), which the AVX2 kernel without VNNI uses to run two
    multiply uops per 32 products instead of three (docs/integer.md, "W8A8 without VNNI: the split
    form"): shape ``[NB + X, ceil(K / 4), 64]``. The kernels also take the ``NB`` blocks alone (the
    sign trick everywhere). The results equal the row layout's bit for bit.

    Raises:
        TypeError / ValueError: not int8, not 2-D, or ``K >= 2**24``.
    """
    return torch.ops.qatkit.pack_int8_panel(weight)


def pack_binary_panel(weight: torch.Tensor) -> torch.Tensor:
    """:func:`linear_w1a8`'s panel layout from :func:`pack_binary_b1`'s rows (uint8 ``[N, K_pad / 8]``):
    uint8 ``[ceil(N / 32), K_pad / 8, 32]``, the row bytes transposed in blocks of 32 rows (zero rows
    past N; kernels/common/qgemm_args.h, ``QGemmPackedArgs::panel``), so the CPU kernel looks up 32
    rows' partial sums per byte shuffle from tables of the activations (docs/integer.md, "binary
    lookup tables"). The results equal the row layout's bit for bit. Conv2d keeps the row layout.

    Raises:
        TypeError / ValueError: not uint8, or not 2-D with K_pad a multiple of 32.
    """
    return torch.ops.qatkit.pack_binary_panel(weight)


def pack_binary_b1(codes: torch.Tensor) -> torch.Tensor:
    """Binary codes ``[N, K]`` in {-1, 1} -> the W1A8 kernel layout: bit ``k % 8`` of byte ``k / 8``
    is 1 for +1 (the file's 1-bit packing), K padded to a multiple of 32 with 0 bits.

    Raises:
        ValueError: not 2-D, or a code outside {-1, 1}.
    """
    if codes.dim() != 2:
        raise ValueError(f"pack_binary_b1: codes must be 2-D [N, K], got shape {tuple(codes.shape)}")
    if codes.numel() and not bool(((codes == 1) | (codes == -1)).all()):
        raise ValueError("pack_binary_b1: codes must lie in {-1, 1}")
    n, k = codes.shape
    kp = (k + 31) // 32 * 32
    bits = torch.cat([(codes > 0).to(torch.int32), torch.zeros(n, kp - k, dtype=torch.int32, device=codes.device)], 1)
    bits = bits.reshape(n, kp // 8, 8) << torch.arange(8, dtype=torch.int32, device=codes.device)
    return bits.sum(2).to(torch.uint8).contiguous()


def pack_ternary_t2(codes: torch.Tensor) -> torch.Tensor:
    """Ternary codes ``[N, K]`` in {-1, 0, 1} -> the W2A8 kernel layout (kernels/common/qgemm_args.h,
    QGemmPackedArgs): ``c = w + 1``, K padded to a multiple of 128 with c = 1, per 128-weight block byte
    j holding the codes of k = j, j + 32, j + 64, j + 96 in bits 0-1, 2-3, 4-5, 6-7.

    Raises:
        ValueError: not 2-D, or a code outside {-1, 0, 1}.
    """
    if codes.dim() != 2:
        raise ValueError(f"pack_ternary_t2: codes must be 2-D [N, K], got shape {tuple(codes.shape)}")
    c = codes.to(torch.int16) + 1
    if c.numel() and (int(c.min()) < 0 or int(c.max()) > 2):
        raise ValueError("pack_ternary_t2: codes must lie in {-1, 0, 1}")
    n, k = c.shape
    kp = (k + 127) // 128 * 128
    c = torch.cat([c, c.new_ones(n, kp - k)], 1).reshape(n, kp // 128, 4, 32)
    packed = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)
    return packed.to(torch.uint8).reshape(n, kp // 4).contiguous()


def pack_weights(codes: torch.Tensor, bits: int, offset: int = 0, packing: str = "offset") -> torch.Tensor:
    """Pack integer weight codes ``[N, K]`` into bytes ``[N, row_bytes]`` (uint8), rows
    independent, low bits first along K (docs/format.md).

    Args:
        codes: int8 / uint8 / int16 / int32 / int64, 2-d (conv weights flattened to ``[out, in * kh * kw]``).
        bits: 1..16. ``packing="offset"`` stores ``code + offset`` in ``bits`` bits (bits 9..16: a
            little-endian uint16 per code), so int4 symmetric codes use ``offset=8`` (q + 8, even k in
            the low nibble) and ternary codes ``bits=2, offset=1`` (0 / 1 / 2 for -1 / 0 / +1).
        packing: ``"offset"``, ``"sign"`` (binary codes -1 / +1, 1 bit, 1 = +1) or ``"base3"``
            (ternary, five codes per byte: ``sum_j (c_j + 1) * 3**j``, ``bits=2``).

    Returns:
        uint8 ``[N, ceil(K * bits / 8)]`` (``2 K`` above 8 bits, ``ceil(K / 5)`` for base3).

    Raises:
        ValueError: a code that does not fit (CPU), or an invalid bits / offset / packing.

    Example:
        >>> pack_weights(torch.tensor([[-8, 7, 0]], dtype=torch.int8), 4, offset=8)
        tensor([[240,   8]], dtype=torch.uint8)
    """
    return torch.ops.qatkit.pack_weights(codes, bits, offset, packing)


def unpack_weights(packed: torch.Tensor, bits: int, k: int, offset: int = 0, packing: str = "offset") -> torch.Tensor:
    """The inverse of :func:`pack_weights` for rows of ``k`` codes: ``[N, k]`` in the narrowest
    signed dtype holding ``[-offset, 2**bits - 1 - offset]`` (int8, int16 or int32). Raises
    ValueError when ``packed`` has the wrong number of bytes per row."""
    return torch.ops.qatkit.unpack_weights(packed, bits, k, offset, packing)
