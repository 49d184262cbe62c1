"""Fuzz the dataflow graph that BatchNorm folding and cross-layer equalization rely on
(``qatkit.qat.graph``): random conv programs whose ``forward`` mixes module calls with the glue
real models have between them, then checks that the graph transforms kept the function.

Each model runs 3-10 random steps over a growing list of [B, 6, 8, 8] tensors: a conv (1x1 or 3x3,
with or without bias), a conv followed by a BatchNorm2d with random statistics, a lone BatchNorm,
ReLU (also ``inplace=True``, ``F.relu``, ``x.relu()``, ``F.leaky_relu``), a module called a second time (a shared conv or BatchNorm), a residual
add, a channel concat into a 1x1 conv, ``torch.where``, ``clone``, a scale; and in-place writes into
an earlier tensor: ``+=``, ``y[:, 0] = c``, ``y[:, 1:3].mul_(2)``, ``y.narrow(...).fill_(c)``; and
tensors the forward keeps (``self.kept.append(y)``, ``self.kept_3 = y``). A Linear head reads the
last tensor; now and then the model also returns an intermediate (in a tuple or a dataclass), and a
user's forward hook or pre-hook on a random module records what it sees. Steps read the newest
tensor 60 % of the time, so a write often lands between a conv and its BatchNorm. What the model
kept and the hook recorded are compared as outputs.

For every model, with fake quantization switched off (so only the graph transforms remain):

- ``prepare_qat(model, w8a8(), example_inputs=x)`` (the traced graph) and ``prepare_qat`` without
  them (torch.fx, else nn.Sequential neighbours) must compute the float model's eval outputs
  (within 1e-4 of the largest), then after one training-mode step with batch statistics its
  outputs and the running statistics it leaves (within 1e-3);
- ``ptq(model, [x], w8a8(), correct_bias=None, absorb_bias=False)`` (BatchNorm folding and
  equalization on the traced graph) must compute the float model's outputs (within 1e-4).

It found ``y[:, 0] = c`` between a conv and its BatchNorm invisible to the traced graph (the write
returns no tensor): the pair folded and equalized across the write, another function (2 of 150
models), and a conv output returned in a dataclass, kept in an attribute or read by a user's hook
folded too, handing the reader the BatchNorm's output (29 of 300 models; docs/benchmarks.md,
thirty-fourth session).

    python3 scripts/fuzz_graphs.py [--models 500] [--seed 0]

Exits non-zero if any model fails, printing the seed that reproduces it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import os
import random
import sys
import time
import warnings

import torch
from torch import nn

import qatkit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the scripts' shared helpers
from qat_models import number_arg  # noqa: E402

C = 6  # channels of every tensor in the program


class Program(nn.Module):
    """A random straight-line program of module calls, glue ops and in-place writes."""

    def __init__(self, r: random.Random):
        super().__init__()
        self.mods = nn.ModuleList()
        self.steps = []
        n = 1  # tensors so far (the input's clone is tensor 0)
        ops = ["conv", "conv", "convbn", "convbn", "bn", "relu", "relu_", "reuse", "cat", "add", "mul", "clone",
               "where", "iadd", "setitem", "slice_mul_", "narrow_fill_", "keep", "attr", "frelu", "leaky"]
        for _ in range(r.randint(3, 10)):
            op = r.choice(ops)
            i = n - 1 if r.random() < 0.6 else r.randrange(n)
            j = r.randrange(n)
            if op in ("conv", "convbn"):
                self.mods.append(nn.Conv2d(C, C, r.choice([1, 3]), padding="same", bias=r.random() < 0.5))
                self.steps.append(("mod", i, len(self.mods) - 1))
                n += 1
                if op == "conv":
                    continue
                op, i = "bn", n - 1
            if op == "bn":
                bn = nn.BatchNorm2d(C)
                with torch.no_grad():
                    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.3, 2)
                    bn.weight.uniform_(0.3, 2), bn.bias.uniform_(-1, 1)
                self.mods.append(bn)
                self.steps.append(("mod", i, len(self.mods) - 1))
                n += 1
            elif op in ("relu", "relu_"):
                self.mods.append(nn.ReLU(inplace=op == "relu_"))
                self.steps.append(("mod", i, len(self.mods) - 1))
                n += 1
            elif op == "reuse":
                shared = [k for k, m in enumerate(self.mods)
                          if isinstance(m, nn.BatchNorm2d) or (isinstance(m, nn.Conv2d) and m.in_channels == C)]
                if shared:
                    self.steps.append(("mod", i, r.choice(shared)))
                    n += 1
            elif op == "cat":
                self.mods.append(nn.Conv2d(2 * C, C, 1))
                self.steps.append(("cat", i, j, len(self.mods) - 1))
                n += 1
            elif op in ("add", "mul", "clone", "where", "frelu", "leaky"):
                self.steps.append((op, i, j))
                n += 1
            elif op in ("keep", "attr"):  # the forward keeps tensor i: a list attribute, or one of its own
                self.steps.append((op, i, j))
            else:  # an in-place write into tensor i (never the input's clone)
                self.steps.append((op, i, j))
        self.return_intermediate = n > 2 and r.random() < 0.3
        self.as_dataclass = r.random() < 0.5  # (logits, intermediate) in a dataclass, not a tuple
        self.head = nn.Linear(C, 4)
        # a user's forward hook on a random module, keeping (a copy of) what it sees
        self.hooked = r.random() < 0.3 and len(self.mods) > 0
        self.hook_at = r.randrange(len(self.mods)) if self.hooked else None
        self.hook_pre = r.random() < 0.3

    def describe(self) -> str:
        return " ; ".join(f"{s[0]}({','.join(map(str, s[1:]))})" for s in self.steps)

    def forward(self, x):
        self.kept = []
        t = [x.clone()]
        for k, s in enumerate(self.steps):
            op, i, j = s[0], s[1], s[2]
            if op == "mod":
                t.append(self.mods[j](t[i]))
            elif op == "cat":
                t.append(self.mods[s[3]](torch.cat([t[i], t[j]], 1)))
            elif op == "add":
                t.append(t[i] + t[j])
            elif op == "mul":
                t.append(t[i] * 0.5)
            elif op == "clone":
                t.append(t[i].clone())
            elif op == "where":
                t.append(torch.where(t[j] > 0, t[i], 0.1 * t[i]))
            elif op == "frelu":  # functional ReLUs: equalization passes them as it passes nn.ReLU
                t.append(torch.nn.functional.relu(t[i]) if j % 2 else t[i].relu())
            elif op == "leaky":
                t.append(torch.nn.functional.leaky_relu(t[i], 0.1))
            elif op == "keep":
                self.kept.append(t[i])
            elif op == "attr":
                setattr(self, f"kept_{k}", t[i])
            elif i == 0:
                continue
            elif op == "iadd":
                t[i] += t[j] if i != j else 1.0
            elif op == "setitem":
                t[i][:, 0] = 0.7
            elif op == "slice_mul_":
                t[i][:, 1:3].mul_(2.0)
            elif op == "narrow_fill_":
                t[i].narrow(1, 2, 1).fill_(-0.3)
        out = self.head(t[-1].mean((2, 3)))
        if not self.return_intermediate:
            return out
        return Returned(out, t[-2]) if self.as_dataclass else (out, t[-2])


@dataclasses.dataclass
class Returned:
    """A model output pytree does not know (torch.utils._pytree): a dataclass."""

    logits: torch.Tensor
    intermediate: torch.Tensor


def _kept(model, record) -> list:
    """What the forward kept, as copies: the list attribute, its own attributes, the user hook's record."""
    out = [t.clone() for t in model.kept]
    out += [v.clone() for k, v in sorted(vars(model).items()) if k.startswith("kept") and isinstance(v, torch.Tensor)]
    return out + [t.clone() for t in record]


