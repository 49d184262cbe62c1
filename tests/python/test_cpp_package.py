"""The installed CMake package works: a LibTorch program finds qatkit with find_package, links
qatkit::qatkit, calls the op and checks its gradient (tests/cpp/example_app)."""

import os
import shlex
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


OPS_ONLY = os.path.join(os.path.dirname(__file__), "..", "cpp", "ops_only_app")


@pytest.fixture(scope="module")
def consumer_builds(tmp_path_factory):
    """Configures and builds both consumer programs side by side (each one translation unit, ~25 s
    with torch's headers: 57 s one after the other on 2 cores). Returns {name: (build dir, Popen)}."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed (scripts/setup.sh installs it)")
    prefix = f"{torch.utils.cmake_prefix_path};{qatkit.cmake_prefix_path}"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    builds = {}
    for name, src, extra in (("example", APP, []), ("ops_only", OPS_ONLY, ["-DCMAKE_EXE_LINKER_FLAGS=-Wl,--as-needed"])):
        out = tmp_path_factory.mktemp(name)
        configure = ["cmake", "-S", src, "-B", str(out), *gen, f"-DCMAKE_PREFIX_PATH={prefix}",
                     "-DCMAKE_BUILD_TYPE=Release", *extra]
        script = f"{shlex.join(configure)} && {shlex.join(['cmake', '--build', str(out)])}"
        with open(out / "build.log", "w") as log:  # a file, not a pipe: neither build waits on a reader
            builds[name] = (out, subprocess.Popen(["bash", "-c", script], stdout=log, stderr=subprocess.STDOUT))
    yield builds
    for _, proc in builds.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _built(builds, name):
    out, proc = builds[name]
    proc.wait(timeout=900)
    assert proc.returncode == 0, (out / "build.log").read_text()[-4000:]
    return out


def test_find_package_consumer_builds_and_runs(consumer_builds):
    out = _built(consumer_builds, "example")
    run = subprocess.run([os.path.join(out, "qatkit_example")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "STE gradient matches the clip mask" in run.stdout


def test_a_program_that_only_dispatches_to_qatkit_ops_keeps_the_library_under_as_needed(consumer_builds):
    """A program referencing no qatkit symbol (it loads a model holding qatkit ops) must still get
    the ops registered, also when the linker runs with --as-needed (Ubuntu's default)."""
    out = _built(consumer_builds, "ops_only")
    run = subprocess.run([os.path.join(out, "qatkit_ops_only")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "qatkit::fake_quantize found: 0.5" in run.stdout


def test_the_installed_targets_file_names_no_build_machine_path():
    targets = os.path.join(qatkit.cmake_prefix_path, "qatkit", "qatkitTargets.cmake")
    text = open(targets).read()
    torch_dir = os.path.dirname(torch.__file__)
    assert torch_dir not in text, [line for line in text.splitlines() if torch_dir in line]
