"""``prepare_qat`` and the whole-model switches of the QAT recipe (observers, fake quant, BN).

``prepare_qat(model, config)`` swaps every supported layer (Linear, Conv1d, Conv2d, Embedding;
Conv2d + BatchNorm2d pairs inside ``nn.Sequential`` become :class:`QuantConvBn2d`) for its QAT
replacement, following the config's skip patterns, overrides and first/last rule, and records
what it did in ``model.qat_report``.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import inspect
import warnings
from collections.abc import Mapping
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from . import graph, optimizer_check
from .config import LayerSpec, QATConfig, QuantSpec, check_flags, first_last_spec
from .modules import (
    QAT_MODULES,
    BitLinear,
    QuantConv1d,
    QuantConv2d,
    QuantConvBn2d,
    QuantEmbedding,
    QuantLinear,
    QuantMultiheadAttention,
)
from .quantizers import (
    ActFakeQuantizer,
    AffineLearnedActQuantizer,
    AffineStaticActQuantizer,
    WeightFakeQuantizer,
)
from .pretrained import tag_pretrained_configs
from .swap import move_hooks, pruning_hooks, refresh_pruned, replace_module

__all__ = [
    "prepare_qat",
    "enable_observer",
    "disable_observer",
    "enable_fake_quant",
    "disable_fake_quant",
    "freeze_bn",
    "clip_latent_weights",
    "calibrate",
]



_SUPPORTED_BASES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.MultiheadAttention)
_QAT_TYPES = (QuantLinear, QuantConv1d, QuantConv2d, QuantConvBn2d, QuantEmbedding, QuantMultiheadAttention)


def _hooked_norm(mod: nn.Module) -> Optional[str]:
    """'weight_norm' / 'spectral_norm' when ``mod`` is under the deprecated hook-based
    ``torch.nn.utils.weight_norm`` / ``spectral_norm``: a forward pre-hook recomputes its weight
    (a plain attribute, not a Parameter) from ``weight_g`` / ``weight_v`` (``weight_orig``) before
    every call."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for hook in mod._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            return "weight_norm"
        if isinstance(hook, SpectralNorm):
            return "spectral_norm"
    return None


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also for models with layers under the deprecated hook-based
    ``torch.nn.utils.weight_norm`` / ``spectral_norm``: after a call with autograd on, their
    computed weight is a non-leaf tensor, which deepcopy refuses. It is recomputed without autograd
    first (spectral norm without a power iteration: its ``u`` / ``v`` stay as they are), which
    changes nothing the model computes: the hook recomputes it before every call. Tensors pruned
    with ``torch.nn.utils.prune`` likewise (``name_orig * name_mask``)."""
    for mod in model.modules():
        refresh_pruned(mod)  # torch.nn.utils.prune: the same for a pruned tensor
        kind = _hooked_norm(mod)
        if kind is None:
            continue
        for hook in mod._forward_pre_hooks.values():
            w = getattr(mod, getattr(hook, "name", ""), None)
            if hasattr(hook, "compute_weight") and isinstance(w, torch.Tensor) and not w.is_leaf:
                with torch.no_grad():
                    fresh = hook.compute_weight(mod) if kind == "weight_norm" else hook.compute_weight(mod, False)
                setattr(mod, hook.name, fresh)
    return copy.deepcopy(model)


def _unpruned_view(mod: nn.Module) -> nn.Module:
    """``mod`` itself, or for a layer pruned with ``torch.nn.utils.prune`` a shallow copy whose
    pruned tensors are their ``*_orig`` Parameters again, for a ``from_float`` that shares the
    layer's Parameters (the mask comes back with :func:`_keep_pruning`)."""
    pruned = pruning_hooks(mod)
    if not pruned:
        return mod
    view = copy.copy(mod)
    view.__dict__["_parameters"] = dict(mod._parameters)
    view.__dict__["_forward_pre_hooks"] = {}
    for name in pruned:
        view.__dict__.pop(name, None)  # the computed tensor (a plain attribute)
        view._parameters[name] = mod._parameters[name + "_orig"]
    return view


def _keep_pruning(mod: nn.Module, new: nn.Module) -> None:
    """Give the QAT layer ``new`` the pruning of ``mod``: the ``*_orig`` Parameter (shared, so the
    optimizer trains it), the ``*_mask`` buffer and torch's pre-hook, which computes the pruned
    tensor before every call: pruned weights stay zero through QAT (their gradient is masked), the
    quantizers see the pruned weight, and the state dict keeps torch's keys."""
    for name, (key, hook) in pruning_hooks(mod).items():
        orig = new._parameters.pop(name)
        new.register_parameter(name + "_orig", orig)
        new.register_buffer(name + "_mask", getattr(mod, name + "_mask"))
        new._forward_pre_hooks[key] = hook
        with torch.no_grad():
            setattr(new, name, hook.apply_mask(new))


def _unswappable_reason(mod: nn.Module) -> Optional[str]:
    """Why a module that is a supported layer kind cannot be swapped (None if it can, or is none)."""
    hooked = _hooked_norm(mod) if isinstance(mod, _SUPPORTED_BASES) else None
    if hooked is not None:
        return (
            f"a layer under torch.nn.utils.{hooked} (a hook recomputes its weight before every call; remove it "
            f"with torch.nn.utils.remove_{hooked} to quantize the layer)"
        )
    if isinstance(mod, nn.MultiheadAttention) and pruning_hooks(mod):
        return (
            "a pruned nn.MultiheadAttention (torch.nn.utils.prune; its QAT form splits in_proj_weight into q / k / v "
            "projections, which would drop the mask; make the pruning permanent with prune.remove first)"
        )
    if type(mod) in QAT_MODULES or not isinstance(mod, _SUPPORTED_BASES) or isinstance(mod, _QAT_TYPES):
        return None
    if isinstance(mod, nn.modules.lazy.LazyModuleMixin):
        return "a Lazy layer whose shape is not known yet (run one batch through the model before prepare_qat)"
    if nn.utils.parametrize.is_parametrized(mod):
        return (
            "a parametrized layer (weight_norm / spectral_norm / custom parametrizations compute the weight at "
            "every call; remove the parametrization, e.g. torch.nn.utils.parametrize.remove_parametrizations)"
        )

    return f"a subclass of {type(mod).__mro__[1].__name__} ({type(mod).__name__}) whose forward qatkit cannot know"


