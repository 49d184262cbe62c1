"""Sample-input factory for the fake-quantize ops: odd and empty shapes, non-contiguous inputs,
every dtype, every granularity, bit widths 2..16 signed and unsigned."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator, Optional

import torch

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclasses.dataclass
class Sample:
    input: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    quant_min: int
    quant_max: int
    axis: Optional[int] = None
    group_size: Optional[int] = None

    def args(self):
        return (self.input, self.scale, self.zero_point, self.quant_min, self.quant_max, self.axis, self.group_size)

    def __repr__(self):
        return (
            f"Sample(shape={tuple(self.input.shape)}, dtype={self.input.dtype}, "
            f"contiguous={self.input.is_contiguous()}, "
            f"range=[{self.quant_min},{self.quant_max}], axis={self.axis}, group_size={self.group_size})"
        )


def qrange(bits: int, signed: bool):
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def make_qparams(x: torch.Tensor, qmin: int, qmax: int, shape, gen: torch.Generator, symmetric: bool):
    """Scales that make roughly 5 % of elements clip, and zero points anywhere in range."""
    amax = x.detach().abs().amax().float().clamp(min=1e-3) if x.numel() else torch.tensor(1.0)
    base = amax / ((qmax - qmin) / 2)
    scale = base * (0.6 + 0.8 * torch.rand(shape, generator=gen))
    if symmetric:
        zp = torch.full(shape, 0 if qmin < 0 else (qmin + qmax + 1) // 2, dtype=torch.int32)
    else:
        zp = torch.randint(qmin, qmax + 1, shape, generator=gen, dtype=torch.int32)
    return scale.float().contiguous(), zp


def _noncontig(x: torch.Tensor) -> torch.Tensor:
    """The same values with non-contiguous strides (transposed copy, then transposed back)."""
    if x.dim() < 2:
        return torch.stack([x, x], dim=-1)[..., 0]
    return x.transpose(0, 1).contiguous().transpose(0, 1)


def sample_inputs(device: str = "cpu", dtypes=DTYPES, limit: Optional[int] = None, seed: int = 0) -> Iterator[Sample]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(), (1,), (7,), (3, 5), (4, 6, 10), (2, 3, 4, 8), (0, 4), (5, 0), (33, 17)]
    bit_cases = [(2, True), (3, False), (4, True), (8, True), (8, False), (12, False), (16, True), (16, False)]
    count = 0
    for i, (shape, dtype) in enumerate(itertools.product(shapes, dtypes)):
        bits, signed = bit_cases[i % len(bit_cases)]
        qmin, qmax = qrange(bits, signed)
        x = (torch.randn(shape, generator=gen) * 3).to(dtype)
        variants = [x]
        if len(shape) >= 2 and 0 not in shape:
            variants.append(_noncontig(x))
        for v in variants:
            v = v.to(device)
            sym = i % 2 == 0
            # per-tensor
            s, z = make_qparams(v, qmin, qmax, (1,), gen, sym)
            yield Sample(v, s.to(device), z.to(device), qmin, qmax)
            if v.dim() >= 1:
                axis = -1 if i % 3 == 0 else 0
                s, z = make_qparams(v, qmin, qmax, (v.shape[axis],), gen, sym)
                yield Sample(v, s.to(device), z.to(device), qmin, qmax, axis=axis)
                last = v.shape[-1]
                for gs in sorted({g for g in (1, 2, 4, last) if g > 0 and last % g == 0}):
                    s, z = make_qparams(v, qmin, qmax, (*v.shape[:-1], last // gs), gen, sym)
                    yield Sample(v, s.to(device), z.to(device), qmin, qmax, group_size=gs)
            count += 1
            if limit is not None and count >= limit:
                return


def w4_weight_only_case(M: int, N: int, K: int, group_size: int, zero: bool, seed: int) -> dict:
    """One ``linear_w4_weight_only`` case: float32 input ``x [M, K]``, 4-bit codes ``q [N, K]`` in
    [-8, 7], per-group scales ``s [N, K / group_size]`` in [1e-3, 0.101), integer zero points ``z``
    in [-3, 3] (None when not ``zero``), bias ``b [N]``, all from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    q = torch.randint(-8, 8, (N, K), dtype=torch.int8, generator=g)
    s = torch.rand(N, K // group_size, generator=g) * 0.1 + 1e-3
    z = torch.randint(-3, 4, (N, K // group_size), generator=g).float() if zero else None
    b = torch.randn(N, generator=g)
    return {"x": x, "q": q, "s": s, "z": z, "b": b}


def conv_int8_case(bits: int, N: int, K: int, groups: int, g: torch.Generator) -> dict:
    """Weight operands of one ``conv2d_int8`` case with the act qparams (scale 0.04, zero point 9,
    range [0, 255]): codes ``w [N, K]`` (int8 in [-127, 127], ternary or binary), ``layouts`` (the
    packed weights the kernels take: int8 rows zero-padded to 32 and, for ``groups == 1``, the panel;
    ``pack_ternary_t2``; ``pack_binary_b1``), ``corr`` (the zero-point term plus noise), ``scale``,
    ``bias`` and ``act`` ``(s, zp, qmin, qmax)``, drawn from ``g``."""
    import torch.nn.functional as F

    from .. import ops

    if bits == 8:
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        layouts = [F.pad(w, (0, -K % 32)).contiguous()] + ([ops.pack_int8_panel(w)] if groups == 1 else [])
    elif bits == 2:
        w = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=g)
        layouts = [ops.pack_ternary_t2(w)]
    else:
        w = (torch.randint(0, 2, (N, K), generator=g) * 2 - 1).to(torch.int8)
        layouts = [ops.pack_binary_b1(w)]
    s, zp, qmin, qmax = 0.04, 9, 0, 255
    corr = (torch.randint(-300, 300, (N,), generator=g) + (128 - zp) * w.long().sum(1)).int()
    scale, bias = torch.rand(N, generator=g) * 1e-2, torch.randn(N, generator=g)
    return {"w": w, "layouts": layouts, "corr": corr, "scale": scale, "bias": bias, "act": (s, zp, qmin, qmax)}
