"""Fake quantizers for QAT: one module per quantized tensor, chosen from its :class:`QuantSpec`.

The class comes from a registry keyed by :attr:`QuantSpec.quantizer_kind` (affine static, affine
learned, affine dynamic, ternary, binary); ``WeightFakeQuantizer(spec, weight)`` and
``ActFakeQuantizer(spec, channels)`` (or their ``from_spec``) return the registered subclass, so
``isinstance(m, ActFakeQuantizer)`` holds for every activation quantizer. Each subclass handles
one kind, with the granularity as a typed value (:class:`~qatkit.qat.config.PerTensor`,
``PerAxis(n)``, ``PerGroup(g)``, ``PerToken``). Ranges of static activations come from an
:class:`Observer` submodule (min/max or moving-average min/max; PTQ adds more behind the same
interface). All numerics are the ``torch.ops.qatkit`` ops, so gradients are their straight-through
estimators computed in C++.

State and switches:
- buffers hold everything a resumed run needs (observer ranges, qparams, on/off flags, the
  stochastic-binarization step), so ``state_dict`` save/load resumes bit-identically;
- the spec is saved as ``_extra_state`` (with stored weight qparams, when a weight quantizer holds
  them); loading a checkpoint made with another spec raises ``ValueError`` naming the key;
- observer / fake-quant switches are one-element tensors read inside the fused op (no recompile
  when toggled) plus a Python mirror for the paths that branch in Python.

Distributed: when ``torch.distributed`` is initialized with more than one rank, an observer
all-reduces the batch min/max (MIN/MAX) before its update, so every rank holds the qparams a single
process would compute on the global batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from typing import Callable, Dict, Optional, Tuple, Type

import torch
from torch import nn

from .. import _json, ops
from .config import PerAxis, PerGroup, PerTensor, QuantSpec

__all__ = [
    "WeightFakeQuantizer",
    "ActFakeQuantizer",
    "weight_layout",
    "Observer",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "OBSERVERS",
    "register_observer",
    "AffineStaticWeightQuantizer",
    "AffineLearnedWeightQuantizer",
    "TernaryWeightQuantizer",
    "BinaryWeightQuantizer",
    "AffineStaticActQuantizer",
    "AffineLearnedActQuantizer",
    "AffineDynamicActQuantizer",
    "BinaryActQuantizer",
]


def weight_layout(spec: QuantSpec, weight_shape) -> tuple:
    """The effective (granularity, group_size) of a weight spec on a weight of this shape.

    Per-group groups run along the flattened input dimension (``in_features`` for Linear,
    ``in_channels / groups * kh * kw`` for convs); when it is not a multiple of the group size the
    weight falls back to per-channel. Returns ``("per_group", g)``, ``("per_channel", None)`` etc.
    """
    if spec.granularity != "per_group":
        return spec.granularity, None
    flat_in = math.prod(weight_shape[1:]) if len(weight_shape) > 1 else 0
    if flat_in == 0 or flat_in % spec.group_size != 0:
        return "per_channel", None
    return "per_group", spec.group_size


def _flag(on: bool) -> torch.Tensor:
    return torch.tensor([1 if on else 0], dtype=torch.uint8)


def recomputing() -> bool:
    """True while autograd's backward runs this forward again: activation checkpointing
    (``torch.utils.checkpoint``, reentrant or not) recomputes the checkpointed forward inside the
    backward pass. State updated by a training forward (observer ranges, BatchNorm running
    statistics) must not be updated a second time there, and the recomputed outputs must be the
    ones the first forward gave. False while torch.compile traces: a compiled graph applies its
    buffer updates once, in the forward (functionalized), and its backward recomputes no update."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


def _check_observed_at_trace(quantizer: nn.Module) -> bool:
    """``quantizer._check_observed()`` run natively while ``torch.compile`` traces (outside the
    graph: it reads flag buffers on the host and may warn), so an eval-mode graph traced before the
    quantizer saw data warns as an eager call does. Before, a compiled static quantizer said
    nothing, and a compiled unobserved LSQ quantizer broke a ``fullgraph=True`` trace ("Attempted to
    call function marked as skipped": the warning)."""
    from torch._subclasses.fake_tensor import is_fake

    if not is_fake(quantizer.fake_quant_on):  # (non-strict torch.export runs this on fake tensors: no values)
        quantizer._check_observed(sync=False)
    return True


# torch._dynamo.assume_constant_result's mark (the decorator only sets it), set here without
# importing Dynamo at `import qatkit` (1.0 s of a 1.1 s import); test_modules.py checks that the
# decorator still marks a function this way
_check_observed_at_trace._dynamo_marked_constant = True


def _dist_world() -> int:
    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


def keep_float32(fn):
    """``fn`` of ``Module._apply`` (``.double()``, ``.half()``, ``.to(...)``) that moves float32
    tensors between devices but keeps them float32: quantizer state (ranges, scales, learned step
    sizes) stays float32 whatever dtype the model computes in, as the ops require."""

    def apply(t):
        out = fn(t)
        if t.dtype == torch.float32 and out.is_floating_point() and out.dtype != torch.float32:
            out = out.float()
        return out

    return apply


def _encode_extra(extra: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(extra, sort_keys=True).encode("utf-8")), dtype=torch.uint8)


def _same_value(saved, mine) -> bool:
    """A recorded spec field against the model's, as the C++ reader compares them: == and also no
    bool for a number (True == 1) and no float for an int field (8.0 == 8; JSON keeps the two apart,
    and C++'s as_int refuses 8.0)."""
    return (saved == mine and isinstance(saved, bool) == isinstance(mine, bool)
            and not (type(mine) is int and type(saved) is float))


def _same_fields(saved, mine: dict) -> bool:
    return isinstance(saved, dict) and saved.keys() == mine.keys() and all(_same_value(saved[k], mine[k]) for k in mine)


def _decode_extra(state, key: str) -> dict:
    """The recorded extra state: a uint8 JSON tensor, or the dict older checkpoints held."""
    if isinstance(state, dict):
        return state
    if isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.dim() == 1:
        try:
            out = _json.loads(bytes(state.tolist()).decode("utf-8"))
        except ValueError as e:  # (UnicodeDecodeError and json.JSONDecodeError are ValueErrors)
            raise ValueError(f"load_state_dict: key '{key}' is not a qatkit quantizer record ({e})") from e
        if isinstance(out, dict):
            return out
    raise ValueError(
        f"load_state_dict: key '{key}' must hold a qatkit quantizer record (a uint8 JSON tensor), got "
        f"{type(state).__name__}"
    )


