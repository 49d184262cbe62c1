"""What a model computes, discovered from its execution: which module or op produced each tensor a
layer consumed, and who else consumed it.

``prepare_qat`` uses it to find every Conv2d -> BatchNorm2d pair it can fold (not only neighbours
in an ``nn.Sequential``: ResNet's ``BasicBlock`` calls ``self.bn1(self.conv1(x))`` from Python);
the PTQ passes (cross-layer equalization, bias correction) reuse the same dataflow.

Two sources, one result (:class:`Dataflow`):

* :func:`trace_dataflow` runs one real batch through the model with forward hooks on every leaf
  module and a ``TorchFunctionMode`` that sees every torch function called outside the leaves (the
  residual ``+=``, ``flatten``, ``F.relu`` in a ``forward``). Works on any model that runs.
* :func:`fx_dataflow` reads a ``torch.fx.symbolic_trace`` graph (no data needed; fails on
  data-dependent control flow, and then the caller says so).

A tensor produced by one call and consumed by exactly one other call (and not returned by the
model) is an intermediate that a fold may remove. What else reads a tensor counts as a consumer
(``kind="escape"``): an in-place write that returns nothing (``y[:, 0] = c``), the model's return
in any container (a dataclass, an object), a module attribute the forward keeps it in
(``self.feats = y``, ``self.store.append(y)``), a user's forward hook on the module that produced
it or a forward pre-hook on the module that reads it. Each of these, missed, let a fold hand the
reader the BatchNorm's output instead of the conv's (docs/benchmarks.md, thirty-fourth session).
"""

from __future__ import annotations

import dataclasses
import functools
import types
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

__all__ = ["Call", "Dataflow", "trace_dataflow", "fx_dataflow", "find_conv_bn_pairs", "layer_input"]

#: producer index of a tensor that no traced call produced (a model input, a parameter, a constant)
EXTERNAL = -1


@dataclass
class Call:
    """One call in execution order: a leaf module (``kind="module"``), a torch function outside
    any leaf (``kind="op"``), or the model's return (``kind="output"``). ``inputs`` holds, per
    tensor argument, the index of the call that produced it (``EXTERNAL`` if none did)."""

    index: int
    kind: str
    name: str
    module: Optional[nn.Module] = None
    inputs: List[int] = field(default_factory=list)

    def describe(self) -> str:
        if self.kind == "module":
            return f"module '{self.name}' ({type(self.module).__name__})"
        if self.kind == "output":
            return "the model's output"
        if self.kind == "escape":  # a user's hook on a module, or a module attribute keeping a tensor
            return self.name
        return f"op '{self.name}'"


@dataclass
class Dataflow:
    """Calls in execution order, who consumed each call's outputs, and how often each module ran."""

    calls: List[Call]
    source: str  # "trace" or "fx"
    #: layer name -> the ops that read its weight outside its own call (``F.linear(h, self.fc.weight)``,
    #: a head tied as ``h @ self.wte.weight.t()``): a QAT layer there quantizes only its own calls
    weight_reads: Dict[str, List[str]] = field(default_factory=dict)
    #: id() of each module in the order of its first call (containers included in a trace)
    order: List[int] = field(default_factory=list)

    def __post_init__(self):
        self.consumers: Dict[int, List[int]] = {c.index: [] for c in self.calls}
        self.calls_of: Dict[int, List[int]] = {}
        for c in self.calls:
            for p in set(c.inputs):
                if p != EXTERNAL:
                    self.consumers[p].append(c.index)
            if c.module is not None:
                self.calls_of.setdefault(id(c.module), []).append(c.index)

    def producer(self, call: Call) -> Optional[Call]:
        """The single call that produced ``call``'s tensor inputs (None: several, or external)."""
        ps = {p for p in call.inputs}
        if len(ps) != 1 or EXTERNAL in ps:
            return None
        return self.calls[ps.pop()]


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """A layer call's input as a forward pre-hook registered ``with_kwargs=True`` sees it:
    positional, or by torch's name ``input`` (``self.fc(input=x)``; a plain pre-hook's ``args`` is
    empty then)."""
    if args:
        return args[0]
    if "input" in kwargs:
        return kwargs["input"]
    return next(v for v in kwargs.values() if isinstance(v, torch.Tensor))


