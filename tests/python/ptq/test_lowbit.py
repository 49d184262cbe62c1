"""Ternary and binary PTQ (issue 11): output-aware per-channel thresholds and scales that never
lose to the closed forms on the calibration rows, beat them held out, and survive convert."""

import torch
from torch import nn

import qatkit
from qatkit.ptq import lowbit as LB


def sqnr(a, b):
    return float(10 * torch.log10(b.pow(2).mean() / (a - b).pow(2).mean()))


def _setup():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    x = torch.randn(2048, 64) @ torch.randn(64, 64) * 0.3
    return m, list(x[:1024].split(256)), x[1024:]


def test_the_search_never_loses_to_the_closed_form_on_its_rows():
    torch.manual_seed(1)
    W = torch.randn(16, 48)
    X = torch.randn(512, 48) @ torch.randn(48, 48)
    Y = X @ W.t()
    twn = qatkit.ops.ternarize(W, "twn", 0)
    xnor = qatkit.ops.binarize(W, "mean_abs", 0)
    for closed, searched in ((twn, LB.ternary_search(W, X)[0].float()), (xnor, LB.binary_search(W, X).float())):
        e_closed = (Y - X @ closed.t()).pow(2).sum(dim=0)
        e_search = (Y - X @ searched.t()).pow(2).sum(dim=0)
        assert bool((e_search <= e_closed * (1 + 1e-5)).all())
        assert float(e_search.sum()) < 0.98 * float(e_closed.sum())


def test_ternary_and_binary_ptq_beat_the_closed_forms_and_convert_keeps_them():
    m, calib, held = _setup()
    for cfg in (qatkit.ternary_weight_only(), qatkit.binary_weight_only()):
        kw = dict(correct_bias=None, verbose=False, progress=False)
        with torch.no_grad():
            closed = sqnr(qatkit.ptq(m, calib, cfg, threshold_search=False, **kw)(held), m(held))
            q = qatkit.ptq(m, calib, cfg, **kw)
            searched = sqnr(q(held), m(held))
            assert searched > closed + 0.3, (cfg.name, closed, searched)
            assert torch.equal(qatkit.convert(q)(held), q(held))


def test_per_tensor_absmean_weights_keep_their_closed_form_and_say_so():
    m, calib, _ = _setup()
    import dataclasses

    cfg = dataclasses.replace(qatkit.bitnet_b158(), first_last=None, bitlinear=False)
    q = qatkit.ptq(m, calib, cfg, correct_bias=None, verbose=False, progress=False)
    reasons = dict(q.ptq_report["threshold_search_skipped"])
    assert "closed form kept" in reasons["0"]
