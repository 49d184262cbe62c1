"""``qatkit.ptq``: one call from a float model to a quantized one without training (docs/ptq.md).

Pipeline, each step reported in ``model.ptq_report`` and a printed table:

1. trace one batch (or torch.fx without data) into a dataflow graph (:mod:`qatkit.qat.graph`);
2. fold BatchNorms into the layers before them (exact in eval mode), keeping their statistics;
3. cross-layer equalization over every provably safe pair (ReLU6 -> ReLU where a pair needs it),
   then high-bias absorption (calibration minima, or BatchNorm statistics without data);
4. ``prepare_qat`` with the config; activation ranges from the calibration data (min/max observers
   by default) or, without data, from BatchNorm statistics ``beta +- n gamma`` clipped by the ReLU;
5. weight qparams computed once and **stored** in the quantizers (so ``convert``, state dicts and
   export see the decisions PTQ made);
6. bias correction, layer by layer from the input side: empirical (mean output shift on the
   calibration data, weight and input quantization included) or analytic (from the BatchNorm
   statistics through the ReLU's clipped-normal mean).

The caller's model is never changed unless ``inplace=True`` (and then only when everything
succeeded: the work happens on a copy that replaces the model's contents at the end).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..qat import graph, optimizer_check
from ..qat.config import LayerSpec, QATConfig, check_flags, w8a8
from ..qat.modules import BitLinear, QuantConv1d, QuantConv2d, QuantLinear, QuantMultiheadAttention
from ..qat.prepare import (
    calibrate,
    call_on_batch,
    copy_model,
    disable_observer,
    enable_fake_quant,
    enable_observer,
    prepare_qat,
    refuse_meta,
    refuse_quantized,
    refuse_wrapped,
)
from ..qat.swap import pruning_hooks
from torch.nn.utils import prune
from ..qat.quantizers import (ActFakeQuantizer, AffineLearnedActQuantizer, AffineStaticActQuantizer,
                              AffineStaticWeightQuantizer, WeightFakeQuantizer)
from . import transforms as T

__all__ = ["ptq"]

_ROUNDINGS = ("nearest", "adaround", "gptq")
_BIAS_CORRECTIONS = ("empirical", "empirical_one_pass", "analytic", None)


def _progress(it, total: Optional[int], desc: str, on: bool):
    if not on:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a test/script dependency; ptq works without it
        return it
    return tqdm(it, total=total, desc=desc, leave=False)


def _batches(data, where: str = "ptq") -> Optional[List]:
    """The calibration batches as a list (a DataLoader or any iterable is read once), ``[data]``
    for a single tensor, ``None`` for no data or a callable."""
    if data is None or callable(data) and not isinstance(data, (torch.Tensor, nn.Module)):
        return None
    if isinstance(data, torch.Tensor):
        return [data]
    if isinstance(data, (str, bytes, dict)) or not isinstance(data, Iterable):
        raise TypeError(
            f"{where}: data must be a DataLoader or iterable of batches, a tensor, a callable data(model) or None, got "
            f"{type(data).__name__}"
        )
    out = list(data)
    if not out:
        raise ValueError(f"{where}: data holds no batches (an empty or exhausted iterable); pass calibration batches"
                         + (" or data=None for data-free PTQ" if where == "ptq" else ""))
    for i, b in enumerate(out):
        first = b[0] if isinstance(b, (tuple, list)) and b else b
        if isinstance(first, torch.Tensor) and first.numel() == 0:
            raise ValueError(f"{where}: calibration batch {i} is empty (shape {tuple(first.shape)})")
    return out


def _runner(batches, data, forward) -> Optional[Callable[[nn.Module], None]]:
    if batches is None and data is None:
        return None
    if batches is None:  # a callable that runs the model itself
        return lambda m: data(m)

    def run(m, progress=False, desc="calibrate"):
        for i, b in enumerate(_progress(batches, len(batches), desc, progress)):
            try:
                if forward is not None:
                    forward(m, b)
                else:
                    call_on_batch(m, b)
            except (ValueError, TypeError, RuntimeError, IndexError) as e:
                raise type(e)(f"ptq: calibration batch {i}: {e}") from e

    return run


def _first_input(batches):
    if not batches:
        return None
    b = batches[0]
    return b[0] if isinstance(b, (tuple, list)) else b


def _flow(model: nn.Module, forward, batches) -> Tuple[Optional[graph.Dataflow], str]:
    if batches is not None:
        try:
            if forward is not None:
                return graph.trace_dataflow(model, batches[0], forward), "traced one calibration batch"
            return graph.trace_dataflow(model, _first_input(batches)), "traced one calibration batch"
        except (ValueError, TypeError, RuntimeError, IndexError) as e:
            raise type(e)(f"ptq: calibration batch 0: {e}") from e
    try:
        return graph.fx_dataflow(model), "torch.fx graph"
    except Exception as e:  # data-free and untraceable: no graph transforms, said in the report
        return None, f"no dataflow graph (no data, and torch.fx failed: {type(e).__name__}: {str(e).splitlines()[0][:120]})"


def _listed(pairs: List[Tuple[str, str]], limit: int = 6) -> str:
    """``"name (why); ..."`` for a warning: the first ``limit`` (layer, reason) pairs."""
    return "; ".join(f"{n} ({why})" for n, why in pairs[:limit]) + ("; ..." if len(pairs) > limit else "")


def _with_observer(config: QATConfig, observer: Optional[str]) -> QATConfig:
    """The config with ``observer`` for every static activation spec (PTQ sees each batch once:
    min/max by default, not QAT's moving average)."""
    if observer is None:
        return config
    import dataclasses

    def fix(ls: LayerSpec) -> LayerSpec:
        a = ls.activation
        if a is not None and a.kind == "int" and a.scale == "static":
            a = dataclasses.replace(a, observer=observer)
        return LayerSpec(ls.weight, a)

    return dataclasses.replace(
        config, default=fix(config.default), overrides=tuple((p, fix(s)) for p, s in config.overrides)
    )


def _pre_activation_minima(model, names: List[str], run) -> Dict[str, torch.Tensor]:
    """Per-channel minimum of each named layer's output over the calibration data."""
    mins: Dict[str, torch.Tensor] = {}
    hooks = []

    def hook(name, linear):
        def f(mod, args, out):
            o = out.detach()
            dims = [d for d in range(o.dim()) if d != (o.dim() - 1 if linear else 1)]
            m = o.amin(dim=dims) if dims else o
            mins[name] = m if name not in mins else torch.minimum(mins[name], m)

        return f

    for n in names:
        mod = model.get_submodule(n)
        hooks.append(mod.register_forward_hook(hook(n, isinstance(mod, nn.Linear))))
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in hooks:
            h.remove()
    return mins


_QAT_WEIGHTED = (QuantLinear, QuantConv1d, QuantConv2d)


def _float_op(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's float computation with ``weight`` (no quantizer)."""
    if isinstance(layer, QuantLinear):
        return nn.functional.linear(x, weight, layer.bias)
    return layer._conv_forward(x, weight, layer.bias)


def _channel_mean(y: torch.Tensor, linear: bool) -> torch.Tensor:
    if linear:
        return y.reshape(-1, y.shape[-1]).mean(dim=0)
    return y.transpose(0, 1).reshape(y.shape[1], -1).mean(dim=1)


@torch.no_grad()
def _empirical_bias_correction(
    model: nn.Module,
    layers: List[str],
    run,
    progress: bool,
    float_weights: Dict[str, torch.Tensor],
    one_pass: bool = False,
) -> Dict[str, float]:
    """For each layer from the input side: the mean per-channel shift of its quantized output
    against the float weight on the same (already corrected) inputs, subtracted from its bias.
    ``one_pass``: every layer's shift from one pass over the data (upstream layers not corrected
    yet when a layer is measured): one forward pass instead of one per layer."""
    todo = [n for n in layers if model.get_submodule(n).weight_fake_quant is not None
            and not isinstance(model.get_submodule(n), BitLinear)]  # BitLinear: RMSNorm first, skipped
    acc = {n: {"sum": None, "n": 0} for n in todo}

    def hook_for(name, w_float, linear):
        def hook(mod, args, kwargs):
            x = graph.layer_input(args, kwargs)  # self.fc(input=x) too
            yq = mod.forward(x)  # forward, not __call__: no hook recursion
            yf = _float_op(mod, x, w_float)
            d = _channel_mean(yq - yf, linear).double()
            a = acc[name]
            a["sum"] = d if a["sum"] is None else a["sum"] + d
            a["n"] += 1

        return hook

    def measure(names):
        hooks = []
        for n in names:
            layer = model.get_submodule(n)
            hooks.append(layer.register_forward_pre_hook(
                hook_for(n, float_weights.get(n, layer.weight), isinstance(layer, QuantLinear)), with_kwargs=True))
        try:
            run(model)
        finally:
            for h in hooks:
                h.remove()

    def apply(name):
        a = acc[name]
        if a["n"] == 0:
            return None
        layer = model.get_submodule(name)
        shift = (a["sum"] / a["n"]).to(layer.weight.dtype)
        T.add_to_bias(layer, -shift)
        return float(shift.norm())

    out = {}
    if one_pass:
        measure(todo)
        for name in todo:
            v = apply(name)
            if v is not None:
                out[name] = v
        return out
    for name in _progress(todo, len(todo), "bias correction", progress):
        measure([name])
        v = apply(name)
        if v is not None:
            out[name] = v
    return out


@torch.no_grad()
def _analytic_bias_correction(
    model: nn.Module, inputs_of: Dict[str, T.BNStats], float_weights: Dict[str, torch.Tensor]
) -> Dict[str, float]:
    """``b -= eps E[x]`` with E[x] the clipped-normal mean of the ReLU input statistics."""
    out = {}
    for name, st in inputs_of.items():
        layer = model.get_submodule(name)
        wfq = getattr(layer, "weight_fake_quant", None)
        if wfq is None or getattr(layer, "smooth", None) is not None:
            continue
        ex = T.clipped_relu_mean(st.beta, st.gamma).to(layer.weight.dtype)
        eps = layer.quantized_weight() - float_weights.get(name, layer.weight)
        shift = T.weight_times_input(layer, eps, ex)
        T.add_to_bias(layer, -shift)
        out[name] = float(shift.norm())
    return out


#: modules and ops between a ReLU and the next layer that cannot widen the ReLU's range
_RANGE_KEEPING_MODULES = (
    nn.Identity, nn.Flatten, nn.Dropout, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d,
)
_RANGE_KEEPING_OPS = {"flatten", "reshape", "view", "mean", "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d", "contiguous"}


def _relu_inputs(model: nn.Module, flow: Optional[graph.Dataflow], stats: Dict[str, T.BNStats]) -> Dict[str, T.BNStats]:
    """Layers whose input is ReLU(a folded layer's output), possibly through pooling / flatten
    (which keep the values inside the ReLU's range): {layer: that layer's BN statistics}."""
    if flow is None:
        return {}
    names = {}
    for n, m in model.named_modules():
        names.setdefault(id(m), n)

    flattened = []  # whether the last walk back passed a channel-major flatten

    def back(c):
        while c is not None and (
            (c.kind == "module" and isinstance(c.module, _RANGE_KEEPING_MODULES))
            or (c.kind == "op" and c.name in _RANGE_KEEPING_OPS)
        ):
            if (c.kind == "module" and isinstance(c.module, nn.Flatten) and c.module.start_dim == 1) or (
                    c.kind == "op" and c.name == "flatten"):
                flattened.append(True)
            c = flow.producer(c)
        return c

    out = {}
    for call in flow.calls:
        if call.kind != "module" or not isinstance(call.module, T._WEIGHTED):
            continue
        flattened.clear()
        src = back(flow.producer(call))
        if src is None or not ((src.kind == "module" and isinstance(src.module, (nn.ReLU, nn.ReLU6)))
                               or (src.kind == "op" and src.name in ("relu", "relu_", "relu6"))):  # F.relu too
            continue
        pre = back(flow.producer(src))
        if pre is not None and pre.kind == "module" and names.get(id(pre.module)) in stats:
            st = stats[names[id(pre.module)]]
            m = call.module
            c, want = st.beta.numel(), (m.in_features if isinstance(m, nn.Linear) else m.in_channels)
            if want != c:
                # a Linear after Flatten of [N, C, *spatial]: C * k features, channel-major (each
                # channel's statistics k times); any other mismatch has no per-channel reading
                if not (isinstance(m, nn.Linear) and flattened and want % c == 0):
                    continue
                st = T.BNStats(st.beta.repeat_interleave(want // c), st.gamma.repeat_interleave(want // c))
            out[names[id(call.module)]] = st
    return out


def _data_free_ranges(
    model: nn.Module, relu_inputs: Dict[str, T.BNStats], n_sigma: float, model_inputs: List[str], input_range
) -> List[str]:
    """Set each static input quantizer's range from beta +- n gamma (clipped at 0 by the ReLU),
    or ``input_range`` for layers reading the model input; returns the layers left without one."""
    missing = []
    for name, m in model.named_modules():
        aq = getattr(m, "input_fake_quant", None)
        if not isinstance(aq, AffineStaticActQuantizer):
            continue
        st = relu_inputs.get(name)
        if st is not None:
            lo = (st.beta - n_sigma * st.gamma).clamp(min=0)
            hi = (st.beta + n_sigma * st.gamma).clamp(min=0)
        elif name in model_inputs and input_range is not None:
            lo, hi = torch.tensor([float(input_range[0])]), torch.tensor([float(input_range[1])])
        else:
            missing.append(name)
            continue
        if aq.axis is None:
            lo, hi = lo.min().reshape(1), hi.max().reshape(1)
        stats = torch.stack([lo.float(), hi.float()], dim=-1)
        if not hasattr(aq.observer, "_update"):
            raise ValueError(
                f"ptq: data-free ranges need a min/max observer, layer '{name}' has {type(aq.observer).__name__} "
                "(a histogram needs data); pass data or observer='minmax'"
            )
        aq.observer._update(stats, None if aq.axis is None else 0, torch.ones(1, dtype=torch.uint8))
        aq._observed = True
    return missing


def _report_table(report: dict) -> str:
    rows = [("layer", "weights", "activations", "notes")]
    for r in report["layers"]:
        rows.append((r["name"], r["weight"], r["act"], r.get("notes", "")))
    w = [max(len(str(r[i])) for r in rows) for i in range(4)]
    lines = [" | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "-+-".join("-" * x for x in w))
    head = [f"qatkit.ptq ({report['config']}): " + ", ".join(report["steps"])]
    for k in ("skipped_pairs", "unfolded_bns", "model_changes"):
        for item in report.get(k, []):
            head.append(f"  {k.replace('_', ' ')}: {item}")
    return "\n".join(head + lines)


def ptq(
    model: nn.Module,
    data=None,
    config: Optional[QATConfig] = None,
    *,
    forward: Optional[Callable] = None,
    equalize: bool = True,
    absorb_bias: bool = True,
    correct_bias: Optional[str] = "empirical",
    rounding: str = "nearest",
    scaling: Optional[str] = None,
    observer: Optional[str] = "minmax",
    gptq: Optional[dict] = None,
    adaround_iters: int = 1000,
    threshold_search: bool = True,
    n_sigma: float = 6.0,
    input_range: Optional[Tuple[float, float]] = None,
    inplace: bool = False,
    progress: bool = True,
    verbose: bool = True,
) -> nn.Module:
    """Post-training quantization: a float model to a quantized one, no training.

    Args:
        model: a float ``nn.Module`` (any: the pairs come from its execution, no tracer needed).
        data: calibration data — a DataLoader / iterable of batches (read once), a tensor, a
            callable ``data(model)`` that runs the model, or ``None`` (data-free: weight-only
            presets, or activation ranges from BatchNorm statistics).
        config: a :class:`QATConfig` (default ``w8a8()``; weight-only presets need no data).
        forward: ``forward(model, batch)`` for batches that are not a plain input. Without it a
            batch is the input, a tuple / list's first element, or a mapping's keyword arguments
            (``model(**batch)``: a tokenizer's output).
        equalize: cross-layer equalization of every safe layer pair (ReLU6 -> ReLU where needed).
        absorb_bias: high-bias absorption after equalization.
        correct_bias: ``"empirical"`` (needs data; layer by layer, one pass over the data per
            layer), ``"empirical_one_pass"`` (every layer from one pass: upstream corrections not
            seen, much faster on deep models), ``"analytic"`` (BatchNorm statistics) or None.
        rounding: ``"nearest"``, ``"gptq"`` (Hessian from the calibration inputs, act-order,
            static groups, 1 % damping) or ``"adaround"`` (learned rounding per layer); both need
            data and apply to static integer weights of Linear / ungrouped Conv layers (others keep
            round-to-nearest, listed in the report).
        gptq: GPTQ options (``act_order``, ``damp``, ``block``). adaround_iters: AdaRound steps
            per layer.
        threshold_search: with data, per-channel ternary (TWN) and binary (mean |W|) weights get
            output-aware thresholds and scales (:mod:`qatkit.ptq.lowbit`) instead of the closed
            forms.
        scaling: None, ``"smoothquant"`` (W8A8: per-channel input scaling s = max|X|^a /
            max|W|^(1-a), a searched per layer) or ``"awq"`` (weight-only: s = mean|X|^a, a
            searched); Linear layers only, applied inside the layer (``QuantLinear.smooth``).
            Quantized Linear layers it cannot cover (float activations under smoothquant, ternary
            / binary weights, attention projections) are warned about and listed in
            ``ptq_report["scaling_skipped"]``.
        observer: the observer for static activation ranges (``"minmax"``; ``None`` keeps the
            config's).
        n_sigma: data-free activation ranges are ``beta +- n_sigma * gamma`` (DFQ uses 6).
        input_range: data-free range ``(lo, hi)`` of the model input, for the layers reading it
            (e.g. ``(0, 1)`` for normalized pixels).
        inplace: transform ``model`` itself (only once everything succeeded).
        progress: tqdm bars over data passes. verbose: print the summary table.

    Returns:
        The model with QAT layers holding stored weight and activation qparams, observers off, in
        eval mode; ``convert`` turns it into integer weights with exactly these codes.
        ``model.ptq_report`` records every step, pair, skipped pair and model change.

    Raises:
        TypeError / ValueError: bad arguments, empty data, a model with nothing to quantize,
        non-finite activations (naming the layer and the batch), activation ranges that neither
        data nor BatchNorm statistics give (naming the layers), data-aware rounding or scaling
        without data.
    """
    config = w8a8() if config is None else config
    if not isinstance(config, QATConfig):
        raise TypeError(f"ptq: config must be a QATConfig (e.g. qatkit.w8a8()), got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"ptq: model must be an nn.Module, got {type(model).__name__}")
    if rounding not in _ROUNDINGS:
        raise ValueError(f"ptq: rounding must be one of 'nearest', 'adaround', 'gptq', got {rounding!r}")
    check_flags("ptq", equalize=equalize, absorb_bias=absorb_bias, threshold_search=threshold_search,
                inplace=inplace, progress=progress, verbose=verbose)
    refuse_wrapped("ptq", model)
    refuse_quantized("ptq", model)
    refuse_meta("ptq", model)
    if isinstance(adaround_iters, bool) or not isinstance(adaround_iters, int) or adaround_iters < 1:
        raise ValueError(f"ptq: adaround_iters must be an integer >= 1, got {adaround_iters!r}")
    if gptq is not None:
        if not isinstance(gptq, dict) or not set(gptq) <= {"act_order", "damp", "block"}:
            raise ValueError(f"ptq: gptq must be a dict of 'act_order', 'damp', 'block', got {gptq!r}")
        damp, block = gptq.get("damp", 0.01), gptq.get("block", 128)
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not (0 <= damp < math.inf):
            raise ValueError(f"ptq: gptq['damp'] (the Hessian's diagonal damping, a share of its mean) must be a "
                             f"finite number >= 0, got {damp!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"ptq: gptq['block'] must be an integer >= 1, got {block!r}")
        if not isinstance(gptq.get("act_order", True), bool):
            raise ValueError(f"ptq: gptq['act_order'] must be True or False, got {gptq['act_order']!r}")
    if rounding == "adaround" and torch.is_inference_mode_enabled():
        raise RuntimeError(
            "ptq: rounding='adaround' optimizes each layer's rounding with autograd, which torch.inference_mode() "
            "turns off (its tensors cannot require grad); call ptq outside inference_mode (torch.no_grad() is fine), "
            "or use rounding='nearest' / 'gptq'"
        )
    if scaling not in (None, "smoothquant", "awq"):
        raise ValueError(f"ptq: scaling must be None, 'smoothquant' or 'awq', got {scaling!r}")
    if correct_bias not in _BIAS_CORRECTIONS:
        raise ValueError(
            f"ptq: correct_bias must be 'empirical', 'empirical_one_pass', 'analytic' or None, got {correct_bias!r}"
        )
    if not (isinstance(n_sigma, (int, float)) and math.isfinite(n_sigma) and n_sigma > 0):
        raise ValueError(f"ptq: n_sigma must be a positive finite number, got {n_sigma!r}")
    if input_range is not None and not (
        isinstance(input_range, (tuple, list)) and len(input_range) == 2
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in input_range) and input_range[0] < input_range[1]
    ):
        raise ValueError(f"ptq: input_range must be (lo, hi) with finite lo < hi, got {input_range!r}")
    batches = _batches(data)
    if forward is None and batches and isinstance(batches[0], Mapping):
        forward = call_on_batch  # model(**batch): the graph trace takes it too
    run = _runner(batches, data, forward)
    asked_analytic = correct_bias == "analytic"  # (not the data-free fallback below: that one says nothing)
    # arguments that change nothing in this call (a forgotten rounding=, data-free options given data):
    # before, ignored without a word
    ignored = []
    if gptq is not None and rounding != "gptq":
        ignored.append(f"gptq (GPTQ's options; rounding is {rounding!r}, not 'gptq')")
    if adaround_iters != 1000 and rounding != "adaround":
        ignored.append(f"adaround_iters (AdaRound's steps; rounding is {rounding!r}, not 'adaround')")
    if run is not None and input_range is not None:
        ignored.append("input_range (the data-free range of the model input; the calibration data gives it here)")
    if run is not None and n_sigma != 6.0:
        ignored.append("n_sigma (data-free activation ranges; the calibration data gives them here)")
    if correct_bias in ("empirical", "empirical_one_pass") and run is None:
        correct_bias = "analytic"  # no data: the data-free form (reported)
    src_params = list(model.parameters())
    work = copy_model(model).eval()  # (deprecated weight_norm layers too)
    copies = list(zip(src_params, work.parameters()))  # for the optimizer check (qat/optimizer_check.py)
    report = {"config": config.name, "steps": [], "skipped_pairs": [], "unfolded_bns": [], "model_changes": []}
    # torch.nn.utils.prune: the pruning becomes permanent in the copy (prune.remove: the pruned
    # tensor, zeros included, is the Parameter again). Left live, its pre-hook would recompute the
    # weight from weight_orig before every call, undoing the BatchNorm fold, equalization and
    # rounding that write the weight; ptq trains nothing afterwards, so the mask has no more use.
    for name, mod in work.named_modules():
        for tensor in pruning_hooks(mod):
            prune.remove(mod, tensor)
            report["model_changes"].append(f"{name}: pruning of {tensor!r} made permanent (torch.nn.utils.prune.remove)")

    flow, how = _flow(work, forward, batches) if batches is not None or run is None else (None, "data is a callable: no traced graph")
    report["graph"] = how
    stats: Dict[str, T.BNStats] = {}
    if config.fold_bn and flow is not None:
        stats, folded, unfolded = T.fold_batchnorms(work, flow)
        report["steps"].append(f"folded {len(folded)} BatchNorm(s)")
        report["unfolded_bns"] = [f"{n}: {r}" for n, r in unfolded.items()]
        if folded:
            flow, _ = _flow(work, forward, batches)
    elif flow is None and any(isinstance(m, graph.BN_TYPES) for m in work.modules()):
        report["unfolded_bns"] = [f"all: {how}"]
    pairs: List[T.Pair] = []
    if flow is not None and (equalize or absorb_bias):
        pairs, skipped = T.find_equalization_pairs(work, flow)
        report["skipped_pairs"] = [f"{n}: {r}" for n, r in skipped]
    if equalize and pairs:
        eq = T.equalize(work, pairs, stats)
        report["steps"].append(f"equalized {len(pairs)} pair(s) in {eq['sweeps']} sweep(s)")
        report["model_changes"] += [f"{n}: ReLU6 -> ReLU (cross-layer equalization)" for n in eq["relu6_replaced"]]
        report["pairs"] = [(p.first, p.second) for p in pairs]
    if absorb_bias and pairs:
        pre = _pre_activation_minima(work, [p.first for p in pairs], run) if run is not None else None
        absorbed = T.absorb_high_bias(work, pairs, stats, pre)
        report["steps"].append(f"absorbed high biases of {len(absorbed)} layer(s)")
    relu_inputs = _relu_inputs(work, flow, stats)

    linear_stats = {}
    if scaling is not None:
        if run is None:
            raise ValueError(f"ptq: scaling={scaling!r} needs calibration data")
        from .scaling import collect_linear_stats

        lin_names = [n for n, m in work.named_modules() if type(m) is nn.Linear]
        linear_stats = collect_linear_stats(work, lin_names, run)
    # AdaRound reconstructs the float model's layer outputs (after the float transforms above)
    float_ref = copy.deepcopy(work).eval() if rounding == "adaround" and run is not None else None
    qcfg = _with_observer(config, observer)
    y_float = _first_output(work, batches, forward) if config.bitlinear and batches else None
    # the BatchNorms left unfolded above are decided from the traced batch: prepare_qat traces the
    # same batch (without it, an fx failure named the BatchNorm's reason as "torch.fx could not
    # trace the model" in a ptq run that had traced its data)
    traced = {}
    if batches is not None:
        traced = {"example_inputs": batches[0], "forward": forward} if forward is not None else {
            "example_inputs": _first_input(batches)}
    work = prepare_qat(work, qcfg, inplace=True, **traced)
    if config.bitlinear:
        _check_bitlinear_function(work, batches, forward, y_float, report)
    if float_ref is not None:
        # the float reference prepared too, with quantization off: it computes the float function,
        # and its layers carry the QAT model's names and see their inputs in the same row order
        # (nn.MultiheadAttention has no q/k/v_proj modules, and its out_proj is not called as a
        # module: AdaRound on an attention model raised "MultiheadAttention has no attribute q_proj")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # prepare_qat's warnings were given for `work`
            float_ref = prepare_qat(float_ref, qcfg, inplace=True)
        enable_fake_quant(float_ref, False)
        disable_observer(float_ref)
        float_ref.eval()
    float_weights = {n: m.weight.detach().clone() for n, m in work.named_modules() if isinstance(m, _QAT_WEIGHTED)}
    if scaling is not None:
        from .scaling import awq_scale, smoothquant_scale

        chosen, unscaled = {}, []
        for name, st in _progress(list(linear_stats.items()), len(linear_stats), scaling, progress):
            layer = work.get_submodule(name)
            if not isinstance(layer, QuantLinear) or layer.weight_fake_quant is None:
                continue  # kept float
            if scaling == "smoothquant" and layer.input_fake_quant is None:
                unscaled.append((name, "float activations: nothing to smooth (scaling='awq' scales weight-only layers)"))
                continue
            if layer.weight_fake_quant.spec.kind != "int":
                unscaled.append((name, f"{layer.weight_fake_quant.spec.describe()} weights: the search needs an integer grid"))
                continue
            s, a = (smoothquant_scale if scaling == "smoothquant" else awq_scale)(layer, st)
            if a is not None:
                layer.set_smoothing(s)
                # LSQ step sizes start from the weights they quantize: the smoothed ones (before, they
                # stayed those of the unsmoothed weights, and a later fine-tune re-initialized them)
                init = getattr(layer.weight_fake_quant, "init_from_weight", None)
                if init is not None:
                    init(layer.weight)
                chosen[name] = a
        # quantized projections of attention layers are Linear layers the scaling never sees
        for n, m in work.named_modules():
            if isinstance(m, QuantMultiheadAttention):
                unscaled += [(f"{n}.{p}" if n else p, "an attention projection: scaling covers nn.Linear modules only")
                             for p, lin in m.projections() if lin.weight_fake_quant is not None]
        report["steps"].append(f"{scaling} scaling of {len(chosen)} Linear layer(s)")
        report["scaling_alpha"] = chosen
        report["scaling_skipped"] = unscaled
        if unscaled:  # before, these layers were passed over without a word
            listed = _listed(unscaled)
            warnings.warn(
                f"ptq: scaling={scaling!r} left {len(unscaled)} quantized Linear layer(s) unscaled: {listed} "
                "(model.ptq_report['scaling_skipped'])",
                UserWarning,
                stacklevel=2,
            )
    acts = [m for m in work.modules() if isinstance(m, ActFakeQuantizer)]
    # learned ranges (LSQ / LSQ+: w4a4_lsq) start from their first batch in training mode, as in QAT:
    # calibration initializes them too (before, they stayed empty and convert refused the model)
    data_range = [m for m in acts if isinstance(m, (AffineStaticActQuantizer, AffineLearnedActQuantizer))]
    if observer not in (None, "minmax") and not any(isinstance(m, AffineStaticActQuantizer) for m in acts):
        ignored.append(f"observer={observer!r} (no layer has a static activation range to observe)")
    if run is None and not data_range:
        if input_range is not None:
            ignored.append("input_range (no layer has an activation range to set)")
        if n_sigma != 6.0:
            ignored.append("n_sigma (no layer has an activation range to set)")
    if ignored:
        warnings.warn("ptq: these arguments change nothing here: " + "; ".join(ignored), UserWarning, stacklevel=2)
    if data_range:
        learned = [n for n, m in work.named_modules()
                   if isinstance(getattr(m, "input_fake_quant", None), AffineLearnedActQuantizer)]
        if run is None and learned:
            raise ValueError(
                f"ptq: no data, and the learned activation ranges of {', '.join(learned)} start from data (their "
                "first batch, as in QAT); pass calibration data, or use a preset with static ranges (qatkit.w8a8(), "
                "qatkit.w4a8(), ...)"
            )
        if run is not None:
            if batches is not None:
                calibrate(work, [None], forward=lambda m, _: run(m, progress, "calibrate"))
            else:
                calibrate(work, [None], forward=lambda m, _: run(m))
            report["steps"].append(f"calibrated {len(data_range)} activation range(s) ({observer or 'config'} observer)")
        else:
            missing = _data_free_ranges(work, relu_inputs, n_sigma, _reading_model_input(flow), input_range)
            if missing:
                raise ValueError(
                    f"ptq: no data, and no BatchNorm statistics give the input ranges of {', '.join(missing)}; pass "
                    "calibration data, input_range=(lo, hi) for layers that read the model input, or use a "
                    "weight-only preset (qatkit.int8_weight_only(), ...)"
                )
            report["steps"].append(f"data-free activation ranges (beta +- {n_sigma:g} gamma)")
    elif acts and run is not None:
        pass  # dynamic / binary activations: nothing to calibrate
    for m in work.modules():
        if isinstance(m, _QAT_WEIGHTED) and isinstance(m.weight_fake_quant, AffineStaticWeightQuantizer):
            m.weight_fake_quant.store_qparams(m.weight)
    report["steps"].append("stored weight qparams")
    layers = [n for n, m in work.named_modules() if isinstance(m, _QAT_WEIGHTED)]
    if threshold_search and run is not None:
        enable_observer(work, False)
        work.eval()
        searched, skipped = _lowbit_search(work, _execution_order(work, layers, flow), run, progress)
        if searched:
            report["steps"].append(f"ternary/binary output-aware thresholds of {len(searched)} layer(s)")
        report["threshold_search_skipped"] = skipped
    if rounding != "nearest":
        if run is None:
            raise ValueError(f"ptq: rounding={rounding!r} needs calibration data")
        enable_observer(work, False)
        work.eval()
        done, kept = _data_aware_rounding(
            work, _execution_order(work, layers, flow), run, rounding, gptq or {}, adaround_iters, progress, float_ref
        )
        report["steps"].append(f"{rounding} rounding of {len(done)} layer(s)")
        report["rounding_skipped"] = kept
        if kept:  # before, these layers kept round to nearest without a word (the report only)
            listed = _listed(kept)
            warnings.warn(
                f"ptq: rounding={rounding!r} kept round to nearest for {len(kept)} of {len(kept) + len(done)} "
                f"layer(s) with quantized weights: {listed} (model.ptq_report['rounding_skipped'])",
                UserWarning,
                stacklevel=2,
            )
    else:
        report["steps"][-1] += " (round to nearest)"
    if correct_bias in ("empirical", "empirical_one_pass"):
        enable_observer(work, False)
        work.eval()
        one = correct_bias == "empirical_one_pass"
        shifts = _empirical_bias_correction(
            work, _execution_order(work, layers, flow), run, progress, float_weights, one_pass=one
        )
        report["steps"].append(f"empirical bias correction of {len(shifts)} layer(s){' (one pass)' if one else ''}")
        report["bias_shift"] = shifts
    elif correct_bias == "analytic":
        shifts = _analytic_bias_correction(work, relu_inputs, float_weights)
        report["steps"].append(f"analytic bias correction of {len(shifts)} layer(s)")
        report["bias_shift"] = shifts
        quantized = [n for n in layers if getattr(work.get_submodule(n), "weight_fake_quant", None) is not None]
        report["bias_correction_skipped"] = [n for n in quantized if n not in shifts]
        if asked_analytic and quantized and not shifts:  # before: "analytic bias correction of 0 layer(s)", the report only
            listed = ", ".join(quantized[:6]) + (", ..." if len(quantized) > 6 else "")
            warnings.warn(
                f"ptq: correct_bias='analytic' corrected no layer: it takes a layer's input mean from a folded "
                f"BatchNorm + ReLU before it, and none of the {len(quantized)} quantized layer(s) ({listed}) has "
                "one" + ("; with calibration data, correct_bias='empirical' measures it" if run is not None else ""),
                UserWarning,
                stacklevel=2,
            )
    enable_observer(work, False)
    work.eval()
    report["layers"] = [
        {"name": r["name"], "weight": r["weight"], "act": r["act"], "notes": r.get("reason", r.get("rule", ""))}
        for r in work.qat_report
    ]
    work.ptq_report = report
    if verbose:
        print(_report_table(report))
    optimizer_check.watch(work, copies)  # fine-tuning after ptq: an optimizer holding the float parameters
    if inplace:
        model.__dict__ = work.__dict__
        return model
    return work


@torch.no_grad()
def _layer_inputs(model: nn.Module, name: str, run) -> List[torch.Tensor]:
    """The inputs the layer's weight multiplies (after its input quantizer) over the calibration data."""
    layer = model.get_submodule(name)
    xs: List[torch.Tensor] = []
    def hook(mod, args, kwargs):
        x = graph.layer_input(args, kwargs)
        x = mod._smooth_input(x) if hasattr(mod, "_smooth_input") else x
        # a copy: without an input quantizer this is the caller's tensor, which an in-place op after
        # the layer (x[:, :k] = 0, ReLU(inplace=True)) overwrote before GPTQ read it (3-bit GPTQ
        # then fitted the written values: 35x the nearest-rounding error)
        xs.append(mod.quantize_input(x).detach().clone())

    h = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run(model)
    finally:
        h.remove()
    return xs


@torch.no_grad()
def _float_layer_inputs(model: nn.Module, name: str, run) -> List[torch.Tensor]:
    """The inputs of a float layer over the calibration data."""
    xs: List[torch.Tensor] = []
    h = model.get_submodule(name).register_forward_pre_hook(
        lambda mod, args, kwargs: xs.append(graph.layer_input(args, kwargs).detach().clone()), with_kwargs=True)
    try:
        run(model)
    finally:
        h.remove()
    return xs


def _lowbit_search(model, layers, run, progress):
    """Output-aware ternary thresholds / binary scales per channel (see lowbit.py). Returns
    (searched layers, [(layer, why not)])."""
    from . import lowbit as LB
    from . import rounding as R
    from ..qat.quantizers import BinaryWeightQuantizer, TernaryWeightQuantizer

    done, skipped = [], []
    for name in _progress(layers, len(layers), "ternary/binary search", progress):
        layer = model.get_submodule(name)
        wfq = layer.weight_fake_quant
        if not isinstance(wfq, (TernaryWeightQuantizer, BinaryWeightQuantizer)):
            continue
        s = wfq.spec
        if wfq.axis != 0 or (s.kind == "ternary" and s.method != "twn") or (s.kind == "binary" and (s.method != "mean_abs" or s.stochastic)):
            skipped.append((name, f"{s.describe()}: the search needs per-channel TWN / mean_abs scales (closed form kept)"))
            continue
        if isinstance(layer, BitLinear) or getattr(layer, "groups", 1) != 1:
            skipped.append((name, "grouped conv or BitLinear: closed form kept"))
            continue
        xs = _layer_inputs(model, name, run)
        if not xs:
            skipped.append((name, "it never ran on the calibration data"))
            continue
        X = torch.cat([R.layer_matrix_input(layer, x) for x in xs])
        if X.shape[0] > 8192:
            X = X[torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(0))[:8192]]
        W = R.weight_rows(layer)
        new = LB.ternary_search(W, X)[0] if s.kind == "ternary" else LB.binary_search(W, X)
        with torch.no_grad():
            layer.weight.copy_(new.reshape(layer.weight.shape).to(layer.weight.dtype))
        done.append(name)
    return done, skipped


def _data_aware_rounding(model, layers, run, method, gptq_opts, adaround_iters, progress, float_ref=None):
    """GPTQ / AdaRound, layer by layer from the input side (each sees inputs through the layers
    already rounded). Returns (rounded layers, [(layer, why it kept round-to-nearest)])."""
    from . import rounding as R

    done, kept = [], []
    for name in _progress(layers, len(layers), method, progress):
        layer = model.get_submodule(name)
        wfq = layer.weight_fake_quant
        if wfq is None:
            continue  # float weights: nothing to round
        if not isinstance(wfq, AffineStaticWeightQuantizer):
            kind = wfq.spec.kind
            why = ("learned (LSQ) step sizes, which training moves: the rounding fits a fixed grid"
                   if kind == "int" else
                   f"{kind} weights: no integer grid to round on")
            kept.append((name, why))
            continue
        if isinstance(layer, BitLinear) or getattr(layer, "groups", 1) != 1:
            kept.append((name, "grouped conv or BitLinear: round to nearest"))
            continue
        s = wfq.spec
        xs = _layer_inputs(model, name, run)
        if not xs:
            kept.append((name, "it never ran on the calibration data"))
            continue
        shape = layer.weight.shape
        if method == "gptq":
            H = R.hessian(layer, xs)
            group = wfq.group_size if wfq.granularity == "per_group" else None
            wq, sc, zp = R.gptq_quantize(
                R.weight_rows(layer), H, s.quant_min, s.quant_max, s.symmetric, group_size=group,
                per_tensor=wfq.granularity == "per_tensor", **gptq_opts,
            )
            if wfq.granularity == "per_tensor":
                sc, zp = sc.reshape(1), zp.reshape(1)
            with torch.no_grad():
                layer.weight.copy_(wq.reshape(shape))
            wfq.store_qparams(scale=sc, zero_point=zp)
        else:
            # (float32 whatever the model's dtype: a float64 model's inputs met float32 weights here)
            X = torch.cat([R.layer_matrix_input(layer, x) for x in xs]).float()
            target = None
            if float_ref is not None:  # reconstruct the float model's own output of this layer
                flayer = float_ref.get_submodule(name)
                fx = _float_layer_inputs(float_ref, name, run)
                Xf = torch.cat([R.layer_matrix_input(flayer, x) for x in fx]).float()
                if Xf.shape[0] == X.shape[0]:
                    target = Xf @ R.weight_rows(flayer).float().t()
            if X.shape[0] > 8192:
                pick = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(0))[:8192]
                X = X[pick]
                target = None if target is None else target[pick]
            sc, zp = wfq.stored_scale, wfq.stored_zero_point
            if wfq.granularity == "per_group":
                sc, zp = sc.repeat_interleave(wfq.group_size, dim=1), zp.repeat_interleave(wfq.group_size, dim=1)
            wq = R.adaround_quantize(layer, X, sc, zp, s.quant_min, s.quant_max, iters=adaround_iters, target=target)
            with torch.no_grad():
                layer.weight.copy_(wq)
        done.append(name)
    return done, kept


@torch.no_grad()
def _first_output(model: nn.Module, batches, forward) -> Optional[torch.Tensor]:
    """The model's output on the first calibration batch, flat (the first tensor of a tuple or
    mapping), or None when it is not a tensor."""
    was = model.training
    model.eval()
    try:
        y = forward(model, batches[0]) if forward is not None else call_on_batch(model, batches[0])
    finally:
        model.train(was)
    y = y[0] if isinstance(y, (tuple, list)) else y
    y = next(iter(y.values())) if isinstance(y, Mapping) else y
    return y.detach().double().reshape(-1) if isinstance(y, torch.Tensor) else None


def _check_bitlinear_function(model, batches, forward, y_float, report) -> None:
    """BitLinear puts an RMSNorm before each layer's quantizers, which a float model trained without
    it does not have: PTQ cannot keep such a model's function. Measured on the first calibration
    batch (the prepared model with quantization off against the float model), recorded in the
    report, and warned about below 30 dB. Before, ptq(model, data, bitnet_b158()) returned a model
    at -4 dB output SQNR without a word."""
    sqnr = None
    if y_float is not None:
        quantizers = [m for m in model.modules() if isinstance(m, (WeightFakeQuantizer, ActFakeQuantizer))]
        states = [m.fq_enabled for m in quantizers]
        for m in quantizers:
            m.enable_fake_quant(False)
        try:
            y = _first_output(model, batches, forward)
        finally:
            for m, on in zip(quantizers, states):
                m.enable_fake_quant(on)
        if y is not None and y.shape == y_float.shape:
            err = (y - y_float).pow(2).sum()
            sqnr = math.inf if err == 0 else float(10 * torch.log10(y_float.pow(2).sum() / err))
    report["bitlinear_float_sqnr_db"] = sqnr
    if sqnr is None or sqnr < 30:
        measured = (f"with quantization off its output is {sqnr:.1f} dB SQNR from the float model's on the first "
                    "calibration batch" if sqnr is not None else "its effect was not measured (no tensor batch)")
        warnings.warn(
            f"ptq: bitlinear=True puts an RMSNorm before every BitLinear layer, which this float model was not "
            f"trained with: {measured}. BitNet b1.58 models are trained as BitLinear (prepare_qat, then training), "
            "not quantized after training",
            UserWarning,
            stacklevel=3,
        )


def _reading_model_input(flow: Optional[graph.Dataflow]) -> List[str]:
    """Weighted layers whose input is a model input (nothing traced produced it)."""
    if flow is None:
        return []
    return [c.name for c in flow.calls if c.kind == "module" and isinstance(c.module, T._WEIGHTED)
            and c.inputs and all(i == graph.EXTERNAL for i in c.inputs)]


def _execution_order(model: nn.Module, layers: List[str], flow: Optional[graph.Dataflow]) -> List[str]:
    """``layers`` in the order the traced batch ran them (definition order without a graph)."""
    if flow is None:
        return layers
    order = {}
    for c in flow.calls:
        if c.kind == "module" and c.name not in order:
            order[c.name] = c.index
    return sorted(layers, key=lambda n: order.get(n, math.inf))
