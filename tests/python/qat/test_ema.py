"""Weight averaging (``torch.optim.swa_utils.AveragedModel``, timm's / torchvision's EMA) copies or
averages a QAT model's parameters and buffers into a copy made earlier, by in-place writes. The
quantizers branch on Python mirrors of their flag buffers, which only their own switches and
``load_state_dict`` updated: an EMA copy made before training kept "not initialized" for its LSQ
step sizes, so the first batch it evaluated re-initialized the averaged step sizes from that
batch's range (0.115 -> 0.249 on a batch 100x larger), and ``convert`` refused it as never
observed. The mirrors now follow their buffers' versions."""

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import qatkit

DECAY = 0.9


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _learned(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("fake_quant.scale")}


@pytest.mark.parametrize("use_buffers", [False, True])
def test_an_ema_of_an_lsq_model_keeps_its_averaged_step_sizes(use_buffers):
    q = qatkit.prepare_qat(_mlp(), dataclasses.replace(qatkit.w4a4_lsq(), first_last=None))
    ema = AveragedModel(q, multi_avg_fn=get_ema_multi_avg_fn(DECAY), use_buffers=use_buffers)
    opt = torch.optim.SGD(q.parameters(), 0.01)
    gen = torch.Generator().manual_seed(1)
    want = None
    for i in range(5):
        q(torch.randn(8, 12, generator=gen) * (1 + i)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update_parameters(q)
        now = _learned(q)  # the EMA's formula on the source's step sizes, independently
        want = now if want is None else {k: DECAY * want[k] + (1 - DECAY) * v for k, v in now.items()}
    e = ema.module.eval()
    assert all(bool(m.initialized) for m in e.modules() if hasattr(m, "initialized"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no "runs before observing any data"
        e(torch.randn(4, 12) * 100)
    got = _learned(e)
    assert got.keys() == want.keys() and len(got) == 6
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=0, msg=k)
    x = torch.randn(4, 12)
    assert torch.equal(qatkit.convert(e)(x), e(x))


def test_an_ema_of_a_w8a8_model_warns_about_nothing_it_has_observed():
    q = qatkit.prepare_qat(_mlp(), qatkit.w8a8())
    ema = AveragedModel(q, multi_avg_fn=get_ema_multi_avg_fn(DECAY))
    q(torch.randn(8, 12))
    ema.update_parameters(q)  # copies the observers' buffers into the copy made before they observed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ema.module.eval()(torch.randn(2, 12))


def test_flag_buffers_written_in_place_take_effect():
    q = qatkit.prepare_qat(_mlp(), qatkit.w8a8())
    q(torch.randn(8, 12))
    q.eval()  # (nothing observes: the outputs depend on the flags only)
    x = torch.randn(4, 12)
    layer = q[0]
    quantized = layer(x)
    layer.weight_fake_quant.fake_quant_on.fill_(0)  # not through enable_fake_quant
    layer.input_fake_quant.fake_quant_on.fill_(0)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.weight_fake_quant.fake_quant_on.fill_(1)
    layer.input_fake_quant.fake_quant_on.fill_(1)
    assert torch.equal(layer(x), quantized)
    # a replaced flag buffer too
    layer.input_fake_quant.fake_quant_on = torch.zeros(1, dtype=torch.uint8)
    layer.weight_fake_quant.fake_quant_on = torch.zeros(1, dtype=torch.uint8)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_a_bn_frozen_flag_written_in_place_freezes_the_fold():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    q = qatkit.prepare_qat(m, qatkit.w8a8())
    q(torch.randn(4, 3, 6, 6))
    bn = q[0].bn
    before = bn.running_mean.clone(), int(bn.num_batches_tracked)
    q[0].bn_frozen.fill_(1)  # as an EMA copying the source's buffers after the source's freeze_bn
    q(torch.randn(4, 3, 6, 6) + 3)
    assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1]
