"""Which layer breaks accuracy, and which bit width each layer can afford (issue 11).

:func:`sensitivity` quantizes the model once (prepare + calibrate) and then switches fake
quantization per layer: for each layer the model output (and the layer's own output) with only
that layer quantized, and the model output with only that layer left float, each against the float
model: SQNR (dB), MSE and cosine. :func:`choose_bits` measures every candidate format per layer the
same way and picks per-layer formats under a bits-per-weight (or quality) budget, returning a
:class:`QATConfig` whose overrides name each layer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..qat.config import QATConfig, QuantSpec, check_flags, w8a8
from ..qat.prepare import calibrate, call_on_batch, copy_model, prepare_qat, refuse_quantized, unwrap_model
from ..qat.quantizers import ActFakeQuantizer, WeightFakeQuantizer
from .api import _batches, _progress

__all__ = ["sensitivity", "SensitivityReport", "choose_bits", "bits_per_weight", "plot_weight_ranges"]


def _metrics(y: torch.Tensor, ref: torch.Tensor) -> Dict[str, float]:
    y, ref = y.detach().double().reshape(-1), ref.detach().double().reshape(-1)
    err = (y - ref).pow(2).sum()
    sig = ref.pow(2).sum()
    return {
        "sqnr_db": float(10 * torch.log10(sig / err)) if err > 0 else math.inf,
        "mse": float(err / y.numel()),
        "cosine": float(torch.nn.functional.cosine_similarity(y, ref, dim=0)),
    }


def _outputs(model, batches, forward) -> torch.Tensor:
    outs = []
    with torch.no_grad():
        for b in batches:
            if forward is not None:
                o = forward(model, b)
            else:
                o = call_on_batch(model, b)
            o = o[0] if isinstance(o, (tuple, list)) else o
            if isinstance(o, dict):
                o = next(iter(o.values()))
            if not isinstance(o, torch.Tensor):
                raise TypeError(
                    f"sensitivity: the model output must be a tensor (or a tuple / dict whose first entry is one), "
                    f"got {type(o).__name__}; pass forward=... returning a tensor"
                )
            outs.append(o.reshape(-1))
    return torch.cat(outs)


def _first(o) -> torch.Tensor:
    """A layer output as one flat tensor: nn.MultiheadAttention returns (output, weights)."""
    o = o[0] if isinstance(o, (tuple, list)) else o
    return o.detach().reshape(-1).clone()  # a copy: an in-place op after the layer (ReLU(inplace=True), `out += identity`) wrote into the view


def _quantizers(layer: nn.Module):
    return [m for m in layer.modules() if isinstance(m, (WeightFakeQuantizer, ActFakeQuantizer))]


def _set_all(model: nn.Module, on: bool, except_layer: Optional[nn.Module] = None) -> None:
    skip = {id(m) for m in _quantizers(except_layer)} if except_layer is not None else set()
    for m in model.modules():
        if isinstance(m, (WeightFakeQuantizer, ActFakeQuantizer)):
            m.enable_fake_quant(not on if id(m) in skip else on)


def _prepared(model, config, batches, forward):
    # the first batch traced, as ptq does: the same folds, weight reads and first / last layers
    # (without it, torch.fx or nn.Sequential neighbours decided, where ptq's traced batch did)
    q = prepare_qat(model, config, example_inputs=batches[0], forward=forward or call_on_batch)
    if any(isinstance(m, ActFakeQuantizer) for m in q.modules()):
        calibrate(q, batches, forward)
    q.eval()
    return q


@dataclasses.dataclass
class SensitivityReport:
    """Per-layer rows (``name``, ``type``, ``weights``, ``params``, ``only_quantized``,
    ``only_float``, ``layer_output``: metric dicts) and the whole-model row ``all_quantized``."""

    config: str
    rows: List[dict]
    all_quantized: Dict[str, float]

    def table(self) -> str:
        head = "| layer | type | weights | params | SQNR only this quantized (dB) | cosine | SQNR all but this (dB) | layer output SQNR (dB) |"
        lines = [head, "|" + "---|" * 8]
        for r in sorted(self.rows, key=lambda r: r["only_quantized"]["sqnr_db"]):
            lines.append(
                f"| {r['name']} | {r['type']} | {r['weights']} | {r['params']} | {r['only_quantized']['sqnr_db']:.2f} | "
                f"{r['only_quantized']['cosine']:.5f} | {r['only_float']['sqnr_db']:.2f} | {r['layer_output']['sqnr_db']:.2f} |"
            )
        lines.append(f"| (all quantized) | | {self.config} | | {self.all_quantized['sqnr_db']:.2f} | "
                     f"{self.all_quantized['cosine']:.5f} | | |")
        return "\n".join(lines)

    def to_json(self) -> str:
        """Strict JSON: a zero-noise layer's infinite SQNR is the string "inf" (json.dumps wrote
        the bare Infinity that JSON parsers other than Python's refuse)."""
        def strict(v):
            if isinstance(v, float) and not math.isfinite(v):
                return "nan" if v != v else ("inf" if v > 0 else "-inf")
            if isinstance(v, dict):
                return {k: strict(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [strict(x) for x in v]
            return v

        return json.dumps(strict(dataclasses.asdict(self)), indent=1, default=str, allow_nan=False)

    def plot(self, path: str) -> str:
        """A bar chart of the per-layer SQNR (only this layer quantized / all but this one)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [r["name"] for r in self.rows]
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
        xs = range(len(names))
        only_q = [r["only_quantized"]["sqnr_db"] for r in self.rows]
        only_f = [r["only_float"]["sqnr_db"] for r in self.rows]
        # a zero-noise configuration has an infinite SQNR, which matplotlib leaves out: drawn as a
        # hatched bar 10 dB above the largest finite value, labelled "inf"
        finite = [v for v in only_q + only_f + [self.all_quantized["sqnr_db"]] if math.isfinite(v)]
        top = (max(finite) if finite else 50.0) + 10.0
        from matplotlib.patches import Patch

        handles = []
        for off, vals, label, color in ((-0.2, only_q, "only this layer quantized", "C0"),
                                        (0.2, only_f, "all but this layer", "C1")):
            bars = ax.bar([i + off for i in xs], [top if v == math.inf else v for v in vals], 0.4, color=color)
            handles.append(Patch(color=color, label=label))  # (a plain patch: the first bar may be hatched)
            for b, v in zip(bars, vals):
                if v == math.inf:
                    b.set_hatch("//")
                    ax.text(b.get_x() + b.get_width() / 2, top, "inf", ha="center", va="bottom", fontsize=7)
        if math.isfinite(self.all_quantized["sqnr_db"]):
            handles.insert(0, ax.axhline(self.all_quantized["sqnr_db"], color="k", lw=0.8, ls="--", label="all quantized"))
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_ylabel("model output SQNR (dB)")
        ax.set_title(f"qatkit.sensitivity ({self.config})")
        ax.legend(handles=handles, fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def sensitivity(
    model: nn.Module, data, config: Optional[QATConfig] = None, *, forward: Optional[Callable] = None, progress: bool = True
) -> SensitivityReport:
    """Per-layer sensitivity of ``model`` to ``config`` (default ``w8a8()``) on ``data``.

    Raises:
        ValueError: no data (sensitivity is measured); TypeError: outputs that are not tensors.
    """
    config = w8a8() if config is None else config
    if not isinstance(config, QATConfig):
        raise TypeError(f"sensitivity: config must be a QATConfig (e.g. qatkit.w8a8()), got {type(config).__name__}")
    check_flags("sensitivity", progress=progress)
    batches = _batches(data, "sensitivity")
    if batches is None:
        raise ValueError("sensitivity: data is required (a tensor, a list of batches or a DataLoader)")
    # the model inside torch.compile's / DDP's wrapper: the rows name its own layers (not
    # "_orig_mod.0"), and the layer-output hooks run (on a compiled model they never fired: the
    # "layer output SQNR" column read nan), with the many per-layer switches not recompiling
    refuse_quantized("sensitivity", unwrap_model(model))
    model = copy_model(unwrap_model(model)).eval()
    q = _prepared(model, config, batches, forward)
    # BitLinear normalizes its input (RMSNorm) whether it quantizes or not, so with BitLinear layers
    # the reference is the prepared model with quantization off; before, every row measured that
    # normalization as quantization noise against the float model (-10 dB for an 8-bit layer)
    ref_model = q if config.bitlinear else model
    if config.bitlinear:
        warnings.warn(
            "sensitivity: BitLinear layers normalize their inputs (RMSNorm), which the float model does not: "
            "the reference is the prepared model with quantization off",
            UserWarning,
            stacklevel=2,
        )
        _set_all(q, False)
    ref = _outputs(ref_model, batches, forward)
    _set_all(q, True)
    rows_in = [r for r in q.qat_report if r.get("qat")]
    all_q = _metrics(_outputs(q, batches, forward), ref)
    rows = []
    for r in _progress(rows_in, len(rows_in), "sensitivity", progress):
        layer = q.get_submodule(r["name"]) if r["name"] else q
        float_layer = model.get_submodule(r["name"]) if r["name"] else model
        # a folded layer (QuantConvBn2d) computes conv + BatchNorm: its float counterpart's output is
        # the BatchNorm's (before, the conv's, so a folded layer's "layer output SQNR" compared
        # normalized with unnormalized activations: -4 to -12 dB for an int8 layer)
        float_out = model.get_submodule(r["folded_bn"]) if r.get("folded_bn") else float_layer
        if config.bitlinear:
            float_out = layer  # hooked below while every quantizer is off
        _set_all(q, False, except_layer=layer)  # only this one on
        got, want = {}, {}
        h1 = layer.register_forward_hook(lambda m, a, o: got.setdefault("y", []).append(_first(o)))
        try:
            only_q = _metrics(_outputs(q, batches, forward), ref)
        finally:
            h1.remove()
        if config.bitlinear:
            _set_all(q, False)
        h2 = float_out.register_forward_hook(lambda m, a, o: want.setdefault("y", []).append(_first(o)))
        try:
            _outputs(ref_model, batches, forward)
        finally:
            h2.remove()
        layer_out = _metrics(torch.cat(got["y"]), torch.cat(want["y"])) if got and want else {"sqnr_db": math.nan}
        _set_all(q, True, except_layer=layer)  # all but this one
        only_f = _metrics(_outputs(q, batches, forward), ref)
        _set_all(q, True)
        params = sum(p.numel() for n, p in float_layer.named_parameters() if n.endswith("weight"))
        rows.append({"name": r["name"], "type": r["type"], "weights": r["weight"], "params": params,
                     "only_quantized": only_q, "only_float": only_f, "layer_output": layer_out})
    return SensitivityReport(config.name, rows, all_q)


def bits_per_weight(spec: Optional[QuantSpec]) -> float:
    """Storage bits per weight of a spec's codes (scales not counted): its bits, log2(3) for
    ternary, 1 for binary, 32 for float."""
    if spec is None:
        return 32.0
    if spec.kind == "ternary":
        return math.log2(3)
    if spec.kind == "binary":
        return 1.0
    return float(spec.bits)


def choose_bits(
    model: nn.Module,
    data,
    candidates: Sequence[QATConfig] = (),
    *,
    budget: Optional[float] = None,
    min_sqnr_db: Optional[float] = None,
    forward: Optional[Callable] = None,
    progress: bool = True,
) -> QATConfig:
    """Pick a format per layer among ``candidates`` (their default specs; default W8A8, W4A8,
    ternary TWN, binary W1A8) under a budget: ``budget`` bits per weight on average (weighted by
    each layer's weight count; the assignment with the least predicted noise within it), or
    ``min_sqnr_db``, the fewest bits whose predicted model-output SQNR stays above it (both found
    by :func:`_pareto_search`). The per-layer damage is each
    candidate's "only this layer quantized" output noise (:func:`sensitivity`), added as noise
    powers to predict the whole model.

    Returns:
        A :class:`QATConfig` (the widest candidate's, ``first_last=None``) with one override per
        layer; ``.name`` carries the predicted bits per weight and SQNR.

    Raises:
        ValueError: neither or both budgets, a budget that is not a number, a budget below the
            cheapest assignment, a min_sqnr_db no assignment reaches, no candidates, candidates
            with overrides or that disagree on ``bitlinear`` / ``fold_bn`` / ``embeddings`` /
            ``skip`` (a per-layer override carries the weight and activation specs only).
    """
    from ..qat.config import binary_w1a8, ternary_twn, w4a8

    check_flags("choose_bits", progress=progress)
    if (budget is None) == (min_sqnr_db is None):
        raise ValueError("choose_bits: give exactly one of budget (bits per weight) or min_sqnr_db")
    for arg, v in (("budget", budget), ("min_sqnr_db", min_sqnr_db)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v)):
            raise ValueError(f"choose_bits: {arg} must be a number (not NaN), got {v!r}")
    cands = list(candidates) or [w8a8(), w4a8(), ternary_twn(), binary_w1a8()]
    if not all(isinstance(c, QATConfig) for c in cands):
        raise TypeError("choose_bits: candidates must be QATConfig objects")
    _check_candidates(cands)
    refuse_quantized("choose_bits", unwrap_model(model))
    cands = [dataclasses.replace(c, first_last=None) for c in cands]
    # read once: every candidate's sensitivity runs over the batches (a generator was exhausted by
    # the first candidate, and the second raised "data holds no batches")
    batches = _batches(data, "choose_bits")
    if batches is None:
        raise ValueError("choose_bits: data is required (a tensor, a list of batches or a DataLoader)")
    reports = [sensitivity(model, batches, c, forward=forward, progress=progress) for c in cands]
    names = [r["name"] for r in reports[0].rows]
    params = {r["name"]: r["params"] for r in reports[0].rows}
    noise = {}  # (layer, candidate) -> relative output noise power
    for ci, rep in enumerate(reports):
        for r in rep.rows:
            noise[(r["name"], ci)] = 10 ** (-r["only_quantized"]["sqnr_db"] / 10) if math.isfinite(r["only_quantized"]["sqnr_db"]) else 0.0
    bpw = [bits_per_weight(c.default.weight) for c in cands]
    total = sum(params.values()) or 1
    order = sorted(range(len(cands)), key=lambda i: -bpw[i])  # most bits first
    lowest = sum(params[n] * bpw[order[-1]] for n in names) / total
    if budget is not None and budget < lowest - 1e-9:
        raise ValueError(f"choose_bits: budget {budget} bits/weight is below the cheapest assignment ({lowest:.3f})")
    options = [[(params[n] * bpw[c], noise[(n, c)]) for c in range(len(cands))] for n in names]
    if budget is not None:
        picked = _pareto_search(options, max_bits=budget * total)
    else:
        picked = _pareto_search(options, max_noise=10 ** (-min_sqnr_db / 10))
    choice = dict(zip(names, picked)) if picked is not None else None

    def avg_bits():
        return sum(params[n] * bpw[choice[n]] for n in names) / total

    def pred_sqnr():
        s = sum(noise[(n, choice[n])] for n in names)
        return math.inf if s == 0 else -10 * math.log10(s)

    if choice is None:  # only a quality target can be out of reach
        best = sum(min(noise[(n, c)] for c in range(len(cands))) for n in names)
        raise ValueError(
            f"choose_bits: no assignment reaches min_sqnr_db {min_sqnr_db} dB: the least noisy candidate on every "
            f"layer predicts {-10 * math.log10(best):.1f} dB; lower the target or add a wider candidate"
        )
    base = cands[order[0]]
    overrides = tuple((_escape(n), cands[choice[n]].default) for n in names)
    return dataclasses.replace(
        base,
        overrides=overrides,
        name=f"mixed ({avg_bits():.2f} bits/weight, predicted output SQNR {pred_sqnr():.1f} dB)",
    )


def _pareto_search(options, max_bits: Optional[float] = None, max_noise: Optional[float] = None, cap: int = 20000):
    """One candidate index per layer: the least predicted noise within ``max_bits`` or the fewest
    bits within ``max_noise``. ``options[l][c]`` is layer l's (bits, noise) under candidate c; both
    add up over layers. Exact (a dynamic program over the Pareto front of partial assignments,
    dominated ones dropped) while the front stays under ``cap`` points, else the front is thinned to
    ``cap`` bit buckets (the least noise in each). Before, a greedy walk took the downgrade with the
    least noise per saved bit until the budget held, and could overshoot it: budget=4 on a model
    whose largest layer went from int4 to ternary in one step returned 1.74 bits/weight at 8.9 dB
    where int4 everywhere (4.0 bits/weight) predicts 30 dB. None when no assignment fits."""
    import numpy as np

    n_layers = len(options)
    bits_of = [np.array([b for b, _ in o], dtype=np.float64) for o in options]
    noise_of = [np.array([e for _, e in o], dtype=np.float64) for o in options]
    # the least bits / noise the layers after l still add: prunes partial assignments early
    rest_bits = np.zeros(n_layers + 1)
    rest_noise = np.zeros(n_layers + 1)
    for l in range(n_layers - 1, -1, -1):
        rest_bits[l] = rest_bits[l + 1] + bits_of[l].min()
        rest_noise[l] = rest_noise[l + 1] + noise_of[l].min()
    bits, err = np.zeros(1), np.zeros(1)
    back = []  # per layer: (index into the previous front, candidate) of each point
    for l in range(n_layers):
        n_c = len(bits_of[l])
        nb = (bits[:, None] + bits_of[l][None, :]).reshape(-1)
        ne = (err[:, None] + noise_of[l][None, :]).reshape(-1)
        keep = np.ones(nb.shape, dtype=bool)
        if max_bits is not None:
            keep &= nb + rest_bits[l + 1] <= max_bits * (1 + 1e-12)  # float sums in another order
        if max_noise is not None:
            keep &= ne + rest_noise[l + 1] <= max_noise * (1 + 1e-12)
        idx = np.nonzero(keep)[0]
        if idx.size == 0:
            return None
        idx = idx[np.lexsort((ne[idx], nb[idx]))]  # by bits, then noise
        e_sorted = ne[idx]
        prior = np.concatenate(([np.inf], np.minimum.accumulate(e_sorted)[:-1]))
        idx = idx[e_sorted < prior]  # the points no cheaper point beats on noise
        if idx.size > cap:  # thin to `cap` bit buckets, the least noise in each
            b = nb[idx]
            width = (b[-1] - b[0]) / cap or 1.0
            bucket = ((b - b[0]) / width).astype(np.int64)
            order = np.lexsort((ne[idx], bucket))
            first = np.ones(order.size, dtype=bool)
            first[1:] = bucket[order][1:] != bucket[order][:-1]
            idx = np.sort(idx[order[first]])
            idx = idx[np.argsort(nb[idx], kind="stable")]
        bits, err = nb[idx], ne[idx]
        back.append((idx // n_c, idx % n_c))
    end = int(np.lexsort((bits, err))[0]) if max_bits is not None else int(np.lexsort((err, bits))[0])
    picked = []
    for parent, cand in reversed(back):
        picked.append(int(cand[end]))
        end = int(parent[end])
    return picked[::-1]


def _check_candidates(cands: Sequence[QATConfig]) -> None:
    """The returned config is the widest candidate with one per-layer override (a LayerSpec: the
    weight and activation specs) taken from each chosen candidate's ``default``. What an override
    cannot carry must agree among the candidates, or the config would build other layers than the
    ones measured: before, ``[w8a8(), bitnet_b158()]`` measured BitLinear layers (RMSNorm +
    ternary weights) and returned a config whose layers were QuantLinear with ternary weights and
    no RMSNorm, silently."""
    first = cands[0]
    for c in cands:
        if c.overrides:
            raise ValueError(
                f"choose_bits: candidate {c.name!r} has per-layer overrides ({len(c.overrides)}); choose_bits picks "
                "among the candidates' default specs and writes its own overrides: pass configs without overrides "
                "(and keep layers float with skip=...)"
            )
        for field, why in (
            ("bitlinear", "BitLinear layers add an RMSNorm before quantizing, which a per-layer override cannot ask for"),
            ("fold_bn", "folding changes which layers exist"),
            ("embeddings", "it decides which layers are quantized"),
            ("skip", "it decides which layers are quantized"),
        ):
            if getattr(c, field) != getattr(first, field):
                raise ValueError(
                    f"choose_bits: the candidates disagree on {field} ({first.name!r}: {getattr(first, field)!r}, "
                    f"{c.name!r}: {getattr(c, field)!r}); {why}, and the returned config holds one value: give "
                    f"every candidate the same {field} (dataclasses.replace(config, {field}=...))"
                )


def _escape(name: str) -> str:
    """An fnmatch pattern matching exactly ``name``."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)



def plot_weight_ranges(models: Dict[str, nn.Module], layers: Sequence[str], path: str) -> str:
    """Per-output-channel weight ranges (max |W| per channel, log scale) of ``layers`` in each of
    ``models`` ({label: model}, e.g. before / after cross-layer equalization), one panel per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3), squeeze=False)
    for ax, name in zip(axes[0], layers, strict=True):
        for label, m in models.items():
            w = m.get_submodule(name).weight.detach()
            r = w.abs().reshape(w.shape[0], -1).amax(dim=1)
            ax.semilogy(range(len(r)), r.numpy(), "o-", ms=3, lw=0.8, label=label)
        ax.set_title(f"layer '{name}'", fontsize=9)
        ax.set_xlabel("output channel", fontsize=8)
    axes[0][0].set_ylabel("max |W| per channel", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
