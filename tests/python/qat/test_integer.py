"""Integer-exact converted models (qatkit.qat.integer, docs/integer.md): every layer's integer form
equals a pure-integer reference (int64 matmuls of the codes, the documented requantization) bit
for bit; the QAT model agrees with it within the stated bound; layers without an integer form are
reported, never silently approximated."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qatkit
from qatkit.testing.reference import same_bits
from qatkit.qat import integer, set_compute
from qatkit.qat.convert import QuantizedConv1d, QuantizedConv2d, QuantizedLinear, _Quantized

STATIC = ["w8a8", "w4a8", "w4a8_g32", "w4a4_lsq", "ternary_twn", "bitnet_b158", "binary_w1a8", "xnor_w1a1"]


def _config(name):
    return {"w4a8": lambda: qatkit.w4a8(group_size=16),  # no kernel (groups of 16): the float64 simulation
            "w4a8_g32": lambda: qatkit.w4a8(group_size=32)}.get(name, lambda: qatkit.preset(name))()


def _mlp():
    return nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 10))


def _cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),  # depthwise, zero padding
        nn.Conv2d(16, 32, 3, stride=2, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(32, 32, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )


def _conv1d():
    return nn.Sequential(nn.Conv1d(4, 16, 5, padding=2), nn.ReLU(), nn.Conv1d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv1d(32, 32, 3, dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 12, 5))


MODELS = {"mlp": (_mlp, (24, 48)), "cnn": (_cnn, (6, 3, 8, 8)), "conv1d": (_conv1d, (6, 4, 16))}


def _prepared(arch, preset, seed=0):
    torch.manual_seed(seed)
    make, shape = MODELS[arch]
    model = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.prepare_qat(model, _config(preset))
        if any(getattr(m, "input_fake_quant", None) is not None for m in q.modules()):
            qatkit.qat.calibrate(q, [torch.randn(shape) * 2 for _ in range(3)])
    return q, shape


# ---------------------------------------------------------------- pure-integer reference


def _ref_act_codes(aq, x):
    """(int64 codes minus zero point, scale) computed from the formulas, not the ops."""
    spec = aq.spec
    kind = type(aq).__name__
    if kind == "BinaryActQuantizer":  # 'bitnet' per sample: sign(x - mean) with Sign(0) = -1, alpha = mean|x - mean|?
        _, s = qatkit.ops.binary_codes(x, spec.method, 0)  # the scale's formula is the op's (tested in ops/)
        dims = list(range(1, x.dim()))
        c = x.mean(dim=dims, keepdim=True)
        q = torch.where(x - c > 0, 1, -1).long()
        return q, s.float()
    if kind == "AffineDynamicActQuantizer":
        qmax = spec.quant_max
        rows = x.reshape(-1, x.shape[-1])
        s = rows.abs().amax(1, keepdim=True).clamp_min(1e-5) / qmax
        q = torch.round(rows * (1.0 / s)).clamp(-qmax - 1, qmax).long()
        return q.reshape(x.shape), s.reshape(-1)
    s, z = aq.frozen_qparams()
    s = s.float().reshape(())
    z = torch.round(z.float()).clamp(spec.quant_min, spec.quant_max).reshape(())
    q = (torch.round(x * (1.0 / s)) + z).clamp(spec.quant_min, spec.quant_max)
    return (q - z).long(), s


def _im2col(mod, xq):
    """Integer codes of the conv's input patches, [B, groups, Kg, L] (zero padding in the centred
    domain; other modes pad the float input before quantizing, handled by the caller)."""
    nd = 1 if isinstance(mod, QuantizedConv1d) else 2
    xd = xq.double() if nd == 2 else xq.double().unsqueeze(2)
    k = mod.kernel_size if nd == 2 else (1, mod.kernel_size[0])
    pad = (0, 0) if mod.padding_mode != "zeros" else (mod.padding if nd == 2 else (0, mod.padding[0]))
    dil = mod.dilation if nd == 2 else (1, mod.dilation[0])
    st = mod.stride if nd == 2 else (1, mod.stride[0])
    cols = F.unfold(xd, k, dilation=dil, padding=pad, stride=st).long()  # moves integers only
    b = cols.shape[0]
    return cols.reshape(b, mod.groups, -1, cols.shape[-1])


def _ref_forward(mod, x):
    """The integer form of one converted layer from int64 arithmetic."""
    form = mod._integer_form
    conv = isinstance(mod, (QuantizedConv1d, QuantizedConv2d))
    if isinstance(mod, QuantizedLinear) and mod.rms_norm:
        x = F.rms_norm(x, (mod.in_features,), eps=mod.eps)
    xq, sx = _ref_act_codes(mod.input_fake_quant, x)
    if conv and mod.padding_mode != "zeros":  # the float layer pads its quantized input: copies of codes
        xq = F.pad(xq.double(), mod._rpt, mode=mod.padding_mode).long()
    w = mod.weight_int.long().reshape(mod.weight_int.shape[0], -1)  # [N, K]
    n = w.shape[0]

    def products(wk):  # int64 sums of codes over one slice of K: [..., N] (linear) or [B, N, *spatial]
        if not conv:
            return xq @ wk.t()
        cols = _im2col(mod, xq)  # [B, G, Kg, L]
        g = mod.groups
        wg = wk.reshape(g, n // g, -1)
        out = torch.einsum("bgkl,gnk->bgnl", cols, wg).reshape(cols.shape[0], n, -1)
        y_shape = integer_shape(mod, xq)
        return out.reshape(y_shape)

    bias_shape = [1, -1] + ([1] * (x.dim() - 2)) if conv else [-1]
    if form == "static":
        acc = products(w)
        m = sx * mod.weight_scale.float().reshape(-1)  # float32 product
        if mod.bias is not None and not integer.int32_bias(mod):  # narrower than W8A8: float bias after
            return acc.float() * m.reshape(bias_shape) + mod.bias.reshape(bias_shape)
        bq = torch.zeros(n, dtype=torch.long) if mod.bias is None else torch.round(mod.bias.double() / m.double()).long()
        assert int((acc + bq.reshape(bias_shape)).abs().max()) < 2**31  # what an int32 kernel holds
        return (acc + bq.reshape(bias_shape)).float() * m.reshape(bias_shape)
    if form == "static_group":
        gs = mod.group_size
        sw = mod.weight_scale.reshape(n, -1).double()
        t = None
        for i in range(w.shape[1] // gs):
            wi = torch.zeros_like(w)
            wi[:, i * gs:(i + 1) * gs] = w[:, i * gs:(i + 1) * gs]
            term = products(wi).double() * sw[:, i].reshape(bias_shape)
            t = term if t is None else t + term
        y = (t * float(sx)).float()
        return y if mod.bias is None else y + mod.bias.reshape(bias_shape)
    acc = products(w).float()
    if conv or type(mod.input_fake_quant).__name__ == "BinaryActQuantizer":
        sxr = sx.reshape([-1] + [1] * (acc.dim() - 1))
    elif sx.numel() == 1:
        sxr = sx.reshape([1] * acc.dim())
    else:
        sxr = sx.reshape(list(acc.shape[:-1]) + [1])
    y = acc * (sxr * mod.weight_scale.float().reshape(bias_shape))
    return y if mod.bias is None else y + mod.bias.reshape(bias_shape)


def integer_shape(mod, x):
    nd = 1 if isinstance(mod, QuantizedConv1d) else 2
    fn = F.conv1d if nd == 1 else F.conv2d
    pad = 0 if mod.padding_mode != "zeros" else mod.padding
    w = torch.zeros(mod.weight_int.shape)
    return fn(torch.zeros(x.shape), w, None, mod.stride, pad, mod.dilation, mod.groups).shape


def _layer_inputs(model, x):
    """{converted layer: its input} from one forward."""
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0]))
             for m in model.modules() if isinstance(m, _Quantized)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return inputs


# ---------------------------------------------------------------- tests


# bitnet_b158's per-token activation scales have no integer form in a conv (reported: see below)
PAIRS = [(a, p) for a in sorted(MODELS) for p in STATIC if not (p == "bitnet_b158" and a != "mlp")]


@pytest.mark.parametrize("arch,preset", PAIRS)
def test_every_layer_equals_the_pure_integer_reference(arch, preset):
    q, shape = _prepared(arch, preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = qatkit.convert(q, integer=True)
    torch.manual_seed(1)
    inputs = _layer_inputs(c, torch.randn(shape) * 2)
    checked = 0
    for name, m in c.named_modules():
        if not isinstance(m, _Quantized) or m._integer_form is None:
            continue
        with torch.no_grad():
            got, want = m(inputs[m]), _ref_forward(m, inputs[m])
        assert got.dtype == torch.float32 and torch.equal(got, want), f"{preset} {arch} layer {name} ({m._integer_form})"
        checked += 1
    assert checked >= 2, "the model has too few integer layers for this test to mean anything"


@pytest.mark.parametrize("preset", STATIC)
def test_integer_forms_per_preset(preset):
    q, _ = _prepared("mlp", preset)
    c = qatkit.convert(q)
    rep = set_compute(c, "integer", warn=False)
    forms = {f for _, f, _ in rep}
    want = {"w4a8": "static_group", "w4a8_g32": "static_group", "bitnet_b158": "row", "xnor_w1a1": "row"}.get(preset,
                                                                                                        "static")
    assert want in forms, rep
    if preset == "bitnet_b158":
        qc, _ = _prepared("cnn", preset)
        rep = set_compute(qatkit.convert(qc), "integer", warn=False)
        assert any(f is None and "per-token scales of a conv input" in r for _, f, r in rep), rep


def test_float_compute_restores_the_qat_outputs_bit_for_bit():
    q, shape = _prepared("cnn", "w8a8")
    x = torch.randn(shape)
    c = qatkit.convert(q, integer=True)
    with torch.no_grad():
        yi = c(x)
        set_compute(c, "float")
        yf = c(x)
        yq = q.eval()(x)
    assert torch.equal(yf, yq)
    assert not torch.equal(yi, yf)  # the integer form is a different (documented) function
    rel = (yi - yf).abs().max() / yf.abs().max()
    assert rel < 0.05, f"{rel:.3e}"


@pytest.mark.parametrize("arch,preset", PAIRS)
def test_integer_and_float_layers_differ_by_the_bias_rounding_at_most(arch, preset):
    """The stated bound (docs/integer.md): given the same input, a layer's integer form differs from
    its float form (the QAT model's function) by at most half a step of the int32 bias grid
    (0.5 * S_x * S_w[n], W8A8 "static" layers only) plus the float form's own summation error
    (K * 2^-23 * sum |x * w|; CPU-dependent in the float form, never in the integer one)."""
    q, shape = _prepared(arch, preset)
    torch.manual_seed(2)
    x = torch.randn(shape) * 2
    c = qatkit.convert(q)
    ci = qatkit.convert(q, integer=True)
    inputs = _layer_inputs(c, x)
    mods_i = dict(ci.named_modules())
    for name, m in c.named_modules():
        if not isinstance(m, _Quantized) or mods_i[name]._integer_form is None:
            continue
        mi = mods_i[name]
        xin = inputs[m]
        with torch.no_grad():
            yf, yi = m(xin), mi(xin)
            xa = m.quantize_input(xin).abs()
            if isinstance(m, QuantizedLinear) and m.rms_norm:
                xa = m.quantize_input(F.rms_norm(xin, (m.in_features,), eps=m.eps)).abs()
            wa = m.dequantized_weight().abs()
            if isinstance(m, QuantizedLinear):
                mag = F.linear(xa, wa)
                ch = [-1]
            else:
                fn = F.conv1d if isinstance(m, QuantizedConv1d) else F.conv2d
                if m.padding_mode != "zeros":
                    xa = F.pad(xa, m._rpt, mode=m.padding_mode)
                mag = fn(xa, wa, None, m.stride, 0 if m.padding_mode != "zeros" else m.padding, m.dilation, m.groups)
                ch = [1, -1] + [1] * (mag.dim() - 2)
        k = m.weight_int[0].numel()
        bound = k * 2.0**-23 * mag + 2.0**-22 * yf.abs() + 1e-30
        if mi._integer_form == "static" and m.bias is not None and integer.int32_bias(mi):
            bound = bound + 0.5 * integer._multiplier(mi).reshape(ch)
        excess = ((yi - yf).abs() - bound).max()
        assert excess <= 0, f"{preset} {arch} {name}: |int - float| exceeds the bound by {float(excess):.3e}"


def test_code_moves_reports_per_layer_pairs():
    q, shape = _prepared("cnn", "w8a8")
    x = torch.randn(32, *shape[1:]) * 2
    c = qatkit.convert(q)
    rows = integer.code_moves(c, qatkit.convert(q, integer=True), x)
    assert [r["layer"] for r in rows] == [0, 2, 4, 6] and all(r["codes"] > 0 for r in rows)
    assert all(r["max_lsb"] <= 1 for r in rows)  # 8-bit x 8-bit: the int32 bias grid is far finer than a code
    same = integer.code_moves(c, c, x)
    assert all(r["moved"] == 0 for r in same)
    with pytest.raises(ValueError, match="nn.Sequential"):
        integer.code_moves(c, nn.Sequential(), x)


def test_layers_without_an_integer_form_are_reported_and_warned():
    q, shape = _prepared("cnn", "int8_weight_only")
    c = qatkit.convert(q)
    rep = set_compute(c, "integer")  # weight-only: not warned about (nothing was asked of the input)
    # weight-only convs keep float math; the Linear head runs the "weight_only" form (linear_w8_weight_only)
    assert [f for _, f, _ in rep] == [None] * 4 + ["weight_only"], rep
    assert all(r.startswith("float activations") for _, f, r in rep if f is None)
    # per-channel activation ranges put a scale inside the sum over K
    cfg = qatkit.QATConfig(default=qatkit.LayerSpec(
        weight=qatkit.QuantSpec(bits=8, symmetric=True, narrow_range=True, granularity="per_channel"),
        activation=qatkit.QuantSpec(bits=8, symmetric=False, granularity="per_channel", axis=-1),
    ))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q2 = qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 8)), cfg)
        qatkit.qat.calibrate(q2, [torch.randn(4, 16)])
    c2 = qatkit.convert(q2)
    with pytest.warns(UserWarning, match="per-channel activation ranges"):
        rep2 = set_compute(c2, "integer")
    assert rep2.float_layers and "per-channel" in rep2.float_layers[0][1]
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(c2(x), q2.eval()(x))  # still the float function, not an approximation


def test_a_cast_away_from_float32_warns_and_a_cast_back_restores_the_integer_form():
    q, shape = _prepared("cnn", "w8a8")
    c = qatkit.convert(q)
    set_compute(c, "integer", warn=False)
    forms = {n: m._integer_form for n, m in c.named_modules() if isinstance(m, _Quantized)}
    assert any(forms.values())
    x = torch.randn(shape)
    with torch.no_grad():
        want = c(x)
        with pytest.warns(UserWarning, match="was cast to torch.float64: it computes in float math now"):
            c.double()
        assert all(m._integer_form is None for m in c.modules() if isinstance(m, _Quantized))
        assert c(x.double()).dtype == torch.float64
        c.float()  # back to float32: the same integer forms, the same bits
        assert {n: m._integer_form for n, m in c.named_modules() if isinstance(m, _Quantized)} == forms
        assert torch.equal(c(x), want)
        # set_compute('float') while cast: the cast back keeps float math, as asked
        with pytest.warns(UserWarning, match="cast to torch.bfloat16"):
            c.bfloat16()
        set_compute(c, "float")
        c.float()
        assert all(m._integer_form is None for m in c.modules() if isinstance(m, _Quantized))


def test_set_compute_rejects_bad_arguments():
    with pytest.raises(ValueError, match="compute must be 'float' or 'integer'"):
        set_compute(nn.Sequential(), "int8")
    with pytest.raises(ValueError, match="no converted layers"):
        set_compute(nn.Sequential(nn.Linear(2, 2)))


def test_int32_overflow_bound_keeps_float_math():
    q, shape = _prepared("mlp", "w8a8")
    c = qatkit.convert(q)
    lin = [m for m in c.modules() if isinstance(m, QuantizedLinear)][1]
    lin.bias.fill_(1e9)  # bias / (s_x * s_w) far beyond int32
    form, why = integer.integer_form(lin)
    assert form is None and "2^31" in why


def _simulated_and_on_kernels(q):
    """(the converted model on the float64 integer simulation everywhere (no kernel plans), the
    converted model on kernels where they run a layer (kernels_only: what qatkit.load does), its report)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = qatkit.convert(q)
        set_compute(sim, "integer", warn=False)
        for m in sim.modules():
            if isinstance(m, _Quantized) and m._integer_form is not None:
                m.__dict__["_int8_plan"] = False
        k = qatkit.convert(q)
        rep = set_compute(k, "integer", warn=False, kernels_only=True)
    return sim, k, rep


@pytest.mark.parametrize("arch", ["mlp", "cnn", "conv1d"])
@pytest.mark.parametrize("preset", ["w8a8", "w4a8_g32", "ternary_twn", "binary_w1a8", "xnor_w1a1", "w4a4_lsq"])
def test_nan_inputs_give_nan_where_the_float_layers_do(arch, preset):
    """quantize_affine codes a NaN as the zero point, a number; the float QAT layer keeps the NaN,
    and every output whose sum reads it is NaN. Layer by layer, the kernels (what qatkit.load runs)
    and the float64 integer simulation are NaN exactly where the QAT model's layers are (a Linear's
    rows; a conv's windows: depthwise, strided, reflect-padded, 1 x 1, Conv1d) and equal bit for
    bit elsewhere; before, they gave finite outputs (docs/integer.md, "NaN inputs")."""
    q, shape = _prepared(arch, preset)
    sim, k, _ = _simulated_and_on_kernels(q)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g) * 2
    x[1].view(-1)[5] = float("nan")
    x[3].view(-1)[-1] = float("nan")
    outs = {}
    for tag, model in (("float", q.eval()), ("kernel", k), ("sim", sim)):
        layers = [m for m in model.modules() if getattr(m, "input_fake_quant", None) is not None]
        for i, m in enumerate(layers):
            m.register_forward_hook(lambda _m, _i, o, key=(tag, i): outs.__setitem__(key, o))
    with torch.no_grad():
        for model in (q, k, sim):
            model(x)
    n = len(layers)
    # kernels_only leaves a layer without a kernel (XNOR's reflect padding) in float math, which the
    # simulation's float64 form does not equal bit for bit
    on_kernel = [m._integer_form is not None for m in k.modules() if getattr(m, "input_fake_quant", None) is not None]
    assert n >= 3 and len(outs) == 3 * n and sum(on_kernel) >= 2
    for i in range(n):
        assert torch.equal(outs["kernel", i].isnan(), outs["float", i].isnan()), i
        assert torch.equal(outs["sim", i].isnan(), outs["float", i].isnan()), i
        assert not on_kernel[i] or same_bits(outs["kernel", i], outs["sim", i]), i
    first = outs["kernel", 0]
    assert bool(first[[0, 2]].isfinite().all()) and bool(first[1].isnan().any())
    if arch != "mlp":  # a conv: only the windows that read the NaN
        assert not bool(first[1].isnan().all())


