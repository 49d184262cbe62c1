"""qatkit._C.BoundOp (csrc/python/bound_op.cpp): a loaded layer's kernel call with its operands
bound once. It must compute what ``OpOverload._op`` computes, stay inside the dispatcher (dispatch
modes and the profiler see the op), and hand every call it cannot make exactly as ``_op`` would (a
tensor subclass, an active TorchFunctionMode, a wrong features dim, an error the op raises) back to
``_op``, which then behaves as before."""

import warnings

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import qatkit
from qatkit import _C
from qatkit import serialization as S
from qatkit.qat import integer

PRESETS = ["w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1", "int4_weight_only", "int8_weight_only"]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def _loaded(preset, tmp_path):
    g = torch.Generator().manual_seed(1)
    data = torch.randn(32, 1, 8, 8, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(_model(), list(data.split(16)), qatkit.preset(preset), verbose=False, progress=False)
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    loaded = qatkit.load(path)
    with torch.no_grad():
        loaded(data)  # the plans are built at the first call
    loaded.path = path
    return loaded, data


def _bound_layers(loaded):
    """[(layer, its plan's bare call, the BoundOp inside it)] of every layer on a kernel."""
    out = []
    for m in loaded.modules():
        plan = m.__dict__.get("_int8_plan")
        if plan and plan.get("bare") is not None:
            cells = dict(zip(plan["bare"].__code__.co_freevars, (c.cell_contents for c in plan["bare"].__closure__)))
            out.append((m, plan["bare"], cells.get("fast"), cells["slow"]))
    return out


def _inputs(loaded, data):
    """Each kernel layer's input in the model's forward."""
    seen, hooks = {}, []
    for m in loaded.modules():
        if m.__dict__.get("_int8_plan"):
            hooks.append(m.register_forward_pre_hook(lambda mod, a: seen.setdefault(mod, a[0])))
    with torch.no_grad():
        loaded(data)
    for h in hooks:
        h.remove()
    return seen


def _recorder(base, method):
    """A TorchFunctionMode / TorchDispatchMode class recording the functions it sees (``calls``)."""

    def hook(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func))
        return func(*args, **(kwargs or {}))

    def init(self):
        base.__init__(self)
        self.calls = []

    return type("Recorder", (base,), {"__init__": init, method: hook})


@pytest.mark.parametrize("preset", PRESETS)
def test_bound_calls_give_the_op_overloads_bits(preset, tmp_path):
    """Every kernel layer (Linear, dense and depthwise conv) calls through a BoundOp, which gives
    the bits of the same op called through OpOverload._op on the same operands."""
    loaded, data = _loaded(preset, tmp_path)
    layers, xs = _bound_layers(loaded), _inputs(loaded, data)
    assert layers and all(fast is not None for _, _, fast, _ in layers)
    with torch.no_grad():
        for m, bare, fast, slow in layers:
            x = xs[m]
            y = fast(x)
            assert isinstance(y, torch.Tensor) and type(y) is torch.Tensor
            assert torch.equal(y, slow(x)), type(m).__name__
            assert torch.equal(bare(x), y)
            # the forward's guarded copy (integer._plan): the same call while nothing changed
            guarded = m.__dict__["_int8_plan"]["fast"]
            assert isinstance(guarded, _C.BoundOp) and torch.equal(guarded(x), y) and torch.equal(m(x), y)


def test_the_dispatcher_sees_bound_calls(tmp_path):
    """A BoundOp call is a dispatcher call: a TorchDispatchMode sees each layer's op, the profiler
    records it, and under the no-grad / grad modes the output is what _op gives."""
    loaded, data = _loaded("int4_weight_only", tmp_path)

    layers, xs = _bound_layers(loaded), _inputs(loaded, data)
    m, _, fast, slow = next(t for t in layers if isinstance(t[0], S.PackedLinear))
    with torch.no_grad(), _recorder(TorchDispatchMode, "__torch_dispatch__")() as seen:
        y = fast(xs[m])
    assert isinstance(y, torch.Tensor) and "qatkit.linear_w4_weight_only.default" in seen.calls
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fast(xs[m])
    assert any(e.name == "qatkit::linear_w4_weight_only" for e in prof.events())
    assert torch.equal(fast(xs[m]), slow(xs[m]))  # grad mode on (no input needs grad)


