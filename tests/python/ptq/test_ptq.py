"""qatkit.ptq (issue 11): BatchNorm folding, cross-layer equalization, high-bias absorption, bias
correction, data-free ranges, stored qparams, bad input. Tiny models, a shared fixture, no
training (the accuracy tables live in scripts/ptq.py)."""

import copy
import dataclasses
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qatkit
from qatkit.ptq import transforms as T
from qatkit.qat import graph
from qatkit.qat.config import LayerSpec, QATConfig, QuantSpec
from qatkit.testing.imbalance import inject_imbalance


def dscnn(relu=nn.ReLU):
    """E1's depthwise-separable CNN (docs/papers.md E1) on 1x8x8 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), relu(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), relu(),
        nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), relu(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), relu(),
        nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), relu(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def _with_stats(m, seed=0):
    """BatchNorm statistics of the data (cumulative averages over a few training-mode batches of
    the fixture's distribution), then eval."""
    g = torch.Generator().manual_seed(seed)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = None
    m.train()
    with torch.no_grad():
        for _ in range(4):
            m(torch.rand(64, 1, 8, 8, generator=g))
    return m.eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    calib = torch.rand(256, 1, 8, 8, generator=g)
    held = torch.rand(256, 1, 8, 8, generator=g)
    return list(calib.split(64)), held


def per_tensor(bits=8, act=True):
    w = QuantSpec(bits=bits, symmetric=True, narrow_range=bits == 8, granularity="per_tensor")
    a = QuantSpec(bits=8, symmetric=False) if act else None
    return QATConfig(default=LayerSpec(w, a), name=f"w{bits}{'a8' if act else ''} per-tensor")


def sqnr(a, b):
    return float(10 * torch.log10(b.pow(2).mean() / (a - b).pow(2).mean()))


def inject(model: nn.Module, seed=0):
    """E1's injected imbalance (qatkit.testing.imbalance): the float function is unchanged."""
    return inject_imbalance(model, torch.rand(2, 1, 8, 8), seed=seed)


def folded_float(seed=0):
    m = _with_stats(dscnn(), seed)
    T.fold_batchnorms(m, graph.trace_dataflow(m, torch.rand(2, 1, 8, 8)))
    return m


def test_batchnorm_folding_is_exact_and_keeps_the_statistics(data):
    m = _with_stats(dscnn())
    x = data[1]
    ref = m(x)
    stats, folded, unfolded = T.fold_batchnorms(m, graph.trace_dataflow(m, x[:2]))
    assert len(folded) == 5 and unfolded == {} and set(stats) == {"0", "3", "6", "9", "12"}
    assert all(isinstance(m[i], nn.Identity) for i in (1, 4, 7, 10, 13))
    torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)


def test_equalization_keeps_the_function_and_equalizes_every_pair(data):
    m = inject(folded_float())
    x = data[1]
    ref = m(x)
    flow = graph.trace_dataflow(m, x[:2])
    pairs, skipped = T.find_equalization_pairs(m, flow)
    assert [(p.first, p.second) for p in pairs] == [("0", "3"), ("3", "6"), ("6", "9"), ("9", "12")]
    assert {n for n, _ in skipped} == {"12", "17"}  # into the pooling, and the output
    T.equalize(m, pairs, {})
    assert (m(x) - ref).abs().max() < 1e-4
    for p in pairs:
        r1, r2 = T._out_range(m.get_submodule(p.first).weight), T._in_range(m.get_submodule(p.second))
        torch.testing.assert_close(r1, r2, rtol=1e-5, atol=0)


@pytest.mark.parametrize("kind", ["linear", "conv_depthwise"])
def test_equalization_undoes_any_positive_rescaling_of_a_pair(kind):
    """One pair has one fixed point: equalize(inject(M)) == equalize(M). (In a chain of pairs the
    max-range fixed point is not unique — any of them equalizes every pair, tested above.)"""
    torch.manual_seed(4)
    if kind == "linear":
        base, x = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5)), torch.randn(2, 6)
    else:
        base, x = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8)), torch.randn(2, 3, 5, 5)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    with torch.no_grad():
        s = 10 ** (torch.rand(b[0].weight.shape[0]) * 5 - 2.5)
        b[0].weight.mul_(s.reshape(-1, *[1] * (b[0].weight.dim() - 1)))
        b[0].bias.mul_(s)
        T._scale_in(b[2], 1 / s)
    for m in (a, b):
        pairs, _ = T.find_equalization_pairs(m, graph.trace_dataflow(m, x))
        assert len(pairs) == 1
        T.equalize(m, pairs, {})
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6, msg=n)