def test_nan_inputs_to_per_token_layers_raise_in_the_qat_model_the_kernels_and_the_simulation():
    """A per-token layer (bitnet_b158's BitLinear) has no finite scale for a row holding NaN: the
    QAT model (quantize_per_token), the kernel (linear_dynamic_int8) and the float64 simulation all
    raise ValueError saying so (the simulation raised quantize_affine's 'scale must be positive')."""
    q, shape = _prepared("mlp", "bitnet_b158")
    sim, k, _ = _simulated_and_on_kernels(q)
    x = torch.randn(shape)
    x[2, 7] = float("nan")
    with torch.no_grad():
        for model, match in ((q.eval(), "must be finite, found NaN or Inf"), (k, "holds NaN or Inf"),
                             (sim, "holds NaN or Inf: its per_token scale")):
            with pytest.raises(ValueError, match=match):
                model(x)


def test_smoothquant_layers_divide_inside_the_kernel_with_the_simulations_bits():
    """A SmoothQuant layer's x / smooth runs inside linear_int8 (input_divisor) once its plan is
    built: the first call (plan built on the divided input) and the later ones (QuantizedLinear's
    direct call with the fused division) equal the float64 simulation bit for bit."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(40, 96), nn.ReLU(), nn.Linear(96, 24)).eval()
    x = torch.randn(64, 40)
    x[:, 3] *= 30  # an outlier channel, so the smoothing matters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(mlp, [x[:32]], qatkit.w8a8(), scaling="smoothquant", correct_bias=None, verbose=False,
                       progress=False)
    sim, k, _ = _simulated_and_on_kernels(q)
    lins = [m for m in k.modules() if isinstance(m, QuantizedLinear)]
    assert all(m.smooth is not None for m in lins)
    with torch.no_grad():
        want = sim(x[32:])
        assert torch.equal(k(x[32:]), want)  # first call: the plans are built on x / smooth
        for m in lins:
            plan = m.__dict__["_int8_plan"]
            assert plan["kernel"] == "linear_int8" and plan["bare"] is not None and plan["bare"] is not plan["call"]
        assert torch.equal(k(x[32:]), want)  # later calls: the division inside the kernel
        assert torch.equal(k(x[32:40]), sim(x[32:40]))


@pytest.mark.parametrize("arch", ["mlp", "cnn", "conv1d"])
def test_xnor_layers_run_on_the_popcount_kernel(arch):
    """xnor_w1a1's hidden layers (binary weights, per-sample binary inputs) run on ops.linear_w1a1 /
    conv2d_w1a1 when kernels_only (what qatkit.load does), the cnn's depthwise conv (groups=16) too
    (conv2d_w1a1's grouped form); bit for bit the integer simulation. The reflect-padded conv
    (codes are padded, not floats) keeps float math and is reported."""
    q, shape = _prepared(arch, "xnor_w1a1")
    torch.manual_seed(3)
    x = torch.randn(shape) * 2
    sim, k, rep = _simulated_and_on_kernels(q)
    xnor = [m for m in k.modules() if isinstance(m, _Quantized) and m.weight_spec.kind == "binary"]
    on = [m for m in xnor if integer.kernel_for(m) == "linear_w1a1"]
    assert len(on) >= (1 if arch == "cnn" else 2), rep
    grouped = [m for m in xnor if getattr(m, "groups", 1) != 1]
    assert len(grouped) == (1 if arch == "cnn" else 0)
    assert all(integer.kernel_for(m) == "linear_w1a1" for m in grouped)
    for (name, form, why), m in zip(rep, [m for m in k.modules() if isinstance(m, _Quantized)]):
        if m in xnor and m not in on:
            assert form is None and m._integer_form is None
            assert "padding_mode 'reflect'" in why, why
    with torch.no_grad():
        assert torch.equal(k(x), sim(x))


@pytest.mark.parametrize("nd,groups,kw", [(2, 12, dict(padding=1)), (2, 12, dict(padding=2, dilation=2, stride=2)),
                                          (2, 3, dict(padding=1, bias=False)), (2, 12, dict(kernel_size=1)),
                                          (1, 4, dict(padding=1, stride=2))])
def test_grouped_xnor_convs_run_on_conv2d_w1a1(nd, groups, kw):
    """Grouped and depthwise XNOR convs run on conv2d_w1a1's grouped form (conv2d_int8's grouped /
    depthwise kernels over the per-sample binary codes, zero padding code 0, then fp32(acc) *
    fp32(alpha[b] * w_scale[n]) (+ bias)): bit for bit the float64 integer simulation, with a NaN
    input (the int8 first layer's outputs whose window reads it are NaN, so that sample's alpha and
    outputs in the XNOR layers) and an all-zero sample (alpha 0); strided, dilated, 1 x 1 and
    Conv1d."""
    conv = nn.Conv2d if nd == 2 else nn.Conv1d
    kw = {"kernel_size": 3, **kw}
    net = nn.Sequential(conv(12, 12, **kw), nn.ReLU(), conv(12, 24, groups=groups, **kw), nn.ReLU(),
                        conv(24, 24, groups=24, **{**kw, "bias": True}), nn.Flatten(), nn.LazyLinear(5))
    shape = (5, 12, 9, 9) if nd == 2 else (5, 12, 17)
    g = torch.Generator().manual_seed(groups)
    net(torch.randn(shape, generator=g))
    q = qatkit.prepare_qat(net, qatkit.preset("xnor_w1a1"))
    q(torch.randn(shape, generator=g))
    sim, k, rep = _simulated_and_on_kernels(q)
    grouped = [m for m in k.modules() if isinstance(m, _Quantized) and getattr(m, "groups", 1) != 1]
    assert len(grouped) == 2 and all(integer.kernel_for(m) == "linear_w1a1" for m in grouped), rep
    x = torch.randn(shape, generator=g) * 2
    x[1] = 0  # alpha 0: every output of that sample is the bias
    x[2].view(-1)[7] = float("nan")
    outs = {}  # every layer's output (the next layer's binarization would hide a last-bit difference)
    for tag, model in (("kernel", k), ("sim", sim)):
        for i, m in enumerate(mm for mm in model.modules() if isinstance(mm, _Quantized)):
            m.register_forward_hook(lambda _m, _i, o, key=(tag, i): outs.__setitem__(key, o))
    with torch.no_grad():
        got = k(x)
        assert same_bits(got, sim(x))
        assert torch.equal(got.isnan(), q.eval()(x).isnan())  # NaN where the float QAT model has NaN
    assert bool(got[[0, 1, 3, 4]].isfinite().all())
    n = sum(isinstance(m, _Quantized) for m in k.modules())
    assert n >= 4 and all(same_bits(outs["kernel", i], outs["sim", i]) for i in range(n))


@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "binary_w1a8"])
def test_depthwise_conv_runs_on_the_grouped_conv_kernel(preset):
    """The cnn's depthwise conv (groups=16) runs on ops.conv2d_int8 (one GEMM per group) when
    kernels_only (what qatkit.load does), bit for bit the float64 integer simulation."""
    q, shape = _prepared("cnn", preset)
    torch.manual_seed(5)
    x = torch.randn(shape) * 2
    sim, k, _ = _simulated_and_on_kernels(q)
    dw = [m for m in k.modules() if isinstance(m, _Quantized) and getattr(m, "groups", 1) == 16]
    assert len(dw) == 1
    want = {"w8a8": "linear_int8", "ternary_twn": "linear_w2a8", "binary_w1a8": "linear_w1a8"}[preset]
    assert integer.kernel_for(dw[0]) == want
    with torch.no_grad():
        assert torch.equal(k(x), sim(x))


@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "binary_w1a8"])
def test_a_channels_last_cnn_on_the_kernels_gives_the_simulations_bits(preset):
    """A channels_last input (model.to(memory_format=torch.channels_last) usage) runs the cnn's convs
    on NHWC codes, each conv's output channels_last (the next conv's input as it is), and the logits
    are the float64 simulation's on the NCHW input, bit for bit."""
    q, shape = _prepared("cnn", preset)
    torch.manual_seed(6)
    x = torch.randn(shape) * 2
    sim, k, _ = _simulated_and_on_kernels(q)
    convs = [m for m in k.modules() if isinstance(m, _Quantized) and hasattr(m, "groups")]
    assert len(convs) == 4 and all(integer.kernel_for(m) for m in convs)
    out_cl = {}
    hooks = [m.register_forward_hook(lambda m, a, o: out_cl.__setitem__(
        m, o.is_contiguous(memory_format=torch.channels_last) and not o.is_contiguous())) for m in convs]
    with torch.no_grad():
        assert torch.equal(k(x.contiguous(memory_format=torch.channels_last)), sim(x))
    for h in hooks:
        h.remove()
    assert all(out_cl[m] for m in convs), [out_cl[m] for m in convs]