def _reachable(tree, kind=torch.Tensor, depth: int = 0, seen=None) -> list:
    """Every ``kind`` object in ``tree``, also inside containers pytree does not know (a dataclass,
    an object's attributes), four levels deep."""
    seen = set() if seen is None else seen
    out = []
    for leaf in pytree.tree_leaves(tree):
        if isinstance(leaf, kind):
            out.append(leaf)
        elif depth < 4 and id(leaf) not in seen and not isinstance(leaf, (nn.Module, type, torch.Tensor)):
            seen.add(id(leaf))
            if dataclasses.is_dataclass(leaf):  # slots=True ones have no __dict__
                out += _reachable([getattr(leaf, f.name, None) for f in dataclasses.fields(leaf)], kind, depth + 1, seen)
            elif hasattr(leaf, "__dict__") and not isinstance(leaf, _CODE):
                out += _reachable(list(vars(leaf).values()), kind, depth + 1, seen)
    return out


#: functions and methods: no tensors of the forward's live in them
_CODE = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial)

#: nn.Module's own entries of a module's __dict__ (parameters, buffers, children, hook tables)
_MODULE_INTERNALS = frozenset(vars(nn.Module()).keys())


def _attributes(model: nn.Module):
    """``(module name, attribute, value)`` for the plain attributes of every module (what a
    ``forward`` may keep a tensor in: ``self.feats = y``, ``self.store.append(y)``)."""
    for n, m in model.named_modules():
        for k, v in vars(m).items():
            if k not in _MODULE_INTERNALS and not isinstance(v, (nn.Module, type, *_CODE)):
                yield n, k, v


def _restore_attributes(model: nn.Module, before: Dict[int, dict]) -> None:
    """Undo what a torch.fx trace left in the modules' plain attributes: attributes it set are
    restored (or removed), and fx Proxies appended to lists / stored in dicts are taken out."""
    import torch.fx

    for m in model.modules():
        old = before.get(id(m))
        if old is None:
            continue
        for k in [k for k in vars(m) if k not in _MODULE_INTERNALS]:
            if k not in old:
                delattr(m, k)
            elif vars(m)[k] is not old[k]:
                m.__dict__[k] = old[k]
        for k, v in vars(m).items():
            if k in _MODULE_INTERNALS:
                continue
            if isinstance(v, list):
                v[:] = [e for e in v if not isinstance(e, torch.fx.Proxy)]
            elif isinstance(v, dict):
                for key in [key for key, e in v.items() if isinstance(e, torch.fx.Proxy)]:
                    del v[key]


#: the layers whose weight a QAT layer replaces (their forward reads it; other code should not)
_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
#: ops that read a tensor's metadata, not its values
_METADATA_OPS = ("size", "dim", "numel", "stride", "element_size", "get_device", "data_ptr", "is_contiguous",
                 "is_floating_point", "is_complex", "nelement", "ndimension", "storage_offset",
                 "get", "getattr")  # w.dtype / w.shape / w.device (a property's __get__; fx's getattr)


def _weights_of_layers(model: nn.Module) -> Dict[int, str]:
    """id(weight) -> layer name, for the layers a QAT layer would replace."""
    out = {}
    for n, m in model.named_modules():
        w = m._parameters.get("weight") if isinstance(m, _WEIGHT_LAYERS) else None
        if w is not None:
            out.setdefault(id(w), n)
    return out


def _reads_values(name: str) -> bool:
    """Whether an op reads the values of the tensors it takes (not ``w.size()``, ``w.dtype``,
    ``w.new_zeros(...)``, ``torch.zeros_like(w)``; the callers handle ``x.to(w)`` / ``x.type_as(w)``)."""
    return not (name in _METADATA_OPS or name.startswith("new_") or name.endswith("_like"))


def user_hooks(mod: nn.Module) -> Tuple[bool, bool]:
    """``(forward hooks, forward pre-hooks)`` a user registered on ``mod``: a forward hook reads the
    module's output and a pre-hook its input, so a fold or an equalization that changes either
    changes what the hook sees. ``torch.nn.utils.prune``'s pre-hooks recompute the weight only."""
    from torch.nn.utils.prune import BasePruningMethod

    return bool(mod._forward_hooks), any(not isinstance(h, BasePruningMethod) for h in mod._forward_pre_hooks.values())