#: what the user's hook of the program being checked saw (the copies prepare_qat and ptq make share
#: the hook, so this one list)
_RECORD: list = []


def _outs(model, x):
    """The model's outputs (returned or kept) for x."""
    _RECORD.clear()
    y = model(x)
    y = (y.logits, y.intermediate) if isinstance(y, Returned) else y
    return (y if isinstance(y, tuple) else (y,)) + tuple(_kept(model, _RECORD))


def _rel(got, want) -> float:
    return max(((a - b).abs().max() / (b.abs().max() + 1e-6)).item() for a, b in zip(got, want))


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def check(seed: int, stats: dict) -> list:
    """The failures of one random program (an empty list: it passed)."""
    r = random.Random(seed)
    torch.manual_seed(seed)
    model = Program(r).eval()
    record = _RECORD
    if model.hooked:
        m = model.mods[model.hook_at]
        if model.hook_pre:
            m.register_forward_pre_hook(lambda mod, args: record.append(args[0].clone()) and None)
        else:
            m.register_forward_hook(lambda mod, args, out: record.append(out.clone()) and None)
    x = torch.randn(4, C, 8, 8)
    with torch.no_grad():
        want = _outs(model, x)
    fails = []
    for how in ("trace", "fx"):
        with _quiet():
            q = qatkit.prepare_qat(model, qatkit.w8a8(), example_inputs=x if how == "trace" else None)
        folded = sum(1 for row in q.qat_report if row.get("folded_bn"))
        stats[f"folded_{how}"] += folded
        qatkit.qat.enable_fake_quant(q, False)
        with torch.no_grad():
            d = _rel(_outs(q.eval(), x), want)
            if d > 1e-4:
                fails.append(f"{how}: eval outputs {d:.3g} off ({folded} BatchNorm(s) folded)")
            trained = copy.deepcopy(model).train()
            xt = torch.randn(4, C, 8, 8)
            d = _rel(_outs(q.train(), xt), _outs(trained, xt))
            if d > 1e-3:
                fails.append(f"{how}: training-mode outputs {d:.3g} off ({folded} folded)")
            d = _rel(_outs(q.eval(), x), _outs(trained.eval(), x))
            if d > 1e-3:
                fails.append(f"{how}: outputs after a training step {d:.3g} off ({folded} folded)")
    with _quiet():
        p = qatkit.ptq(model, [x], qatkit.w8a8(), correct_bias=None, absorb_bias=False, progress=False, verbose=False)
    stats["pairs"] += len(p.ptq_report.get("pairs", []))
    qatkit.qat.enable_fake_quant(p, False)
    with torch.no_grad():
        d = _rel(_outs(p.eval(), x), want)
    if d > 1e-4:
        fails.append(f"ptq: outputs {d:.3g} off (steps {p.ptq_report['steps']}, pairs {p.ptq_report.get('pairs')})")
    if fails:
        fails.insert(0, model.describe())
    return fails


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=number_arg(int, lo=1), default=500, help="random programs (default 500)")
    ap.add_argument("--seed", type=number_arg(int, lo=0), default=0, help="first seed (default 0)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = ap.parse_args(argv)
    from tqdm import tqdm

    stats = {"folded_trace": 0, "folded_fx": 0, "pairs": 0}
    failed, t0 = [], time.time()
    for seed in tqdm(range(args.seed, args.seed + args.models), desc="programs", disable=args.no_progress):
        try:
            fails = check(seed, stats)
        except Exception as e:  # a crash is a failure too, with its seed
            fails = [f"{type(e).__name__}: {e}"]
        if fails:
            failed.append(seed)
            print(f"seed {seed}:\n  " + "\n  ".join(fails), flush=True)
    print(f"fuzz_graphs: {args.models} programs (seeds {args.seed}..{args.seed + args.models - 1}) in "
          f"{time.time() - t0:.0f} s: {len(failed)} failed; BatchNorms folded {stats['folded_trace']} (traced) / "
          f"{stats['folded_fx']} (fx), equalized pairs {stats['pairs']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
