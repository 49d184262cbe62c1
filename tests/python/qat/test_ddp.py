"""QAT under DistributedDataParallel: scripts/qat_finetune.py run by torchrun with 2 processes (gloo,
CPU) equals the single-process run on the same global batches — a model without BatchNorm (the CPU
has no SyncBatchNorm). Each rank takes half of every global batch, DDP averages the gradients and the
activation observers all-reduce their batch min/max.

What DDP guarantees is equality up to the order of float reductions (half-batch gradients averaged
vs one full-batch mean). In float32 that order differs between CPUs (MKL's AVX2 and AVX-512 paths)
and QAT amplifies it: one flipped rounding decision moves a weight by a whole quantization step, so a
float32 tolerance tuned on one CPU fails on another (2.3e-4 on an Intel Xeon against a 1e-4 bound
set on an AMD EPYC). The run here is float64 (parameters, data, activations; qparams stay float32):
reduction-order differences are ~1e-16, too small to flip a rounding decision.

- FP32 pre-training and W8A8 QAT (observer ranges all-reduced, weight ranges from the weights):
  weights within 1e-12 (seen: 1.2e-15), observer ranges within float32's 1e-6 relative (seen:
  equal), integer state equal — on any CPU.
- LSQ (w4a4_lsq): the learned step sizes are float32 parameters whose DDP gradient is the float32
  average of two half-batch sums, one ulp from the full-batch sum, and Adam amplifies such
  differences where gradients are small. Weights and step sizes stay within 1e-3 (seen: 3.8e-5;
  LSQ step sizes are ~1e-2 and one int4 step moves a weight by that much); the initialization of
  the learned activation ranges is all-reduced, so `initialized` and every integer buffer are equal.
"""

import os
import socket
import subprocess
import sys

import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "scripts", "qat_finetune.py")
ARGS = ["--model", "mlp_nobn", "--preset", "w8a8,w4a4_lsq", "--max-folds", "1", "--epochs", "2"]
ARGS += ["--qat-epochs", "2", "--no-progress", "--threads", "1", "--dtype", "float64"]
BOUND = {"fp": 1e-12, "w8a8": 1e-12, "w4a4_lsq": 1e-3}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compare(name, sa, sb):
    assert sa.keys() == sb.keys(), name
    observers = 0
    for k, va in sa.items():
        vb = sb[k]
        if not isinstance(va, torch.Tensor):
            continue
        if va.is_floating_point() and va.dtype == torch.float32 and "running_m" in k:
            observers += 1  # all-reduced batch min/max: equal up to a float32 rounding at worst
            torch.testing.assert_close(va, vb, rtol=1e-6, atol=0, msg=f"{name} {k}")
        elif va.is_floating_point():
            torch.testing.assert_close(va, vb, rtol=0, atol=BOUND[name], msg=f"{name} {k}")
        else:
            assert torch.equal(va, vb), f"{name} {k}"
    return observers


