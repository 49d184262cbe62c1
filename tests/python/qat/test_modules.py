"""QAT modules against independent references: torch.ao's observers + torch's fake-quant ops for
W8A8, the STE formula for gradients, float Conv2d + BatchNorm2d for QuantConvBn2d, the BitNet
b1.58 recipe for BitLinear; state_dict resume and torch.compile."""

import contextlib
import copy
import dataclasses
import warnings

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from torch import nn

import qatkit
from qatkit.qat import (
    BitLinear,
    LayerSpec,
    QuantConv1d,
    QuantConv2d,
    QuantConvBn2d,
    QuantEmbedding,
    QuantLinear,
    QuantSpec,
)

W8 = QuantSpec(bits=8, symmetric=True, narrow_range=True, granularity="per_channel")
A8 = QuantSpec(bits=8, symmetric=False, momentum=0.1)
W8A8 = LayerSpec(W8, A8)


def torch_w8a8_reference(lin: nn.Linear, xs):
    """QAT W8A8 forward with torch.ao observers and torch's fake-quant ops (independent of qatkit)."""
    from torch.ao.quantization import MovingAverageMinMaxObserver, PerChannelMinMaxObserver

    wobs = PerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127
    )
    aobs = MovingAverageMinMaxObserver(
        averaging_constant=0.1, dtype=torch.qint8, qscheme=torch.per_tensor_affine, quant_min=-128, quant_max=127
    )
    outs = []
    for x in xs:
        aobs(x)
        s, z = aobs.calculate_qparams()
        xq = torch.fake_quantize_per_tensor_affine(x, float(s), int(z), -128, 127)
        wobs.reset_min_max_vals()
        wobs(lin.weight.detach())
        ws, wz = wobs.calculate_qparams()
        wq = torch.fake_quantize_per_channel_affine(lin.weight, ws, wz.int(), 0, -127, 127)
        outs.append(F.linear(xq, wq, lin.bias))
    return outs


def test_quant_linear_w8a8_matches_torch_ao_reference():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    q = QuantLinear.from_float(copy.deepcopy(lin), W8A8).train()
    xs = [torch.randn(8, 32) * (1 + i) for i in range(4)]
    ref = torch_w8a8_reference(lin, xs)
    for x, r in zip(xs, ref, strict=True):
        torch.testing.assert_close(q(x), r, rtol=1e-5, atol=1e-5)


def test_weight_gradient_is_the_ste():
    torch.manual_seed(1)
    q = QuantLinear.from_float(nn.Linear(24, 12), LayerSpec(QuantSpec(bits=4, granularity="per_channel"), None))
    x, g = torch.randn(5, 24), torch.randn(5, 12)
    q(x).backward(g)
    # the clipped STE: the gradient of the quantized weight where the unclamped code is in range
    # (symmetric ranges are amax / 7.5, so a channel's largest positive weight rounds to 8: outside)
    wq = q.quantized_weight().detach().requires_grad_()
    F.linear(x, wq, q.bias).backward(g)
    s, _ = q.weight_fake_quant.qparams(q.weight)
    r = torch.round(q.weight.detach() * (1.0 / s)[:, None])
    mask = (r >= -8) & (r <= 7)
    assert not mask.all()
    torch.testing.assert_close(q.weight.grad, wq.grad * mask)
    assert not torch.equal(q.quantized_weight(), q.weight)  # it did quantize


def _convs():
    return [
        (nn.Conv1d(6, 8, 3, padding=1), QuantConv1d, torch.randn(2, 6, 11)),
        (nn.Conv2d(6, 8, 3, padding=1), QuantConv2d, torch.randn(2, 6, 7, 7)),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), QuantConv2d, torch.randn(2, 8, 7, 7)),  # depthwise
        (
            nn.Conv2d(8, 4, 3, stride=2, groups=2, padding_mode="reflect", padding=1),
            QuantConv2d,
            torch.randn(2, 8, 9, 9),
        ),
    ]