def _unsupported_weights(mod: nn.Module) -> Optional[str]:
    """Why a layer of a kind qatkit has no QAT form for (nn.LSTM, nn.ConvTranspose2d, nn.Conv3d,
    nn.Bilinear, nn.EmbeddingBag, a custom module calling ``F.linear`` on its own parameter, ...)
    stays float: it owns a floating weight matrix (a parameter named ``*weight*`` of two or more
    dims) itself. None for supported kinds, QAT / converted layers, norms (1-d weights) and
    parameters such as a position embedding or class token (not named weight)."""
    if isinstance(mod, _SUPPORTED_BASES) or isinstance(mod, _QAT_TYPES) or isinstance(mod, BitLinear):
        return None
    names = [
        n for n, p in mod.named_parameters(recurse=False)
        if "weight" in n and p.dim() >= 2 and p.is_floating_point()
    ]
    if not names:
        return None
    shapes = ", ".join(f"{n} {list(getattr(mod, n).shape)}" for n in names[:3]) + (" ..." if len(names) > 3 else "")
    return f"qatkit has no QAT form for {type(mod).__name__} ({shapes})"


def _sequential_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """Conv2d -> BatchNorm2d neighbours inside ``nn.Sequential`` containers (no tracing needed)."""
    pairs = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            kids = [(n, c) for n, c in mod._modules.items() if c is not None]  # (named_children() skips a repeat)
            for (n1, m1), (n2, m2) in zip(kids, kids[1:], strict=False):
                if type(m1) is nn.Conv2d and type(m2) in graph.FOLDABLE_BN:
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + n1, prefix + n2))
    return pairs


def _bn_folds(model: nn.Module, example_inputs, forward, fold_bn: bool = True):
    """``({conv_name: (bn_name, bn)}, {bn_name: why it stays unfolded}, {layer: ops reading its
    weight outside it}, module ids in call order or None)`` from the model's dataflow: a traced
    batch when ``example_inputs`` is given, else a torch.fx trace, else (fx failed) neighbours in
    ``nn.Sequential`` only, every other BatchNorm reported with the reason."""
    has_bn = fold_bn and any(isinstance(m, graph.BN_TYPES) for m in model.modules())
    if example_inputs is not None:
        flow = graph.trace_dataflow(model, example_inputs, forward)
        pairs, unfolded = graph.find_conv_bn_pairs(model, flow) if has_bn else ([], {})
    elif not has_bn:  # the weight reads and call order only: what fx can see, nothing said where it cannot trace
        try:
            flow = graph.fx_dataflow(model)
        except Exception:
            return {}, {}, {}, None
        return {}, {}, flow.weight_reads, flow.order
    else:
        try:
            flow = graph.fx_dataflow(model)
            pairs, unfolded = graph.find_conv_bn_pairs(model, flow)
        except Exception as e:  # fx refuses data-dependent control flow and many other things
            first = (str(e).strip().splitlines() or [""])[0][:200]
            pairs, unfolded, flow = [], {}, None
            for conv, bn in _sequential_pairs(model):
                m_bn, m_conv = model.get_submodule(bn), model.get_submodule(conv)
                conv_hooked, bn_hooked = graph.user_hooks(m_conv)[0], graph.user_hooks(m_bn)[1]
                if conv_hooked or bn_hooked:
                    hook = f"a forward hook on module '{conv}'" if conv_hooked else f"a forward pre-hook on module '{bn}'"
                    unfolded[bn] = f"the output of conv '{conv}' is also used by {hook}, so it cannot be replaced"
                elif m_bn.affine and m_bn.track_running_stats and m_bn.num_features == m_conv.out_channels:
                    pairs.append((conv, bn))
                else:
                    unfolded[bn] = (
                        f"not folded into conv '{conv}': a {type(m_bn).__name__} without affine parameters or running "
                        "statistics (the conv is quantized on its own, the BatchNorm stays float)"
                    )
            paired = {bn for _, bn in pairs} | set(unfolded)
            for n, m in model.named_modules():
                if isinstance(m, graph.BN_TYPES) and n not in paired:
                    unfolded[n] = (
                        "without example_inputs qatkit finds Conv2d -> BatchNorm2d pairs with torch.fx or inside "
                        f"nn.Sequential, and torch.fx could not trace the model ({type(e).__name__}: {first}); pass "
                        "prepare_qat(model, config, example_inputs=batch) to find the pairs from one real batch"
                    )
    reads = flow.weight_reads if flow is not None else {}
    order = flow.order if flow is not None else None
    return {conv: (bn, model.get_submodule(bn)) for conv, bn in pairs}, unfolded, reads, order