def test_per_tensor_w8a8_collapses_on_an_imbalanced_model_and_cle_recovers_it(data):
    """E1 without training: output SQNR against the float model on held-out inputs."""
    calib, held = data
    m = inject(folded_float())
    ref = m(held)
    plain = qatkit.ptq(m, calib, per_tensor(), equalize=False, absorb_bias=False, correct_bias=None,
                       verbose=False, progress=False)
    cle = qatkit.ptq(m, calib, per_tensor(), absorb_bias=False, correct_bias=None, verbose=False, progress=False)
    full = qatkit.ptq(m, calib, per_tensor(), verbose=False, progress=False)
    s_plain, s_cle, s_full = (sqnr(q(held), ref) for q in (plain, cle, full))
    assert s_plain < 20 and s_cle > s_plain + 15 and s_full > 30, (s_plain, s_cle, s_full)


def test_bias_correction_halves_the_mean_output_shift_of_depthwise_layers(data):
    """E2: W4 per-tensor weights, float activations; mean shift per output channel of the
    depthwise layers ('3', '9') on held-out data, against the float model."""
    calib, held = data
    m_bn = _with_stats(dscnn())
    m = copy.deepcopy(m_bn)  # the float reference: the same model, folded
    T.fold_batchnorms(m, graph.trace_dataflow(m, held[:2]))
    cfg = per_tensor(bits=4, act=False)

    def shifts(q):
        outs = {}
        hooks = [q.get_submodule(n).register_forward_hook(lambda mod, a, o, n=n: outs.__setitem__(n, o)) for n in ("3", "9")]
        ref = {}
        hooks += [m.get_submodule(n).register_forward_hook(lambda mod, a, o, n=n: ref.__setitem__(n, o)) for n in ("3", "9")]
        with torch.no_grad():
            q(held), m(held)
        for h in hooks:
            h.remove()
        return {n: float((outs[n] - ref[n]).mean(dim=(0, 2, 3)).norm()) for n in outs}

    before = shifts(qatkit.ptq(m_bn, calib, cfg, equalize=False, absorb_bias=False, correct_bias=None, verbose=False, progress=False))
    after = shifts(qatkit.ptq(m_bn, calib, cfg, equalize=False, absorb_bias=False, verbose=False, progress=False))
    one_pass = shifts(qatkit.ptq(m_bn, calib, cfg, equalize=False, absorb_bias=False, correct_bias="empirical_one_pass",
                                 verbose=False, progress=False))
    analytic = shifts(qatkit.ptq(m_bn, calib, cfg, equalize=False, absorb_bias=False, correct_bias="analytic",
                                 verbose=False, progress=False))
    for n in before:
        assert after[n] <= 0.5 * before[n], (n, before[n], after[n])
        assert one_pass[n] <= 0.5 * before[n], (n, before[n], one_pass[n])
        # data-free, from the BatchNorm statistics (Gaussian assumption; these inputs are uniform)
        assert analytic[n] < before[n], (n, before[n], analytic[n])


def test_ptq_stores_qparams_and_convert_reproduces_its_codes(data):
    calib, held = data
    m = _with_stats(dscnn())
    q = qatkit.ptq(m, calib, qatkit.w8a8(), verbose=False, progress=False)
    layers = [mod for mod in q.modules() if isinstance(mod, qatkit.qat.QuantConv2d)]
    assert layers and all(mod.weight_fake_quant.has_stored_qparams for mod in layers)
    assert not any(mod.training for mod in q.modules())
    c = qatkit.convert(q)
    assert torch.equal(c(held), q(held))
    for name, mod in q.named_modules():
        if isinstance(mod, qatkit.qat.QuantConv2d):
            wfq = mod.weight_fake_quant
            s = wfq.spec
            codes = qatkit.ops.quantize_affine(mod.weight.detach(), wfq.stored_scale, wfq.stored_zero_point,
                                               s.quant_min, s.quant_max, 0)
            assert torch.equal(c.get_submodule(name).weight_int, codes)