@pytest.mark.parametrize("i", range(4))
def test_quant_conv_matches_float_conv_on_quantized_tensors(i):
    conv, cls, x = _convs()[i]
    q = cls.from_float(copy.deepcopy(conv), W8A8).train()
    y = q(x)
    xq = q.input_fake_quant(x)  # the observer has seen x once already: same qparams again
    ref = conv._conv_forward(xq, q.quantized_weight(), conv.bias)
    torch.testing.assert_close(y, ref)
    assert isinstance(q.to_float(), type(conv))


def test_per_group_weights_use_flattened_input_dim_and_fall_back():
    spec = LayerSpec(QuantSpec(bits=4, granularity="per_group", group_size=9), None)
    q = QuantConv2d.from_float(nn.Conv2d(4, 6, 3), spec)  # 4*3*3 = 36 = 4 groups of 9
    assert q.weight_fake_quant.granularity == "per_group"
    w2 = q.weight.detach().reshape(6, 36)
    s, z = qatkit.ops.choose_qparams(w2, -8, 7, True, group_size=9)
    expected = qatkit.ops.fake_quantize(w2, s, z, -8, 7, group_size=9).reshape(q.weight.shape)
    assert torch.equal(q.quantized_weight(), expected)
    q2 = QuantLinear.from_float(nn.Linear(10, 4), spec)  # 10 is not a multiple of 9
    assert q2.weight_fake_quant.granularity == "per_channel" and q2.weight_fake_quant.fell_back


def test_conv_bn_matches_float_conv_bn_before_and_after_freeze():
    torch.manual_seed(2)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    ref_conv, ref_bn = copy.deepcopy(conv), copy.deepcopy(bn)
    q = QuantConvBn2d.from_float(conv, bn, W8A8).train()
    qatkit.qat.disable_fake_quant(q)
    x = torch.randn(4, 3, 6, 6)
    # fake quant off: training-mode conv + batch norm (and the same running-stat updates)
    torch.testing.assert_close(q(x), ref_bn.train()(ref_conv(x)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(q.bn.running_mean, ref_bn.running_mean)
    torch.testing.assert_close(q.bn.running_var, ref_bn.running_var)
    # frozen (or eval): the inference form conv(x, W gamma/sigma) + folded bias
    q.freeze_bn()
    torch.testing.assert_close(q(x), ref_bn.eval()(ref_conv(x)), rtol=1e-4, atol=1e-5)
    # fake quant on: the folded weight is what gets quantized
    qatkit.qat.enable_fake_quant(q)
    factor, w, bias = q.folded()
    wq = q.weight_fake_quant(w)
    xq = q.input_fake_quant(x)
    torch.testing.assert_close(q(x), F.conv2d(xq, wq, bias, padding=1))


def test_quant_embedding_per_row():
    emb = nn.Embedding(20, 8)
    q = QuantEmbedding.from_float(emb, LayerSpec(QuantSpec(bits=4, granularity="per_channel"), A8))
    assert q.input_fake_quant is None
    idx = torch.tensor([[1, 5, 19]])
    s, z = qatkit.ops.choose_qparams(emb.weight.detach(), -8, 7, True, axis=0)
    table = qatkit.ops.fake_quantize(emb.weight, s, z, -8, 7, axis=0)
    assert torch.equal(q(idx), table[idx])


def test_bitlinear_is_the_b158_recipe():
    torch.manual_seed(3)
    lin = nn.Linear(32, 16, bias=False)
    q = BitLinear.from_float(lin, qatkit.bitnet_b158().default)
    x = torch.randn(3, 5, 32)
    # the authors' recipe in float64 (docs/papers.md §7.2): RMSNorm, per-token absmax int8, absmean ternary
    x64 = x.double()
    xn = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6)
    sx = 127 / xn.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    xq = (xn * sx).round().clamp(-128, 127) / sx
    w = lin.weight.double()
    gamma = w.abs().mean().clamp(min=1e-5)
    wq = (w / gamma).round().clamp(-1, 1) * gamma
    torch.testing.assert_close(q(x).double(), F.linear(xq, wq), rtol=1e-4, atol=1e-4)
    q(x).sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0  # shared shadow weight trains


def test_state_dict_resume_is_bit_identical():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    cfg = qatkit.w8a8()
    data = [(torch.randn(8, 16), torch.randint(0, 8, (8,))) for _ in range(6)]

    def steps(m, opt, batches):
        for x, y in batches:
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()

    a = qatkit.prepare_qat(model, cfg)
    oa = torch.optim.SGD(a.parameters(), lr=0.1)
    steps(a, oa, data[:3])
    saved_model, saved_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(oa.state_dict())
    steps(a, oa, data[3:])
    b = qatkit.prepare_qat(model, cfg)
    b.load_state_dict(saved_model)
    ob = torch.optim.SGD(b.parameters(), lr=0.1)
    ob.load_state_dict(saved_opt)
    steps(b, ob, data[3:])
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), k


