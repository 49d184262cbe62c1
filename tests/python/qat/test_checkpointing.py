"""Activation checkpointing (torch.utils.checkpoint) recomputes a checkpointed forward inside the
backward pass. State a training forward updates (activation observers' ranges, a folded
BatchNorm's running statistics) was updated a second time there, and the recomputed outputs
(hence the gradients) came from the twice-updated state: checkpointed QAT trained another model
than the same loop without checkpointing (observer ranges 0.27 off after five steps, weights
5.7e-4). Now the recomputation updates nothing and reproduces the first forward, so a
checkpointed loop ends bit for bit where the plain loop ends. BinaryConnect's stochastic weights
advanced their seed counter a second time in the recomputation and drew other bits there."""

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import qatkit
from qatkit.qat.config import LayerSpec


class _Net(nn.Module):
    def __init__(self, mode, conv):
        super().__init__()
        self.mode = mode
        if conv:
            self.body = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None), nn.ReLU(), nn.Flatten(),
            )
            self.head = nn.Linear(8 * 36, 4)
        else:
            self.body = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
            self.head = nn.Linear(32, 4)

    def forward(self, x):
        if self.mode is None:
            h = self.body(x)
        else:
            h = checkpoint(self.body, x, use_reentrant=self.mode == "reentrant")
        return self.head(h)


def _stochastic_binaryconnect():
    cfg = qatkit.binaryconnect()
    return dataclasses.replace(
        cfg, first_last=None, default=LayerSpec(dataclasses.replace(cfg.default.weight, stochastic=True), None)
    )


def _percentile_w8a8():
    cfg = qatkit.w8a8()
    act = dataclasses.replace(cfg.default.activation, observer="percentile")
    return dataclasses.replace(cfg, default=LayerSpec(cfg.default.weight, act))


CONFIGS = {
    "w8a8": qatkit.w8a8,  # moving-average observers; a fold-invariant BatchNorm fold
    "w4a4_lsq": qatkit.w4a4_lsq,  # learned scales; the fold takes the running variance
    "percentile": _percentile_w8a8,  # histogram observers
    "binaryconnect": _stochastic_binaryconnect,  # stochastic binary weights: a step-counter seed
}


def _train(mode, conv, config, steps=4):
    torch.manual_seed(0)
    q = qatkit.prepare_qat(_Net(mode, conv), CONFIGS[config]())
    opt = torch.optim.SGD(q.parameters(), 0.05)
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        shape = (8, 3, 6, 6) if conv else (8, 12)
        x = torch.randn(shape, generator=gen) * (1 + i)
        x.requires_grad_(mode == "reentrant")  # the reentrant form needs an input that requires grad
        loss = q(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return q


# prepare_qat's torch.fx trace (to find the BatchNorm folds) calls the reentrant checkpoint on a proxy
@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad=True")
@pytest.mark.parametrize(
    "config, conv",
    [("w8a8", False), ("w4a4_lsq", False), ("percentile", False), ("binaryconnect", False), ("w8a8", True),
     ("w4a4_lsq", True)],
    ids=["mlp-w8a8", "mlp-w4a4_lsq", "mlp-percentile", "mlp-binaryconnect", "conv_bn-w8a8", "conv_bn-w4a4_lsq"],
)
def test_a_checkpointed_qat_loop_ends_where_the_plain_loop_ends(config, conv):
    ref = _train(None, conv, config)
    for mode in ("non_reentrant", "reentrant"):
        got = _train(mode, conv, config)
        want_sd, got_sd = ref.state_dict(), got.state_dict()
        assert want_sd.keys() == got_sd.keys()
        for k, v in want_sd.items():
            if torch.is_tensor(v):
                assert torch.equal(got_sd[k], v), f"{mode}: {k} differs by {(got_sd[k].double() - v.double()).abs().max()}"
        if conv:
            assert int(got.body[0].bn.num_batches_tracked) == 4 and int(got.body[3].bn.num_batches_tracked) == 4
        x = torch.randn((2, 3, 6, 6) if conv else (2, 12))
        got.mode = None  # (reentrant checkpointing warns about an input without gradients)
        ref.eval(), got.eval()
        assert torch.equal(qatkit.convert(got)(x), qatkit.convert(ref)(x))


def test_a_forward_outside_backward_still_observes():
    """The recomputation test is autograd's graph task: a plain training forward (no backward
    running) observes as always, with or without gradients."""
    q = qatkit.prepare_qat(_Net(None, False), qatkit.w8a8())
    obs = q.body[0].input_fake_quant.observer
    with torch.no_grad():
        q(torch.randn(4, 12))
    first = obs.running_max.clone()
    q(torch.randn(4, 12) * 10)
    assert obs.running_max.item() > first.item()


@pytest.mark.parametrize("config", ["w8a8", "binaryconnect"])
def test_a_compiled_checkpointed_region_recomputes_with_the_first_forwards_range(config):
    """torch.compile turns a checkpointed region into a graph whose backward recomputes the
    observer from its buffers, which the forward has updated by then (PyTorch reads a mutated
    input after the mutation: pytorch/pytorch#197039). The observer op updates nothing inside a
    backward pass, so the recomputed range is the one the forward quantized with: before, the
    gradients of the third step were 3.4e-3 off the uncheckpointed compiled model's. The stochastic
    binary weights' seed counter is advanced by the same rule (qatkit::_advance_step)."""
    torch._dynamo.reset()

    def grads(mode):
        torch.manual_seed(0)
        q = qatkit.prepare_qat(_Net(mode, False), CONFIGS[config]())
        f = torch.compile(q)
        gen = torch.Generator().manual_seed(1)
        for i in range(3):
            for p in q.parameters():
                p.grad = None
            f(torch.randn(8, 12, generator=gen) * (1 + i)).square().mean().backward()
        return {n: p.grad.clone() for n, p in q.named_parameters()}, q.state_dict()

    (g0, s0), (g1, s1) = grads(None), grads("non_reentrant")
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=lambda m: f"{n}: {m}")
    for k, v in s0.items():
        if torch.is_tensor(v) and v.is_floating_point():
            torch.testing.assert_close(s1[k], v, rtol=1e-6, atol=0, msg=lambda m: f"{k}: {m}")