def _prepared_net(net, shape, preset):
    """net (lazy layers initialized by one call) prepared for the preset and calibrated."""
    net(torch.randn(shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.prepare_qat(net, _config(preset))
        q(torch.randn(shape))
        if any(getattr(m, "input_fake_quant", None) is not None for m in q.modules()):
            qatkit.qat.calibrate(q, [torch.randn(shape) * 2 for _ in range(3)])
    return q


def _strided_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=2, dilation=2, stride=2), nn.ReLU(),
        nn.Conv2d(8, 8, (3, 1), padding=(1, 0), groups=8, stride=(1, 2)), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.ReLU(),
        nn.Flatten(), nn.LazyLinear(10),
    )


@pytest.mark.parametrize("arch", ["cnn", "strided", "conv1d"])
@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "binary_w1a8", "xnor_w1a1"])
def test_conv_layers_call_their_bound_kernel_with_the_general_paths_bits(preset, arch):
    """QuantizedConv2d / QuantizedConv1d.forward call the plan's bound kernel (``plan["bare"]``) once
    the plan exists: every zero-padded conv on conv2d_int8 / conv2d_w1a1 has one (grouped XNOR convs,
    on the codes path, and the reflect-padded conv, padded first, none; a Conv1d as a 1 x k Conv2d), its
    output equals integer.conv's general path on NCHW and channels_last inputs, the model's logits the
    float64 simulation's; after set_compute("float") (the plans stay built) the float math runs again."""
    nd = 1 if arch == "conv1d" else 2
    if arch in ("cnn", "conv1d"):
        q, shape = _prepared(arch, preset)
    else:  # dilation, strides, a 3 x 1 depthwise kernel, no bias
        torch.manual_seed(0)
        shape = (4, 3, 11, 9)
        q = _prepared_net(_strided_cnn(), shape, preset)
    torch.manual_seed(8)
    x = torch.randn(shape) * 2
    sim, k, _ = _simulated_and_on_kernels(q)
    # (kernel_for builds the plans; xnor's reflect-padded conv has none: float math, reported)
    kind = QuantizedConv1d if nd == 1 else QuantizedConv2d
    convs = [m for m in k.modules() if isinstance(m, kind) and integer.kernel_for(m)]
    assert len(convs) >= 2
    bound = [m for m in convs if m.__dict__["_int8_plan"]["bare"] is not None]
    want_bound = [m for m in convs if m.padding_mode == "zeros"]
    assert bound == want_bound and bound
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0])) for m in convs]
    with torch.no_grad():
        for xi in (x, x.contiguous(memory_format=torch.channels_last)) if nd == 2 else (x, x.mT.contiguous().mT):
            assert torch.equal(k(xi), sim(x))
            for m in bound:
                got = m(inputs[m])
                general = integer.conv(m, inputs[m], nd)
                assert torch.equal(got, general) and got.stride() == general.stride()
    for h in hooks:
        h.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        set_compute(k, "float", warn=False)
        fl = qatkit.convert(q)
    with torch.no_grad():
        assert torch.equal(k(x), fl(x))  # the float (QAT-exact) math, not a stale bound kernel