def test_relu6_is_replaced_only_for_equalization_and_reported(data):
    m = _with_stats(dscnn(nn.ReLU6))
    q = qatkit.ptq(m, data[0], qatkit.w8a8(), verbose=False, progress=False)
    changes = q.ptq_report["model_changes"]
    assert len(changes) == 4 and all("ReLU6 -> ReLU" in c for c in changes)
    assert isinstance(q[14], nn.ReLU6)  # the last one feeds the pooling: no pair, kept
    assert isinstance(m[2], nn.ReLU6)  # the caller's model is untouched


@pytest.mark.parametrize("inplace", [False, True])
def test_load_into_gives_the_replacing_relu_the_relu6s_inplace(data, tmp_path, inplace):
    """qatkit.load_into swaps a ReLU that PTQ put in a ReLU6's place (the file's module_changes) into
    the caller's float model with that ReLU6's own inplace flag (in place where the model allowed
    it: no output allocation), with the same outputs as a copy of the other flag; fused into the convs
    before them by default (qatkit.fuse_activations), their places keep the flag."""
    from qatkit.qat.fuse import FusedActivation

    m = _with_stats(dscnn(lambda: nn.ReLU6(inplace=inplace)))
    q = qatkit.ptq(m, data[0], qatkit.w8a8(), verbose=False, progress=False)
    path = str(tmp_path / "dscnn.safetensors")
    qatkit.export(q, path)
    loaded = qatkit.load_into(dscnn(lambda: nn.ReLU6(inplace=inplace)).eval(), path, fuse_activations=False)
    relus = [mod for mod in loaded.modules() if type(mod) is nn.ReLU]
    assert len(relus) == 4 and all(mod.inplace == inplace for mod in relus)
    other = qatkit.load_into(dscnn(lambda: nn.ReLU6(inplace=not inplace)).eval(), path, fuse_activations=False)
    assert all(mod.inplace != inplace for mod in other.modules() if type(mod) is nn.ReLU)
    fused = qatkit.load_into(dscnn(lambda: nn.ReLU6(inplace=inplace)).eval(), path)
    places = [mod for mod in fused.modules() if type(mod) is FusedActivation]
    assert len(places) == len(fused.fusion_report["fused"]) > 0 and all(mod.inplace == inplace for mod in places)
    with torch.no_grad():
        assert torch.equal(loaded(data[1]), other(data[1]))
        assert torch.equal(fused(data[1]), loaded(data[1]))


def test_data_free_ptq(data):
    m = _with_stats(dscnn())
    held = data[1]
    wo = qatkit.ptq(m, None, qatkit.int8_weight_only(), verbose=False, progress=False)
    assert sqnr(wo(held), m(held)) > 30
    with pytest.raises(ValueError, match="no BatchNorm statistics give the input ranges of 0"):
        qatkit.ptq(m, None, qatkit.w8a8(), verbose=False, progress=False)
    df = qatkit.ptq(m, None, qatkit.w8a8(), input_range=(0, 1), verbose=False, progress=False)
    assert "data-free activation ranges" in " ".join(df.ptq_report["steps"])
    assert sqnr(df(held), m(held)) > 15


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.a(x)))
        if h.mean() > -1:  # data-dependent control flow: torch.fx refuses this model
            h = self.b(h)
        return self.fc(h.mean(dim=(2, 3)))


def test_a_model_no_tracer_accepts_goes_through_the_hook_path(data):
    m = _with_stats(_Untraceable())
    q = qatkit.ptq(m, data[0], qatkit.w8a8(), verbose=False, progress=False)
    assert isinstance(q.bn, nn.Identity) and isinstance(q.a, qatkit.qat.QuantConv2d)
    # F.relu is a function, not a module: positively homogeneous but not provable from a module
    # type, so the pair is skipped with its reason
    assert any(s.startswith("a:") for s in q.ptq_report["skipped_pairs"])
    assert sqnr(q(data[1]), m(data[1])) > 25