def _op_name(func) -> str:
    if isinstance(func, str):  # an fx call_method node's target: x.flatten(1) -> "flatten"
        return func
    name = getattr(func, "__name__", None) or repr(func)
    return name.replace("__", "") if name.startswith("__") else name


class _Opaque(nn.Module):
    """A TorchScript submodule seen from Python during a trace: TorchScript modules take no Python
    hooks and run their ops where no TorchFunctionMode sees them, so the trace records each call of
    this stand-in as one opaque module call (its inputs consumed, its outputs produced)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.__dict__["inner"] = inner  # not a child: the stand-in is a leaf

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def trace_dataflow(model: nn.Module, example_inputs, forward: Optional[Callable] = None) -> Dataflow:
    """:func:`_trace_dataflow` with every TorchScript submodule behind an :class:`_Opaque` stand-in
    for the trace (put back after)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError("a TorchScript model cannot be traced from Python; pass the eager model")
    swapped = []
    stack = [model]
    while stack:
        parent = stack.pop()
        for key, child in list(parent._modules.items()):
            if isinstance(child, torch.jit.ScriptModule):
                parent._modules[key] = _Opaque(child)
                swapped.append((parent, key, child))
            elif child is not None:
                stack.append(child)
    try:
        return _trace_dataflow(model, example_inputs, forward)
    finally:
        for parent, key, child in swapped:
            parent._modules[key] = child


def _trace_dataflow(model: nn.Module, example_inputs, forward: Optional[Callable] = None) -> Dataflow:
    """Run ``example_inputs`` through ``model`` once (eval mode, no gradients; every module's
    training flag restored after) and record its dataflow.

    Args:
        example_inputs: a tensor, a tuple of positional arguments, or (with ``forward``) any batch.
        forward: ``forward(model, example_inputs)`` for models called another way.

    Queries that return no tensor (``x.size(0)``, ``x.dim()``) are not consumers: they read
    metadata, not values. Writes that return nothing (``y[:, 0] = 0``, ``torch._foreach_mul_``)
    and ``y.numpy()`` consume ``y`` and produce it again.
    """
    names = {}
    for n, m in model.named_modules():
        names.setdefault(id(m), n)
    calls: List[Call] = []
    producer: Dict[int, int] = {}
    keep: List[torch.Tensor] = []  # holds every seen tensor so ids are not reused during the trace
    depth = [0]

    def tensors(tree) -> List[torch.Tensor]:
        return [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]

    def record(kind, name, module, ins, outs):
        c = Call(len(calls), kind, name, module, [producer.get(id(t), EXTERNAL) for t in ins])
        calls.append(c)
        for t in outs:
            producer[id(t)] = c.index
        keep.extend(ins)
        keep.extend(outs)

    weights = _weights_of_layers(model)
    weight_reads: Dict[str, List[str]] = {}
    inside = []  # the non-leaf modules executing now (innermost last)

    class _Ops(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if depth[0] == 0:
                outs = tensors(out)
                name = _op_name(func)
                # a layer's weight read by code outside the layer (torch.nn's own containers excepted:
                # qatkit swaps nn.MultiheadAttention whole and keeps TransformerEncoderLayer's fast path off)
                if weights and not (inside and type(inside[-1]).__module__.startswith("torch.nn")):
                    ins = tensors((args, kwargs))
                    first = ins[0] if ins else None
                    for t in ins:
                        layer = weights.get(id(t))
                        # x.to(w) / x.type_as(w) take w's dtype and device only
                        if layer is not None and (t is first or name not in ("to", "type_as")) and _reads_values(name):
                            weight_reads.setdefault(layer, []).append(name)
                if not outs and args and (name in ("setitem", "numpy") or name.endswith("_")):
                    # an in-place write that returns nothing (y[:, 0] = 0, torch._foreach_mul_), or a
                    # NumPy view that may be written: it consumes and re-produces the tensors it
                    # (may) write, so a BatchNorm reading y after it does not read the conv's output
                    # (folding across y[:, 0] = 0 computed another function)
                    outs = tensors(args[0])
                if outs:
                    record("op", name, None, tensors((args, kwargs)), outs)
            return out

    order: List[int] = []

    def pre(mod, args, kwargs):
        if depth[0] == 0:
            order.append(id(mod))
        depth[0] += 1

    def post(mod, args, kwargs, out):
        depth[0] -= 1
        if depth[0] == 0:
            record("module", names.get(id(mod), type(mod).__name__), mod, tensors((args, kwargs)), tensors(out))

    def hooked(name, what):
        """A user's hook on module ``name`` consumes its input (pre-hook) or output (hook)."""
        def pre_hook(mod, args, kwargs):
            if depth[0] == 0:
                record("escape", f"a forward pre-hook on module '{name}'", None, tensors((args, kwargs)), [])

        def post_hook(mod, args, kwargs, out):
            if depth[0] == 0:
                record("escape", f"a forward hook on module '{name}'", None, tensors(out), [])

        return pre_hook if what == "pre" else post_hook

    # the users' hooks, found before the trace adds its own
    hooked_mods = [(n, m, user_hooks(m)) for n, m in model.named_modules()]
    leaves = [m for m in model.modules() if next(iter(m.children()), None) is None]
    hooks = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in leaves]
    hooks += [m.register_forward_hook(post, with_kwargs=True) for m in leaves]
    for m in model.modules():
        if next(iter(m.children()), None) is not None:  # a container: whose code runs the ops
            hooks.append(m.register_forward_pre_hook(lambda mod, args: (inside.append(mod), order.append(id(mod))) and None))
            hooks.append(m.register_forward_hook(lambda mod, args, out: inside.pop() and None, always_call=True))
    for n, m, (post_h, pre_h) in hooked_mods:  # recorded outside the trace's own pre / post (depth 0)
        if pre_h:
            hooks.append(m.register_forward_pre_hook(hooked(n, "pre"), with_kwargs=True, prepend=True))
        if post_h:
            hooks.append(m.register_forward_hook(hooked(n, "post"), with_kwargs=True))
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), _Ops():
            if forward is not None:
                out = forward(model, example_inputs)
            elif isinstance(example_inputs, tuple):
                out = model(*example_inputs)
            else:
                out = model(example_inputs)
        # a conv output returned inside a dataclass or an object, or kept in a module attribute, is
        # consumed by the caller: a fold would hand the caller the BatchNorm's output instead
        record("output", "output", None, _reachable(out), [])
        for n, k, v in _attributes(model):
            try:
                kept = [t for t in _reachable(v) if id(t) in producer]
            except Exception:  # an exotic object pytree cannot flatten holds no traced tensor we can see
                continue
            if kept:
                record("escape", f"attribute '{k}' of " + (f"module '{n}'" if n else "the model"), None, kept, [])
    finally:
        for h in hooks:
            h.remove()
        for m, was in modes:
            m.training = was
    return Dataflow(calls, "trace", weight_reads, list(dict.fromkeys(order)))


