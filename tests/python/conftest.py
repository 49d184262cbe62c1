"""pytest setup: make tests/python importable (reference.py, samples.py) and pin thread counts."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

torch.manual_seed(0)
