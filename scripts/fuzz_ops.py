"""Long fuzz run of every qatkit op (the checks of qatkit.testing.fuzz): random layouts,
dtypes and edge qparams against float64 references, and the integer kernels (shapes at their tile
and block edges, every weight layout, every CPU ISA, 1 or 2 threads) against pure-integer
references, until --calls op calls have run.

    python scripts/fuzz_ops.py [--calls 100000] [--seed 0] [--json]
    python scripts/fuzz_ops.py --device cuda [--only linear_int8,conv2d_int8]   # the integer kernels on a GPU

Prints a table of calls and checks per op; exits non-zero on the first failure, with the seed that
reproduces it (``--seed S --calls 1`` replays one case).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
import warnings

import torch
from tqdm import tqdm

import qatkit
from qatkit.testing.fuzz import CHECKS
from qatkit.testing.fuzz_integer import INTEGER_CHECKS
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the scripts' shared helpers
from qat_models import number_arg  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=number_arg(int, 1), default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=number_arg(int, 1), default=2)
    ap.add_argument("--seconds", type=number_arg(float, 0), default=0, help="stop after this long too (0: no limit)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu, or a CUDA device: then the integer kernels' checks only")
    ap.add_argument("--only", default="", help="comma-separated check names (default: all that run on --device)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")  # resize warnings of the out= checks are expected
    try:
        device = torch.device(a.device)
    except RuntimeError:
        ap.error(f"--device: expected cpu or a CUDA device (cuda, cuda:1), got {a.device!r}")
    if device.type not in ("cpu", "cuda"):
        ap.error(f"--device: expected cpu or a CUDA device (cuda, cuda:1), got {a.device!r}")
    if device.type == "cuda" and not (torch.cuda.is_available() and qatkit.build_info()["cuda"]):
        ap.error(f"--device {a.device}: this torch (CUDA available: {torch.cuda.is_available()}) and this qatkit build "
                 f"(CUDA kernels: {qatkit.build_info()['cuda']}) cannot run CUDA")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        ap.error(f"--device: {a.device} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    names = sorted(CHECKS) if a.device == "cpu" else sorted(INTEGER_CHECKS)
    if a.only:
        unknown = sorted(set(a.only.split(",")) - set(names))
        if unknown:
            ap.error(f"--only: {unknown} are not checks that run on {a.device}; those are {names}")
        names = sorted(a.only.split(","))
    stats = {n: {"checks": 0, "calls": 0} for n in names}
    total, case = 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=a.calls, desc="op calls", disable=a.json)
    while total < a.calls and not (a.seconds and time.perf_counter() - t0 > a.seconds):
        seed = a.seed * 1_000_003 + case
        name = names[case % len(names)]
        case += 1
        torch.manual_seed(seed)  # the checks draw tensors from torch's RNG: seed it per case, so a replay is exact
        try:
            n = (CHECKS[name](random.Random(seed)) if a.device == "cpu"
                 else INTEGER_CHECKS[name](random.Random(seed), device=a.device))
        except Exception:
            bar.close()
            traceback.print_exc()
            print(f"FAILED: {name} with random.Random({seed}) on {a.device} (replay: --seed {a.seed}, case {case - 1})")
            sys.exit(1)
        stats[name]["checks"] += 1
        stats[name]["calls"] += n
        total += n
        bar.update(n)
    bar.close()
    elapsed = time.perf_counter() - t0
    if a.json:
        print(json.dumps({"device": a.device, "calls": total, "checks": case, "seconds": round(elapsed, 1),
                          "ops": stats}, indent=2))
        return
    print(f"\n{total:,} op calls in {case:,} checks, {elapsed:.0f} s, no failure (seed {a.seed}, {a.device})\n")
    print("| op | checks | op calls |\n|---|---|---|")
    for n in names:
        print(f"| {n} | {stats[n]['checks']:,} | {stats[n]['calls']:,} |")


if __name__ == "__main__":
    main()