def _check_spec(spec) -> QuantSpec:
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    return spec


# ---------------------------------------------------------------- observers


def global_range(x: torch.Tensor, axis: Optional[int]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """This batch's (min, max) per tensor or per channel along ``axis`` (float32, 1-d), all-reduced
    over the ranks; ``(None, None)`` when no rank's batch held an element. A rank with an empty
    batch joins the collective with +inf / -inf (the identities of MIN / MAX): skipping it, or
    reducing an empty tensor (torch raises), left the other ranks waiting in the all-reduce or
    pairing it with the next collective (DDP's gradient buckets)."""
    xd = x.detach()
    ax = None if axis is None else axis % max(x.dim(), 1)
    n = 1 if ax is None else (x.shape[ax] if x.dim() else 1)
    if x.numel() == 0:
        lo = torch.full((n,), float("inf"), dtype=torch.float32, device=x.device)
        hi = torch.full((n,), float("-inf"), dtype=torch.float32, device=x.device)
    elif ax is None:
        lo, hi = xd.amin().reshape(1), xd.amax().reshape(1)
    else:
        dims = [d for d in range(x.dim()) if d != ax]
        lo, hi = (xd.amin(dim=dims), xd.amax(dim=dims)) if dims else (xd, xd)
    lo, hi = lo.float().reshape(-1), hi.float().reshape(-1)
    # NaN / Inf on any rank: every rank raises (one rank raising alone would leave the others in the
    # collective); the flag rides in the same all-reduce, as -1 under MIN
    finite = torch.isfinite(lo).all() & torch.isfinite(hi).all()  # (empty: +inf / -inf, not "bad")
    bad_t = (~finite).to(lo.dtype) if x.numel() else torch.zeros((), dtype=lo.dtype, device=lo.device)
    lo = torch.where(bad_t > 0, torch.full_like(lo, float("inf")), lo)
    hi = torch.where(bad_t > 0, torch.full_like(hi, float("-inf")), hi)
    t = torch.cat([lo, -hi, -bad_t.reshape(1)])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    lo, hi = t[:n].contiguous(), (-t[n : 2 * n]).contiguous()
    # one host read for both decisions (on a GPU, one sync; the caller's flag read is another)
    flag, empty = torch.stack([t[-1], (lo > hi).all().to(t.dtype)]).tolist()
    if flag < 0:
        raise ValueError(
            "the observed batch holds NaN or Inf on " + ("this rank" if bool(bad_t) else "another rank")
            + "; the observer is left as it was on every rank"
        )
    if empty:
        return None, None
    return lo, hi


def flags_written(owner: nn.Module, names: Tuple[str, ...], key: str) -> bool:
    """Whether one of ``owner``'s flag buffers ``names`` was written since the last call (by
    version; the versions seen are kept in ``owner.__dict__[key]``), so its Python mirror needs a
    fresh read. Always False on an accelerator: reading a flag there is a host sync, and DDP's
    buffer broadcast writes the flags before every forward; mirrors there follow the owner's own
    switches and ``load_state_dict`` only."""
    b = owner._buffers
    try:
        v = 0
        for n in names:
            v += b[n]._version
    except RuntimeError:  # an inference tensor (made under torch.inference_mode) keeps no version
        v = sum(tensor_version(b[n]) for n in names)
    if v == owner.__dict__.get(key):
        return False
    owner.__dict__[key] = v
    return b[names[0]].device.type == "cpu"


def tensor_version(t: torch.Tensor) -> int:
    """``t``'s version (every in-place write bumps it); -1 for an inference tensor (made under
    torch.inference_mode), which keeps none and raises when asked."""
    return -1 if t.is_inference() else t._version


def _bump_version(t: torch.Tensor) -> None:
    """Bump ``t``'s version without changing it (a self copy): what holds ``t`` to check for edits
    (a converted layer's kernel plan, qatkit.qat.integer) sees it replaced. Inference tensors keep
    no version."""
    if not t.is_inference():
        with torch.no_grad():
            t.copy_(t)


class _ReplacedTensorsBump:
    """Mixin: assigning a new tensor to a buffer or parameter that holds one (``observer.scale =
    new``) bumps the old tensor's version, so a converted layer whose kernel plan read the old one
    rebuilds its plan, as after an in-place edit (the quantizer does not know its layer)."""

    def __setattr__(self, name, value):
        old = None
        if isinstance(value, torch.Tensor):
            old = self.__dict__.get("_buffers", {}).get(name)
            if old is None:
                old = self.__dict__.get("_parameters", {}).get(name)
        super().__setattr__(name, value)
        if old is not None and old is not value:
            _bump_version(old)


class Observer(_ReplacedTensorsBump, nn.Module):
    """Observes tensors into buffers and produces the qparams of an affine spec.

    Subclasses keep every statistic in buffers (so it checkpoints) and combine ranks in
    :meth:`observe` when ``torch.distributed`` runs more than one process (``sync_distributed``).

    Args:
        spec: the tensor's affine :class:`QuantSpec` (its bits, symmetry and momentum).
        channels: number of channels for per-axis observation (1 otherwise).
        axis: the channel axis of the observed tensors, or ``None`` for per tensor.
    """

    def __init__(self, spec: QuantSpec, channels: int = 1, axis: Optional[int] = None):
        super().__init__()
        self.spec = _check_spec(spec)
        self.axis = axis
        n = channels if axis is not None else 1
        self.register_buffer("scale", torch.ones(n, dtype=torch.float32))
        self.register_buffer("zero_point", torch.zeros(n, dtype=torch.int32))
        self.sync_distributed = True

    def _apply(self, fn, recurse=True):
        return super()._apply(keep_float32(fn), recurse)

    def observe(self, x: torch.Tensor) -> None:
        """Fold ``x`` into the statistics and refresh :attr:`scale` / :attr:`zero_point`."""
        raise NotImplementedError

    def calculate_qparams(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scale float32, zero_point int32) for the spec from the statistics so far."""
        return self.scale.detach().clone(), self.zero_point.detach().clone()

    @property
    def has_observed(self) -> bool:
        """False until the observer has seen data (its qparams are meaningless before)."""
        raise NotImplementedError

    def fake_quantize(self, x: torch.Tensor, observe_flag: torch.Tensor, fake_quant_on: torch.Tensor) -> torch.Tensor:
        """Observe ``x`` (when ``observe_flag`` holds 1) and fake-quantize it with the refreshed
        qparams (when ``fake_quant_on`` holds 1). The generic form; subclasses may fuse it."""
        if bool(observe_flag.item()):
            with torch.no_grad():
                self.observe(x)
        if not bool(fake_quant_on.item()):
            return x
        s = self.spec
        return ops.fake_quantize(x, self.scale, self.zero_point, s.quant_min, s.quant_max, self.axis)

    def fake_quantize_again(self, x: torch.Tensor, fake_quant_on: torch.Tensor) -> torch.Tensor:
        """What :meth:`fake_quantize` gave for ``x`` when it observed ``x``, without observing it
        again (activation checkpointing recomputes a forward in the backward pass). Here: the
        qparams now, which that observation refreshed."""
        return self.fake_quantize(x, torch.zeros_like(fake_quant_on), fake_quant_on)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe ``x`` and return it unchanged (calibration)."""
        with torch.no_grad():
            self.observe(x)
        return x


class MinMaxObserver(Observer):
    """Running min / max of the observed tensors (torch.ao's MinMaxObserver arithmetic for the
    qparams). Per tensor or per channel along ``axis``."""

    moving_average = False

    def __init__(self, spec: QuantSpec, channels: int = 1, axis: Optional[int] = None):
        super().__init__(spec, channels, axis)
        n = self.scale.numel()
        self.register_buffer("running_min", torch.full((n,), float("inf"), dtype=torch.float32))
        self.register_buffer("running_max", torch.full((n,), float("-inf"), dtype=torch.float32))
        self.register_buffer("_on", _flag(True), persistent=False)

    @property
    def has_observed(self) -> bool:
        return bool(torch.isfinite(self.running_min).all())

    def _update(self, stats: torch.Tensor, axis: Optional[int], flag: torch.Tensor) -> None:
        s = self.spec
        ops.observer_update(
            stats,
            self.running_min,
            self.running_max,
            self.scale,
            self.zero_point,
            flag,
            s.momentum,
            self.moving_average,
            s.quant_min,
            s.quant_max,
            s.symmetric,
            axis,
        )

    def _observe_global(self, x: torch.Tensor, flag: torch.Tensor) -> None:
        """All-reduce this batch's min/max over ranks, then update from them."""
        lo, hi = global_range(x, self.axis)
        if lo is None:  # no rank had data
            return
        # a 2-column tensor whose min/max per row are the global min/max: the observer's own
        # update then gives exactly the single-process result on the global batch
        self._update(torch.stack([lo, hi], dim=-1), None if self.axis is None else 0, flag)

    def _distributed(self) -> bool:
        return self.sync_distributed and _dist_world() > 1

    def observe(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            if self._distributed():
                self._observe_global(x, self._on)
            else:
                self._update(x.detach(), self.axis, self._on)

    def fake_quantize(self, x: torch.Tensor, observe_flag: torch.Tensor, fake_quant_on: torch.Tensor) -> torch.Tensor:
        # one fused op (observe + fake quantize, flags read inside: no recompile when toggled);
        # across ranks the batch statistics are all-reduced first
        if self._distributed() and bool(observe_flag.item()):
            with torch.no_grad():
                self._observe_global(x, observe_flag)
            observe_flag = torch.zeros_like(observe_flag)
        s = self.spec
        return ops.fused_observe_fake_quantize(
            x,
            self.running_min,
            self.running_max,
            self.scale,
            self.zero_point,
            observe_flag,
            fake_quant_on,
            s.momentum,
            self.moving_average,
            s.quant_min,
            s.quant_max,
            s.symmetric,
            self.axis,
        )


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of the batch min / max (``momentum`` = weight of a new batch;
    Jacob et al.); the first batch sets the range."""

    moving_average = True


#: Observer classes by :attr:`QuantSpec.observer` name.
OBSERVERS: Dict[str, Type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
}


def register_observer(name: str) -> Callable[[Type[Observer]], Type[Observer]]:
    """Class decorator adding an :class:`Observer` subclass under ``name``."""

    def deco(cls: Type[Observer]) -> Type[Observer]:
        if not (isinstance(cls, type) and issubclass(cls, Observer)):
            raise TypeError(f"register_observer: {cls!r} is not an Observer subclass")
        OBSERVERS[name] = cls
        return cls

    return deco


# ---------------------------------------------------------------- the registry


class _SpecModule(_ReplacedTensorsBump, nn.Module):
    """Spec bookkeeping shared by every quantizer: the registry, extra state, checkpoint
    compatibility, the fake-quant switch and its Python mirror."""

    _registry: Dict[str, type]  # set per family (weights, activations)
    _family = "quantizer"

    def __new__(cls, spec=None, *args, **kwargs):
        if "_registry" in cls.__dict__ and spec is not None:  # the family's base: choose the subclass
            cls = cls._registry_class(_check_spec(spec))
        return super().__new__(cls)

    @classmethod
    def _check_family(cls, spec: QuantSpec) -> None:
        """Raises ValueError for specs this family cannot take (before the registry lookup)."""

    @classmethod
    def _registry_class(cls, spec: QuantSpec) -> type:
        cls._check_family(spec)
        key = spec.quantizer_kind
        if key not in cls._registry:
            raise ValueError(
                f"{cls.__name__}: no {cls._family} quantizer for {spec.describe()!r} (kind {key!r}); "
                f"registered: {', '.join(sorted(cls._registry))}"
            )
        return cls._registry[key]

    @classmethod
    def register(cls, key: str):
        """Class decorator registering a subclass for specs whose ``quantizer_kind`` is ``key``."""

        def deco(sub):
            if not issubclass(sub, cls):
                raise TypeError(f"{cls.__name__}.register: {sub.__name__} must subclass {cls.__name__}")
            cls._registry[key] = sub
            return sub

        return deco

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = _check_spec(spec)
        self.register_buffer("fake_quant_on", _flag(True))
        self._fq_enabled = True
        #: where the quantizer sits ("features.3.input_fake_quant"; set by prepare_qat), for messages
        self.qualified_name = ""

    def _where(self) -> str:
        return f"'{self.qualified_name}'" if self.qualified_name else f"this {type(self).__name__}"

    def _named(self, fn, t: torch.Tensor) -> torch.Tensor:
        """fn(t), its ValueError (a non-finite weight or input the op refuses) prefixed with where the
        quantizer sits: the op cannot know which of a model's layers it ran for."""
        try:
            return fn(t)
        except ValueError as e:
            if not self.qualified_name or str(e).startswith(self._where()):
                raise
            raise ValueError(f"{self._where()}: {e}") from e

    def _apply(self, fn, recurse=True):
        # the model may move to float64 / float16 / bfloat16; quantizer state stays float32
        return super()._apply(keep_float32(fn), recurse)

    def _extra(self) -> dict:
        """What the quantizer records next to its buffers (the spec; subclasses add to it)."""
        return {"spec": dataclasses.asdict(self.spec)}

    def get_extra_state(self) -> torch.Tensor:
        # a uint8 tensor of JSON, so a state_dict holds tensors only (safetensors, save_pretrained)
        return _encode_extra(self._extra())

    def set_extra_state(self, state):
        pass  # compared in _load_from_state_dict, where the key is known

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs):
        key = prefix + "_extra_state"
        if key in state_dict:
            extra = _decode_extra(state_dict[key], key)
            state_dict[key] = extra
            saved = extra.get("spec")
            if isinstance(saved, dict):  # fields added since the checkpoint was written take their defaults
                saved = {**{f.name: f.default for f in dataclasses.fields(QuantSpec) if f.name not in saved}, **saved}
            mine = dataclasses.asdict(self.spec)
            if not _same_fields(saved, mine):
                # (a key the spec does not have counts: a field renamed by corruption read as "[] differ")
                diff = sorted({k for k in mine if saved is None or not _same_value(saved.get(k), mine.get(k))}
                              | (set(saved) - set(mine) if isinstance(saved, dict) else set()))
                raise ValueError(
                    f"load_state_dict: key '{key}' holds a quantizer saved with another spec "
                    f"(fields {diff} differ: saved {saved and {k: saved.get(k) for k in diff}}, "
                    f"model { ({k: mine.get(k) for k in diff}) }); prepare the model with the checkpoint's config"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs)
        self._sync_mirrors()

    #: the flag buffers whose Python mirrors (``_fq_enabled``, ...) the eager forward branches on
    _MIRRORED: Tuple[str, ...] = ("fake_quant_on",)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in self._MIRRORED:  # a flag buffer replaced: its mirror is synced on the next call
            self.__dict__.pop("_mirror_version", None)

    def _mirrors_current(self) -> None:
        """Sync the Python mirrors with their flag buffers when one was written in place by
        something other than the quantizer's own switches: ``AveragedModel`` / an EMA copying or
        averaging buffers into a copy made earlier, a user's ``fake_quant_on.fill_(0)``. A stale
        mirror made an EMA copy of an LSQ model re-initialize its averaged step sizes from the
        first batch it evaluated. Eager calls compare the flags' versions (~0.3-0.5 us a call);
        a compiled graph reads the tensor flags themselves or guards on the mirrors it was traced
        with."""
        if flags_written(self, self._MIRRORED, "_mirror_version"):
            self._sync_mirrors()

    def _sync_mirrors(self):
        self._fq_enabled = bool(self.fake_quant_on.item())

    @property
    def fq_enabled(self) -> bool:
        """Whether fake quantization is on (the flag buffer, through its synced mirror)."""
        self._mirrors_current()
        return self._fq_enabled

    def enable_fake_quant(self, on: bool = True) -> None:
        """Turn fake quantization on or off (off: the tensor passes through unchanged)."""
        self.fake_quant_on.fill_(1 if on else 0)
        self._fq_enabled = bool(on)

    def extra_repr(self) -> str:
        return self.spec.describe()


# ---------------------------------------------------------------- weight quantizers


class WeightFakeQuantizer(_SpecModule):
    """Fake-quantizes a layer's weight (output channel = dim 0).

    ``WeightFakeQuantizer(spec, weight)`` returns the subclass registered for
    ``spec.quantizer_kind`` (:class:`AffineStaticWeightQuantizer`,
    :class:`AffineLearnedWeightQuantizer`, :class:`TernaryWeightQuantizer`,
    :class:`BinaryWeightQuantizer`).

    Args:
        spec: the weight's :class:`QuantSpec`.
        weight: the float weight (its shape fixes the layout; LSQ step sizes start from it).
    """

    _registry: Dict[str, type] = {}
    _family = "weight"

    @classmethod
    def from_spec(cls, spec: QuantSpec, weight: torch.Tensor) -> "WeightFakeQuantizer":
        return WeightFakeQuantizer(spec, weight)

    @classmethod
    def _check_family(cls, spec: QuantSpec) -> None:
        if spec.scale == "dynamic":
            raise ValueError("QuantSpec.scale 'dynamic' is for activations; weights use 'static' or 'learned'")
        if spec.granularity == "per_token":
            raise ValueError("QuantSpec.granularity 'per_token' is for activations")

    def __init__(self, spec: QuantSpec, weight: torch.Tensor):
        super().__init__(spec)
        self._check_family(spec)
        self.weight_shape = tuple(weight.shape)
        self.granularity, self.group_size = weight_layout(spec, self.weight_shape)
        #: True when per-group fell back to per-channel (reported by prepare_qat)
        self.fell_back = spec.granularity == "per_group" and self.granularity != "per_group"
        self.axis = 0 if self.granularity == "per_channel" else None
        #: the effective granularity as a typed value
        self.layout = (
            PerGroup(self.group_size)
            if self.granularity == "per_group"
            else (PerAxis(0) if self.axis is not None else PerTensor())
        )

    #: set by :func:`qatkit.qat.calibrate` while it runs (weights cannot change then): the
    #: fake-quantized weight is computed once per weight tensor and reused for every batch
    _calibration_cache: Optional[dict] = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            self._mirrors_current()
        if not self._fq_enabled:
            return w
        cache = self._calibration_cache
        if cache is not None and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            key = (id(w), tensor_version(w))  # (a model prepared under inference_mode: no version)
            hit = cache.get(key)
            if hit is None:
                hit = cache[key] = self._named(self.quantize, w)
            return hit
        if torch.compiler.is_compiling():
            return self.quantize(w)
        return self._named(self.quantize, w)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """The fake-quantized weight (the switch aside)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        fb = " (per-group fell back to per-channel)" if self.fell_back else ""
        return super().extra_repr() + fb


_SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def round_scale(scale: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """``scale`` rounded to ``scale_dtype`` (QuantSpec.scale_dtype) and back to float32: round to
    nearest (subnormals included); a positive scale that would round to 0 or overflow becomes the
    dtype's smallest positive / largest finite value (a zero scale stays 0: an all-zero channel)."""
    dt = _SCALE_DTYPES.get(scale_dtype)
    if dt is None:
        return scale
    r = scale.clamp(max=torch.finfo(dt).max).to(dt).float()
    smallest = {torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133}[dt]
    return torch.where((scale > 0) & (r == 0), torch.full_like(r, smallest), r)


def _with_scale(y: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, axis: Optional[int], scale_dtype: str) -> torch.Tensor:
    """The ternary / binary fake-quantized weight ``y`` (values ``codes * scale``) recomputed with
    the scale rounded to ``scale_dtype``; the gradient stays ``y``'s (the op's estimator)."""
    if scale_dtype == "float32":
        return y
    codes = torch.sign(y.detach())
    r = round_scale(scale, scale_dtype)
    if axis is not None:
        r = r.reshape([-1] + [1] * (w.dim() - 1))
    return y + (codes * r.to(y.dtype) - y).detach()


@WeightFakeQuantizer.register("affine_static")
class AffineStaticWeightQuantizer(WeightFakeQuantizer):
    """Affine integer weights with qparams from the weight's min/max: recomputed from the current
    weight at every forward (QAT), or stored (:meth:`store_qparams`: buffers kept through
    ``convert`` and checkpoints, e.g. for PTQ's learned rounding and clipping)."""

    def __init__(self, spec: QuantSpec, weight: torch.Tensor):
        super().__init__(spec, weight)
        self.stored_scale: Optional[torch.Tensor] = None
        self.stored_zero_point: Optional[torch.Tensor] = None

    def _rows(self, w: torch.Tensor) -> torch.Tensor:
        # per-group groups run along the flattened input dim
        return w.reshape(w.shape[0], -1) if isinstance(self.layout, PerGroup) else w

    def computed_qparams(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) from the min/max of weight ``w``."""
        s = self.spec
        scale, zp = ops.choose_qparams(self._rows(w.detach()), s.quant_min, s.quant_max, s.symmetric, **self.layout.op_args())
        return round_scale(scale, s.scale_dtype), zp

    @property
    def has_stored_qparams(self) -> bool:
        return self.stored_scale is not None

    @torch.no_grad()
    def store_qparams(
        self,
        weight: Optional[torch.Tensor] = None,
        scale: Optional[torch.Tensor] = None,
        zero_point: Optional[torch.Tensor] = None,
    ) -> None:
        """Fix the qparams: given ``scale`` / ``zero_point`` (validated), or those of ``weight``.

        Raises:
            ValueError: neither a weight nor both qparams given; qparams of the wrong shape or
                values (non-finite or non-positive scale, zero point outside the code range).
        """
        if scale is None and zero_point is None:
            if weight is None:
                raise ValueError("store_qparams: give the weight, or both scale and zero_point")
            scale, zero_point = self.computed_qparams(weight)
        elif scale is None or zero_point is None:
            raise ValueError("store_qparams: give both scale and zero_point, or neither")
        s = self.spec
        ref_shape = self.weight_shape if weight is None else tuple(weight.shape)
        probe = torch.empty(ref_shape, device="meta")
        expected = ops.choose_qparams(self._rows(probe), s.quant_min, s.quant_max, s.symmetric, **self.layout.op_args())[0]
        scale = torch.as_tensor(scale, dtype=torch.float32).detach().clone()
        zero_point = torch.as_tensor(zero_point).detach().clone()
        if tuple(scale.shape) != tuple(expected.shape) or tuple(zero_point.shape) != tuple(expected.shape):
            raise ValueError(
                f"store_qparams: scale and zero_point must have shape {tuple(expected.shape)} for this weight's "
                f"layout {self.layout}, got {tuple(scale.shape)} and {tuple(zero_point.shape)}"
            )
        ops.validate_qparams(scale, zero_point, s.quant_min, s.quant_max)
        # stored scales follow the spec's scale dtype too (rounded to nearest)
        self.stored_scale, self.stored_zero_point = round_scale(scale, s.scale_dtype), zero_point.to(torch.int32)

    def recompute_qparams(self) -> None:
        """Back to qparams from the current weight at every forward."""
        self.stored_scale = self.stored_zero_point = None

    def qparams(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) the forward uses for weight ``w``."""
        if self.stored_scale is not None:
            return self.stored_scale.to(w.device), self.stored_zero_point.to(w.device)
        return self.computed_qparams(w)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        s = self.spec
        sc, zp = self.qparams(w)
        w2 = self._rows(w)
        return ops.fake_quantize(w2, sc, zp, s.quant_min, s.quant_max, **self.layout.op_args()).reshape(w.shape)

    def _extra(self) -> dict:
        state = super()._extra()
        if self.stored_scale is not None:
            # float32 -> Python float -> JSON -> float32 round-trips exactly
            state["qparams"] = {
                "shape": list(self.stored_scale.shape),
                "scale": self.stored_scale.reshape(-1).tolist(),
                "zero_point": self.stored_zero_point.reshape(-1).tolist(),
            }
        return state

    def set_extra_state(self, state):
        q = state.get("qparams") if isinstance(state, dict) else None
        if q is None:
            self.recompute_qparams()
        elif isinstance(q.get("scale"), torch.Tensor):  # the dict form of older checkpoints
            self.store_qparams(scale=q["scale"], zero_point=q["zero_point"])
        else:
            shape = tuple(q["shape"])
            self.store_qparams(
                scale=torch.tensor(q["scale"], dtype=torch.float32).reshape(shape),
                zero_point=torch.tensor(q["zero_point"], dtype=torch.int32).reshape(shape),
            )

    def extra_repr(self) -> str:
        return super().extra_repr() + (" (stored qparams)" if self.stored_scale is not None else "")


@WeightFakeQuantizer.register("affine_learned")
class AffineLearnedWeightQuantizer(WeightFakeQuantizer):
    """LSQ weights (LSQ+ offsets when asymmetric): trainable step sizes per tensor or channel,
    initialized ``s = 2 mean|w| / sqrt(Q_P)`` (the LSQ paper)."""

    def __init__(self, spec: QuantSpec, weight: torch.Tensor):
        super().__init__(spec, weight)
        w = weight.detach().float()
        qp = spec.quant_max
        init = self._initial_scale(w)
        self.scale = nn.Parameter(init)
        # the step sizes prepare_qat computed, checked once at the layer's first training forward
        # (check_weight_since_prepare); not state: a loaded checkpoint's step sizes differ from them
        self.__dict__["_prepared_init"] = init.detach().clone()
        zp = torch.zeros_like(init)
        if spec.symmetric:
            self.register_buffer("zero_point", zp)
        else:
            self.zero_point = nn.Parameter(zp)
        per_scale = max(w.numel() // max(init.numel(), 1), 1)  # (empty weights: any factor works)
        self.grad_factor = ops.lsq_grad_factor(per_scale, qp) if spec.lsq_grad_scale else 1.0

    def _initial_scale(self, w: torch.Tensor) -> torch.Tensor:
        qp = self.spec.quant_max
        if self.axis is None:
            init = 2 * w.abs().mean().reshape(1) / math.sqrt(qp)
        else:
            init = 2 * w.abs().flatten(1).mean(1) / math.sqrt(qp)
        # an empty weight (Linear(0, n)) has no mean: start such step sizes at 1
        init = torch.where(torch.isfinite(init), init, torch.ones_like(init))
        return init.clamp(min=1e-6)

    @torch.no_grad()
    def init_from_weight(self, weight: torch.Tensor) -> None:
        """Initialize the step sizes from ``weight`` again (LSQ's ``2 mean|w| / sqrt(Q_P)``): the
        layer calls this when ``load_state_dict`` gives it new weights without step sizes (a float
        checkpoint loaded into a prepared model), which were initialized from the weights it had."""
        self.scale.copy_(self._initial_scale(weight.detach().float().to(self.scale.device)))
        self.__dict__["_prepared_init"] = self.scale.detach().clone()

    @torch.no_grad()
    def check_weight_since_prepare(self, weight: torch.Tensor) -> None:
        """Called by the layer at its first training forward with its weight. LSQ starts the step
        sizes from the weights (``2 mean|w| / sqrt(Q_P)``); ``prepare_qat`` computed them from the
        weights the layer had then. Weights written since in place (pretrained weights copied in
        with ``.data.copy_`` / ``copy_`` under ``no_grad``, an ``nn.init`` pass, a loader that
        assigns tensors) left them stale, silently (``load_state_dict`` re-initialized them already,
        :meth:`init_from_weight`). Where the weights changed and the step sizes are still the
        prepared ones, they start from the current weights now; step sizes set or trained since
        (a QAT checkpoint, a DDP broadcast, an EMA) are kept."""
        ref = self.__dict__.pop("_prepared_init", None)
        # (step sizes frozen with requires_grad_(False) are the user's: e.g. a SWA copy whose weights
        # were averaged, in update_bn's training-mode forward)
        if ref is None or not self.scale.requires_grad or not torch.equal(self.scale.detach(), ref.to(self.scale.device)):
            return
        want = self._initial_scale(weight.detach().float().to(self.scale.device))
        if not torch.equal(want, self.scale.detach()):
            self.scale.copy_(want)

    def qparams(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) the forward uses (the learned ones, scale at least float32 eps)."""
        return self.scale.detach().clamp(min=torch.finfo(torch.float32).eps), self.zero_point.detach()

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return ops.fake_quantize_learnable(
            w, self.scale, self.zero_point, s.quant_min, s.quant_max, self.axis, grad_factor=self.grad_factor
        )


@WeightFakeQuantizer.register("ternary")
class TernaryWeightQuantizer(WeightFakeQuantizer):
    """Ternary weights {-a, 0, +a} (``absmean`` / ``twn``), per tensor or channel."""

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        y = ops.ternarize(w, self.spec.method, self.axis)
        if self.spec.scale_dtype == "float32":
            return y
        return _with_scale(y, w, ops.ternary_codes(w.detach(), self.spec.method, self.axis)[1], self.axis, self.spec.scale_dtype)


@WeightFakeQuantizer.register("binary")
class BinaryWeightQuantizer(WeightFakeQuantizer):
    """Binary weights {-a, +a}; stochastic (BinaryConnect) in training when the spec says so, with
    a step-counter seed buffer so a resumed run draws the same bits."""

    def __init__(self, spec: QuantSpec, weight: torch.Tensor):
        super().__init__(spec, weight)
        if spec.stochastic:
            self.register_buffer("step", torch.zeros(1, dtype=torch.int64))

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        s = self.spec
        seed = None
        if s.stochastic and self.training:
            # +1 per training call, except when activation checkpointing recomputes this forward
            # inside the backward pass: then the same step, so the same bits (ops.advance_step)
            seed = ops.advance_step(self.step)
        y = ops.binarize(w, s.method, self.axis, s.estimator, seed=seed)
        if s.scale_dtype == "float32":
            return y
        return _with_scale(y, w, ops.binary_codes(w.detach(), s.method, self.axis)[1], self.axis, s.scale_dtype)


# ---------------------------------------------------------------- activation quantizers


class ActFakeQuantizer(_SpecModule):
    """Fake-quantizes a layer's input activation.

    ``ActFakeQuantizer(spec, channels)`` returns the subclass registered for
    ``spec.quantizer_kind`` (:class:`AffineStaticActQuantizer`, :class:`AffineLearnedActQuantizer`,
    :class:`AffineDynamicActQuantizer`, :class:`BinaryActQuantizer`).

    Args:
        spec: the activation's :class:`QuantSpec` (per-channel uses ``spec.axis``, e.g. 1 for NCHW).
        channels: number of channels for per-channel quantizers.
    """

    _registry: Dict[str, type] = {}
    _family = "activation"

    @classmethod
    def from_spec(cls, spec: QuantSpec, channels: int = 1) -> "ActFakeQuantizer":
        return ActFakeQuantizer(spec, channels)

    def __init__(self, spec: QuantSpec, channels: int = 1):
        super().__init__(spec)  # (checks the spec's type first)
        if spec.scale_dtype != "float32":
            raise ValueError(
                f"QuantSpec.scale_dtype {spec.scale_dtype!r} is for weight scales; activation scales stay float32"
            )
        self.layout = spec.layout
        self.axis = spec.axis if spec.granularity == "per_channel" else None
        self.channels = channels if self.axis is not None else 1
        self.sync_distributed = True

    @property
    def has_observed(self) -> bool:
        """False for a quantizer whose qparams come from data it has not seen yet."""
        return True

    def enable_observer(self, on: bool = True) -> None:
        """Turn the range observer on or off (static int activations; a no-op otherwise)."""

    _warned_unobserved = False

    def _warn_unobserved(self) -> None:
        if not self._warned_unobserved:
            self._warned_unobserved = True
            warnings.warn(
                f"activation quantizer {self._where()} runs before observing any data: its qparams are the "
                "initial scale 1 / zero point 0, not a calibrated range; run training or qatkit.qat.calibrate first",
                UserWarning,
                stacklevel=3,
            )

    def _check_observed(self, sync: bool = True) -> None:
        """Warn (once) when this quantizer computes with qparams no data has set yet. ``sync``:
        bring the flag mirrors up to date first (not while a compiled graph is traced, which has
        read them already: changing them there fails Dynamo's guards)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            self._mirrors_current()
        if not self._fq_enabled:
            return x
        if torch.compiler.is_compiling():
            return self.quantize(x)
        return self._named(self.quantize, x)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@ActFakeQuantizer.register("affine_static")
class AffineStaticActQuantizer(ActFakeQuantizer):
    """Affine integer activations with qparams from an :class:`Observer` (``spec.observer``;
    observed in training mode only). The observer's buffers are its state
    (``<prefix>.observer.running_min`` …); checkpoints written before observers were submodules
    (``<prefix>.running_min``) load too."""

    _MIRRORED = ("fake_quant_on", "observer_on")

    def __init__(self, spec: QuantSpec, channels: int = 1):
        if spec.granularity == "per_group":
            # a static range per group of channels is not implemented: observing per tensor under a
            # per-group spec would be a silent wrong answer
            raise ValueError(
                "QuantSpec.granularity 'per_group' for activations needs scale='dynamic' (ranges per token and "
                "group, computed at each call); static activation ranges are 'per_tensor' or 'per_channel'"
            )
        super().__init__(spec, channels)
        if spec.observer not in OBSERVERS:
            raise ValueError(f"QuantSpec.observer {spec.observer!r} is not registered; known: {sorted(OBSERVERS)}")
        self.observer = OBSERVERS[spec.observer](spec, channels, self.axis)
        self.register_buffer("observer_on", _flag(True))
        self._obs_enabled = True
        self._observed = False  # Python mirror of observer.has_observed (refreshed on load)
        self._warned_unobserved = False

    # the observer's state under the names the quantizer always had
    running_min = property(lambda self: self.observer.running_min)
    running_max = property(lambda self: self.observer.running_max)
    scale = property(lambda self: self.observer.scale)
    zero_point = property(lambda self: self.observer.zero_point)

    @property
    def sync_distributed(self) -> bool:
        return self.observer.sync_distributed

    @sync_distributed.setter
    def sync_distributed(self, on: bool) -> None:
        if "observer" in self._modules:
            self.observer.sync_distributed = bool(on)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("running_min", "running_max", "scale", "zero_point"):
            old, new = prefix + name, prefix + "observer." + name
            if old in state_dict and new not in state_dict:
                state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _sync_mirrors(self):
        super()._sync_mirrors()
        self._obs_enabled = bool(self.observer_on.item())
        self._observed = None  # unknown until the observer's own buffers are loaded (after this)

    def enable_observer(self, on: bool = True) -> None:
        self.observer_on.fill_(1 if on else 0)
        self._obs_enabled = bool(on)

    @property
    def has_observed(self) -> bool:
        return self.observer.has_observed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the observer runs in training mode only; its on/off switch and the fake-quant switch are
        # tensor flags read inside the op (toggling them does not recompile a compiled model)
        if not self.training:
            return self._eval_forward(x)
        flag = self.observer_on
        if torch.compiler.is_compiling():
            # compiled graphs read only the tensor flags (no Python mirror: toggling never recompiles)
            return self.observer.fake_quantize(x, flag, self.fake_quant_on)
        self._mirrors_current()
        observing = self._obs_enabled
        # activation checkpointing recomputes this forward in the backward pass: the first forward
        # observed this batch already (observing it again would move the range twice per step)
        again = observing and recomputing()
        if self._observed is None:
            self._observed = self.observer.has_observed
        try:
            if again:
                return self.observer.fake_quantize_again(x, self.fake_quant_on)
            y = self.observer.fake_quantize(x, flag, self.fake_quant_on)
        except ValueError as e:  # name the layer (the op cannot know it)
            raise ValueError(f"{self._where()}: {e}") from e
        if observing:
            self._observed = True
        return y

    def _check_observed(self, sync: bool = True) -> None:
        if sync:
            self._mirrors_current()
        if not self._observed:  # (None: unknown; False: perhaps its buffers were copied in since)
            self._observed = self.observer.has_observed
        if not self._observed and (self._fq_enabled if sync else bool(self.fake_quant_on.item())):
            self._warn_unobserved()

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eval mode never observes: a plain fake_quantize with the current qparams, so eval and
        exported graphs hold no buffer mutation (the fused op's outputs are mutable buffers)."""
        if not torch.compiler.is_compiling():
            self._check_observed()
        else:
            _check_observed_at_trace(self)
        if not self._fq_enabled:
            return x
        if getattr(self.observer, "dirty", False):  # histogram observers refresh their qparams lazily
            self.observer.refresh()
        s = self.spec
        return ops.fake_quantize(x, self.scale, self.zero_point, s.quant_min, s.quant_max, self.axis)

    def frozen_qparams(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) a converted model uses for this input."""
        return self.observer.calculate_qparams()


@ActFakeQuantizer.register("affine_learned")
class AffineLearnedActQuantizer(ActFakeQuantizer):
    """LSQ / LSQ+ activations: trainable step size (and offset when asymmetric), initialized from
    the first batch's range (all-reduced across ranks)."""

    _MIRRORED = ("fake_quant_on", "initialized")

    def __init__(self, spec: QuantSpec, channels: int = 1):
        super().__init__(spec, channels)
        n = self.channels
        self.scale = nn.Parameter(torch.ones(n, dtype=torch.float32))
        if spec.symmetric:
            self.register_buffer("zero_point", torch.zeros(n, dtype=torch.float32))
        else:
            self.zero_point = nn.Parameter(torch.zeros(n, dtype=torch.float32))
        self.register_buffer("initialized", _flag(False))
        self._initialized = False

    def _sync_mirrors(self):
        super()._sync_mirrors()
        self._initialized = bool(self.initialized.item())

    @property
    def has_observed(self) -> bool:
        self._mirrors_current()
        return self._initialized

    def _check_observed(self, sync: bool = True) -> None:
        if not (self.has_observed if sync else bool(self.initialized.item())):
            self._warn_unobserved()

    def _local_range(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """This batch's (min, max) per channel of ``self.axis`` (or of the whole tensor), flat."""
        xf = x.detach().float()
        dims = [d for d in range(x.dim()) if d != (self.axis % x.dim() if self.axis is not None else -999)]
        lo = xf.amin(dim=dims) if dims else xf
        hi = xf.amax(dim=dims) if dims else xf
        return lo.reshape(-1), hi.reshape(-1)

    def _qparams_from_range(self, lo: torch.Tensor, hi: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The initial (step size, offset) for the range [lo, hi] (widened to hold 0)."""
        s = self.spec
        lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
        if s.symmetric:
            scale = torch.maximum(-lo, hi) / s.quant_max
            zp = torch.zeros_like(scale)
        else:
            scale = (hi - lo) / (s.quant_max - s.quant_min)
            scale = scale.clamp(min=1e-6)
            zp = s.quant_min - lo / scale
        return scale.clamp(min=1e-6), zp

    @staticmethod
    def _range_ok(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return (torch.isfinite(lo) & torch.isfinite(hi) & torch.isfinite(hi - lo)).all()

    def _non_finite_message(self) -> str:
        return (f"activation quantizer {self._where()}: the first batch, which initializes the learned step size, "
                "holds NaN or Inf or a range wider than float32")

    @torch.no_grad()
    def _init_learned(self, x: torch.Tensor) -> bool:
        """Initialize from this batch's range (all ranks' under DDP); False where no rank had data."""
        if _dist_world() > 1 and self.sync_distributed:
            lo, hi = global_range(x, self.axis)  # (every rank joins, an empty batch too)
            if lo is None:
                return False
        else:
            lo, hi = self._local_range(x)
        if not bool(self._range_ok(lo, hi)):
            raise ValueError(
                f"{self._non_finite_message()} (min={lo.min().item()}, max={hi.max().item()}); nothing was initialized"
            )
        scale, zp = self._qparams_from_range(lo, hi)
        self.scale.copy_(scale.expand_as(self.scale))
        self.zero_point.copy_(zp.expand_as(self.zero_point))
        self.initialized.fill_(1)
        self._initialized = True
        return True

    def _init_traced(self, x: torch.Tensor) -> None:
        """The first-batch initialization as ``torch.compile`` traces it: no host read, so the graph
        holds it whole. The ``initialized`` buffer decides inside the graph (a copy whose buffers were
        written since the trace, e.g. an EMA's, keeps its step sizes), a non-finite first batch fails
        an assert, and the mirror set here makes the next call retrace without the initialization.
        Before, the host read and the check broke the graph inside every quantizer, and the calls
        compiled around those breaks stayed in use after the initialization: a compiled 7-layer LSQ
        model trained 1.45x slower than one initialized by an eager step first."""
        with torch.no_grad():
            lo, hi = self._local_range(x)
            done = self.initialized.bool()
            torch._assert_async(done | self._range_ok(lo, hi), self._non_finite_message())
            scale, zp = self._qparams_from_range(lo, hi)
            self.scale.copy_(torch.where(done, self.scale, scale.expand_as(self.scale)))
            self.zero_point.copy_(torch.where(done, self.zero_point, zp.expand_as(self.zero_point)))
            self.initialized.fill_(1)
        self._initialized = True

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        compiling = torch.compiler.is_compiling()
        if not self._initialized and not compiling and bool(self.initialized.item()):
            # (the buffer was written by a compiled call since the mirror was taken, see _mirrors_current)
            self._initialized = True
        if not self._initialized and not self.training:
            # eval mode observes nothing (as the static observers): the initial step size, with a
            # warning. Initializing here mutated an eval model, and under DDP a rank-0-only eval
            # before training joined an all-reduce the other ranks never made
            if not compiling:
                self._warn_unobserved()
            else:
                _check_observed_at_trace(self)
        elif not self._initialized:
            # an empty batch holds no range: initialize from the next one (under DDP from the other
            # ranks' batches, which this rank's all-reduce must join)
            distributed = _dist_world() > 1 and self.sync_distributed
            if x.numel() == 0 and not distributed:
                return x.clone()
            if compiling and not distributed and x.device.type == "cpu":
                # (on an accelerator the in-graph assert would be a device-side assert, which leaves
                # the CUDA context unusable: there the initialization stays eager, a graph break)
                self._init_traced(x)
            elif not self._init_learned(x):
                return x.clone()
        grad_factor = 1.0
        if s.lsq_grad_scale:
            per_scale = x.numel() // self.scale.numel()
            grad_factor = ops.lsq_grad_factor(max(per_scale, 1), s.quant_max)
        return ops.fake_quantize_learnable(
            x, self.scale, self.zero_point, s.quant_min, s.quant_max, self.axis, grad_factor=grad_factor
        )

    def frozen_qparams(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) a converted model uses for this input."""
        s = self.scale.detach().clamp(min=torch.finfo(torch.float32).eps).clone()
        return s, self.zero_point.detach().clone()


@ActFakeQuantizer.register("affine_dynamic")
class AffineDynamicActQuantizer(ActFakeQuantizer):
    """Absmax-symmetric activations with the scale taken from the tensor at every call: per token
    (one scale per row of the last dim) or per tensor (BitNet b1.58's activations)."""

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.granularity == "per_token":
            return ops.quantize_per_token(x, self.spec.quant_max)
        return ops.quantize_per_tensor_dynamic(x, self.spec.quant_max)


@ActFakeQuantizer.register("binary")
class BinaryActQuantizer(ActFakeQuantizer):
    """Binary activations sign(x - center) * alpha (``method``), per tensor or per channel."""

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return ops.binarize(x, s.method, self.axis, s.estimator)