def test_bad_input_is_refused_and_the_model_is_left_as_it_was(data):
    m = _with_stats(dscnn())
    before = copy.deepcopy(m.state_dict())
    cases = [
        (dict(data=[]), ValueError, "data holds no batches"),
        (dict(data=[torch.rand(4, 1, 8, 8), torch.rand(0, 1, 8, 8)]), ValueError, "calibration batch 1 is empty"),
        (dict(data="images"), TypeError, "data must be a DataLoader or iterable"),
        (dict(data=data[0], config="w8a8"), TypeError, "config must be a QATConfig"),
        (dict(data=data[0], rounding="floor"), ValueError, "rounding must be one of"),
        (dict(data=data[0], scaling="fp8"), ValueError, "scaling must be None"),
        (dict(data=data[0], correct_bias="both"), ValueError, "correct_bias must be"),
        (dict(data=data[0], input_range=(1, 0)), ValueError, "input_range must be"),
        (dict(data=[torch.rand(4, 1, 8, 8), torch.full((4, 1, 8, 8), float("nan"))]), ValueError, "calibration batch 1"),
        (dict(data=[torch.rand(4, 3, 8, 8)]), RuntimeError, "calibration batch 0"),
        # a truthy string turned the step on; 0 AdaRound steps rounded nothing and said it had;
        # a negative damping or an unknown GPTQ option failed deep inside the solver
        (dict(data=data[0], equalize="no"), TypeError, "equalize must be True or False, got 'no'"),
        (dict(data=data[0], rounding="adaround", adaround_iters=0), ValueError, "adaround_iters must be an integer >= 1"),
        (dict(data=data[0], rounding="gptq", gptq={"damp": -1}), ValueError, r"gptq\['damp'\] .* must be a finite"),
        (dict(data=data[0], rounding="gptq", gptq={"blocks": 64}), ValueError, "gptq must be a dict of 'act_order'"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            qatkit.ptq(m, verbose=False, progress=False, **kw)
        after = m.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), kw
        assert isinstance(m[1], nn.BatchNorm2d)
    with pytest.raises(ValueError, match="nothing to quantize"):
        qatkit.ptq(nn.Sequential(nn.ReLU()), [torch.rand(2, 3)], verbose=False, progress=False)


def test_inplace_replaces_the_callers_model_only_on_success(data):
    m = _with_stats(dscnn())
    out = qatkit.ptq(m, data[0], qatkit.w8a8(), inplace=True, verbose=False, progress=False)
    assert out is m and isinstance(m[0], qatkit.qat.QuantConv2d) and hasattr(m, "ptq_report")


def test_the_summary_table_is_printed(data, capsys):
    qatkit.ptq(_with_stats(dscnn()), data[0], qatkit.w8a8(), progress=False)
    out = capsys.readouterr().out
    assert "qatkit.ptq (w8a8): folded 5 BatchNorm(s), equalized 4 pair(s)" in out
    assert "skipped pairs: 17: it feeds the model's output" in out


def test_learned_activation_ranges_start_from_the_calibration_data_as_in_qat():
    """ptq with a learned-range preset (w4a4_lsq: LSQ+ activations) calibrated only the static
    observers: the learned ranges stayed empty, ptq said nothing, and convert then refused the model
    ('has not observed any data yet ... run training'). Calibration now starts them as QAT's first
    training batch does (the same scale bits), the model converts to the QAT model's outputs, and
    without data ptq raises naming the layers."""
    import dataclasses

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(64, 48)
    cfg = dataclasses.replace(qatkit.preset("w4a4_lsq"), first_last=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(net, [x[:32], x[32:]], cfg, equalize=False, absorb_bias=False, correct_bias=None,
                       verbose=False, progress=False)
        ref = qatkit.prepare_qat(net, cfg).train()
        with torch.no_grad():
            ref(x[:32])  # QAT's first batch starts the learned ranges
    acts = {n: m for n, m in q.named_modules() if type(m).__name__ == "AffineLearnedActQuantizer"}
    want = {n: m for n, m in ref.named_modules() if type(m).__name__ == "AffineLearnedActQuantizer"}
    assert len(acts) == 3 and acts.keys() == want.keys()
    for n, m in acts.items():
        assert m.has_observed, n
        assert torch.equal(m.scale, want[n].scale) and torch.equal(m.zero_point, want[n].zero_point), n
    c = qatkit.convert(q)
    with torch.no_grad():
        assert torch.equal(c(x), q.eval()(x))
    with pytest.raises(ValueError, match=r"no data, and the learned activation ranges of 0, 2, 4 start from data"):
        qatkit.ptq(net, None, cfg, verbose=False, progress=False)


def test_mapping_batches_are_keyword_arguments_in_ptq_calibrate_and_sensitivity():
    """A tokenizer's output is a mapping a Hugging Face model takes as keyword arguments. Without
    `forward`, ptq / calibrate / sensitivity called model(batch) and failed inside the first layer
    ('linear(): argument input must be Tensor, not dict'); they now call model(**batch), with the
    bits an explicit forward=lambda m, b: m(**b) gives."""

    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

        def forward(self, input_ids, attention_mask=None):
            h = torch.relu(self.a(input_ids)) * attention_mask
            return self.c(torch.relu(self.b(h)))

    torch.manual_seed(0)
    m = KW().eval()
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randn(8, 8, generator=g), "attention_mask": (torch.rand(8, 1, generator=g) > 0.2).float()}
               for _ in range(3)]
    explicit = lambda mod, b: mod(**b)  # noqa: E731
    x = batches[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = qatkit.ptq(m, batches, qatkit.w8a8(), verbose=False, progress=False)
        want = qatkit.ptq(m, batches, qatkit.w8a8(), forward=explicit, verbose=False, progress=False)
        c1, c2 = qatkit.prepare_qat(m, qatkit.w8a8()), qatkit.prepare_qat(m, qatkit.w8a8())
        qatkit.qat.calibrate(c1, batches)
        qatkit.qat.calibrate(c2, batches, forward=explicit)
        s1 = qatkit.sensitivity(m, batches, qatkit.w4a8(), progress=False)
        s2 = qatkit.sensitivity(m, batches, qatkit.w4a8(), forward=explicit, progress=False)
    with torch.no_grad():
        assert torch.equal(got.eval()(**x), want.eval()(**x))
        assert torch.equal(c1.eval()(**x), c2.eval()(**x))
    assert s1.rows == s2.rows and s1.all_quantized == s2.all_quantized and len(s1.rows) == 3


def test_a_mapping_batch_goes_whole_to_a_forward_that_takes_one_mapping():
    """A SentenceTransformer's forward takes the features mapping itself (forward(features)); a
    mapping batch goes to such a forward whole, and as keyword arguments only where the forward
    takes its keys (the signature binds them)."""

    class Whole(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

        def forward(self, features, **kwargs):
            return self.c(torch.relu(self.b(torch.relu(self.a(features["input_ids"])))))

    torch.manual_seed(0)
    m = Whole().eval()
    batches = [{"input_ids": torch.randn(8, 8)} for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = qatkit.ptq(m, batches, qatkit.w8a8(), verbose=False, progress=False)
        want = qatkit.ptq(m, batches, qatkit.w8a8(), forward=lambda mod, b: mod(b), verbose=False, progress=False)
    with torch.no_grad():
        assert torch.equal(got.eval()(batches[0]), want.eval()(batches[0]))


def test_ptq_with_bitlinear_says_what_the_rmsnorm_does_to_a_float_model():
    # BitLinear normalizes its input (RMSNorm) before quantizing: on a float model trained without it
    # ptq(bitnet_b158()) returned a model at -4 dB output SQNR without a word
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(),
                      nn.Linear(64, 10)).eval()
    data = [torch.randn(16, 32) for _ in range(3)]
    with pytest.warns(UserWarning, match=r"with quantization off its output is -?\d+\.\d dB SQNR from the float model's"):
        q = qatkit.ptq(m, data, qatkit.bitnet_b158(), progress=False, verbose=False)
    # the independent measure: the prepared model with quantization off against the float model
    ref = qatkit.prepare_qat(m, qatkit.bitnet_b158()).eval()
    qatkit.qat.enable_fake_quant(ref, False)
    with torch.no_grad():
        y, y_float = ref(data[0]).double(), m(data[0]).double()
    want = float(10 * torch.log10(y_float.pow(2).sum() / (y - y_float).pow(2).sum()))
    assert want < 0 and q.ptq_report["bitlinear_float_sqnr_db"] == pytest.approx(want, abs=1e-6)

    class PreNormed(nn.Module):  # inputs already RMS-normalized: the RMSNorm changes nothing, no warning
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 10)

        def forward(self, x):
            h = F.rms_norm(F.gelu(self.a(x)), (64,), eps=1e-6)
            return self.c(F.rms_norm(F.gelu(self.b(h)), (64,), eps=1e-6))

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        q = qatkit.ptq(PreNormed().eval(), data, qatkit.bitnet_b158(), progress=False, verbose=False)
    assert q.ptq_report["bitlinear_float_sqnr_db"] > 60


def test_analytic_bias_correction_reads_a_flattened_conv_output_channel_major():
    """A Linear after ReLU(BN(conv)) -> Flatten reads C * H * W features, channel c's statistics at
    c * H * W ... (c + 1) * H * W - 1. Analytic bias correction multiplied the weight error
    [N, C * H * W] with the C channel means and raised "size mismatch" (found by a random ptq
    sweep); it now expands each channel's E[ReLU(x)] over its positions. Against the same shift
    from the Linear's input mean measured on 20000 Gaussian samples (the distribution the
    BatchNorm statistics describe; no padding, so every position has it): within 5 %, where a
    spatial-major expansion is off by far."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 5))
    with torch.no_grad():
        m[1].weight.uniform_(0.5, 2.0)
        m[1].bias.copy_(torch.linspace(-1.5, 1.5, 8))  # channel means far apart
    m.train()
    with torch.no_grad():
        for _ in range(50):
            m[1].momentum = None  # a cumulative average
            m(torch.randn(400, 3, 6, 6))
    m.eval()
    calib = [torch.randn(64, 3, 6, 6)]
    cfg = per_tensor(bits=3, act=False)
    kw = dict(equalize=False, absorb_bias=False, verbose=False, progress=False)
    plain = qatkit.ptq(m, calib, cfg, correct_bias=None, **kw)
    corrected = qatkit.ptq(m, calib, cfg, correct_bias="analytic", **kw)
    shift = plain[4].bias - corrected[4].bias
    eps = corrected[4].quantized_weight() - m[4].weight
    with torch.no_grad():
        feats = m[:4](torch.randn(20000, 3, 6, 6)).double()
    want = eps.double() @ feats.mean(0)
    assert float((shift.double() - want).norm()) <= 0.05 * float(want.norm()), (shift, want)
    wrong = eps.double() @ feats.mean(0).reshape(8, 16).t().reshape(-1)  # spatial-major: a different vector
    assert float((wrong - want).norm()) > 0.2 * float(want.norm())


def test_ptq_sensitivity_and_choose_bits_refuse_a_quantized_model_naming_themselves():
    """Each starts from the float model. Given a prepared or converted one, the error came from
    inside: "prepare_qat: the model has nothing to quantize", a function the caller never called.
    It now names the caller, the state and the layer."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    q = qatkit.prepare_qat(m, qatkit.w8a8())
    q(torch.randn(4, 8))
    c = qatkit.convert(q.eval())
    data = [torch.randn(4, 8)]
    for model, state, kind in ((q, "prepared", "QuantLinear"), (c, "converted", "QuantizedLinear")):
        for name, call in (("ptq", lambda mm: qatkit.ptq(mm, data, verbose=False, progress=False)),
                           ("sensitivity", lambda mm: qatkit.sensitivity(mm, data, progress=False)),
                           ("choose_bits", lambda mm: qatkit.choose_bits(mm, data, budget=4, progress=False))):
            with pytest.raises(ValueError, match=rf"^{name}: the model is {state} already \(layer '0' is a {kind}\)"):
                call(model)


class _ReluStyle(nn.Module):
    """conv-BN-ReLU twice, then Flatten -> Linear; the ReLUs as modules or as F.relu / Tensor.relu in
    the forward (the style of most hand-written CNNs)."""

    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.r1, self.r2, self.fc = nn.ReLU(), nn.ReLU(), nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        if self.functional:
            x = F.relu(self.b1(self.c1(x)))
            x = self.b2(self.c2(x)).relu()
        else:
            x = self.r1(self.b1(self.c1(x)))
            x = self.r2(self.b2(self.c2(x)))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("how", ["empirical", "analytic", "data-free"])
def test_functional_relus_get_the_transforms_relu_modules_get(how):
    """Equalization, high-bias absorption, analytic bias correction and data-free ranges looked
    for nn.ReLU modules only: a forward calling F.relu got no equalized pair (per-tensor w8a8 41.8
    against 43.1 dB on an imbalanced net), no analytic correction and no data-free ranges ("no
    BatchNorm statistics give the input ranges of c2"); and the fx graph (data-free ptq) named
    ``x.flatten(1)`` "'flatten'" (quoted), so no range passed through it ("... of fc"). Now both
    styles give the same model."""
    torch.manual_seed(0)
    mods, funcs = _ReluStyle(False), _ReluStyle(True)
    with torch.no_grad():
        for bn in (mods.b1, mods.b2):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-0.5, 1)
        mods.c1.weight.mul_(torch.logspace(-2, 2, 16).view(16, 1, 1, 1))
    funcs.load_state_dict(mods.state_dict())
    g = torch.Generator().manual_seed(1)
    data = None if how == "data-free" else [torch.randn(16, 3, 8, 8, generator=g) for _ in range(2)]
    kw = {"input_range": (-4.0, 4.0)} if how == "data-free" else {"correct_bias": how}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = qatkit.ptq(mods.eval(), data, qatkit.w8a8(), progress=False, verbose=False, **kw)
        b = qatkit.ptq(funcs.eval(), data, qatkit.w8a8(), progress=False, verbose=False, **kw)
    assert b.ptq_report["pairs"] == a.ptq_report["pairs"] == [("c1", "c2")]
    assert b.ptq_report["steps"] == a.ptq_report["steps"]
    x = torch.randn(8, 3, 8, 8, generator=g)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_analytic_bias_correction_that_corrects_no_layer_is_warned():
    """correct_bias='analytic' takes a layer's input mean from a folded BatchNorm + ReLU before it.
    On a model with none (an MLP without BatchNorm) it corrected nothing, and only the report's
    "analytic bias correction of 0 layer(s)" said so. Asked for, it now warns; the data-free
    fallback (no data: empirical becomes analytic) stays quiet, and a model with BatchNorms is
    corrected without a word."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32, bias=False), nn.ReLU(), nn.Linear(32, 4, bias=False))
    cal = [torch.randn(32, 16) for _ in range(2)]
    with pytest.warns(UserWarning, match=r"correct_bias='analytic' corrected no layer.*\(0, 2\).*'empirical'"):
        q = qatkit.ptq(mlp, cal, dataclasses.replace(qatkit.w4a8(), first_last=None), correct_bias="analytic",
                       verbose=False, progress=False)
    assert q.ptq_report["bias_correction_skipped"] == ["0", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qatkit.ptq(mlp, None, qatkit.int8_weight_only(), verbose=False, progress=False)
        cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
        r = qatkit.ptq(cnn, [torch.randn(4, 3, 10, 10)], dataclasses.replace(qatkit.w8a8(), first_last=None),
                       correct_bias="analytic", verbose=False, progress=False)
    assert list(r.ptq_report["bias_shift"]) == ["3"]


@pytest.mark.parametrize("kwargs,with_data,preset,named", [
    (dict(gptq={"damp": 0.1}), True, "w8a8", "gptq (GPTQ's options; rounding is 'nearest'"),
    (dict(adaround_iters=50, rounding="gptq"), True, "w8a8", "adaround_iters (AdaRound's steps; rounding is 'gptq'"),
    (dict(input_range=(0.0, 1.0)), True, "w8a8", "input_range (the data-free range"),
    (dict(n_sigma=3.0), True, "w8a8", "n_sigma (data-free activation ranges"),
    (dict(observer="percentile"), True, "int8_weight_only", "observer='percentile' (no layer has a static"),
    (dict(input_range=(0.0, 1.0)), False, "int8_weight_only", "input_range (no layer has an activation range"),
])
def test_arguments_that_change_nothing_are_named_in_a_warning(kwargs, with_data, preset, named):
    """ptq ignored, without a word, options that do nothing in the call: GPTQ options without
    rounding='gptq' (a forgotten rounding=), AdaRound steps without 'adaround', the data-free
    input_range / n_sigma given calibration data, an observer where nothing is observed. The
    options that do act stay quiet (last case of each pair below)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    data = [torch.randn(16, 16)] if with_data else None
    cfg = dataclasses.replace(qatkit.preset(preset), first_last=None)
    with pytest.warns(UserWarning, match=r"ptq: these arguments change nothing here: .*" + re.escape(named)):
        qatkit.ptq(m, data, cfg, verbose=False, progress=False, **kwargs)
    acting = dict(kwargs)
    if "gptq" in acting:
        acting["rounding"] = "gptq"
    elif "adaround_iters" in acting:
        acting["rounding"] = "adaround"
    elif "observer" in acting:
        cfg = dataclasses.replace(qatkit.w8a8(), first_last=None)
    else:
        data = None
        cfg = dataclasses.replace(qatkit.w8a8(), first_last=None)
        m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
        acting.setdefault("input_range", (0.0, 1.0))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        qatkit.ptq(m, data, cfg, verbose=False, progress=False, **acting)
    assert not [w for w in rec if "change nothing" in str(w.message)], [str(w.message) for w in rec]