def fx_dataflow(model: nn.Module) -> Dataflow:
    """The dataflow of ``torch.fx.symbolic_trace(model)`` (raises what fx raises for models it
    cannot trace)."""
    import torch.fx

    before = {id(m): dict(vars(m)) for m in model.modules()}
    try:
        gm = torch.fx.symbolic_trace(model)
    finally:
        # a forward that keeps a tensor (self.feats = y, self.store.append(y)) kept an fx Proxy in the
        # model: found below, then the attributes restored and the Proxies taken out of lists / dicts
        kept = []
        for n, k, v in list(_attributes(model)):
            try:
                proxies = _reachable(v, torch.fx.Proxy)
            except Exception:
                continue
            if proxies:
                kept.append((f"attribute '{k}' of " + (f"module '{n}'" if n else "the model"), proxies))
        _restore_attributes(model, before)
    index: Dict[torch.fx.Node, int] = {}
    calls: List[Call] = []
    layers = set(_weights_of_layers(model).values())
    weight_reads: Dict[str, List[str]] = {}
    for node in gm.graph.nodes:
        # (a bare layer as the model: fx traces its own forward, which reads its own weight)
        if node.op == "get_attr" and node.target.endswith("weight") and node.target.rpartition(".")[0] in layers - {""}:
            owner = node.target.rpartition(".")[0]
            readers = []
            for u in node.users:
                r = _op_name(u.target) if u.op != "call_module" else u.target
                if _reads_values(r) and not (r in ("to", "type_as") and u.args and u.args[0] is not node):
                    readers.append(r)
            if readers:
                weight_reads.setdefault(owner, []).extend(readers)
        if node.op in ("placeholder", "get_attr"):
            continue
        ins = [index.get(a, EXTERNAL) for a in node.all_input_nodes]
        if node.op == "call_module":
            mod = model.get_submodule(node.target)
            post_h, pre_h = user_hooks(mod)
            if pre_h:  # a user's hook reads the module's input
                calls.append(Call(len(calls), "escape", f"a forward pre-hook on module '{node.target}'", None, ins))
            c = Call(len(calls), "module", node.target, mod, ins)
        elif node.op == "output":
            c = Call(len(calls), "output", "output", None, ins)
        else:
            c = Call(len(calls), "op", _op_name(node.target), None, ins)
        index[node] = c.index
        calls.append(c)
        if node.op == "call_module" and post_h:  # ... or its output
            calls.append(Call(len(calls), "escape", f"a forward hook on module '{node.target}'", None, [c.index]))
    for what, proxies in kept:
        calls.append(Call(len(calls), "escape", what, None, [index.get(p.node, EXTERNAL) for p in proxies]))
    order = [id(c.module) for c in calls if c.kind == "module"]
    return Dataflow(calls, "fx", weight_reads, list(dict.fromkeys(order)))


