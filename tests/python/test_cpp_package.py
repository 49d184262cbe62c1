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
    assert info["cpu_isa"] in ("avx2", "baseline")
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
