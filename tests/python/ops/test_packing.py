"""pack_weights / unpack_weights (docs/format.md): the bytes equal a slow bit-by-bit reference
written from the format's definition, round trips are exact for every width, wrong input is
refused with its name, and the ops pass opcheck."""

import pytest
import torch

from qatkit import ops


def reference_pack(codes, bits, offset, packing):
    """The format's definition, one code at a time."""
    rows = []
    for row in codes.tolist():
        if packing == "base3":
            out = [0] * ((len(row) + 4) // 5)
            for k, c in enumerate(row):
                out[k // 5] += (c + 1) * 3 ** (k % 5)
        elif bits > 8:
            out = []
            for c in row:
                v = c + offset
                out += [v & 255, v >> 8]
        else:
            out = [0] * ((len(row) * bits + 7) // 8)
            for k, c in enumerate(row):
                v = (1 if c > 0 else 0) if packing == "sign" else c + offset
                for b in range(bits):
                    pos = k * bits + b
                    out[pos // 8] |= ((v >> b) & 1) << (pos % 8)
        rows.append(out)
    return torch.tensor(rows, dtype=torch.uint8).reshape(codes.shape[0], -1)


CASES = [(b, (1 << b) // 2, "offset") for b in range(2, 17)] + [(1, 0, "sign"), (2, 1, "offset"), (2, 1, "base3"),
                                                                 (4, 0, "offset"), (8, 0, "offset")]


def codes_for(bits, offset, packing, shape, seed):
    g = torch.Generator().manual_seed(seed)
    if packing in ("sign", "base3") or (bits, offset) == (2, 1):
        lo, hi = -1, 1
    else:
        lo, hi = -offset, (1 << bits) - 1 - offset
    c = torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int32)
    if packing == "sign":
        c = torch.where(c == 0, torch.ones_like(c), c)
    c[0, : min(2, shape[1])] = torch.tensor([lo, hi])[: min(2, shape[1])]  # both ends present
    return c


@pytest.mark.parametrize("bits,offset,packing", CASES, ids=[f"{b}-{o}-{p}" for b, o, p in CASES])
@pytest.mark.parametrize("k", [1, 5, 7, 8, 33, 256])
def test_bytes_equal_the_reference_and_round_trip(bits, offset, packing, k):
    codes = codes_for(bits, offset, packing, (3, k), seed=bits * 1000 + k)
    small = torch.uint8 if int(codes.min()) >= 0 and int(codes.max()) > 127 else torch.int8
    for dtype in ([small, torch.int32, torch.int64] if bits <= 8 else [torch.int16, torch.int32]):
        packed = ops.pack_weights(codes.to(dtype), bits, offset, packing)
        assert packed.dtype == torch.uint8
        assert torch.equal(packed, reference_pack(codes, bits, offset, packing))
        back = ops.unpack_weights(packed, bits, k, offset, packing)
        lo, hi = int(codes.min()), int(codes.max())
        want = torch.int8 if -offset >= -128 and (1 << bits) - 1 - offset <= 127 else torch.int16
        want = want if bits < 16 or offset > 0 else torch.int32
        assert back.dtype == want and lo >= torch.iinfo(want).min and hi <= torch.iinfo(want).max
        assert torch.equal(back.int(), codes)


def test_int4_layout_named_in_the_format():
    # symmetric int4: q + 8 in a nibble, even k in the low nibble
    assert ops.pack_weights(torch.tensor([[-8, 7, 0, -1]], dtype=torch.int8), 4, offset=8).tolist() == [[0xF0, 0x78]]
    # ternary 2-bit: 0 / 1 / 2 for -1 / 0 / +1, four per byte, first code in the low bits
    assert ops.pack_weights(torch.tensor([[-1, 0, 1, 1]], dtype=torch.int8), 2, offset=1).tolist() == [[0b10100100]]
    # binary: 1 bit per weight, 1 = +1
    assert ops.pack_weights(torch.tensor([[1, -1, -1, 1, 1, 1, -1, -1, 1]]), 1, packing="sign").tolist() == [[0x39, 1]]
    # base-3: five ternary codes per byte
    assert ops.pack_weights(torch.tensor([[1, 1, 1, 1, 1]]), 2, packing="base3").tolist() == [[242]]


def test_bad_input_names_the_argument():
    c = torch.zeros(2, 4, dtype=torch.int8)
    cases = [
        (lambda: ops.pack_weights(torch.tensor([[9, 0]], dtype=torch.int8), 4, 8), ValueError, r"codes must lie in \[-8, 7\]"),
        (lambda: ops.pack_weights(torch.tensor([[1, 0]]), 1, packing="sign"), ValueError, "got a 0"),
        (lambda: ops.pack_weights(c, 0), ValueError, r"bits must be in \[1, 16\]"),
        (lambda: ops.pack_weights(c, 4, 16), ValueError, "offset must be in"),
        (lambda: ops.pack_weights(c, 4, 8, "zigzag"), ValueError, "packing must be 'offset', 'sign' or 'base3'"),
        (lambda: ops.pack_weights(c, 4, 0, "base3"), ValueError, "'base3' is for ternary codes"),
        (lambda: ops.pack_weights(c.float(), 4, 8), TypeError, "codes must be int8, uint8, int16, int32 or int64"),
        (lambda: ops.pack_weights(c[0], 4, 8), ValueError, "codes must be 2-d"),
        (lambda: ops.unpack_weights(torch.zeros(2, 3, dtype=torch.uint8), 4, 8, 8), ValueError, "take 4 bytes per row, got 3"),
        (lambda: ops.unpack_weights(torch.zeros(2, 4, dtype=torch.int8), 4, 8, 8), TypeError, "packed must be uint8"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()


@pytest.mark.parametrize("bits,offset,packing", [(4, 8, "offset"), (2, 1, "base3"), (1, 0, "sign"), (12, 2048, "offset")])
def test_opcheck(bits, offset, packing):
    codes = codes_for(bits, offset, packing, (4, 13), seed=1).to(torch.int16 if bits > 8 else torch.int8)
    torch.library.opcheck(torch.ops.qatkit.pack_weights.default, (codes, bits, offset, packing))
    packed = ops.pack_weights(codes, bits, offset, packing)
    torch.library.opcheck(torch.ops.qatkit.unpack_weights.default, (packed, bits, 13, offset, packing))


COMPOSITE = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)


@pytest.mark.parametrize("bits,offset,packing", CASES, ids=[f"{b}-{o}-{p}" for b, o, p in CASES])
def test_cpu_kernels_equal_the_device_generic_composite(bits, offset, packing):
    """CUDA and Meta run the composite; the CPU has its own loops: the same bytes and codes."""
    codes = codes_for(bits, offset, packing, (4, 29), seed=bits + 7).to(torch.int32)
    packed = ops.pack_weights(codes, bits, offset, packing)
    assert torch.equal(torch.ops.qatkit.pack_weights.default.redispatch(COMPOSITE, codes, bits, offset, packing), packed)
    a = ops.unpack_weights(packed, bits, 29, offset, packing)
    b = torch.ops.qatkit.unpack_weights.default.redispatch(COMPOSITE, packed, bits, 29, offset, packing)
    assert a.dtype == b.dtype and torch.equal(a, b)
