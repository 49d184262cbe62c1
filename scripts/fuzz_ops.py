"""Long fuzz run of every qatkit op (the checks of qatkit.testing.fuzz): random layouts,
dtypes and edge qparams against float64 references, until --calls op calls have run.

    python scripts/fuzz_ops.py [--calls 100000] [--seed 0] [--json]

Prints a table of calls and checks per op; exits non-zero on the first failure, with the seed that
reproduces it (``--seed S --calls 1`` replays one case).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
import warnings

import torch
from tqdm import tqdm

from qatkit.testing.fuzz import CHECKS


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")  # resize warnings of the out= checks are expected
    names = sorted(CHECKS)
    stats = {n: {"checks": 0, "calls": 0} for n in names}
    total, case = 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=a.calls, desc="op calls", disable=a.json)
    while total < a.calls:
        seed = a.seed * 1_000_003 + case
        name = names[case % len(names)]
        case += 1
        torch.manual_seed(seed)  # the checks draw tensors from torch's RNG: seed it per case, so a replay is exact
        try:
            n = CHECKS[name](random.Random(seed))
        except Exception:
            bar.close()
            traceback.print_exc()
            print(f"FAILED: {name} with random.Random({seed}) (replay: --seed {a.seed}, case {case - 1})")
            sys.exit(1)
        stats[name]["checks"] += 1
        stats[name]["calls"] += n
        total += n
        bar.update(n)
    bar.close()
    elapsed = time.perf_counter() - t0
    if a.json:
        print(json.dumps({"calls": total, "checks": case, "seconds": round(elapsed, 1), "ops": stats}, indent=2))
        return
    print(f"\n{total:,} op calls in {case:,} checks, {elapsed:.0f} s, no failure (seed {a.seed})\n")
    print("| op | checks | op calls |\n|---|---|---|")
    for n in names:
        print(f"| {n} | {stats[n]['checks']:,} | {stats[n]['calls']:,} |")


if __name__ == "__main__":
    main()
