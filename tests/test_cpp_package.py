"""The C++ package: `cmake --install` of the library into a temporary prefix, then programs
configured with find_package(fusedrnn), built and run against it: examples/cpp, whose printed
final state must equal fusedrnn.ops on the same inputs and whose own finite-difference check must
pass, and tests/cpp, the C++ API's own tests."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fusedrnn import ops

ROOT = pathlib.Path(__file__).resolve().parent.parent
CMAKE = shutil.which("cmake")
COMPILER = os.environ.get("CXX") or next(
    (c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)

pytestmark = [
    pytest.mark.skipif(CMAKE is None, reason="the C++ package test needs cmake on PATH"),
    pytest.mark.skipif(COMPILER is None, reason="the C++ package test needs a C++ compiler"),
    pytest.mark.skipif(not (ROOT / "CMakeLists.txt").is_file(),
                       reason="the C++ package test needs the source tree"),
]


def cmake(*args, cwd):
    result = subprocess.run([CMAKE, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"cmake {' '.join(map(str, args))}\n{result.stdout}\n" \
                                   f"{result.stderr}"


def wave(n, phase, scale):
    """The example's deterministic inputs: v[k] = scale * sin(0.7 * k + phase)."""
    return scale * np.sin(0.7 * np.arange(n) + phase)


GENERATOR = ["-G", "Ninja"] if shutil.which("ninja") else []


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The prefix the library was installed into (built once for the module's tests)."""
    pytest.importorskip("scipy_openblas32", reason="building fusedrnn needs scipy-openblas32")
    tmp_path = tmp_path_factory.mktemp("cpp_package")
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    cmake("-S", ROOT, "-B", build, *GENERATOR, "-DFUSEDRNN_PYTHON=OFF",
          f"-DPython_EXECUTABLE={sys.executable}", f"-DCMAKE_CXX_COMPILER={COMPILER}",
          cwd=tmp_path)
    cmake("--build", build, "--parallel", "2", cwd=tmp_path)
    cmake("--install", build, "--prefix", prefix, "--component", "cpp", cwd=tmp_path)
    return prefix


def build_and_run(source, program, prefix, tmp_path):
    """Configures and builds the CMake project `source` against `prefix`; runs `program`."""
    app = tmp_path / source.name
    cmake("-S", source, "-B", app, *GENERATOR, f"-DCMAKE_PREFIX_PATH={prefix}",
          f"-DCMAKE_CXX_COMPILER={COMPILER}", cwd=tmp_path)
    cmake("--build", app, cwd=tmp_path)
    return subprocess.run([str(app / program)], capture_output=True, text=True)


def test_installed_package_has_its_header_library_and_cmake_config(installed):
    files = sorted(p.relative_to(installed).as_posix() for p in installed.rglob("*")
                   if p.is_file())
    assert "include/fusedrnn/rnn.h" in files
    assert any(p.endswith("libfusedrnn.a") for p in files), files
    assert any(p.endswith("cmake/fusedrnn/fusedrnnConfig.cmake") for p in files), files


def test_the_cpp_api_tests_pass(installed, tmp_path):
    run = build_and_run(ROOT / "tests" / "cpp", "pair_test", installed, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_installed_package_builds_and_runs_the_example(installed, tmp_path):
    run = build_and_run(ROOT / "examples" / "cpp", "lstm_example", installed, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr  # its gradient check failed otherwise
    h_n = np.array([float(v) for v in run.stdout.splitlines()[0].split()[1:]])

    T, B, I, H, G = 4, 2, 3, 5, 4
    expected = ops.forward("lstm", wave(T * B * I, 0.0, 1.0).reshape(T, B, I),
                           wave(G * H * I, 1.0, 0.4).reshape(G * H, I),
                           wave(G * H * H, 2.0, 0.4).reshape(G * H, H), wave(G * H, 3.0, 0.4),
                           wave(G * H, 4.0, 0.4), backend="numpy").h_n
    # The reference in float64, against the kernels' printed 17 digits: summation order only.
    np.testing.assert_allclose(h_n.reshape(B, H), expected, rtol=1e-12, atol=1e-15)
