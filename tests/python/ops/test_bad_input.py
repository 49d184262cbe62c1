"""Every public entry point rejects bad input with an error naming the argument, what was
expected and what came. One table row per case: (entry point, arguments, error type, fragment)."""

import pytest
import torch

from qatkit import ops

X = torch.randn(8, 6)
S1 = torch.tensor([0.1])
Z1 = torch.tensor([0], dtype=torch.int32)
S8 = torch.full((8,), 0.1)
Z8 = torch.zeros(8, dtype=torch.int32)
FQ = ops.fake_quantize
CQ = ops.choose_qparams
RAW = torch.ops.qatkit

CASES = [
    # fake_quantize: dtypes
    (FQ, (X.int(), S1, Z1, -8, 7), {}, TypeError, "input must be float32, float64, float16 or bfloat16, got Int"),
    (FQ, (X > 0, S1, Z1, -8, 7), {}, TypeError, "input must be float32, float64, float16 or bfloat16, got Bool"),
    (FQ, (X, S1.double(), Z1, -8, 7), {}, TypeError, "scale must be float32, got Double"),
    (
        FQ,
        (X, S1, Z1.bool(), -8, 7),
        {},
        TypeError,
        "zero_point must be an integer or integer-valued float tensor, got Bool",
    ),
    # integer arguments
    (FQ, (X, S1, Z1, 7, 7), {}, ValueError, "quant_min must be less than quant_max, got quant_min=7 quant_max=7"),
    (FQ, (X, S1, Z1, 0, 65536), {}, ValueError, "quant_max - quant_min must be at most 65535 (16 bits), got 65536"),
    (FQ, (X, S1, Z1, -(2**25), -(2**25) + 10), {}, ValueError, "must lie in [-(2^24 - 1), 2^24 - 1]"),
    (FQ, (X, S8, Z8, -8, 7, 0, 2), {}, ValueError, "give axis (per-channel) or group_size (per-group), not both"),
    (FQ, (X, S8, Z8, -8, 7, 2), {}, ValueError, "axis must be in [-2, 2) for a 2-d input, got 2"),
    (FQ, (X, S8, Z8, -8, 7, -3), {}, ValueError, "axis must be in [-2, 2) for a 2-d input, got -3"),
    (FQ, (torch.tensor(1.0), S1, Z1, -8, 7, 0), {}, ValueError, "axis must be in [0, 0) for a 0-d input, got 0"),
    (FQ, (X, S8, Z8, -8, 7, None, 0), {}, ValueError, "group_size must be positive, got 0"),
    (FQ, (X, S8, Z8, -8, 7, None, 4), {}, ValueError, "group_size must divide the last dim of input (6), got 4"),
    (FQ, (torch.tensor(1.0), S1, Z1, -8, 7, None, 1), {}, ValueError, "group_size needs an input with at least 1 dim"),
    # shapes
    (FQ, (X, S8, Z8, -8, 7), {}, ValueError, "per-tensor scale must have 1 element, got 8"),
    (FQ, (X, S1, Z1, -8, 7, 0), {}, ValueError, "scale must have 8 elements (size of dim 0 of input), got 1"),
    (
        FQ,
        (X, torch.full((8, 3), 0.1), torch.zeros(8, 3, dtype=torch.int32), -8, 7, None, 3),
        {},
        ValueError,
        "scale must have shape [8, 2] (input.shape[:-1] + [last_dim / group_size]), got [8, 3]",
    ),
    (
        FQ,
        (X, S8, torch.zeros(4, dtype=torch.int32), -8, 7, 0),
        {},
        ValueError,
        "zero_point must have as many elements as scale (8), got 4",
    ),
    # values (checked on CPU)
    (FQ, (X, torch.tensor([0.0]), Z1, -8, 7), {}, ValueError, "scale must be positive, finite and at least"),
    (FQ, (X, torch.tensor([-1.0]), Z1, -8, 7), {}, ValueError, "got -1 at index 0"),
    (FQ, (X, torch.tensor([float("nan")]), Z1, -8, 7), {}, ValueError, "scale must be positive, finite"),
    (FQ, (X, torch.tensor([float("inf")]), Z1, -8, 7), {}, ValueError, "scale must be positive, finite"),
    (FQ, (X, torch.tensor([1e-40]), Z1, -8, 7), {}, ValueError, "(float32 normal)"),
    (
        FQ,
        (X, S1, torch.tensor([9], dtype=torch.int32), -8, 7),
        {},
        ValueError,
        "zero_point must be an integer in [quant_min, quant_max] = [-8, 7], got 9 at index 0",
    ),
    (
        FQ,
        (X, S1, torch.tensor([0.5]), -8, 7),
        {},
        ValueError,
        "zero_point must be an integer in [quant_min, quant_max]",
    ),
    # devices (meta stands in for another device on a CPU-only machine)
    (FQ, (X, S1.to("meta"), Z1, -8, 7), {}, ValueError, "scale must be on input's device cpu, got meta"),
    (FQ, (X, S1, Z1.to("meta"), -8, 7), {}, ValueError, "zero_point must be on input's device cpu, got meta"),
    # out=
    (
        FQ,
        (X, S1, Z1, -8, 7),
        {"out": torch.empty(8, 6, dtype=torch.float16)},
        TypeError,
        "out must have input's dtype Float, got Half",
    ),
    (
        FQ,
        (X, S1, Z1, -8, 7),
        {"out": torch.empty(8, 6, device="meta")},
        ValueError,
        "out must be on input's device cpu, got meta",
    ),
    # backward op
    (
        RAW._fake_quantize_backward,
        (X, torch.zeros(5, dtype=torch.uint8)),
        {},
        ValueError,
        "mask must be 1-d with 6 bytes (ceil(grad.numel() / 8)), got shape [5]",
    ),
    (
        RAW._fake_quantize_backward,
        (X, torch.zeros(6, dtype=torch.int32)),
        {},
        TypeError,
        "mask must be uint8 (a bit mask), got Int",
    ),
    (
        RAW._fake_quantize_backward,
        (X.int(), torch.zeros(6, dtype=torch.uint8)),
        {},
        TypeError,
        "grad must be float32, float64, float16 or bfloat16, got Int",
    ),
    # choose_qparams
    (CQ, (X.int(), -8, 7, True), {}, TypeError, "choose_qparams: input must be float32, float64, float16 or bfloat16"),
    (CQ, (X, 7, -8, True), {}, ValueError, "choose_qparams: quant_min must be less than quant_max"),
    (CQ, (X, 0, 70000, True), {}, ValueError, "choose_qparams: quant_max - quant_min must be at most 65535"),
    (CQ, (X, -8, 7, True, 0, 2), {}, ValueError, "choose_qparams: give axis (per-channel) or group_size"),
    (CQ, (X, -8, 7, True, 5), {}, ValueError, "choose_qparams: axis must be in [-2, 2) for a 2-d input, got 5"),
    (
        CQ,
        (X, -8, 7, True, None, 4),
        {},
        ValueError,
        "choose_qparams: group_size must divide the last dim of input (6), got 4",
    ),
    (CQ, (X, -8, 7, True, None, -1), {}, ValueError, "choose_qparams: group_size must be positive, got -1"),
    (CQ, (torch.tensor([1.0, float("nan")]), -8, 7, True), {}, ValueError, "choose_qparams: input must be finite"),
    # validate_qparams (the Python-side check for CUDA qparams)
    (ops.validate_qparams, (torch.tensor([0.0]), Z1, -8, 7), {}, ValueError, "scale must be positive, finite"),
    (ops.validate_qparams, (S1, torch.tensor([100]), -8, 7), {}, ValueError, "zero_point must be an integer in"),
]


@pytest.mark.parametrize("fn,args,kwargs,exc,fragment", CASES, ids=[c[4][:60] for c in CASES])
def test_bad_input_raises_named_error(fn, args, kwargs, exc, fragment):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert fragment in str(info.value), str(info.value)


def test_meta_kernels_raise_the_same_errors():
    xm = torch.empty(8, 6, device="meta")
    with pytest.raises(ValueError, match=r"scale must have 8 elements \(size of dim 0 of input\), got 1"):
        RAW.fake_quantize(xm, S1.to("meta"), Z1.to("meta"), -8, 7, 0, None)
    with pytest.raises(ValueError, match="quant_min must be less than quant_max"):
        RAW.choose_qparams(xm, 3, 3, True, None, None)


def test_validate_qparams_accepts_good_values():
    ops.validate_qparams(S8, Z8, -8, 7)
