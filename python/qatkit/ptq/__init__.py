"""Post-training quantization (issue 11): :func:`ptq` and the float transforms it uses
(:mod:`qatkit.ptq.transforms`: BatchNorm folding, cross-layer equalization, high-bias absorption).
See docs/ptq.md for the formulas and the order of the steps."""

from . import transforms
from .api import ptq

__all__ = ["ptq", "transforms"]
