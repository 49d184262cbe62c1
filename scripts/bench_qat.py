"""QAT training-step overhead: one W8A8 QAT step (per-channel weights, per-tensor activations) vs the
same FP32 step, for qatkit, torch.ao (prepare_qat with its default fused fake-quant qconfig) and
torchao (QATConfig with int8 fake quantizers; it covers nn.Linear only and fake-quantizes activations per
token), in one process, interleaved.

    python scripts/bench_qat.py [--rounds 10] [--json]

Models: a ResNet-18-style CNN on 32x32 inputs (batch 32, random data; conv+bn pairs are folded by
qatkit and fused by torch.ao's fuse_modules_qat, so both QAT models train with folded BN) and an MLP
of three 2048-wide Linear layers (batch 256). A step is zero_grad + forward + cross-entropy +
backward + SGD step. Goal: qatkit QAT step <= 1.15x the FP32 step.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import qatkit
from qatkit.testing.timing import core_to_core, steady_allocator
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the scripts' shared helpers
from qat_models import number_arg  # noqa: E402


def block(cin, cout, stride):
    return nn.ModuleDict(
        {
            "body": nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
            ),
            "short": nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Sequential(),
        }
    )


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (CIFAR layout: 3x3 stem, four stages of two basic blocks)."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        cfg = [(64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1)]
        cfg += [(256, 512, 2), (512, 512, 1)]
        self.blocks = nn.ModuleList([block(*c) for c in cfg])
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = F.relu(b["body"](x) + b["short"](x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def mlp():
    return nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 2048))


def torch_ao_qat(model):
    """torch.ao eager QAT: fuse conv+bn(+relu) in Sequentials, default x86 QAT qconfig (fused
    moving-average observer + fake quant), prepare_qat."""
    import torch.ao.quantization as tq

    m = copy.deepcopy(model).train()
    groups = []
    for name, mod in m.named_modules():
        if isinstance(mod, nn.Sequential):
            kids = list(mod.named_children())
            for i, (n1, m1) in enumerate(kids[:-1]):
                if isinstance(m1, nn.Conv2d) and isinstance(kids[i + 1][1], nn.BatchNorm2d):
                    g = [f"{name}.{n1}", f"{name}.{kids[i + 1][0]}"]
                    if i + 2 < len(kids) and isinstance(kids[i + 2][1], nn.ReLU):
                        g.append(f"{name}.{kids[i + 2][0]}")
                    groups.append(g)
    if groups:
        m = tq.fuse_modules_qat(m, groups)
    m.qconfig = tq.get_default_qat_qconfig("x86")
    return tq.prepare_qat(m)


def torchao_qat(model):
    from torchao.quantization import quantize_
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    m = copy.deepcopy(model)
    # torchao fake-quantizes activations dynamically per token (it has no per-tensor activation granularity)
    act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    wgt = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    quantize_(m, QATConfig(activation_config=act, weight_config=wgt, step="prepare"))
    return m


def step_fn(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def bench(name, model, x, y, rounds, warmup=2):
    variants = {"fp32": model.train()}
    variants["qatkit"] = qatkit.prepare_qat(model, qatkit.w8a8()).train()
    notes = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            variants["torch.ao"] = torch_ao_qat(model)
    except Exception as e:  # noqa: BLE001 - report and go on: the comparison is optional
        notes["torch.ao"] = f"unavailable: {type(e).__name__}: {e}"
    try:
        variants["torchao"] = torchao_qat(model)
        n_lin = sum(isinstance(m, nn.Linear) for m in model.modules())
        n_all = sum(isinstance(m, nn.Linear | nn.Conv2d) for m in model.modules())
        notes["torchao"] = "per-token activations (no per-tensor option)"
        if n_lin < n_all:
            notes["torchao"] += f"; quantizes the {n_lin} Linear layer(s) only (of {n_all} Linear/Conv2d)"
    except Exception as e:  # noqa: BLE001
        notes["torchao"] = f"unavailable: {type(e).__name__}: {e}"
    steps = {k: step_fn(m, x, y) for k, m in variants.items()}
    for s in steps.values():
        for _ in range(warmup):
            s()
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return [
        {
            "model": name,
            "variant": k,
            "step_ms": round(med[k] * 1e3, 2),
            "ratio_vs_fp32": round(med[k] / med["fp32"], 3),
            "note": notes.get(k, ""),
        }
        for k in med
    ] + [
        {"model": name, "variant": k, "step_ms": None, "ratio_vs_fp32": None, "note": v}
        for k, v in notes.items()
        if k not in med
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=number_arg(int, 1), default=10)
    ap.add_argument("--threads", type=number_arg(int, 1), default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    # large outputs from the heap, as in a warmed process (qatkit.testing.timing)
    print(f"# {steady_allocator()}")
    print(f"# {core_to_core()}")
    torch.manual_seed(0)
    rows = []
    rows += bench(
        "resnet18 32x32, batch 32", ResNet18(), torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)), a.rounds
    )
    rows += bench("mlp 3x2048, batch 256", mlp(), torch.randn(256, 2048), torch.randint(0, 2048, (256,)), a.rounds)
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "rounds": a.rounds,
    }
    if a.json:
        print(json.dumps({"info": info, "rows": rows}, indent=2))
        return
    print(
        f"QAT W8A8 training step vs FP32, torch {info['torch']}, {info['machine']}, median of {a.rounds} "
        "interleaved rounds\n"
    )
    print("| model | variant | step ms | ratio vs FP32 | goal / note |\n|---|---|---|---|---|")
    for r in rows:
        goal = ""
        if r["variant"] == "qatkit":
            goal = "<= 1.15x " + ("MET" if r["ratio_vs_fp32"] <= 1.15 else "MISSED")
        ms = "-" if r["step_ms"] is None else f"{r['step_ms']:.2f}"
        ratio = "-" if r["ratio_vs_fp32"] is None else f"{r['ratio_vs_fp32']:.3f}x"
        print(f"| {r['model']} | {r['variant']} | {ms} | {ratio} | {goal or r['note']} |")


if __name__ == "__main__":
    main()