def _candidates(model: nn.Module, fold_bn: bool, example_inputs=None, forward=None) -> Tuple[List[dict], List[dict]]:
    """Supported layers in definition order (each Conv2d that feeds a foldable BatchNorm2d carries
    it; each entry lists every name its module is registered under), and the layers of a supported
    kind that cannot be swapped or BatchNorms that cannot be folded, with the reason."""
    out, skipped = [], []
    bn_of, unfolded, reads, order = _bn_folds(model, example_inputs, forward, fold_bn)
    names_of: Dict[int, List[str]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(mod), []).append(name)
    inside = []  # prefixes of swapped containers (an attention's out_proj is part of it)
    for name, mod in model.named_modules():
        if any(name.startswith(p) for p in inside):
            continue
        if type(mod) in QAT_MODULES and _unswappable_reason(mod) is None:
            bn = bn_of.get(name)  # (every name of the BatchNorm, the module)
            bn = None if bn is None else (names_of[id(bn[1])], bn[1])
            out.append({"name": name, "module": mod, "bn": bn, "aliases": names_of[id(mod)][1:]})
            if name in reads:
                # F.linear(h, self.fc.weight) / h @ self.wte.weight.t() in some forward: a QAT layer would
                # quantize its own calls only, and convert removes the float weight that code reads
                ops = ", ".join(f"'{o}'" for o in dict.fromkeys(reads[name]))
                out[-1]["weight_read"] = (
                    f"its weight is also read outside the layer (by op {ops} in a forward): a QAT layer would "
                    "quantize its own calls only, and the converted layer has no float weight for that code")
            if type(mod) is nn.MultiheadAttention:
                inside.append(f"{name}." if name else "")
        else:
            reason = _unswappable_reason(mod)
            if reason is not None:
                skipped.append({"name": name, "type": type(mod).__name__, "reason": reason})
                if isinstance(mod, nn.MultiheadAttention):
                    inside.append(f"{name}." if name else "")  # its out_proj stays float with it
            elif (reason := _unsupported_weights(mod)) is not None:
                skipped.append({"name": name, "type": type(mod).__name__, "reason": reason, "unsupported": True})
    for bn, reason in unfolded.items():
        skipped.append({"name": bn, "type": type(model.get_submodule(bn)).__name__, "reason": reason, "bn": True})
    if order is not None:  # the dataflow's call order: first_last means the first / last layer that runs
        at = {m: i for i, m in enumerate(order)}
        for c in out:
            c["called_at"] = at.get(id(c["module"]))
    return out, skipped


def _spec_for(
    name: str, index: int, count: int, config: QATConfig, used: Dict[str, int], is_embedding: bool = False
) -> Tuple[Optional[LayerSpec], str]:
    """The layer's spec and the rule that chose it ("skip 'pat'", "override 'pat'", "embeddings",
    "first_last", "default"). ``index`` / ``count`` count compute layers (not embeddings)."""
    for pat in config.skip:
        if fnmatch.fnmatchcase(name, pat):
            used[pat] += 1
            return None, f"skip {pat!r}"
    for pat, spec in config.overrides:
        if fnmatch.fnmatchcase(name, pat):
            used[pat] += 1
            return spec, f"override {pat!r}"
    if is_embedding:
        return (config.default, "embeddings") if config.embeddings else (None, "embeddings=False")
    if config.first_last is not None and (index == 0 or index == count - 1):
        return first_last_spec(config.first_last), "first_last"
    return config.default, "default"


_SPEC_DEFAULTS = {f.name: f.default for f in dataclasses.fields(QuantSpec)}


def _unused_fields(spec: QuantSpec, role: str) -> List[str]:
    """Fields of ``spec`` set away from their defaults that change nothing in its role
    (``"weight"`` or ``"activation"``): an MSE observer on weights, whose ranges are their own min /
    max at every forward, was taken and ignored."""
    d, out = _SPEC_DEFAULTS, []
    static = spec.kind == "int" and spec.scale == "static"
    if role == "weight":
        if spec.observer != d["observer"]:
            how = "trained (scale='learned')" if spec.scale == "learned" else "the weight's own min / max at every forward"
            out.append(f"observer={spec.observer!r} (weight ranges are {how}; observers set activation ranges)")
        if spec.momentum != d["momentum"]:
            out.append(f"momentum={spec.momentum} (the moving-average activation observer's)")
    else:
        if spec.latent_clip is not None:
            out.append(f"latent_clip={spec.latent_clip} (clips shadow weights; an input has none)")
        if not static and spec.observer != d["observer"]:
            out.append(f"observer={spec.observer!r} (a static range's; this input is {spec.kind} with scale={spec.scale!r})")
        if spec.momentum != d["momentum"] and (not static or spec.observer != "moving_average"):
            out.append(f"momentum={spec.momentum} (the moving-average observer's; this input's is {spec.observer!r})")
    if spec.lsq_grad_scale != d["lsq_grad_scale"] and spec.scale != "learned":
        out.append("lsq_grad_scale=False (LSQ's step-size gradient scale; this scale is not learned)")
    return out


def _warn_unused_fields(config: QATConfig) -> None:
    found = []
    for where, ls in [("default", config.default)] + [(f"override {p!r}", ls) for p, ls in config.overrides]:
        for role in ("weight", "activation"):
            spec = getattr(ls, role)
            if spec is not None:
                found += [f"{where}.{role}: {u}" for u in _unused_fields(spec, role)]
    if found:
        warnings.warn("prepare_qat: spec fields that change nothing: " + "; ".join(found), UserWarning, stacklevel=3)


