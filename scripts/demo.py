"""qatkit demo: train an FP32 model on scikit-learn's digits, QAT fine-tune it at several presets
(int8, int4, ternary, binary), convert each to integer weight codes, and print a table; then deploy:
PTQ int8 and QAT int4 / ternary / binary exported, reloaded on the integer kernels, one table of
accuracy, file size and speed, and the LibTorch C++ program reading one file (scripts/deploy_demo.py).

    python scripts/demo.py [--model mlp|cnn|dscnn] [--folds 5] [--plot FILE] [--json]
                           [--max-folds N --epochs E --qat-epochs Q]  (quick checks)

Every number comes from 5-fold cross-validation over all 1797 images (mean +- std over folds):
the FP32 model of each fold, the same model with the preset applied but no training (PTQ), and
after QAT fine-tuning, evaluated as the converted integer-weight model. The full experiment
script, with checkpoints, DDP and the tiny BitNet LM, is scripts/qat_finetune.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from deploy_demo import deploy  # noqa: E402
from qat_finetune import plot, print_table, run_digits  # noqa: E402
from qat_models import check_folds, number_arg  # noqa: E402

import qatkit  # noqa: E402

PRESETS = ["w8a8", "w4a8", "w4a4_lsq", "ternary_twn", "bitnet_b158", "binary_w1a8", "xnor_w1a1", "binaryconnect"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mlp", choices=["mlp", "cnn", "dscnn"])
    ap.add_argument("--folds", type=number_arg(int, 2), default=5)
    ap.add_argument("--plot", default="qat_demo_acc_vs_bits.png")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--max-folds", type=number_arg(int, 0), default=0, help="run only the first N folds (quick checks)")
    ap.add_argument("--epochs", type=number_arg(int, 1), default=40, help="FP32 epochs")
    ap.add_argument("--qat-epochs", type=number_arg(int, 1), default=20, help="QAT epochs")
    ap.add_argument("--no-deploy", action="store_true",
                    help="skip the deployment table (export -> load on integer kernels -> C++)")
    a = ap.parse_args()
    check_folds(ap, a.folds)
    torch.set_num_threads(2)
    # the experiment script's defaults: 40 FP32 epochs, 20 QAT epochs, Adam, batch 64
    args = argparse.Namespace(
        model=a.model,
        folds=a.folds,
        max_folds=a.max_folds,
        epochs=a.epochs,
        qat_epochs=a.qat_epochs,
        lr=1e-3,
        qat_lr=0.0,
        batch=64,
        seed=0,
        ckpt_dir="",
        resume=False,
        save_final="",
        dtype="float32",
        no_progress=a.json,
        stop_after=0,
    )
    info = qatkit.build_info()
    if not a.json:
        print(f"qatkit {info['version']} (torch {info['torch_runtime_version']}, cpu isa {info['cpu_isa']})")
        print(f"FP32 -> QAT at {len(PRESETS)} presets -> convert, digits, {a.model}, {a.folds}-fold CV")
    t0 = time.perf_counter()
    fp_accs, results = run_digits(args, PRESETS, rank=0, world=1)
    if a.json:
        print(json.dumps({"build": info, "fp32": fp_accs, "presets": results}, indent=2))
        return
    print_table(args, fp_accs, results, PRESETS)
    if a.plot:
        plot(a.plot, fp_accs, results, PRESETS)
        print(f"\nplot: {a.plot}")
    if not a.no_deploy:
        deploy(qat_epochs=min(a.qat_epochs, 10))
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
