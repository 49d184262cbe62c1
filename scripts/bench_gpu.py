"""GPU benchmark: effective bandwidth of qatkit's fake-quantize forward and STE backward against a
device-to-device copy in the same run, on tensors of at least 2^28 elements.

    python scripts/bench_gpu.py [--log 28] [--json FILE]

Effective bandwidth = bytes the algorithm must move / time: forward reads x and writes y
(+ 1/8 byte of mask when training), backward reads dY and the bit mask and writes dX. The copy
reads and writes one tensor. Goal: >= 85 % of the copy's bandwidth. torch's own fake quant is
timed alongside for reference.

Integer GEMV rows (issue 13): a 4096 x 4096 Linear at batch 1 and 64 on qatkit's CUDA integer
kernels (linear_int8, linear_w4a8 in the panel layout, linear_w4_weight_only, linear_w8_weight_only,
linear_dynamic_int8 (BitLinear's per-token inputs), linear_w2a8,
linear_w1a8, linear_w1a1 (XNOR: the W1A8 kernels on the per-sample binary codes)), each in its plain and vector ("fast") CUDA form, against fp32 ``F.linear`` (cuBLAS) and
``torch._int_mm`` in the same run, as ratios, in
the DRAM regime (each format cycles through distinct weight copies totalling >= 4x the L2), timed as
CUDA graph replays so host launch overhead does not pace a microsecond GEMV.

Model rows: an MLP of 6 Linear(4096, 4096) layers, converted in integer compute per preset
(``qatkit.convert(..., integer=True)``, what ``qatkit.load`` gives) and moved to the GPU, so
each quantized Linear builds its kernel plan on CUDA (row layouts) and runs the CUDA kernel;
against the fp32 MLP in the same run, batch 1 and 64, eager calls (what a user's loop sees,
Python included) and CUDA graph replays; plus the float64 integer simulation such a model ran
before its plans reached CUDA (w8a8, plans switched off).

CNN rows: ResNet-18 and MobileNetV2 (CIFAR stems, 32 x 32, qatkit.testing.models) converted per
preset and run on CUDA (convs on conv2d_int8 / conv2d_w1a1, depthwise convs on the direct kernel)
against the fp32 model (cuDNN) in the same run, batch 8 and 64, eager and CUDA graph; plus one
depthwise conv alone (3 x 3, 128 channels, 16 x 16) against cuDNN's.
"""

import argparse
import json
import os
import sys

import torch

import qatkit
from qatkit import ops


def cuda_time(fn, iters=20, warmup=3):
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3  # seconds


def bench_dtype(dtype: torch.dtype, n: int) -> list:
    """Rows for one dtype: qatkit forward/backward (and torch's forward for float32) vs copy."""
    es = torch.tensor([], dtype=dtype).element_size()
    x = torch.randn(n, device="cuda").to(dtype)
    rows = 1 << 14
    xc = x.view(rows, -1)
    s = torch.rand(rows, device="cuda") * 0.02 + 0.01
    z = torch.zeros(rows, device="cuda", dtype=torch.int32)
    out = torch.empty_like(xc)
    dst = torch.empty_like(x)
    g = torch.randn_like(xc)
    mask = torch.ops.qatkit._fake_quantize_with_mask(xc, s, z, -128, 127, 0, None)[1]
    t_copy = cuda_time(lambda: dst.copy_(x))
    bw_copy = 2 * n * es / t_copy
    cases = [
        ("fwd per-channel, out=", lambda: ops.fake_quantize(xc, s, z, -128, 127, axis=0, out=out), 2 * es),
        (
            "fwd per-channel + bit mask",
            lambda: torch.ops.qatkit._fake_quantize_with_mask(xc, s, z, -128, 127, 0, None),
            2 * es + 0.125,
        ),
        ("bwd STE from bit mask", lambda: torch.ops.qatkit._fake_quantize_backward(g, mask), 2 * es + 0.125),
    ]
    s1 = torch.full((1,), 0.02, device="cuda")
    z1 = torch.zeros(1, device="cuda")
    cases.append(
        (
            "LSQ bwd per-tensor (dX + reduced dS, dZ)",
            lambda: torch.ops.qatkit._fake_quantize_learnable_backward(g, xc, s1, z1, -128, 127, None, None, 1.0),
            3 * es,
        )
    )
    cases.append(
        (
            "LSQ bwd per-channel (dX + reduced dS, dZ)",
            lambda: torch.ops.qatkit._fake_quantize_learnable_backward(g, xc, s, z.float(), -128, 127, 0, None, 1.0),
            3 * es,
        )
    )
    if dtype == torch.float32:
        cases.append(
            (
                "torch per-channel fwd (cachemask)",
                lambda: torch.fake_quantize_per_channel_affine(xc, s, z, 0, -128, 127),
                2 * es,
            )
        )
    result = []
    for name, fn, bytes_per in cases:
        t = cuda_time(fn)
        bw = n * bytes_per / t
        result.append(
            {
                "dtype": str(dtype).split(".")[1],
                "case": name,
                "ms": round(t * 1e3, 4),
                "GBps": round(bw / 1e9, 1),
                "copy_GBps": round(bw_copy / 1e9, 1),
                "pct_of_copy": round(100 * bw / bw_copy, 1),
            }
        )
    return result


