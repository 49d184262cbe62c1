"""GPTQ and AdaRound (issue 11): better than round-to-nearest where it matters, exact where the
theory says so, and their codes survive convert."""

import pytest
import torch
from torch import nn

import qatkit
from qatkit.ptq import rounding as R
from qatkit.qat.config import LayerSpec, QATConfig, QuantSpec
from qatkit.testing.models import TinyAttention


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    x = torch.randn(2048, 64) @ torch.randn(64, 64) * 0.2  # correlated inputs: a non-diagonal Hessian
    return m, list(x[:1024].split(256)), x[1024:]


def cfg(bits=3, gran="per_channel", group=None):
    return QATConfig(default=LayerSpec(QuantSpec(bits=bits, granularity=gran, group_size=group), None), name="w")


def sqnr(a, b):
    return float(10 * torch.log10(b.pow(2).mean() / (a - b).pow(2).mean()))


def run(m, calib, c, rounding, **kw):
    return qatkit.ptq(m, calib, c, rounding=rounding, equalize=False, absorb_bias=False, correct_bias=None,
                      verbose=False, progress=False, **kw)


@pytest.mark.parametrize("c", [cfg(3), cfg(4, "per_group", 32)], ids=["w3-per-channel", "w4-g32"])
@pytest.mark.parametrize("method", ["gptq", "adaround"])
def test_data_aware_rounding_beats_nearest_and_convert_keeps_its_codes(setup, c, method):
    m, calib, held = setup
    with torch.no_grad():
        near = sqnr(run(m, calib, c, "nearest")(held), m(held))
        q = run(m, calib, c, method, adaround_iters=300)
        got = sqnr(q(held), m(held))
        assert got > near + 2, (near, got)
        conv = qatkit.convert(q)
        assert torch.equal(conv(held), q(held))
        for i in (0, 2, 4):  # the stored weight is exactly the dequantized codes
            lay = conv[i]
            assert torch.equal(lay.dequantized_weight(), q[i].weight)


def test_gptq_with_an_identity_hessian_is_round_to_nearest():
    torch.manual_seed(1)
    w = torch.randn(16, 32)
    wq, s, z = R.gptq_quantize(w, torch.eye(32), -4, 3, True, act_order=False, damp=0.0)
    want = qatkit.ops.fake_quantize(w, s, z, -4, 3, axis=0)
    # GPTQ rounds in float64, the kernel in float32: they may differ only at exact .5 ties
    frac = (w / s[:, None]).double().remainder(1)
    tie = (frac - 0.5).abs() < 1e-5
    assert torch.equal(wq[~tie], want[~tie])


def test_gptq_on_a_singular_hessian_without_damping_says_what_to_change():
    """Fewer calibration samples than columns make H = 2 X^T X / n singular; with damp=0 the
    Cholesky factorization failed with torch's LinAlgError; GPTQ now says to raise the damping."""
    torch.manual_seed(2)
    x = torch.randn(4, 32)
    H = 2 * x.t() @ x / 4
    with pytest.raises(ValueError, match=r"GPTQ: the damped Hessian \(damp=0.0\) is not positive definite; raise"):
        R.gptq_quantize(torch.randn(8, 32), H, -8, 7, True, damp=0.0)
    R.gptq_quantize(torch.randn(8, 32), H, -8, 7, True, damp=0.01)  # the default damping takes it


def test_gptq_lowers_the_layer_objective():
    torch.manual_seed(2)
    w = torch.randn(24, 48)
    X = torch.randn(4096, 48) @ torch.randn(48, 48)
    H = 2 * X.t().double() @ X.double() / X.shape[0]
    wq, s, z = R.gptq_quantize(w, H, -4, 3, True)
    near = qatkit.ops.fake_quantize(w, s, z, -4, 3, axis=0)

    def obj(q):
        d = (w - q).double()
        return float(torch.trace(d @ H @ d.t()))

    assert obj(wq) < 0.7 * obj(near)


def test_adaround_rounds_each_weight_down_or_up_only():
    torch.manual_seed(3)
    lin = nn.Linear(32, 16)
    s = lin.weight.detach().abs().amax(dim=1) / 3
    z = torch.zeros(16, dtype=torch.int32)
    wq = R.adaround_quantize(lin, torch.randn(512, 32), s, z, -4, 3, iters=200)
    ratio = lin.weight.detach() / s[:, None]
    codes = wq / s[:, None]
    assert bool(((codes - torch.floor(ratio)).round().abs() <= 1).all())
    assert bool((codes.round() - codes).abs().max() < 1e-4)


