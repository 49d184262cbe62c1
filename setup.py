"""Build qatkit: setup.py drives CMake (the one build description) against the installed torch.

    pip install --no-build-isolation .      # or -e . for development
Environment:
    QATKIT_BUILD_DIR    CMake build directory (default build/py; kept for incremental builds)
    QATKIT_BUILD_TESTS  1 to also build the Catch2 tests and the C++ example (default 0)
    QATKIT_CUDA         0 to skip the CUDA kernels even when nvcc is present (default 1)
    QATKIT_UNITY_BUILD  0 to compile libqatkit one source file per unit (default 1: batched unity
                        units, several minutes faster from nothing on 2 cores)
    MAX_JOBS            parallel build jobs (default: CPU count)
"""

import os
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure (once), build incrementally, then install the CMake tree into the package."""

    def build_extension(self, ext):
        import torch  # the installed torch the library compiles and links against

        build_dir = os.path.abspath(os.environ.get("QATKIT_BUILD_DIR", os.path.join(ROOT, "build", "py")))
        os.makedirs(build_dir, exist_ok=True)
        package_dir = os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name)))
        generator = ["-G", "Ninja"] if _has_ninja() else []
        configure = [
            "cmake",
            ROOT,
            *generator,
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DQATKIT_BUILD_TESTS={'ON' if os.environ.get('QATKIT_BUILD_TESTS') == '1' else 'OFF'}",
            f"-DQATKIT_CUDA={'OFF' if os.environ.get('QATKIT_CUDA') == '0' else 'ON'}",
            f"-DQATKIT_UNITY_BUILD={'OFF' if os.environ.get('QATKIT_UNITY_BUILD') == '0' else 'ON'}",
        ]
        subprocess.check_call(configure, cwd=build_dir)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", build_dir, "--parallel", jobs])
        subprocess.check_call(["cmake", "--install", build_dir, "--prefix", package_dir])
        if getattr(self, "editable_mode", False) or self.inplace or "develop" in sys.argv:
            # Editable installs import from python/qatkit: the library, headers and CMake
            # package must live there too (setuptools only copies the _C module itself). Older
            # setuptools (< 64) make an editable install by `setup.py develop`, which builds the
            # extension out of place (neither flag set) before copying _C alone into the source.
            source_pkg = os.path.join(ROOT, "python", "qatkit")
            if os.path.abspath(source_pkg) != package_dir:
                subprocess.check_call(["cmake", "--install", build_dir, "--prefix", source_pkg])


def _has_ninja():
    try:
        subprocess.check_output(["ninja", "--version"])
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


setup(
    name="qatkit",
    version="0.1.0",
    description="Quantization toolkit for PyTorch: fake-quant ops in C++/CUDA, QAT, PTQ, export",
    packages=find_packages("python"),
    package_dir={"": "python"},
    # the one preset table (Python reads it; libqatkit compiles it in)
    package_data={"qatkit.qat": ["presets.json"]},
    ext_modules=[CMakeExtension("qatkit._C")],
    cmdclass={"build_ext": CMakeBuild},
    # torch is pinned by scripts/setup.sh, not here: the code also builds against other releases.
    install_requires=["torch", "numpy"],
    python_requires=">=3.10",
    zip_safe=False,
)
