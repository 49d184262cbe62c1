"""pytest setup: a fixed seed. (References and sample generators live in qatkit.testing.)"""

import torch

torch.manual_seed(0)