def test_what_a_bound_op_cannot_call_goes_back_to_the_op_overload(tmp_path):
    """None (the caller then runs OpOverload._op) for a tensor subclass, under a TorchFunctionMode,
    for a wrong features dim or a 0-d input, and for an error the op raises; the layer then behaves
    as before: the mode sees the op, the subclass's output, the named errors."""
    loaded, data = _loaded("w8a8", tmp_path)
    layers, xs = _bound_layers(loaded), _inputs(loaded, data)
    m, bare, fast, slow = next(t for t in layers if isinstance(t[0], S.PackedLinear))
    x = xs[m]

    class Sub(torch.Tensor):
        pass

    sub = x.as_subclass(Sub)
    assert fast(sub) is None
    with torch.no_grad():
        assert torch.equal(bare(sub).as_subclass(torch.Tensor), slow(x))

    with torch.no_grad(), _recorder(TorchFunctionMode, "__torch_function__")() as mode:
        assert fast(x) is None
        y = bare(x)
    assert any("linear_int8" in f for f in mode.calls) and torch.equal(y, slow(x))
    k = x.shape[-1]
    for bad in (x[..., : k - 1], torch.zeros(())):
        assert fast(bad) is None
    with pytest.raises(ValueError, match=f"the layer takes {k}"):
        bare(x[..., : k - 1])
    assert fast(x.double()) is None  # the op's own TypeError, raised again by _op
    with pytest.raises(TypeError, match="float32"):
        bare(x.double())


def test_a_bound_op_checks_its_operands_at_binding():
    """A wrong operand count or an operand the schema does not take is an error at binding (the
    integer module then keeps the OpOverload path: _bound_op gives None)."""
    op = torch.ops.qatkit.linear_w4_weight_only.default
    with pytest.raises(ValueError, match="operands"):
        _C.BoundOp("qatkit::linear_w4_weight_only", "", tuple(range(9)))
    with pytest.raises(ValueError, match="no default"):
        _C.BoundOp("qatkit::linear_w4_weight_only", "", ())
    with pytest.raises(RuntimeError):
        _C.BoundOp("qatkit::no_such_op", "", ())
    assert integer._bound_op(op, ("not a tensor", None, 32), None) is None
    w = torch.zeros(16, 16, dtype=torch.uint8)
    good = integer._bound_op(op, (w, torch.ones(16, 1), 32), (-1, 32, "layer"))
    assert good is not None and good(torch.ones(2, 32)).shape == (2, 16)


def test_the_forwards_guarded_call_leaves_what_it_cannot_check_to_the_general_path(tmp_path):
    """The forward's guarded BoundOp (plan["fast"]) returns None after an in-place edit of a source,
    for an input of another dtype or with too few dims, and the forward's general path then does
    what it did before BoundOp: the edited layer's outputs, the named dtype error, the unbatched conv;
    a layer switched to float compute after its plan was built computes its float form."""
    loaded, data = _loaded("w8a8", tmp_path)
    xs = _inputs(loaded, data)
    # a Linear without a fused activation (the load fuses a ReLU after the others: relu(y + 1) is
    # not relu(y) + 1)
    lin = next(m for m in xs if isinstance(m, S.PackedLinear) and m.output_clamp is None)
    conv = next(m for m in xs if isinstance(m, S.PackedConv2d))
    fast = lin.__dict__["_int8_plan"]["fast"]
    x = xs[lin]
    with torch.no_grad():
        y = lin(x)
        assert fast(x.double()) is None
        with pytest.raises(TypeError, match="computes in integer form from float32 inputs"):
            lin(x.double())
        lin.bias.add_(1.0)  # in place: the plan is stale
        assert fast(x) is None
        assert torch.allclose(lin(x), y + 1.0, rtol=0, atol=1e-5)
        assert lin.__dict__["_int8_plan"]["fast"] is not fast  # rebuilt by the general path
        c = xs[conv]
        cfast = conv.__dict__["_int8_plan"]["fast"]
        assert cfast(c[0]) is None and torch.equal(conv(c[0]), conv(c[:1])[0])  # unbatched (C, H, W)
        fresh, want = qatkit.load(loaded.path), qatkit.load(loaded.path, compute="float")(data)
        assert not torch.equal(fresh(data), want)  # the plans built, on the kernels
        integer.set_compute(fresh, "float", warn=False)
        assert torch.equal(fresh(data), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_check.sh runs it)")
