"""Function-preserving float transforms of post-training quantization (docs/ptq.md; Nagel et al.
2019, "Data-Free Quantization", docs/papers.md §1): BatchNorm folding, ReLU6 -> ReLU, cross-layer
equalization (CLE), high-bias absorption (BA). Each works on the float model before any quantizer
is attached; the layer pairs come from the model's dataflow (:mod:`qatkit.qat.graph`), so no
tracer has to accept the model, and whatever cannot be proven safe is skipped with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..qat import graph
from ..qat.swap import replace_module

__all__ = [
    "BNStats",
    "fold_batchnorms",
    "find_equalization_pairs",
    "Pair",
    "equalize",
    "absorb_high_bias",
    "clipped_relu_mean",
    "weight_times_input",
    "add_to_bias",
]

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
#: activations f with f(s u) = s f(u) for s > 0 (what CLE's rescaling commutes with)
_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Identity)
#: functional activations a forward calls between two layers that commute with a positive
#: per-channel scale (op name as the dataflow records it -> the activation kind)
_HOMOGENEOUS_OPS = {"relu": "relu", "relu_": "relu", "leaky_relu": "leakyrelu", "leaky_relu_": "leakyrelu"}


@dataclass
class BNStats:
    """The distribution a folded layer's output had under its BatchNorm: N(beta, gamma^2) per
    channel (DFQ's data-free statistics). Scaled along with the layer by CLE."""

    beta: torch.Tensor
    gamma: torch.Tensor


def _channel_view(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return t.reshape([-1] + [1] * (w.dim() - 1))


@torch.no_grad()
def fold_batchnorms(model: nn.Module, flow: graph.Dataflow) -> Tuple[Dict[str, BNStats], List[Tuple[str, str]], Dict[str, str]]:
    """Fold every BatchNorm that follows a Conv1d / Conv2d / Linear (its only consumer, each run
    once) into the layer's weight and bias, exactly (eval-mode BatchNorm is affine), and replace
    the BatchNorm by ``nn.Identity``.

    Returns:
        ``({layer: BNStats}, [(layer, bn)], {bn: reason not folded})``.
    """
    names = {}
    for n, m in model.named_modules():
        names.setdefault(id(m), n)
    stats, folded, unfolded = {}, [], {}
    for n, bn in model.named_modules():
        if not isinstance(bn, graph.BN_TYPES):
            continue
        runs = flow.calls_of.get(id(bn), [])
        if len(runs) != 1:
            unfolded[n] = "it never ran in the traced batch" if not runs else f"it runs {len(runs)} times per forward"
            continue
        src = flow.producer(flow.calls[runs[0]])
        if src is None or src.kind != "module" or not isinstance(src.module, _WEIGHTED):
            unfolded[n] = f"its input comes from {src.describe() if src else 'several tensors'}, not a conv/linear"
            continue
        layer = src.module
        others = [i for i in flow.consumers[src.index] if i != runs[0]]
        if others or len(flow.calls_of.get(id(layer), [])) != 1:
            unfolded[n] = f"the output of '{src.name}' is also used elsewhere, or the layer runs more than once"
            continue
        out_ch = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if bn.num_features != out_ch or not bn.track_running_stats:
            unfolded[n] = f"it does not match '{src.name}' ({bn.num_features} features vs {out_ch}) or has no running statistics"
            continue
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        w = layer.weight
        b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        layer.weight.copy_(w * _channel_view(factor, w))
        new_bias = beta + (b - bn.running_mean) * factor
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.clone())
        else:
            layer.bias.copy_(new_bias)
        stats[names[id(layer)]] = BNStats(beta.detach().clone(), gamma.detach().abs().clone())
        folded.append((names[id(layer)], n))
        for alias, m in model.named_modules(remove_duplicate=False):
            if m is bn and alias:
                replace_module(model, alias, nn.Identity())
    return stats, folded, unfolded


@dataclass
class Pair:
    """Two weighted layers joined by a positively homogeneous activation (or nothing)."""

    first: str
    second: str
    act: Optional[str] = None  # the activation module's name (None: the layers touch directly)
    act_kind: str = "identity"


def _in_channels(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def find_equalization_pairs(model: nn.Module, flow: graph.Dataflow) -> Tuple[List[Pair], List[Tuple[str, str]]]:
    """CLE candidates from the dataflow: layer A -> [activation] -> layer B where A's output (and
    the activation's) has no other consumer, every module runs once, A's output channels are B's
    input channels, and the activation is positively homogeneous (ReLU, LeakyReLU, a PReLU with one
    shared slope, ReLU6 — which :func:`equalize` turns into ReLU — or none).

    Returns:
        ``(pairs, skipped)``: ``skipped`` lists ``(layer, reason)`` for each weighted layer whose
        output could not be paired (the report shows them).
    """
    pairs, skipped = [], []

    def through_identities(i: int, feeder: int):
        """Follow a chain of ``nn.Identity`` (folded BatchNorms) from call ``i``: (call, feeder)."""
        nxt = flow.calls[i]
        while nxt.kind == "module" and isinstance(nxt.module, nn.Identity):
            cons = flow.consumers[nxt.index]
            if len(cons) != 1 or len(flow.calls_of[id(nxt.module)]) != 1:
                return None, feeder
            feeder, nxt = nxt.index, flow.calls[cons[0]]
        return nxt, feeder

    for call in flow.calls:
        if call.kind != "module" or not isinstance(call.module, _WEIGHTED):
            continue
        name = call.name
        if len(flow.calls_of[id(call.module)]) != 1:
            skipped.append((name, "the layer runs more than once per forward (a shared module)"))
            continue
        cons = flow.consumers[call.index]
        escapes = [flow.calls[i].describe() for i in cons if flow.calls[i].kind == "escape"]
        if escapes:  # equalization rescales this output's channels: what else reads it would see that
            skipped.append((name, f"its output is also read by {', '.join(escapes)}"))
            continue
        if len(cons) != 1:
            skipped.append((name, "its output has " + ("no consumer" if not cons else f"{len(cons)} consumers (a fork)")))
            continue
        nxt, feeder = through_identities(cons[0], call.index)
        if nxt is None:
            skipped.append((name, "its output forks after a folded BatchNorm"))
            continue
        act, act_kind = None, "identity"
        if nxt.kind == "op" and nxt.name in _HOMOGENEOUS_OPS and set(nxt.inputs) == {feeder}:
            # F.relu / torch.relu / x.relu() / F.leaky_relu in a forward: as the modules
            acons = flow.consumers[nxt.index]
            if len(acons) != 1:
                skipped.append((name, f"the output of op '{nxt.name}' has {len(acons)} consumers (a fork)"))
                continue
            act_kind = _HOMOGENEOUS_OPS[nxt.name]
            nxt, feeder = through_identities(acons[0], nxt.index)
            if nxt is None:
                skipped.append((name, f"the output of op '{act_kind}' forks"))
                continue
        elif nxt.kind == "module" and isinstance(nxt.module, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU)):
            m = nxt.module
            if isinstance(m, nn.PReLU) and m.num_parameters != 1:
                skipped.append((name, f"PReLU '{nxt.name}' has one slope per channel (not positively homogeneous)"))
                continue
            if len(flow.calls_of[id(m)]) != 1:
                skipped.append((name, f"activation '{nxt.name}' is a module shared by several layers"))
                continue
            acons = flow.consumers[nxt.index]
            if len(acons) != 1:
                skipped.append((name, f"the output of '{nxt.name}' has {len(acons)} consumers (a fork)"))
                continue
            act, act_kind = nxt.name, type(m).__name__.lower()
            nxt, feeder = through_identities(acons[0], nxt.index)
            if nxt is None:
                skipped.append((name, f"the output of '{act}' forks"))
                continue
        if nxt.kind != "module" or not isinstance(nxt.module, _WEIGHTED):
            skipped.append((name, f"it feeds {nxt.describe()}, not a conv/linear"))
            continue
        if len(flow.calls_of[id(nxt.module)]) != 1:
            skipped.append((name, f"'{nxt.name}' runs more than once per forward"))
            continue
        if set(nxt.inputs) != {feeder}:
            skipped.append((name, f"'{nxt.name}' has other tensor inputs too"))
            continue
        if _out_channels(call.module) != _in_channels(nxt.module):
            skipped.append((name, f"'{nxt.name}' does not take its channels ({_out_channels(call.module)} vs {_in_channels(nxt.module)})"))
            continue
        if isinstance(call.module, nn.Linear) != isinstance(nxt.module, nn.Linear):
            skipped.append((name, f"'{nxt.name}' is a {type(nxt.module).__name__} after a {type(call.module).__name__}"))
            continue
        pairs.append(Pair(name, nxt.name, act, act_kind))
    return pairs, skipped


def _out_range(w: torch.Tensor) -> torch.Tensor:
    """max |W| per output channel."""
    return w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)