def test_loading_another_config_names_the_key():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    a = qatkit.prepare_qat(model, qatkit.w8a8())
    b = qatkit.prepare_qat(model, qatkit.QATConfig(default=LayerSpec(QuantSpec(bits=4, granularity="per_channel"), A8)))
    with pytest.raises(ValueError, match=r"key '0\.weight_fake_quant\._extra_state'.*\['bits', 'narrow_range'\]"):
        b.load_state_dict(a.state_dict())


def test_compile_fullgraph_training_step_and_flag_toggles_do_not_recompile():
    torch.manual_seed(5)
    model = qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), qatkit.w8a8())
    ref = copy.deepcopy(model)
    counter = torch._dynamo.testing.CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(4, 16)
    for m in (compiled, ref):
        m(x).sum().backward()
    torch.testing.assert_close(model[0].weight.grad, ref[0].weight.grad)
    n = counter.frame_count
    obs = model[0].input_fake_quant
    before = obs.running_min.clone()
    qatkit.qat.disable_observer(model)  # flips tensor flags only
    compiled(x * 10)
    assert torch.equal(obs.running_min, before)  # the flag was read inside the compiled graph
    qatkit.qat.enable_observer(model)
    compiled(x * 10)
    assert not torch.equal(obs.running_min, before)
    assert counter.frame_count == n


def _lsq_states(model):
    from qatkit.qat.quantizers import AffineLearnedActQuantizer

    return [(m.scale.detach().clone(), m.zero_point.detach().clone(), int(m.initialized))
            for m in model.modules() if isinstance(m, AffineLearnedActQuantizer)]


def test_compiled_lsq_initializes_inside_one_graph():
    # the first-batch initialization read a flag on the host and checked the range in Python: with
    # fullgraph=True the first call raised, and without it the breaks left 9 graphs in use (a 7-layer
    # model trained 2.2x slower than one initialized by an eager step first: docs/benchmarks.md)
    cfg = dataclasses.replace(qatkit.w4a4_lsq(), first_last=None)
    torch.manual_seed(8)
    model = qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4)), cfg)
    ref = copy.deepcopy(model)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(8, 16) * 3 + 1
    for _ in range(3):
        y, y_ref = compiled(x), ref(x)
        y.sum().backward()
        y_ref.sum().backward()
    assert counter.frame_count == 2  # the initializing graph, then the steady one
    assert torch.equal(y, y_ref)  # step sizes initialized as in eager, bit for bit
    for (s, z, i), (s_ref, z_ref, i_ref) in zip(_lsq_states(model), _lsq_states(ref)):
        assert torch.equal(s, s_ref) and torch.equal(z, z_ref) and i == i_ref == 1


