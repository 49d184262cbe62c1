"""An optimizer that cannot train a QAT model is warned about (qatkit/qat/optimizer_check.py).

Two mistakes failed without a word before: an optimizer holding the float model's parameters
(built before prepare_qat / ptq, which return a copy, or from the wrong variable) left every QAT
weight as prepared; one built before ``prepare_qat(..., inplace=True)`` trained the shared weights
but not the LSQ step sizes prepare_qat created. Correct set-ups must stay silent: two optimizers
(weights and step sizes apart), gradient accumulation, step sizes frozen on purpose, a float
baseline trained beside the QAT model, ``add_param_group`` after the fact.
"""

import contextlib
import dataclasses
import io
import warnings

import pytest
import torch
from torch import nn

import qatkit

STEPS = 6


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _lsq():
    return dataclasses.replace(qatkit.w4a4_lsq(), first_last=None)


def _steps(model, opts, steps=STEPS, accumulate=1):
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        for _ in range(accumulate):
            model(x).pow(2).mean().backward()
        for o in opts:
            o.step()
        for o in opts:
            o.zero_grad()


def _caught(fn):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in rec if str(w.message).startswith("qatkit: ")]


def test_an_optimizer_built_before_prepare_qat_steps_the_float_copy_and_is_warned_once():
    def run():
        m = _mlp()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        q = qatkit.prepare_qat(m, qatkit.w8a8())
        before = [p.detach().clone() for p in q.parameters()]
        _steps(q, [opt])
        return before, q

    (before, q), msgs = _caught(run)
    # what the warning is about: the QAT model did not train at all
    assert all(torch.equal(b, p) for b, p in zip(before, q.parameters()))
    assert len(msgs) == 1, msgs  # once, not at every step
    assert "steps a float model's parameters, not the QAT model's" in msgs[0]
    assert "6 parameter(s)" in msgs[0] and "torch.optim.SGD(qat_model.parameters(), ...)" in msgs[0]


def test_an_optimizer_built_from_the_float_model_after_prepare_or_ptq_is_warned():
    def after_prepare():
        m = _mlp()
        q = qatkit.prepare_qat(m, qatkit.w8a8())
        _steps(q, [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)])

    def after_ptq():
        m = _mlp()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            q = qatkit.ptq(m, [torch.randn(16, 8) for _ in range(2)], qatkit.w8a8())
        q.train()
        _steps(q, [opt])

    def before_inplace_ptq():  # ptq(inplace=True) gives the caller's model the copy's parameters too
        m = _mlp()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            qatkit.ptq(m, [torch.randn(16, 8) for _ in range(2)], qatkit.w8a8(), inplace=True)
        m.train()
        _steps(m, [opt])

    for fn in (after_prepare, after_ptq, before_inplace_ptq):
        _, msgs = _caught(fn)
        assert len(msgs) == 1 and "steps a float model's parameters" in msgs[0], (fn.__name__, msgs)


def test_an_optimizer_built_before_an_inplace_prepare_lacks_the_step_sizes_and_is_warned():
    def run():
        m = _mlp()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        q = qatkit.prepare_qat(m, _lsq(), inplace=True)
        w0 = q[0].weight.detach().clone()
        s0 = q[0].weight_fake_quant.scale.detach().clone()
        _steps(q, [opt])
        return q, w0, s0

    (q, w0, s0), msgs = _caught(run)
    assert not torch.equal(w0, q[0].weight)  # the shared weights train
    assert torch.equal(s0, q[0].weight_fake_quant.scale)  # the step sizes do not
    assert q[0].weight_fake_quant.scale.grad is not None
    assert len(msgs) == 1, msgs
    assert "learned quantizer parameter(s)" in msgs[0] and "'0.weight_fake_quant.scale'" in msgs[0]
    assert "add_param_group" in msgs[0] and "requires_grad_(False)" in msgs[0]


def _two_optimizers():
    q = qatkit.prepare_qat(_mlp(), _lsq())
    scales = [p for n, p in q.named_parameters() if "fake_quant" in n]
    weights = [p for n, p in q.named_parameters() if "fake_quant" not in n]
    _steps(q, [torch.optim.SGD(weights, lr=0.1), torch.optim.Adam(scales, lr=1e-3)])


def _frozen_step_sizes():
    q = qatkit.prepare_qat(_mlp(), _lsq())
    for n, p in q.named_parameters():
        if "fake_quant" in n:
            p.requires_grad_(False)
    _steps(q, [torch.optim.SGD([p for p in q.parameters() if p.requires_grad], lr=0.1)])


def _float_baseline_beside():
    m = _mlp()
    q = qatkit.prepare_qat(m, _lsq())
    x = torch.randn(32, 8)
    o1, o2 = torch.optim.SGD(m.parameters(), lr=0.1), torch.optim.SGD(q.parameters(), lr=0.1)
    for _ in range(STEPS):
        m(x).pow(2).mean().backward()
        q(x).pow(2).mean().backward()
        o1.step(), o2.step(), o1.zero_grad(), o2.zero_grad()


def _added_later():
    m = _mlp()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    q = qatkit.prepare_qat(m, _lsq(), inplace=True)
    opt.add_param_group({"params": [p for n, p in q.named_parameters() if "fake_quant" in n]})
    _steps(q, [opt])


@pytest.mark.parametrize(
    "setup",
    [
        lambda: _steps(*(lambda q: (q, [torch.optim.SGD(q.parameters(), lr=0.1)]))(qatkit.prepare_qat(_mlp(), _lsq()))),
        lambda: _steps(*(lambda q: (q, [torch.optim.AdamW(q.parameters(), lr=1e-2, foreach=False)]))(
            qatkit.prepare_qat(_mlp(), _lsq()))),
        lambda: _steps(*(lambda q: (q, [torch.optim.SGD(q.parameters(), lr=0.1)]))(qatkit.prepare_qat(_mlp(), _lsq())),
                       accumulate=8),
        lambda: (lambda m: (lambda opt: _steps(qatkit.prepare_qat(m, qatkit.w8a8(), inplace=True), [opt]))(
            torch.optim.Adam(m.parameters(), lr=1e-2)))(_mlp()),
        _two_optimizers,
        _frozen_step_sizes,
        _float_baseline_beside,
        _added_later,
    ],
    ids=["after-prepare", "adamw-no-foreach", "accumulation-8", "inplace-w8a8-before", "two-optimizers",
         "frozen-step-sizes", "float-baseline-beside", "add-param-group"],
)
def test_set_ups_that_train_the_qat_model_stay_silent(setup):
    _, msgs = _caught(setup)
    assert msgs == []