def test_a_cuda_layers_guarded_call_takes_inputs_on_its_device_only(tmp_path):
    """A loaded model moved to CUDA builds its plans there: each guarded BoundOp compares the input's
    device with the plan's (cuda:N), returns None for a CPU input (the forward's general path then
    says so) and gives the CPU's bits for a CUDA one (docs/integer.md, "Models on CUDA")."""
    loaded, data = _loaded("w8a8", tmp_path)
    with torch.no_grad():
        want = loaded(data)
        gpu = loaded.cuda()
        got = gpu(data.cuda())
    assert torch.equal(got.cpu(), want)
    lin = next(m for m in gpu.modules() if isinstance(m, S.PackedLinear) and m.__dict__.get("_int8_plan"))
    fast = lin.__dict__["_int8_plan"]["fast"]
    assert isinstance(fast, _C.BoundOp)
    x = torch.randn(4, lin.in_features)
    with torch.no_grad():
        assert fast(x) is None
        y = fast(x.cuda())
        assert y is not None and y.is_cuda and torch.equal(y, lin(x.cuda()))


_WARN_SCRIPT = r"""
import sys, warnings
import torch
import qatkit
from qatkit import _C
from qatkit.qat import integer
layer = qatkit.load(sys.argv[2])[0]
data = torch.randn(5, 8, 6, 6, generator=torch.Generator().manual_seed(0))
integer._plan(layer)  # the plan built without a kernel call: the forward's first call is its BoundOp's
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always" if sys.argv[1] == "record" else "error")
    try:
        with torch.no_grad():
            layer(data)  # the conv's derived weight form goes into the cache, whose capacity is read from the env
    except UserWarning as e:
        print("raised:", e)
print("python warnings:", [str(w.message) for w in seen if "QATKIT_WEIGHT_CACHE_MB" in str(w.message)])
print("bound:", isinstance(layer.__dict__["_int8_plan"]["fast"], _C.BoundOp))
"""


@pytest.mark.parametrize("mode", ["record", "error"])
def test_an_ops_warning_through_a_bound_call_is_a_python_warning(mode, tmp_path):
    """A TORCH_WARN inside the op (here: a QATKIT_WEIGHT_CACHE_MB that is not a number, read when the
    derived-weight cache is first used, by a loaded conv's first call in a new process) reaches
    Python's warnings as through OpOverload._op: recorded by catch_warnings, raised where the
    filters make it an error."""
    import os
    import subprocess
    import sys

    torch.manual_seed(0)
    data = torch.randn(5, 8, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(nn.Sequential(nn.Conv2d(8, 20, 3, padding=1)).eval(), [data], qatkit.preset("w8a8"),
                       verbose=False, progress=False)
    path = str(tmp_path / "t.safetensors")
    qatkit.export(q, path)
    env = {**os.environ, "QATKIT_WEIGHT_CACHE_MB": "abc"}
    out = subprocess.run([sys.executable, "-c", _WARN_SCRIPT, mode, path], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "bound: True" in out.stdout
    if mode == "record":
        assert "python warnings: [\"QATKIT_WEIGHT_CACHE_MB='abc' is not a whole number" in out.stdout, out.stdout
    else:
        assert "raised: QATKIT_WEIGHT_CACHE_MB='abc' is not a whole number" in out.stdout, out.stdout