L2_BYTES = 60 << 20  # the H100/H200 L2 (50 / 60 MB): weights rotate through >= 4x this


def time_per_call(fns, iters=10, warmup=2):
    """Median seconds per call of the list ``fns`` (distinct layers, called in turn). The calls are
    captured in a CUDA graph and replayed, so launch overhead on the host does not pace the GPU;
    if capture fails (an op that syncs with the host), they run eagerly and the mode says so."""
    def run_all():
        for f in fns:
            f()

    for _ in range(warmup):
        run_all()
    torch.cuda.synchronize()
    mode, replay = "eager", run_all
    try:
        graph = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            run_all()  # warm-up on the side stream, as torch's graph docs ask
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(graph):
            run_all()
        graph.replay()
        torch.cuda.synchronize()
        mode, replay = "graph", graph.replay
    except Exception as e:  # noqa: BLE001 - report the fallback, never hide it
        mode = f"eager ({type(e).__name__})"
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / len(fns))
    times.sort()
    return times[len(times) // 2], mode


def bench_integer(n: int = 4096, k: int = 4096) -> list:
    """The integer kernels against F.linear (fp32, cuBLAS) and torch._int_mm, batch 1 and 64, in the
    DRAM regime: each format's weight is copied to enough distinct buffers to exceed 4x the L2, and
    the timed loop calls one layer per buffer in turn (us per layer, weight GB/s, ratio to fp32)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g)
    s8 = w.abs().amax(1) / 127
    q8 = torch.round(w / s8[:, None]).clamp(-127, 127).to(torch.int8)
    gs4 = (w.reshape(n, k // 32, 32).abs().amax(2) / 7).clamp(min=1e-8)
    q4 = torch.round(w.reshape(n, k // 32, 32) / gs4[..., None]).clamp(-8, 7).reshape(n, k).to(torch.int8)
    t2 = torch.where(w > 0.5, 1, torch.where(w < -0.5, -1, 0)).to(torch.int8)
    b1 = torch.where(w >= 0, 1, -1).to(torch.int8)
    dev = "cuda"
    corr, oscale = torch.zeros(n, dtype=torch.int32, device=dev), (s8 * 0.02).to(dev)
    s8d = s8.float().to(dev)
    p4 = ops.pack_int4_w4(q4)
    gsd = gs4.float().to(dev)
    base = {
        "fp32": w.to(dev),
        "int8": q8.to(dev),
        "int8_t": q8.t().contiguous().to(dev).t(),  # torch._int_mm's column-major B
        "panel4": ops.pack_int4_panel(p4).to(dev),
        "rows4": p4.to(dev),
        "t2": ops.pack_ternary_t2(t2).to(dev),
        "b1": ops.pack_binary_b1(b1).to(dev),
    }

    def copies(key):
        t = base[key]
        nbytes = t.numel() * t.element_size()
        count = max(4, min(256, -(-4 * L2_BYTES // nbytes)))
        return [t.clone() for _ in range(count)], nbytes  # clone keeps a transposed (column-major) copy's strides

    cases = [
        ("fp32 F.linear (cuBLAS)", "fp32", lambda x, xq, wt: torch.nn.functional.linear(x, wt)),
        ("torch._int_mm (int8, M >= 17)", "int8_t", lambda x, xq, wt: torch._int_mm(xq, wt)),
        ("qatkit linear_int8", "int8", lambda x, xq, wt: ops.linear_int8(x, wt, corr, oscale, 0.02, 0, -128, 127)),
        ("qatkit linear_w4a8 (panel)", "panel4", lambda x, xq, wt: ops.linear_w4a8(x, wt, gsd, 32, 0.02, 0, -128, 127)),
        ("qatkit linear_w4a8 (rows)", "rows4", lambda x, xq, wt: ops.linear_w4a8(x, wt, gsd, 32, 0.02, 0, -128, 127)),
        # the opt-in tensor-core W4A8 (QATKIT_CUDA_MMA=1: beyond 16 rows; read when the graph is captured)
        ("qatkit linear_w4a8 (rows, mma)", "rows4", lambda x, xq, wt: ops.linear_w4a8(x, wt, gsd, 32, 0.02, 0, -128, 127)),
        ("qatkit linear_w4_weight_only", "rows4", lambda x, xq, wt: ops.linear_w4_weight_only(x, wt, gsd, 32)),
        ("qatkit linear_w2a8", "t2", lambda x, xq, wt: ops.linear_w2a8(x, wt, corr, oscale, 0.02, 0, -128, 127)),
        ("qatkit linear_w1a8", "b1", lambda x, xq, wt: ops.linear_w1a8(x, wt, corr, oscale, 0.02, 0, -128, 127)),
        ("qatkit linear_w1a1 (XNOR)", "b1", lambda x, xq, wt: ops.linear_w1a1(x, wt, s8d)),
        (
            "qatkit linear_dynamic_int8 (ternary, per-token: BitLinear)",
            "t2",
            lambda x, xq, wt: ops.linear_dynamic_int8(x, wt, 2, s8d),
        ),
        ("qatkit linear_w8_weight_only", "int8", lambda x, xq, wt: ops.linear_w8_weight_only(x, wt, s8d)),
    ]
    out = []
    # every input drawn on the CPU (a graph capture that fails leaves the CUDA generator unusable
    # for the rest of the process: later tables must not need it)
    inputs = {m: (torch.randn(m, k).to(dev),
                  torch.randint(-127, 128, (max(m, 17), k), dtype=torch.int8).to(dev))  # _int_mm needs M > 16
              for m in (1, 64)}
    for m, (x, xq) in inputs.items():
        times = {}
        for name, key, op in cases:
            # qatkit's two CUDA forms (QATKIT_CUDA_GEMV, read per launch; kernels/cuda/qgemm.cu)
            for form in ("plain", "fast") if name.startswith("qatkit") else ("",):
                os.environ["QATKIT_CUDA_GEMV"] = form or "plain"
                os.environ["QATKIT_CUDA_MMA"] = "1" if "mma" in name else "0"
                ws, nbytes = copies(key)
                t, mode = time_per_call([lambda wt=wt: op(x, xq, wt) for wt in ws])
                times[f"{name} [{form}]" if form else name] = (t, mode, nbytes, len(ws))
                del ws
                torch.cuda.empty_cache()
        os.environ.pop("QATKIT_CUDA_GEMV", None)
        os.environ.pop("QATKIT_CUDA_MMA", None)
        t_fp32 = times["fp32 F.linear (cuBLAS)"][0]
        out += [
            {
                "batch": m,
                "case": name,
                "us": round(t * 1e6, 2),
                "weight_GBps": round(nbytes / t / 1e9, 1),
                "vs_fp32": round(t_fp32 / t, 2),
                "layers": layers,
                "mode": mode,
            }
            for name, (t, mode, nbytes, layers) in times.items()
        ]
    return out


def bench_models(width: int = 4096, depth: int = 6, dev: str = "cuda") -> list:
    """Converted integer MLPs on CUDA against the fp32 MLP (module docstring), us per forward."""
    import copy
    import warnings

    from torch import nn

    from qatkit.qat.convert import _Quantized

    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    fp32 = nn.Sequential(*layers[:-1]).to(dev).eval()
    calib = [torch.randn(64, width).to(dev)]
    models = {"fp32": fp32}
    for name in ("w8a8", "w4a8", "ternary_twn", "binary_w1a8", "xnor_w1a1", "bitnet_b158", "int4_weight_only",
                 "int8_weight_only"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = qatkit.prepare_qat(fp32, qatkit.preset(name))
            if any(getattr(m, "input_fake_quant", None) is not None for m in q.modules()):
                qatkit.qat.calibrate(q, calib)  # static input ranges (weight-only presets have none)
            models[name] = qatkit.convert(q, integer=True).eval()
        del q
    sim = models["w8a8 (float64 simulation)"] = copy.deepcopy(models["w8a8"])
    for m in sim.modules():
        if isinstance(m, _Quantized) and m._integer_form is not None:
            m.__dict__["_int8_plan"] = False  # no plan: the float64 simulation
    out = []
    # every input drawn before any graph capture (a capture that fails, as the float64 simulation's
    # host reads make it, leaves the CUDA generator unusable for the rest of the process)
    inputs = {batch: torch.randn(batch, width).to(dev) for batch in (1, 64)}
    with torch.no_grad():
        for batch, x in inputs.items():
            times = {}
            for name, model in models.items():
                model(x)  # builds the plans (host reads of the codes) before any capture
                eager = cuda_time(lambda: model(x), iters=20, warmup=3)
                if "simulation" in name:  # host reads per call: no graph
                    graph, mode = eager, "eager (host reads)"
                else:
                    graph, mode = time_per_call([lambda: model(x)], iters=10)
                kernels = sorted({m.__dict__["_int8_plan"]["kernel"] for m in model.modules()
                                  if isinstance(m, _Quantized) and m.__dict__.get("_int8_plan")})
                times[name] = (eager, graph, mode, kernels)
            e32, g32 = times["fp32"][0], times["fp32"][1]
            out += [{"batch": batch, "model": name, "eager_us": round(e * 1e6, 1), "graph_us": round(g * 1e6, 1),
                     "eager_vs_fp32": round(e32 / e, 2), "graph_vs_fp32": round(g32 / g, 2), "mode": mode,
                     "kernels": ks} for name, (e, g, mode, ks) in times.items()]
    del models, sim
    if dev == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_cnns(dev: str = "cuda", batches=(8, 64), size: int = 32) -> list:
    """Converted CNNs on CUDA against the fp32 CNN (module docstring), us per forward; and one
    depthwise conv2d_int8 against F.conv2d (groups == C)."""
    import warnings

    from qatkit.qat.convert import _Quantized
    from qatkit.testing.models import mobilenet_v2, resnet18
    from qatkit.testing.samples import conv_int8_case

    out = []
    inputs = {b: torch.randn(b, 3, size, size).to(dev) for b in batches}  # before any capture
    g = torch.Generator().manual_seed(0)
    xd = torch.randn(64, 128, 16, 16).to(dev)
    case = conv_int8_case(8, 128, 9, 128, g)
    wf = torch.randn(128, 1, 3, 3).to(dev)
    s, zp, qmin, qmax = case["act"]
    wd, cd, sd, bd = case["layouts"][0].to(dev), case["corr"].to(dev), case["scale"].to(dev), case["bias"].to(dev)
    with torch.no_grad():
        for name, fn in (("fp32 F.conv2d depthwise (cuDNN)", lambda: torch.nn.functional.conv2d(xd, wf, None, 1, 1, 1, 128)),
                         ("qatkit conv2d_int8 depthwise", lambda: ops.conv2d_int8(xd, wd, 8, (3, 3), (1, 1), (1, 1), (1, 1),
                                                                                  cd, sd, s, zp, qmin, qmax, bd, 128))):
            fn()
            eager = cuda_time(fn, iters=20, warmup=3)
            graph, mode = time_per_call([fn], iters=10)
            out.append({"batch": 64, "model": "depthwise 3x3, 128 ch, 16 x 16", "case": name,
                        "eager_us": round(eager * 1e6, 1), "graph_us": round(graph * 1e6, 1), "mode": mode,
                        "kernels": []})
    for arch, make in (("ResNet-18", lambda: resnet18(10, small_input=True)),
                       ("MobileNetV2", lambda: mobilenet_v2(10, small_input=True))):
        torch.manual_seed(0)
        fp = make().to(dev).eval()
        models = {"fp32": fp}
        calib = [torch.randn(16, 3, size, size).to(dev) for _ in range(2)]
        for preset in ("w8a8", "ternary_twn", "xnor_w1a1"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = qatkit.prepare_qat(fp, qatkit.preset(preset))
                qatkit.qat.calibrate(q, calib)
                models[preset] = qatkit.convert(q, integer=True).eval()
            del q
        with torch.no_grad():
            for batch, x in inputs.items():
                times = {}
                for name, model in models.items():
                    model(x)  # builds the plans before any capture
                    eager = cuda_time(lambda: model(x), iters=10, warmup=2)
                    graph, mode = time_per_call([lambda: model(x)], iters=10)
                    kernels = sorted({m.__dict__["_int8_plan"]["kernel"] for m in model.modules()
                                      if isinstance(m, _Quantized) and m.__dict__.get("_int8_plan")})
                    times[name] = (eager, graph, mode, kernels)
                e32, g32 = times["fp32"][0], times["fp32"][1]
                out += [{"batch": batch, "model": arch, "case": name, "eager_us": round(e * 1e6, 1),
                         "graph_us": round(gr * 1e6, 1), "eager_vs_fp32": round(e32 / e, 2),
                         "graph_vs_fp32": round(g32 / gr, 2), "mode": mode, "kernels": ks}
                        for name, (e, gr, mode, ks) in times.items()]
        del models
        if dev == "cuda":
            torch.cuda.empty_cache()
    e32, g32 = out[0]["eager_us"], out[0]["graph_us"]
    for r in out[:2]:
        r["eager_vs_fp32"], r["graph_vs_fp32"] = round(e32 / r["eager_us"], 2), round(g32 / r["graph_us"], 2)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", type=int, default=28, help="log2 of the element count")
    p.add_argument("--json", metavar="FILE", help="also write every row as JSON to FILE")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    n = 1 << a.log
    props = torch.cuda.get_device_properties(0)
    rows_out = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        rows_out += bench_dtype(dtype, n)
        torch.cuda.empty_cache()
    info = {
        "device": props.name,
        "memory_GiB": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "qatkit": qatkit.build_info(),
        "elements": n,
    }
    integer_rows = bench_integer()

    def dump(model_rows, cnn_rows=()):
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"info": info, "rows": rows_out, "integer": integer_rows, "models": model_rows,
                           "cnns": list(cnn_rows)}, f, indent=2)

    dump([])  # the rows so far, in case the model rows fail
    print(f"{info['device']}, torch {info['torch']}, {n:,} elements per tensor\n")
    print(f"| {'dtype':<8} | {'case':<34} | {'ms':>8} | {'GB/s':>7} | {'copy GB/s':>9} | {'% of copy':>9} |")
    print("|" + "-" * 10 + "|" + "-" * 36 + "|" + "-" * 10 + "|" + "-" * 9 + "|" + "-" * 11 + "|" + "-" * 11 + "|")
    for r in rows_out:
        print(
            f"| {r['dtype']:<8} | {r['case']:<34} | {r['ms']:>8.3f} | {r['GBps']:>7.1f} | {r['copy_GBps']:>9.1f} | "
            f"{r['pct_of_copy']:>9.1f} |"
        )

    print("\n| batch | integer GEMV (4096 x 4096, DRAM regime) | us / layer | weight GB/s | vs fp32 | layers | timing |")
    print("|---|---|---|---|---|---|---|")
    for r in integer_rows:
        print(
            f"| {r['batch']} | {r['case']} | {r['us']:.2f} | {r['weight_GBps']:.0f} | {r['vs_fp32']:.2f}x | "
            f"{r['layers']} | {r['mode']} |"
        )

    sys.stdout.flush()
    model_rows = bench_models()
    dump(model_rows)
    print("\n| batch | MLP 6 x Linear(4096, 4096), converted, on CUDA | eager us | vs fp32 | graph us | vs fp32 | kernels |")
    print("|---|---|---|---|---|---|---|")
    for r in model_rows:
        print(
            f"| {r['batch']} | {r['model']} | {r['eager_us']:.1f} | {r['eager_vs_fp32']:.2f}x | {r['graph_us']:.1f} | "
            f"{r['graph_vs_fp32']:.2f}x ({r['mode']}) | {', '.join(r['kernels']) or '-'} |"
        )


    sys.stdout.flush()
    cnn_rows = bench_cnns()
    dump(model_rows, cnn_rows)
    print("\n| batch | CNN (32 x 32), converted, on CUDA | case | eager us | vs fp32 | graph us | vs fp32 | kernels |")
    print("|---|---|---|---|---|---|---|---|")
    for r in cnn_rows:
        print(
            f"| {r['batch']} | {r['model']} | {r['case']} | {r['eager_us']:.1f} | {r['eager_vs_fp32']:.2f}x | "
            f"{r['graph_us']:.1f} | {r['graph_vs_fp32']:.2f}x ({r['mode']}) | {', '.join(r['kernels']) or '-'} |"
        )


if __name__ == "__main__":
    main()