def prepare_qat(
    model: nn.Module, config: QATConfig, inplace: bool = False, example_inputs=None, forward=None
) -> nn.Module:
    """Swap a float model's supported layers for QAT layers.

    Args:
        model: a float ``nn.Module``.
        config: a :class:`QATConfig` (e.g. ``qatkit.w8a8()``).
        inplace: modify ``model`` instead of a deep copy (the float parameters are shared with the
            QAT layers either way, so an optimizer built afterwards trains them). Build the
            optimizer from the returned model: one built from the float model steps the copy's
            originals (inplace=False), and one built before lacks the learned step sizes; both are
            warned about at their fourth step (:mod:`qatkit.qat.optimizer_check`).
        example_inputs: one real batch (a tensor or a tuple of arguments) to find Conv2d ->
            BatchNorm2d pairs from the model's execution (:mod:`qatkit.qat.graph`; run in eval
            mode, no gradients). Without it the pairs come from a torch.fx trace, and where fx
            fails, from ``nn.Sequential`` neighbours only; every BatchNorm left unfolded is warned
            about and listed in the report with the reason.
        forward: ``forward(model, example_inputs)`` for models called another way.

    Returns:
        The QAT model. ``model.qat_report`` lists each layer with its weight/activation spec and any
        per-group fallback.

    Raises:
        TypeError: ``config`` is not a QATConfig. ValueError: nothing to quantize (no supported layer,
            or all skipped). Warns (UserWarning) when a skip/override pattern matches no layer and when
            per-group weights fall back to per-channel.

    Example:
        >>> qmodel = qatkit.prepare_qat(model, qatkit.w8a8())
    """
    if not isinstance(config, QATConfig):
        raise TypeError(f"prepare_qat: config must be a QATConfig (e.g. qatkit.w8a8()), got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_qat: model must be an nn.Module, got {type(model).__name__}")
    check_flags("prepare_qat", inplace=inplace)
    _warn_unused_fields(config)
    if forward is not None and example_inputs is None:  # before: ignored without a word
        warnings.warn(
            "prepare_qat: forward changes nothing without example_inputs (it runs the model on them to find "
            "Conv2d -> BatchNorm2d pairs); pass example_inputs=(batch,) too",
            UserWarning,
            stacklevel=2,
        )
    refuse_wrapped("prepare_qat", model)
    refuse_meta("prepare_qat", model)
    copies = []  # (float parameter, its copy): the optimizer check (optimizer_check.py)
    if not inplace:
        src_params = list(model.parameters())
        model = copy_model(model)
        copies = list(zip(src_params, model.parameters()))
    if type(model) in QAT_MODULES and inplace:
        raise ValueError(
            f"prepare_qat: the model is a bare {type(model).__name__}, which cannot be swapped in place; "
            "use the returned module (inplace=False)"
        )
    cands, unswappable = _candidates(model, config.fold_bn, example_inputs, forward)
    if not cands:
        layers = [u for u in unswappable if not u.get("bn")]
        if layers:  # before: "no nn.Linear" for a model whose only Linear was parametrized or Lazy
            found = "; ".join(f"{repr(u['name']) if u['name'] else 'the model itself'} ({u['type']}): {u['reason']}"
                              for u in layers[:8])
            more = f"; and {len(layers) - 8} more" if len(layers) > 8 else ""
            raise ValueError(f"prepare_qat: the model has nothing to quantize: no layer qatkit can swap; the layers "
                             f"with weights stay float: {found}{more}")
        raise ValueError(
            "prepare_qat: the model has nothing to quantize: no nn.Linear, nn.Conv1d, nn.Conv2d or nn.Embedding "
            "layers (already prepared models hold Quant* layers)"
        )
    used = {p: 0 for p in list(config.skip) + [p for p, _ in config.overrides]}
    # first decide and build every replacement (nothing in `model` changes yet, so a failure leaves
    # an inplace model as it was), then swap
    plan, report, rules = [], [], {}
    compute = [c for c in cands if type(c["module"]) is not nn.Embedding]  # first/last count these
    if any(c.get("called_at") is not None for c in compute):
        # in call order (a head registered before the stem was "first" before); a layer that never
        # ran in the traced batch / fx graph is neither first nor last
        compute = sorted((c for c in compute if c.get("called_at") is not None), key=lambda c: c["called_at"])
    position = {id(c["module"]): i for i, c in enumerate(compute)}
    for c in cands:
        name, mod = c["name"], c["module"]
        is_emb = type(mod) is nn.Embedding
        spec, rule = _spec_for(name, position.get(id(mod), -1), len(compute), config, used, is_emb)
        if spec is None or (spec.weight is None and spec.activation is None):
            rules.setdefault(rule, []).append(name)
            report.append({"name": name, "type": type(mod).__name__, "qat": None, "weight": "float", "act": "float"})
            continue
        if c.get("weight_read"):  # the config would quantize it, but code outside it reads its weight
            warnings.warn(f"prepare_qat: layer '{name}' stays float: {c['weight_read']}", UserWarning, stacklevel=2)
            report.append({"name": name, "type": type(mod).__name__, "qat": None, "weight": "float", "act": "float",
                           "reason": c["weight_read"]})
            rules.setdefault("weight read outside the layer", []).append(name)
            continue
        rules.setdefault(rule + " (quantized)", []).append(name)
        src = _unpruned_view(mod)
        if c["bn"] is not None:
            new = QuantConvBn2d.from_float(src, c["bn"][1], spec)
        elif config.bitlinear and type(mod) is nn.Linear:
            new = BitLinear.from_float(src, spec)
        elif type(mod) is nn.MultiheadAttention:
            new = QuantMultiheadAttention.from_float(src, spec, BitLinear if config.bitlinear else QuantLinear)
        else:
            new = QAT_MODULES[type(mod)].from_float(src, spec)
        _keep_pruning(mod, new)
        dev = next(mod.parameters(), None)
        if dev is not None and dev.device.type != "cpu":
            new.to(device=dev.device)  # the quantizers' buffers where the layer lives (its shared parameters stay)
        plan.append((c, new))
        wfq = new.q_proj.weight_fake_quant if isinstance(new, QuantMultiheadAttention) else new.weight_fake_quant
        aq = new.q_proj.input_fake_quant if isinstance(new, QuantMultiheadAttention) else new.input_fake_quant
        fell_back = bool(wfq is not None and wfq.fell_back)
        report.append(
            {
                "name": name,
                "type": type(mod).__name__,
                "qat": type(new).__name__,
                "weight": "float" if wfq is None else wfq.spec.describe() + (" -> per_channel" if fell_back else ""),
                "act": "float" if aq is None else aq.spec.describe(),
                "fell_back": fell_back,
                "rule": rule,
                # the BatchNorm folded into this layer (its output is the layer's now), else None
                "folded_bn": c["bn"][0][0] if c["bn"] is not None else None,
            }
        )
    if not plan:
        why = "; ".join(f"{rule}: {', '.join(names)}" for rule, names in rules.items())
        hint = (
            f" (first_last={config.first_last!r} keeps the first and last supported layers in float; with "
            f"{len(cands)} supported layer(s) that is all of them: use dataclasses.replace(config, first_last=None))"
            if "first_last" in rules
            else ""
        )
        if "embeddings=False" in rules:
            hint += " (embeddings=False keeps nn.Embedding tables float: use dataclasses.replace(config, embeddings=True))"
        raise ValueError(f"prepare_qat: every supported layer was skipped by the config ({why}){hint}; nothing to quantize")
    for c, new in plan:
        name, mod = c["name"], c["module"]
        base = name or type(mod).__name__
        parts = new.projections() if isinstance(new, QuantMultiheadAttention) else [("", new)]
        for sub, layer in parts:
            for part in ("weight_fake_quant", "input_fake_quant"):
                if getattr(layer, part, None) is not None:
                    getattr(layer, part).qualified_name = ".".join(x for x in (base, sub, part) if x)
        if c["bn"] is not None:
            ident = nn.Identity()
            ident._register_load_state_dict_pre_hook(
                _FoldedBatchNormLoad(c["bn"][1], c["bn"][0], [name] + c["aliases"]), with_module=True
            )
            for bn_name in c["bn"][0]:
                replace_module(model, bn_name, ident)
        if name == "":  # a bare layer: the QAT layer is the model
            move_hooks(mod, new)
            model = new
            continue
        for alias in [name] + c["aliases"]:  # every name the layer is registered under
            replace_module(model, alias, new)
        if isinstance(new, QuantMultiheadAttention):
            continue
        if new.weight_fake_quant is not None and new.weight_fake_quant.fell_back:
            warnings.warn(
                f"prepare_qat: layer '{name}': flattened input dim {tuple(mod.weight.shape[1:])} is not a multiple "
                f"of group_size {new.weight_fake_quant.spec.group_size}; its weight falls back to per-channel",
                UserWarning,
                stacklevel=2,
            )
    unsupported = []  # layers of kinds with no QAT form: warned about unless a skip pattern names them
    for u in unswappable:
        if u.get("unsupported"):
            hit = [p for p in config.skip if fnmatch.fnmatchcase(u["name"], p)]
            for p in hit:
                used[p] += 1
            if not hit:
                unsupported.append(u)
    for pat, n in used.items():
        if n == 0:
            names = ", ".join(c["name"] for c in cands)
            warnings.warn(
                f"prepare_qat: pattern {pat!r} matches no supported layer (layers: {names})", UserWarning, stacklevel=2
            )
    if config.first_last == "int8" and "default (quantized)" not in rules and "first_last (quantized)" in rules:
        warnings.warn(
            f"prepare_qat: the first_last='int8' rule gives every quantized layer "
            f"({', '.join(rules['first_last (quantized)'])}) W8A8, so no layer gets the config's default "
            f"({config.default.weight.describe() if config.default.weight else 'float'} weights); the model has only "
            f"{len(cands)} supported layer(s). Use dataclasses.replace(config, first_last=None) to quantize them all "
            "with the default",
            UserWarning,
            stacklevel=2,
        )
    _transformer_fast_paths(model)
    bns = [u for u in unswappable if u.get("bn")]
    if bns:
        listing = "; ".join(f"'{u['name']}': {u['reason']}" for u in bns)
        warnings.warn(
            f"prepare_qat: {len(bns)} BatchNorm layer(s) stay unfolded (float, running on the quantized convs' "
            f"outputs): {listing}",
            UserWarning,
            stacklevel=2,
        )
    for u in unswappable:
        if not u.get("bn") and not u.get("unsupported"):
            warnings.warn(f"prepare_qat: layer '{u['name']}' stays float: {u['reason']}", UserWarning, stacklevel=2)
        report.append({"name": u["name"], "type": u["type"], "qat": None, "weight": "float", "act": "float",
                       "reason": ("not folded: " if u.get("bn") else "") + u["reason"]})
    if unsupported:
        listing = "; ".join(f"'{u['name']}' ({u['type']})" for u in unsupported[:8])
        more = f" and {len(unsupported) - 8} more" if len(unsupported) > 8 else ""
        warnings.warn(
            f"prepare_qat: {len(unsupported)} layer(s) with weights stay float, no QAT form exists for their kind: "
            f"{listing}{more}. qatkit quantizes nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding and "
            "nn.MultiheadAttention layers; the report lists each (a skip pattern naming a layer silences this)",
            UserWarning,
            stacklevel=2,
        )
    model.qat_report = report
    model.qat_config = config
    tag_pretrained_configs(model, "qat", config)  # Hugging Face configs: float loaders refuse the checkpoint
    optimizer_check.watch(model, copies)  # an optimizer holding the float parameters, or lacking the learned ones
    return model


