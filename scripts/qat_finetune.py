"""Train an FP32 model, then QAT fine-tune it with qatkit presets, and print a table.

    python scripts/qat_finetune.py --model mlp --preset w8a8,w4a8,ternary_twn
    python scripts/qat_finetune.py --model cnn --preset all --plot acc_vs_bits.png --json results.json
    torchrun --nproc_per_node 2 scripts/qat_finetune.py --model mlp_nobn --preset w8a8   # DDP (gloo)
    python scripts/qat_finetune.py --model transformer --preset bitnet_b158             # E5, bits/char

Digits models are evaluated by stratified k-fold cross-validation over all 1797 images (each image
is a test image once; mean +- std over folds). Per fold: train FP32, evaluate; then for each preset
prepare_qat a copy, evaluate it without training (PTQ: observers calibrated on the training fold),
QAT fine-tune it, convert it and evaluate the converted model. The QAT recipe follows Jacob et al. /
Krishnamoorthi: observers on from the start, BatchNorm frozen at half of the QAT epochs, observers
frozen at three quarters; Adam with a cosine-decayed learning rate.

Checkpoints (--ckpt-dir) are written after every epoch; --resume continues where a run stopped,
bit-identically (shuffling is seeded per fold and epoch; quantizer state lives in buffers).
Under torchrun every rank takes an equal shard of each global batch, gradients are averaged by
DistributedDataParallel and activation observers all-reduce their min/max, so a run equals the
single-process run on the same global batches (models without BatchNorm; CPU has no SyncBatchNorm).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qat_models import (  # noqa: E402
    DIGITS_MODELS,
    CharDataset,
    TinyLM,
    bits_per_char,
    check_folds,
    load_digits,
    number_arg,
    stdlib_corpus,
    stratified_folds,
)

import qatkit  # noqa: E402

#: weight bits of each preset's quantized layers, for the accuracy-vs-bits plot
PRESET_BITS = {
    "w8a8": 8,
    "w4a8": 4,
    "w4a4_lsq": 4,
    "ternary_twn": math.log2(3),
    "bitnet_b158": math.log2(3),
    "binary_w1a8": 1,
    "xnor_w1a1": 1,
    "binaryconnect": 1,
}
#: QAT learning rates (Adam): 1-bit weights need larger steps to flip signs (BinaryConnect, BitNet)
QAT_LR = {"binary_w1a8": 1e-3, "xnor_w1a1": 1e-3, "binaryconnect": 1e-3, "bitnet_b158": 1e-3, "ternary_twn": 1e-3}


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def dist_info():
    d = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not d.is_initialized():
        d.init_process_group("gloo")
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


def wrap(model, world):
    if world > 1:
        bns = [n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if bns and torch.distributed.get_rank() == 0 and not getattr(wrap, "_warned", False):
            wrap._warned = True  # (once per run, not per fold and preset)
            warnings.warn(f"{len(bns)} BatchNorm layer(s) ({', '.join(bns[:3])}{' ...' if len(bns) > 3 else ''}) normalize with "
                          "each rank's own batch statistics under DDP (SyncBatchNorm needs CUDA): the run is not the "
                          "single-process run on the same global batches (--model mlp_nobn / transformer are)",
                          UserWarning, stacklevel=2)
        return torch.nn.parallel.DistributedDataParallel(model)
    return model


def unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def evaluate(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item() * 100


def train_epochs(model, opt, x, y, epochs, start, args, fold, tag, rank, world, hook=None, ckpt=None):
    """Epochs [start, epochs) of minibatch training; global batches are sharded over ranks."""
    n = len(x) - len(x) % args.batch  # drop the last partial global batch (equal shards everywhere)
    bar = tqdm(range(start, epochs), desc=f"fold {fold} {tag}", leave=False, disable=args.no_progress or rank != 0)
    for ep in bar:
        if hook is not None:
            hook(ep)
        model.train()
        g = torch.Generator().manual_seed(args.seed * 1000 + fold * 100 + ep)
        perm = torch.randperm(len(x), generator=g)[:n]
        for b in range(0, n, args.batch):
            idx = perm[b : b + args.batch][rank::world]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            qatkit.qat.clip_latent_weights(unwrap(model))
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if ckpt is not None:
            ckpt(ep + 1)
        _EPOCHS_RUN[0] += 1
        if args.stop_after and _EPOCHS_RUN[0] >= args.stop_after:
            raise SystemExit(
                f"--stop-after {args.stop_after}: stopping as an interruption would (resume with --resume)"
            )


_EPOCHS_RUN = [0]


def save_ckpt(path, rank, **state):
    if rank == 0 and path:
        tmp = path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)


def load_ckpt(path):
    if path and os.path.exists(path):
        return torch.load(path, weights_only=False)
    return None


def ckpt_path(args, fold, tag):
    return os.path.join(args.ckpt_dir, f"fold{fold}_{tag}.pt") if args.ckpt_dir else None


def run_digits(args, presets, rank, world):
    x, y = load_digits()
    dtype = DTYPES[getattr(args, "dtype", "float32")]
    x = x.to(dtype)
    folds = stratified_folds(y, args.folds, args.seed)[: args.max_folds or args.folds]
    results = {p: {"fp": [], "ptq": [], "qat": [], "time": 0.0} for p in presets}
    fp_accs = []
    finals = {}
    for f, (tr, te) in enumerate(folds):
        torch.manual_seed(args.seed + f)
        fp = DIGITS_MODELS[args.model]().to(dtype)
        opt = torch.optim.Adam(fp.parameters(), lr=args.lr)
        start = 0
        st = load_ckpt(ckpt_path(args, f, "fp")) if args.resume else None
        if st is not None:
            fp.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            start = st["epoch"]
        fpw = wrap(fp, world)
        train_epochs(
            fpw,
            opt,
            x[tr],
            y[tr],
            args.epochs,
            start,
            args,
            f,
            "fp32",
            rank,
            world,
            ckpt=lambda e, f=f, fp=fp, opt=opt: save_ckpt(
                ckpt_path(args, f, "fp"), rank, model=fp.state_dict(), opt=opt.state_dict(), epoch=e
            ),
        )
        fp_acc = evaluate(fp, x[te], y[te])
        fp_accs.append(fp_acc)
        for p in presets:
            q = qatkit.prepare_qat(fp, qatkit.preset(p))
            # PTQ: quantize the trained weights, calibrate activation ranges, no training
            qatkit.qat.calibrate(q, [x[tr][i : i + 256] for i in range(0, len(tr), 256)])
            ptq_acc = evaluate(q, x[te], y[te])
            qatkit.qat.enable_observer(q)
            base_lr = args.qat_lr or QAT_LR.get(p, 1e-4)
            qopt = torch.optim.Adam(q.parameters(), lr=base_lr)
            qstart = 0
            st = load_ckpt(ckpt_path(args, f, p)) if args.resume else None
            if st is not None:
                q.load_state_dict(st["model"])
                qopt.load_state_dict(st["opt"])
                qstart = st["epoch"]
            E = args.qat_epochs

            def hook(ep, q=q, E=E, qopt=qopt, base_lr=base_lr):
                qatkit.qat.freeze_bn(q, ep >= E // 2)
                qatkit.qat.enable_observer(q, ep < (3 * E) // 4)
                # cosine decay over the QAT epochs (a function of the epoch: resumes exactly)
                for g in qopt.param_groups:
                    g["lr"] = base_lr * 0.5 * (1 + math.cos(math.pi * min(ep, E) / E))

            t0 = time.perf_counter()
            train_epochs(
                wrap(q, world),
                qopt,
                x[tr],
                y[tr],
                E,
                qstart,
                args,
                f,
                p,
                rank,
                world,
                hook=hook,
                ckpt=lambda e, q=q, qopt=qopt, p=p, f=f: save_ckpt(
                    ckpt_path(args, f, p), rank, model=q.state_dict(), opt=qopt.state_dict(), epoch=e
                ),
            )
            results[p]["time"] += time.perf_counter() - t0
            hook(E)
            converted = qatkit.convert(q)
            qat_acc = evaluate(converted, x[te], y[te])
            results[p]["fp"].append(fp_acc)
            results[p]["ptq"].append(ptq_acc)
            results[p]["qat"].append(qat_acc)
            if args.save_final and f == len(folds) - 1 and rank == 0:
                finals[p] = copy.deepcopy(q.state_dict())
                if p == presets[-1]:  # "qat": the last preset's model; "presets": every preset's
                    torch.save({"qat": finals[p], "fp": fp.state_dict(), "presets": finals}, args.save_final)
        if rank == 0 and not args.no_progress:
            done = ", ".join(f"{p} {results[p]['qat'][-1]:.2f}" for p in presets)
            tqdm.write(f"fold {f}: fp32 {fp_acc:.2f} | qat {done}")
    return fp_accs, results


def ms(v):
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"


def print_table(args, fp_accs, results, presets):
    print(
        f"\nqatkit {qatkit.__version__}, torch {torch.__version__}, model {args.model}, digits (1797 images), "
        f"{len(fp_accs)}-fold CV, FP32 {args.epochs} epochs, QAT {args.qat_epochs} epochs, "
        f"{torch.get_num_threads()} threads\n"
    )
    print(f"FP32 accuracy: {ms(fp_accs)} %\n")
    hdr = (
        "| preset | weights (quantized layers) | FP32 acc % | PTQ acc % | QAT acc % | drop (pt) "
        "| QAT epochs | QAT time s |"
    )
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for p in presets:
        r = results[p]
        drops = [a - b for a, b in zip(r["fp"], r["qat"], strict=True)]
        spec = qatkit.preset(p).default.weight
        print(
            f"| {p} | {spec.describe() if spec else 'float'} | {ms(r['fp'])} | {ms(r['ptq'])} | {ms(r['qat'])} | "
            f"{ms(drops)} | {args.qat_epochs} | {r['time']:.1f} |"
        )


def plot(path, fp_accs, results, presets):
    """Accuracy vs weight bits: PTQ and QAT bars per preset (ordered by bits, error bars = std over
    folds) against the FP32 line; the right panel zooms into the top 6 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(presets, key=lambda p: -PRESET_BITS[p])
    fp = statistics.mean(fp_accs)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, zoom in zip(axes, (False, True), strict=True):
        for j, (kind, color) in enumerate((("ptq", "tab:orange"), ("qat", "tab:blue"))):
            xs = [i + (j - 0.5) * 0.38 for i in range(len(order))]
            ys = [statistics.mean(results[p][kind]) for p in order]
            err = [statistics.stdev(results[p][kind]) if len(results[p][kind]) > 1 else 0 for p in order]
            ax.bar(xs, ys, 0.38, yerr=err, color=color, label=kind.upper(), capsize=2)
        ax.axhline(fp, color="k", ls="--", lw=1, label=f"FP32 {fp:.2f}%")
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([f"{p} ({PRESET_BITS[p]:.2g} b)" for p in order], fontsize=7, rotation=25, ha="right")
        ax.set_ylabel("accuracy % (k-fold CV)")
        if zoom:
            ax.set_ylim(fp - 6, min(100.5, fp + 2))
            ax.set_title("zoom: within 6 points of FP32")
        else:
            ax.set_ylim(0, 101)
            ax.set_title("digits: accuracy vs weight bits (PTQ = no training)")
            ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_lm(args, presets, rank):
    """E5 (docs/papers.md): FP32 vs QAT from scratch (BitLinear layers; embeddings and head stay float)
    vs ternary PTQ of the FP32 model (absmean ternary weights and per-token int8 activations on its
    own layers, no training), bits per character on held-out text."""
    ds = CharDataset(stdlib_corpus(args.corpus_chars))

    def train(model, steps, lr, tag):
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        g = torch.Generator().manual_seed(args.seed + 7)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
        for _ in tqdm(range(steps), desc=tag, leave=False, disable=args.no_progress or rank != 0):
            model.train()
            xb, yb = ds.batch("train", 32, g)
            loss = F.cross_entropy(model(xb).reshape(-1, ds.vocab), yb.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        return model

    def fresh():
        torch.manual_seed(args.seed)
        return TinyLM()

    rows = []
    t0 = time.perf_counter()
    fp = train(fresh(), args.lm_steps, args.lm_lr, "fp32")
    rows.append(("fp32", f"{args.lm_steps} steps", bits_per_char(fp, ds), time.perf_counter() - t0))
    b158 = qatkit.bitnet_b158()
    ptq_cfg = dataclasses.replace(b158, bitlinear=False, name="ternary_ptq")
    rows.append(
        ("ternary PTQ of fp32 (absmean, A8 per token)", "none", bits_per_char(qatkit.prepare_qat(fp, ptq_cfg), ds), 0.0)
    )
    variants = {p: qatkit.preset(p) for p in presets}
    if "bitnet_b158" in presets:
        w1 = qatkit.QuantSpec(kind="binary", method="bitnet")
        variants["bitnet_w1a8 (binary)"] = dataclasses.replace(
            b158, default=qatkit.LayerSpec(w1, b158.default.activation), name="bitnet_w1a8"
        )
    for name, cfg in variants.items():
        t0 = time.perf_counter()
        q = train(qatkit.prepare_qat(fresh(), cfg), args.lm_steps, args.qat_lr or args.lm_lr, name)
        rows.append(
            (
                f"{name} QAT",
                f"{args.lm_steps} steps from scratch",
                bits_per_char(qatkit.convert(q), ds),
                time.perf_counter() - t0,
            )
        )
    counts = torch.bincount(ds.val, minlength=128).float()
    p_ = counts[counts > 0] / counts.sum()
    h = -(p_ * p_.log2()).sum().item()
    print(
        f"\nTiny LM (2 layers, d 128, 4 heads, context 64), corpus {len(ds.train) + len(ds.val)} chars of "
        f"stdlib docstrings (90/10 split), batch 32, AdamW one-cycle lr {args.lm_lr}; unigram entropy of the "
        f"held-out text {h:.3f} bits/char\n"
    )
    print("| model | training | held-out bits/char | time s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.1f} |")
    keys = ("model", "training", "bpc", "time_s")
    return {"rows": [dict(zip(keys, r, strict=True)) for r in rows], "unigram_bpc": h}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mlp", choices=sorted(DIGITS_MODELS) + ["transformer"])
    ap.add_argument("--preset", default="w8a8", help="comma-separated presets, or 'all'")
    ap.add_argument("--folds", type=number_arg(int, 2), default=5)
    ap.add_argument("--max-folds", type=number_arg(int, 0), default=0, help="run only the first N folds (quick checks; 0: all)")
    ap.add_argument("--epochs", type=number_arg(int, 1), default=40)
    ap.add_argument("--qat-epochs", type=number_arg(int, 1), default=20)
    ap.add_argument("--lr", type=number_arg(float, 0, strict=True), default=1e-3)
    ap.add_argument("--qat-lr", type=number_arg(float, 0), default=0.0, help="QAT learning rate (default: per preset)")
    ap.add_argument("--batch", type=number_arg(int, 1), default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=number_arg(int, 1), default=2)
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=sorted(DTYPES),
        help="parameter and data dtype of the digits models (float64: runs equal across CPUs to ~1e-12; tests)",
    )
    ap.add_argument("--ckpt-dir", default="")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--plot", default="", help="write an accuracy-vs-bits plot (PNG)")
    ap.add_argument("--json", default="", help="write the results as JSON")
    ap.add_argument("--save-final", default="", help="save the last QAT model's state_dict (tests)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--stop-after", type=number_arg(int, 0), default=0, help="exit after N epochs in total (tests of --resume)")
    ap.add_argument("--lm-steps", type=number_arg(int, 1), default=1500)
    ap.add_argument("--lm-lr", type=number_arg(float, 0, strict=True), default=3e-3)
    ap.add_argument("--corpus-chars", type=number_arg(int, 1), default=1_000_000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    presets = list(qatkit.qat.PRESETS) if args.preset == "all" else [p.strip() for p in args.preset.split(",") if p]
    if not presets:
        ap.error("--preset: expected a comma-separated list of presets, or 'all'")
    for p in presets:
        try:
            qatkit.preset(p)
        except ValueError as e:  # unknown names: the message lists the valid ones
            ap.error(f"--preset: {e}")
    if args.model != "transformer":
        check_folds(ap, args.folds)
    if args.ckpt_dir:
        os.makedirs(args.ckpt_dir, exist_ok=True)
    rank, world = dist_info()
    if args.batch % world:
        raise ValueError(f"--batch ({args.batch}) must be a multiple of the number of processes ({world})")
    if args.model == "transformer":
        out = run_lm(args, presets, rank)
    else:
        fp_accs, results = run_digits(args, presets, rank, world)
        if rank == 0:
            print_table(args, fp_accs, results, presets)
            if args.plot:
                plot(args.plot, fp_accs, results, presets)
                print(f"\nplot: {args.plot}")
        out = {"fp32": fp_accs, "presets": results}
    if args.json and rank == 0:
        info = {"model": args.model, "folds": args.folds, "epochs": args.epochs, "qat_epochs": args.qat_epochs}
        with open(args.json, "w") as fh:
            json.dump({"args": info, "world_size": world, **out}, fh, indent=2)
    if world > 1:
        # every rank past its last collective first: tearing the group down while a peer still
        # finishes one can make gloo's worker thread abort that peer
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
