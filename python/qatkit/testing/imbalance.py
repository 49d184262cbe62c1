"""DFQ experiment E1's injected per-channel imbalance (docs/papers.md E1, docs/ptq.md §3): a
function-preserving rescaling of every equalization pair that per-tensor quantization cannot
survive and cross-layer equalization undoes. Shared by tests/python/ptq and scripts/ptq.py."""

from __future__ import annotations

import torch
from torch import nn

from ..ptq import transforms as T
from ..qat import graph

__all__ = ["inject_imbalance"]


@torch.no_grad()
def inject_imbalance(model: nn.Module, example: torch.Tensor, seed: int = 0, decades: float = 2.5) -> nn.Module:
    """For each pair (A -> act -> B) of ``model`` (BatchNorms folded first), draw
    ``s = 10^U(-decades, decades)`` per channel and set ``W_A <- diag(s) W_A``, ``b_A <- s b_A``,
    ``W_B <- W_B diag(1/s)``: the float function is unchanged (positively homogeneous
    activations), the per-channel ranges span ``2 * decades`` decades. In place; returns the model."""
    g = torch.Generator().manual_seed(seed)
    pairs, _ = T.find_equalization_pairs(model, graph.trace_dataflow(model, example))
    for p in pairs:
        a, b = model.get_submodule(p.first), model.get_submodule(p.second)
        s = 10 ** (torch.rand(a.weight.shape[0], generator=g) * 2 * decades - decades)
        a.weight.mul_(s.reshape(-1, *[1] * (a.weight.dim() - 1)))
        if a.bias is not None:
            a.bias.mul_(s)
        T._scale_in(b, 1 / s)
    return model