def _transformer_fast_paths(model: nn.Module) -> None:
    """Keep PyTorch's fused transformer paths from bypassing the QAT layers.

    ``nn.TransformerEncoderLayer`` in eval mode without gradients runs a fused kernel on the float
    weights of its attention and feed-forward layers unless ``self_attn`` lacks ``in_proj_bias``:
    a :class:`QuantMultiheadAttention` (which has none) keeps it on the slow path. A layer whose
    attention stays float (skipped by the config) keeps the fast path, so its quantized feed-forward
    layers would be bypassed: warn. ``nn.TransformerEncoder`` converts padded inputs to nested
    tensors on the same path (decided at construction); turn that off where anything inside was
    swapped, as its constructor does when a layer does not qualify.
    """
    for name, mod in model.named_modules():
        if isinstance(mod, nn.TransformerEncoder) and any(isinstance(m, _QAT_TYPES) for m in mod.modules()):
            mod.use_nested_tensor = False
        if isinstance(mod, nn.TransformerEncoderLayer) and not isinstance(mod.self_attn, QuantMultiheadAttention):
            if any(isinstance(m, _QAT_TYPES) for m in mod.modules()):
                warnings.warn(
                    f"prepare_qat: '{name or type(mod).__name__}': its self_attn stays float, so in eval mode "
                    "without gradients PyTorch runs this layer on a fused fast path that reads the float weights "
                    "and bypasses its QAT layers; quantize the attention too, or call "
                    "torch.backends.mha.set_fastpath_enabled(False) when evaluating",
                    UserWarning,
                    stacklevel=3,
                )