def test_ddp_two_processes_equal_single_process(tmp_path):
    ddp, single = tmp_path / "ddp.pt", tmp_path / "single.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    r = subprocess.run(cmd + [SCRIPT, *ARGS, "--save-final", str(ddp)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "BatchNorm layer(s)" not in r.stderr  # mlp_nobn: no per-rank statistics to warn about
    r = subprocess.run([sys.executable, SCRIPT, *ARGS, "--save-final", str(single)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(ddp, weights_only=False), torch.load(single, weights_only=False)
    assert sorted(a["presets"]) == ["w4a4_lsq", "w8a8"]
    weights = [v for k, v in a["fp"].items() if k.endswith(".weight")]
    assert weights and all(w.dtype == torch.float64 for w in weights)  # the run really was float64
    _compare("fp", a["fp"], b["fp"])
    assert _compare("w8a8", a["presets"]["w8a8"], b["presets"]["w8a8"]) > 0
    _compare("w4a4_lsq", a["presets"]["w4a4_lsq"], b["presets"]["w4a4_lsq"])


def test_ddp_with_batchnorm_warns_that_ranks_normalize_apart(tmp_path):
    """Under DDP on CPU each rank's BatchNorm normalizes with its own batch statistics
    (SyncBatchNorm needs CUDA), so a --model cnn run is not the single-process run the docstring
    promises for models without BatchNorm; it ran without a word. Rank 0 now warns once, naming
    the layers."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           SCRIPT, "--model", "cnn", "--preset", "w8a8", "--folds", "2", "--max-folds", "1", "--epochs", "1",
           "--qat-epochs", "1", "--no-progress", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("BatchNorm layer(s) (features.1, features.4, features.8) normalize with each rank's own") == 1, \
        r.stderr[-3000:]


#: presets of the uneven-batch test: moving-average min/max, LSQ, histogram observers per tensor and
#: per channel
UNEVEN = ("w8a8", "w4a4_lsq", "percentile", "mse_per_channel")


def _leave(dist):
    # a barrier first: a rank tearing the group down while its peer still finishes the last
    # collective makes gloo's worker thread call std::terminate (SIGABRT, now and then)
    dist.barrier()
    dist.destroy_process_group()


def _exit_quietly():
    # the work is saved: leave without the interpreter's finalization, where a spawned rank now and
    # then died of "terminate called without an active exception" (SIGABRT) under a loaded CI run
    # (reached only on success: an exception above propagates and fails the test)
    import os

    os._exit(0)


def _uneven_model(preset):
    import dataclasses

    from torch import nn

    import qatkit
    from qatkit.qat.config import LayerSpec

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    if preset in ("w8a8", "w4a4_lsq"):
        cfg = getattr(qatkit, preset)()
    else:
        base = qatkit.w8a8()
        act = dataclasses.replace(base.default.activation, observer=preset.split("_")[0])
        if preset.endswith("per_channel"):
            act = dataclasses.replace(act, granularity="per_channel", axis=-1)
        cfg = dataclasses.replace(base, default=LayerSpec(base.default.weight, act))
    q = qatkit.prepare_qat(m, dataclasses.replace(cfg, first_last=None))
    gen = torch.Generator().manual_seed(1)
    # growing ranges: the histograms re-bin their counts
    return q, [torch.randn(4, 8, generator=gen), torch.randn(6, 8, generator=gen) * 3, torch.randn(6, 8, generator=gen) * 9]


def _uneven_rank(rank, port, out):
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        state = {}
        for preset in UNEVEN:
            q, batches = _uneven_model(preset)
            # rank 0's first batch is empty: the other rank's batch gives the ranges; then halves
            q(batches[0][:0] if rank == 0 else batches[0]).sum().backward()
            for x in batches[1:]:
                q(x[:2] if rank == 0 else x[2:]).sum().backward()
            state[preset] = {k: v.clone() for k, v in q.state_dict().items() if "fake_quant" in k}
        torch.save(state, f"{out}.{rank}")
    finally:
        _leave(dist)
    _exit_quietly()


def test_observers_under_ddp_hold_the_single_process_state_with_uneven_and_empty_batches(tmp_path):
    """Under DDP a rank whose batch is empty (detection heads with no boxes, uneven last batches):
    the static observers reduced the empty tensor (torch's amin error, the other rank then lost its
    peer), and an LSQ activation quantizer skipped its initializing all-reduce, which the other
    ranks then paired with the next collective. Every rank joins now (with +inf / -inf). Histogram
    observers (percentile, MSE, KL) synchronized nothing: each rank binned its own half, and DDP's
    buffer broadcast then kept rank 0's. They all-reduce the range and sum the counts now. All
    ranks hold the single-process state of the global batches, bit for bit."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "state")
    mp.start_processes(_uneven_rank, args=(_free_port(), out), nprocs=2, join=True, start_method="spawn")
    a, b = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    for preset in UNEVEN:
        q, batches = _uneven_model(preset)
        for x in batches:  # the global batches in one process (no optimizer step: the weights stay)
            q(x).sum().backward()
        want = {k: v for k, v in q.state_dict().items() if "fake_quant" in k}
        for got in (a[preset], b[preset]):
            assert got.keys() == want.keys()
            for k, v in want.items():
                assert torch.equal(got[k], v), f"{preset} {k}"


def _nan_rank(rank, port, out):
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        said = {}
        for preset in ("w8a8", "percentile"):
            q, batches = _uneven_model(preset)
            x = batches[0].clone()
            if rank == 0:
                x[0, 0] = float("nan")
            try:
                q(x)
                said[preset] = "no error"
            except ValueError as e:
                said[preset] = str(e)
            q(batches[1])  # the ranks still pair their collectives after the error
        torch.save(said, f"{out}.{rank}")
    finally:
        _leave(dist)
    _exit_quietly()


def test_a_nan_on_one_rank_raises_on_every_rank(tmp_path):
    """One rank raising alone would leave the others waiting in the observers' all-reduce; the
    NaN flag rides in the same collective, so every rank raises, naming where it came from."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "said")
    mp.start_processes(_nan_rank, args=(_free_port(), out), nprocs=2, join=True, start_method="spawn")
    for rank, where in ((0, "this rank"), (1, "another rank")):
        said = torch.load(f"{out}.{rank}")
        for preset in ("w8a8", "percentile"):
            assert f"holds NaN or Inf on {where}" in said[preset] and "'0.input_fake_quant'" in said[preset], said


def _calibrating_rank(rank, port, out):
    import datetime

    import torch.distributed as dist

    import qatkit

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        said = {}
        q, batches = _uneven_model("percentile")
        if rank == 0:  # rank 0 alone calibrates and runs ptq while rank 1 waits at the barrier
            qatkit.qat.calibrate(q, batches)
            said["alone"] = {k: v.clone() for k, v in q.state_dict().items() if "fake_quant" in k}
            float_model = q[0].to_float(), q[2].to_float()
            qatkit.ptq(torch.nn.Sequential(float_model[0], torch.nn.ReLU(), float_model[1]), batches,
                       progress=False, verbose=False)
        dist.barrier()
        q, batches = _uneven_model("percentile")
        # every rank its share of each batch, synchronized: the single-process ranges of all of them
        qatkit.qat.calibrate(q, [x[:2] if rank == 0 else x[2:] for x in batches], distributed=True)
        said["shared"] = {k: v.clone() for k, v in q.state_dict().items() if "fake_quant" in k}
        torch.save(said, f"{out}.{rank}")
    finally:
        _leave(dist)
    _exit_quietly()


def test_one_rank_calibrates_alone_and_all_ranks_calibrate_together(tmp_path):
    """calibrate / ptq on rank 0 alone (the others at a barrier) all-reduced each batch's range as
    in training and waited for the other ranks until the timeout. They observe locally now;
    ``calibrate(distributed=True)`` on every rank's share gives the single-process ranges."""
    import torch.multiprocessing as mp

    import qatkit

    out = str(tmp_path / "cal")
    mp.start_processes(_calibrating_rank, args=(_free_port(), out), nprocs=2, join=True, start_method="spawn")
    q, batches = _uneven_model("percentile")
    qatkit.qat.calibrate(q, batches)
    want = {k: v for k, v in q.state_dict().items() if "fake_quant" in k}
    a, b = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    for got in (a["alone"], a["shared"], b["shared"]):
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert torch.equal(got[k], v), k