#: the BatchNorm kinds whose folding is decided (and reported)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
#: the kinds that fold into a Conv2d (QuantConvBn2d). A SyncBatchNorm (convert_sync_batchnorm, for
#: DDP) is a BatchNorm2d whose batch statistics span the ranks: the fold keeps it and calls it
FOLDABLE_BN = (nn.BatchNorm2d, nn.SyncBatchNorm)


def find_conv_bn_pairs(model: nn.Module, flow: Dataflow) -> Tuple[List[Tuple[str, str]], Dict[str, str]]:
    """Conv2d -> BatchNorm2d pairs ``flow`` shows can be folded, and why every other BatchNorm
    cannot.

    A pair folds when the BatchNorm's only input is the conv's output, nothing else consumes that
    output (another op, the model's return, a kept attribute, a user's hook: see the module
    docstring), each module runs exactly once, and the BatchNorm is affine with running statistics
    and matches the conv's channels.

    Returns:
        ``(pairs, unfolded)``: ``[(conv_name, bn_name)]`` and ``{bn_name: reason}`` for every other
        BatchNorm in the model (names are the first name each module is registered under).
    """
    names = {}
    for n, m in model.named_modules():
        names.setdefault(id(m), n)
    pairs, unfolded = [], {}
    for n, bn in model.named_modules():
        if not isinstance(bn, BN_TYPES):
            continue
        runs = flow.calls_of.get(id(bn), [])
        if not runs:
            unfolded[n] = f"it never ran in the {'traced batch' if flow.source == 'trace' else 'fx graph'}"
            continue
        if len(runs) > 1:
            unfolded[n] = f"it runs {len(runs)} times per forward (a shared module cannot be folded into one conv)"
            continue
        call = flow.calls[runs[0]]
        src = flow.producer(call)
        if src is None:
            unfolded[n] = "its input is not produced by a single layer (a model input or several tensors)"
            continue
        if src.kind != "module" or not isinstance(src.module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            unfolded[n] = f"its input comes from {src.describe()}, not a conv"
            continue
        conv = src.module
        if type(conv) is not nn.Conv2d or type(bn) not in FOLDABLE_BN:
            unfolded[n] = (
                f"qatkit folds Conv2d + BatchNorm2d / SyncBatchNorm only, this is {type(conv).__name__} '{src.name}' + "
                f"{type(bn).__name__} (the conv is quantized on its own, the BatchNorm stays float)"
            )
            continue
        others = [flow.calls[i] for i in flow.consumers[src.index] if i != call.index]
        if others:
            used = ", ".join(o.describe() for o in others)
            unfolded[n] = f"the output of conv '{src.name}' is also used by {used}, so it cannot be replaced"
            continue
        if len(flow.calls_of.get(id(conv), [])) > 1:
            unfolded[n] = f"conv '{src.name}' runs {len(flow.calls_of[id(conv)])} times per forward"
            continue
        if not (bn.affine and bn.track_running_stats) or bn.num_features != conv.out_channels:
            unfolded[n] = (
                f"not folded into conv '{src.name}': a {type(bn).__name__} without affine parameters or running "
                "statistics (the conv is quantized on its own, the BatchNorm stays float)"
            )
            continue
        pairs.append((names[id(conv)], n))
    return pairs, unfolded