def _act_quantizers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, ActFakeQuantizer)]


def _switch_args(where: str, model, **flags) -> None:
    """The switches' arguments: a module and bools (a truthy "no" or 1 turned a switch on, without
    a word, and a float model was switched silently: nothing in it quantizes)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be an nn.Module, got {type(model).__name__}")
    check_flags(where, **flags)


def _warn_unprepared(where: str, quantizers) -> None:
    if not quantizers:
        warnings.warn(f"{where}: the model has no fake quantizers, so this changes nothing (call qatkit.prepare_qat "
                      "first)", UserWarning, stacklevel=3)


def enable_observer(model: nn.Module, on: bool = True) -> nn.Module:
    """Turn every activation observer on (or off). Weight ranges follow the weights and need none."""
    _switch_args("enable_observer", model, on=on)
    _warn_unprepared("enable_observer", [m for m in model.modules() if isinstance(m, (WeightFakeQuantizer, ActFakeQuantizer))])
    for m in _act_quantizers(model):
        m.enable_observer(on)
    return model


def disable_observer(model: nn.Module) -> nn.Module:
    """Freeze every activation observer's range (qparams stay as they are)."""
    return enable_observer(model, False)


def enable_fake_quant(model: nn.Module, on: bool = True, which: str = "all") -> nn.Module:
    """Turn fake quantization on or off for ``which`` in ``"all"``, ``"weights"``, ``"activations"``.

    Jacob et al.'s recipe starts with activation quantization off (observers still collecting
    ranges): ``enable_fake_quant(model, False, "activations")`` for the first steps.
    """
    _switch_args("enable_fake_quant", model, on=on)
    if which not in ("all", "weights", "activations"):
        raise ValueError(f"enable_fake_quant: which must be 'all', 'weights' or 'activations', got {which!r}")
    _warn_unprepared("enable_fake_quant", [m for m in model.modules() if isinstance(m, (WeightFakeQuantizer, ActFakeQuantizer))])
    for m in model.modules():
        if isinstance(m, WeightFakeQuantizer) and which in ("all", "weights"):
            m.enable_fake_quant(on)
        if isinstance(m, ActFakeQuantizer) and which in ("all", "activations"):
            m.enable_fake_quant(on)
    return model


def disable_fake_quant(model: nn.Module, which: str = "all") -> nn.Module:
    """Pass tensors through unquantized (see :func:`enable_fake_quant`)."""
    return enable_fake_quant(model, False, which)


def freeze_bn(model: nn.Module, on: bool = True) -> nn.Module:
    """Switch every :class:`QuantConvBn2d` to its running statistics (Krishnamoorthi's freeze).

    BatchNorm layers left unfolded (``qat_report`` says why) are plain torch modules: in training
    mode they keep normalizing with batch statistics and updating their running ones, which this
    switch does not change (as torch.ao's ``freeze_bn_stats``). Switching on warns, naming them
    (before, the recipe's freeze silently left them training): ``bn.eval()`` freezes one until the
    next ``model.train()``."""
    _switch_args("freeze_bn", model, on=on)
    inside = set()
    for m in model.modules():
        if isinstance(m, QuantConvBn2d):
            m.freeze_bn(on)
            inside.add(id(m.bn))
    if on:
        loose = [n or type(m).__name__ for n, m in model.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside]
        if loose:
            listed = ", ".join(loose[:6]) + (f" and {len(loose) - 6} more" if len(loose) > 6 else "")
            warnings.warn(
                f"freeze_bn: {len(loose)} BatchNorm layer(s) were not folded ({listed}; qat_report says why) and "
                "keep using batch statistics in training mode; freeze_bn switches folded conv + BatchNorm layers "
                "only (call .eval() on these to freeze them)",
                UserWarning,
                stacklevel=2,
            )
    return model


@torch.no_grad()
def clip_latent_weights(model: nn.Module) -> nn.Module:
    """Clip shadow weights to ``[-c, c]`` where their spec sets ``latent_clip`` (BinaryConnect);
    call after each optimizer step."""
    for m in model.modules():
        wfq = getattr(m, "weight_fake_quant", None)
        if isinstance(wfq, WeightFakeQuantizer) and wfq.spec.latent_clip is not None:
            # a pruned layer's latent weight is weight_orig (its `weight` is recomputed from it)
            latent = m.weight_orig if "weight" in pruning_hooks(m) else m.weight
            with torch.no_grad():
                latent.clamp_(-wfq.spec.latent_clip, wfq.spec.latent_clip)
    return model


