"""QAT layers on CUDA: a prepared model moved to the GPU trains a step and matches the CPU model
(outputs, gradients, observer state) to float32 reduction-order tolerance; a loaded integer model
moved to the GPU runs its Linear layers on the CUDA kernels with the CPU model's bits. Run by
scripts/gpu_check.sh on the GPU machine; skipped where torch has no CUDA device."""

import copy
import warnings

import pytest
import torch
from torch import nn

import qatkit

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and qatkit.build_info()["cuda"]),
    reason="needs a CUDA device and qatkit built with CUDA (scripts/gpu_check.sh on the GPU machine)",
)


@pytest.mark.parametrize("name", ["w8a8", "w4a8", "w4a4_lsq", "ternary_twn", "binary_w1a8", "xnor_w1a1"])
def test_qat_step_cuda_matches_cpu(name):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(512, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    cfg = qatkit.QATConfig(default=qatkit.preset(name).default)
    cpu = qatkit.prepare_qat(model, cfg)
    gpu = copy.deepcopy(cpu).cuda()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for m, dev in ((cpu, "cpu"), (gpu, "cuda")):
        nn.functional.cross_entropy(m(x.to(dev)), y.to(dev)).backward()
    for (k, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5, msg=k)
    for (k, a), b in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-3, atol=1e-4, msg=k)


def _ptq_export_load(model, calib, preset, tmp_path):
    """(the PTQ model, its exported file loaded on the CPU, the same loaded and moved to CUDA)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(model, calib, qatkit.preset(preset), verbose=False, progress=False)
    path = str(tmp_path / "m.safetensors")
    qatkit.export(q, path)
    return q, qatkit.load(path), qatkit.load(path).cuda()


@pytest.mark.parametrize("name", ["w8a8", "ternary_twn"])
def test_prepare_qat_on_a_cuda_model_puts_the_quantizers_on_cuda(name):
    """prepare_qat of a model already on the GPU: the new quantizers' buffers live there too, so
    calibration and training run, and the outputs equal preparing on the CPU and moving."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    cfg = qatkit.preset(name)
    moved = qatkit.prepare_qat(copy.deepcopy(model), cfg).cuda()
    on_gpu = qatkit.prepare_qat(copy.deepcopy(model).cuda(), cfg)
    assert all(b.is_cuda for b in on_gpu.buffers()) and all(p.is_cuda for p in on_gpu.parameters())
    x = torch.randn(16, 32, device="cuda")
    qatkit.qat.calibrate(moved, [x])
    qatkit.qat.calibrate(on_gpu, [x])
    with torch.no_grad():
        assert torch.equal(on_gpu(x), moved(x))


# preset -> the CUDA kernel its quantized Linears run on (XNOR's linear_w1a1: the W1A8 kernels on
# the binary codes there)
_LOADED = {"w8a8": "linear_int8", "w4a8": "linear_w4a8", "ternary_twn": "linear_w2a8", "binary_w1a8": "linear_w1a8",
           "bitnet_b158": "linear_dynamic_int8", "xnor_w1a1": "linear_w1a1", "int4_weight_only": "linear_w4_weight_only",
           "int8_weight_only": "linear_w8_weight_only", "binary_weight_only": "linear_w4_weight_only"}
_FLOAT_KERNELS = ("linear_w4_weight_only", "linear_w8_weight_only")