def test_data_aware_rounding_needs_data(setup):
    with pytest.raises(ValueError, match="rounding='gptq' needs calibration data"):
        qatkit.ptq(setup[0], None, cfg(), rounding="gptq", verbose=False, progress=False)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("conv", [
    lambda: nn.Conv2d(3, 5, 3, padding=1, stride=2),
    lambda: nn.Conv2d(3, 5, 2, padding="same", dilation=(1, 3)),  # odd totals: the extra on the right
    lambda: nn.Conv2d(3, 5, 3, padding="valid"),
    lambda: nn.Conv2d(3, 5, 3, padding="same", padding_mode="reflect"),
    lambda: nn.Conv2d(3, 6, (3, 2), padding=(1, 2), padding_mode="circular"),
    lambda: nn.Conv2d(3, 5, 3, padding=2, dilation=2, padding_mode="replicate"),
    lambda: nn.Conv1d(3, 5, 4, padding="same", padding_mode="reflect"),
    lambda: nn.Conv1d(3, 5, 3, padding=1, stride=2),
], ids=["strided", "same-even", "valid", "same-reflect", "circular", "replicate", "conv1d-same", "conv1d"])
def test_layer_matrix_input_rows_times_the_weight_are_the_conv(conv):
    """GPTQ / AdaRound's im2col rows (the Hessian's X) pad as the conv does, every padding form:
    rows @ weight_rows^T is the conv's own output (float64, no bias; grouped convs keep round to
    nearest)."""
    torch.manual_seed(0)
    layer = conv().double()
    nn.init.zeros_(layer.bias)
    x = torch.randn((2, 3, 7, 6) if isinstance(layer, nn.Conv2d) else (2, 3, 9), dtype=torch.float64)
    y = layer(x)
    rows = R.layer_matrix_input(layer, x)
    got = (rows @ R.weight_rows(layer).T).reshape(y.shape[0], -1, y.shape[1]).transpose(1, 2).reshape(y.shape)
    assert torch.allclose(got, y, rtol=0, atol=1e-12)


def test_adaround_on_an_attention_model_reconstructs_each_projections_float_output(monkeypatch):
    # the float reference had no q/k/v_proj modules (nn.MultiheadAttention packs them) and raised
    # "MultiheadAttention has no attribute `q_proj`"; now every projection is rounded against its
    # float output (rows in the QAT layer's own order: the targets' shapes match its inputs')
    torch.manual_seed(0)
    m = TinyAttention().eval()
    data = [torch.randn(16, 6, 16) for _ in range(4)]
    x = torch.cat(data)
    seen = {}
    real = R.adaround_quantize

    def spy(layer, inputs, *a, target=None, **k):
        seen[id(layer)] = (inputs.shape[0], None if target is None else tuple(target.shape))
        return real(layer, inputs, *a, target=target, **k)

    monkeypatch.setattr(R, "adaround_quantize", spy)
    cfg4 = QATConfig(default=LayerSpec(QuantSpec(bits=4), None), name="w4")
    kw = dict(correct_bias=None, verbose=False, progress=False)
    near = qatkit.ptq(m, data, cfg4, **kw)
    ada = qatkit.ptq(m, data, cfg4, rounding="adaround", adaround_iters=300, **kw)
    layers = {n: mod for n, mod in ada.named_modules() if isinstance(mod, qatkit.qat.QuantLinear)}
    assert sorted(layers) == ["att.k_proj", "att.out_proj", "att.q_proj", "att.v_proj", "inp", "out"]
    assert ada.ptq_report["rounding_skipped"] == []
    for n, mod in layers.items():
        rows, target = seen[id(mod)]
        assert target == (rows, mod.out_features), n

    def sqnr(q):
        with torch.no_grad():
            y, ref = q(x).double(), m(x).double()
        return float(10 * torch.log10(ref.pow(2).sum() / (y - ref).pow(2).sum()))

    assert sqnr(ada) > sqnr(near) + 2.0  # 25.2 vs 19.6 dB on Zen 4


class _WritesAfterRead(nn.Module):
    """l2's input is written in place after l2 has read it."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 8)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        y = self.l2(h)
        h[:, :48] = 0.0
        return self.l3(torch.relu(y) + h)


def test_gptq_sees_a_layers_inputs_as_the_layer_read_them():
    """The layer-input hooks kept the caller's tensor (a weight-only layer's input quantizer
    returns it as it is), which the model then overwrote: GPTQ fitted l2 to inputs with 48 of 64
    features zero, and l2's own error on its real inputs was 35x round-to-nearest's. (AdaRound's
    reconstruction reads the same hooks.)"""
    torch.manual_seed(0)
    m = _WritesAfterRead().eval()
    calib = [torch.randn(64, 32) for _ in range(4)]
    x = torch.randn(256, 32)
    with torch.no_grad():
        h = torch.relu(m.l1(x))
        want = m.l2(h)
        err = {r: sqnr(run(m, calib, cfg(3), r).l2(h), want) for r in ("nearest", "gptq")}
    assert err["gptq"] > err["nearest"] + 1.0, err  # 20.0 against 17.0 dB (1.6 dB before)


@pytest.mark.parametrize("preset", ["w4a4_lsq", "ternary_twn"])
def test_rounding_a_layer_cannot_take_is_warned_naming_it(preset):
    """rounding='gptq' / 'adaround' on layers they cannot round (LSQ step sizes, ternary / binary
    weights) kept round to nearest with a report entry only: with verbose=False, nothing said that
    the rounding asked for ran on none of them. Now a warning lists them, as scaling's does; the
    first and last layers (int8 under first_last) are rounded."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                            torch.nn.Linear(32, 4))
    cal = [torch.randn(32, 16) for _ in range(2)]
    with pytest.warns(UserWarning, match=r"ptq: rounding='gptq' kept round to nearest for 1 of 3 layer\(s\) with "
                                         r"quantized weights: 2 \((learned|ternary)"):
        q = qatkit.ptq(m, cal, getattr(qatkit, preset)(), rounding="gptq", verbose=False, progress=False)
    assert [n for n, _ in q.ptq_report["rounding_skipped"]] == ["2"]
    assert "gptq rounding of 2 layer(s)" in q.ptq_report["steps"]
