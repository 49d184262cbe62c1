"""Post-training quantization (issue 11): :func:`ptq` and the float transforms it uses
(:mod:`qatkit.ptq.transforms`: BatchNorm folding, cross-layer equalization, high-bias absorption).
See docs/ptq.md for the formulas and the order of the steps."""

from . import transforms
from .api import ptq
from .sensitivity import SensitivityReport, bits_per_weight, choose_bits, plot_weight_ranges, sensitivity

__all__ = [
    "ptq",
    "transforms",
    "sensitivity",
    "SensitivityReport",
    "choose_bits",
    "bits_per_weight",
    "plot_weight_ranges",
]