#: activation quantizers whose ranges come from observed data (calibrate checks they saw some)
_DATA_RANGE_QUANTIZERS = (AffineStaticActQuantizer, AffineLearnedActQuantizer)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``'s wrapper (``OptimizedModule._orig_mod``) and DDP /
    DataParallel's (``.module``), at any depth: what the exporters write, under its own names (the
    wrapper's prefixes, ``_orig_mod.`` / ``module.``, would fit no model a file is loaded into)."""
    from torch._dynamo.eval_frame import OptimizedModule

    while True:
        if isinstance(model, OptimizedModule):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


class _FoldedBatchNormLoad:
    """The load_state_dict pre-hook of the ``nn.Identity`` a folded BatchNorm leaves behind: a
    float checkpoint's keys for the BatchNorm (``bn.weight``, ``bn.running_mean``, ...) load into
    the BatchNorm the QuantConvBn2d holds (``conv.bn.*``), and those entries leave the missing keys.
    Before, a float checkpoint loaded after ``prepare_qat`` (strict=False) left the folded BatchNorms
    with the statistics they were prepared with, its keys listed as unexpected. A callable object
    (not a closure), so copies of the model hook their own BatchNorm."""

    def __init__(self, bn: nn.Module, bn_names: List[str], conv_names: List[str]):
        self.bn, self.bn_names, self.conv_names = bn, list(bn_names), list(conv_names)

    def __call__(self, module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        mine = {k: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]}
        if not mine:
            return
        missing, unexpected = [], []
        self.bn._load_from_state_dict(mine, prefix, local_metadata, True, missing, unexpected, error_msgs)
        unexpected_keys.extend(unexpected)
        for bn_name in self.bn_names:  # the load's root relative to the prepared model's
            if prefix == bn_name + "." or prefix.endswith("." + bn_name + "."):
                root = prefix[: len(prefix) - len(bn_name) - 1]
                loaded = {f"{root}{c}.bn.{k[len(prefix):]}" for c in self.conv_names for k in mine}
                missing_keys[:] = [k for k in missing_keys if k not in loaded]
                break


def refuse_meta(where: str, model: nn.Module) -> None:
    """Raise where ``model`` holds a parameter or buffer on the meta device (built under
    ``torch.device("meta")`` for a later ``to_empty``): quantizer state (learned step sizes from the
    weights, observer ranges, on/off flags) made from meta tensors becomes uninitialized memory at
    ``to_empty``, which a float checkpoint does not overwrite: flags of 0 or 192, garbage ranges."""
    for kind, named in (("parameter", model.named_parameters), ("buffer", model.named_buffers)):
        for n, t in named():
            if t.is_meta:
                raise ValueError(
                    f"{where}: {kind} '{n}' is on the meta device; qatkit initializes quantizer state (learned step "
                    "sizes, observer ranges, on/off flags) from real tensors, and after to_empty() it would be "
                    "uninitialized memory. Materialize the model and load its weights first "
                    f"(model.to_empty(device=...); model.load_state_dict(...)), then call {where}"
                )


def refuse_quantized(where: str, model: nn.Module) -> None:
    """Raise where ``model`` already holds QAT (prepared) or converted / loaded layers: ``where``
    (ptq, sensitivity, choose_bits) starts from the float model. The error named prepare_qat
    ("nothing to quantize") before, which the caller never called."""
    from .convert import _Quantized

    for name, m in model.named_modules():
        if isinstance(m, _QAT_TYPES + (BitLinear,)) or isinstance(m, _Quantized):
            state = "converted" if isinstance(m, _Quantized) else "prepared"
            at = f"layer '{name}'" if name else "the model"
            raise ValueError(f"{where}: the model is {state} already ({at} is a {type(m).__name__}); {where} takes the "
                             "float model (keep a copy of it before prepare_qat / ptq)")


def refuse_wrapped(where: str, model: nn.Module) -> None:
    """Raise where ``model`` is (or holds) a DDP / DataParallel / FSDP wrapper: it registered the
    float model's parameters when it was built, so QAT layers' new parameters (learned scales)
    would never be synchronized across ranks, silently. Prepare first, then wrap."""
    from torch.nn.parallel import DistributedDataParallel

    kinds = [DistributedDataParallel, nn.DataParallel]
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        kinds.append(FullyShardedDataParallel)
        from torch.distributed.fsdp import FSDPModule  # FSDP2 (fully_shard)

        kinds.append(FSDPModule)
    except ImportError:  # (a torch built without distributed)
        pass
    for name, m in model.named_modules():
        if isinstance(m, tuple(kinds)):
            at = f"'{name}' is" if name else "the model is"
            raise TypeError(
                f"{where}: {at} wrapped in {type(m).__name__}, which registered the float model's parameters "
                "when it was built; the QAT layers' new parameters (learned scales) would not be synchronized across "
                f"ranks. Call {where} on the model itself (model.module), then wrap the result"
            )


def call_on_batch(model: nn.Module, b):
    """``model`` on one batch without a ``forward``: a tensor; a tuple / list's first element (an
    (input, target) pair from a DataLoader); a mapping: its entries as keyword arguments where the
    model's forward takes them (a tokenizer's output, as Hugging Face models take it), else the
    mapping itself (a SentenceTransformer's ``forward(features)``)."""
    if isinstance(b, Mapping):
        # DDP / DataParallel pass anything on (forward(*inputs, **kwargs)): the wrapped model's signature decides
        inner = model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
        try:
            inspect.signature(inner.forward).bind(**b)
        except (TypeError, ValueError):
            return model(b)
        return model(**b)
    return model(b[0] if isinstance(b, (tuple, list)) else b)


