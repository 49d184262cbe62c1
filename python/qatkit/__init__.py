"""qatkit: quantization toolkit for PyTorch.

Importing qatkit loads its native library, which registers the ``torch.ops.qatkit.*`` ops
(C++/CUDA kernels, Meta kernels and C++ autograd). Typed wrappers live in :mod:`qatkit.ops`.

Example:
    >>> import torch, qatkit
    >>> w = torch.randn(64, 128)
    >>> scale, zp = qatkit.ops.choose_qparams(w, -8, 7, symmetric=True, axis=0)
    >>> w4 = qatkit.ops.fake_quantize(w, scale, zp, -8, 7, axis=0)
"""

import os as _os

import torch as _torch

_HERE = _os.path.dirname(_os.path.abspath(__file__))
_LIB = _os.path.join(_HERE, "lib", "libqatkit.so")
if not _os.path.exists(_LIB):
    raise ImportError(
        f"qatkit's native library is missing ({_LIB}); build it with "
        "`pip install --no-build-isolation -e .` (or run scripts/setup.sh)"
    )
_torch.ops.load_library(_LIB)

from . import (
    _C,  # after the library, which _C links against
    ops,
    qat,
)

def _check_isa_env() -> None:
    """QATKIT_CPU_ISA names a CPU kernel table; a name the library does not know, or a table this
    CPU cannot run, is ignored there (the best table runs): say so instead of running silently."""
    want = _os.environ.get("QATKIT_CPU_ISA")
    if not want:
        return
    import warnings

    got = _C.cpu_isa()
    if want not in ("baseline", "avx2", "avx512", "amx"):
        warnings.warn(f"QATKIT_CPU_ISA={want!r} is not one of 'baseline', 'avx2', 'avx512', 'amx': ignored, the {got!r} "
                      "kernels run", stacklevel=2)
    elif want != got:
        warnings.warn(f"QATKIT_CPU_ISA={want!r}: this CPU cannot run those kernels, the {got!r} kernels run",
                      stacklevel=2)


_check_isa_env()
from . import ptq as _ptq_module  # noqa: E402
from . import serialization  # noqa: E402
from .ptq import choose_bits, ptq, sensitivity
from .serialization import export, load, load_into
from .onnx_export import export_onnx  # noqa: E402
from .gguf_export import export_gguf  # noqa: E402
from .qat import (
    LayerSpec,
    QATConfig,
    QuantSpec,
    binary_w1a8,
    binaryconnect,
    binary_weight_only,
    int4_weight_only,
    int8_weight_only,
    ternary_weight_only,
    bitnet_b158,
    convert,
    fuse_activations,
    prepare_qat,
    preset,
    ternary_twn,
    w4a4_lsq,
    w4a8,
    w8a8,
    xnor_w1a1,
)

__all__ = [
    "ops",
    "qat",
    "ptq",
    "sensitivity",
    "choose_bits",
    "serialization",
    "export",
    "export_onnx",
    "export_gguf",
    "load",
    "load_into",
    "QATConfig",
    "QuantSpec",
    "LayerSpec",
    "binary_w1a8",
    "binaryconnect",
    "binary_weight_only",
    "int4_weight_only",
    "int8_weight_only",
    "ternary_weight_only",
    "bitnet_b158",
    "convert",
    "fuse_activations",
    "preset",
    "prepare_qat",
    "ternary_twn",
    "w4a4_lsq",
    "w4a8",
    "w8a8",
    "xnor_w1a1",
    "build_info",
    "cmake_prefix_path",
    "__version__",
]

__version__ = _C.version()

#: Directory to add to CMAKE_PREFIX_PATH so a LibTorch program can ``find_package(qatkit)``.
cmake_prefix_path = _os.path.join(_HERE, "share", "cmake")


def build_info() -> dict:
    """What this build contains.

    Returns:
        dict with ``version``, ``torch_version`` (compiled against), ``torch_runtime_version``,
        ``cuda`` (CUDA kernels compiled in), ``cpu_isa`` (CPU kernel implementation in use),
        ``amx_bf16`` (the ``"amx"`` table runs ``linear_w4_weight_only`` on AMX-BF16 tiles here: its
        outputs keep the weight-only float bound in their own bits, docs/integer.md), ``library``
        (path of libqatkit.so) and ``cmake_prefix_path``.
    """
    return {
        "version": _C.version(),
        "torch_version": _C.torch_version(),
        "torch_runtime_version": _torch.__version__,
        "cuda": _C.cuda_enabled(),
        "cpu_isa": _C.cpu_isa(),
        "amx_bf16": _C.amx_bf16(),
        "library": _LIB,
        "cmake_prefix_path": cmake_prefix_path,
    }