@pytest.mark.parametrize("rows", [3, 40])  # the vector GEMVs' tiles; torch._int_mm from 17 rows
@pytest.mark.parametrize("preset", sorted(_LOADED))
def test_a_loaded_model_on_cuda_runs_the_cuda_kernels_with_the_cpu_bits(preset, rows, tmp_path):
    """qatkit.load, then .cuda(): each quantized Linear builds its plan on the GPU in the row
    layouts and runs the CUDA kernel. Layer by layer, on the same input (after the layer's RMSNorm,
    computed on the CPU: a float reduction whose order is the device's), integer kernels give the
    CPU layer's outputs bit for bit and weight-only ones stay within the float kernels' bound of the
    converted float form. Whole models without RMSNorm or XNOR give the CPU's bits. XNOR layers'
    per-sample binarization centre is a float mean in the device's order (a code can flip at an
    element within an ulp of it): their outputs are checked to float32 rounding."""
    import torch.nn.functional as F

    from qatkit.qat import integer
    from qatkit.serialization import PackedLinear

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 64), nn.ReLU(),
                        nn.Linear(64, 10))
    q, cpu, gpu = _ptq_export_load(mlp, [torch.randn(16, 64) for _ in range(2)], preset, tmp_path)
    x = torch.randn(rows, 64)
    kernel = _LOADED[preset]
    whole_model_bits = kernel not in _FLOAT_KERNELS + ("linear_dynamic_int8", "linear_w1a1")
    with torch.no_grad():
        want = cpu(x)
        for _ in range(2):  # the first call builds the plans, the second takes the bound kernels
            got = gpu(x.cuda())
            assert got.is_cuda and got.shape == want.shape
            if whole_model_bits:
                assert torch.equal(got.cpu(), want)
    inputs = {}
    lin = {n: m for n, m in gpu.named_modules() if isinstance(m, PackedLinear) and m._integer_form is not None}
    cpu_layers, float_layers = dict(cpu.named_modules()), dict(qatkit.convert(q).named_modules())
    assert len(lin) >= 2
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0].cpu())) for m in lin.values()]
    with torch.no_grad():
        gpu(x.cuda())
    for hk in hooks:
        hk.remove()
    kernels = set()
    for name, m in lin.items():  # the preset's layers, and its int8 first / last layers (linear_int8)
        plan = m.__dict__["_int8_plan"]
        assert plan["device"].type == "cuda" and plan["kernel"] in (kernel, "linear_int8")
        assert plan["call"] is not None and plan["weight"].dim() == 2  # a CUDA kernel, the row layout
        kernels.add(plan["kernel"])
        h = inputs[m]
        if m.rms_norm:
            h = F.rms_norm(h, (m.in_features,), eps=m.eps)
        with torch.no_grad():
            yg, yc = integer.linear(m, h.cuda()).cpu(), integer.linear(cpu_layers[name], h)
            if plan["kernel"] in _FLOAT_KERNELS:
                mc = float_layers[name]
                w, hd, yf = mc.dequantized_weight().double(), h.double(), mc(h).double()
                bound = hd.shape[1] * 2.0**-24 * (hd.abs() @ w.abs().t()) + 2.0**-23 * yf.abs() + 1e-30
                assert bool(((yg.double() - yf).abs() <= bound).all()), name
            elif plan["kernel"] == "linear_w1a1":
                # the per-sample centre is a float32 mean in the device's order (the scale accumulates
                # in float64 on both); a flipped code would move an output by 2 |w scale|, far beyond this
                torch.testing.assert_close(yg, yc, rtol=1e-5, atol=1e-6, msg=name)
            else:
                assert torch.equal(yg, yc), name
    assert kernel in kernels


