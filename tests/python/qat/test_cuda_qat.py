"""QAT layers on CUDA: a prepared model moved to the GPU trains a step and matches the CPU model
(outputs, gradients, observer state) to float32 reduction-order tolerance. Run by
scripts/gpu_check.sh on the GPU machine; skipped where torch has no CUDA device."""

import copy

import pytest
import torch
from torch import nn

import qatkit

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and qatkit.build_info()["cuda"]),
    reason="needs a CUDA device and qatkit built with CUDA (scripts/gpu_check.sh on the GPU machine)",
)


@pytest.mark.parametrize("name", ["w8a8", "w4a8", "w4a4_lsq", "ternary_twn", "binary_w1a8", "xnor_w1a1"])
def test_qat_step_cuda_matches_cpu(name):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(512, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    cfg = qatkit.QATConfig(default=qatkit.preset(name).default)
    cpu = qatkit.prepare_qat(model, cfg)
    gpu = copy.deepcopy(cpu).cuda()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for m, dev in ((cpu, "cpu"), (gpu, "cuda")):
        nn.functional.cross_entropy(m(x.to(dev)), y.to(dev)).backward()
    for (k, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5, msg=k)
    for (k, a), b in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-3, atol=1e-4, msg=k)