def _in_range(layer: nn.Module) -> torch.Tensor:
    """max |W| per input channel (grouped convs: each input channel's group of outputs)."""
    w = layer.weight.detach().abs()
    if isinstance(layer, nn.Linear):
        return w.amax(dim=0)
    g = layer.groups
    out_g, in_g = w.shape[0] // g, w.shape[1]
    per = w.reshape(g, out_g, in_g, -1).amax(dim=(1, 3))  # [groups, in per group]
    return per.reshape(-1)


def _scale_in(layer: nn.Module, s: torch.Tensor) -> None:
    """Multiply input channel i of ``layer``'s weight by s_i."""
    w = layer.weight
    if isinstance(layer, nn.Linear):
        w.mul_(s.reshape(1, -1))
        return
    g = layer.groups
    out_g, in_g = w.shape[0] // g, w.shape[1]
    view = w.view(g, out_g, in_g, -1)
    view.mul_(s.reshape(g, 1, in_g, 1))


@torch.no_grad()
def equalize(
    model: nn.Module, pairs: List[Pair], stats: Dict[str, BNStats], max_sweeps: int = 100, tol: float = 1e-8
) -> Dict[str, object]:
    """Cross-layer equalization over ``pairs``, swept until the scales stop changing
    (``|s - 1| < tol`` for every channel) or ``max_sweeps``: ``W1_i /= s_i``, ``b1_i /= s_i``,
    ``W2[:, i] *= s_i`` with ``s_i = sqrt(r1_i / r2_i)`` (per-channel max |W|), which makes the two
    ranges equal and leaves the float function unchanged. ReLU6 between a pair becomes ReLU first
    (a model change, reported). BatchNorm statistics of the first layer scale along.

    Returns:
        ``{"sweeps": n, "relu6_replaced": [names]}``.
    """
    replaced = []
    for p in pairs:
        if p.act_kind == "relu6":
            replace_module(model, p.act, nn.ReLU(inplace=model.get_submodule(p.act).inplace))
            p.act_kind = "relu"
            replaced.append(p.act)
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        worst = 0.0
        for p in pairs:
            a, b = model.get_submodule(p.first), model.get_submodule(p.second)
            r1, r2 = _out_range(a.weight), _in_range(b)
            ok = (r1 > 0) & (r2 > 0)
            s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, torch.ones_like(r2))), torch.ones_like(r1))
            a.weight.div_(_channel_view(s, a.weight))
            if a.bias is not None:
                a.bias.div_(s)
            _scale_in(b, s)
            if p.first in stats:
                stats[p.first].beta.div_(s)
                stats[p.first].gamma.div_(s)
            worst = max(worst, float((s - 1).abs().max()))
        if worst < tol:
            break
    return {"sweeps": sweeps, "relu6_replaced": replaced}