def _string_padded(nd):
    """Convs with padding='same' (odd and even totals, dilated, depthwise) and 'valid'."""
    if nd == 1:
        return nn.Sequential(nn.Conv1d(8, 16, 4, padding="same"), nn.ReLU(),  # total 3: the odd one on the right
                             nn.Conv1d(16, 32, 3, padding="same", dilation=2), nn.ReLU(),  # total 4
                             nn.Conv1d(32, 32, 2, padding="valid"), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    return nn.Sequential(
        nn.Conv2d(8, 16, 2, padding="same"), nn.ReLU(),  # totals (1, 1)
        nn.Conv2d(16, 32, (3, 2), padding="same", dilation=(2, 1)), nn.ReLU(),  # totals (4, 1)
        nn.Conv2d(32, 32, 3, padding="same", groups=32), nn.ReLU(),  # symmetric, depthwise (K = 9)
        nn.Conv2d(32, 32, 3, padding="valid", bias=False), nn.ReLU(),
        nn.Flatten(), nn.LazyLinear(5),
    )


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("nd", [2, 1])
@pytest.mark.parametrize("preset", ["w8a8", "w4a8_g32", "ternary_twn", "binary_w1a8", "xnor_w1a1"])
def test_string_padded_convs_run_on_their_kernels_with_the_simulations_bits(preset, nd):
    """padding='same' / 'valid' convs run on their kernels (conv2d_int8 / conv2d_w4a8 / conv2d_w1a1):
    'same' resolves as aten does (half of dilation * (k - 1) on each side, the odd one on the right,
    zero-padded into x first: x = 0 quantizes to the zero point, the kernels' padding code). Every
    layer's output equals the float64 simulation's bit for bit on NCHW and channels_last inputs;
    symmetric ones have a bound kernel. XNOR's uneven 'same' convs keep float math (the extra zero
    would be binarized with the sample) and the report says why; w4a8's depthwise conv (K = 9: one
    group per row) runs on conv2d_int8."""
    torch.manual_seed(3)
    shape = (4, 8, 9, 10) if nd == 2 else (4, 8, 19)
    q = _prepared_net(_string_padded(nd), shape, preset)
    sim, k, rep = _simulated_and_on_kernels(q)
    why = {n: r for n, _, r in rep}
    convs = [(n, m) for n, m in k.named_modules() if isinstance(m, (QuantizedConv1d, QuantizedConv2d))]
    assert len(convs) == (4 if nd == 2 else 3)
    for n, m in convs:
        k_total = m.weight_int[0].numel()
        uneven = any(d * (kk - 1) % 2 for d, kk in zip(m.dilation, m.kernel_size)) and m.padding == "same"
        if m.weight_spec.kind == "float":
            continue  # a layer the preset keeps in float
        if preset == "xnor_w1a1" and m.weight_spec.kind == "binary" and uneven:  # (its first layer is w8a8)
            assert integer.kernel_for(m) is None and m._integer_form is None and "padding='same'" in why[n], why[n]
        elif preset == "w4a8_g32" and k_total % 32:  # one group per row (K = 9): the per-channel int8 kernel
            assert integer.kernel_for(m) == "linear_int8", n
        else:
            assert integer.kernel_for(m) is not None, (n, why[n])
            if nd == 2:
                assert (m.__dict__["_int8_plan"]["bare"] is not None) == (not uneven), n
    assert any(integer.kernel_for(m) for _, m in convs)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g) * 2
    mods_k = [mm for mm in k.modules() if isinstance(mm, _Quantized)]
    mods_sim = [mm for mm in sim.modules() if isinstance(mm, _Quantized)]
    seen = {}
    for i, m in enumerate(mods_k):
        m.register_forward_hook(lambda _m, inp, o, i=i: seen.__setitem__(i, (inp[0], o)))
    # every layer in integer compute against the simulation's layer on the same input. XNOR's float-math
    # layers differ from the simulation in the last bits, by CPU (oneDNN's float conv), and so may the
    # next layer's input: the whole model is compared only where every layer computes in integer.
    on = [i for i, m in enumerate(mods_k) if m._integer_form]
    assert len(on) >= 3
    inputs = [x, x.contiguous(memory_format=torch.channels_last)] if nd == 2 else [x]
    with torch.no_grad():
        want = sim(x)
        for xi in inputs:
            got = k(xi)
            if len(on) == len(mods_k):
                assert torch.equal(got, want)
            for i in on:
                assert torch.equal(seen[i][1], mods_sim[i](seen[i][0])), (i, xi.is_contiguous())


