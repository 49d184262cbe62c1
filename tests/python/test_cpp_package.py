"""The installed CMake package works: a LibTorch program finds qatkit with find_package, links
qatkit::qatkit, calls the op and checks its gradient (tests/cpp/example_app)."""

import os
import shutil
import subprocess

import pytest
import torch

import qatkit

APP = os.path.join(os.path.dirname(__file__), "..", "cpp", "example_app")


def test_build_info():
    info = qatkit.build_info()
    assert info["version"] == qatkit.__version__
    assert info["cpu_isa"] in ("amx", "avx512", "avx2", "baseline")
    assert isinstance(info["amx_bf16"], bool)
    if info["amx_bf16"]:  # the table it names runs here
        old = qatkit._C.cpu_isa()
        try:
            assert qatkit._C.set_cpu_isa("amx")
        finally:
            qatkit._C.set_cpu_isa(old)
    assert os.path.exists(info["library"])
    assert torch.__version__.startswith(info["torch_version"])


def test_cmake_package_is_installed():
    cfg = os.path.join(qatkit.cmake_prefix_path, "qatkit", "qatkitConfig.cmake")
    assert os.path.exists(cfg)
    assert os.path.exists(os.path.join(os.path.dirname(qatkit.__file__), "include", "qatkit", "qatkit.h"))


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed (scripts/setup.sh installs it)")
def test_find_package_consumer_builds_and_runs(tmp_path):
    prefix = f"{torch.utils.cmake_prefix_path};{qatkit.cmake_prefix_path}"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        ["cmake", "-S", APP, "-B", str(tmp_path), *gen, f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["cmake", "--build", str(tmp_path)], check=True, capture_output=True)
    run = subprocess.run([os.path.join(tmp_path, "qatkit_example")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "STE gradient matches the clip mask" in run.stdout


OPS_ONLY = os.path.join(os.path.dirname(__file__), "..", "cpp", "ops_only_app")


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed (scripts/setup.sh installs it)")
def test_a_program_that_only_dispatches_to_qatkit_ops_keeps_the_library_under_as_needed(tmp_path):
    """A program referencing no qatkit symbol (it loads a model holding qatkit ops) must still get
    the ops registered, also when the linker runs with --as-needed (Ubuntu's default)."""
    prefix = f"{torch.utils.cmake_prefix_path};{qatkit.cmake_prefix_path}"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        ["cmake", "-S", OPS_ONLY, "-B", str(tmp_path), *gen, f"-DCMAKE_PREFIX_PATH={prefix}",
         "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--as-needed"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["cmake", "--build", str(tmp_path)], check=True, capture_output=True)
    run = subprocess.run([os.path.join(tmp_path, "qatkit_ops_only")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "qatkit::fake_quantize found: 0.5" in run.stdout


def test_the_installed_targets_file_names_no_build_machine_path():
    targets = os.path.join(qatkit.cmake_prefix_path, "qatkit", "qatkitTargets.cmake")
    text = open(targets).read()
    torch_dir = os.path.dirname(torch.__file__)
    assert torch_dir not in text, [line for line in text.splitlines() if torch_dir in line]