def test_compiled_lsq_refuses_a_non_finite_first_batch_and_keeps_copied_step_sizes():
    cfg = dataclasses.replace(qatkit.w4a4_lsq(), first_last=None)
    torch.manual_seed(9)
    model = qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), cfg)
    ema = copy.deepcopy(model)  # an EMA copy made before training
    x = torch.randn(8, 16)
    bad = x.clone()
    bad[0, 0] = float("nan")
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with pytest.raises(RuntimeError, match=r"activation quantizer '0.input_fake_quant': the first batch.*NaN or Inf"):
        compiled(bad)
    assert [i for _, _, i in _lsq_states(model)] == [0, 0]  # nothing initialized
    compiled(x)
    assert [i for _, _, i in _lsq_states(model)] == [1, 1]
    with torch.no_grad():  # the EMA takes the buffers in place; its compiled forward keeps them
        for v, v_ema in zip(model.state_dict().values(), ema.state_dict().values()):
            v_ema.copy_(v)
    torch.compile(ema)(x * 100)
    for (s, z, _), (s_ema, z_ema, _) in zip(_lsq_states(model), _lsq_states(ema)):
        assert torch.equal(s, s_ema) and torch.equal(z, z_ema)


@pytest.mark.parametrize("preset", ["w8a8", "w4a4_lsq"])
def test_a_compiled_eval_graph_warns_before_any_data_as_eager_does(preset):
    # compiled, a static quantizer said nothing, and an LSQ one broke fullgraph=True ("Attempted to
    # call function marked as skipped": its warning)
    cfg = dataclasses.replace(getattr(qatkit, preset)(), first_last=None)
    torch.manual_seed(10)
    model = qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), cfg).eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 16)
    with pytest.warns(UserWarning, match=r"activation quantizer '0.input_fake_quant' runs before observing any data"):
        y = compiled(x)
    torch.testing.assert_close(y, model(x), rtol=0, atol=1e-6)
    fresh = qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), cfg).eval()
    for strict in (False, True):  # export traces it too (non-strict on fake tensors, no values to read)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ep = torch.export.export(fresh, (x,), strict=strict)
        assert torch.equal(ep.module()(x), fresh(x))
    calibrated = qatkit.qat.calibrate(copy.deepcopy(model), [x]) if preset == "w8a8" else None
    if calibrated is not None:  # an observed model traces without a word
        torch._dynamo.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            torch.compile(calibrated, fullgraph=True)(x)


def test_the_trace_time_check_carries_dynamos_constant_mark_and_import_skips_dynamo():
    # qatkit marks it as torch._dynamo.assume_constant_result would, without importing Dynamo (which
    # made `import qatkit` take 1.1 s instead of 0.08 s)
    from qatkit.qat import quantizers

    assert torch._dynamo.assume_constant_result(lambda: 0)._dynamo_marked_constant is True
    assert quantizers._check_observed_at_trace._dynamo_marked_constant is True
    import subprocess
    import sys

    code = "import sys, qatkit; print('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_compile_inductor_matches_eager():
    torch.manual_seed(6)
    model = qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), qatkit.w4a8(8)).eval()
    qatkit.qat.calibrate(model, [torch.randn(8, 16)])
    x = torch.randn(4, 16)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


