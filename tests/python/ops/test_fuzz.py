"""Property-based fuzzing of every op (a bounded hypothesis run; scripts/fuzz_ops.py runs the same
checks for 100,000+ op calls): odd layouts, every dtype, qparams at their edges, results against
float64 references, gradients against their formulas, invalid qparams refused; the integer kernels
on shapes at their tile and block edges, every weight layout and CPU ISA, against pure-integer
references (qatkit.testing.fuzz_integer)."""

import random

import pytest
from qatkit.testing.fuzz import CHECKS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.mark.parametrize("name", sorted(CHECKS))
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz(name, seed):
    CHECKS[name](random.Random(seed))