def _per_token_config(kind, granularity="per_token", bits=8):
    """Dynamic int8 inputs (per token, or per tensor) with int8 per-channel, TWN ternary or binary weights."""
    weight = {"int8": qatkit.QuantSpec(bits=8, symmetric=True, narrow_range=True, granularity="per_channel"),
              "ternary": qatkit.QuantSpec(kind="ternary", method="twn", granularity="per_channel"),
              "binary": qatkit.QuantSpec(kind="binary", method="mean_abs", granularity="per_channel")}[kind]
    act = qatkit.QuantSpec(bits=bits, granularity=granularity, scale="dynamic")
    return qatkit.QATConfig(default=qatkit.LayerSpec(weight=weight, activation=act))


@pytest.mark.parametrize("preset", ["bitnet_b158", "int8", "ternary", "binary", "int8 per-tensor"])
def test_per_token_layers_run_on_the_dynamic_kernel(preset):
    """BitLinear (bitnet_b158: RMSNorm, absmean ternary weights, per-token int8 inputs) and Linears
    with per-token (or per-tensor) dynamic int8 inputs and int8 / ternary / binary weights run on
    ops.linear_dynamic_int8 when kernels_only (what qatkit.load does), bit for bit the float64
    integer simulation, the rows of a 3-D input (tokens) each with their own scale; a 12-bit dynamic
    input has no kernel and is reported."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 160), nn.ReLU(), nn.Linear(160, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    kind, _, per = preset.partition(" ")
    cfg = qatkit.preset("bitnet_b158") if preset == "bitnet_b158" else _per_token_config(kind, per.replace("-", "_") or "per_token")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.prepare_qat(model, cfg)
    sim, k, rep = _simulated_and_on_kernels(q)
    layers = [m for m in k.modules() if isinstance(m, _Quantized)]
    on = [m for m in layers if integer.kernel_for(m) == "linear_dynamic_int8"]
    want_bits = {"bitnet_b158": 2, "int8": 8, "ternary": 2, "binary": 1}[kind]
    assert len(on) >= (2 if preset == "bitnet_b158" else 4), rep  # bitnet_b158 keeps its first and last layers float
    assert all(m.__dict__["_int8_plan"]["weight_bits"] == want_bits for m in on)
    assert all(m.__dict__["_int8_plan"]["per_tensor"] == (per == "per-tensor") for m in on)
    x = torch.randn(5, 7, 48) * 2
    x[0, 0] *= 50  # one token far larger than the others: per-token scales differ by 50x
    with torch.no_grad():
        got, want = k(x), sim(x)
    assert torch.equal(got, want)
    if preset == "int8":  # 12-bit dynamic inputs: no kernel, reported with the reason
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c2 = qatkit.convert(qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 8)), _per_token_config("int8", bits=12)))
        rep2 = set_compute(c2, "integer", warn=False, kernels_only=True)
        assert rep2.float_layers and "inputs of at most 8 bits; this layer's have 12" in rep2.float_layers[0][1], rep2


@pytest.mark.parametrize("preset", ["w8a8", "w4a8_g32", "ternary_twn", "binary_w1a8", "bitnet_b158", "xnor_w1a1",
                                    "int4_weight_only", "int8_weight_only", "binary_weight_only"])
def test_the_row_layout_plans_cuda_layers_take_give_the_panel_plans_bits(preset):
    """A layer on CUDA builds its kernel plan in the row layouts (the CUDA kernels' vector form and
    torch._int_mm read rows); the CPU kernels take both layouts, so here the row plan of every
    Linear, bound and called on the CPU, equals the panel plan (what CPU layers take) bit for bit:
    the row plans' operands (codes, corrections, scales) are right before a GPU runs them."""
    q, shape = _prepared("mlp", preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = qatkit.convert(q)
        set_compute(c, "integer", warn=False, kernels_only=True)
    torch.manual_seed(1)
    inputs = _layer_inputs(c, torch.randn(40, 48) * 2)
    checked = 0
    for m in c.modules():
        if not isinstance(m, QuantizedLinear) or m._integer_form is None:
            continue
        panel, rows = integer._int8_plan(m, rows=False), integer._int8_plan(m, rows=True)
        assert panel["kernel"] == rows["kernel"]
        x = inputs[m]
        if m.rms_norm:
            x = F.rms_norm(x, (m.in_features,), eps=m.eps)
        with torch.no_grad():
            want, got = integer._bind(panel)(x), integer._bind(rows)(x)
        assert torch.equal(got, want), f"{preset}: {rows['kernel']}"
        if rows["kernel"] != "linear_w1a1":  # XNOR has one layout
            assert rows["weight"].dim() == 2 and rows["weight"].shape[0] == m.out_features
        if rows["kernel"] == "linear_w4_weight_only":
            assert rows["gscale"].dim() == 2
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("arch", ["cnn", "conv1d"])
@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "binary_w1a8", "xnor_w1a1"])
def test_conv_row_plans_give_the_cpu_plans_bits(arch, preset):
    """CUDA convs take their plans in the row layouts (conv2d_int8 on CUDA runs the Linear kernels
    on patch rows); the CPU conv kernel takes int8 rows too, so here each conv's row plan, run on
    the CPU, equals its CPU plan (panel / padded rows) bit for bit."""
    q, shape = _prepared(arch, preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = qatkit.convert(q)
        set_compute(c, "integer", warn=False, kernels_only=True)
    torch.manual_seed(1)
    inputs = _layer_inputs(c, torch.randn(shape) * 2)
    checked = 0
    for m in c.modules():
        if not isinstance(m, (QuantizedConv1d, QuantizedConv2d)) or m._integer_form is None:
            continue
        nd = 1 if isinstance(m, QuantizedConv1d) else 2
        cpu, rows = integer._int8_plan(m, rows=False), integer._int8_plan(m, rows=True)
        assert cpu["kernel"] == rows["kernel"]
        with torch.no_grad():
            want = integer._conv_on_kernel(m, inputs[m], nd, cpu)
            got = integer._conv_on_kernel(m, inputs[m], nd, rows)
        assert torch.equal(got, want), (preset, arch, rows["kernel"], m.groups)
        checked += 1
    assert checked >= 2