@torch.no_grad()
def absorb_high_bias(
    model: nn.Module, pairs: List[Pair], stats: Dict[str, BNStats], pre_min: Optional[Dict[str, torch.Tensor]] = None
) -> Dict[str, float]:
    """High-bias absorption (DFQ §1.3) for pairs joined by a ReLU: ``c = max(0, m)`` with ``m`` the
    per-channel minimum of layer 1's pre-activation — observed over calibration data
    (``pre_min``) or, data-free, ``beta - 3 gamma`` from its BatchNorm statistics — then
    ``b1 -= c`` and ``b2 += W2 c`` (convs: W2 summed over its taps; exact except where layer 2's
    zero padding sees the shift). Pairs with neither source are left alone.

    Returns:
        ``{first_layer: sum of c}`` for the pairs changed.
    """
    out = {}
    for p in pairs:
        if p.act_kind != "relu":
            continue
        a, b = model.get_submodule(p.first), model.get_submodule(p.second)
        if a.bias is None:
            continue
        if pre_min is not None and p.first in pre_min:
            m = pre_min[p.first]
        elif p.first in stats:
            m = stats[p.first].beta - 3 * stats[p.first].gamma
        else:
            continue
        c = m.clamp(min=0).to(a.bias.dtype)
        if not bool((c > 0).any()):
            continue
        a.bias.sub_(c)
        if p.first in stats:
            stats[p.first].beta.sub_(c)
        add_to_bias(b, weight_times_input(b, b.weight, c))
        out[p.first] = float(c.sum())
    return out


def weight_times_input(layer: nn.Module, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The output a constant input ``v`` (one value per input channel) produces through weight
    ``w`` of ``layer``: ``w @ v`` for Linear; for convs ``w`` summed over its taps per (output,
    input) channel pair, grouped by the layer's groups (zero padding ignored)."""
    if isinstance(layer, nn.Linear) or w.dim() == 2:
        return w @ v
    g = layer.groups
    out_g, in_g = w.shape[0] // g, w.shape[1]
    summed = w.reshape(g, out_g, in_g, -1).sum(dim=3)  # [groups, out per group, in per group]
    return torch.einsum("goi,gi->go", summed, v.reshape(g, in_g)).reshape(-1)


def add_to_bias(layer: nn.Module, shift: torch.Tensor) -> None:
    """``layer.bias += shift`` (a bias parameter is created for a layer without one)."""
    if layer.bias is None:
        layer.bias = nn.Parameter(shift.detach().clone())
    else:
        layer.bias.add_(shift)


def clipped_relu_mean(beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """E[ReLU(x)] for x ~ N(beta, gamma^2) per channel (DFQ §1.4):
    ``gamma phi(-beta/gamma) + beta (1 - Phi(-beta/gamma))``; ``max(beta, 0)`` where gamma = 0."""
    g = gamma.clamp(min=1e-12)
    z = -beta / g
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return torch.where(gamma > 0, gamma * pdf + beta * (1 - cdf), beta.clamp(min=0))

