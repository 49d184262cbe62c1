"""Where each qatkit op's kernels are registered (docs/architecture.md, "Dispatch keys").

Every op must run on CPU and Meta (torch.compile / torch.export trace with fake tensors) and, in a
CUDA build, on CUDA: either through a kernel at that key or through the one device-generic
composite at CompositeExplicitAutograd. Family files never ask which device they run on: the
dispatcher already chose, and CPU-only work is registered from csrc/ops/cpu/.
"""

import pathlib
import re

import pytest
import torch

import qatkit  # noqa: F401  (loads the op library)

ROOT = pathlib.Path(__file__).resolve().parents[3]


def _qatkit_overloads():
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("qatkit::"))


OVERLOADS = _qatkit_overloads()


def test_the_op_list_is_not_empty():
    assert len(OVERLOADS) >= 20, OVERLOADS


# Ops with CPU kernels only (none since XNOR's linear_w1a1 / conv2d_w1a1 gained CUDA kernels): on a
# CUDA tensor the dispatcher would raise NotImplementedError naming the op and the CUDA key. Listed
# so a CUDA build checks the list is exact: an op that gains a CUDA kernel must leave it.
CPU_ONLY: set = set()


@pytest.mark.parametrize("name", OVERLOADS)
@pytest.mark.parametrize("key", ["CPU", "Meta"] + (["CUDA"] if qatkit.build_info()["cuda"] else []))
def test_every_op_has_a_kernel_for_key(name, key):
    has = torch._C._dispatch_has_computed_kernel_for_dispatch_key(name, key)
    if key == "CUDA" and name.split(".")[0] in CPU_ONLY:
        assert not has, f"{name} has a CUDA kernel now: take it off CPU_ONLY"
        return
    assert has, f"{name} has no {key} kernel"


@pytest.mark.parametrize("name", OVERLOADS)
def test_no_op_is_registered_at_every_backend_key_separately(name):
    """A kernel registered identically at CPU, CUDA and Meta belongs at CompositeExplicitAutograd.

    (A CUDA-less build has no CUDA registrations, so this checks CPU + Meta there: an op with its
    own CPU and Meta kernels must not also carry a composite, which would be dead code.)
    """
    has = lambda k: torch._C._dispatch_has_kernel_for_dispatch_key(name, k)  # noqa: E731
    if has("CompositeExplicitAutograd"):
        assert not has("Meta"), f"{name}: a Meta kernel next to the composite is never the one that runs"


def test_family_files_never_ask_their_device():
    """Sources outside csrc/ops/{cpu,cuda}/ must not branch on the device the dispatcher chose."""
    offenders = []
    for path in sorted((ROOT / "csrc" / "ops").rglob("*.cpp")) + sorted((ROOT / "csrc" / "ops").rglob("*.h")):
        rel = path.relative_to(ROOT / "csrc" / "ops")
        if rel.parts[0] in ("cpu", "cuda"):
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.(is_cpu|is_cuda)\(\)|device\(\)\.type\(\)", line):
                offenders.append(f"{rel}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_registrations_live_in_the_key_folders():
    """TORCH_LIBRARY_IMPL for a backend key (CPU, CUDA, Meta) only under csrc/ops/<key>/."""
    folders = {"CPU": "cpu", "CUDA": "cuda", "Meta": "meta"}
    offenders = []
    for path in sorted((ROOT / "csrc").rglob("*.cpp")):
        rel = path.relative_to(ROOT / "csrc")
        for key in re.findall(r"TORCH_LIBRARY_IMPL\(qatkit,\s*(\w+)", path.read_text()):
            if key in folders and rel.parts[:2] != ("ops", folders[key]):
                offenders.append(f"{rel}: {key}")
    assert not offenders, offenders


def test_python_qat_reaches_ops_only_through_the_wrappers():
    """qatkit.qat calls qatkit.ops wrappers, never torch.ops.qatkit directly (private ops least)."""
    offenders = []
    for path in sorted((ROOT / "python" / "qatkit" / "qat").rglob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"torch\.ops\.qatkit\.\w", line):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_public_header_exports_private_ops_only_in_detail():
    """Every private op (a schema name starting with '_') is declared in qatkit::detail, if at all;
    the qatkit:: names outside detail are deprecated aliases only."""
    header = (ROOT / "csrc" / "qatkit" / "ops.h").read_text()
    detail = re.search(r"namespace detail \{(.*?)\}  // namespace detail", header, re.S)
    outside = header.replace(detail.group(0), "") if detail else header
    private = {n.split("::")[1].split(".")[0].lstrip("_") for n in OVERLOADS if n.split("::")[1].startswith("_")}
    for name in sorted(private):
        for m in re.finditer(rf"(?<!detail::)\b{name}\(", outside):
            before = outside[max(0, m.start() - 120) : m.start()]
            assert "[[deprecated" in before, f"private op '{name}' is exported outside qatkit::detail"


# Overloads with no Autograd kernel, and why torch's fallback for custom ops is right for them: their
# outputs are integer codes (no gradient can flow) or they return nothing (statistics updates).
NO_AUTOGRAD_KERNEL = {
    "qatkit::quantize_affine": "integer codes out",
    "qatkit::pack_weights": "integer codes in and out",
    "qatkit::unpack_weights": "integer codes in and out",
    "qatkit::pack_int8_panel": "integer codes in and out",
    "qatkit::pack_int4_panel": "integer codes in and out",
    "qatkit::pack_binary_panel": "integer codes in and out",
    "qatkit::_observer_update": "returns nothing (running statistics)",
    "qatkit::_histogram_update": "returns nothing (running statistics)",
    "qatkit::_advance_step": "an int64 step counter in and out",
}


@pytest.mark.parametrize("name", OVERLOADS)
def test_every_op_with_float_outputs_has_an_autograd_kernel(name):
    """Torch's fallback for an op without one only warns at backward and hands back no gradient
    (a silent wrong answer); every qatkit op either differentiates or raises
    (csrc/ops/autograd/no_gradient_kernel.cpp)."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key(name, "Autograd") or \
        torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeImplicitAutograd")
    if name in NO_AUTOGRAD_KERNEL:
        assert not has, f"{name} has an Autograd kernel now: take it off NO_AUTOGRAD_KERNEL"
        return
    assert has, f"{name} has no Autograd kernel: torch's fallback would warn and return no gradient"
