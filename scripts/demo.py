"""qatkit demo: fake-quantize a model's weights at several bit widths and granularities and print
how much each setting perturbs the weights and the model's output.

    python scripts/demo.py [--json]

The model is a small MLP-mixer-style network with a fixed seed (no downloads); later issues grow
this demo into train FP32 -> PTQ/QAT -> export.
"""

import argparse
import json
import time

import torch
from tqdm import tqdm

import qatkit
from qatkit import ops


def make_model(seed: int = 0) -> torch.nn.Module:
    """An MLP whose weights look trained rather than freshly initialised: heavy-tailed values
    (Student-t, 8 dof) and output channels whose ranges differ by up to ~10x, which is what
    makes per-channel and per-group scales matter."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 512),
        torch.nn.GELU(),
        torch.nn.Linear(512, 512),
        torch.nn.GELU(),
        torch.nn.Linear(512, 256),
        torch.nn.GELU(),
        torch.nn.Linear(256, 10),
    ).eval()
    t = torch.distributions.StudentT(8.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                rows = torch.exp(0.6 * torch.randn(m.out_features, 1))
                m.weight.copy_(t.sample(m.weight.shape) * rows / m.in_features**0.5)
    return model


def quantize_weights(model: torch.nn.Module, bits: int, granularity: str) -> torch.nn.Module:
    """A copy of `model` whose Linear weights are fake-quantized (symmetric, signed)."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = make_model()
    q.load_state_dict(model.state_dict())  # same architecture, then overwrite the weights
    with torch.no_grad():
        for m in q.modules():
            if isinstance(m, torch.nn.Linear):
                kw = {"axis": 0} if granularity == "per-channel" else {}
                if granularity == "per-group-32":
                    kw = {"group_size": 32}
                s, z = ops.choose_qparams(m.weight, qmin, qmax, symmetric=True, **kw)
                m.weight.copy_(ops.fake_quantize(m.weight, s, z, qmin, qmax, **kw))
    return q


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (ref - approx).pow(2).sum().clamp(min=1e-30)
    return float(10 * torch.log10(ref.pow(2).sum() / noise))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()

    model = make_model()
    x = torch.randn(2048, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y_ref = model(x)
    weights = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])

    rows = []
    settings = [(b, g) for b in (8, 6, 4, 3, 2) for g in ("per-tensor", "per-channel", "per-group-32")]
    t0 = time.perf_counter()
    for bits, gran in tqdm(settings, desc="fake-quantizing", leave=False):
        q = quantize_weights(model, bits, gran)
        qw = torch.cat([m.weight.detach().flatten() for m in q.modules() if isinstance(m, torch.nn.Linear)])
        with torch.no_grad():
            y = q(x)
        rows.append(
            {
                "bits": bits,
                "granularity": gran,
                "weight_sqnr_db": round(sqnr_db(weights, qw), 2),
                "output_sqnr_db": round(sqnr_db(y_ref, y), 2),
                "top1_agreement_pct": round(100 * float((y.argmax(1) == y_ref.argmax(1)).float().mean()), 2),
            }
        )
    elapsed = time.perf_counter() - t0

    if args.json:
        print(json.dumps({"build": qatkit.build_info(), "rows": rows}, indent=2))
        return
    info = qatkit.build_info()
    print(f"qatkit {info['version']} (torch {info['torch_runtime_version']}, cpu isa {info['cpu_isa']})")
    print(f"weight-only fake quantization of a 4-layer MLP ({weights.numel():,} weights), 2048 inputs\n")
    header = f"{'bits':>4}  {'granularity':<13} {'weight SQNR dB':>14} {'output SQNR dB':>14} {'top-1 agree %':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['bits']:>4}  {r['granularity']:<13} {r['weight_sqnr_db']:>14.2f} "
            f"{r['output_sqnr_db']:>14.2f} {r['top1_agreement_pct']:>13.2f}"
        )
    best = {b: max((r for r in rows if r["bits"] == b), key=lambda r: r["output_sqnr_db"]) for b in (8, 4, 2)}
    print(
        f"\n{len(rows)} settings in {elapsed:.2f} s. Best granularity per width: "
        + ", ".join(f"{b}-bit {r['granularity']} ({r['output_sqnr_db']:.1f} dB)" for b, r in best.items())
    )
    print("Each bit adds about 6 dB; per-channel and per-group scales follow channels whose ranges differ.")


if __name__ == "__main__":
    main()
