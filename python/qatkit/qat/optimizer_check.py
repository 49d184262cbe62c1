"""Notice an optimizer that cannot train a QAT model: two mistakes otherwise fail without a word.

- **The optimizer holds the float model's parameters.** ``prepare_qat`` (``inplace=False``, the
  default) and ``ptq`` return a copy whose parameters are new tensors. An optimizer built before
  them from ``model.parameters()``, or afterwards from the wrong variable, steps the float
  parameters, which receive no gradients: the QAT model gets its gradients and never changes
  (a probe: three SGD steps left every weight bit for bit as prepared).
- **The optimizer lacks the learned quantizer parameters.** ``prepare_qat(..., inplace=True)``
  shares the float weights, so an optimizer built before it trains them, but the LSQ / LSQ+ step
  sizes and offsets it creates are new: they receive gradients and never move, so "learned step
  size" training is silently fixed-scale training.

``watch`` (called by ``prepare_qat`` and ``ptq``) records, by identity and with weak references
only, which float parameter each QAT parameter was copied from and which parameters of a QAT model
are its learned quantizer parameters. A step pre-hook common to all optimizers
(``torch.optim.optimizer.register_optimizer_step_pre_hook``, registered at the first ``watch``)
looks at each optimizer's first steps: it watches the parameters that optimizer should be moving
but does not hold (the QAT copies of the float parameters it holds; the learned parameters of a QAT
model whose other parameters it holds), drops each one that changes (another optimizer, or the
user, updated it), and after ``STEPS`` steps warns once about those that hold a gradient and never
changed. An optimizer that holds nothing of a QAT model, or whose watched parameters all moved, is
settled; from then on the hook costs one dictionary lookup per step (its parameter count is
compared, so ``add_param_group`` makes it look again). The hook never raises into a training loop.

C++ optimizers have no such hook: the C++ QAT layers check the learned parameters in their
training forward instead (qatkit::nn, README "C++").
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from typing import Iterable, List, Optional, Tuple

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.weak import WeakIdKeyDictionary

STEPS = 3  # optimizer steps without a change before the warning

_COPY_OF = WeakIdKeyDictionary()  # float parameter -> weakref to its QAT copy
_OWNER = WeakIdKeyDictionary()  # QAT model parameter (not a learned quantizer one) -> _Model
_OPTIMIZERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # optimizer -> _Watch
_HOOK = None


class _Model:
    __slots__ = ("learned", "__weakref__")

    def __init__(self, learned: List[Tuple[str, "weakref.ref"]]):
        self.learned = learned  # (qualified name, weakref to the parameter)


class _Watch:
    __slots__ = ("n", "steps", "items", "done")

    def __init__(self, n: int):
        self.n, self.steps, self.items, self.done = n, 0, [], False


def _learned_params(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    from .quantizers import ActFakeQuantizer, WeightFakeQuantizer

    out = []
    for mname, mod in model.named_modules():
        if isinstance(mod, (WeightFakeQuantizer, ActFakeQuantizer)):
            for pname, p in mod.named_parameters(recurse=False):
                out.append((f"{mname}.{pname}" if mname else pname, p))
    return out


def watch(model: nn.Module, copies: Iterable[Tuple[torch.Tensor, torch.Tensor]] = ()) -> None:
    """Record ``model`` (a QAT model) for the optimizer check: its learned quantizer parameters,
    and ``copies``, (float parameter, the model's copy of it) pairs, where the model is a copy."""
    global _HOOK
    try:
        learned = _learned_params(model)
        learned_ids = {id(p) for _, p in learned}
        entry = _Model([(n, weakref.ref(p)) for n, p in learned])
        mine = {}
        for p in model.parameters():
            mine[id(p)] = p
            if id(p) not in learned_ids:
                _OWNER[p] = entry
        for src, dst in copies:
            if src is not dst and id(dst) in mine:
                _COPY_OF[src] = weakref.ref(dst)
        if _HOOK is None:
            _HOOK = register_optimizer_step_pre_hook(_pre_step)
    except Exception:  # (the check is advice: it never stands in the way of preparing a model)
        pass


def _scan(opt: torch.optim.Optimizer, n: int) -> _Watch:
    w = _Watch(n)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    models, seen = [], set()
    for g in opt.param_groups:
        for p in g["params"]:
            r = _COPY_OF.get(p)
            q = r() if r is not None else None
            if q is not None and q.requires_grad and id(q) not in held:
                w.items.append(["copy", weakref.ref(p), weakref.ref(q), q._version, None])
            m = _OWNER.get(p)
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                models.append(m)
    for m in models:
        for name, r in m.learned:
            q = r()
            if q is not None and q.requires_grad and id(q) not in held:
                w.items.append(["learned", None, weakref.ref(q), q._version, name])
    w.done = not w.items
    return w


def _message(opt: torch.optim.Optimizer, stale: list) -> Optional[str]:
    kind = type(opt).__name__
    copies = [it for it in stale if it[0] == "copy"]
    learned = [it for it in stale if it[0] == "learned"]
    if copies:
        return (
            f"qatkit: this {kind} optimizer steps a float model's parameters, not the QAT model's: "
            f"{len(copies)} parameter(s) of the QAT model copied from the ones it holds received gradients over "
            f"{STEPS} steps and never changed (prepare_qat without inplace=True, and ptq, give the model new "
            f"parameters). Build the optimizer from the prepared model, e.g. "
            f"torch.optim.{kind}(qat_model.parameters(), ...)"
        )
    if learned:
        names = ", ".join(f"'{it[4]}'" for it in learned[:4]) + (f" and {len(learned) - 4} more" if len(learned) > 4 else "")
        return (
            f"qatkit: {len(learned)} learned quantizer parameter(s) of a QAT model ({names}) received gradients over "
            f"{STEPS} steps of this {kind} optimizer, which steps the model's other parameters but does not hold "
            "them, and nothing else changed them: the step sizes stay as initialized (was the optimizer built "
            "before prepare_qat?). Build it after prepare_qat, or add them with optimizer.add_param_group(...); "
            "to keep them fixed on purpose, set requires_grad_(False) on them"
        )
    return None


def _user_stacklevel() -> int:
    """The ``stacklevel`` that names the caller's frame outside torch and this file (the training
    loop's ``optimizer.step()``), for a warning given in :func:`_pre_step`."""
    torch_dir = os.path.dirname(torch.__file__)
    f, level = sys._getframe(1), 1
    while f is not None and (f.f_code.co_filename.startswith(torch_dir) or f.f_code.co_filename == __file__):
        f, level = f.f_back, level + 1
    return level


def _pre_step(opt, args, kwargs) -> None:
    if torch.compiler.is_compiling():  # (a compiled step: nothing to trace here; no decorator, which imports Dynamo)
        return
    try:
        w = _OPTIMIZERS.get(opt)
        n = sum(len(g["params"]) for g in opt.param_groups)
        if w is None or w.n != n:
            w = _scan(opt, n)
            _OPTIMIZERS[opt] = w
            return
        if w.done:
            return
        w.steps += 1
        keep = []
        for it in w.items:
            q = it[2]()
            if q is not None and q._version == it[3]:
                keep.append(it)
        w.items = keep
        if not keep:
            w.done = True
            return
        if w.steps < STEPS:
            return
        w.done = True
        stale = []
        for it in keep:
            q = it[2]()
            if q is None or q.grad is None:
                continue
            if it[0] == "copy":
                p = it[1]()
                if p is None or p.grad is not None:  # the float model is trained too: not this mistake
                    continue
            stale.append(it)
        msg = _message(opt, stale)
        if msg is not None:
            warnings.warn(msg, UserWarning, stacklevel=_user_stacklevel())
    except Exception:  # (advice only: never raise into the training loop)
        pass