@torch.no_grad()
def calibrate(model: nn.Module, batches, forward=None, distributed: bool = False) -> nn.Module:
    """Run ``batches`` through ``model`` with only the activation observers in training mode (the
    rest, BatchNorm included, in eval mode), so the observers collect ranges and nothing else
    changes — post-training calibration of a prepared model, or a warm start before QAT.

    Under ``torch.distributed`` (torchrun) the observers observe this process's batches alone, so
    one rank can calibrate (or run :func:`qatkit.ptq`) while the others wait: before, they
    all-reduced each batch's range as in training and that rank waited for the others forever.

    Args:
        model: a prepared model.
        batches: an iterable of inputs (tensors, tuples whose first element is the input, or
            mappings of keyword arguments: ``model(**batch)``).
        forward: optional ``forward(model, batch)`` for models that take other arguments.
        distributed: all-reduce the ranges across the ranks, as training does (every rank must
            then call ``calibrate`` with the same number of batches); the ranks' shards then give
            the single-process ranges of all their batches.

    Returns:
        ``model``, with every module back in the training mode it had (also when this raises).

    Raises:
        ValueError: the model has no activation quantizers; or a quantizer whose ranges come from
            data (static observers, learned ranges) observed nothing during the run, naming the
            layers (a ``forward`` that switches the model to eval mode, such as
            sentence-transformers' ``encode()``, or one that never reaches them).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"calibrate: model must be an nn.Module, got {type(model).__name__}")
    if batches is None or isinstance(batches, (str, bytes)) or not hasattr(batches, "__iter__"):
        raise TypeError(
            f"calibrate: batches must be an iterable of inputs (a list of tensors, a DataLoader), got {type(batches).__name__}"
        )
    if forward is not None and not callable(forward):
        raise TypeError(f"calibrate: forward must be a callable forward(model, batch), got {type(forward).__name__}")
    acts = _act_quantizers(model)
    if not acts:
        raise ValueError("calibrate: the model has no activation quantizers; call qatkit.prepare_qat first")
    # observers switched off (disable_observer, as QAT recipes do late in training) keep their
    # ranges: calibrate ran the batches and changed nothing there, without a word
    act_ids = {id(m) for m in acts}
    frozen = [n for n, m in model.named_modules() if id(m) in act_ids and "observer_on" in m._buffers
              and not bool(m.observer_on.item())]
    if frozen and len(frozen) == len(acts):
        raise ValueError(
            f"calibrate: every activation observer is switched off ({len(frozen)}: {', '.join(frozen[:8])}"
            f"{' ...' if len(frozen) > 8 else ''}), so the batches would change no range; call "
            "qatkit.qat.enable_observer(model) first")
    modes = [(m, m.training) for m in model.modules()]
    counts = {id(m): 0 for m in acts}

    # count the calls each quantizer gets in training mode through a wrapper of its forward (an
    # instance attribute, restored below): a forward pre-hook would send every module call down
    # nn.Module's slow hook path, ~25 us per call, as much as the observation itself
    def counting(mod):
        fwd = mod.forward
        key = id(mod)

        def forward(*args, **kwargs):
            if mod.training:
                counts[key] += 1
            return fwd(*args, **kwargs)

        return forward

    own_forward = {id(m): m.__dict__["forward"] for m in acts if "forward" in m.__dict__}
    check_flags("calibrate", distributed=distributed)
    # the switch lives on the observers (a static quantizer's is its observer's) and LSQ quantizers
    synced = [(m, m.__dict__["sync_distributed"]) for m in model.modules() if "sync_distributed" in m.__dict__]
    for m, _ in synced:
        m.__dict__["sync_distributed"] = m.__dict__["sync_distributed"] and distributed
    for m in acts:
        m.forward = counting(m)
    weights = [m for m in model.modules() if isinstance(m, WeightFakeQuantizer)]
    try:
        model.eval()
        for m in acts:
            m.train()
        for m in weights:  # weights do not change during calibration: fake-quantize each once
            m._calibration_cache = {}
        for b in batches:
            if forward is not None:
                forward(model, b)
            else:
                call_on_batch(model, b)
    finally:
        for m in acts:
            if id(m) in own_forward:
                m.forward = own_forward[id(m)]
            else:
                del m.forward
        for m in weights:
            m._calibration_cache = None
        for m, was in modes:
            m.training = was
        for m, was in synced:
            m.__dict__["sync_distributed"] = was
        for m in acts:  # histogram observers compute their final qparams once, here
            obs = getattr(m, "observer", None)
            if getattr(obs, "dirty", False):
                obs.refresh()
    names = {id(m): n for n, m in model.named_modules()}
    if frozen:
        warnings.warn(
            f"calibrate: {len(frozen)} activation quantizer(s) have their observer switched off and kept their "
            f"ranges: {', '.join(frozen[:8])}{' ...' if len(frozen) > 8 else ''} (qatkit.qat.enable_observer(model) "
            "to calibrate them too)", UserWarning, stacklevel=2)
    idle = [names[id(m)] for m in acts if counts[id(m)] == 0 and isinstance(m, _DATA_RANGE_QUANTIZERS)]
    if idle:
        raise ValueError(
            f"calibrate: {len(idle)} activation quantizer(s) observed nothing: {', '.join(idle)}; the batches "
            "never reached them in training mode (does `forward` switch the model to eval mode, as "
            "sentence-transformers' encode() does? call the model's forward instead)"
        )
    return model
