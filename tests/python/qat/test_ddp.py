"""QAT under DistributedDataParallel: scripts/qat_finetune.py run by torchrun with 2 processes (gloo,
CPU) equals the single-process run on the same global batches — a model without BatchNorm (the CPU
has no SyncBatchNorm). Each rank takes half of every global batch, DDP averages the gradients and the
activation observers all-reduce their batch min/max, so the observer state must match exactly and
the weights (and learned LSQ scales) up to float reduction order (stated tolerance: 1e-4
absolute; seen: <= 2e-5)."""

import os
import socket
import subprocess
import sys

import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "scripts", "qat_finetune.py")
ARGS = ["--model", "mlp_nobn", "--preset", "w8a8,w4a4_lsq", "--max-folds", "1", "--epochs", "2"]
ARGS += ["--qat-epochs", "2", "--no-progress", "--threads", "1"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_single_process(tmp_path):
    ddp, single = tmp_path / "ddp.pt", tmp_path / "single.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    r = subprocess.run(cmd + [SCRIPT, *ARGS, "--save-final", str(ddp)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, SCRIPT, *ARGS, "--save-final", str(single)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(ddp, weights_only=False), torch.load(single, weights_only=False)
    observers = 0
    for part in ("fp", "qat"):
        assert a[part].keys() == b[part].keys()
        for k, va in a[part].items():
            vb = b[part][k]
            if not isinstance(va, torch.Tensor):
                continue
            if "running_m" in k:  # observer ranges: all-reduced, so equal up to the EMA's rounding
                observers += 1
                torch.testing.assert_close(va, vb, rtol=1e-5, atol=0, msg=k)
            elif va.is_floating_point():
                torch.testing.assert_close(va, vb, rtol=0, atol=1e-4, msg=k)
            else:
                assert torch.equal(va, vb), k
    assert observers > 0