def _load_run():
    """qatkit_load_run: $QATKIT_LOAD_RUN (scripts/gpu_check.sh's build), else the test build's."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    exe = os.environ.get("QATKIT_LOAD_RUN", os.path.join(root, "build", "py", "qatkit_load_run"))
    if not os.path.exists(exe):
        pytest.skip(f"no qatkit_load_run at {exe} (built with -DQATKIT_BUILD_LOAD_RUN=ON or the test build)")
    return exe


@pytest.mark.parametrize("preset", sorted(_LOADED))
def test_the_cpp_loader_on_cuda_runs_the_cuda_kernels_with_pythons_bits(preset, tmp_path):
    """qatkit::nn::load in a LibTorch program, model and input moved to CUDA (qatkit_load_run
    --cuda): its Linears build their row-layout plans on the GPU from the same rules as Python's, so
    the C++ outputs equal Python's loaded model on CUDA bit for bit (weight-only presets included:
    the same kernel on the same operands, XNOR's included); on the CPU, C++ equals Python as before."""
    import subprocess

    from safetensors.torch import load_file, save_file

    exe = _load_run()
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(mlp, [torch.randn(16, 64) for _ in range(2)], qatkit.preset(preset), verbose=False,
                       progress=False)
    path, inp = str(tmp_path / "m.safetensors"), str(tmp_path / "x.safetensors")
    qatkit.export(q, path)
    x = torch.randn(40, 64)
    save_file({"x": x}, inp)
    outs = {}
    for flag in ("", "--cuda"):
        out = str(tmp_path / f"y{flag}.safetensors")
        r = subprocess.run([exe, *([flag] if flag else []), path, inp, out], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        outs[flag] = (load_file(out)["y"], r.stderr)
    with torch.no_grad():
        py_cpu, py_gpu = qatkit.load(path)(x), qatkit.load(path).cuda()(x.cuda()).cpu()
    assert torch.equal(outs[""][0], py_cpu)
    assert torch.equal(outs["--cuda"][0], py_gpu) and "no CUDA kernel" not in outs["--cuda"][1]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("padding", [1, "same"])
@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "binary_w1a8", "xnor_w1a1"])
def test_a_loaded_cnn_on_cuda_gives_the_cpu_bits(preset, padding, tmp_path):
    """A loaded CNN (a conv, a depthwise conv, Linears) moved to CUDA: the convs run conv2d_int8 on
    the GPU (im2col, then the Linear kernels; XNOR's conv2d_w1a1 too), the Linears their kernels,
    and the outputs equal the CPU model's bit for bit (XNOR: its per-sample centre is a float mean in
    the device's order: equal to float32 rounding). padding='same' resolves as on the CPU (the last
    conv's even kernel: its extra zero column padded into x first)."""
    from qatkit.serialization import PackedConv2d

    torch.manual_seed(0)
    last = nn.Conv2d(24, 24, 2, padding="same") if padding == "same" else nn.Conv2d(24, 24, 3, padding=1)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=padding), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=padding, groups=16),
                        nn.ReLU(), nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU(), last, nn.ReLU(), nn.Flatten(),
                        nn.Linear(24 * 16, 10))
    _, cpu, gpu = _ptq_export_load(cnn, [torch.randn(8, 3, 8, 8) for _ in range(2)], preset, tmp_path)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        want = cpu(x)
        for _ in range(2):
            got = gpu(x.cuda()).cpu()
            if preset == "xnor_w1a1":  # the binarization centre: a float mean in the device's order
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(got, want)
    convs = [m for m in gpu.modules() if isinstance(m, PackedConv2d) and m._integer_form is not None]
    assert convs and all(m.__dict__["_int8_plan"]["device"].type == "cuda" for m in convs if m.__dict__.get("_int8_plan"))


def test_an_ema_copy_on_cuda_keeps_its_lsq_step_sizes():
    """tests/python/qat/test_ema.py on the GPU: the flag mirrors are not resynced there (a host
    sync per call), but an LSQ quantizer reads its ``initialized`` flag before initializing, so an
    AveragedModel copy made before training keeps the averaged step sizes when it evaluates."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).cuda()
    q = qatkit.prepare_qat(m, qatkit.QATConfig(default=qatkit.preset("w4a4_lsq").default))
    ema = AveragedModel(q, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    opt = torch.optim.SGD(q.parameters(), 0.01)
    for i in range(3):
        q(torch.randn(8, 12, device="cuda") * (1 + i)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update_parameters(q)
    e = ema.module.eval()
    before = {n: p.detach().clone() for n, p in e.named_parameters() if n.endswith("fake_quant.scale")}
    e(torch.randn(4, 12, device="cuda") * 100)
    assert len(before) == 6
    for n, p in e.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("preset", ["w8a8", "ternary_twn", "binary_w1a8", "xnor_w1a1"])
def test_the_cpp_load_into_resnet_on_cuda_gives_pythons_cuda_bits(preset, tmp_path):
    """qatkit::nn::load_into on CUDA (qatkit_load_run --resnet --cuda): the C++ ResNet-18 filled from a
    Python export and moved to the GPU runs its convs' and classifier's CUDA plans (built at the first
    call there, cuda_conv_plan) and gives Python's load_into model on CUDA bit for bit; on the CPU as
    tests/python/test_cpp_load_into.py checks."""
    import subprocess

    from safetensors.torch import load_file, save_file

    from qatkit.testing.models import resnet18

    exe = _load_run()
    torch.manual_seed(0)
    fp = resnet18(10, width=0.25, small_input=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = qatkit.ptq(fp, [torch.randn(4, 3, 32, 32) for _ in range(2)], qatkit.preset(preset), verbose=False,
                       progress=False)
    path, inp, out = (str(tmp_path / n) for n in ("m.safetensors", "x.safetensors", "y.safetensors"))
    qatkit.export(q, path)
    x = torch.randn(3, 3, 32, 32)
    save_file({"x": x}, inp)
    r = subprocess.run([exe, "--resnet", "0.25", "--cuda", path, inp, out], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = qatkit.load_into(resnet18(10, width=0.25, small_input=True).eval(), path).cuda()
    with torch.no_grad():
        want = m(x.cuda()).cpu()
    assert torch.equal(load_file(out)["y"], want) and "no CUDA kernel" not in r.stderr