def test_learned_scales_train():
    torch.manual_seed(7)
    model = qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), qatkit.w4a4_lsq())
    # first/last are W8A8 with 3+ layers; with two Linear layers both are first/last: override
    cfg = qatkit.QATConfig(default=qatkit.w4a4_lsq().default)
    model = qatkit.prepare_qat(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), cfg)
    wq = model[0].weight_fake_quant
    s0 = wq.scale.detach().clone()
    model(torch.randn(8, 16)).pow(2).sum().backward()
    assert wq.scale.grad is not None and wq.scale.grad.shape == s0.shape
    assert model[0].input_fake_quant.scale.grad is not None
    assert model[0].input_fake_quant.zero_point.grad is not None  # LSQ+ offset


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_conv_bn_training_path_quantizes_the_folded_weight(granularity):
    """Before the freeze the layer computes conv(x, Q(W f) / f) then batch norm. Per-channel symmetric
    quantizers commute with the per-channel fold (Q(W f) / f == Q(W) in exact arithmetic), so that
    path quantizes W directly; per-tensor ones take the explicit fold. Both match the formula."""
    torch.manual_seed(8)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_var.uniform_(0.2, 5)
        bn.weight.uniform_(-2, 2)  # negative gammas too
    spec = LayerSpec(QuantSpec(bits=4, narrow_range=True, granularity=granularity), None)
    q = QuantConvBn2d.from_float(conv, bn, spec).train()
    assert q._fold_invariant == (granularity == "per_channel")
    x = torch.randn(4, 3, 6, 6)
    bn_ref = copy.deepcopy(bn)
    factor, w, _ = q.folded()
    wq = q.weight_fake_quant(w.detach()) / factor.detach().reshape(-1, 1, 1, 1)
    ref = bn_ref(F.conv2d(x, wq, conv.bias, padding=1))
    torch.testing.assert_close(q(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "embedding", "bitlinear"])
def test_layers_built_directly_equal_layers_built_from_float(kind):
    # QuantConv1d / QuantConv2d / QuantEmbedding took no spec and failed at their first call
    # ("no attribute 'input_fake_quant'"); QuantLinear(16, 8) quantized nothing, silently
    spec = qatkit.w4a8(8).default
    torch.manual_seed(11)
    if kind == "linear":
        direct, base, x = QuantLinear(16, 8, layer_spec=spec), nn.Linear(16, 8), torch.randn(4, 16)
    elif kind == "conv1d":
        direct, base, x = QuantConv1d(4, 8, 3, padding=1, layer_spec=spec), nn.Conv1d(4, 8, 3, padding=1), torch.randn(2, 4, 9)
    elif kind == "conv2d":
        direct = QuantConv2d(4, 8, 3, stride=2, groups=2, padding_mode="reflect", padding=1, layer_spec=spec)
        base, x = nn.Conv2d(4, 8, 3, stride=2, groups=2, padding_mode="reflect", padding=1), torch.randn(2, 4, 7, 7)
    elif kind == "embedding":
        direct, base, x = QuantEmbedding(20, 8, padding_idx=0, layer_spec=spec), nn.Embedding(20, 8, padding_idx=0), torch.randint(0, 20, (3, 5))
    else:
        spec = qatkit.bitnet_b158().default
        direct, base, x = BitLinear(16, 8), nn.Linear(16, 8), torch.randn(4, 16)  # b1.58's spec by default
    base.load_state_dict({k: v for k, v in direct.state_dict().items() if "fake_quant" not in k})
    cls = type(direct)
    via_float = cls.from_float(base, spec)
    for m in (direct, via_float):
        m(x).sum().backward()
    assert torch.equal(direct(x), via_float(x))
    assert torch.equal(direct.weight.grad, via_float.weight.grad)
    assert direct.weight_fake_quant.spec == spec.weight
    with pytest.raises(TypeError, match=rf"{cls.__name__}: layer_spec is required") if kind != "bitlinear" else contextlib.nullcontext():
        args = {"linear": (16, 8), "conv1d": (4, 8, 3), "conv2d": (4, 8, 3), "embedding": (20, 8), "bitlinear": (16, 8)}[kind]
        cls(*args)
    direct.eval()
    model = nn.Sequential(direct)
    converted = qatkit.convert(model)
    with torch.no_grad():
        assert torch.equal(converted(x), direct(x))


def test_a_conv_bn_pair_is_not_built_directly():
    with pytest.raises(TypeError, match=r"QuantConvBn2d.from_float\(conv, bn, layer_spec\)"):
        QuantConvBn2d(3, 8, 3)
