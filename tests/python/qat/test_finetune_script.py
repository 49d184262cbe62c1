"""scripts/qat_finetune.py end to end on a small budget: the table, the JSON, the plot, and a run
interrupted mid-QAT (--stop-after) then resumed (--resume) ends bit-identical to an uninterrupted
run."""

import json
import os
import subprocess
import sys

import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "scripts", "qat_finetune.py")
BASE = [sys.executable, SCRIPT, "--model", "mlp", "--preset", "w8a8,binary_w1a8", "--max-folds", "1"]
BASE += ["--epochs", "3", "--qat-epochs", "4", "--no-progress", "--threads", "1"]


def run(args, ok=True):
    r = subprocess.run(BASE + args, capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_table_json_plot(tmp_path):
    r = run(["--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png")])
    assert "| w8a8 | int8 sym per_channel static |" in r.stdout and "| binary_w1a8 |" in r.stdout
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res["presets"]) == {"w8a8", "binary_w1a8"} and len(res["fp32"]) == 1
    assert 50 < res["presets"]["w8a8"]["qat"][0] <= 100
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_interrupted_run_resumes_bit_identically(tmp_path):
    full, resumed = tmp_path / "full.pt", tmp_path / "resumed.pt"
    # The uninterrupted run and the interrupted one (3 FP32 epochs + 4 (w8a8) + 2 of binary_w1a8's 4,
    # then "crash") side by side: one thread each, two cores.
    runs = (("a", ["--ckpt-dir", str(tmp_path / "a"), "--save-final", str(full)]),
            ("b", ["--ckpt-dir", str(tmp_path / "b"), "--stop-after", "9"]))
    procs = []
    for tag, args in runs:  # output to files, not pipes: neither run waits on a reader
        with open(tmp_path / f"{tag}.out", "w") as out, open(tmp_path / f"{tag}.err", "w") as err:
            procs.append(subprocess.Popen(BASE + args, stdout=out, stderr=err))
    for p in procs:
        p.wait(timeout=600)
    err_full, err = ((tmp_path / f"{tag}.err").read_text() for tag, _ in runs)
    assert procs[0].returncode == 0, err_full[-3000:]
    assert procs[1].returncode != 0 and "stopping as an interruption would" in err, err[-3000:]
    assert not resumed.exists()
    run(["--ckpt-dir", str(tmp_path / "b"), "--resume", "--save-final", str(resumed)])
    a, b = torch.load(full, weights_only=False), torch.load(resumed, weights_only=False)
    for part in ("fp", "qat"):
        for k, v in a[part].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, b[part][k]), (part, k)


def test_the_readme_demo_runs_end_to_end_on_a_small_budget(tmp_path):
    """scripts/demo.py (the README's first command) with one fold and one epoch: every preset
    trains, converts and lands in the table and the plot (it broke once when run_digits grew an
    argument the demo did not pass)."""
    demo = os.path.join(os.path.dirname(SCRIPT), "demo.py")
    plot = tmp_path / "demo.png"
    r = subprocess.run(
        [sys.executable, demo, "--folds", "2", "--max-folds", "1", "--epochs", "1", "--qat-epochs", "1",
         "--plot", str(plot)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for preset in ("w8a8", "w4a8", "w4a4_lsq", "ternary_twn", "bitnet_b158", "binary_w1a8", "xnor_w1a1", "binaryconnect"):
        assert f"| {preset} |" in r.stdout, preset
    assert plot.exists() and plot.stat().st_size > 0


def test_bad_command_lines_are_usage_errors_naming_the_option():
    """--folds 1 ended in an UnboundLocalError, --batch 0 / --qat-epochs 0 in a ZeroDivisionError,
    --threads 0 in torch's RuntimeError, --epochs 0 trained nothing and printed a table, and an
    unknown preset in a traceback, --folds 2000 scored one test image: each is now argparse's usage error (exit 2) naming the option
    and what it takes, before any work (qat_finetune.py, demo.py and ptq.py share the types)."""
    scripts = os.path.dirname(SCRIPT)
    cases = [("qat_finetune.py", ["--folds", "1"], "argument --folds: expected a value >= 2, got 1"),
             ("qat_finetune.py", ["--batch", "0"], "argument --batch: expected a value >= 1, got 0"),
             ("qat_finetune.py", ["--lr", "-1"], "argument --lr: expected a value > 0, got -1"),
             ("qat_finetune.py", ["--threads", "two"], "argument --threads: expected an integer, got 'two'"),
             ("qat_finetune.py", ["--preset", "w9a9"], "--preset: unknown preset 'w9a9'; valid presets: binary_w1a8"),
             ("demo.py", ["--qat-epochs", "0"], "argument --qat-epochs: expected a value >= 1, got 0"),
             ("ptq.py", ["--calib", "0"], "argument --calib: expected a value >= 1, got 0"),
             # more folds than the smallest digit class (174 images): fold 0 of 2000 tested one image
             # and reported 100 %; now a usage error
             ("qat_finetune.py", ["--folds", "2000"], "--folds: expected 2 to 174 (the digits' smallest class), got 2000"),
             ("ptq.py", ["--folds", "175"], "--folds: expected 2 to 174"),
             ("demo.py", ["--folds", "500"], "--folds: expected 2 to 174 (the digits' smallest class), got 500"),
             # the first N of 5 folds: --folds 7 ran 5 without a word
             ("onnx_check.py", ["--folds", "7"], "argument --folds: expected a value <= 5, got 7"),
             ("integer_check.py", ["--folds", "6"], "argument --folds: expected a value <= 5, got 6"),
             # a KeyError traceback before
             ("bench_inference.py", ["--variants", "qatkit w8a8,w9"], "--variants: expected a comma-separated list of"),
             ("bench_inference.py", ["--batch", "0"], "--batch: expected a comma-separated list of integers >= 1"),
             ("bench_fusion.py", ["--rounds", "0"], "argument --rounds: expected a value >= 1, got 0"),
             ("bench_conv_int8.py", ["--model", "vgg"], "argument --model: invalid choice: 'vgg'")]
    if not torch.cuda.is_available():  # an AssertionError reported as a failed check before
        cases.append(("fuzz_ops.py", ["--device", "cuda"], "--device cuda: this torch (CUDA available: False)"))
    # The first case in a fresh interpreter, as a user runs it; the rest in this process through
    # runpy (a fresh interpreter importing torch cost ~1.7 s each, 17 s for the list): the same
    # __main__ code, the same SystemExit(2) and stderr.
    import contextlib
    import io
    import runpy
    from types import SimpleNamespace

    def run(case, fresh):
        script, args, _ = case
        path = os.path.join(scripts, script)
        if fresh:
            return subprocess.run([sys.executable, path, *args], capture_output=True, text=True, timeout=120)
        err, argv, path0 = io.StringIO(), sys.argv, list(sys.path)
        sys.argv = [path, *args]
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                runpy.run_path(path, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code
        except Exception as e:  # noqa: BLE001 - reported as the failing case below
            code, err = 1, io.StringIO(f"Traceback: {type(e).__name__}: {e}")
        finally:
            sys.argv, sys.path[:] = argv, path0
        return SimpleNamespace(returncode=code, stderr=err.getvalue())

    results = [run(case, i == 0) for i, case in enumerate(cases)]
    for (script, args, msg), r in zip(cases, results):
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (script, args, r.stderr[-2000:])
