"""Thread safety and determinism: every op called concurrently from 8 Python threads gives the same
bits as a serial call; results are identical at torch.set_num_threads(1) and (2) and on the
baseline and AVX2 CPU paths."""

import threading

import pytest
import torch

import qatkit
from qatkit import ops


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(67, 129, generator=g) * 3
    s = torch.rand(67, generator=g) * 0.05 + 0.01
    z = torch.randint(-3, 3, (67,), generator=g, dtype=torch.int32)
    return x, s, z


def _grad_of(fn, x, *params):
    xs = x.clone().requires_grad_()
    ps = [p.clone().requires_grad_() for p in params]
    y = fn(xs, *ps)
    y.backward(torch.ones_like(y) * 0.5 + xs.detach().sin())
    return [y.detach(), xs.grad] + [p.grad for p in ps]


def _cases():
    x, s, z = _inputs()
    sg, zg = ops.choose_qparams(x, -8, 7, True, group_size=43)
    g = torch.Generator().manual_seed(1)
    w8 = ops.pack_int8_panel(torch.randint(-127, 128, (80, 129), dtype=torch.int8, generator=g))
    c8, s8 = torch.randint(-999, 999, (80,), dtype=torch.int32, generator=g), torch.rand(80, generator=g) * 1e-3
    xw = torch.randn(40, 128, generator=g)
    w4 = ops.pack_int4_panel(ops.pack_int4_w4(torch.randint(-8, 8, (48, 128), dtype=torch.int8, generator=g)))
    s4, b4 = torch.rand(48, 4, generator=g) * 0.1 + 1e-3, torch.randn(48, generator=g)
    return {
        "fake_quantize per-channel": lambda: _grad_of(lambda t: ops.fake_quantize(t, s, z, -128, 127, axis=0), x),
        "fake_quantize per-group": lambda: _grad_of(lambda t: ops.fake_quantize(t, sg, zg, -8, 7, group_size=43), x),
        "fake_quantize_learnable": lambda: _grad_of(
            lambda t, sc, zp: ops.fake_quantize_learnable(t, sc, zp, -128, 127, axis=0), x, s, z.float()
        ),
        "pact_quantize": lambda: _grad_of(lambda t, a: ops.pact_quantize(t, a, 15), x.abs(), torch.tensor([2.0])),
        "binarize bitnet": lambda: _grad_of(lambda t: ops.binarize(t, "bitnet", 0, "approx_sign"), x),
        "binarize stochastic": lambda: [ops.binarize(x, seed=torch.tensor([5]))],
        "ternarize twn": lambda: _grad_of(lambda t: ops.ternarize(t, "twn", 0), x),
        "ternarize absmean": lambda: _grad_of(lambda t: ops.ternarize(t, "absmean"), x),
        "quantize_per_token": lambda: _grad_of(lambda t: ops.quantize_per_token(t), x),
        "choose_qparams": lambda: list(ops.choose_qparams(x, -128, 127, False, axis=0)),
        "fused observer": lambda: _fused(x),
        # W8A8 from 16 rows with K >= 128, N >= 64: AMX tiles where the CPU has them (each thread
        # configures its own tile state per call)
        "linear_int8 panel": lambda: [ops.linear_int8(x[:m], w8, c8, s8, 0.05, 0, -128, 127) for m in (16, 40, 67)],
        # weight-only 4-bit: AMX-BF16 tiles where the CPU has them (each thread splits the rows into
        # its own scratch and configures its own tiles; 3 rows: the stacked parts)
        "linear_w4_weight_only": lambda: [ops.linear_w4_weight_only(xw[:m], w4, s4, 32, None, b4) for m in (3, 6, 12, 40)],
    }


def _fused(x):
    bufs = [
        torch.tensor([float("inf")]),
        torch.tensor([float("-inf")]),
        torch.ones(1),
        torch.zeros(1, dtype=torch.int32),
    ]
    on = torch.tensor([1])
    out = [ops.fused_observe_fake_quantize(x * (k + 1), *bufs, on, on, 0.1) for k in range(3)]
    return out + bufs


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_concurrent_python_threads_equal_serial(name):
    fn = CASES[name]
    expected = fn()
    results, errors = [None] * 8, []

    def worker(i):
        try:
            for _ in range(10):
                results[i] = fn()
        except Exception as e:  # noqa: BLE001 - collected and re-raised below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in results:
        assert all(torch.equal(a, b) for a, b in zip(r, expected, strict=True))


# the weight-only kernels keep a float bound, each table in its own bits (test_weight_only.py checks
# them table by table); every other case gives the same bits on every table
FLOAT_BOUND_CASES = {"linear_w4_weight_only"}


@pytest.mark.parametrize("name", sorted(set(CASES) - FLOAT_BOUND_CASES))
def test_same_bits_across_thread_counts_isas_and_runs(name):
    fn = CASES[name]
    old_threads, old_isa = torch.get_num_threads(), qatkit.build_info()["cpu_isa"]
    isas = ["baseline"] + (["avx2"] if qatkit._C.set_cpu_isa("avx2") else [])
    runs = []
    try:
        for isa in isas:
            assert qatkit._C.set_cpu_isa(isa)
            for n in (1, 2):
                torch.set_num_threads(n)
                runs.append(fn())
                runs.append(fn())  # and again: run to run
    finally:
        torch.set_num_threads(old_threads)
        qatkit._C.set_cpu_isa(old_isa)
    for r in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, runs[0], strict=True))
